"""PAV-shaped RL vs outcome-only GRPO (suite ``preferences``, trainer-run arms).

"Rewarding Progress: Scaling Automated Process Verifiers for LLM Reasoning" (Setlur et al., arXiv 2410.08146):
dense per-step progress rewards A^μ under a Best-of-K prover, added to the outcome advantage, improve the sample
efficiency of online RL over outcome rewards alone (more accuracy at equal steps). Both arms run the shipped
``pav_tiny`` recipe (same SFT warm-up, task ``arith_chain``, 8 prompts x 4 samples per step, objective); the baseline
only drops the ``pav`` shaping and uses ``advantage: grpo``. Evaluation: greedy, once at the end, on 128 held-out
chains. Also run, outside the checks: ``pav_rl_sft`` (the warmed-up model, no RL step) and the same pair at one
pre-declared lower learning rate (3e-4; at the shipped 1e-3 both arms lose the warm-up's accuracy within 25 steps).
Measures registered here:

- ``pav_zero_signal_groups``: mean over steps of the fraction of groups with no learning signal. PAV arm: equal
  outcomes and zero progress on every step (``shaping/pav_zero_signal_group_frac``); GRPO arm: equal outcomes
  (``selection/zero_variance_group_frac``, its advantage is then exactly 0).
- ``pav_step_s``: mean wall seconds per RL step; ``pav_prover_tokens``: mean tokens sampled per step by the prover's
  Monte-Carlo completions (0 for GRPO), the extra compute PAV pays for its dense rewards.
"""

from __future__ import annotations

from entropo.reproduce.aggregate import Rows, series, train_rows, window_mean
from entropo.reproduce.experiments import MEASURES, Arm, Compare, Experiment


def zero_signal_groups(rows: Rows) -> float:
    rows = train_rows(rows)
    key = "shaping/pav_zero_signal_group_frac"
    if not any(key in r for r in rows):
        key = "selection/zero_variance_group_frac"
    return window_mean(rows, key, 0.0, 1.0)


def prover_tokens(rows: Rows) -> float:
    _, v = series(train_rows(rows), "shaping/pav_completion_tokens")
    return float(v.mean()) if v.size else 0.0


MEASURES.setdefault("pav_zero_signal_groups", (
    "mean fraction of groups with no learning signal (PAV: equal outcomes and zero progress; GRPO: equal outcomes)",
    zero_signal_groups))
MEASURES.setdefault("pav_step_s", ("mean wall seconds per RL step", lambda rows: window_mean(rows, "time/step_s",
                                                                                            0.0, 1.0)))
MEASURES.setdefault("pav_prover_tokens", ("mean prover (Monte-Carlo completion) tokens sampled per step",
                                          prover_tokens))

STEPS = 25  # pav_tiny: ~10 s per step on one core, GRPO ~1 s: 2 arms x 2 seeds x 25 steps fit a ~20 CPU-min budget
# Greedy held-out evaluation at the end only (the claim is accuracy at equal steps), on the recipe's 128 chains.
EVAL = ["eval.n=1", "eval.k=[1]", "eval.temperature=0.0", "eval.every=0", "eval.max_prompts=128"]

ARMS: dict[str, Arm] = {
    "pav_rl": Arm("pav_tiny", EVAL, "GRPO + PAV progress rewards (Best-of-4 prover, 2 MC provers per prefix, α = 1)"),
    "pav_rl_grpo_baseline": Arm("pav_tiny", [*EVAL, "shaping=[]", "advantage={name: grpo}"],
                                "outcome-only GRPO: the same recipe without the pav shaping"),
    # one pre-declared sensitivity point, not a search: at the shipped lr both arms lose the warm-up's held-out
    # accuracy within 25 steps, so the same pair is also run at lr 3e-4 (shown in the arm table, not in the checks)
    "pav_rl_lr3e-4": Arm("pav_tiny", [*EVAL, "optimizer.lr=3.0e-4"], "PAV arm at lr 3e-4 (sensitivity, no check)"),
    "pav_rl_grpo_lr3e-4": Arm("pav_tiny", [*EVAL, "shaping=[]", "advantage={name: grpo}", "optimizer.lr=3.0e-4"],
                              "GRPO baseline at lr 3e-4 (sensitivity, no check)"),
    "pav_rl_sft": Arm("pav_tiny", [*EVAL, "train.steps=0"], "the SFT-warmed model, no RL step (reference)"),
}

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "pav_rl", "Preferences: PAV progress rewards vs outcome-only GRPO in online RL",
        "PAV, Rewarding Progress: Scaling Automated Process Verifiers (arXiv 2410.08146)",
        "Dense per-step progress rewards under a Best-of-K prover, added to the outcome advantage, improve sample "
        "efficiency over outcome rewards alone: higher held-out accuracy at an equal number of RL steps (and fewer "
        "groups without a learning signal).",
        ["pav_rl", "pav_rl_grpo_baseline", "pav_rl_sft", "pav_rl_lr3e-4", "pav_rl_grpo_lr3e-4"],
        [Compare("eval_accuracy", "pav_rl", "pav_rl_grpo_baseline"),
         Compare("pav_zero_signal_groups", "pav_rl", "pav_rl_grpo_baseline", higher=False)],
        curves=["accuracy", "shaping/pav_progress_abs", "selection/zero_variance_group_frac", "entropy/mean"],
        extra_measures=["accuracy_mean", "pav_step_s", "pav_prover_tokens"],
        suite="preferences",
        steps=STEPS,
        note=f"{STEPS} RL steps per run (CPU budget: a PAV step costs ~10x a GRPO step, for the 2 provers x K = 4 "
             "completions of every step prefix). Held-out accuracy: greedy, one sample per prompt, 128 held-out "
             "chains, at the end. Equal steps, not equal compute: the prover tokens per step are in the arm table. "
             "Monte-Carlo A^μ replaces the paper's learned PAV; tiny model, 3-step a+b+c+d chains. pav_rl_sft is the "
             "warmed-up model before RL; the lr 3e-4 pair is one pre-declared sensitivity point (the checks use "
             "the shipped lr 1e-3 only).",
    ),
]
