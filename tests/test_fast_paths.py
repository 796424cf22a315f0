"""Correctness guards of the performance paths: column trimming in the log-prob pass, length-sorted micro-batches,
and reuse of the engine's behaviour log-probs only where they are exact."""

import torch

from entropo.batch import Batch
from entropo.config import load_recipe
from entropo.logging import read_metrics
from entropo.models import tiny
from entropo.models.logprobs import token_logprobs_and_entropy
from entropo.trainer import enable_activation_checkpointing, score_tokens, train
from conftest import padded_rows


def _naive(model, input_ids, attention_mask):
    """Full-width reference: every column through the model, [B, L, V] log-softmax (fine at tiny sizes)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return torch.nn.functional.pad(token_logp, (1, 0)), torch.nn.functional.pad(entropy, (1, 0))


def test_trimmed_columns_give_the_full_width_values_and_grads():
    model, _ = tiny()
    ids, attention, response = padded_rows()
    lp, ent = token_logprobs_and_entropy(model, ids, attention, compute_mask=response, chunk_size=4)
    ref_lp, ref_ent = _naive(model, ids, attention)
    assert torch.allclose(lp, ref_lp * response, atol=1e-5) and torch.allclose(ent, ref_ent * response, atol=1e-5)
    # gradients: the trimmed pass and the naive one agree on a weighted sum of the scored tokens
    weights = torch.rand(3, 12, generator=torch.Generator().manual_seed(1)) * response
    (lp * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (_naive(model, ids, attention)[0] * weights).sum().backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_length_sorted_micro_batches_score_every_row_in_place():
    model, _ = tiny()
    ids, attention, response = padded_rows()
    batch = Batch(input_ids=ids, attention_mask=attention, response_mask=response, rewards=torch.zeros(3),
                  group_ids=torch.arange(3))
    whole = score_tokens(model, batch, temperature=1.0, micro_batch_size=3, chunk_size=64)
    for mbs in (1, 2):
        parts = score_tokens(model, batch, temperature=1.0, micro_batch_size=mbs, chunk_size=64)
        assert torch.allclose(parts[0], whole[0], atol=1e-6) and torch.allclose(parts[1], whole[1], atol=1e-6)
    ref_lp, _ = _naive(model, ids, attention)
    assert torch.allclose(whole[0], ref_lp * response, atol=1e-5)
    # the split really groups rows by length: shortest (row 2, 4 tokens) first
    order = [rows.tolist() for rows, _ in batch.split_by_length(2)]
    assert order == [[2, 1], [0]]


def test_behaviour_logprobs_are_reused_only_where_exact(tmp_path, tiny_recipe_overrides):
    ov = tiny_recipe_overrides + ["train.steps=2", "logging.tensorboard=false", "checkpoint.every=0"]
    train(load_recipe(None, ov), run_dir=tmp_path / "auto", console=lambda *_: None)
    train(load_recipe(None, ov + ["rollout.engine_params={min_new_tokens: 2}"]), run_dir=tmp_path / "constrained",
          console=lambda *_: None)
    auto = [r for r in read_metrics(tmp_path / "auto") if not r.get("final")]
    constrained = [r for r in read_metrics(tmp_path / "constrained") if not r.get("final")]
    # reused: old log-probs ARE the behaviour log-probs, so their KL is exactly 0
    assert all(r["kl/behaviour"] == 0.0 for r in auto)
    # EOS masked while sampling: the recorded log-probs are not the policy's, so the forward runs (KL > 0)
    assert all(r["kl/behaviour"] > 1e-4 for r in constrained)


def test_activation_checkpointing_gives_the_same_gradients(tmp_path, tiny_recipe_overrides):
    ids, attention, response = padded_rows()
    grads = []
    for checkpointed in (False, True):
        model, _ = tiny()
        if checkpointed:
            enable_activation_checkpointing(model)
        model.train()
        lp, ent = token_logprobs_and_entropy(model, ids, attention, compute_mask=response)
        ((lp - 0.1 * ent) * response).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    # and the recipe switch runs end to end
    ov = tiny_recipe_overrides + ["train.steps=1", "train.activation_checkpointing=true", "train.threads=1",
                                  "logging.tensorboard=false"]
    out = train(load_recipe(None, ov), run_dir=tmp_path / "gc", console=lambda *_: None)
    assert out["steps"] == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)


def test_activation_estimate_by_hand_and_auto_micro_batch(tmp_path, tiny_recipe_overrides):
    from types import SimpleNamespace

    from entropo.memory import activation_bytes_per_token, auto_micro_batch_size

    smol = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    # 4 bytes * 30 layers * (14*576 + 5*1536) = 4 * 30 * 15744 = 1,889,280 bytes per token
    assert activation_bytes_per_token(smol, checkpointing=False) == 1_889_280
    # checkpointed: 4 * (30*576 + 15744) = 4 * 33024 = 132,096
    assert activation_bytes_per_token(smol, checkpointing=True) == 132_096
    # 2048 MB / (1,889,280 * 100 tokens) = 2147483648 / 188928000 = 11.37 -> 11 rows
    assert auto_micro_batch_size(smol, budget_mb=2048, row_tokens=100, checkpointing=False) == 11
    assert auto_micro_batch_size(smol, budget_mb=1, row_tokens=10_000, checkpointing=False) == 1  # never 0
    # end to end: 'auto' resolves to an int that the whole run uses
    ov = tiny_recipe_overrides + ["train.steps=1", "train.micro_batch_size=auto", "train.activation_memory_mb=0.05",
                                  "logging.tensorboard=false"]
    lines = []
    train(load_recipe(None, ov), run_dir=tmp_path / "auto", console=lines.append)
    chosen = [s for s in lines if "micro_batch_size=auto" in s]
    assert len(chosen) == 1 and int(chosen[0].split("-> ")[1].split()[0]) >= 1
    import pytest

    from entropo.config import ConfigError
    with pytest.raises(ConfigError, match="micro_batch_size"):
        load_recipe(None, ["train.micro_batch_size=0"])


def test_shared_prompt_prefill_samples_exactly_what_per_row_prefill_does():
    from entropo.rollout import HFEngine

    model, tokenizer = tiny()
    prompts = ["1+2=", "3+4+5=", "1+2=", "9="]  # a repeated prompt across groups shares too
    outs = []
    for share in (True, False):
        engine = HFEngine(model, tokenizer, share_prompt_prefill=share, max_batch_size=6)  # groups split by chunks
        outs.append(engine.generate(prompts, 3, temperature=1.0, max_new_tokens=5,
                                    generator=torch.Generator().manual_seed(0)))
    a, b = outs
    assert torch.equal(a.input_ids, b.input_ids) and a.finish_reasons == b.finish_reasons
    assert torch.allclose(a.behaviour_logprobs, b.behaviour_logprobs, atol=1e-5)
    assert torch.allclose(a.behaviour_entropy, b.behaviour_entropy, atol=1e-5)


def test_ignore_eos_gives_full_length_rows_with_policy_logprobs():
    from entropo.rollout import HFEngine

    model, tokenizer = tiny()
    eos = HFEngine(model, tokenizer).eos_token_ids[0]
    with torch.no_grad():  # bias the model towards EOS so that rows would normally end at once
        model.get_output_embeddings().weight[eos] += 5.0
    plain = HFEngine(model, tokenizer).generate(["1+2="], 4, max_new_tokens=6,
                                                generator=torch.Generator().manual_seed(0))
    assert any(r == "eos" for r in plain.finish_reasons)
    engine = HFEngine(model, tokenizer, ignore_eos=True)
    out = engine.generate(["1+2="], 4, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    assert out.num_tokens == [6] * 4 and out.finish_reasons == ["length"] * 4 and engine.records_policy_logprobs
    # the recorded log-probs are the unconstrained policy's: equal to a fresh forward of the same rows
    lp, _ = token_logprobs_and_entropy(model, out.input_ids, out.attention_mask, compute_mask=out.response_mask)
    assert torch.allclose(lp, out.behaviour_logprobs, atol=1e-5)


def test_fused_adamw_matches_foreach_and_is_the_default():
    from entropo.config import OptimizerConfig
    from entropo.trainer import make_optimizer

    params = []
    for fused in (True, False):
        model, _ = tiny()
        opt = make_optimizer(model, OptimizerConfig(lr=1e-2, weight_decay=0.1, fused=fused))
        assert bool(opt.defaults.get("fused")) is fused
        for step in range(3):
            opt.zero_grad()
            ids = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(step))
            model(input_ids=ids).logits.square().mean().backward()
            opt.step()
        params.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*params):  # each step moves weights by ~lr = 1e-2; the kernels differ only in rounding
        assert torch.allclose(a, b, atol=2e-5)
    assert OptimizerConfig().fused is True
