"""Reproduction experiment of TaTToo, reduced (suite ``preferences``, kind="custom").

``tattoo_tool_verify``: on held-out ``table_qa`` tables, a step verifier that recomputes each step's table operation
with the table tool against the same verifier without the tool (it checks format, grounding in the question and the
arithmetic it can see, never the table): step-label accuracy on gold solutions and seeded perturbations (wrong value,
missed row, wrong filter, arithmetic slip; prefix labels), and best-of-N accuracy over seeded candidate sets (each
candidate the gold solution with probability 0.25, else one perturbation). Pure Python, no model: seconds per seed.

Paper: "TaTToo: Tool-Grounded Thinking PRM for Test-Time Scaling in Tabular Reasoning" (arXiv 2510.06217).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from entropo.reproduce.experiments import Arm, Compare, CustomResult, Experiment, combine

ARMS: dict[str, Arm] = {}  # custom experiment: no trainer-run arms

PAPER = "TaTToo: Tool-Grounded Thinking PRM for Test-Time Scaling in Tabular Reasoning, arXiv 2510.06217"
SETTING = {"n_eval": 200, "ns": (1, 2, 4, 8), "p_gold": 0.25}


def _mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def run(cfg, out_dir: Path, console) -> CustomResult:
    from entropo.search.tattoo import ERRORS, VERIFIERS, run_tattoo

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for seed in range(cfg.seeds):
        res = run_tattoo(seed, SETTING["n_eval"], SETTING["ns"], SETTING["p_gold"])
        per_seed.append(res)
        console(f"  seed {seed}: step-label accuracy tool {res['labels']['tool']['step_label_accuracy']:.3f}, "
                f"no_tool {res['labels']['no_tool']['step_label_accuracy']:.3f}; best-of-4 tool "
                f"{res['best_of_n'][4]['tool']:.3f}, no_tool {res['best_of_n'][4]['no_tool']:.3f}")
    v = {f"tattoo_{name}": [r["labels"][name]["step_label_accuracy"] for r in per_seed] for name in VERIFIERS}
    b = {f"tattoo_bon{n}_{k}": [r["best_of_n"][n][k] for r in per_seed]
         for n in SETTING["ns"] for k in ("first", "tool", "no_tool", "oracle")}
    checks = [Compare("step-label accuracy", "tattoo_tool", "tattoo_no_tool").evaluate(v),
              Compare("best-of-4 accuracy", "tattoo_bon4_tool", "tattoo_bon4_no_tool").evaluate(b),
              Compare("best-of-4 accuracy", "tattoo_bon4_no_tool", "tattoo_bon4_first").evaluate(b)]
    checks = [{"check": c.text, "detail": c.detail, "verdict": c.verdict, "values": c.values} for c in checks]
    verdict = combine([c["verdict"] for c in checks])
    lines = [f"**Setup:** {SETTING['n_eval']} held-out `table_qa` problems per seed (6–8 rows × 4 columns, 3-step "
             f"solutions); step labels on the gold solution and one perturbation per error type; best-of-N over "
             f"seeded candidates (gold with p = {SETTING['p_gold']}, else one perturbation). Both verifiers are "
             "rule-based; the tool one recomputes table operations, the other never reads the table.", "",
             "| verifier | step-label accuracy per seed | mean ± sd | first-error recall by error type (seed 0) |",
             "|---|---|---|---|"]
    for name in VERIFIERS:
        rec = per_seed[0]["labels"][name]["per_error_first_error_recall"]
        lines.append(f"| {name} | {', '.join(f'{x:.3f}' for x in v[f'tattoo_{name}'])} | "
                     f"{_mean_sd(v[f'tattoo_{name}'])} | " + ", ".join(f"{e} {rec[e]:.2f}" for e in ERRORS) + " |")
    lines += ["", "| N | first candidate | no_tool pick | tool pick | oracle (any correct) |", "|---|---|---|---|---|"]
    for n in SETTING["ns"]:
        lines.append(f"| {n} | " + " | ".join(_mean_sd(b[f"tattoo_bon{n}_{k}"])
                                               for k in ("first", "no_tool", "tool", "oracle")) + " |")
    measured = (f"step-label accuracy tool {_mean_sd(v['tattoo_tool'])} vs no-tool {_mean_sd(v['tattoo_no_tool'])}; "
                f"best-of-4 tool {_mean_sd(b['tattoo_bon4_tool'])} vs no-tool {_mean_sd(b['tattoo_bon4_no_tool'])} "
                f"vs first candidate {_mean_sd(b['tattoo_bon4_first'])} (oracle {_mean_sd(b['tattoo_bon4_oracle'])})")
    (out_dir / "tattoo_summary.json").write_text(json.dumps({"labels": v, "best_of_n": b}, indent=1))
    return CustomResult(verdict, measured, checks, lines, [], {"per_seed": per_seed, "labels": v, "best_of_n": b})


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "tattoo_tool_verify", "Preferences: tool-grounded step verification on tables (TaTToo, reduced)", PAPER,
        "Grounding step verification in a table tool gives more accurate step labels than verifying without the "
        "tool, and a better best-of-N pick of candidate solutions.",
        [], [], kind="custom", suite="preferences", run=run, steps=0,
        note="No trained PRM: both verifiers are rule-based and the tool is a table-expression interpreter, so the "
             "tool verifier is exact on these error types by construction; what is measured is how many errors a "
             "verifier without table access misses (retrieval errors) and what that costs best-of-N. Candidates "
             "are perturbed gold solutions, not model samples.",
    ),
]
