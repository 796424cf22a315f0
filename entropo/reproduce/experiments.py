"""The reproduction suite as data: arms (a shipped recipe + overrides), measures (a number from one run's metrics),
checks (the rule that turns per-seed numbers into "held" / "did not hold" / "inconclusive") and experiments (a
paper's claim, the arms it compares and its checks).

Every comparison is paired by seed: arm and baseline of the same seed start from the same warmed-up model, so the
per-seed difference removes the warm-up's share of the noise. The rules, stated once:

- ``Compare`` (arm better than baseline by more than ``margin``): held if every seed's difference is beyond the
  margin in the claimed direction; did not hold if no seed's difference is in the claimed direction (<= 0);
  inconclusive otherwise (seeds disagree, or the effect is smaller than the margin).
- ``NotWorse`` (arm equal or better, within ``tol``): held if every seed's difference is >= -tol; did not hold if
  every seed's difference is < -tol; inconclusive otherwise.
- ``Within`` (a measure of one arm inside [low, high]): held if every seed is inside, did not hold if none is,
  inconclusive otherwise.

An experiment held if all its checks held, did not hold if any did not hold, and is inconclusive otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from entropo.diagnostics import fit_entropy_performance
from entropo.reproduce.aggregate import (
    Rows,
    final_row,
    mean_and_spread,
    series,
    train_rows,
    window_mean,
)

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"


# ---- measures: one number from one run's rows ----------------------------------------------------------------------

def thirds(rows: Rows, key: str) -> tuple[float, float, float]:
    """Mean of ``key`` over the first, middle and last third of the training steps."""
    return tuple(window_mean(rows, key, i / 3, (i + 1) / 3) for i in range(3))  # type: ignore[return-value]


def entropy_deceleration(rows: Rows) -> float:
    """(drop first->middle third) - (drop middle->last third) of the entropy: > 0 when it falls fastest early."""
    first, middle, last = thirds(rows, "entropy/mean")
    return (first - middle) - (middle - last)


def accuracy_saturation(rows: Rows) -> float:
    """(gain first->middle third) - (gain middle->last third) of the train accuracy: > 0 when it saturates."""
    first, middle, last = thirds(rows, "accuracy")
    return (middle - first) - (last - middle)


FIT_BINS = 10


def binned_entropy_accuracy(rows: Rows, bins: int = FIT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Mean (entropy, train accuracy) over ``bins`` contiguous windows of steps.

    The paper fits checkpoint-level validation scores; per-step train accuracy over ~128 samples is too noisy
    (binomial std ~0.04 against a rise of ~0.2) for its R² to say anything, so the fit uses window means."""
    steps = [r for r in train_rows(rows) if "entropy/mean" in r]
    h = np.array([r["entropy/mean"] for r in steps], dtype=float)
    acc = np.array([r["accuracy"] for r in steps], dtype=float)
    chunks = [c for c in np.array_split(np.arange(len(h)), min(bins, len(h))) if len(c)]
    return np.array([h[c].mean() for c in chunks]), np.array([acc[c].mean() for c in chunks])


def entropy_fit(rows: Rows, bins: int = FIT_BINS) -> dict[str, float]:
    """R = -a·e^H + b fitted to the run's binned (entropy, train accuracy) (entropo.diagnostics' least squares)."""
    h, acc = binned_entropy_accuracy(rows, bins)
    fit = fit_entropy_performance(list(h), list(acc))
    return fit or {"a": float("nan"), "b": float("nan"), "ceiling": float("nan"), "r2": float("nan")}


def grad_norm_cv(rows: Rows) -> float:
    """Coefficient of variation (std / mean) of the pre-clip gradient norm over steps, skipping the first 10 % (at least one step).

    Scale-free, so objectives whose losses differ by a constant factor compare fairly."""
    _, g = series(train_rows(rows), "actor/grad_norm")
    g = g[max(1, len(g) // 10):]
    return float(g.std() / g.mean()) if len(g) > 1 and g.mean() > 0 else float("nan")


def cumulative_mean(values: np.ndarray) -> np.ndarray:
    return np.cumsum(values) / np.arange(1, len(values) + 1)


def band_inside_frac(rows: Rows, kappa_low: float, kappa_high: float, skip: float = 0.1) -> float:
    """Fraction of steps whose mean entropy lies strictly inside (kappa_low·H_bar, kappa_high·H_bar), H_bar the mean
    of the per-step entropies so far (this step included) — EPO's band, computable for any run. The first ``skip``
    of the run is left out (the band is degenerate while the history holds one or two steps)."""
    _, h = series(train_rows(rows), "entropy/mean")
    if len(h) == 0:
        return float("nan")
    ref = cumulative_mean(h)
    inside = (h > kappa_low * ref) & (h < kappa_high * ref)
    return float(inside[int(len(h) * skip):].mean())


def final_eval(key: str) -> Callable[[Rows], float]:
    def measure(rows: Rows) -> float:
        return float(final_row(rows).get(f"eval/{key}", float("nan")))

    return measure


MEASURES: dict[str, tuple[str, Callable[[Rows], float]]] = {
    # name: (what it is, function of one run's rows)
    "entropy_last_third": ("mean token entropy over the last third of steps",
                           lambda rows: window_mean(rows, "entropy/mean", 2 / 3, 1.0)),
    "entropy_drop": ("entropy: first-10% mean minus last-10% mean",
                     lambda rows: window_mean(rows, "entropy/mean", 0, 0.1) - window_mean(rows, "entropy/mean", 0.9, 1)),
    "entropy_deceleration": ("entropy drop first→middle third minus drop middle→last third (> 0: falls fastest early)",
                             entropy_deceleration),
    "accuracy_saturation": ("accuracy gain first→middle third minus gain middle→last third (> 0: saturating)",
                            accuracy_saturation),
    "accuracy_final": ("train accuracy, mean of the last 10% of steps",
                       lambda rows: window_mean(rows, "accuracy", 0.9, 1.0)),
    "accuracy_mean": ("train accuracy averaged over all steps (area under accuracy vs samples / samples)",
                      lambda rows: window_mean(rows, "accuracy", 0.0, 1.0)),
    "fit_r2": ("R² of the fit R = -a·e^H + b to the run's steps binned into 10 windows", lambda rows: entropy_fit(rows)["r2"]),
    "fit_ceiling": ("predicted ceiling -a + b (accuracy at H = 0)", lambda rows: entropy_fit(rows)["ceiling"]),
    "ceiling_gap": ("|predicted ceiling - final train accuracy|",
                    lambda rows: abs(entropy_fit(rows)["ceiling"] - window_mean(rows, "accuracy", 0.9, 1.0))),
    "eval_accuracy": ("held-out accuracy at the end (T = eval temperature, all samples)", final_eval("accuracy")),
    "eval_pass@1": ("held-out pass@1 at the end", final_eval("pass@1")),
    "eval_pass@8": ("held-out pass@8 at the end", final_eval("pass@8")),
    "grad_norm_cv": ("coefficient of variation of the pre-clip gradient norm across steps", grad_norm_cv),
    "clip_frac": ("mean clipped-token fraction (low + high)",
                  lambda rows: window_mean(rows, "actor/clip_frac_low", 0, 1) + window_mean(rows, "actor/clip_frac_high",
                                                                                           0, 1)),
    "epo_band_inside": ("fraction of steps with entropy inside EPO's band (0.8·H_bar, 1.2·H_bar)",
                        lambda rows: band_inside_frac(rows, 0.8, 1.2)),
    "d3s_kept_samples": ("fraction of sampled responses kept in the gradient (mean over steps)",
                         lambda rows: window_mean(rows, "shaping/d3s_kept_samples_frac", 0, 1)
                         if series(rows, "shaping/d3s_kept_samples_frac")[1].size else 1.0),
}


def measure(name: str, rows: Rows) -> float:
    return float(MEASURES[name][1](rows))


# ---- checks ---------------------------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    text: str  # the rule, in words
    verdict: str
    values: dict[str, list[float]]  # arm -> per-seed measure
    detail: str  # the numbers, in words


def _fmt(values: list[float]) -> str:
    m, s = mean_and_spread(values)
    return f"{m:.3f} ± {s:.3f}"


@dataclass
class Compare:
    """Arm's measure better than the baseline's by more than ``margin`` (higher, or lower when higher=False)."""

    measure: str
    arm: str
    baseline: str
    higher: bool = True
    margin: float = 0.0

    def arms(self) -> list[str]:
        return [self.arm, self.baseline]

    def describe(self) -> str:
        word = "higher" if self.higher else "lower"
        extra = f" by more than {self.margin:g}" if self.margin else ""
        return f"{self.measure} of {self.arm} {word} than {self.baseline}{extra}"

    def evaluate(self, values: dict[str, list[float]]) -> CheckResult:
        sign = 1.0 if self.higher else -1.0
        return _paired_check(self, values, sign, held=lambda d: d > self.margin, not_held=lambda d: d <= 0)


def _paired_check(check, values: dict[str, list[float]], sign: float, held, not_held) -> CheckResult:
    """Verdict from the per-seed differences arm - baseline (signed so larger is better): held if every seed passes
    ``held``, did not hold if every seed passes ``not_held``, inconclusive otherwise."""
    diffs = [sign * (a - b) for a, b in zip(values[check.arm], values[check.baseline])]
    if all(held(d) for d in diffs):
        verdict = HELD
    elif all(not_held(d) for d in diffs):
        verdict = NOT_HELD
    else:
        verdict = INCONCLUSIVE
    detail = (f"{check.arm} {_fmt(values[check.arm])} vs {check.baseline} {_fmt(values[check.baseline])}; "
              f"paired differences (arm - baseline) {', '.join(f'{sign * d:+.3f}' for d in diffs)}")
    return CheckResult(check.describe(), verdict, {k: values[k] for k in check.arms()}, detail)


@dataclass
class NotWorse:
    """Arm's measure equal or better than the baseline's, within ``tol``."""

    measure: str
    arm: str
    baseline: str
    tol: float
    higher: bool = True

    def arms(self) -> list[str]:
        return [self.arm, self.baseline]

    def describe(self) -> str:
        return f"{self.measure} of {self.arm} not worse than {self.baseline} (tolerance {self.tol:g})"

    def evaluate(self, values: dict[str, list[float]]) -> CheckResult:
        sign = 1.0 if self.higher else -1.0
        return _paired_check(self, values, sign, held=lambda d: d >= -self.tol, not_held=lambda d: d < -self.tol)


@dataclass
class Within:
    """One arm's measure inside [low, high] for every seed."""

    measure: str
    arm: str
    low: float = -np.inf
    high: float = np.inf

    def arms(self) -> list[str]:
        return [self.arm]

    def describe(self) -> str:
        if np.isinf(self.low):
            return f"{self.measure} of {self.arm} <= {self.high:g}"
        if np.isinf(self.high):
            return f"{self.measure} of {self.arm} >= {self.low:g}"
        return f"{self.measure} of {self.arm} in [{self.low:g}, {self.high:g}]"

    def evaluate(self, values: dict[str, list[float]]) -> CheckResult:
        inside = [self.low <= v <= self.high for v in values[self.arm]]
        verdict = HELD if all(inside) else NOT_HELD if not any(inside) else INCONCLUSIVE
        detail = f"{self.arm} {_fmt(values[self.arm])} (per seed {', '.join(f'{v:.3f}' for v in values[self.arm])})"
        return CheckResult(self.describe(), verdict, {self.arm: values[self.arm]}, detail)


Check = Compare | NotWorse | Within


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == HELD for v in verdicts):
        return HELD
    if any(v == NOT_HELD for v in verdicts):
        return NOT_HELD
    return INCONCLUSIVE


# ---- arms and experiments -------------------------------------------------------------------------------------------

@dataclass
class Arm:
    """A shipped recipe plus overrides; ``{steps}`` in an override is replaced by the suite's step count."""

    recipe: str
    overrides: list[str] = field(default_factory=list)
    label: str = ""


PPO_CLIP = "objective={name: ppo_clip, params: {clip_low: 0.2, clip_high: 0.28}}"

ARMS: dict[str, Arm] = {
    "grpo": Arm("demo", [], "GRPO (demo recipe: clip 0.2/0.28, token-mean, no KL)"),
    "grpo_mb2": Arm("demo", ["train.mini_batches=2", "train.micro_batch_size=64"],
                    "GRPO, 2 mini-batches per step (off-policy second update, as KL-Cov and BAPO)"),
    "clip_cov": Arm("clip_cov", [], "Clip-Cov"),
    "kl_cov": Arm("kl_cov", [], "KL-Cov (2 mini-batches)"),
    "aepo_0.4": Arm("aepo", ["producers.0.params.target_entropy=0.4"], "AEPO, target entropy 0.4"),
    "aepo_1.0": Arm("aepo", ["producers.0.params.target_entropy=1.0"], "AEPO, target entropy 1.0"),
    "epo": Arm("epo", ["regularizers.0.params.kappa_low=0.8", "regularizers.0.params.kappa_high=1.2",
                       "regularizers.0.params.phase_steps={steps}"], "EPO, band (0.8, 1.2)·H_bar"),
    "adaptive_entropy": Arm("repro_adaptive_entropy", [], "entropy bonus with adaptive coefficient, target 0.9"),
    "steer": Arm("steer", [], "STEER"),
    "siren": Arm("siren", [], "SIREN"),
    "lp_reg": Arm("lp_reg", [], "Lp-Reg"),
    "d3s": Arm("d3s", [], "D3S"),
    "dump": Arm("dump", [], "DUMP (UCB curriculum over 3 distributions)"),
    "mixture_uniform": Arm("dump", ["sampler={name: uniform}"], "uniform sampling over the same 3 distributions"),
    "bnpo": Arm("bnpo", ["aggregation.mode=token-mean", PPO_CLIP],
                "BNPO advantages (objective and aggregation as GRPO's, so only the advantage differs)"),
    "riskpo": Arm("riskpo", [], "RiskPO"),
    "bapo": Arm("bapo", [], "BAPO (2 mini-batches)"),
}


@dataclass
class CustomResult:
    """What a custom experiment reports: its verdict, a one-line measured summary, its checks (dicts with keys
    check, detail, verdict), extra Markdown lines for its report section, plot paths and raw values for summary.json."""

    verdict: str
    measured: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    plots: list[Any] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    title: str
    paper: str
    claim: str
    arms: list[str]
    checks: list[Check]
    kind: str = "runs"  # "runs" (trainer runs) or "bandit" (the tabular identity, no LM)
    curves: list[str] = field(default_factory=lambda: ["accuracy", "entropy/mean", "cov/logp_adv",
                                                       "response/length_mean"])
    extra_plots: list[str] = field(default_factory=list)
    targets: dict[str, float] = field(default_factory=dict)  # arm -> entropy target (drawn on the entropy plot)
    extra_measures: list[str] = field(default_factory=list)  # measures shown in the arm table beyond the checks'
    note: str = ""
    suite: str = "entropy"  # the `entropo reproduce --suite` that runs it (entropy: the RLVR entropy methods)
    steps: int | None = None  # this experiment's RL steps per run (None: the suite's; a user's --steps wins)
    # kind="custom": run(cfg, out_dir, console) -> CustomResult, for experiments that are not trainer-run arms
    # (inference-time methods, non-LM policies); it writes what it needs under out_dir and is rerun every time
    run: Callable[..., CustomResult] | None = None

    def measures(self) -> list[str]:
        return sorted({c.measure for c in self.checks})


EM = "The Entropy Mechanism of RL for Reasoning LMs, arXiv 2505.22617"

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "entropy_mechanism", "1. GRPO without intervention: entropy collapse and R = -a·e^H + b", EM,
        "Without intervention, entropy falls sharply early and accuracy saturates; accuracy follows R = -a·e^H + b, "
        "whose value at H = 0 (-a + b) predicts the ceiling the run reaches.",
        ["grpo"],
        [Within("entropy_drop", "grpo", low=0.0), Within("entropy_deceleration", "grpo", low=0.0),
         Within("accuracy_saturation", "grpo", low=0.0), Within("fit_r2", "grpo", low=0.5),
         Within("ceiling_gap", "grpo", high=0.1)],
        extra_plots=["fit"],
        note="The fit uses the run's steps binned into 10 contiguous windows (mean entropy, mean train accuracy): "
             "the paper fits checkpoint-level validation scores, and per-step train accuracy is too noisy to fit "
             "raw. 'Falls fastest early' compares the entropy drop first→middle third with middle→last third.",
    ),
    Experiment(
        "entropy_identity", "2. The entropy-change identity on a tabular softmax policy", EM,
        "For a softmax policy, one natural-PG step (z += eta·A) changes entropy by -eta·Cov(log pi, A) and one "
        "vanilla-PG step (z += eta·pi·A) by -eta·Cov(log pi, pi·A), to first order: the error is O(eta²).",
        [], [], kind="bandit",
    ),
    Experiment(
        "clip_cov", "3. Clip-Cov and KL-Cov vs GRPO", EM,
        "Clip-Cov and KL-Cov keep entropy above GRPO's at equal steps, at equal or better accuracy / pass@k.",
        ["grpo", "clip_cov", "grpo_mb2", "kl_cov"],
        [Compare("entropy_last_third", "clip_cov", "grpo", margin=0.02),
         NotWorse("eval_pass@1", "clip_cov", "grpo", tol=0.03), NotWorse("eval_pass@8", "clip_cov", "grpo", tol=0.03),
         Compare("entropy_last_third", "kl_cov", "grpo_mb2", margin=0.02),
         NotWorse("eval_pass@1", "kl_cov", "grpo_mb2", tol=0.03),
         NotWorse("eval_pass@8", "kl_cov", "grpo_mb2", tol=0.03)],
        note="KL-Cov's penalty is zero on-policy, so it runs 2 mini-batches per step; its baseline is GRPO with the "
             "same 2 mini-batches.",
    ),
    Experiment(
        "entropy_targets", "4. AEPO targets, EPO band, adaptive entropy coefficient",
        "AEPO arXiv 2510.08141; EPO arXiv 2509.22576; Skywork-OR1 arXiv 2505.22312",
        "AEPO holds entropy at an arbitrary target (two targets here: 0.4 and 1.0); EPO keeps entropy inside its "
        "band around the historical mean; the adaptive entropy coefficient brings entropy to its target (0.9).",
        ["grpo", "aepo_0.4", "aepo_1.0", "epo", "adaptive_entropy"],
        [Within("entropy_last_third", "aepo_0.4", 0.4 * 0.8, 0.4 * 1.2),
         Within("entropy_last_third", "aepo_1.0", 1.0 * 0.8, 1.0 * 1.2),
         Within("epo_band_inside", "epo", low=0.9),
         Within("entropy_last_third", "adaptive_entropy", 0.9 * 0.8, 0.9 * 1.2)],
        targets={"aepo_0.4": 0.4, "aepo_1.0": 1.0, "adaptive_entropy": 0.9},
        note="Targets are held if the last-third mean entropy is within ±20 % of the target. EPO's default band "
             "(0, 2)·H_bar is satisfied by almost any run, so the band is tightened to (0.8, 1.2)·H_bar; GRPO's "
             "fraction of steps inside the same band is shown for comparison. The adaptive coefficient (+/- delta "
             "per step, no damping) is an integral controller: on the tiny model an entropy bonus does little up to "
             "a coefficient of ~0.07 and then entropy runs away, so it tends to overshoot far past the target "
             "(a cap of 0.05 instead leaves entropy at ~0.65, short of it).",
    ),
    Experiment(
        "steer_siren_lpreg", "5. STEER, SIREN, Lp-Reg vs GRPO",
        "STEER arXiv 2510.10150; SIREN arXiv 2509.25133; Lp-Reg arXiv 2510.03222",
        "Each method keeps entropy from collapsing (higher than GRPO at equal steps) and improves or keeps "
        "pass@k.",
        ["grpo", "steer", "siren", "lp_reg"],
        [c for arm in ("steer", "siren", "lp_reg") for c in
         (Compare("entropy_last_third", arm, "grpo", margin=0.02), NotWorse("eval_pass@8", arm, "grpo", tol=0.03))],
    ),
    Experiment(
        "sample_efficiency", "6. D3S and DUMP vs uniform: sample efficiency",
        "D3S arXiv 2509.22115; DUMP arXiv 2504.09710",
        "D3S reaches equal or better accuracy while computing gradients on fewer samples; DUMP's distribution-level "
        "curriculum learns faster (higher accuracy per sample) than uniform sampling over the same distributions.",
        ["grpo", "d3s", "mixture_uniform", "dump"],
        [NotWorse("accuracy_mean", "d3s", "grpo", tol=0.02), NotWorse("eval_pass@1", "d3s", "grpo", tol=0.03),
         Compare("accuracy_mean", "dump", "mixture_uniform"), NotWorse("eval_pass@1", "dump", "mixture_uniform",
                                                                       tol=0.03)],
        curves=["accuracy", "entropy/mean", "eval/pass@1", "response/length_mean"],
        extra_plots=["samples", "sampler"],
        note="Every arm generates the same number of samples per step, so mean train accuracy over the run is the "
             "normalized area under accuracy vs samples. D3S's fraction of samples kept in the gradient is in the "
             "per-arm table. The DUMP mixture (add2, add3, reasoning-gym basic_arithmetic with longer answers) is far "
             "harder for the tiny model than the demo task: both mixture arms start near zero accuracy.",
    ),
    Experiment(
        "stability", "7. BNPO, RiskPO, BAPO vs GRPO: gradient variance and stability",
        "BNPO arXiv 2506.02864; RiskPO arXiv 2510.00911; BAPO arXiv 2510.18927",
        "BNPO's Beta normalization lowers gradient variance; RiskPO's risk-sensitive objective avoids entropy "
        "collapse; BAPO's adaptive clipping stabilizes off-policy updates (steadier gradients, no entropy "
        "collapse).",
        ["grpo", "bnpo", "riskpo", "grpo_mb2", "bapo"],
        [Compare("grad_norm_cv", "bnpo", "grpo", higher=False),
         Compare("entropy_last_third", "riskpo", "grpo", margin=0.02),
         Compare("grad_norm_cv", "bapo", "grpo_mb2", higher=False),
         Compare("entropy_last_third", "bapo", "grpo_mb2", margin=0.02)],
        curves=["accuracy", "entropy/mean", "actor/grad_norm", "cov/logp_adv"],
        note="Gradient variance is measured as the coefficient of variation of the pre-clip gradient norm across "
             "steps (actor/grad_norm, first 10 % skipped). BAPO runs 2 mini-batches per step; its baseline is GRPO "
             "with the same 2 mini-batches.",
    ),
]



@dataclass
class Profile:
    """A named scale of ``entropo reproduce --scale NAME``: the suite it runs and its default ``SuiteConfig``
    fields (seeds, steps, eval_size, eval_n, threads); the user's --seeds / --steps / --set still win."""

    suite: str
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""


PROFILES: dict[str, Profile] = {}


def _load_suites() -> None:
    """Add the experiments and arms of every module in ``entropo.reproduce.suites`` (each defines ``ARMS`` and
    ``EXPERIMENTS``, and optionally ``PROFILES: dict[str, Profile]``), so a method's experiment lives beside nothing
    else's."""
    import importlib
    import pkgutil

    from entropo.reproduce import suites

    for info in sorted(pkgutil.iter_modules(suites.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{suites.__name__}.{info.name}")
        for name, arm in getattr(module, "ARMS", {}).items():
            if name in ARMS:
                raise ValueError(f"reproduce arm {name!r} of {module.__name__} is already defined")
            ARMS[name] = arm
        EXPERIMENTS.extend(getattr(module, "EXPERIMENTS", []))
        for name, profile in getattr(module, "PROFILES", {}).items():
            if name in PROFILES:
                raise ValueError(f"reproduce profile {name!r} of {module.__name__} is already defined")
            PROFILES[name] = profile


_load_suites()
EXPERIMENTS_BY_NAME = {e.name: e for e in EXPERIMENTS}
SUITES = sorted({e.suite for e in EXPERIMENTS})


def select(only: list[str] | None, suite: str = "entropy") -> list[Experiment]:
    """The experiments named in ``only`` (experiment, arm or method recipe names, e.g. ``kl_cov``, ``aepo``), from any
    suite; all of ``suite``'s when empty."""
    if not only:
        if suite not in SUITES:
            raise ValueError(f"--suite {suite!r}: unknown; allowed: {', '.join(SUITES)}")
        return [e for e in EXPERIMENTS if e.suite == suite]
    chosen = []
    for name in only:
        if name in EXPERIMENTS_BY_NAME:
            exp = EXPERIMENTS_BY_NAME[name]
        else:
            exp = next((e for e in EXPERIMENTS if any(name in (arm, ARMS[arm].recipe) for arm in e.arms
                                                      if ARMS[arm].recipe != "demo")), None)
        if exp is None:
            allowed = ", ".join(EXPERIMENTS_BY_NAME)
            raise ValueError(f"--only {name!r}: unknown experiment; allowed: {allowed} (or a method arm name)")
        if exp not in chosen:
            chosen.append(exp)
    return chosen


def evaluate_checks(exp: Experiment, measured: dict[str, dict[str, list[float]]]) -> tuple[str, list[CheckResult]]:
    """Apply an experiment's checks to measured[measure][arm] = per-seed values; returns (verdict, results)."""
    results = [c.evaluate(measured[c.measure]) for c in exp.checks]
    return combine([r.verdict for r in results]), results


def measure_runs(exp: Experiment, runs: dict[str, list[Rows]], extra: list[str] = ()) -> dict[str, dict[str, Any]]:
    """measured[measure][arm] = [value per seed] for the experiment's measures (and ``extra``) over its arms."""
    names = list(dict.fromkeys([*exp.measures(), *extra]))
    return {m: {arm: [measure(m, rows) for rows in runs[arm]] for arm in exp.arms} for m in names}
