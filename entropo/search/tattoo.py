"""Tool-grounded step verification on generated tables: TaTToo, reduced.

Paper: "TaTToo: Tool-Grounded Thinking PRM for Test-Time Scaling in Tabular Reasoning" (arXiv 2510.06217; no
official code). The paper's PRM is an 8B generative verifier that, for each step of a table-reasoning trace, calls
tools (code, table look-ups) to check the step's table operations, then gives a step reward; step rewards are
aggregated into a trajectory score for best-of-N / beam search. Kept here: step-level verdicts whose table part is
*grounded in a tool call* (the step's claimed table operation is recomputed on the table), aggregation by the minimum
over steps, use as a ``StepScorer`` for test-time search, and the comparison with a verifier that reasons without
the tool. Reduced: no trained generative PRM — both verifiers are rule-based; the tool is the deterministic
table-expression interpreter of ``entropo.tasks.table_qa`` (its own parser, never ``eval``); the traces are the
``table_qa`` task's one-step-per-line solutions.

Two step verifiers, each ``verdict(line, example) -> +1 correct / -1 incorrect / 0 cannot check``:

- ``tool``: parses the step; a table operation is recomputed by the table tool over the table
  (``Example.meta["rows"]``) and compared with the claimed value; arithmetic is recomputed; the step's filter values
  and aggregated column must be named in the question (grounding). A step the tool cannot parse or evaluate → 0.
- ``no_tool``: the stand-in for a PRM that reasons *without* tools and never looks the table up: the same parse,
  arithmetic and grounding checks, but a table operation's value is only checked to be plausible (a non-negative
  integer; a count at most the number of rows is not known to it either). It reads the question, not the table.

A solution's score is the minimum of its finished steps' verdicts (the usual PRM aggregation; 0 for no step;
a finished response with no parsable step scores -1). Gold step labels for accuracy are *prefix* labels
(Math-Shepherd style): step k is correct iff steps 1..k equal the gold steps; a verifier's predicted label for step k
is ``min(verdicts[:k+1]) > 0``.

Scorers for search: ``entropo search ... --scorer entropo.search.tattoo:tool_scorer`` (or ``no_tool_scorer``).
Program ``tattoo`` (``entropo run tattoo``): step-label accuracy of both verifiers on perturbed gold solutions and
best-of-N accuracy over seeded candidate sets, on held-out tables.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from entropo.registry import register
from entropo.search.steps import Partial
from entropo.tasks.table_qa import NUMERIC, ToolError, arith, arith_line, evaluate, parse_step

PAPER = "TaTToo: Tool-Grounded Thinking PRM for Test-Time Scaling in Tabular Reasoning, arXiv 2510.06217"
ERRORS = ("wrong_value", "missed_row", "wrong_filter", "arith_slip")
VERIFIERS = ("tool", "no_tool")
_WORD = re.compile(r"[a-z]+|\d+")


# ---- step verifiers -------------------------------------------------------------------------------------------------

def grounded(step: dict[str, Any], question: str) -> bool:
    """Every filter value and the aggregated column of a table step is named in the question."""
    words = set(_WORD.findall(question.lower()))
    names = [value for _, _, value in step["conds"]]
    if step["col"] is not None:
        names.append(step["col"])
    return all(n in words for n in names)


def verdict(line: str, example: Any, use_tool: bool) -> int:
    """+1 / -1 / 0 (cannot check) for one step line (see the module docstring)."""
    meta = example.meta
    if "question" not in meta or (use_tool and "rows" not in meta):
        raise ValueError("tattoo verifiers need Example.meta['question'] (and ['rows'] for the tool verifier): "
                         "use task table_qa")
    try:
        step = parse_step(line)
    except ToolError:
        return 0
    if step["kind"] == "arith":
        try:
            return 1 if arith(step["op"], *step["args"]) == step["claimed"] else -1
        except ToolError:
            return 0
    if not grounded(step, meta["question"]):
        return -1
    if not use_tool:  # no table access: only plausibility of the claimed number
        if step["col"] is not None and step["col"] not in NUMERIC:
            return -1
        return 1 if step["claimed"] >= 0 else -1
    try:
        value = evaluate(step, meta["rows"])
    except ToolError:
        return 0
    return 1 if value == step["claimed"] else -1


def step_verdicts(text: str, example: Any, use_tool: bool, finished: bool = True) -> list[int]:
    """Verdicts of the complete lines of a response (the last line of an unfinished one may still grow)."""
    lines = [ln for ln in text.split("\n")]
    if not finished:
        lines = lines[:-1]
    return [verdict(ln, example, use_tool) for ln in lines if ln.strip()]


def solution_score(text: str, example: Any, use_tool: bool, finished: bool = True) -> float:
    """min over step verdicts; 0 with no complete step yet; -1 for a finished response without any step."""
    v = step_verdicts(text, example, use_tool, finished)
    if not v:
        return -1.0 if finished else 0.0
    return float(min(v))


def predicted_labels(text: str, example: Any, use_tool: bool) -> list[bool]:
    """Prefix verdicts: step k judged correct iff every verdict up to k is +1."""
    out, ok = [], True
    for v in step_verdicts(text, example, use_tool):
        ok = ok and v > 0
        out.append(ok)
    return out


def gold_labels(lines: list[str], gold: list[str]) -> list[bool]:
    """Prefix labels: step k correct iff lines[:k+1] == gold[:k+1]."""
    out, ok = [], True
    for k, ln in enumerate(lines):
        ok = ok and k < len(gold) and ln.strip() == gold[k]
        out.append(ok)
    return out


class TableStepScorer:
    """``StepScorer`` for search on ``table_qa``: the minimum step verdict of each partial."""

    def __init__(self, tokenizer: Any, use_tool: bool):
        self.tokenizer, self.use_tool = tokenizer, bool(use_tool)
        self.name = "tattoo_tool" if use_tool else "tattoo_no_tool"

    def score(self, partials: list[Partial]) -> list[float]:
        return [solution_score(p.text(self.tokenizer), p.example, self.use_tool, p.finished) for p in partials]


def tool_scorer(*, task: Any = None, tokenizer: Any = None, sampler: Any = None) -> TableStepScorer:
    """``--scorer entropo.search.tattoo:tool_scorer``: tool-grounded step verification."""
    return TableStepScorer(tokenizer, use_tool=True)


def no_tool_scorer(*, task: Any = None, tokenizer: Any = None, sampler: Any = None) -> TableStepScorer:
    """``--scorer entropo.search.tattoo:no_tool_scorer``: the same checks without the table tool."""
    return TableStepScorer(tokenizer, use_tool=False)


# ---- perturbed solutions (step errors with honest propagation) -----------------------------------------------------

def perturb(example: Any, error: str, rng: random.Random) -> tuple[list[str], int] | None:
    """The gold steps with one seeded error and later steps recomputed from the erroneous value; returns
    ``(lines, index of the erroneous step)`` or None when the error does not apply (changes nothing).

    ``wrong_value``: a table step's claimed value off by 1..3; ``missed_row``: a table step computed with one matching
    row dropped (a retrieval slip); ``wrong_filter``: a table step filtering on another category/item of the table
    (value computed honestly for that filter); ``arith_slip``: the final arithmetic result off by 1..3."""
    rows, gold = example.meta["rows"], list(example.meta["steps"])
    table_idx = [k for k, ln in enumerate(gold) if parse_step(ln)["kind"] == "table"]
    lines = list(gold)
    if error == "arith_slip":
        k = len(gold) - 1
        lhs, v = gold[k].rsplit("=", 1)
        lines[k] = f"{lhs}={int(v) + rng.choice([-3, -2, -1, 1, 2, 3])}"
        return lines, k
    if error not in ERRORS:
        raise ValueError(f"unknown error type {error!r}; allowed: {', '.join(ERRORS)}")
    k = rng.choice(table_idx)
    step = parse_step(gold[k])
    lhs = gold[k].rsplit("=", 1)[0]
    if error == "wrong_value":
        new = step["claimed"] + rng.choice([-3, -2, -1, 1, 2, 3])
        if new < 0:
            new = step["claimed"] + rng.choice([1, 2, 3])
    elif error == "missed_row":
        hit = [i for i, r in enumerate(rows) if _matches_all(r, step["conds"])]
        if len(hit) < 2:
            return None
        drop = rng.choice(hit)
        try:
            new = evaluate(step, [r for i, r in enumerate(rows) if i != drop])
        except ToolError:
            return None
    else:  # wrong_filter
        col, op, value = next(c for c in step["conds"] if c[0] in ("category", "item"))
        others = sorted({r[col] for r in rows} - {value} - set(_WORD.findall(example.meta["question"])))
        if not others:
            return None
        swap = rng.choice(others)
        lhs = lhs.replace(f"{col}={value}", f"{col}={swap}")
        try:
            new = evaluate(parse_step(f"{lhs}=0"), rows)
        except ToolError:
            return None
    if new == step["claimed"] and error != "wrong_filter":
        return None
    lines[k] = f"{lhs}={new}"
    return _propagate(lines, k), k


def _matches_all(row: dict[str, Any], conds: list[tuple[str, str, str]]) -> bool:
    from entropo.tasks.table_qa import _matches

    return _matches(row, conds)


def _propagate(lines: list[str], k: int) -> list[str]:
    """Recompute the final arithmetic step from the (possibly wrong) table values before it."""
    last = parse_step(lines[-1])
    if last["kind"] != "arith" or k == len(lines) - 1:
        return lines
    vals = [parse_step(ln)["claimed"] for ln in lines[:-1]]
    try:
        lines[-1] = arith_line(last["op"], vals[0], vals[1])
    except ToolError:  # e.g. a count of 0 under //: keep the claimed line (it is now wrong arithmetic)
        pass
    return lines


# ---- the measurement -----------------------------------------------------------------------------------------------

def label_accuracy(examples: list[Any], seed: int) -> dict[str, Any]:
    """Step-label accuracy of each verifier on gold solutions and one perturbation per error type per example."""
    rng = random.Random(seed)
    counts = {v: {"steps": 0, "agree": 0, "first_error_found": 0, "bad_solutions": 0} for v in VERIFIERS}
    per_error = {e: {v: [0, 0] for v in VERIFIERS} for e in ERRORS}
    for ex in examples:
        gold = ex.meta["steps"]
        traces = [(list(gold), None)]
        for e in ERRORS:
            got = perturb(ex, e, rng)
            if got is not None:
                traces.append((got[0], e))
        for lines, err in traces:
            labels = gold_labels(lines, gold)
            for v in VERIFIERS:
                pred = predicted_labels("\n".join(lines), ex, v == "tool")
                agree = sum(p == g for p, g in zip(pred, labels))
                counts[v]["steps"] += len(labels)
                counts[v]["agree"] += agree
                if err is not None:
                    counts[v]["bad_solutions"] += 1
                    first = labels.index(False)
                    found = pred[first] is False and all(pred[:first])
                    counts[v]["first_error_found"] += int(found)
                    per_error[err][v][0] += int(found)
                    per_error[err][v][1] += 1
    return {v: {"step_label_accuracy": c["agree"] / max(c["steps"], 1),
                "first_error_recall": c["first_error_found"] / max(c["bad_solutions"], 1),
                "steps": c["steps"], "per_error_first_error_recall": {
                    e: per_error[e][v][0] / max(per_error[e][v][1], 1) for e in ERRORS}}
            for v, c in counts.items()}


def candidates(example: Any, n: int, p_gold: float, rng: random.Random) -> list[str]:
    """n candidate solutions: the gold one with probability p_gold, else a perturbation of a random error type."""
    out = []
    for _ in range(n):
        text = None
        if rng.random() >= p_gold:
            for _try in range(8):
                got = perturb(example, rng.choice(ERRORS), rng)
                if got is not None:
                    text = "\n".join(got[0])
                    break
        out.append(text if text is not None else "\n".join(example.meta["steps"]))
    return out


def best_of_n_accuracy(task: Any, examples: list[Any], ns: list[int], p_gold: float, seed: int) -> dict[str, Any]:
    """Accuracy of the pick (argmax of the solution score, first on ties) per verifier and N, plus the first
    candidate (best-of-1, unguided) and the oracle (any candidate correct) on the same candidate sets."""
    from entropo.search.strategies import argmax_first

    big = max(ns)
    out = {n: {"first": 0, "oracle": 0, "tool": 0, "no_tool": 0} for n in ns}
    for i, ex in enumerate(examples):
        cands = candidates(ex, big, p_gold, random.Random(seed * 100_003 + i))
        ok = [task.correct(c, ex) for c in cands]
        scores = {v: [solution_score(c, ex, v == "tool") for c in cands] for v in VERIFIERS}
        for n in ns:
            out[n]["first"] += ok[0]
            out[n]["oracle"] += any(ok[:n])
            for v in VERIFIERS:
                out[n][v] += ok[argmax_first(scores[v][:n])]
    return {n: {k: c / len(examples) for k, c in row.items()} for n, row in out.items()}


def run_tattoo(seed: int, n_eval: int = 200, ns: tuple[int, ...] = (1, 2, 4, 8), p_gold: float = 0.25,
               kinds: str = "all") -> dict[str, Any]:
    from entropo import registry

    task = registry.get("task", "table_qa")(seed=seed, eval_size=n_eval, kinds=kinds)
    held = task.eval_examples()
    return {"labels": label_accuracy(held, seed),
            "best_of_n": best_of_n_accuracy(task, held, sorted(set(int(n) for n in ns)), p_gold, seed),
            "n_eval": n_eval, "p_gold": p_gold}


@register("program", "tattoo", paper=PAPER)
def tattoo_program(out_dir, seed: int, console, n_eval: int = 200, ns: list = (1, 2, 4, 8), p_gold: float = 0.25,
                   kinds: str = "all") -> dict[str, Any]:
    """``entropo run tattoo``: tool vs no-tool step verification on held-out ``table_qa`` tables — step-label
    accuracy on perturbed gold solutions and best-of-N accuracy (logged per N to metrics.jsonl)."""
    from entropo.logging import MetricsLogger

    if not 0.0 <= p_gold <= 1.0:
        raise ValueError(f"tattoo: p_gold must be in [0, 1], got {p_gold}")
    if n_eval < 1 or not ns or min(int(n) for n in ns) < 1:
        raise ValueError(f"tattoo: n_eval and every N in ns must be >= 1, got {n_eval}, {ns}")
    res = run_tattoo(seed, n_eval, tuple(ns), p_gold, kinds)
    logger = MetricsLogger(out_dir, tensorboard=False)
    for n, row in res["best_of_n"].items():
        logger.log(n, {f"bon/{k}": v for k, v in row.items()})
    for v in VERIFIERS:
        lab = res["labels"][v]
        console(f"{v}: step-label accuracy {lab['step_label_accuracy']:.3f}, first-error recall "
                f"{lab['first_error_recall']:.3f} ({lab['steps']} steps)")
    for n, row in res["best_of_n"].items():
        console(f"best-of-{n}: " + ", ".join(f"{k} {x:.3f}" for k, x in row.items()))
    Path(out_dir, "tattoo.json").write_text(json.dumps(res, indent=1))
    flat = {f"{v}/step_label_accuracy": res["labels"][v]["step_label_accuracy"] for v in VERIFIERS}
    big = max(res["best_of_n"])
    flat.update({f"best_of_{big}/{k}": x for k, x in res["best_of_n"][big].items()})
    return {**flat, **res}
