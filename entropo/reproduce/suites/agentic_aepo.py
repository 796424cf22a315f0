"""Agentic AEPO vs GRPO on the Python-tool task at an equal trajectory budget (suite ``agents``).

Paper: "Agentic Entropy-Balanced Policy Optimization" (AEPO), arXiv 2510.14545. Claim: balancing entropy in the
rollout (budget split + entropy-guided branching with the consecutive-branch penalty) and in the update
(stop-gradient clipping + entropy-aware advantage) improves pass@k (diversity) over GRPO-style training at the same
rollout budget, with a stable entropy (no collapse, no blow-up) during training.

Custom experiment (so it can report the rollout budget next to the trainer's metrics): both arms are ordinary
trainer runs (recipes + overrides, started from the same cached SFT warm-up per seed); GRPO is ``tir_tiny`` with the
same 2 mini-batches per step as the ``agentic_aepo`` recipe (the stop-gradient clip only acts off-policy). Both
sample ``n = 8`` trajectories per question. Measured per seed: held-out pass@1 and pass@8 at the end (64 prompts x
8 samples at T = 1), the mean entropy over the last third of steps, the entropy volatility (std of the step-to-step
change of the mean token entropy) and the entropy drop (first 10 % minus last 10 %); tokens per step: trained
(policy tokens of the returned rows) for both, and for AEPO also the tokens actually sampled (trained minus the
prefixes branches inherited, plus the pre-monitoring rollout).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from entropo.logging import read_metrics
from entropo.reproduce.aggregate import Rows, final_row, mean_and_spread, series, train_rows, window_mean
from entropo.reproduce.experiments import Arm, Compare, CustomResult, Experiment, NotWorse, combine

PAPER = "Agentic Entropy-Balanced Policy Optimization (AEPO), arXiv 2510.14545"
BASE, AEPO = "agentic_aepo_grpo", "agentic_aepo"
EVAL = ["eval.every=0", "eval.max_prompts=64"]  # start and end only: the held-out evaluation is the costly part

# SmolLM2-135M-Instruct (``agentic_aepo_smollm2``): on ``tir_tiny``'s task (the prompt is the expression) it solved 32
# of 32 held-out problems after 16 SFT steps, so no group had a reward difference; ``word_arith`` makes it write the
# expression from a two-step word problem first: 0.875 greedy held-out after 16 SFT steps on the plain stories, 0.750
# with a distractor number in each (one-seed probes), hence distractors. Both arms: the same task, warm-up, sizes, lr.
BASE_S2, AEPO_S2 = "agentic_aepo_s2_grpo", "agentic_aepo_s2"
WORD_TASK = ("task.params={chat: true, distractors: true, template: \"{question} Compute it with Python in <py></py>, "
             "then reply with the number.\"}")
SCALE_S2 = ["model.name_or_path=smollm2-135m-instruct", "task.name=word_arith", WORD_TASK, "warmup.steps=16",
            "warmup.batch_size=4", "warmup.lr=1.0e-4", "rollout.prompts_per_step=4", "rollout.max_new_tokens=40",
            "rollout.max_episode_tokens=120", "optimizer.lr=2.0e-5", "train.micro_batch_size=16", "checkpoint.every=2",
            "checkpoint.keep=1"]

ARMS: dict[str, Arm] = {
    BASE: Arm("tir_tiny", ["train.mini_batches=2", *EVAL],
              "GRPO on the Python-tool task (tir_tiny), 2 mini-batches per step, n = 8 independent episodes"),
    AEPO: Arm("agentic_aepo", EVAL, "Agentic AEPO: entropy-balanced rollout (budget 8) + entropy-balanced update"),
    BASE_S2: Arm("tir_tiny", ["train.mini_batches=2", *EVAL, *SCALE_S2],
                 "GRPO, SmolLM2-135M on word_arith with the Python tool, 2 mini-batches per step, n = 8"),
    AEPO_S2: Arm("agentic_aepo", [*EVAL, *SCALE_S2],
                 "Agentic AEPO, SmolLM2-135M on word_arith: entropy-balanced rollout (budget 8) + update"),
}

STAT = "producer/agentic_aepo_stats/"


def entropy_volatility(rows: Rows) -> float:
    """Std of the step-to-step change of the mean token entropy (lower: a steadier entropy)."""
    _, h = series(train_rows(rows), "entropy/mean")
    return float(np.diff(h).std()) if len(h) > 2 else float("nan")


def trained_tokens_per_step(rows: Rows) -> float:
    """Policy tokens of the rows trained on, per step (tokens_per_s x rollout time = the rollout's response tokens)."""
    steps = [r for r in train_rows(rows) if "tokens_per_s" in r]
    return float(np.mean([r["tokens_per_s"] * r["time/rollout_s"] for r in steps])) if steps else float("nan")


def sampled_tokens_per_step(rows: Rows) -> float:
    """Tokens actually sampled per step: AEPO's engine statistic; for plain sampling the trained tokens."""
    _, v = series(train_rows(rows), STAT + "sampled_tokens")
    return float(v.mean()) if len(v) else trained_tokens_per_step(rows)


def stat_mean(key: str) -> Callable[[Rows], float]:
    def measure(rows: Rows) -> float:
        _, v = series(train_rows(rows), STAT + key)
        return float(v.mean()) if len(v) else float("nan")
    return measure


MEASURES: dict[str, Callable[[Rows], float]] = {
    "eval_pass@1": lambda rows: float(final_row(rows).get("eval/pass@1", float("nan"))),
    "eval_pass@8": lambda rows: float(final_row(rows).get("eval/pass@8", float("nan"))),
    "entropy_last_third": lambda rows: window_mean(rows, "entropy/mean", 2 / 3, 1.0),
    "entropy_volatility": entropy_volatility,
    "entropy_drop": lambda rows: window_mean(rows, "entropy/mean", 0, 0.1) - window_mean(rows, "entropy/mean", 0.9, 1),
    "accuracy_mean": lambda rows: window_mean(rows, "accuracy", 0.0, 1.0),
    "trained_tokens_per_step": trained_tokens_per_step,
    "sampled_tokens_per_step": sampled_tokens_per_step,
    "branches_per_step": stat_mean("branches"),
    "global_samples_per_question": stat_mean("global_samples_per_question"),
}

def checks(base: str = BASE, aepo: str = AEPO) -> list:
    """The claim's checks of arm ``aepo`` against arm ``base``."""
    return [
        Compare("eval_pass@8", aepo, base, margin=0.0),
        NotWorse("eval_pass@1", aepo, base, tol=0.03),
        Compare("entropy_volatility", aepo, base, higher=False),
        NotWorse("sampled_tokens_per_step", aepo, base, tol=0.0, higher=False),
    ]


CHECKS = checks()


def run(cfg: Any, out_dir: Path, console: Callable[[str], None], base: str = BASE, aepo: str = AEPO) -> CustomResult:
    from entropo.reproduce.runner import run_arm

    runs = {arm: [read_metrics(run_arm(arm, seed, cfg, out_dir, console)) for seed in range(cfg.seeds)]
            for arm in (base, aepo)}
    values = {m: {arm: [f(rows) for rows in runs[arm]] for arm in runs} for m, f in MEASURES.items()}
    results = [c.evaluate(values[c.measure]) for c in checks(base, aepo)]
    verdict = combine([r.verdict for r in results])
    lines = [f"**Arms** ({cfg.seeds} seeds x {cfg.steps} steps, same SFT warm-up per seed): "
             f"`{base}` = {ARMS[base].label}; `{aepo}` = {ARMS[aepo].label}.", "",
             "| measure | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for m in MEASURES:
        cells = []
        for arm in runs:
            vals = values[m][arm]
            mean, spread = mean_and_spread(vals)
            cells.append(f"{mean:.3f} ± {spread:.3f} ({', '.join(f'{v:.3f}' for v in vals)})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    measured = "; ".join(f"{m}: AEPO {np.mean(values[m][aepo]):.3f} vs GRPO {np.mean(values[m][base]):.3f}"
                         for m in ("eval_pass@8", "eval_pass@1", "entropy_volatility", "sampled_tokens_per_step"))
    return CustomResult(verdict=verdict, measured=measured,
                        checks=[{"check": r.text, "detail": r.detail, "verdict": r.verdict} for r in results],
                        lines=lines, values=values)


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "agentic_aepo", "Agentic AEPO vs GRPO on the Python-tool task (equal trajectory budget)", PAPER,
        "At the same rollout budget (8 trajectories per question), Agentic AEPO's entropy-balanced rollout and update "
        "give higher pass@k than GRPO with a steadier entropy during training.",
        [], [], kind="custom", run=run, suite="agents", steps=24,
        note="Held-out evaluation at the start and end only (64 prompts x 8 samples, T = 1). Token budget: AEPO "
             "samples fewer new tokens per trajectory (branches inherit their prefix) but pays a pre-monitoring "
             "episode per question; both are reported.",
    ),
    Experiment(
        "agentic_aepo_smollm2", "Agentic AEPO vs GRPO on SmolLM2-135M (Python tool, two-step word problems)", PAPER,
        "The claim of agentic_aepo on a real model and a tool task it is not at the ceiling of: at the same rollout "
        "budget, higher pass@k than GRPO with a steadier entropy.",
        [], [], kind="custom", run=partial(run, base=BASE_S2, aepo=AEPO_S2), suite="agents", steps=8,
        note="SmolLM2-135M-Instruct on word_arith with distractors (the model writes the expression of a two-step "
             "word problem, the sandboxed Python tool computes it), 16 SFT steps of 4 demonstrations (lr 1e-4), "
             "then 8 steps of 4 questions x 8 trajectories at lr 2e-5, 2 mini-batches per step. Held-out: 64 unseen "
             "problems x 8 samples at T = 1, at the start and end. Reduced from the paper: a 135M model instead of "
             "Qwen3-14B, templated word problems with a Python tool instead of web-agent tasks (GAIA, HLE, "
             "WebWalker), 8 steps.",
    ),
]
