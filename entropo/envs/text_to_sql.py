"""``text_to_sql``: execution-aware text-to-SQL episodes in the style of ReEx-SQL (registry kind ``environment``).

Paper: ReEx-SQL: Reasoning with Execution-Aware Reinforcement Learning for Text-to-SQL, arXiv 2505.12768. No
official code was found; the tag protocol follows the paper's description:

* the prompt shows the database schema and the question (task ``text_to_sql``, databases of
  ``entropo.envs.sql_data``);
* the policy may write reasoning and an exploratory query ``<intermediate_sql>...</intermediate_sql>``; the turn
  stops at the closing tag, the query runs and the environment answers ``<result>...</result>`` (the SQLite error
  text, or the column names and up to ``result_rows`` rows, plus the row count when there are more);
* a turn with ``<final_sql>...</final_sql>`` ends the episode; the verdict (``StepResult.correct``) is whether the
  final query's result set equals the gold query's (:func:`same_result`: order-insensitive multiset comparison
  unless the gold query has ORDER BY; column names ignored; ``1`` equals ``1.0``; NULL is its own value);
* a turn with neither tag (or an unclosed one) ends the episode as wrong, with ``info["format_error"]``.

Every query (intermediate, final and gold) runs in :class:`entropo.sandbox.SQLiteSandbox`: a separate process,
read-only connection, an authorizer that refuses writes/DDL/ATTACH/PRAGMA, a time limit (``timeout_s``), one
statement per call; queries longer than ``max_sql_chars`` are refused before anything runs, and a query that does not
compile against the schema gets SQLite's error from a compile-only check (``EXPLAIN`` on an empty in-memory copy of
the schema; nothing of the query runs in-process) without paying for a sandbox process. The gold queries are the
package's own and run in-process on a read-only connection. Results of a read-only database are deterministic, so they
are cached per process (:func:`execute`), which makes the group's repeated queries and the SFT demonstrations cheap.

Step info (merged per episode into ``EpisodeInfo.info``): ``sql_calls`` / ``sql_ok`` (intermediate queries run /
succeeded so far, read by the ``reex_sql`` reward's exploration term), ``tool_errors``, and for the tree decoder of
``entropo.rollout.exec_tree``: ``branch`` (``"ok"``, ``"error"``, ``"final"`` or ``"malformed"`` for the last turn)
and ``vote_key`` (a digest of the final query's normalized result set; ``""`` when it failed).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entropo.envs import sql_data
from entropo.envs.base import Environment, Message, StepResult
from entropo.registry import register
from entropo.sandbox import SandboxLimits, SQLiteSandbox
from entropo.types import Example

PAPER = "ReEx-SQL: Reasoning with Execution-Aware Reinforcement Learning for Text-to-SQL, arXiv 2505.12768"


@dataclass
class QueryResult:
    """One executed query: ``ok``, column names, typed rows (at most the executor's ``max_rows``), the error text."""

    ok: bool
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    error: str = ""
    truncated: bool = False
    timed_out: bool = False


_CACHE: dict[tuple, QueryResult] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 50_000
_LOCAL = threading.local()


def _schema_connection(database: Path) -> sqlite3.Connection:
    """A per-thread in-memory database with ``database``'s schema and no rows (for the compile-only pre-check)."""
    conns = getattr(_LOCAL, "conns", None)
    if conns is None:
        conns = _LOCAL.conns = {}
    conn = conns.get(str(database))
    if conn is None:
        src = sqlite3.connect(database.as_uri() + "?mode=ro", uri=True)
        ddl = [row[0] for row in src.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")]
        src.close()
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        for statement in ddl:
            conn.execute(statement)
        if hasattr(conn, "setlimit"):
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        reading = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, 33}  # 33: recursive CTE
        conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in reading else sqlite3.SQLITE_DENY)
        conns[str(database)] = conn
    return conn


def compile_error(database: str | Path, sql: str) -> str | None:
    """SQLite's error for a query that does not compile against ``database``'s schema ("no such column: x",
    'near "FORM": syntax error'), or None when it compiles (or is refused by the authorizer, which the sandbox then
    reports in its own words). Only ``EXPLAIN`` runs, on an empty in-memory copy of the schema: the query itself is
    never executed in this process."""
    conn = _schema_connection(Path(database))
    deadline = time.monotonic() + 1.0
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        conn.execute("EXPLAIN " + sql).fetchall()
    except sqlite3.ProgrammingError:  # e.g. several statements: the sandbox refuses them with its own message
        return None
    except sqlite3.DatabaseError as e:
        message = str(e)
        return None if "not authorized" in message or "interrupted" in message else message
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError):
        return None  # anything else: let the sandbox run it and report
    return None


def execute(database: str | Path, sql: str, timeout_s: float = 2.0, max_rows: int = 1000,
            max_sql_chars: int = 1000, trusted: bool = False, precheck: bool = True) -> QueryResult:
    """Run one query read-only (never raises because of the query).

    Model-written queries (the default) run in the SQLite sandbox (a separate process, read-only, writes/ATTACH/
    PRAGMA refused, time limit); with ``precheck`` a query that does not even compile against the schema gets
    SQLite's error from :func:`compile_error` without starting a sandbox process. ``trusted=True`` is for gold
    queries of the shipped data only: they run in this process on a read-only connection. Refused before running:
    an empty query, one longer than ``max_sql_chars``. Results (and SQL errors) are cached per process by (database,
    query, limits); time-outs are not cached (they depend on the machine's load)."""
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        return QueryResult(False, error="empty query")
    if len(sql) > max_sql_chars:
        return QueryResult(False, error=f"query refused: longer than {max_sql_chars} characters")
    key = (str(database), sql, float(timeout_s), int(max_rows), bool(trusted))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if trusted:
        result = _run_trusted(Path(database), sql, max_rows)
    elif precheck and (error := compile_error(database, sql)) is not None:
        result = QueryResult(False, error=error)
    else:
        result = _run_sandboxed(Path(database), sql, timeout_s, max_rows)
    if not result.timed_out:
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            _CACHE[key] = result
    return result


def _run_trusted(database: Path, sql: str, max_rows: int) -> QueryResult:
    conn = sqlite3.connect(database.as_uri() + "?mode=ro", uri=True)
    try:
        cur = conn.execute(sql)
        rows = cur.fetchmany(max_rows + 1)
        return QueryResult(True, [d[0] for d in cur.description or ()], [tuple(r) for r in rows[:max_rows]],
                           truncated=len(rows) > max_rows)
    except sqlite3.Error as e:
        return QueryResult(False, error=str(e))
    finally:
        conn.close()


def _run_sandboxed(database: Path, sql: str, timeout_s: float, max_rows: int) -> QueryResult:
    sandbox = SQLiteSandbox(database, SandboxLimits(timeout_s=timeout_s, output_bytes=1 << 19), max_rows=max_rows,
                            max_cell_chars=10_000, output="json")
    out = sandbox.run(sql)
    if not out.ok:
        return QueryResult(False, error=(out.error or out.stderr.strip() or "query failed")[:300],
                           timed_out=out.timed_out)
    try:
        data = json.loads(out.stdout)
        return QueryResult(True, list(data["columns"]), [tuple(r) for r in data["rows"]],
                           truncated=bool(data["truncated"]))
    except (ValueError, KeyError, TypeError):  # "(statement executed; no result rows)" or cut output
        return QueryResult(False, error=out.stdout.strip()[:200] or "no result")


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        return round(value, 6) if math.isfinite(value) else value
    return value


def normalized_rows(result: QueryResult) -> list[tuple]:
    return [tuple(_cell(v) for v in row) for row in result.rows]


def same_result(pred: QueryResult, gold: QueryResult, ordered: bool = False) -> bool:
    """Execution match: both ran, same number of columns, and the same rows — as a multiset (duplicates count,
    row order ignored) or, when ``ordered`` (the gold query has ORDER BY), as a sequence. Column names are ignored;
    numbers compare by value (``2`` equals ``2.0``; floats to 6 decimals); NULL equals only NULL. A truncated
    result (more rows than the executor's cap) never matches."""
    if not (pred.ok and gold.ok) or pred.truncated or gold.truncated:
        return False
    if len(pred.columns) != len(gold.columns):
        return False
    a, b = normalized_rows(pred), normalized_rows(gold)
    return a == b if ordered else Counter(a) == Counter(b)


def vote_key(result: QueryResult, ordered: bool = False) -> str:
    """A short digest of a result set, equal for results that :func:`same_result` calls equal ('' if it failed)."""
    if not result.ok or result.truncated:
        return ""
    rows = normalized_rows(result)
    canon = rows if ordered else sorted(rows, key=repr)
    return hashlib.sha1(repr((len(result.columns), ordered, canon)).encode()).hexdigest()[:16]


def render_result(result: QueryResult, rows: int = 3, max_chars: int = 300) -> str:
    """What the model sees: the error text, or the header line and up to ``rows`` rows (``|``-separated), then
    ``(N rows)`` when there are more."""
    if not result.ok:
        return f"Error: {result.error}"[:max_chars]
    lines = [" | ".join(result.columns)]
    lines += [" | ".join("NULL" if v is None else str(_cell(v)) for v in row) for row in result.rows[:rows]]
    if len(result.rows) > rows or result.truncated:
        lines.append(f"({len(result.rows)}{'+' if result.truncated else ''} rows)")
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def tagged(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>...</tag>`` block of ``text`` (stripped), or None."""
    found = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


@register("environment", "text_to_sql", paper=PAPER)
class TextToSQL(Environment):
    """Exploratory ``<intermediate_sql>`` queries executed during decoding, a ``<final_sql>`` judged by execution.

    Params: ``max_turns`` (default 4; ``rollout.max_turns`` overrides), ``timeout_s`` (per query), ``result_rows``
    (rows shown in ``<result>``), ``max_sql_chars`` (longer queries are refused), ``max_rows`` (rows compared; a
    larger result never matches), ``database_dir`` (default ``$ENTROPO_SQL_DIR`` or the user cache, see
    ``entropo.envs.sql_data``), ``intermediate_tag`` / ``final_tag`` / ``result_tag`` (tag names),
    ``demo_explore`` (fraction of SFT demonstrations that run the gold query as an intermediate query first).
    The example must carry ``meta["db_id"]`` and the gold query in ``meta["sql"]`` (task ``text_to_sql`` does)."""

    observation_role = "tool"

    def __init__(self, max_turns: int = 4, timeout_s: float = 2.0, result_rows: int = 3, max_sql_chars: int = 1000,
                 max_rows: int = 1000, database_dir: str | None = None, intermediate_tag: str = "intermediate_sql",
                 final_tag: str = "final_sql", result_tag: str = "result", demo_explore: float = 1.0):
        for name, tag in (("intermediate_tag", intermediate_tag), ("final_tag", final_tag),
                          ("result_tag", result_tag)):
            if not tag or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tag):
                raise ValueError(f"text_to_sql: {name} must be a tag name such as 'final_sql', got {tag!r}")
        if not 0.0 <= float(demo_explore) <= 1.0:
            raise ValueError(f"text_to_sql: demo_explore must be in [0, 1], got {demo_explore}")
        self.max_turns, self.timeout_s, self.result_rows = int(max_turns), float(timeout_s), int(result_rows)
        self.max_sql_chars, self.max_rows, self.database_dir = int(max_sql_chars), int(max_rows), database_dir
        self.itag, self.ftag, self.rtag = intermediate_tag, final_tag, result_tag
        self.demo_explore = float(demo_explore)
        self.stop = (f"</{intermediate_tag}>", f"</{final_tag}>")
        self.calls = self.ok_calls = 0

    # ---- episode ---------------------------------------------------------------------------------------------------
    def reset(self, example: Example, seed: int) -> Any:
        del seed
        meta = example.meta or {}
        if "db_id" not in meta or not (meta.get("sql") or example.answer):
            raise ValueError("text_to_sql: the example needs meta['db_id'] and the gold query (meta['sql'] or "
                             "answer); use task text_to_sql")
        self.example = example
        self.database = sql_data.database_path(meta["db_id"], self.database_dir)
        self.gold_sql = str(meta.get("sql") or example.answer)
        self.calls = self.ok_calls = 0
        return example.prompt

    def run(self, sql: str) -> QueryResult:
        return execute(self.database, sql, self.timeout_s, self.max_rows, self.max_sql_chars)

    def gold(self) -> QueryResult:
        return execute(self.database, self.gold_sql, self.timeout_s, self.max_rows, trusted=True)

    def judge(self, sql: str) -> tuple[bool, QueryResult]:
        """(execution match with the gold query, the predicted query's result)."""
        ordered = sql_data.has_order_by(self.gold_sql)
        pred = self.run(sql)
        return same_result(pred, self.gold(), ordered), pred

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"sql_calls": self.calls, "sql_ok": self.ok_calls, **extra}

    def step(self, action: str) -> StepResult:
        final = tagged(action, self.ftag)
        if final is not None:
            correct, pred = self.judge(final)
            ordered = sql_data.has_order_by(self.gold_sql)
            return StepResult(done=True, correct=correct,
                              info=self._info(branch="final", vote_key=vote_key(pred, ordered),
                                              final_error=pred.error))
        query = tagged(action, self.itag)
        if query is None:
            return StepResult(done=True, correct=False, info=self._info(branch="malformed", vote_key="",
                                                                        format_error=True))
        result = self.run(query)
        self.calls += 1
        self.ok_calls += int(result.ok)
        observation = f"<{self.rtag}>{render_result(result, self.result_rows)}</{self.rtag}>"
        return StepResult(observation=observation, tool_call=True,
                          info=self._info(branch="ok" if result.ok else "error", tool_errors=int(not result.ok)))

    # ---- SFT warm-up -----------------------------------------------------------------------------------------------
    def demonstration(self, example: Example) -> list[Message] | None:
        """A worked episode: (for a ``demo_explore`` share of the questions, chosen by a stable hash of the
        question) run the gold query as an intermediate query and read its result, then answer with it."""
        meta = example.meta or {}
        gold = meta.get("sql") or example.answer
        if gold is None or "db_id" not in meta:
            return None
        self.reset(example, 0)
        messages: list[Message] = []
        draw = sql_data.stable_seed("text_to_sql.demo", meta.get("qid", example.prompt)) % 10_000
        if draw / 10_000 < self.demo_explore:
            observation = f"<{self.rtag}>{render_result(self.gold(), self.result_rows)}</{self.rtag}>"
            messages += [{"role": "assistant", "content": f"<{self.itag}>{gold}</{self.itag}>"},
                         {"role": self.observation_role, "content": observation}]
        messages.append({"role": "assistant", "content": f"<{self.ftag}>{gold}</{self.ftag}>"})
        return messages
