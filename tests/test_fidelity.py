"""Released-code fidelity of Clip-Cov / KL-Cov (arXiv 2505.22617) and STEER (arXiv 2510.10150): ``scope="micro"``
equals the released per-micro-batch computation (current log-probs, per-micro-batch selection / min-max), and the
default ``scope="batch"`` is independent of the micro-batch split.

The ``released_*`` functions below are independent re-statements of the released formulas (PRIME-RL/Entropy-Mechanism-
of-RL and zz-haooo/STEER ``verl/trainer/ppo/core_algos.py``), written from reading them: per-token loss matrix before
aggregation (token-mean over the loss mask, as the released scripts), and the selected tokens / weights."""

import math

import pytest
import torch

from entropo import models, ops
from entropo.algorithms.entropy_mechanism import CLIP_COV_KEY, KL_COV_KEY, centred_covariance, select_top_cov
from entropo.algorithms.steer import WEIGHT_KEY
from entropo.batch import Batch
from entropo.components import Bound
from entropo.config import load_recipe
from entropo.trainer import accumulate_gradients
from entropo.trainer import train as train_fn


def _mm(x, mask):
    return (x * mask).sum() / mask.sum()


def released_clip_cov(old_lp, lp, adv, mask, clip_low, clip_high, ratio_frac, lb, ub):
    """Released Clip-Cov on one micro-batch: (per-token loss, bool selection). Draws with the global RNG."""
    ratio = torch.exp(lp - old_lp)
    plain = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    by_clip = (clipped > plain) & (mask > 0)
    cov = (adv - _mm(adv, mask)) * (lp.detach() - _mm(lp.detach(), mask))
    cov[mask == 0] = -math.inf
    cov[by_clip] = -math.inf
    budget = max(int(ratio_frac * mask.sum().item()), 1)
    where = torch.nonzero((cov < ub) & (cov > lb) & (mask > 0))
    keep = torch.ones_like(adv)
    if len(where) > 0:
        where = where[torch.randperm(len(where))[:min(budget, len(where))]]
        keep[where[:, 0], where[:, 1]] = 0
    return torch.maximum(plain, clipped) * keep, keep == 0


def released_kl_cov(old_lp, lp, adv, mask, ratio_frac, coef):
    """Released KL-Cov on one micro-batch (verl port: ratio is a fraction): (per-token loss, bool selection)."""
    log_ratio = lp - old_lp
    ratio = torch.exp(log_ratio)
    plain = -adv * ratio
    penalised = -adv * ratio + coef * log_ratio.abs()
    loss = plain.clone()
    valid = mask > 0
    flat = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
    a, l = adv[valid].detach().reshape(-1), lp[valid].detach().reshape(-1)
    cov = (a - a.mean()) * (l - l.mean())
    top = flat[torch.topk(cov, max(1, int(len(cov) * ratio_frac))).indices]
    rows, cols = top // adv.shape[1], top % adv.shape[1]
    loss[rows, cols] = penalised[rows, cols]
    selected = torch.zeros_like(valid)
    selected[rows, cols] = True
    return loss, selected


def released_steer(old_lp, lp, adv, mask, old_entropy, clip_low, clip_high, clip_c, w_min, w_max, linear):
    """Released STEER ``entropy_control`` loss on one micro-batch: (per-token loss, weights)."""
    with torch.no_grad():
        x = torch.exp(lp).clamp(1e-8, 1 - 1e-8)
        f = x * (1 - x) * (torch.log(x) + old_entropy)
        metric = adv / torch.exp(old_lp).clamp(1e-8, 1.0) * f
        metric = torch.where(torch.isfinite(metric), metric, torch.zeros_like(metric)).abs()
        valid = mask.bool()
        vals = metric[valid]
        lo, hi = vals.min(), vals.max()
        weights = torch.zeros_like(metric)
        if linear:
            w = w_max - (vals - lo) * (w_max - w_min) / (hi - lo) if hi > lo else torch.full_like(vals, (w_min + w_max) / 2)
            w = w.clamp(w_min, w_max)
        else:
            k = -torch.log(torch.tensor(w_min)) / torch.maximum(hi, torch.tensor(0.02))
            w = torch.exp(-k * vals).clamp(w_min, 1.0)
        weights[valid] = w
        weights = weights * mask
    ratio = torch.exp((lp - old_lp).clamp(-20.0, 20.0))
    plain = -adv * ratio
    clipped = torch.maximum(plain, -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high))
    capped = torch.minimum(-adv * clip_c, clipped)
    return torch.where(adv < 0, capped, clipped) * weights, weights


CLIP_COV = {"clip_low": 0.2, "clip_high": 0.2, "clip_cov_ratio": 0.25, "clip_cov_lb": 0.05, "clip_cov_ub": 5.0}
KL_COV = {"kl_cov_ratio": 0.2, "kl_coef": 1.0}
STEER_EXP = {"clip_low": 0.2, "clip_high": 0.28, "clip_c": 10.0, "lambda_min": 0.8, "lambda_max": 1.0,
             "mapping": "exp"}
STEER_LINEAR = {**STEER_EXP, "lambda_max": 1.2, "mapping": "linear"}


def released(name, params, old_lp, lp, adv, mask, old_entropy):
    if name == "clip_cov":
        return released_clip_cov(old_lp, lp, adv, mask, params["clip_low"], params["clip_high"],
                                 params["clip_cov_ratio"], params["clip_cov_lb"], params["clip_cov_ub"])
    if name == "kl_cov":
        return released_kl_cov(old_lp, lp, adv, mask, params["kl_cov_ratio"], params["kl_coef"])
    return released_steer(old_lp, lp, adv, mask, old_entropy, params["clip_low"], params["clip_high"],
                          params["clip_c"], params["lambda_min"], params["lambda_max"], params["mapping"] == "linear")


def toy_batch(rows=8, length=6, seed=0):
    """Random valid masks, per-row advantages, old log-probs / entropies, and an off-policy current policy."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(rows, length, generator=g) > 0.2).float()
    mask[:, 0] = 1.0
    b = Batch(input_ids=torch.zeros(rows, length, dtype=torch.long),
              attention_mask=torch.ones(rows, length, dtype=torch.long), response_mask=mask,
              rewards=torch.zeros(rows), group_ids=torch.arange(rows) // 4)
    b.old_logprobs = -torch.rand(rows, length, generator=g) * 3 * mask
    b.old_entropy = torch.rand(rows, length, generator=g) * 2 * mask
    b.advantages = torch.randn(rows, 1, generator=g).expand(rows, length) * mask
    current = b.old_logprobs + 0.4 * torch.randn(rows, length, generator=g) * mask
    return b, current.clamp(max=-1e-4)


CASES = [("clip_cov", CLIP_COV), ("kl_cov", KL_COV), ("steer", STEER_EXP), ("steer", STEER_LINEAR)]


@pytest.mark.parametrize("name, params", CASES)
@pytest.mark.parametrize("size", [2, 3, 8])
def test_micro_scope_equals_released_per_micro_batch(name, params, size):
    b, current = toy_batch()
    obj = Bound("objective", name, {**params, "scope": "micro"})
    assert obj.prepare(b, None) == {}  # nothing precomputed; clip_cov draws with the global RNG (generator None)
    for seed, m in enumerate(b.split(size)):
        rows = slice(seed * size, seed * size + m.size)
        lp = current[rows].clone().requires_grad_(True)
        torch.manual_seed(seed)
        ours, _ = obj(lp, m.old_logprobs, m.advantages, m.token_weights, extras=m.extras, micro_batch=m)
        lp_ref = current[rows].clone().requires_grad_(True)
        torch.manual_seed(seed)
        ref, chosen = released(name, params, m.old_logprobs, lp_ref, m.advantages, m.token_weights, m.old_entropy)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        (ops.masked_mean(ours, m.token_weights)).backward()
        (ops.masked_mean(ref, m.token_weights)).backward()
        torch.testing.assert_close(lp.grad, lp_ref.grad, rtol=1e-5, atol=1e-6)
        if name == "clip_cov":
            torch.manual_seed(seed)
            assert torch.equal(obj.instance.select_micro(lp.detach(), m.old_logprobs, m.advantages, m.token_weights),
                               chosen)
        elif name == "kl_cov":
            valid = m.token_weights > 0
            cov = centred_covariance(lp.detach(), m.advantages, valid.float())
            assert torch.equal(select_top_cov(cov, valid, params["kl_cov_ratio"]), chosen)


@pytest.mark.parametrize("name, params", CASES)
def test_batch_scope_is_released_rule_on_the_whole_batch_at_pi_old_and_split_independent(name, params):
    b, current = toy_batch()
    obj = Bound("objective", name, params)  # default scope: batch
    b.extras.update(obj.prepare(b, torch.Generator().manual_seed(7)))
    # the selection / weights: the released rule over the whole batch as one micro-batch with log_prob = old_log_prob
    torch.manual_seed(7)
    _, ref_choice = released(name, params, b.old_logprobs, b.old_logprobs.clone(), b.advantages, b.token_weights,
                             b.old_entropy)
    if name == "steer":
        torch.testing.assert_close(b.extras[WEIGHT_KEY], ref_choice, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(b.extras[CLIP_COV_KEY if name == "clip_cov" else KL_COV_KEY] > 0, ref_choice)
    full, _ = obj(current, b.old_logprobs, b.advantages, b.token_weights, extras=b.extras, micro_batch=b)
    for size in (1, 3, 5):
        parts = [obj(current[i:i + size], m.old_logprobs, m.advantages, m.token_weights, extras=m.extras,
                     micro_batch=m)[0] for i, m in zip(range(0, b.size, size), b.split(size))]
        assert torch.equal(torch.cat(parts), full)


@pytest.mark.parametrize("name, params", [("kl_cov", KL_COV), ("steer", STEER_EXP)])
def test_scopes_differ_off_policy_and_agree_at_pi_old_on_one_micro_batch(name, params):
    b, current = toy_batch()
    batch_obj, micro_obj = Bound("objective", name, params), Bound("objective", name, {**params, "scope": "micro"})
    b.extras.update(batch_obj.prepare(b, None))
    args = dict(extras=b.extras, micro_batch=b)
    at_old = [o(b.old_logprobs, b.old_logprobs, b.advantages, b.token_weights, **args)[0] for o in (batch_obj, micro_obj)]
    torch.testing.assert_close(at_old[0], at_old[1], rtol=1e-5, atol=1e-6)
    off = [o(current, b.old_logprobs, b.advantages, b.token_weights, **args)[0] for o in (batch_obj, micro_obj)]
    assert not torch.allclose(off[0], off[1], atol=1e-4)


def test_scope_is_validated():
    with pytest.raises(ValueError, match="scope"):
        Bound("objective", "clip_cov", {"scope": "minibatch"})
    with pytest.raises(ValueError, match="scope"):
        Bound("objective", "kl_cov", {"scope": "global"})
    with pytest.raises(ValueError, match="omega='code'"):
        Bound("objective", "steer", {"scope": "micro", "omega": "exact"})
    b, current = toy_batch()
    steer = Bound("objective", "steer", {"scope": "micro"})
    with pytest.raises(ValueError, match="old_entropy"):
        steer(current, b.old_logprobs, b.advantages, b.token_weights, extras={}, micro_batch=None)


def _model_batch(model, tokenizer, rows=8, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, model.config.vocab_size, (rows, length), generator=g)
    attention = torch.ones(rows, length, dtype=torch.long)
    response = torch.zeros(rows, length)
    for r in range(rows):  # uneven response lengths so the trainer's length-sorted micro-batches differ from chunks
        n = 2 + (r * 5) % 7
        response[r, length - n:] = 1
    b = Batch(input_ids=input_ids, attention_mask=attention, response_mask=response, rewards=torch.zeros(rows),
              group_ids=torch.arange(rows) // 4)
    with torch.no_grad():
        lp, ent = ops.token_logprobs_and_entropy(model, input_ids, attention, compute_mask=response)
    b.old_logprobs = (lp + 0.3 * torch.randn(rows, length, generator=g)).clamp(max=-1e-3) * response
    b.old_entropy = ent * response
    b.advantages = torch.randn(rows, 1, generator=g) * response
    return b


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("name, params", [("clip_cov", CLIP_COV), ("kl_cov", KL_COV), ("steer", STEER_EXP)])
def test_trainer_accumulation_micro_scope_equals_released_and_batch_scope_is_split_free(name, params):
    model, tok = models.tiny(seed=0)
    b = _model_batch(model, tok)
    recipe = load_recipe(None, ["model.name_or_path=tiny", "aggregation.mode=token-mean"])
    total = b.response_mask.sum()
    # micro scope through the trainer's own accumulation (length-sorted micro-batches of 3)
    recipe.train.micro_batch_size = 3
    obj = Bound("objective", name, {**params, "scope": "micro"})
    obj.prepare(b, torch.Generator().manual_seed(11))  # clip_cov keeps the update generator for its draws
    model.zero_grad()
    accumulate_gradients(model, b, recipe, obj, [])
    ours = _grads(model).clone()
    torch.manual_seed(11)  # the same stream, now global, as the released torch.randperm
    model.zero_grad()
    for _rows, m in b.split_by_length(3):
        lp, _ = ops.token_logprobs_and_entropy(model, m.input_ids, m.attention_mask, compute_mask=m.response_mask)
        loss, _ = released(name, params, m.old_logprobs, lp, m.advantages, m.response_mask, m.old_entropy)
        ((loss * m.response_mask).sum() / total).backward()
    torch.testing.assert_close(ours, _grads(model), rtol=1e-5, atol=1e-7)
    # batch scope: the same gradient whatever the micro-batch size
    obj = Bound("objective", name, params)
    b.extras.update(obj.prepare(b, torch.Generator().manual_seed(11)))
    grads = []
    for size in (8, 3, 1):
        recipe.train.micro_batch_size = size
        model.zero_grad()
        accumulate_gradients(model, b, recipe, obj, [])
        grads.append(_grads(model).clone())
    assert grads[0].abs().sum() > 0
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-7)


# ---- the SmolLM2 profile of `entropo reproduce` ----------------------------------------------------------------------

def test_smollm2_profile_arms_validate_and_quick_suite_is_unchanged():
    from entropo.config import check_components
    from entropo.reproduce.experiments import ARMS, MEASURES, PROFILES, select
    from entropo.reproduce.runner import SuiteConfig, arm_recipe

    profile = PROFILES["smollm2"]
    cfg = SuiteConfig(**profile.config)
    assert cfg.seeds >= 2 and cfg.eval_n >= 8 and profile.suite == "smollm2"
    exps = select([], "smollm2")
    assert [e.name for e in exps] == ["s2_entropy_mechanism", "s2_clip_cov", "s2_entropy_targets",
                                      "s2_steer_siren_lpreg"]
    arms = sorted({a for e in exps for a in e.arms})
    assert set(arms) == {a for a in ARMS if a.startswith("s2_")}
    for e in exps:
        for c in e.checks:
            assert c.measure in MEASURES and set(c.arms()) <= set(e.arms)
        assert set(e.extra_measures) <= set(MEASURES)
    for arm in arms:  # every arm is the shared recipe + its method's components, and builds
        r = arm_recipe(arm, 2, cfg)
        check_components(r)
        Bound("objective", r.objective.name, r.objective.params)
        for reg in r.regularizers:
            Bound("regularizer", reg.name, reg.params)
        assert r.seed == 2 and r.train.steps == cfg.steps and r.eval.k == [1, 8] and r.eval.every == 0
        assert r.model.name_or_path == "smollm2-135m-instruct" and r.train.mini_batches == 4
        assert r.task.params["num_terms"] == 3 and r.rollout.temperature == 1.0
    scopes = {arm: arm_recipe(arm, 0, cfg).objective.params.get("scope", "batch") for arm in arms}
    for method in ("clip_cov", "kl_cov", "steer"):  # both scopes of the methods whose released code is per micro
        assert scopes[f"s2_{method}"] == "batch" and scopes[f"s2_{method}_micro"] == "micro"
    steer = arm_recipe("s2_steer", 0, cfg).objective.params  # from the released run_exp.sh
    assert (steer["lambda_min"], steer["lambda_max"], steer["mapping"], steer["clip_low"], steer["clip_high"],
            steer["clip_c"]) == (0.8, 1.0, "exp", 0.2, 0.28, 10.0)
    clip_cov = arm_recipe("s2_clip_cov", 0, cfg).objective.params  # the Clip-Cov script: standard clip 1 / 1
    assert (clip_cov["clip_low"], clip_cov["clip_high"]) == (1.0, 1.0)
    epo = arm_recipe("s2_epo", 0, cfg).regularizers[0].params
    assert epo["phase_steps"] == cfg.steps
    # the tiny quick suite is untouched
    assert [e.name for e in select([])] == ["entropy_mechanism", "entropy_identity", "clip_cov", "entropy_targets",
                                            "steer_siren_lpreg", "sample_efficiency", "stability"]


def test_smollm2_cpu_profile_keeps_the_arms_and_changes_only_the_task_and_scale():
    from entropo.reproduce.experiments import PROFILES
    from entropo.reproduce.runner import SuiteConfig, arm_recipe

    full, cpu = SuiteConfig(**PROFILES["smollm2"].config), SuiteConfig(**PROFILES["smollm2_cpu"].config)
    assert PROFILES["smollm2_cpu"].suite == "smollm2" and cpu.seeds >= 2 and cpu.eval_n >= 8
    for arm in ("s2_grpo", "s2_kl_cov_micro", "s2_aepo_low", "s2_epo", "s2_lp_reg"):
        a, b = arm_recipe(arm, 1, full), arm_recipe(arm, 1, cpu)
        # the method is untouched ...
        assert (a.objective, a.producers, a.optimizer, a.train.mini_batches) == (
            b.objective, b.producers, b.optimizer, b.train.mini_batches)
        # EPO's phase weight spans the run, so its phase_steps follows the step count; nothing else differs
        strip = lambda regs: [(r.name, r.coef, {k: v for k, v in r.params.items() if k != "phase_steps"})  # noqa: E731
                              for r in regs]
        assert strip(a.regularizers) == strip(b.regularizers)
        # ... the task asks for the answer directly: two 1-digit terms, 32 held out of 81, short answers
        assert b.task.params["num_terms"] == 2 and b.task.params["digits"] == 1 and b.task.eval_size == 32
        assert "Answer with just the number" in b.task.params["template"] and b.rollout.max_new_tokens == 16
        assert b.rollout.prompts_per_step == 4 and b.rollout.n == 8 and b.train.steps == cpu.steps
        assert b.checkpoint.every == 5 and b.eval.max_prompts == 32 and b.eval.k == [1, 8]


TINY = ["model.name_or_path=tiny", "warmup.steps=5", "rollout.prompts_per_step=2", "rollout.n=4", "task.eval_size=4",
        "eval.n=2", "eval.k=[1, 2]", "rollout.max_new_tokens=3"]


@pytest.fixture
def two_arm_suite(monkeypatch):
    from entropo.reproduce import experiments

    exp = experiments.Experiment("resume_toy", "R. two arms", "test", "Clip-Cov keeps entropy above GRPO's.",
                                 ["grpo", "clip_cov"], [experiments.Compare("entropy_last_third", "clip_cov", "grpo")],
                                 suite="resume_toys")
    monkeypatch.setitem(experiments.EXPERIMENTS_BY_NAME, "resume_toy", exp)
    return exp


class Interrupted(Exception):
    pass


def _counting_train(monkeypatch, interrupt: str | None = None):
    """Patch the trainer the runner calls: count runs per arm; ``interrupt`` cuts that arm off after one step."""
    import entropo.trainer as trainer

    real, calls = train_fn, []

    def train(recipe, **kw):
        arm = recipe.name.rsplit("_seed", 1)[0]
        if recipe.train.steps == 0:  # the warm-up cache's 0-step run
            return real(recipe, **kw)
        calls.append(arm)
        if arm == interrupt:
            real(recipe, stop_after=1, **kw)
            raise Interrupted  # the process dies here (pytest reserves KeyboardInterrupt for itself)
        return real(recipe, **kw)

    monkeypatch.setattr(trainer, "train", train)
    return calls


def test_interrupted_suite_reruns_only_the_cut_off_arm(tmp_path, monkeypatch, two_arm_suite):
    from entropo.reproduce.runner import SuiteConfig, run_suite

    cfg = SuiteConfig(seeds=1, steps=2, eval_size=4, eval_n=2, overrides=TINY)
    calls = _counting_train(monkeypatch, interrupt="clip_cov")
    with pytest.raises(Interrupted):
        run_suite(tmp_path, cfg, only=["resume_toy"], console=lambda *_: None)
    assert calls == ["grpo", "clip_cov"]
    cut = read_metrics_rows(tmp_path / "runs" / "clip_cov" / "seed0")
    assert cut and not any(r.get("final") for r in cut)  # one step logged, no end-of-run row
    calls = _counting_train(monkeypatch)
    summary = run_suite(tmp_path, cfg, only=["resume_toy"], console=lambda *_: None)
    assert calls == ["clip_cov"]  # the finished GRPO run is reused; only the cut-off arm runs again, from scratch
    rows = read_metrics_rows(tmp_path / "runs" / "clip_cov" / "seed0")
    assert [r["step"] for r in rows if not r.get("final")] == [0, 1] and rows[-1].get("final")
    assert summary["experiments"]["resume_toy"]["verdict"]
    calls = _counting_train(monkeypatch)
    run_suite(tmp_path, cfg, only=["resume_toy"], console=lambda *_: None)
    assert calls == []  # a finished (arm, seed) is never rerun


def test_budget_stops_starting_runs_and_the_next_call_continues(tmp_path, monkeypatch, two_arm_suite):
    from entropo.reproduce.runner import SuiteConfig, run_suite

    cfg = SuiteConfig(seeds=1, steps=1, eval_size=4, eval_n=2, overrides=TINY, budget_s=1e-6)
    calls = _counting_train(monkeypatch)
    first = run_suite(tmp_path, cfg, only=["resume_toy"], console=lambda *_: None)
    assert calls == ["grpo"] and first["incomplete"]  # one run per call at this budget, never zero
    assert first["remaining"] == ["clip_cov seed 0"] and not (tmp_path / "report.md").exists()
    done = run_suite(tmp_path, cfg, only=["resume_toy"], console=lambda *_: None)  # the finished run is reused
    assert calls == ["grpo", "clip_cov"] and not done.get("incomplete") and (tmp_path / "report.md").exists()


def test_with_checkpoints_a_cut_off_run_resumes_where_it_stopped_and_equals_a_straight_run(tmp_path, monkeypatch,
                                                                                              two_arm_suite):
    """checkpoint_every > 0: the budget stops a run at a checkpoint (not only between runs), and the next call
    resumes it there instead of starting over; the resumed run's metrics equal an uninterrupted run's."""
    from entropo.reproduce.runner import SuiteConfig, run_suite

    cfg = SuiteConfig(seeds=1, steps=2, eval_size=4, eval_n=2, overrides=TINY, checkpoint_every=1, budget_s=1e-6)
    calls = _counting_train(monkeypatch)
    first = run_suite(tmp_path / "cut", cfg, only=["resume_toy"], console=lambda *_: None)
    cut_dir = tmp_path / "cut" / "runs" / "grpo" / "seed0"
    assert calls == ["grpo"] and first["remaining"] == ["grpo seed 0", "clip_cov seed 0"]
    assert [r["step"] for r in read_metrics_rows(cut_dir)] == [0]  # stopped at the checkpoint of step 1
    while run_suite(tmp_path / "cut", cfg, only=["resume_toy"], console=lambda *_: None).get("incomplete"):
        pass
    assert calls[:2] == ["grpo", "grpo"] and calls.count("grpo") == 2  # resumed once, never started over
    assert not (cut_dir / "checkpoints").exists() and (cut_dir / "final").is_dir()  # finished: only what reuse needs
    straight = SuiteConfig(seeds=1, steps=2, eval_size=4, eval_n=2, overrides=TINY, checkpoint_every=1)
    run_suite(tmp_path / "straight", straight, only=["resume_toy"], console=lambda *_: None)
    for arm in ("grpo", "clip_cov"):
        a = [r for r in read_metrics_rows(tmp_path / "cut" / "runs" / arm / "seed0") if "accuracy" in r]
        b = [r for r in read_metrics_rows(tmp_path / "straight" / "runs" / arm / "seed0") if "accuracy" in r]
        assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1]
        for ra, rb in zip(a, b):
            for key in ("accuracy", "entropy/mean", "actor/pg_loss", "actor/grad_norm"):
                assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), (arm, ra["step"], key)


def read_metrics_rows(run_dir):
    from entropo.logging import read_metrics

    return read_metrics(run_dir)


def test_cli_scale_picks_the_profile(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import entropo.reproduce as reproduce
    from entropo.cli import app

    seen = {}

    def fake_run_suite(out_dir, cfg, only, console, command, suite):
        seen.update(out_dir=out_dir, cfg=cfg, suite=suite, command=command)
        return {"incomplete": True, "remaining": ["s2_grpo seed 0"], "wall_s": 1.0}

    monkeypatch.setattr(reproduce, "run_suite", fake_run_suite)
    res = CliRunner().invoke(app, ["reproduce", "--scale", "smollm2", "--seeds", "2", "--budget-min", "9",
                                   "--set", "rollout.prompts_per_step=32", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert seen["suite"] == "smollm2" and cfg.seeds == 2 and cfg.eval_n == 8 and cfg.budget_s == 540
    assert cfg.overrides == ["rollout.prompts_per_step=32"] and cfg.eval_every == 0
    assert "--scale smollm2" in seen["command"] and "rerun the same command" in res.output
    bad = CliRunner().invoke(app, ["reproduce", "--scale", "nope"])
    assert bad.exit_code != 0 and "smollm2" in bad.output
    both = CliRunner().invoke(app, ["reproduce", "--scale", "smollm2", "--quick"])
    assert both.exit_code != 0


def test_run_fingerprint_ignores_memory_settings_only():
    """A finished (arm, seed) stays valid when a setting that cannot change its numbers is added or changed (the
    allocator threshold, the memory-mapped reference); a setting that changes the run changes the fingerprint."""
    from entropo.reproduce.runner import recipe_fingerprint

    base = recipe_fingerprint(load_recipe(None, []), 1)
    same = load_recipe(None, ["train.malloc_mmap_threshold=0", "model.reference_resident=false"])
    assert recipe_fingerprint(same, 1) == base
    assert recipe_fingerprint(load_recipe(None, ["optimizer.lr=1e-4"]), 1) != base
    assert recipe_fingerprint(load_recipe(None, []), 2) != base  # threads change float reductions


def test_a_started_run_with_another_fingerprint_is_started_over_and_said(tmp_path, monkeypatch):
    from pathlib import Path

    from entropo.reproduce import runner

    cfg = runner.SuiteConfig(seeds=1, steps=2, eval_size=4, eval_n=2, overrides=TINY, checkpoint_every=1,
                             cache_warmup=False)
    run_dir = tmp_path / "runs" / "grpo" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "repro_recipe.started").write_text("started with --threads 2")
    monkeypatch.setattr(runner.ckpt, "latest", lambda d: Path(d) / "checkpoints" / "step_000001")
    said, resumed = [], []

    def fake_train(recipe, run_dir, console, resume, **kw):
        resumed.append(resume)
        return {"steps": 0}

    assert runner.run_arm("grpo", 0, cfg, tmp_path, said.append, train_fn=fake_train) is None
    assert resumed == [False] and any("starting it over" in m and "--threads 1" in m for m in said)
    assert (run_dir / "repro_recipe.started").read_text() == runner.recipe_fingerprint(
        runner.arm_recipe("grpo", 0, cfg), 1)


def test_an_arm_that_checkpoints_resumes_even_when_the_suite_does_not(tmp_path, monkeypatch):
    """cfg.checkpoint_every = 0 but the arm's overrides set checkpoint.every: a started run with the same fingerprint
    and a checkpoint is resumed, not deleted; without the arm's checkpoints it starts over."""
    from pathlib import Path

    from entropo.reproduce import runner
    from entropo.reproduce.experiments import Arm

    monkeypatch.setitem(runner.ARMS, "grpo_ckpt", Arm("demo", ["checkpoint.every=1"], "GRPO, checkpoints"))
    cfg = runner.SuiteConfig(seeds=1, steps=2, eval_size=4, eval_n=2, overrides=TINY, cache_warmup=False)
    assert cfg.checkpoint_every == 0
    monkeypatch.setattr(runner.ckpt, "latest", lambda d: Path(d) / "checkpoints" / "step_000001")
    resumed = []

    def fake_train(recipe, run_dir, console, resume, **kw):
        resumed.append(resume)
        return {"steps": 1}

    for arm in ("grpo_ckpt", "grpo"):
        run_dir = tmp_path / "runs" / arm / "seed0"
        run_dir.mkdir(parents=True)
        (run_dir / "repro_recipe.started").write_text(
            runner.recipe_fingerprint(runner.arm_recipe(arm, 0, cfg), cfg.threads))
        (run_dir / "marker").write_text("kept only by a resume")
        assert runner.run_arm(arm, 0, cfg, tmp_path, lambda *_: None, train_fn=fake_train) is None
    assert resumed == [True, False]
    assert (tmp_path / "runs" / "grpo_ckpt" / "seed0" / "marker").exists()
    assert not (tmp_path / "runs" / "grpo" / "seed0" / "marker").exists()
