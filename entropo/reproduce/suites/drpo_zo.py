"""DR-PO dataset resets and ZO-RankSGD (``entropo reproduce --suite preferences``).

- ``drpo_resets`` (runs): GRPO whose training rollouts reset to random prefixes of the gold answer (recipe ``drpo``,
  engine ``dataset_reset``; Dataset Reset Policy Optimization for RLHF, arXiv 2404.08495) vs the same GRPO without
  resets (recipe ``grpo``: same warm-up, task, prompts and samples per step); both evaluated without resets.
- ``zo_ranksgd_toy`` (custom): ZO-RankSGD (arXiv 2303.03751) vs random search at equal ranking-oracle points on the
  d = 10 quadratic and Rosenbrock toys, plus the tiny model's logit bias optimised from reward rankings of sampled
  completions (held-out mean reward before/after).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from entropo.reproduce.experiments import HELD, INCONCLUSIVE, NOT_HELD, Arm, Compare, CustomResult, Experiment

EVAL = ["eval.every=0"]
ZO_QUERIES = 2000


def _verdict(ok: list[bool]) -> str:
    return HELD if all(ok) else NOT_HELD if not any(ok) else INCONCLUSIVE


def run_zo(cfg, out_dir: Path, console) -> CustomResult:
    """Per seed: final toy losses of ZO-RankSGD (with the ranked line search) and random search after the same
    number of oracle points, and the LM logit-bias demo's held-out reward before/after."""
    from entropo.classic.zo_ranksgd import lm_logit_bias_demo, run_toy

    per_seed: list[dict[str, float]] = []
    for seed in range(cfg.seeds):
        row: dict[str, float] = {}
        for fn in ("quadratic", "rosenbrock"):
            for method in ("zo_ranksgd", "random_search"):
                res = run_toy(fn, method, queries=ZO_QUERIES, seed=seed)
                row[f"{fn}_{method}"] = res["final_loss"]
            row[f"{fn}_initial"] = res["initial_loss"]
        lm = lm_logit_bias_demo(Path(out_dir) / f"seed{seed}", seed, console)
        row.update({"lm_reward_before": lm["lm_reward_before"], "lm_reward_after": lm["lm_reward_after"],
                    "lm_queries": float(lm["lm_queries"])})
        per_seed.append(row)
        console(f"  zo_ranksgd_toy seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    checks = []
    for fn in ("quadratic", "rosenbrock"):
        zo = [s[f"{fn}_zo_ranksgd"] for s in per_seed]
        rs = [s[f"{fn}_random_search"] for s in per_seed]
        checks.append({"check": f"{fn} (d = 10): ZO-RankSGD final loss < random search at {ZO_QUERIES} oracle points",
                       "detail": "ZO " + ", ".join(f"{v:.4g}" for v in zo) + "; RS " + ", ".join(f"{v:.4g}" for v in rs),
                       "verdict": _verdict([a < b for a, b in zip(zo, rs)])})
    before = [s["lm_reward_before"] for s in per_seed]
    after = [s["lm_reward_after"] for s in per_seed]
    checks.append({"check": "tiny-model logit bias from reward rankings: held-out mean reward rises",
                   "detail": "before " + ", ".join(f"{v:.3f}" for v in before) + "; after "
                             + ", ".join(f"{v:.3f}" for v in after),
                   "verdict": _verdict([a > b for a, b in zip(after, before)])})
    overall = HELD if all(c["verdict"] == HELD for c in checks) else (
        NOT_HELD if any(c["verdict"] == NOT_HELD for c in checks) else INCONCLUSIVE)
    mean = lambda key: float(np.mean([s[key] for s in per_seed]))  # noqa: E731
    measured = (f"quadratic: ZO {mean('quadratic_zo_ranksgd'):.3g} vs RS {mean('quadratic_random_search'):.3g}; "
                f"Rosenbrock: ZO {mean('rosenbrock_zo_ranksgd'):.3g} vs RS {mean('rosenbrock_random_search'):.3g} "
                f"(mean final loss, {ZO_QUERIES} oracle points); LM reward {mean('lm_reward_before'):.3f} -> "
                f"{mean('lm_reward_after'):.3f}")
    keys = list(per_seed[0])
    lines = ["| seed | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(f"{s[k]:.4g}" for k in keys) + " |" for i, s in enumerate(per_seed)]
    return CustomResult(overall, measured, checks, lines, values={"per_seed": per_seed})


ARMS: dict[str, Arm] = {
    "drpo_reset": Arm("drpo", EVAL, "GRPO + DR-PO dataset resets (beta 1.0, h ~ U{1..L-1} of the gold answer)"),
    "drpo_grpo_baseline": Arm("grpo", EVAL, "GRPO without resets (shipped grpo recipe: same warm-up, task, 16 x 8)"),
}

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "drpo_resets", "DR-PO: rollouts reset to demonstration prefixes vs plain GRPO",
        "Dataset Reset Policy Optimization for RLHF (DR-PO), arXiv 2404.08495",
        "Resetting online rollouts to random prefixes of offline demonstrations (forced tokens masked from the loss) "
        "reaches higher success than the same RL from the prompt alone, measured on full (non-reset) evaluation.",
        ["drpo_reset", "drpo_grpo_baseline"],
        [Compare("eval_accuracy", "drpo_reset", "drpo_grpo_baseline")],
        curves=["accuracy", "entropy/mean", "response/length_mean"],
        extra_measures=["accuracy_mean"],
        suite="preferences", steps=50,
        note="Task: 3-term single-digit addition, the gold answer as the demonstration (1-2 characters: answers of "
             "length 1 are never reset, 2-digit answers are reset to their first digit). Training accuracy of the "
             "reset arm scores prefix + continuation, so compare the evaluation numbers.",
    ),
    Experiment(
        "zo_ranksgd_toy", "ZO-RankSGD vs random search at equal ranking-oracle points",
        "Zeroth-Order Optimization Meets Human Feedback: Provable Learning via Ranking Oracles (ZO-RankSGD), "
        "arXiv 2303.03751",
        "With only a ranking oracle, the rank-based gradient estimate (with the ranked line search) descends the "
        "objective faster than random search at the same number of ranked points; the same optimizer improves a "
        "language-model parameter from rankings of sampled completions.",
        [], [], kind="custom", run=run_zo, suite="preferences", steps=ZO_QUERIES,
        note="m = 5 points per query (full ranking), mu 0.05, eta 0.5 with line-search steps eta * 0.5^j; random "
             "search ranks the incumbent with 4 perturbations (sigma 0.1). LM: the tiny model's output logit bias "
             "(vocabulary size), 20 rounds of m = 6, ranked by the digits-only format reward of 8 prompts x 2 samples.",
    ),
]
