"""Reproduction experiment of MCTS-DPO's iterative loop (suite ``preferences``, kind="custom").

``mcts_dpo_iterative``: the tiny model after the ``search_tiny`` SFT warm-up (cached per seed, shared with the
``search_vs_tokens`` experiment), then 3 iterations of: MCTS (the verifier as value) on 16 fresh training prompts of
3-step arithmetic chains with the current policy → pairs → DPO (β 0.1, frozen SFT reference) — arms:

- ``mcts_dpo_step``: MCTS-DPO's step-level pairs (max-Q vs min-Q sibling along the chosen path) with the per-pair
  visit-count label smoothing;
- ``mcts_dpo_instance``: instance-level DPO, whole finished responses from the same trees (distinct responses with
  different values, the largest gap first), at most as many pairs per prompt as the step-level rule gives there,
  no smoothing;
- ``mcts_dpo_none``: no training (the warmed-up model; iteration 0 of the other arms).

Measured: held-out greedy accuracy (64 problems) after each iteration, 2 seeds. ``mcts_dpo_smollm2`` runs the same
arms with SmolLM2-135M-Instruct after the ``search_smollm2`` warm-up (2-digit a+b+c+d chains; ``SMOLLM2``).
Paper: "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning" (arXiv 2405.00451).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from entropo.reproduce.experiments import Compare, CustomResult, Experiment, combine

ARMS: dict = {}  # custom experiment: no trainer-run arms

PAPER = "MCTS-DPO, Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning (arXiv 2405.00451)"
LEVELS = ("step", "instance")
SETTING = {"iterations": 3, "prompts_per_iter": 16, "reference": "sft",
           "mcts_params": {"n_iters": 4, "n_actions": 2, "depth_limit": 3},
           "sampler_params": {"temperature": 1.0, "max_step_tokens": 16, "max_steps": 6, "max_tokens": 40},
           "dpo_epochs": 4.0, "pairs_per_step": 16, "lr": 1e-3, "beta": 0.1}
N_EVAL = 64


@dataclass(frozen=True)
class Scale:
    """One model's setting of the experiment: warm-up recipe, chains, the loop's knobs, and the report's wording."""

    recipe: str  # recipe whose model is warmed up (cached per seed, shared with the search experiment)
    task_params: dict  # arith_chain parameters (held-out split of 128)
    setting: dict  # keyword arguments of ``mcts_dpo``
    model: str  # the report's description of the starting model


TINY = Scale("search_tiny", {"digits": 1, "num_terms": 4}, SETTING,
             "tiny model after the `search_tiny` SFT warm-up (cached per seed)")
# SmolLM2-135M-Instruct after the `search_smollm2` warm-up (shared with the search_smollm2 experiment's recipe): the
# tiny setting with the real model's step sampler and learning rate (the repo's SmolLM2 setting, at which online DPO
# held on SmolLM2), fixed before the run.
SMOLLM2 = Scale("search_smollm2", {"digits": 2, "num_terms": 4},
                {**SETTING, "lr": 1e-5,
                 "sampler_params": {"temperature": 1.0, "max_step_tokens": 16, "max_steps": 5, "max_tokens": 48}},
                "SmolLM2-135M-Instruct after the `search_smollm2` SFT warm-up (40 steps, cached per seed), 2-digit "
                "a+b+c+d chains")


def run_arm(seed: int, level: str, out_dir: Path, console, scale: Scale = TINY) -> dict[str, Any]:
    from entropo import registry
    from entropo.reproduce.suites.search import _cached, _engine, _warm_model
    from entropo.search.mcts_dpo import mcts_dpo

    d = out_dir / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    path = _warm_model(seed, out_dir, console, scale.recipe)
    task = registry.get("task", "arith_chain")(seed=seed, eval_size=128, **scale.task_params)
    setting = scale.setting

    def compute() -> dict:
        engine = _engine(path)  # a fresh copy of the warmed-up model for each arm
        history = mcts_dpo(engine, task, level=level, eval_examples=task.eval_examples()[:N_EVAL], seed=seed,
                           out_dir=d / level, console=console, **setting)
        return {"history": history}

    return _cached(d / f"{level}.json", {"setting": setting, "level": level, "n_eval": N_EVAL, "rules": 2}, compute,
                   console)["history"]


def step_pair_correctness(out_dir: Path) -> dict[str, int]:
    """How many step-level pairs (from the written pair files) have a chosen / rejected first line that is the
    correct next line of the chain (``arith_chain``'s ``chain_lines``, the ``arith_steps`` checker's rule)."""
    import json
    import re

    from entropo.tasks.arith_chain import chain_lines

    counts = {"both_right": 0, "chosen_right_only": 0, "rejected_right_only": 0, "both_wrong": 0}
    for f in sorted(out_dir.glob("seed*/step/pairs_iter*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            question, _, done = r["prompt"].partition("=")
            gold = chain_lines([int(x) for x in re.findall(r"\d+", question)], re.findall(r"[+\-*]", question))
            k = done.count("\n")

            def right(text: str) -> bool:
                return k < len(gold) and text.split("\n")[0].strip().replace(" ", "") == gold[k]

            c, w = right(r["chosen"]), right(r["rejected"])
            key = ("both_right" if c and w else "chosen_right_only" if c else "rejected_right_only" if w
                   else "both_wrong")
            counts[key] += 1
    return counts


def _mean_sd(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def run(cfg, out_dir: Path, console, scale: Scale = TINY) -> CustomResult:
    from entropo.reproduce.suites.search import _check_dict

    out_dir = Path(out_dir)
    seeds = list(range(cfg.seeds))
    hist = {level: [run_arm(s, level, out_dir, console, scale) for s in seeds] for level in LEVELS}
    setting = scale.setting
    v: dict[str, list[float]] = {"mcts_dpo_none": [h[0]["eval_greedy"] for h in hist["step"]]}
    for level in LEVELS:
        v[f"mcts_dpo_{level}"] = [h[-1]["eval_greedy"] for h in hist[level]]
        v[f"mcts_dpo_{level}_best"] = [max(r["eval_greedy"] for r in h[1:]) for h in hist[level]]
    checks = [_check_dict(c) for c in (
        Compare("held-out greedy accuracy after the last iteration", "mcts_dpo_step", "mcts_dpo_none").evaluate(v),
        Compare("held-out greedy accuracy after the last iteration", "mcts_dpo_step",
                "mcts_dpo_instance").evaluate(v))]
    verdict = combine([c["verdict"] for c in checks])
    lines = [f"**Setup:** {scale.model}; per iteration MCTS "
             f"({setting['mcts_params']['n_iters']} iterations per move, 4x at the root, 2 actions, verifier value) "
             f"on {setting['prompts_per_iter']} fresh training prompts, then DPO (β {setting['beta']}, lr "
             f"{setting['lr']}, {setting['dpo_epochs']:g} passes over the iteration's pairs, frozen SFT reference); "
             f"held-out greedy accuracy on {N_EVAL} problems after each iteration.", "",
             "| arm | seed | accuracy per iteration (0 → 3) | pairs trained / step-level pairs per iteration | "
             "mean ε |",
             "|---|---|---|---|---|"]
    for level in LEVELS:
        for s, h in zip(seeds, hist[level]):
            lines.append(f"| mcts_dpo_{level} | {s} | " + " → ".join(f"{r['eval_greedy']:.3f}" for r in h) + " | " +
                         ", ".join(f"{r.get('pairs', 0)}/{r.get('step_pairs_available', 0)}" for r in h[1:]) +
                         " | " +
                         ", ".join(f"{r.get('mean_label_smoothing', 0.0):.2f}" for r in h[1:]) + " |")
    steps = step_pair_correctness(out_dir)
    lines += ["", "**Are the step-level preferences right?** First line of the chosen vs rejected step checked against "
              "the correct next line of the chain, over all step pairs of all seeds and iterations: " +
              ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in steps.items()) + ". With the verifier as the only "
              "value, a step's Q says whether random continuations reached the right final number, not whether the "
              "step is right."]
    measured = (f"held-out greedy accuracy after {setting['iterations']} iterations: step-level MCTS-DPO "
                f"{_mean_sd(v['mcts_dpo_step'])}, instance-level DPO {_mean_sd(v['mcts_dpo_instance'])}, no training "
                f"{_mean_sd(v['mcts_dpo_none'])} ({len(seeds)} seeds)")
    return CustomResult(verdict, measured, checks, lines, [], {"history": hist, "accuracy": v,
                                                               "step_pair_correctness": steps})


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "mcts_dpo_iterative", "Preferences: MCTS-DPO (step-level pairs) vs instance-level DPO, iterated", PAPER,
        "Iterating MCTS on fresh prompts → step-level preference pairs (sibling Q-values, visit-count label "
        "smoothing) → DPO raises the policy's held-out greedy accuracy over its starting point, and more than "
        "instance-level DPO on the same number of whole-response pairs from the same searches.",
        [], [], kind="custom", suite="preferences", run=run, steps=SETTING["iterations"],
        note="The MCTS value is the task's verifier on training prompts (no self-evaluation); the held-out accuracy "
             "is greedy decoding, no search. Tiny character-level model, 16 prompts per iteration: few pairs.",
    ),
    Experiment(
        "mcts_dpo_smollm2", "Preferences: MCTS-DPO vs instance-level DPO, iterated, on SmolLM2-135M", PAPER,
        "The claim of mcts_dpo_iterative on a real model: iterated MCTS → step-level pairs → DPO raises held-out "
        "greedy accuracy over the starting point, and more than instance-level DPO on as many whole-response pairs.",
        [], [], kind="custom", suite="preferences", run=partial(run, scale=SMOLLM2), steps=SETTING["iterations"],
        note="SmolLM2-135M-Instruct after the search_smollm2 warm-up; 2-digit a+b+c+d chains (three steps, as the "
             "tiny setting); DPO lr 1e-5 (the repo's SmolLM2 setting), otherwise the tiny experiment's setting.",
    ),
]
