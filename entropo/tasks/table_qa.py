"""``table_qa``: questions over small generated tables, solved one step per line in a tiny explicit syntax.

Each example is a seeded table (4–8 rows; columns ``item, category, price, quantity``) and a question that needs
2–3 steps (filter, aggregate, compare). The prompt is the table as comma-separated lines, then ``Q: <question>``;
the gold completion works it one step per line, each step ``<expression>=<integer>``::

    sum(quantity where category=fruit)=9
    sum(quantity where category=veg)=4
    9-4=5

Step expressions (the *table tool* below evaluates them; it is a small parser and interpreter, never ``eval``):

- table operations ``sum(COL where COND)``, ``max(COL where COND)``, ``min(COL where COND)``,
  ``lookup(COL where COND)`` (exactly one row must match), ``count(where COND)``; ``COND`` is ``COL=VALUE``,
  ``COL>NUMBER`` or ``COL<NUMBER``, joined by `` and ``;
- arithmetic on integers ``A+B``, ``A-B``, ``A*B``, ``A//B`` (floor division), ``max(A,B)``, ``min(A,B)``.

Malformed steps raise ``ToolError`` with the reason (a verifier reports them as "cannot check"). The verifier of the
task is on the final answer: the last integer of the completion equals the answer. ``Example.meta`` holds the table
(``rows``), the ``question`` text and the gold ``steps`` so that a step verifier (``entropo.search.tattoo``) can
recompute each step. Built for TaTToo ("Tool-Grounded Thinking PRM for Test-Time Scaling in Tabular Reasoning",
arXiv 2510.06217), reduced to generated tables and a table-expression interpreter as the tool.
"""

from __future__ import annotations

import random
import re
from typing import Any

from entropo.registry import register
from entropo.tasks.base import make_prompt, stable_seed, strict_params
from entropo.types import Example

COLUMNS = ("item", "category", "price", "quantity")
NUMERIC = ("price", "quantity")
ITEMS = {
    "fruit": ("apple", "pear", "plum", "fig", "lime", "kiwi"),
    "veg": ("kale", "leek", "corn", "bean", "okra"),
    "bread": ("bun", "roll", "bagel", "loaf"),
    "dairy": ("milk", "brie", "feta", "curd"),
}
KINDS = ("diff", "cost", "larger", "mean", "spread", "count")


class ToolError(ValueError):
    """A step the table tool cannot check (malformed, unknown column, no matching row, ...)."""


# ---- the table tool -------------------------------------------------------------------------------------------------

_TABLE_OP = re.compile(r"^(sum|max|min|lookup)\(\s*([a-z]+)\s+where\s+(.+)\)$")
_COUNT_OP = re.compile(r"^count\(\s*where\s+(.+)\)$")
_PAIR_OP = re.compile(r"^(max|min)\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)$")
_BIN_OP = re.compile(r"^(-?\d+)\s*(\+|-|\*|//)\s*(-?\d+)$")
_COND = re.compile(r"^([a-z]+)\s*(=|>|<)\s*([a-z0-9]+)$")
_INT = re.compile(r"^-?\d+$")


def parse_step(line: str) -> dict[str, Any]:
    """``"<expr>=<int>"`` → ``{"kind": "table"|"arith", "op", "col", "conds", "args", "claimed", "text"}``.
    Raises ``ToolError`` naming what is wrong."""
    text = line.strip()
    if "=" not in text:
        raise ToolError(f"step {text!r} has no '=<value>'")
    lhs, rhs = (s.strip() for s in text.rsplit("=", 1))
    if not _INT.match(rhs):
        raise ToolError(f"step {text!r}: the claimed value {rhs!r} is not an integer")
    claimed = int(rhs)
    m = _TABLE_OP.match(lhs)
    if m:
        return {"kind": "table", "op": m.group(1), "col": m.group(2), "conds": _parse_conds(m.group(3)),
                "claimed": claimed, "text": text}
    m = _COUNT_OP.match(lhs)
    if m:
        return {"kind": "table", "op": "count", "col": None, "conds": _parse_conds(m.group(1)), "claimed": claimed,
                "text": text}
    m = _PAIR_OP.match(lhs)
    if m:
        return {"kind": "arith", "op": m.group(1), "args": (int(m.group(2)), int(m.group(3))), "claimed": claimed,
                "text": text}
    m = _BIN_OP.match(lhs)
    if m:
        return {"kind": "arith", "op": m.group(2), "args": (int(m.group(1)), int(m.group(3))), "claimed": claimed,
                "text": text}
    raise ToolError(f"step {text!r}: {lhs!r} is not a table operation (sum/max/min/lookup(COL where COND), "
                    f"count(where COND)) nor integer arithmetic (A+B, A-B, A*B, A//B, max(A,B), min(A,B))")


def _parse_conds(text: str) -> list[tuple[str, str, str]]:
    conds = []
    for part in text.split(" and "):
        m = _COND.match(part.strip())
        if not m:
            raise ToolError(f"condition {part.strip()!r} is not COL=VALUE, COL>NUMBER or COL<NUMBER")
        conds.append((m.group(1), m.group(2), m.group(3)))
    return conds


def arith(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "//":
        if b == 0:
            raise ToolError("division by zero")
        return a // b
    if op == "max":
        return max(a, b)
    if op == "min":
        return min(a, b)
    raise ToolError(f"unknown operator {op!r}")


def _matches(row: dict[str, Any], conds: list[tuple[str, str, str]]) -> bool:
    for col, op, value in conds:
        if col not in COLUMNS:
            raise ToolError(f"unknown column {col!r}; columns: {', '.join(COLUMNS)}")
        if col in NUMERIC:
            if not _INT.match(value):
                raise ToolError(f"column {col!r} is numeric; {value!r} is not a number")
            x, v = row[col], int(value)
            ok = x == v if op == "=" else (x > v if op == ">" else x < v)
        else:
            if op != "=":
                raise ToolError(f"column {col!r} is text; only '=' applies")
            ok = row[col] == value
        if not ok:
            return False
    return True


def evaluate(step: dict[str, Any] | str, rows: list[dict[str, Any]] | None = None) -> int:
    """The value of a parsed step's expression (a table operation needs ``rows``). Raises ``ToolError``."""
    if isinstance(step, str):
        step = parse_step(step)
    if step["kind"] == "arith":
        return arith(step["op"], *step["args"])
    if rows is None:
        raise ToolError("a table operation needs the table")
    hit = [r for r in rows if _matches(r, step["conds"])]
    if step["op"] == "count":
        return len(hit)
    col = step["col"]
    if col not in NUMERIC:
        raise ToolError(f"{step['op']} needs a numeric column ({', '.join(NUMERIC)}), got {col!r}")
    values = [r[col] for r in hit]
    if step["op"] == "sum":
        return sum(values)
    if not values:
        raise ToolError(f"no row matches {step['text']!r}")
    if step["op"] == "lookup":
        if len(values) != 1:
            raise ToolError(f"lookup matches {len(values)} rows, needs exactly one")
        return values[0]
    return max(values) if step["op"] == "max" else min(values)


# ---- problems -------------------------------------------------------------------------------------------------------

def make_table(rng: random.Random, min_rows: int = 6, max_rows: int = 8) -> list[dict[str, Any]]:
    """3 categories with at least 2 rows each (so every question has a meaningful filter), prices/quantities 1..9."""
    cats = rng.sample(sorted(ITEMS), 3)
    n = rng.randint(min_rows, max_rows)
    counts = [2, 2, 2]
    for _ in range(n - 6):
        counts[rng.randrange(3)] += 1
    rows = []
    for cat, k in zip(cats, counts):
        for item in rng.sample(ITEMS[cat], min(k, len(ITEMS[cat]))):
            rows.append({"item": item, "category": cat, "price": rng.randint(1, 9), "quantity": rng.randint(1, 9)})
    rng.shuffle(rows)
    return rows


def make_question(rng: random.Random, rows: list[dict[str, Any]], kind: str) -> tuple[str, list[str]]:
    """The question text and its gold steps (values computed by the table tool)."""
    cats = list(dict.fromkeys(r["category"] for r in rows))
    a, b = rng.sample(cats, 2)
    item = rng.choice(rows)["item"]
    thr = rng.randint(2, 7)
    if kind == "diff":
        q = f"What is the total quantity of {a} items minus the total quantity of {b} items?"
        ops = [f"sum(quantity where category={a})", f"sum(quantity where category={b})"], "-"
    elif kind == "cost":
        q = f"What is the price of {item} times the quantity of {item}?"
        ops = [f"lookup(price where item={item})", f"lookup(quantity where item={item})"], "*"
    elif kind == "larger":
        q = f"Which is larger, the total price of {a} items or of {b} items? Give the larger total."
        ops = [f"sum(price where category={a})", f"sum(price where category={b})"], "max"
    elif kind == "mean":
        q = f"What is the total price of {a} items divided by the number of {a} items, rounded down?"
        ops = [f"sum(price where category={a})", f"count(where category={a})"], "//"
    elif kind == "spread":
        q = f"What is the highest price of {a} items minus the lowest price of {a} items?"
        ops = [f"max(price where category={a})", f"min(price where category={a})"], "-"
    elif kind == "count":
        q = f"How many {a} items with price above {thr} and {b} items with price above {thr} are there in total?"
        ops = [f"count(where category={a} and price>{thr})", f"count(where category={b} and price>{thr})"], "+"
    else:
        raise ValueError(f"table_qa: unknown question kind {kind!r}; allowed: {', '.join(KINDS)}")
    exprs, op = ops
    steps, values = [], []
    for e in exprs:
        v = evaluate(parse_step(f"{e}=0"), rows)
        values.append(v)
        steps.append(f"{e}={v}")
    steps.append(arith_line(op, values[0], values[1]))
    return q, steps


def arith_line(op: str, x: int, y: int) -> str:
    lhs = f"{op}({x},{y})" if op in ("max", "min") else f"{x}{op}{y}"
    return f"{lhs}={arith(op, x, y)}"


def render_table(rows: list[dict[str, Any]]) -> str:
    return "\n".join([",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in rows])


_LAST_INT = re.compile(r"-?\d+")


class TableQATask:
    """Generated tables with 2–3-step questions (see the module docstring)."""

    name = "table_qa"

    def __init__(self, seed: int, eval_size: int, kinds: tuple[str, ...], min_rows: int, max_rows: int,
                 chat: bool, train_size: int, system_prompt: str | None):
        self.seed, self.eval_size, self.kinds = seed, eval_size, kinds
        self.min_rows, self.max_rows, self.chat = min_rows, max_rows, chat
        self._train_size, self.system_prompt = train_size, system_prompt
        self._eval = [self._example("eval", i, stable_seed(self.seed, "table_qa", "eval", i))
                      for i in range(eval_size)]
        self._held = {self._key(e) for e in self._eval}

    @staticmethod
    def _key(ex: Example) -> str:
        return ex.meta["table_text"] + "|" + ex.meta["question"]

    def _example(self, split: str, index: int, s: int) -> Example:
        rng = random.Random(s)
        rows = make_table(rng, self.min_rows, self.max_rows)
        kind = self.kinds[rng.randrange(len(self.kinds))]
        question, steps = make_question(rng, rows, kind)
        table = render_table(rows)
        answer = steps[-1].rsplit("=", 1)[1]
        return Example(prompt=make_prompt(f"{table}\nQ: {question}", self.chat, self.system_prompt), answer=answer,
                       target="\n".join(steps),
                       meta={"task": "table_qa", "rows": rows, "table_text": table, "question": question,
                             "kind": kind, "steps": steps, "split": split, "index": index})

    def train_size(self) -> int:
        return self._train_size

    def train_example(self, i: int) -> Example:
        for attempt in range(100):  # never a held-out (table, question)
            ex = self._example("train", i, stable_seed(self.seed, "table_qa", "train", i, attempt))
            if self._key(ex) not in self._held:
                return ex
        raise RuntimeError("table_qa: could not draw a training example outside the held-out split")

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, completion: str, example: Example) -> bool:
        found = _LAST_INT.findall(completion or "")
        return bool(found) and found[-1] == str(example.answer)


@register("task", "table_qa", description="questions over small generated tables, one table/arithmetic step per line")
@strict_params("table_qa")
def table_qa(seed: int, eval_size: int = 64, *, kinds: str | list = "all", min_rows: int = 6, max_rows: int = 8,
             chat: bool = False, train_size: int = 100_000, system_prompt: str | None = None) -> TableQATask:
    """``kinds``: "all" or a subset of diff, cost, larger, mean, spread, count; ``min_rows``/``max_rows`` in 6..10
    (3 categories × at least 2 rows); ``chat``; ``train_size``; ``system_prompt``."""
    chosen = KINDS if kinds == "all" else tuple(kinds.split(",") if isinstance(kinds, str) else kinds)
    bad = [k for k in chosen if k not in KINDS]
    if bad or not chosen:
        raise ValueError(f"table_qa: kinds must be 'all' or a subset of {', '.join(KINDS)}, got {kinds!r}")
    if not (isinstance(min_rows, int) and isinstance(max_rows, int) and 6 <= min_rows <= max_rows <= 10):
        raise ValueError(f"table_qa: need 6 <= min_rows <= max_rows <= 10, got {min_rows}, {max_rows}")
    return TableQATask(seed, eval_size, tuple(chosen), min_rows, max_rows, chat, train_size, system_prompt)
