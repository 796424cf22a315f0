"""``dataset``: a local jsonl / json / parquet / csv file loaded through Hugging Face ``datasets``
(``load_dataset("json"|"parquet"|"csv", data_files=path, split="train")``).

Columns: ``prompt_column`` (a string, or a list of chat messages used as is), ``answer_column`` (ground truth, turned
into a string), optional ``target_column`` (gold completion for SFT warm-up; defaults to the answer). A missing
column raises one ``ValueError`` naming the column, the file, the columns that exist and the parameter to set.

Split: a permutation of the rows seeded by ``seed`` (``stable_seed(seed, "dataset-split")``); its first ``n_eval``
rows are the held-out eval split, the rest the train split. ``n_eval = min(eval_size, ceil(eval_fraction · N))``
(``eval_fraction=None`` → ``eval_size`` rows), and at least one row always stays in train.

Verifier (``verifier``): ``math`` — math-verify equivalence of the completion and the answer (LaTeX, ``\\boxed{}``,
plain numbers; timeouts are owned by the RewardRunner); ``exact`` — normalized exact match (strip, lowercase, no
trailing period) of the ``<answer>`` tag if present, else the last line; ``last_number`` — the last number in the
completion equals the answer numerically.
"""

from __future__ import annotations

import logging
import math
import os
import random

from entropo.registry import register
from entropo.tasks.base import VERIFIERS, make_prompt, stable_seed, strict_params, verify_answer
from entropo.types import Example

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def _load_rows(path: str, fmt: str | None, cache_dir: str | None):
    from datasets import load_dataset

    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in FORMATS:
            raise ValueError(
                f"dataset: cannot tell the format of {path!r} from its extension {ext!r}; "
                f"set task.params.format to one of: json, parquet, csv"
            )
        fmt = FORMATS[ext]
    if fmt not in ("json", "parquet", "csv"):
        raise ValueError(f"dataset: format must be json, parquet or csv, got {fmt!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset: file not found: {path!r} (set task.params.path)")
    if os.path.getsize(path) == 0 or (fmt in ("json", "csv") and not _has_text(path)):
        raise ValueError(f"dataset: {path!r} is empty (0 rows); set task.params.path to a file with at least 2 rows")
    hf_log = logging.getLogger("datasets")
    level = hf_log.level
    hf_log.setLevel(logging.CRITICAL)  # a bad file is reported once, below, naming the line
    try:
        return load_dataset(fmt, data_files=path, split="train", cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - HF reports "An error occurred while generating the dataset"
        where = _first_bad_json_line(path) if fmt == "json" else None
        if where is not None:
            raise ValueError(f"dataset: {path!r}, {where}; fix or delete that line") from e
        cause = e
        while cause.__cause__ is not None:  # the root cause, not the wrapper
            cause = cause.__cause__
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ValueError(f"dataset: cannot read {path!r} as {fmt}: {type(cause).__name__}: {text[:300]}") from e
    finally:
        hf_log.setLevel(level)


def _has_text(path: str) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return True
    return False


def _first_bad_json_line(path: str) -> str | None:
    """'line N: not valid JSON (...)' for the first line of a JSON-lines file that does not parse as a JSON object,
    or None (a whole-file JSON document, or no bad line found)."""
    import json

    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
    if head[:1] == b"[":  # one JSON document: report its first error
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"line {getattr(e, 'lineno', '?')}: not valid JSON ({getattr(e, 'msg', e)})"
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                return f"line {n}: not valid JSON ({e.msg} at column {e.colno})"
            if not isinstance(value, dict):
                return f"line {n}: expected a JSON object ({{\"prompt\": ..., \"answer\": ...}}), got {type(value).__name__}"
    return None


def row_location(path: str, row: int) -> str:
    """Where a row is in its file, for messages: 'line N' of a .jsonl file (1-based), else 'row N' (0-based)."""
    return f"line {row + 1}" if path.endswith(".jsonl") else f"row {row}"


class DatasetTask:
    """Rows of a local file with a configurable verifier. Build it with the registered factory ``dataset``."""

    def __init__(self, rows, path: str, seed: int, n_eval: int, prompt_column: str, answer_column: str,
                 target_column: str | None, chat: bool, system_prompt: str | None, verifier: str):
        self.name = f"dataset/{os.path.basename(path)}"
        self.path = path
        self.verifier = verifier
        self.chat = chat
        self.system_prompt = system_prompt
        self.prompt_column, self.answer_column, self.target_column = prompt_column, answer_column, target_column
        self._rows = rows
        order = list(range(len(rows)))
        random.Random(stable_seed(seed, "dataset-split")).shuffle(order)
        self._eval_idx = order[:n_eval]
        self._train_idx = order[n_eval:]
        self._eval = [self._example(r, "eval") for r in self._eval_idx]

    def _example(self, row_index: int, split: str) -> Example:
        row = self._rows[row_index]
        raw_prompt = row[self.prompt_column]
        if isinstance(raw_prompt, list):  # already chat messages
            prompt = [dict(m) for m in raw_prompt]
            if self.system_prompt and not any(m.get("role") == "system" for m in prompt):
                prompt = [{"role": "system", "content": self.system_prompt}] + prompt
            if not self.chat:
                prompt = "\n\n".join(str(m.get("content", "")) for m in prompt)
        else:
            prompt = make_prompt(str(raw_prompt), self.chat, self.system_prompt)
        ans = row[self.answer_column]
        answer = None if ans is None else str(ans)
        target = answer
        if self.target_column is not None:
            t = row[self.target_column]
            target = None if t is None else str(t)
        return Example(
            prompt=prompt,
            answer=answer,
            target=target,
            meta={"task": self.name, "row": row_index, "split": split, "difficulty": row.get("difficulty")},
        )

    def train_size(self) -> int:
        return len(self._train_idx)

    def train_example(self, i: int) -> Example:
        return self._example(self._train_idx[i], "train")

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, completion: str, example: Example) -> bool:
        if example.answer is None:
            return False
        return verify_answer(completion, example.answer, self.verifier)


@register("task", "dataset", description="local jsonl/parquet/csv file via HF datasets, seeded train/eval split")
@strict_params("dataset")
def dataset(
    seed: int,
    eval_size: int = 64,
    *,
    path: str | None = None,
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    target_column: str | None = None,
    eval_fraction: float | None = 0.1,
    chat: bool = True,
    system_prompt: str | None = None,
    verifier: str = "math",
    format: str | None = None,
    cache_dir: str | None = None,
) -> DatasetTask:
    """Local-file task factory: ``path``, ``prompt_column``, ``answer_column``, ``target_column``,
    ``eval_fraction`` (eval rows = min(eval_size, ceil(fraction·N)); None → eval_size), ``chat``, ``system_prompt``,
    ``verifier`` (math | exact | last_number), ``format`` (json | parquet | csv; default from the extension),
    ``cache_dir`` (HF datasets cache)."""
    if not path:
        raise ValueError("dataset: set task.params.path to a .jsonl, .json, .parquet or .csv file")
    if verifier not in VERIFIERS:
        raise ValueError(f"dataset: verifier must be one of {', '.join(VERIFIERS)}, got {verifier!r}")
    path = os.path.expanduser(str(path))
    rows = _load_rows(path, format, cache_dir)
    cols = list(rows.column_names)
    for param, col in (("prompt_column", prompt_column), ("answer_column", answer_column), ("target_column", target_column)):
        if col is not None and col not in cols:
            raise ValueError(
                f"dataset: column {col!r} not found in {path!r}; the file has columns: {', '.join(cols)}. "
                f"Set task.params.{param} to one of them."
            )
    n = len(rows)
    missing = next((i for i, v in enumerate(rows[prompt_column]) if v is None or v == "" or v == []), None)
    if missing is not None:
        raise ValueError(f"dataset: {path!r}, {row_location(path, missing)}: field {prompt_column!r} is empty or "
                         f"missing; fill it in or delete that row")
    if n < 2:
        raise ValueError(f"dataset: {path!r} has {n} row(s); need at least 2 (one train, one eval)")
    if eval_fraction is None:
        n_eval = eval_size
    else:
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"dataset: eval_fraction must be in [0, 1), got {eval_fraction!r}")
        n_eval = min(eval_size, math.ceil(eval_fraction * n))
    n_eval = max(0, min(n_eval, n - 1))
    return DatasetTask(rows, path, seed, n_eval, prompt_column, answer_column, target_column, chat, system_prompt,
                       verifier)
