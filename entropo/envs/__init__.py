"""Environments: what a policy acts in over an episode. Importing this package registers the built-in ones:
``single_turn`` (the default: one completion), ``python_tool`` (a sandboxed interpreter), ``sql_tool`` (read-only
SQLite) and ``tools`` (typed Python functions)."""

from entropo.envs.base import EnvFactory, Environment, SingleTurn, StepResult
from entropo.envs.notebook import Notebook  # noqa: F401  (registers the notebook environment and task)
from entropo.envs.python_tool import PythonTool
from entropo.envs.sql_tool import SQLTool
from entropo.envs.tools import ToolEnv, tool_schema

__all__ = ["EnvFactory", "Environment", "PythonTool", "SQLTool", "SingleTurn", "StepResult", "ToolEnv", "tool_schema"]
