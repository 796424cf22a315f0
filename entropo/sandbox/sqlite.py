"""SQLiteSandbox: run one model-written, read-only SQL query against a SQLite database file."""

from __future__ import annotations

import sys
from pathlib import Path

from entropo.sandbox._process import run_sandboxed
from entropo.sandbox.base import ExecResult, SandboxLimits

# How long after the in-query time limit (progress handler) the process itself is killed.
KILL_GRACE_S = 0.5


class SQLiteSandbox:
    """``SQLiteSandbox(database, limits, max_rows=100, max_cell_chars=200).run(sql) -> ExecResult``.

    Each query runs in a sandbox process like :class:`~entropo.sandbox.PythonSandbox` code does (same rlimits,
    network namespace, privilege drop, wall-clock kill), with a fixed, trusted program in place of Python code:

    * the database is opened read-only: ``file:<path>?mode=ro`` URI;
    * an authorizer allows only reading (``SELECT``, column reads, function calls, recursive CTEs); writes
      (INSERT/UPDATE/DELETE), DDL (CREATE/DROP/ALTER), ATTACH/DETACH, PRAGMA, transactions and the functions
      ``load_extension``, ``readfile``, ``writefile``, ``edit``, ``fts3_tokenizer`` are refused with a message that
      names what was refused; ``SQLITE_LIMIT_ATTACHED`` is 0;
    * one statement per call (a second one is refused before anything runs);
    * a progress handler aborts the query once ``limits.timeout_s`` has passed (the process is killed
      ``KILL_GRACE_S`` later if it is stuck outside the SQLite VM); ``RLIMIT_AS`` bounds its memory and
      ``SQLITE_LIMIT_LENGTH`` the size of one string or blob;
    * ``stdout`` is a text table: a header row, then up to ``max_rows`` rows (``|``-separated; cells longer than
      ``max_cell_chars`` cut with "…", NULL shown as ``NULL``, blobs as ``<blob N bytes>``), then ``(N rows)`` or
      "… truncated: showing the first N rows". It is also capped at ``limits.output_bytes``.
      With ``output="json"`` stdout is instead one JSON object ``{"columns": [...], "rows": [[...]], "truncated":
      bool}`` with typed cells (NULL as null, numbers as numbers, blobs as ``"<blob N bytes>"``), for programs that
      compare result sets (e.g. an execution-accuracy verifier) rather than for the model.

    Errors come back as not-ok results whose ``error`` is SQLite's message (e.g. "no such table: foo"). A database
    in WAL mode needs its ``-shm`` file present (or a writable directory) to be opened read-only.
    """

    def __init__(self, database: str | Path, limits: SandboxLimits = SandboxLimits(), max_rows: int = 100,
                 max_cell_chars: int = 200, python: str = sys.executable, output: str = "table") -> None:
        path = Path(database).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"SQLiteSandbox: no database file at {path}")
        if max_rows < 1 or max_cell_chars < 2:
            raise ValueError("SQLiteSandbox: max_rows must be >= 1 and max_cell_chars >= 2")
        if output not in ("table", "json"):
            raise ValueError(f"SQLiteSandbox: output must be 'table' or 'json', got {output!r}")
        self.output = output
        self.database = path
        self.limits = limits
        self.max_rows = max_rows
        self.max_cell_chars = max_cell_chars
        self.python = python

    def run(self, sql: str) -> ExecResult:
        config = {
            "mode": "sqlite",
            "uri": self.database.as_uri() + "?mode=ro",
            "time_limit_s": float(self.limits.timeout_s),
            "max_rows": self.max_rows,
            "max_cell_chars": self.max_cell_chars,
            "max_length": min(1_000_000_000, self.limits.memory_mb * 2**20 // 8),
            "output": self.output,
        }
        result = run_sandboxed(self.python, self.limits, config, files={"query.sql": sql},
                               kill_after_s=self.limits.timeout_s + KILL_GRACE_S)
        if result.error and result.error.startswith("Error: "):
            result.error = result.error[len("Error: "):]
        if result.error and result.error.startswith("query aborted: time limit"):
            result.timed_out = True
        return result

    def __repr__(self) -> str:
        return f"SQLiteSandbox({str(self.database)!r}, limits={self.limits!r}, max_rows={self.max_rows})"
