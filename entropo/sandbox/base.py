"""Types shared by the sandbox executors: :class:`SandboxLimits`, :class:`ExecResult` (with the model-facing
:meth:`ExecResult.observation`) and :func:`run_many`, a bounded concurrent pool for running many sandboxed calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed call.

    ``timeout_s`` is wall clock: the whole process group (and every process of the sandbox's uid, when it runs
    under one) is killed when it runs out. ``cpu_s`` is ``RLIMIT_CPU`` (SIGXCPU at ``cpu_s``, SIGKILL one second
    later). ``memory_mb`` is ``RLIMIT_AS`` (address space, so a large allocation fails with ``MemoryError`` instead
    of being OOM-killed; libraries that reserve large virtual ranges need more than the default: ``import torch``
    needs a few GB). ``file_size_mb`` is ``RLIMIT_FSIZE``. ``max_processes`` is ``RLIMIT_NPROC`` — Linux does
    not apply it to root, so as root it takes effect only under the privilege drop (see :mod:`entropo.sandbox`).
    ``output_bytes`` caps stdout and stderr each. ``network=True`` turns the network isolation off."""

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    file_size_mb: int = 16
    max_processes: int = 32
    output_bytes: int = 8192
    network: bool = False

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"SandboxLimits.timeout_s must be positive, got {self.timeout_s}")
        for name in ("cpu_s", "memory_mb", "file_size_mb", "max_processes", "output_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SandboxLimits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ExecResult:
    """What one sandboxed call did.

    ``ok``: ran to completion with exit code 0 (SQL: the query succeeded). ``exit_code``: the process's return code
    as :mod:`subprocess` reports it (negative: killed by that signal), None when no process ran. ``error``: a short
    reason when not ok — "timeout after 5.0 s", "memory limit (512 MB): MemoryError", "output truncated: ...",
    "killed by signal 9 (SIGKILL)", the last line of a Python traceback or the SQLite error. ``truncated``: stdout or
    stderr exceeded ``SandboxLimits.output_bytes`` (the kept text has a "[... truncated ...]" marker)."""

    ok: bool
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    error: str | None
    duration_s: float
    truncated: bool

    def observation(self, max_chars: int = 2000) -> str:
        """The text to show the model, at most ``max_chars`` characters.

        On success: stdout ("(no output)" when empty). Otherwise: whatever stdout there was, then the end of stderr
        (a traceback's last lines, the exception last), then ``[error: ...]`` unless stderr already ends with it.
        When too long, stdout keeps its beginning and stderr its end, so the exception line is always shown."""
        max_chars = max(int(max_chars), 40)
        if self.ok:
            text = self.stdout if self.stdout else "(no output)"
            return _head(text, max_chars)
        err = self.stderr.rstrip()
        note = ""
        if self.error and not err.endswith(self.error):
            note = f"[error: {self.error}]"
        note = _tail(note, max_chars // 2) if note else ""
        budget = max_chars - len(note) - (1 if note else 0)
        out = self.stdout.rstrip("\n")
        if out and err:
            err_part = _tail(err, max(budget - min(len(out), budget // 2) - 1, 0))
            out_part = _head(out, max(budget - len(err_part) - 1, 0))
            parts = [out_part, err_part]
        else:
            parts = [_head(out, budget) if out else _tail(err, budget)]
        parts.append(note)
        return "\n".join(p for p in parts if p)


def _head(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    return text[: max(n - 1, 0)] + "…" if n > 0 else ""


def _tail(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    return "…" + text[len(text) - max(n - 1, 0):] if n > 0 else ""


def run_many(fn: Callable[[T], R], items: Sequence[T], max_workers: int = 4) -> list[R]:
    """``[fn(item) for item in items]`` on a pool of ``max_workers`` threads; the results keep the order of
    ``items``.

    Threads suffice because the work happens in sandbox processes (``PythonSandbox.run`` / ``SQLiteSandbox.run``
    are thread-safe, spend their time waiting on a child and never raise). ``fn`` is expected to handle its own
    errors the same way: if one call raises anyway, all calls still run to the end, then the exception of the first
    failing item (in ``items`` order) is re-raised."""
    if max_workers < 1:
        raise ValueError(f"run_many: max_workers must be >= 1, got {max_workers}")
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="entropo-sandbox") as pool:
        futures = [pool.submit(fn, item) for item in items]
    return [f.result() for f in futures]  # all done (the pool's exit waited); raises the first failure in order
