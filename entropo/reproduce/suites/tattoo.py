"""Reproduction experiment of TaTToo, reduced (suite ``preferences``, kind="custom").

``tattoo_tool_verify``: on held-out ``table_qa`` tables, a step verifier that recomputes each step's table operation
with the table tool against the same verifier without the tool (it checks format, grounding in the question and the
arithmetic it can see, never the table): step-label accuracy on gold solutions and seeded perturbations (wrong value,
missed row, wrong filter, arithmetic slip; prefix labels), and best-of-N accuracy over seeded candidate sets (each
candidate the gold solution with probability 0.25, else one perturbation). Pure Python, no model: seconds per seed.

``tattoo_model_bon``: the same two verifiers as best-of-N scorers over candidates *sampled* from the tiny model after a
short SFT warm-up on gold table_qa solutions (cached per seed), through the search sampler (``StepSampler``).

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


SFT = {"steps": 150, "batch_size": 16, "lr": 3.0e-3}
SAMPLER = {"temperature": 1.0, "max_step_tokens": 48, "max_steps": 4, "max_tokens": 120}
MODEL_EVAL, MODEL_N = 48, 4


def _warm(seed: int, out_dir: Path, console) -> Path:
    from entropo.config import load_recipe
    from entropo.reproduce.runner import RECIPES_DIR, warmed_up_model
    from entropo.reproduce.suites.search import SUITE_OVERRIDES
    from entropo.trainer import train

    recipe = load_recipe(RECIPES_DIR / "search_tiny.yaml", [
        f"seed={seed}", "task.name=table_qa", "task.params={}", f"task.eval_size={SETTING['n_eval']}",
        f"warmup.steps={SFT['steps']}", f"warmup.batch_size={SFT['batch_size']}", f"warmup.lr={SFT['lr']}",
        f"rollout.max_new_tokens={SAMPLER['max_tokens']}", *SUITE_OVERRIDES, "eval.max_prompts=4"])
    return warmed_up_model(recipe, out_dir / "warmup", train, console)


def model_seed(seed: int, out_dir: Path, console) -> dict:
    """Best-of-N picks of both verifiers over the same sampled candidates (N = 1, 2, 4 as prefixes of 4 samples)."""
    from entropo import registry
    from entropo.reproduce.suites.search import _cached, _engine
    from entropo.search.runner import make_sampler
    from entropo.search.steps import root
    from entropo.search.strategies import argmax_first
    from entropo.search.tattoo import TableStepScorer, gold_labels, predicted_labels
    from entropo.tasks.base import stable_seed
    from entropo.tasks.table_qa import ToolError, parse_step

    d = out_dir / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    path = _warm(seed, out_dir, console)

    def part() -> dict:
        engine = _engine(path)
        task = registry.get("task", "table_qa")(seed=seed, eval_size=SETTING["n_eval"])
        scorers = {"tool": TableStepScorer(engine.tokenizer, True), "no_tool": TableStepScorer(engine.tokenizer, False)}
        ns = [n for n in (1, 2, 4) if n <= MODEL_N]
        acc = {n: {"first": 0, "tool": 0, "no_tool": 0, "oracle": 0} for n in ns}
        steps = parsable = 0
        agree = {"tool": 0, "no_tool": 0}
        for i, ex in enumerate(task.eval_examples()[:MODEL_EVAL]):
            sampler = make_sampler(engine, stable_seed(seed, "tattoo-model", i), **SAMPLER)
            cands = sampler.complete([root(ex, engine.encode_prompt(ex.prompt))], MODEL_N)[0]
            texts = [c.text(engine.tokenizer) for c in cands]
            ok = [task.correct(t, ex) for t in texts]
            scores = {k: sc.score(cands) for k, sc in scorers.items()}
            for n in ns:
                acc[n]["first"] += ok[0]
                acc[n]["oracle"] += any(ok[:n])
                for k in scorers:
                    acc[n][k] += ok[argmax_first(scores[k][:n])]
            for t in texts:
                lines = [ln for ln in t.split("\n") if ln.strip()]
                labels = gold_labels(lines, ex.meta["steps"])
                steps += len(lines)
                for ln in lines:
                    try:
                        parse_step(ln)
                        parsable += 1
                    except ToolError:
                        pass
                for k in scorers:
                    pred = predicted_labels("\n".join(lines), ex, k == "tool")
                    agree[k] += sum(p == g for p, g in zip(pred, labels))
        m = MODEL_EVAL
        return {"best_of_n": {str(n): {k: c / m for k, c in row.items()} for n, row in acc.items()},
                "step_label_accuracy": {k: a / max(steps, 1) for k, a in agree.items()},
                "steps": steps, "parsable": parsable / max(steps, 1),
                "sample_text": texts[0]}

    got = _cached(d / "model_bon.json", {"sft": SFT, "sampler": SAMPLER, "n": MODEL_N, "eval": MODEL_EVAL}, part,
                  console)
    console(f"  seed {seed}: model candidates, best-of-{MODEL_N} tool {got['best_of_n'][str(MODEL_N)]['tool']:.3f}, "
            f"no_tool {got['best_of_n'][str(MODEL_N)]['no_tool']:.3f}, oracle "
            f"{got['best_of_n'][str(MODEL_N)]['oracle']:.3f}; parsable steps {got['parsable']:.3f}")
    return got


def run_model(cfg, out_dir: Path, console) -> CustomResult:
    out_dir = Path(out_dir)
    per_seed = [model_seed(seed, out_dir, console) for seed in range(cfg.seeds)]
    ns = list(per_seed[0]["best_of_n"])
    b = {f"tattoo_model_bon{n}_{k}": [r["best_of_n"][n][k] for r in per_seed]
         for n in ns for k in ("first", "tool", "no_tool", "oracle")}
    lab = {f"tattoo_model_{k}": [r["step_label_accuracy"][k] for r in per_seed] for k in ("tool", "no_tool")}
    big = ns[-1]
    checks = [Compare(f"best-of-{big} accuracy", f"tattoo_model_bon{big}_tool", f"tattoo_model_bon{big}_no_tool")
              .evaluate(b),
              Compare("step-label accuracy", "tattoo_model_tool", "tattoo_model_no_tool").evaluate(lab)]
    checks = [{"check": c.text, "detail": c.detail, "verdict": c.verdict, "values": c.values} for c in checks]
    verdict = combine([c["verdict"] for c in checks])
    lines = [f"**Setup:** the tiny char-level model after {SFT['steps']} SFT steps (batch {SFT['batch_size']}) on gold "
             f"table_qa solutions; {MODEL_N} samples (temperature 1) for each of {MODEL_EVAL} held-out problems per "
             "seed; N = 1, 2, 4 are prefixes of the same samples. Step labels: prefix match with the gold steps.", "",
             "| N | first sample | no_tool pick | tool pick | oracle |", "|---|---|---|---|---|"]
    for n in ns:
        lines.append(f"| {n} | " + " | ".join(_mean_sd(b[f"tattoo_model_bon{n}_{k}"])
                                               for k in ("first", "no_tool", "tool", "oracle")) + " |")
    lines += ["", "Step-label accuracy on the samples: " + "; ".join(
        f"seed {s}: tool {r['step_label_accuracy']['tool']:.3f}, no_tool {r['step_label_accuracy']['no_tool']:.3f} "
        f"({r['steps']} steps, {r['parsable']:.2f} parsable)" for s, r in enumerate(per_seed)) + "."]
    measured = (f"best-of-{big} over model samples: tool {_mean_sd(b[f'tattoo_model_bon{big}_tool'])} vs no-tool "
                f"{_mean_sd(b[f'tattoo_model_bon{big}_no_tool'])} vs first sample "
                f"{_mean_sd(b[f'tattoo_model_bon{big}_first'])} "
                f"(oracle {_mean_sd(b[f'tattoo_model_bon{big}_oracle'])})")
    return CustomResult(verdict, measured, checks, lines, [], {"per_seed": per_seed, "best_of_n": b, "labels": lab})


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
    Experiment(
        "tattoo_model_bon", "Preferences: tool vs no-tool verifiers over tiny-model samples on tables (TaTToo)",
        PAPER,
        "Over candidates sampled from a policy, the tool-grounded verifier picks correct solutions more often than "
        "the verifier without the tool, and labels the samples' steps more accurately.",
        [], [], kind="custom", suite="preferences", run=run_model, steps=0,
        note="The tiny char-level model after a short SFT (cached per seed) is a weak policy: few samples are "
             "correct, so best-of-N differences are bounded by the oracle column.",
    ),
]
