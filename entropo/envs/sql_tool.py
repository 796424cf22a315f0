"""``sql_tool``: the policy queries a SQLite database read-only by writing a ```sql block (registry kind
``environment``), as in text-to-SQL agent environments (SkyRL's SQL environment has the same shape).

Each query runs in ``entropo.sandbox.SQLiteSandbox``: a separate process that opens the database read-only, an
authorizer refusing writes, ATTACH and PRAGMA, a time limit and row/cell caps. The rows (or the SQLite error) come
back as a ``tool`` message; a turn without a ```sql block is the final answer, judged by the task's verifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entropo.envs.base import Environment, StepResult
from entropo.envs.python_tool import last_code_block
from entropo.registry import register
from entropo.sandbox import SandboxLimits, SQLiteSandbox
from entropo.types import Example


@register("environment", "sql_tool", paper="SQLite as a read-only tool (text-to-SQL agent environments)")
class SQLTool(Environment):
    """Params: ``database`` (path of a .sqlite file; ``{meta_key}`` placeholders are filled from the example's meta,
    e.g. ``"data/{db_id}.sqlite"``), ``max_turns`` (default 5), ``timeout_s``, ``max_rows``, ``code_start`` /
    ``code_end`` (query delimiters), ``output_template``."""

    observation_role = "tool"

    def __init__(self, database: str, max_turns: int = 5, timeout_s: float = 5.0, max_rows: int = 20,
                 code_start: str = "```sql\n", code_end: str = "```", output_template: str = "```output\n{output}\n```"):
        self.database, self.max_turns = database, int(max_turns)
        self.limits, self.max_rows = SandboxLimits(timeout_s=timeout_s), int(max_rows)
        self.code_start, self.code_end, self.output_template = code_start, code_end, output_template

    def reset(self, example: Example, seed: int) -> Any:
        del seed
        path = Path(self.database.format(**(example.meta or {})))
        if not path.is_file():
            raise FileNotFoundError(f"sql_tool: database {str(path)!r} not found (environment.params.database)")
        self.sandbox = SQLiteSandbox(path, self.limits, max_rows=self.max_rows)
        return example.prompt

    def step(self, action: str) -> StepResult:
        query = last_code_block(action, self.code_start, self.code_end)
        if query is None:
            return StepResult(done=True)
        result = self.sandbox.run(query.strip())
        return StepResult(observation=self.output_template.format(output=result.observation().rstrip("\n")),
                          tool_call=True, info={"tool_errors": 0 if result.ok else 1})
