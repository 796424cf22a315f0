"""Offline preference data: the task ``preferences`` (prompt/chosen/rejected rows from a local jsonl or parquet file,
or a seeded built-in arithmetic set) and (in ``entropo.rollout.replay``) the engine ``preference_replay`` that plays each prompt's chosen and
rejected responses as its two "samples" (teacher-forced, no sampling), so offline DPO (Direct Preference
Optimization, arXiv 2305.18290) runs through the same loop as online DPO: replay -> verdict (chosen is correct) ->
``preference_pairs`` -> pairwise objective.

Rows: ``prompt`` (text, or chat messages), ``chosen``, ``rejected`` (column names are parameters). The split is a
seeded permutation: its first ``n_eval = min(eval_size, ceil(eval_fraction * N))`` rows are the held-out split (never
replayed in training). The task's verifier (used by evaluation, which samples from the policy) is a normalised exact
match with the chosen response. ``write_arithmetic_preferences(path)`` writes the built-in set as a jsonl file.
"""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any

from entropo.registry import register
from entropo.tasks.base import make_prompt, normalize_answer, stable_seed, strict_params
from entropo.types import Example

COLUMNS = ("prompt", "chosen", "rejected")


def arithmetic_preferences(n: int = 600, seed: int = 0) -> list[dict[str, str]]:
    """Seeded prompt/chosen/rejected rows on 3-term 1-digit arithmetic (the tiny model's task: prompt ``"3 + 4 - 1="``):
    chosen is the correct result, rejected the result off by a nonzero offset in [-3, 3]. Deterministic in (n, seed)."""
    rng = random.Random(stable_seed(seed, "arithmetic-preferences"))
    rows, seen = [], set()
    while len(rows) < n:
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        o1, o2 = rng.choice("+-"), rng.choice("+-")
        expr = f"{a} {o1} {b} {o2} {c}"
        if expr in seen:
            if len(seen) >= 2000:  # the space has 4000 problems; allow repeats past half of it
                seen.clear()
            continue
        seen.add(expr)
        value = a + (b if o1 == "+" else -b)
        value += c if o2 == "+" else -c
        wrong = value + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"{expr}=", "chosen": str(value), "rejected": str(wrong)})
    return rows


def write_arithmetic_preferences(path: str, n: int = 600, seed: int = 0) -> str:
    """Write ``arithmetic_preferences(n, seed)`` as jsonl (one ``{"prompt", "chosen", "rejected"}`` object a line)."""
    with open(path, "w") as f:
        for row in arithmetic_preferences(n, seed):
            f.write(json.dumps(row) + "\n")
    return path


def load_preference_rows(path: str, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local .jsonl/.json (json lines) or .parquet file; a bad line is one ValueError naming it."""
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"preferences: file not found: {path!r} (set task.params.path)")
    ext = os.path.splitext(path)[1].lower()
    fmt = fmt or {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}.get(ext)
    if fmt == "parquet":
        from entropo.tasks.dataset import _load_rows

        return [dict(r) for r in _load_rows(path, "parquet", None)]
    if fmt != "json":
        raise ValueError(f"preferences: cannot read {path!r}; use a .jsonl or .parquet file (or set "
                         f"task.params.format to json or parquet)")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"preferences: {path!r}, line {i + 1} is not valid JSON ({e.msg}); fix or delete "
                                 f"that line") from None
            if not isinstance(row, dict):
                raise ValueError(f"preferences: {path!r}, line {i + 1} is not a JSON object")
            rows.append(row)
    return rows


ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def token_id_columns(row: dict[str, Any], index: int) -> dict[str, list[int]]:
    """The row's token-id columns (``prompt_ids``/``chosen_ids``/``rejected_ids``, e.g. written by MCTS-DPO's
    ``write_pairs_jsonl``): all three as int lists, or none. The engine ``preference_replay`` then trains on these
    ids as they are (no re-encoding of the text)."""
    present = [c for c in ID_COLUMNS if row.get(c) is not None]
    if not present:
        return {}
    if len(present) != len(ID_COLUMNS):
        raise ValueError(f"preferences: row {index} has {present} but not all of {list(ID_COLUMNS)}; give all three "
                         f"token-id columns or none")
    out = {}
    for c in ID_COLUMNS:
        ids = row[c]
        if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ValueError(f"preferences: row {index}, column {c!r} must be a list of non-negative token ids")
        out[c] = [int(t) for t in ids]
    return out


class PreferenceTask:
    """Prompt/chosen/rejected rows with a seeded held-out split. Build it with the registered factory."""

    def __init__(self, rows: list[dict[str, Any]], name: str, seed: int, n_eval: int, columns: tuple[str, str, str],
                 chat: bool, system_prompt: str | None):
        self.name = name
        self.columns, self.chat, self.system_prompt = columns, chat, system_prompt
        self._rows = rows
        order = list(range(len(rows)))
        random.Random(stable_seed(seed, "preferences-split")).shuffle(order)
        self._eval_idx, self._train_idx = order[:n_eval], order[n_eval:]
        self._eval = [self._example(r, "eval") for r in self._eval_idx]

    def _example(self, r: int, split: str) -> Example:
        p_col, c_col, r_col = self.columns
        row = self._rows[r]
        raw = row[p_col]
        prompt = [dict(m) for m in raw] if isinstance(raw, list) else make_prompt(str(raw), self.chat,
                                                                                   self.system_prompt)
        chosen, rejected = str(row[c_col]), str(row[r_col])
        meta = {"task": self.name, "row": r, "split": split, "chosen": chosen, "rejected": rejected}
        meta.update(token_id_columns(row, r))
        if row.get("label_smoothing") is not None:  # a per-pair DPO smoothing (MCTS-DPO's visit-count confidence)
            eps = float(row["label_smoothing"])
            if not 0.0 <= eps <= 0.5:
                raise ValueError(f"preferences: row {r}, label_smoothing must be in [0, 0.5], got {eps}")
            meta["label_smoothing"] = eps
        return Example(prompt=prompt, answer=chosen, target=chosen, meta=meta)

    def train_size(self) -> int:
        return len(self._train_idx)

    def train_example(self, i: int) -> Example:
        return self._example(self._train_idx[i], "train")

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, completion: str, example: Example) -> bool:
        """Normalised exact match with the chosen response (what evaluation of sampled responses reports)."""
        return normalize_answer(completion) == normalize_answer(example.meta["chosen"])


@register("task", "preferences", description="prompt/chosen/rejected jsonl/parquet (or seeded arithmetic prefs), "
          "seeded held-out split; replayed by engine preference_replay")
@strict_params("preferences")
def preferences(seed: int, eval_size: int = 64, *, path: str | None = None, prompt_column: str = "prompt",
                chosen_column: str = "chosen", rejected_column: str = "rejected", eval_fraction: float = 0.1,
                chat: bool = False, system_prompt: str | None = None, format: str | None = None,
                builtin_size: int = 600) -> PreferenceTask:
    """``path`` to a .jsonl/.parquet file with the three columns (None: the built-in seeded arithmetic preferences
    of ``builtin_size`` rows, ``arithmetic_preferences``); ``eval_fraction``: held-out rows = min(eval_size,
    ceil(fraction N)), at least one row stays in train."""
    columns = (prompt_column, chosen_column, rejected_column)
    if path is None:
        rows, name = arithmetic_preferences(builtin_size, 0), "preferences/arithmetic"
    else:
        rows, name = load_preference_rows(path, format), f"preferences/{os.path.basename(str(path))}"
    if len(rows) < 2:
        raise ValueError(f"preferences: {path!r} has {len(rows)} rows; at least 2 are needed")
    for param, col in zip(("prompt_column", "chosen_column", "rejected_column"), columns):
        bad = next((i for i, r in enumerate(rows) if r.get(col) in (None, "", [])), None)
        if bad is not None:
            have = ", ".join(sorted(rows[bad].keys()))
            raise ValueError(f"preferences: row {bad} of {path!r} has no value in column {col!r} (its columns: "
                             f"{have}); set task.params.{param} to the right column or fix the row")
    n_eval = max(0, min(eval_size, math.ceil(eval_fraction * len(rows)), len(rows) - 1))
    return PreferenceTask(rows, name, seed, n_eval, columns, chat, system_prompt)
