"""entropo reproduce: the bandit entropy identity (against autograd, finite differences and the spec's toy numbers),
seed aggregation and the check rules (against hand-computed values on fake metrics rows), the warm-up cache
(identical to warming up inside the run), and a tiny end-to-end suite through the CLI (report, table rows, PNGs)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from entropo.cli import app
from entropo.logging import TIMING_KEYS, read_metrics
from entropo.reproduce import bandit
from entropo.reproduce.aggregate import (
    aggregate_curve,
    mean_and_spread,
    trailing_mean,
    window_mean,
)
from entropo.reproduce.experiments import (
    EXPERIMENTS,
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    Compare,
    NotWorse,
    Within,
    band_inside_frac,
    binned_entropy_accuracy,
    combine,
    entropy_deceleration,
    entropy_fit,
    grad_norm_cv,
    select,
)
from entropo.reproduce.runner import (
    SuiteConfig,
    arm_recipe,
    from_warm_model,
    warmed_up_model,
    warmup_key,
)
from entropo.trainer import train

# ---- the entropy-change identity on a softmax bandit ---------------------------------------------------------------


def test_bandit_matches_the_spec_toy_numbers():
    # /work/shared/methods/rlvr.md §1 (f): z = [2, 1, 0], Q = [1, 0, -1], eta = 0.01
    z = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    a = bandit.centered_advantage(z, torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))
    assert a.tolist() == pytest.approx([0.42479, -0.57521, -1.57521], abs=1e-5)
    assert bandit.actual_entropy_change(z, a, 0.01, "natural").item() == pytest.approx(-0.0042478, abs=1e-7)
    assert bandit.predicted_entropy_change(z, a, 0.01, "natural").item() == pytest.approx(-0.0042440, abs=1e-7)
    assert bandit.actual_entropy_change(z, a, 0.01, "vanilla").item() == pytest.approx(-0.0011990, abs=1e-7)
    assert bandit.predicted_entropy_change(z, a, 0.01, "vanilla").item() == pytest.approx(-0.0011978, abs=1e-7)


@pytest.mark.parametrize("kind", bandit.PG_KINDS)
def test_prediction_is_the_exact_directional_derivative_of_entropy(kind):
    """-Cov(log pi, dz) equals grad_z H · dz computed by autograd, to float64 precision, on random bandits."""
    logits, adv = bandit.random_instances(50, 7, seed=3)
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(bandit.entropy(z).sum(), z)
    for eta in (1e-3, 0.5):
        dz = bandit.logit_step(logits, adv, eta, kind)
        directional = (grad * dz).sum(-1)
        assert torch.allclose(bandit.predicted_entropy_change(logits, adv, eta, kind), directional, rtol=1e-10,
                              atol=1e-14)


def test_entropy_gradient_against_finite_differences():
    logits, _ = bandit.random_instances(1, 5, seed=1)
    z = logits[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(bandit.entropy(z), z)
    h = 1e-6
    for j in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[j] = h
        fd = (bandit.entropy(logits[0] + e) - bandit.entropy(logits[0] - e)) / (2 * h)
        assert float(fd) == pytest.approx(float(grad[j]), abs=1e-8)


def test_vanilla_step_is_the_softmax_gradient_of_expected_advantage():
    logits, adv = bandit.random_instances(20, 6, seed=2)
    z = logits.clone().requires_grad_(True)
    expected = (torch.softmax(z, -1) * adv).sum()  # A held fixed, E_pi[A] = 0 at z
    (grad,) = torch.autograd.grad(expected, z)
    assert torch.allclose(bandit.logit_step(logits, adv, 1.0, "vanilla"), grad, atol=1e-12)
    assert torch.allclose((torch.softmax(logits, -1) * adv).sum(-1), torch.zeros(20, dtype=torch.float64),
                          atol=1e-12)


@pytest.mark.parametrize("kind", bandit.PG_KINDS)
def test_prediction_error_is_second_order(kind):
    res = bandit.identity_experiment(num=200, arms=8, etas=[1e-3, 2e-3, 4e-3], seed=5)
    err = res.median_abs_error(kind)
    assert err[1] / err[0] == pytest.approx(4.0, rel=0.05)  # doubling eta quadruples the error
    assert err[2] / err[1] == pytest.approx(4.0, rel=0.05)
    assert res.slope(kind) == pytest.approx(2.0, abs=0.05)
    assert bandit.loglog_slope(np.array([1.0, 10.0]), np.array([3.0, 300.0])) == pytest.approx(2.0)


# ---- aggregation on fake metrics rows ------------------------------------------------------------------------------

def fake_run(values: dict[str, list[float]], final: dict[str, float] | None = None, start: int = 0):
    n = len(next(iter(values.values())))
    rows = [{"step": start + i, **{k: v[i] for k, v in values.items()}} for i in range(n)]
    if final is not None:
        rows.append({"step": start + n, "final": True, **{f"eval/{k}": v for k, v in final.items()}})
    return rows


def test_curve_mean_and_spread_by_hand():
    runs = [fake_run({"entropy/mean": [1.0, 0.8, 0.6]}, {"accuracy": 0.5}),
            fake_run({"entropy/mean": [1.2, 0.6, 0.7]}, {"accuracy": 0.7}),
            fake_run({"entropy/mean": [0.8, 0.7, 0.5]}, {"accuracy": 0.6})]
    c = aggregate_curve(runs, "entropy/mean")
    assert c.steps.tolist() == [0, 1, 2]  # the final (eval-only) row is not a step of a train curve
    assert c.mean.tolist() == pytest.approx([1.0, 0.7, 0.6])
    # sample std (ddof=1): step 0 deviations (0, .2, -.2) -> sqrt(0.08/2) = 0.2; step 2 (0, .1, -.1) -> 0.1
    assert c.spread.tolist() == pytest.approx([0.2, 0.1, 0.1])
    ev = aggregate_curve(runs, "eval/accuracy")
    assert ev.steps.tolist() == [3] and ev.mean.tolist() == pytest.approx([0.6]) and ev.spread[0] == pytest.approx(0.1)
    one = aggregate_curve(runs[:1], "entropy/mean")
    assert one.spread.tolist() == [0.0, 0.0, 0.0]
    assert mean_and_spread([0.5, 0.7, 0.6]) == pytest.approx((0.6, 0.1))
    assert mean_and_spread([0.4]) == (0.4, 0.0)


def test_curves_align_on_common_steps_and_smooth():
    a = fake_run({"x": [1.0, 2.0, 3.0, 4.0]})
    b = fake_run({"x": [10.0, 20.0, 30.0]}, start=1)
    c = aggregate_curve([a, b], "x")
    assert c.steps.tolist() == [1, 2, 3] and c.per_seed.tolist() == [[2, 3, 4], [10, 20, 30]]
    assert trailing_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert aggregate_curve([a], "x", smooth=3).per_seed[0].tolist() == pytest.approx([1.0, 1.5, 2.0, 3.0])
    assert aggregate_curve([a, fake_run({"y": [1.0]})], "x") is None


def test_window_means_and_measures_by_hand():
    rows = fake_run({"entropy/mean": [0.9, 0.9, 0.9, 0.6, 0.6, 0.6, 0.5, 0.5, 0.5],
                     "actor/grad_norm": [9.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0]}, {"pass@1": 0.3})
    assert window_mean(rows, "entropy/mean", 2 / 3, 1.0) == pytest.approx(0.5)
    assert window_mean(rows, "entropy/mean", 0.0, 0.1) == pytest.approx(0.9)  # at least one step
    # drops: 0.9 -> 0.6 (0.3), 0.6 -> 0.5 (0.1): decelerating by 0.2
    assert entropy_deceleration(rows) == pytest.approx(0.2)
    # first 10 % (one step) skipped: values alternate 1, 3 (8 values) -> mean 2, population std 1
    assert grad_norm_cv(rows) == pytest.approx(0.5)


def test_binned_fit_by_hand():
    h = np.linspace(1.0, 0.1, 20)
    acc = -0.3 * np.exp(h) + 0.9  # exactly on the law: a = 0.3, b = 0.9, ceiling 0.6
    acc[::2] += 0.01  # even steps up, odd steps down: each 2-step window averages it away
    acc[1::2] -= 0.01
    rows = fake_run({"entropy/mean": list(h), "accuracy": list(acc)}, {"accuracy": 0.5})
    bins_h, bins_acc = binned_entropy_accuracy(rows)
    assert len(bins_h) == 10 and bins_h[0] == pytest.approx((h[0] + h[1]) / 2)
    assert bins_acc[3] == pytest.approx((-0.3 * np.exp(h[6]) + 0.9 - 0.3 * np.exp(h[7]) + 0.9) / 2)
    fit = entropy_fit(rows)
    # window means of e^H are not e^(mean H): the fit is near, not exactly on, (0.3, 0.9)
    assert fit["a"] == pytest.approx(0.3, rel=0.01) and fit["ceiling"] == pytest.approx(0.6, abs=0.01)
    assert fit["r2"] > 0.999


def test_epo_band_fraction_by_hand():
    # running means: 1, 1, 1, 0.95, 0.88 ; inside (0.8, 1.2)·H_bar: 1 yes, 1 yes, 1 yes, 0.8 no (0.8 > 0.76, < 1.14:
    # yes), 0.6 vs (0.704, 1.056): no
    rows = fake_run({"entropy/mean": [1.0, 1.0, 1.0, 0.8, 0.6]})
    assert band_inside_frac(rows, 0.8, 1.2, skip=0.0) == pytest.approx(4 / 5)
    assert band_inside_frac(rows, 0.8, 1.2, skip=0.2) == pytest.approx(3 / 4)


# ---- check rules ------------------------------------------------------------------------------------------------------

def test_compare_rule():
    c = Compare("m", "x", "base", margin=0.02)
    assert c.evaluate({"x": [0.5, 0.6], "base": [0.4, 0.5]}).verdict == HELD
    assert c.evaluate({"x": [0.41, 0.6], "base": [0.4, 0.5]}).verdict == INCONCLUSIVE  # below the margin
    assert c.evaluate({"x": [0.3, 0.6], "base": [0.4, 0.5]}).verdict == INCONCLUSIVE  # seeds disagree
    assert c.evaluate({"x": [0.3, 0.5], "base": [0.4, 0.5]}).verdict == NOT_HELD
    lower = Compare("m", "x", "base", higher=False)
    assert lower.evaluate({"x": [0.1, 0.2], "base": [0.4, 0.5]}).verdict == HELD
    assert "(arm - baseline) -0.300, -0.300" in lower.evaluate({"x": [0.1, 0.2], "base": [0.4, 0.5]}).detail


def test_not_worse_and_within_rules():
    nw = NotWorse("m", "x", "base", tol=0.03)
    assert nw.evaluate({"x": [0.48, 0.6], "base": [0.5, 0.5]}).verdict == HELD
    assert nw.evaluate({"x": [0.4, 0.6], "base": [0.5, 0.5]}).verdict == INCONCLUSIVE
    assert nw.evaluate({"x": [0.4, 0.45], "base": [0.5, 0.5]}).verdict == NOT_HELD
    w = Within("m", "x", 0.32, 0.48)
    assert w.evaluate({"x": [0.33, 0.47]}).verdict == HELD
    assert w.evaluate({"x": [0.33, 0.5]}).verdict == INCONCLUSIVE
    assert w.evaluate({"x": [0.1, 0.9]}).verdict == NOT_HELD
    assert combine([HELD, HELD]) == HELD and combine([HELD, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HELD, NOT_HELD, INCONCLUSIVE]) == NOT_HELD


def test_every_experiment_names_known_arms_and_measures():
    from entropo.reproduce.experiments import ARMS, MEASURES

    for exp in EXPERIMENTS:
        assert set(exp.arms) <= set(ARMS)
        for c in exp.checks:
            assert c.measure in MEASURES and set(c.arms()) <= set(exp.arms)
    assert [e.name for e in select(["kl_cov", "stability"])] == ["clip_cov", "stability"]
    assert [e.name for e in select(["aepo", "dump"])] == ["entropy_targets", "sample_efficiency"]
    for unknown in ("nope", "demo"):  # the baseline's recipe names no single experiment
        with pytest.raises(ValueError):
            select([unknown])
    cfg = SuiteConfig.quick()
    for arm in ARMS:  # every arm's recipe + overrides validates
        r = arm_recipe(arm, 1, cfg)
        own_steps = any(o.startswith("train.steps=") for o in ARMS[arm].overrides)  # e.g. an SFT-only arm: 0
        assert r.seed == 1 and (r.train.steps == cfg.steps or own_steps)


# ---- the warm-up cache -----------------------------------------------------------------------------------------------

TINY = ["model.name_or_path=tiny", "warmup.steps=5", "rollout.prompts_per_step=2", "rollout.n=4", "task.eval_size=4",
        "eval.n=2", "eval.k=[1, 2]"]


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def test_cached_warmup_gives_the_same_run(tmp_path):
    cfg = SuiteConfig(seeds=1, steps=3, eval_size=4, eval_n=2, overrides=TINY)
    recipe = arm_recipe("clip_cov", 1, cfg)  # a random token selection: any RNG difference would show
    quiet = {"console": lambda *_: None}
    train(recipe, run_dir=tmp_path / "inline", **quiet)
    model = warmed_up_model(recipe, tmp_path / "cache", train, quiet["console"])
    assert model.is_dir() and model.parent.name == warmup_key(recipe)
    cached = from_warm_model(recipe, model)
    assert cached.warmup.steps == 0 and recipe.warmup.steps == 5
    train(cached, run_dir=tmp_path / "cached", **quiet)
    inline, from_cache = read_metrics(tmp_path / "inline"), read_metrics(tmp_path / "cached")
    assert len(inline) == 4 and comparable(inline) == comparable(from_cache)
    assert warmed_up_model(recipe, tmp_path / "cache", _never, quiet["console"]) == model  # reused, not rerun
    other = arm_recipe("clip_cov", 2, cfg)
    assert warmup_key(other) != warmup_key(recipe)


def _never(*args, **kwargs):
    raise AssertionError("the cached warm-up should have been reused")


# ---- end to end through the CLI ----------------------------------------------------------------------------------

def test_reproduce_cli_writes_report(tmp_path, monkeypatch):
    """One experiment with 2 arms at 1 seed and 3 steps, plus the bandit identity, through `entropo reproduce`."""
    from entropo.reproduce import experiments

    tiny_exp = experiments.Experiment(
        "tiny_check", "9. Clip-Cov vs GRPO (test)", "test", "Clip-Cov keeps entropy above GRPO's.",
        ["grpo", "clip_cov"], [Compare("entropy_last_third", "clip_cov", "grpo"),
                               NotWorse("eval_pass@2", "clip_cov", "grpo", tol=0.03)], extra_plots=["fit"])
    monkeypatch.setitem(experiments.EXPERIMENTS_BY_NAME, "tiny_check", tiny_exp)
    monkeypatch.setitem(experiments.MEASURES, "eval_pass@2", ("pass@2", experiments.final_eval("pass@2")))
    out = tmp_path / "rep"
    args = ["reproduce", "--quick", "--only", "entropy_identity", "--only", "tiny_check", "--seeds", "1",
            "--steps", "3", "--out", str(out), "--summary-md", str(tmp_path / "doc.md")]
    args += [x for o in TINY for x in ("--set", o)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["experiments"]) == ["entropy_identity", "tiny_check"]
    table = [line for line in report.splitlines() if line.startswith(("| 2. ", "| 9. "))]
    assert len(table) == 2 and "entropy-change identity" in table[0] and "Clip-Cov vs GRPO" in table[1]
    for e in summary["experiments"].values():
        assert e["verdict"] in (HELD, NOT_HELD, INCONCLUSIVE) and e["verdict"] in report
        assert e["plots"]
        for p in e["plots"]:
            assert (out / p).stat().st_size > 1000 and f"plots/{(out / p).name}" in report
    assert summary["experiments"]["entropy_identity"]["verdict"] == HELD and summary["steps"] == 3
    tiny = summary["experiments"]["tiny_check"]
    assert len(tiny["plots"]) == 2 and [c["verdict"] for c in tiny["checks"]] and len(tiny["checks"]) == 2
    # the reported numbers are the runs' own: recompute one from metrics.jsonl
    runs = {arm: read_metrics(out / "runs" / arm / "seed0") for arm in ("grpo", "clip_cov")}
    for arm, rows in runs.items():
        steps = [r for r in rows if not r.get("final")]
        assert len(steps) == 3
        assert tiny["values"]["entropy_last_third"][arm] == [pytest.approx(steps[-1]["entropy/mean"])]
    doc = (tmp_path / "doc.md").read_text()
    assert all(row in doc for row in table) and "entropo reproduce --quick --only entropy_identity" in doc
    again = CliRunner().invoke(app, args)  # finished runs are reused
    assert again.exit_code == 0 and again.output.count("reusing") == 2


def test_custom_experiment_and_suites(tmp_path, monkeypatch):
    """A custom experiment runs its own function once per invocation and its result is the report's; --suite picks
    the experiments of one suite, --only finds experiments of any suite; an experiment's own step count applies
    unless the user fixed one."""
    from entropo.reproduce import experiments
    from entropo.reproduce.runner import experiment_config, run_suite

    calls = []

    def run(cfg, out_dir, console):
        calls.append(cfg.steps)
        out_dir.mkdir(parents=True, exist_ok=True)
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        fig.savefig(out_dir / "curve.png")
        plt.close(fig)
        return experiments.CustomResult(NOT_HELD, "x 0.25 vs y 0.5", [{"check": "x > y", "detail": "0.25 vs 0.5",
                                                                       "verdict": NOT_HELD}],
                                        lines=["custom table"], plots=[out_dir / "curve.png"], values={"x": 0.25})

    exp = experiments.Experiment("custom_toy", "1. a custom toy", "paper", "x beats y", [], [], kind="custom",
                                 suite="toys", steps=7, run=run)
    monkeypatch.setattr(experiments, "EXPERIMENTS", [*experiments.EXPERIMENTS, exp])
    monkeypatch.setitem(experiments.EXPERIMENTS_BY_NAME, "custom_toy", exp)
    monkeypatch.setattr(experiments, "SUITES", sorted({*experiments.SUITES, "toys"}))
    assert [e.name for e in select([], "toys")] == ["custom_toy"]
    assert all(e.suite == "entropy" for e in select([]))
    with pytest.raises(ValueError, match="--suite"):
        select([], "nope")
    assert experiment_config(exp, SuiteConfig(steps=3)).steps == 7
    assert experiment_config(exp, SuiteConfig(steps=3, fixed_steps=True)).steps == 3
    summary = run_suite(tmp_path, SuiteConfig(seeds=1, steps=3), suite="toys", console=lambda *_: None)
    entry = summary["experiments"]["custom_toy"]
    assert calls == [7] and entry["verdict"] == NOT_HELD and entry["values"] == {"x": 0.25}
    report = (tmp_path / "report.md").read_text()
    assert "custom table" in report and "| x > y | 0.25 vs 0.5 |" in report
    assert entry["plots"] == ["plots/custom_toy_curve.png"] and (tmp_path / entry["plots"][0]).exists()
