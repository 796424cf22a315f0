"""Reproduction experiment of process rewards (suite ``preferences``, kind="custom"):

``prm_search``: a PRM trained on Monte-Carlo step labels (PAV's "verifier regressed on Monte-Carlo Q estimates",
μ = π) of the warmed-up tiny model on 3-step arithmetic chains, used as the scorer of best-of-N and step-level beam
search on held-out chains, against the model's own mean log-prob (the other scorer that reads no answer) and
unguided sampling (best-of-1); the oracle scorers (the outcome verifier and the ``arith_steps`` process checker,
both read the gold answer) are reported as ceilings. Per seed: the ``search_tiny`` warm-up (cached), 48 training
prompts × 2 samples labelled with 4 completions per step prefix, 150 PRM steps, then 96 held-out problems.

Paper: "Rewarding Progress: Scaling Automated Process Verifiers for LLM Reasoning" (Setlur et al., arXiv 2410.08146).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from entropo.reproduce.experiments import Arm, Compare, CustomResult, Experiment, combine

ARMS: dict[str, Arm] = {}  # custom experiment: no trainer-run arms

PAPER = "PAV, Rewarding Progress: Scaling Automated Process Verifiers (arXiv 2410.08146)"
SAMPLER = {"temperature": 1.0, "max_step_tokens": 16, "max_steps": 6, "max_tokens": 40}
PRM_SETTING = {"prompts": 48, "samples": 2, "labels": "mc", "n_mc": 4, "steps": 150, "lr": 1e-3, "init": "policy"}
N_EVAL = 96  # first run: 32 (one problem = 0.031 of accuracy; too coarse to separate the scorers)
POINTS = [("best_of_n", 1, "logprob"), ("best_of_n", 4, "prm"), ("best_of_n", 4, "logprob"), ("beam", 2, "prm"),
          ("beam", 2, "logprob"), ("best_of_n", 4, "outcome"), ("best_of_n", 4, "arith_steps")]


def _key(strategy: str, budget: int, scorer: str) -> str:
    return f"prm_{strategy}@{budget}/{scorer}" if budget > 1 else "prm_sample@1"


def run_seed(seed: int, cfg, out_dir: Path, console) -> dict[str, Any]:
    from entropo import registry
    from entropo.reproduce.suites.search import _cached, _engine, _warm_model
    from entropo.search.prm import load_prm, train_prm
    from entropo.search.runner import search_one
    from entropo.search.strategies import budget_params
    from entropo.tasks.base import stable_seed

    d = out_dir / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    path = _warm_model(seed, out_dir, console)
    task = registry.get("task", "arith_chain")(seed=seed, eval_size=128, digits=1, num_terms=4)

    def prm_part() -> dict:
        engine = _engine(path)
        model, info = train_prm(engine, task, **PRM_SETTING, seed=seed, sampler_params=SAMPLER, console=console)
        model.save(d / "prm")
        return {"prm": info}

    trained = _cached(d / "prm.json", {"setting": PRM_SETTING, "sampler": SAMPLER}, prm_part, console)

    def search_part() -> dict:
        engine = _engine(path)
        held_out = task.eval_examples()[:N_EVAL]
        model = load_prm(d / "prm")
        out = {}
        for strategy, budget, scorer in POINTS:
            t0 = time.perf_counter()
            name, params = ("entropo.search.prm:prm_scorer", {"model": model}) if scorer == "prm" else (scorer, {})
            rows = [search_one(strategy, ex, engine, task, seed=stable_seed(seed, "prm-search", strategy, budget, i),
                               scorer=name, scorer_params=params, sampler_params=SAMPLER,
                               params=budget_params(strategy, budget)) for i, ex in enumerate(held_out)]
            acc = sum(r["correct"] for r in rows) / len(rows)
            tokens = sum(r["tokens"] for r in rows) / len(rows)
            out[_key(strategy, budget, scorer)] = {"accuracy": acc, "tokens": tokens}
            console(f"  seed {seed} {strategy}@{budget} ({scorer}): accuracy {acc:.3f}, tokens/problem {tokens:.1f}, "
                    f"{time.perf_counter() - t0:.1f}s")
        return {"points": out}

    found = _cached(d / "search.json", {"points": POINTS, "n_eval": N_EVAL, "sampler": SAMPLER,
                                        "prm": trained["key"]}, search_part, console)
    return {"prm": trained["prm"], "points": found["points"]}


def _mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def run(cfg, out_dir: Path, console) -> CustomResult:
    out_dir = Path(out_dir)
    per_seed = [run_seed(seed, cfg, out_dir, console) for seed in range(cfg.seeds)]
    keys = [_key(*p) for p in POINTS]
    v = {k: [r["points"][k]["accuracy"] for r in per_seed] for k in keys}
    checks = [Compare("held-out accuracy", "prm_best_of_n@4/prm", "prm_best_of_n@4/logprob").evaluate(v),
              Compare("held-out accuracy", "prm_best_of_n@4/prm", "prm_sample@1").evaluate(v),
              Compare("held-out accuracy", "prm_beam@2/prm", "prm_beam@2/logprob").evaluate(v)]
    checks = [{"check": c.text, "detail": c.detail, "verdict": c.verdict, "values": c.values} for c in checks]
    verdict = combine([c["verdict"] for c in checks])
    lines = [f"**Setup:** tiny model after the `search_tiny` SFT warm-up (cached per seed); PRM = the policy's "
             f"transformer + a value head, fit (BCE, {PRM_SETTING['steps']} steps) on Monte-Carlo labels of "
             f"{PRM_SETTING['prompts']} training prompts × {PRM_SETTING['samples']} samples ({PRM_SETTING['n_mc']} "
             f"completions per step prefix); {N_EVAL} held-out a+b+c+d chains per seed. PRM and log-prob read no "
             "answer; outcome and arith_steps read the gold answer (oracle ceilings).", "",
             "| strategy (scorer) | accuracy per seed | mean ± sd | tokens / problem |", "|---|---|---|---|"]
    for k in keys:
        lines.append(f"| {k} | {', '.join(f'{x:.3f}' for x in v[k])} | {_mean_sd(v[k])} | "
                     f"{np.mean([r['points'][k]['tokens'] for r in per_seed]):.1f} |")
    lines += ["", "**PRM fit** (held-out-prompt step labels, BCE before → after, 0.5-threshold agreement): " + "; ".join(
        f"seed {s}: {r['prm']['labelled_steps']} labelled steps (mean label {r['prm']['label_mean']:.3f}), BCE "
        f"{r['prm']['held_before']['bce']:.3f} → {r['prm']['held_after']['bce']:.3f}, agreement "
        f"{r['prm']['held_after']['agreement']:.3f}" for s, r in enumerate(per_seed)) + "."]
    measured = (f"best-of-4 by PRM {_mean_sd(v['prm_best_of_n@4/prm'])} vs by log-prob "
                f"{_mean_sd(v['prm_best_of_n@4/logprob'])} vs one sample {_mean_sd(v['prm_sample@1'])}; beam@2 PRM "
                f"{_mean_sd(v['prm_beam@2/prm'])} vs log-prob {_mean_sd(v['prm_beam@2/logprob'])}; oracle verifier "
                f"best-of-4 {_mean_sd(v['prm_best_of_n@4/outcome'])}")
    (out_dir / "prm_summary.json").write_text(json.dumps({"accuracy": v}, indent=1))
    return CustomResult(verdict, measured, checks, lines, [], {"per_seed": per_seed, "accuracy": v})


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "prm_search", "Preferences: a PRM trained on Monte-Carlo step labels as a search scorer", PAPER,
        "A process verifier regressed on Monte-Carlo success estimates of step prefixes ranks candidate solutions "
        "better than the policy's own confidence: PRM-guided best-of-N and beam search reach higher held-out "
        "accuracy than log-prob-guided search at the same budget (and than a single sample).",
        [], [], kind="custom", suite="preferences", run=run, steps=PRM_SETTING["steps"],
        note="μ = π (no Best-of-K prover for the labels), the tiny model on arith_chain; the PRM reads no answer on "
             "held-out problems. PAV-shaped RL (recipe pav_tiny) is not part of this run (CPU budget).",
    ),
]
