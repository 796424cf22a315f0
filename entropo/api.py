"""The Python API: ``entropo.train(...)`` and ``entropo.load_recipe(...)``, the CLI's ``entropo train`` as calls.

```python
import entropo

summary = entropo.train("demo", overrides=["train.steps=20", "rewards=[{name: 'my_pkg.rewards:brevity'}]"])
print(summary["eval_end"])  # held-out accuracy at the end of the run
```

A recipe is given as a shipped recipe name ("demo", see ``entropo recipes``), a path to a YAML file, a dict with the
same content as a recipe file, or an ``entropo.config.Recipe``; ``overrides`` are ``--set`` items
(``"optimizer.lr=1e-4"``, ``"rewards.0.weight=2"``); ``imports`` are plugin modules imported first (``--import``).
Errors in the recipe raise one ``entropo.config.ConfigError`` naming the field. Importing this module (and
``entropo``) loads neither torch nor the trainer; ``train`` imports them when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from entropo.config import Recipe

RECIPES_DIR = Path(__file__).parent / "recipes"


def _recipe_file(name_or_path: str | Path) -> Path:
    """An existing file, else the shipped recipe of that name (``"dapo"``, ``"dapo.yaml"``, ``"recipes/dapo.yaml"``)."""
    from entropo.config import ConfigError

    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = RECIPES_DIR / f"{p.stem}.yaml"
    if p.suffix in ("", ".yaml", ".yml") and len(p.parts) <= 2 and shipped.exists():
        return shipped
    names = ", ".join(sorted(q.stem for q in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"recipe {str(name_or_path)!r} is neither a file nor a shipped recipe; shipped recipes: {names}")


def load_recipe(recipe: str | Path | Mapping[str, Any] | Recipe | None = None, overrides: Sequence[str] = (), *,
                imports: Sequence[str] = (), check: bool = True) -> Recipe:
    """A validated ``Recipe`` from a shipped recipe name, a YAML path, a dict, a ``Recipe`` or None (the defaults),
    with ``overrides`` (``"a.b=value"`` items, as ``--set``) applied and the ``imports`` plugin modules imported first
    (recorded in the recipe's ``imports``). ``check`` also checks component names and params (and imports the
    recipe's ``imports``). The input is never modified. Raises ``entropo.config.ConfigError``."""
    from entropo.config import ConfigError, Recipe, load_recipe as load_file, recipe_from_dict

    for arg, items in (("overrides", overrides), ("imports", imports)):
        if isinstance(items, str) or any(not isinstance(o, str) for o in items):
            raise TypeError(f"{arg} must be a list of strings, e.g. overrides=['train.steps=2'], imports=['my_pkg']")
    overrides, imports = list(overrides), list(imports)
    if recipe is None:
        return load_file(None, overrides, check=check, imports=imports)
    if isinstance(recipe, (str, Path)):
        return load_file(_recipe_file(recipe), overrides, check=check, imports=imports)
    if isinstance(recipe, Recipe):
        return recipe_from_dict(recipe.model_dump(mode="json"), overrides, check=check, imports=imports,
                                source=f"{recipe.name!r}")
    if isinstance(recipe, Mapping):
        return recipe_from_dict(dict(recipe), overrides, check=check, imports=imports, source="(dict)")
    raise ConfigError(f"a recipe is a shipped recipe name, a path, a dict or an entropo.config.Recipe; "
                      f"got {type(recipe).__name__}")


def train(recipe: str | Path | Mapping[str, Any] | Recipe, overrides: Sequence[str] = (), *,
          run_dir: str | Path | None = None, resume: bool = False, imports: Sequence[str] = (),
          console: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run a recipe end to end, as ``entropo train``; returns the run's summary.

    ``recipe`` and ``overrides``/``imports`` as in ``load_recipe``. ``run_dir``: default ``<logging.output_dir>/<run
    name>`` (``runs/<recipe name>``); a directory that already holds a run raises ``FileExistsError`` unless
    ``resume=True``, which continues from its latest checkpoint. ``console`` receives the trainer's messages (None =
    silent; set ``logging.progress=false`` to also drop the progress bar).

    The summary: ``run_dir``, ``steps``, ``eval_start`` and (once every step ran) ``eval_end`` (held-out
    ``accuracy`` and ``pass@k``), ``final_model`` (an HF model folder), ``entropy_fit`` when fitted, ``plots``.
    Per-step metrics are in ``<run_dir>/metrics.jsonl`` (``entropo.logging.read_metrics``).
    """
    rec = load_recipe(recipe, overrides, imports=imports)
    from entropo import trainer  # torch and the model code load here, not at `import entropo`

    return trainer.train(rec, run_dir=run_dir, resume=resume, console=console or (lambda *_: None))
