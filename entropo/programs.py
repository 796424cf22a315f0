"""Program recipes: methods that are not a training run (inference-time query selection, an experience library, a
search), shipped as recipes that `entropo run NAME` executes and `entropo recipes` lists beside the training ones.

A program recipe is a YAML mapping with ``program`` (a registered ``program`` component or an import path
``module:function``), ``params`` (checked against the function's signature), ``seed``, ``paper`` and ``description``.
The function is called as ``fn(out_dir=Path, seed=int, console=callable, **params)`` and returns a mapping of results
(numbers, lists, strings), which is written atomically to ``OUT/results.json`` next to the recipe it ran.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from entropo.config import ConfigError, apply_overrides, yaml_load

RESERVED = ("out_dir", "seed", "console")


class ProgramRecipe(BaseModel):
    """A recipe that runs a function instead of the trainer."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Recipe name (default: the file's stem); the default output is runs/<name>.")
    paper: str = Field("", description="The paper the program implements (title, arXiv id).")
    description: str = Field("", description="One line on what the program does and reports.")
    program: str = Field(description="A registered `program` component or an import path 'package.module:function'.")
    seed: int = Field(0, description="Seed passed to the program (it seeds its own generators from it).")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Keyword arguments of the program, checked against its signature.")


def is_program(data: Any) -> bool:
    """True for the raw mapping of a program recipe."""
    return isinstance(data, dict) and "program" in data


def resolve(recipe: ProgramRecipe) -> Callable[..., dict[str, Any]]:
    """The program's function, with its params checked against the signature (one error naming the field)."""
    from entropo import registry

    try:
        fn = registry.get("program", recipe.program)
    except (KeyError, ImportError) as e:
        raise ConfigError(f"program: {e}") from None
    sig = inspect.signature(fn)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key in recipe.params:
        if key in RESERVED:
            raise ConfigError(f"params.{key}: set by entropo run (use --out / the recipe's seed), not a parameter")
        if key not in sig.parameters and not accepts_any:
            allowed = ", ".join(n for n in sig.parameters if n not in RESERVED) or "(none)"
            raise ConfigError(f"params.{key}: program {recipe.program!r} has no parameter {key!r}; allowed: {allowed}")
    missing = [n for n, p in sig.parameters.items() if n not in RESERVED and p.default is p.empty
               and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in recipe.params]
    if missing:
        raise ConfigError(f"params.{missing[0]}: required by program {recipe.program!r}; set it in the recipe or with "
                          f"--set params.{missing[0]}=...")
    return fn


def load_program(path: str | Path, overrides: list[str] | None = None) -> ProgramRecipe:
    """Load and validate a program recipe file with ``--set`` overrides (e.g. ``params.alpha=0.05``)."""
    p = Path(path)
    data = yaml_load(p.read_text()) or {}
    if not is_program(data):
        raise ConfigError(f"{p}: not a program recipe (no 'program' key); train it with `entropo train {p.stem}`")
    data.setdefault("name", p.stem)
    data = apply_overrides(data, list(overrides or []))
    try:
        recipe = ProgramRecipe(**data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{field}: {err['msg']} (in {p})") from None
    resolve(recipe)
    return recipe


def run_program(recipe: ProgramRecipe, out_dir: str | Path, console: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the program into ``out_dir``; returns its results (also written to OUT/results.json)."""
    from entropo.checkpoint import atomic_write_bytes

    fn = resolve(recipe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False).encode())
    t0 = time.perf_counter()
    results = fn(out_dir=out, seed=recipe.seed, console=console, **recipe.params)
    if not isinstance(results, dict):
        raise TypeError(f"program {recipe.program!r} returned {type(results).__name__}; it must return a dict")
    results = {**results, "wall_s": time.perf_counter() - t0}
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1, default=float).encode())
    return results
