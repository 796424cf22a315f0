"""Environments: what a policy acts in over an episode. Importing this package registers the built-in ones:
``single_turn`` (the default: one completion), ``python_tool`` (a sandboxed interpreter), ``sql_tool`` (read-only
SQLite) and ``tools`` (typed Python functions)."""

from entropo.envs.base import EnvFactory, Environment, SingleTurn, StepResult
from entropo.envs import lookup  # noqa: F401  (registers task and environment multihop_lookup)
from entropo.envs.python_tool import PythonTool
from entropo.envs.search import SearchCorpus  # noqa: F401  (registers search_corpus)
from entropo.envs.sql_tool import SQLTool
from entropo.envs.tools import ToolEnv, tool_schema
from entropo.envs.twenty_questions import TwentyQuestions  # noqa: F401  (also registers the task)

__all__ = ["EnvFactory", "Environment", "PythonTool", "SQLTool", "SingleTurn", "StepResult", "ToolEnv", "tool_schema"]
from entropo.envs import text_to_sql  # noqa: E402,F401  (registers text_to_sql, ReEx-SQL)
