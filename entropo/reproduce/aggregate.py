"""Seed aggregation of metrics.jsonl rows: per-step curves as mean ± spread across seeds, and window statistics.

The spread is the sample standard deviation across seeds (ddof = 1; 0 for a single seed). Curves are aligned on the
steps every seed logged. A run's last row (``final: true``) holds only the end-of-run evaluation: it belongs to
``eval/*`` series and to nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Rows = list[dict[str, Any]]


def train_rows(rows: Rows) -> Rows:
    """The per-step rows (without the end-of-run evaluation row)."""
    return [r for r in rows if not r.get("final")]


def final_row(rows: Rows) -> dict[str, Any]:
    """The end-of-run evaluation row ({} if the run did not finish)."""
    finals = [r for r in rows if r.get("final")]
    return finals[-1] if finals else {}


def series(rows: Rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key``; eval keys include the final row (plotted at the last step)."""
    pts = [(r["step"], float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and (key.startswith("eval/") or not r.get("final"))]
    if not pts:
        return np.array([], dtype=int), np.array([], dtype=float)
    steps, values = zip(*pts)
    return np.asarray(steps, dtype=int), np.asarray(values, dtype=float)


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start); window <= 1 returns a copy."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values.copy()
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def spread(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sample standard deviation across seeds (ddof=1), 0 when there is one seed."""
    values = np.asarray(values, dtype=float)
    if values.shape[axis] < 2:
        return np.zeros(np.delete(values.shape, axis))
    return values.std(axis=axis, ddof=1)


@dataclass
class Curve:
    """One metric of one arm across seeds, aligned on common steps."""

    steps: np.ndarray  # [T]
    per_seed: np.ndarray  # [S, T]

    @property
    def mean(self) -> np.ndarray:
        return self.per_seed.mean(axis=0)

    @property
    def spread(self) -> np.ndarray:
        return spread(self.per_seed, axis=0)


def aggregate_curve(runs: list[Rows], key: str, smooth: int = 1) -> Curve | None:
    """Mean ± spread of ``key`` across runs (seeds) on the steps all of them logged; None if a run lacks it."""
    per_run = []
    for rows in runs:
        steps, values = series(rows, key)
        if len(steps) == 0:
            return None
        per_run.append(dict(zip(steps.tolist(), trailing_mean(values, smooth).tolist())))
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    if not common:
        return None
    return Curve(steps=np.asarray(common), per_seed=np.array([[d[s] for s in common] for d in per_run]))


def window_mean(rows: Rows, key: str, start: float, end: float) -> float:
    """Mean of ``key`` over the training steps whose position lies in [start, end) of the run (fractions 0..1).

    The window always holds at least one step."""
    _, values = series(train_rows(rows), key)
    n = len(values)
    if n == 0:
        return float("nan")
    lo = min(int(np.floor(start * n)), n - 1)
    hi = max(int(np.ceil(end * n)), lo + 1)
    return float(values[lo:hi].mean())


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of per-seed values; the spread is 0 for one seed."""
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
