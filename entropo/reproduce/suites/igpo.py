"""IGPO (Information Gain-based Policy Optimization, arXiv 2510.14967) vs outcome-only GRPO on ``multihop_lookup``.

Both arms run the ``igpo`` recipe (same SFT-warmed tiny model, environment, sampling and objective); the baseline only
swaps the advantage estimator for ``grpo`` (outcome reward only). Measures registered here:

- ``igpo_zero_adv_groups``: mean over steps of the fraction of groups whose every token advantage is 0 (no learning
  signal). IGPO logs it as ``advantage/zero_adv_group_frac``; for an outcome-only estimator a group has zero advantage
  exactly when all its outcomes are equal, which the trainer logs as ``selection/zero_variance_group_frac``.
- ``igpo_steps_to_target``: the first step at which the trailing 5-step mean of train accuracy reaches
  ``TARGET_ACCURACY`` (the run's step count + 1 when it never does: lower is better).
"""

from __future__ import annotations

import numpy as np

from entropo.reproduce.aggregate import Rows, series, train_rows, trailing_mean, window_mean
from entropo.reproduce.experiments import MEASURES, Arm, Compare, Experiment, NotWorse

TARGET_ACCURACY = 0.2
SMOOTH = 5


def zero_advantage_groups(rows: Rows) -> float:
    rows = train_rows(rows)
    key = "advantage/zero_adv_group_frac"
    if not any(key in r for r in rows):
        key = "selection/zero_variance_group_frac"
    return window_mean(rows, key, 0.0, 1.0)


def steps_to_target(rows: Rows, target: float = TARGET_ACCURACY, smooth: int = SMOOTH) -> float:
    steps, acc = series(train_rows(rows), "accuracy")
    if len(acc) == 0:
        return float("nan")
    reached = np.nonzero(trailing_mean(acc, smooth) >= target)[0]
    return float(steps[reached[0]] + 1) if len(reached) else float(steps[-1] + 2)


MEASURES.setdefault("igpo_zero_adv_groups", (
    "mean fraction of groups whose advantages are all zero (IGPO: logged; outcome-only: equal outcomes)",
    zero_advantage_groups))
MEASURES.setdefault("igpo_steps_to_target", (
    f"first step whose trailing {SMOOTH}-step mean train accuracy reaches {TARGET_ACCURACY} (never: steps + 1)",
    steps_to_target))

# Cheap evaluation (one sample per held-out prompt, at the end only): the claim is about training signal and speed.
EVAL = ["eval.n=1", "eval.k=[1]", "eval.every=0", "eval.max_prompts=32"]

ARMS: dict[str, Arm] = {
    "igpo": Arm("igpo", EVAL, "IGPO: info-gain turn rewards + outcome (log_prob_diff, separate, gamma 1)"),
    "igpo_grpo_baseline": Arm("igpo", [*EVAL, "advantage={name: grpo}"],
                              "outcome-only GRPO on the same environment, warm-up and objective"),
}

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "igpo", "IGPO vs outcome-only GRPO on multi-hop lookups",
        "Information Gain-based Policy Optimization (IGPO), arXiv 2510.14967",
        "Turn-level information-gain rewards leave fewer groups without a learning signal than outcome-only GRPO "
        "(fewer zero-advantage groups) and reach a target train accuracy in fewer steps.",
        ["igpo", "igpo_grpo_baseline"],
        [Compare("igpo_zero_adv_groups", "igpo", "igpo_grpo_baseline", higher=False, margin=0.05),
         Compare("igpo_steps_to_target", "igpo", "igpo_grpo_baseline", higher=False),
         NotWorse("eval_accuracy", "igpo", "igpo_grpo_baseline", tol=0.05)],
        curves=["accuracy", "advantage/ig_mean", "selection/zero_variance_group_frac", "entropy/mean"],
        suite="agents",
        steps=30,
        note=f"Steps to target: first step whose trailing {SMOOTH}-step mean train accuracy reaches "
             f"{TARGET_ACCURACY}; a run that never does counts as steps + 1. Held-out accuracy uses entities never "
             f"seen in training (one sample per prompt, 32 prompts).",
    ),
]
