"""entropo: RL policy optimization for language models, entropy-aware.

The Python API (``entropo.train``, ``entropo.load_recipe``) mirrors the CLI; ``entropo.register`` registers a component
from your own code; ``entropo.Environment``, ``entropo.StepResult``, ``entropo.ToolEnv`` and ``entropo.tool_schema`` are
the environment and tool base types. ``import entropo`` stays light: torch and the trainer load when ``train`` runs.
"""

from entropo.api import load_recipe, train
from entropo.registry import register

__all__ = [
    "train",
    "load_recipe",
    "register",
    "Environment",
    "StepResult",
    "ToolEnv",
    "tool_schema",
    "Example",
]

# The environment and tool base types, loaded on first use (they import torch through entropo.types).
_LAZY = {"Environment": "entropo.envs.base", "StepResult": "entropo.envs.base", "ToolEnv": "entropo.envs.tools",
         "tool_schema": "entropo.envs.tools", "Example": "entropo.types"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'entropo' has no attribute {name!r}")
