"""Run logging: metrics.jsonl (one flushed line per step), TensorBoard, a rich progress bar, optional W&B/MLflow.

metrics.jsonl is append-only and each line is written with a single ``write`` + fsync, so a crash loses at most the
line being written. On resume, lines after the checkpoint's step are dropped (atomically) before the run continues,
so the file of a resumed run equals the file of an uninterrupted one (except timings).
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from entropo.checkpoint import atomic_write_bytes

# Metrics that depend on the wall clock or the machine, not on the computation; excluded from reproducibility checks.
TIMING_KEYS = ("time/", "tokens_per_s", "peak_mem")


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line from a crash
            continue
    return rows


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb: bool = False, mlflow: bool = False,
                 run_name: str = "run", config: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                warnings.warn("logging.tensorboard=true but tensorboard is not installed: pip install tensorboard")
        self._wandb = None
        if wandb:
            try:
                import wandb as _wandb

                self._wandb = _wandb.init(project="entropo", name=run_name, config=config, dir=str(self.run_dir))
            except ImportError:
                warnings.warn("logging.wandb=true but wandb is not installed: pip install wandb")
        self._mlflow = None
        if mlflow:
            try:
                import mlflow as _mlflow

                _mlflow.start_run(run_name=run_name)
                if config:
                    _mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})
                self._mlflow = _mlflow
            except ImportError:
                warnings.warn("logging.mlflow=true but mlflow is not installed: pip install mlflow")

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they belong to steps a resumed run will redo), and torn lines."""
        if not self.path.exists():
            return
        rows = [r for r in read_metrics(self.run_dir) if r.get("step", -1) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # e.g. disk full: name the file (a bare write error names none)
            if e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            raise
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            self._mlflow.end_run()


class NullLogger:
    """The logger of a process that does not log (ranks other than 0 of a data-parallel run)."""

    def truncate_after(self, step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Progress:
    """A live bar: step, reward, accuracy, entropy, KL, tokens/s. Falls back to plain lines when not a TTY."""

    # (label, metric keys in order of preference, format): KL is to the reference when there is one, else the
    # approximate KL between the policy before and after the update.
    FIELDS = (("reward", ("reward/mean",), "{:.3f}"), ("acc", ("accuracy",), "{:.2f}"),
              ("H", ("entropy/mean",), "{:.3f}"), ("KL", ("kl/ref", "actor/approx_kl_old"), "{:.4f}"),
              ("tok/s", ("tokens_per_s",), "{:.0f}"))

    def __init__(self, total: int, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.total = total
        self._bar = None
        self._plain = enabled and not sys.stderr.isatty()
        if enabled and not self._plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     transient=False)
            self._task = self._bar.add_task("rl", total=total, completed=start, info="")
            self._bar.start()

    def _info(self, m: dict[str, Any]) -> str:
        parts = []
        for label, keys, fmt in self.FIELDS:
            v = next((m[k] for k in keys if isinstance(m.get(k), (int, float))), None)
            if v is not None:
                parts.append(f"{label} {fmt.format(v)}")
        return "  ".join(parts)

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        info = self._info(metrics)
        if self._bar is not None:
            self._bar.update(self._task, completed=step + 1, info=info)
        elif (step + 1) % max(1, self.total // 50) == 0 or step + 1 == self.total:  # ~50 lines per run when piped
            print(f"step {step + 1}/{self.total}  {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
