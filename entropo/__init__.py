"""entropo: RL policy optimization for language models, entropy-aware.

The Python API (``entropo.train``, ``entropo.load_recipe``) mirrors the CLI; ``entropo.register`` registers a component
from your own code. ``import entropo`` stays light: torch and the trainer load when ``train`` runs.
"""

from entropo.api import load_recipe, train
from entropo.registry import register

__all__ = [
    "train",
    "load_recipe",
    "register",
]
