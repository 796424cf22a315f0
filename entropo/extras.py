"""Optional dependencies: import them where they are used, with one error naming the extra that provides them.

Modules of the optional families (``entropo.games``: OpenSpiel; ``entropo.classic``: Gymnasium, scikit-learn,
LightGBM) import their heavy dependencies through :func:`require` inside functions, so that ``import entropo`` and
the registry stay light and a missing extra fails only the recipe that needs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, what: str = "") -> ModuleType:
    """Import ``module`` or raise one ImportError saying which ``entropo[extra]`` installs it (and who needed it)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        who = f"{what} needs" if what else "this needs"
        top = module.split(".")[0]
        raise ImportError(f"{who} {top}: pip install 'entropo[{extra}]' ({e})") from e
