"""The loop's own guarantees: accumulation == one big batch, resume == uninterrupted, a run writes what it says."""


import pytest
import torch

from entropo import checkpoint, models, ops
from entropo.batch import Batch
from entropo.components import Bound
from entropo.config import load_recipe
from entropo.logging import TIMING_KEYS, read_metrics
from entropo.trainer import PromptSampler, Regularizer, accumulate_gradients, train


def _toy_batch(model, tokenizer, B=8, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    input_ids = torch.randint(4, vocab, (B, L), generator=g)
    attention = torch.ones(B, L, dtype=torch.long)
    response = torch.zeros(B, L)
    for b in range(B):  # uneven left padding and response lengths, some right padding
        left = b % 3
        attention[b, :left] = 0
        input_ids[b, :left] = tokenizer.pad_token_id
        resp_len = 2 + (b * 5) % (L - left - 4)
        response[b, L - 2 - resp_len: L - 2] = 1
        attention[b, L - 2:] = 0 if b % 2 else 1
        if b % 2:
            input_ids[b, L - 2:] = tokenizer.pad_token_id
    batch = Batch(input_ids=input_ids, attention_mask=attention, response_mask=response,
                  rewards=torch.randn(B, generator=g), group_ids=torch.arange(B) // 4)
    with torch.no_grad():
        lp, ent = ops.token_logprobs_and_entropy(model, input_ids, attention, compute_mask=response)
    # off-policy old log-probs so the clip is active on some tokens
    batch.old_logprobs = (lp + 0.3 * torch.randn(B, L, generator=g)) * response
    batch.advantages = torch.randn(B, 1, generator=g) * response
    batch.token_weights = response * (torch.rand(B, L, generator=g) > 0.2).float()  # some tokens de-weighted
    return batch


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_accumulation_over_4_micro_batches_equals_full_batch(mode, tiny_recipe_overrides):
    model, tok = models.tiny(seed=0)
    batch = _toy_batch(model, tok)
    recipe = load_recipe(None, tiny_recipe_overrides + [f"aggregation.mode={mode}"])
    regs = [Regularizer(Bound("regularizer", "entropy"), 0.01)]
    grads = []
    for mbs in (8, 2):
        recipe.train.micro_batch_size = mbs
        model.zero_grad()
        accumulate_gradients(model, batch, recipe, Bound("objective", "ppo_clip"), regs)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    full, accum = grads
    assert full.abs().sum() > 0
    torch.testing.assert_close(accum, full, rtol=1e-5, atol=1e-7)


def test_prompt_sampler_covers_each_epoch_and_resumes():
    s = PromptSampler(10, seed=3)
    first = s.next(7) + s.next(3)
    assert sorted(first) == list(range(10))
    s.next(4)
    state = s.state_dict()
    rest = s.next(9)
    s2 = PromptSampler(10, seed=3)
    s2.load_state_dict(state)
    assert s2.next(9) == rest
    assert state == {"epoch": 1, "pos": 4}


def _strip_timing(rows):
    return [{k: v for k, v in r.items() if not any(k.startswith(t) for t in TIMING_KEYS)} for r in rows]


def test_resume_gives_identical_metrics_and_weights(tmp_path, tiny_recipe_overrides):
    ov = tiny_recipe_overrides + ["train.steps=6", "regularizers=[{name: kl, coef: 0.01, params: {kind: k3}}]",
                                  "train.mini_batches=2", "logging.tensorboard=false"]
    recipe = load_recipe(None, ov)
    straight = train(recipe, run_dir=tmp_path / "straight", console=lambda *_: None)
    recipe = load_recipe(None, ov)
    part = train(recipe, run_dir=tmp_path / "resumed", stop_after=3, console=lambda *_: None)
    assert part["steps"] == 3 and "eval_end" not in part
    assert checkpoint.latest(tmp_path / "resumed").name == "step_000003"
    # a crash after step 3's checkpoint may have left a torn metrics line: resume must drop it
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward/me')
    recipe = load_recipe(None, ov)
    resumed = train(recipe, run_dir=tmp_path / "resumed", resume=True, console=lambda *_: None)
    assert resumed["steps"] == 6
    a = _strip_timing(read_metrics(tmp_path / "straight"))
    b = _strip_timing(read_metrics(tmp_path / "resumed"))
    assert len(a) == 7 and a == b  # 6 steps + the final eval line
    assert straight["eval_end"] == resumed["eval_end"] and straight["eval_start"] == resumed["eval_start"]
    wa = checkpoint.load(checkpoint.latest(tmp_path / "straight"))["model"]
    wb = checkpoint.load(checkpoint.latest(tmp_path / "resumed"))["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_end_to_end_tiny_run_writes_metrics_and_reloadable_checkpoint(tmp_path, tiny_recipe_overrides):
    ov = tiny_recipe_overrides + ["train.steps=3", "logging.plots=true",
                                  "selection=[{name: dynamic_sampling}]", "rollout.max_tries=2"]
    recipe = load_recipe(None, ov)
    summary = train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)
    rows = read_metrics(tmp_path / "run")
    steps = [r for r in rows if not r.get("final")]
    assert [r["step"] for r in steps] == [0, 1, 2]
    required = ["reward/mean", "reward/std", "accuracy", "entropy/mean", "entropy/delta", "cov/logp_adv",
                "kl/behaviour", "response/length_mean", "selection/zero_variance_group_frac",
                "selection/dropped_frac", "time/rollout_s", "time/reward_s", "time/update_s", "tokens_per_s",
                "peak_mem_mb"]
    for r in steps:
        if r["actor/optimizer_steps"]:
            for k in required + ["actor/clip_frac_low", "actor/clip_frac_high", "actor/grad_norm"]:
                assert k in r, k
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["selection/dropped_frac"] <= 1.0
    assert rows[-1]["final"] and "eval/accuracy" in rows[-1]
    assert (tmp_path / "run" / "tensorboard").is_dir()
    assert (tmp_path / "run" / "plots" / "entropy.png").stat().st_size > 1000
    # the last checkpoint reloads into a fresh model and equals the exported final model
    state = checkpoint.load(checkpoint.latest(tmp_path / "run"))
    fresh, _ = models.tiny(seed=123)
    fresh.load_state_dict(state["model"])
    final, _ = models.load(summary["final_model"])
    for (n1, p1), (n2, p2) in zip(fresh.state_dict().items(), final.state_dict().items()):
        assert torch.equal(p1, p2), n1
    assert state["run_state"]["step"] == 3 and state["sampler"]["pos"] > 0
    # a second train() into the same dir refuses instead of clobbering the run
    with pytest.raises(FileExistsError):
        train(load_recipe(None, ov), run_dir=tmp_path / "run", console=lambda *_: None)


def test_reusing_behaviour_logprobs_matches_a_fresh_forward(tmp_path, tiny_recipe_overrides):
    """train.old_logprobs=auto (the default) skips the scoring forward; the run must match the recomputing one to
    rounding."""
    ov = tiny_recipe_overrides + ["train.steps=3", "logging.tensorboard=false"]
    a = train(load_recipe(None, ov + ["train.old_logprobs=recompute"]), run_dir=tmp_path / "recompute",
              console=lambda *_: None)
    b = train(load_recipe(None, ov), run_dir=tmp_path / "reuse",
              console=lambda *_: None)
    ra = [r for r in read_metrics(tmp_path / "recompute") if not r.get("final")]
    rb = [r for r in read_metrics(tmp_path / "reuse") if not r.get("final")]
    for x, y in zip(ra, rb):
        assert x["reward/mean"] == y["reward/mean"]  # same samples: the weights agree to rounding
        assert abs(x["entropy/mean"] - y["entropy/mean"]) < 1e-4
        assert abs(x["cov/logp_adv"] - y["cov/logp_adv"]) < 1e-4
        assert y["time/score_s"] < 0.01 <= x["time/score_s"] or y["time/score_s"] < x["time/score_s"]
    assert a["eval_end"] == b["eval_end"]
    with pytest.raises(Exception, match="top_p"):
        load_recipe(None, ov + ["train.old_logprobs=behaviour", "rollout.top_p=0.9"])
