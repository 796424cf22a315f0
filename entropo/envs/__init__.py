"""Environments: what a policy acts in over an episode. Importing this package registers the built-in ones:
``single_turn`` (the default: one completion), ``python_tool`` (a sandboxed interpreter), ``sql_tool`` (read-only
SQLite), ``tools`` (typed Python functions), and the agent environments of the source papers: ``multihop_lookup``
(IGPO), ``object_store`` (LOOP), ``search_corpus`` (ReSeek), ``text_to_sql`` (ReEx-SQL), ``twenty_questions``
(C-IP), ``notebook`` (IterResearch/EAPO). Several also register a task of the same name that generates their
questions."""

from entropo.envs import lookup, text_to_sql  # noqa: F401  (register multihop_lookup, text_to_sql)
from entropo.envs.base import EnvFactory, Environment, SingleTurn, StepResult
from entropo.envs.notebook import Notebook  # noqa: F401  (registers the notebook environment and task)
from entropo.envs.object_store import ObjectStore  # noqa: F401  (registers environment + task object_store)
from entropo.envs.python_tool import PythonTool
from entropo.envs.search import SearchCorpus  # noqa: F401  (registers search_corpus)
from entropo.envs.sql_tool import SQLTool
from entropo.envs.tools import ToolEnv, tool_schema
from entropo.envs.twenty_questions import TwentyQuestions  # noqa: F401  (also registers the task)

__all__ = ["EnvFactory", "Environment", "PythonTool", "SQLTool", "SingleTurn", "StepResult", "ToolEnv", "tool_schema"]
