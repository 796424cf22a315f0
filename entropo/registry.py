"""One registry per component kind (advantage, objective, regularizer, ...).

A component is a plain function (or a class for stateful controllers / engines / tasks) registered under
``(kind, name)``. The trainer looks every stage up here by the name given in the recipe, so adding a method never
needs an ``if`` in the trainer.

Components from outside entropo, two ways:

- by import path: wherever a recipe names a component, ``"my_pkg.module:attr"`` (``module:attr.sub`` for a nested
  attribute; only the colon form) imports ``my_pkg.module`` and uses ``attr``. ``get`` registers it under that path,
  so ``meta``/``names`` see it; its meta is the meta it was ``@register``-ed with for the same kind, if any, else {}.
- plugin modules: ``import_modules(["my_pkg.plugins"])`` (``entropo train --import``, the recipe's ``imports``)
  imports modules whose ``@register(...)`` decorators then make their components available by plain name.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from typing import Any, Callable, Iterable

KINDS = (
    "advantage",
    "objective",
    "regularizer",
    "selection",
    "shaping",
    "producer",
    "reward",
    "task",
    "engine",
    "controller",
    "sampler",
    "environment",
    "program",
)

_REGISTRY: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
_META: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}


class UnknownComponentError(KeyError):
    """Raised when a recipe names a component that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class ComponentImportError(UnknownComponentError):
    """A component named by import path (``module:attr``) could not be resolved; the message says why."""


class PluginImportError(ImportError):
    """A plugin module (``--import``, a recipe's ``imports``) failed to import; the message names it and the cause."""


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise UnknownComponentError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")


def register(kind: str, name: str, **meta: Any) -> Callable[[Any], Any]:
    """Decorator: ``@register("advantage", "grpo")``. ``meta`` is free-form (e.g. ``paper=...``, ``stage=...``)."""
    _check_kind(kind)

    def deco(obj: Any) -> Any:
        if name in _REGISTRY[kind] and _REGISTRY[kind][name] is not obj:
            raise ValueError(f"{kind} {name!r} is already registered")
        _REGISTRY[kind][name] = obj
        _META[kind][name] = dict(meta)
        return obj

    return deco


def _load_builtins() -> None:
    # Importing the component modules registers them; done lazily so `import entropo.registry` stays light.
    import entropo.algorithms  # noqa: F401
    import entropo.classic  # noqa: F401
    import entropo.envs  # noqa: F401
    import entropo.games  # noqa: F401
    import entropo.rewards  # noqa: F401
    import entropo.rollout  # noqa: F401
    import entropo.samplers  # noqa: F401
    import entropo.tasks  # noqa: F401


def is_import_path(name: str) -> bool:
    """True when a component name is an import path ``module:attr`` rather than a registered name."""
    return ":" in name


def import_path_hint(name: str) -> str:
    """For an unknown dotted name ``a.b.c``: a hint that import paths use a colon (``a.b:c``); else ''."""
    if "." not in name:
        return ""
    module, _, attr = name.rpartition(".")
    return f". To name a component by import path use 'module:attribute', e.g. {module}:{attr}"


def _cause(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _raise_location(e: BaseException) -> str:
    """' (at file:line)' of the innermost frame of an exception raised while importing user code."""
    frames = traceback.extract_tb(e.__traceback__)
    user = [f for f in frames if "importlib" not in f.filename]
    return f" (at {user[-1].filename}:{user[-1].lineno})" if user else ""


def import_module(module: str, what: str) -> Any:
    """Import ``module`` for ``what`` (e.g. "--import", "imports.0", "task 'm:f'"); one PluginImportError otherwise.

    The message tells a module that does not exist (naming the first missing package) from one that exists but
    fails while importing (its exception and where it was raised).
    """
    if not module or any(not part.isidentifier() for part in module.split(".")):
        raise PluginImportError(f"{what}: {module!r} is not a module name (expected e.g. my_pkg.plugins)")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or str(e)
        if missing == module or module.startswith(missing + "."):
            hint = "" if missing == module else f" (package {missing!r} not found)"
            raise PluginImportError(f"{what}: no module named {module!r}{hint}; is it installed or on PYTHONPATH?"
                                    ) from None
        raise PluginImportError(f"{what}: importing module {module!r} failed: {_cause(e)}{_raise_location(e)}") from e
    except Exception as e:  # noqa: BLE001 - any error raised by the plugin's own code
        raise PluginImportError(f"{what}: importing module {module!r} failed: {_cause(e)}{_raise_location(e)}") from e


def import_modules(modules: Iterable[str], what: str = "--import") -> None:
    """Import plugin modules in order (their ``@register`` decorators run). ``what`` labels errors; ``{i}`` in it
    becomes the module's index (``"imports.{i}"`` -> ``imports.0: ...``)."""
    for i, module in enumerate(modules):
        import_module(module, what.format(i=i))


def _public_names(mod: Any, limit: int = 12) -> str:
    """Public callables the module defines itself first, then its other public names."""
    own, other = [], []
    for n, v in vars(mod).items():
        if n.startswith("_") or inspect.ismodule(v):
            continue
        (own if callable(v) and getattr(v, "__module__", None) == mod.__name__ else other).append(n)
    names = own + other
    if not names:
        return "it defines no public names"
    return "it defines: " + ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _resolve_import_path(kind: str, path: str) -> Any:
    what = f"{kind} {path!r}"
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path or ":" in attr_path or any(
            not a.isidentifier() for a in attr_path.split(".")):
        raise ComponentImportError(f"{what}: expected an import path 'package.module:attribute'")
    try:
        obj = import_module(module_name, what)
    except PluginImportError as e:
        raise ComponentImportError(str(e)) from e.__cause__
    where = module_name
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            if inspect.ismodule(obj):
                listing = _public_names(obj)
            else:
                public = [n for n in dir(obj) if not n.startswith("_")]
                listing = "its attributes: " + (", ".join(public[:12]) or "(none)")
                listing += ", ..." if len(public) > 12 else ""
            raise ComponentImportError(f"{what}: {'module' if inspect.ismodule(obj) else 'object'} {where!r} has no "
                                       f"attribute {attr!r}; {listing}")
        obj = getattr(obj, attr)
        where = f"{where}:{attr}" if where == module_name else f"{where}.{attr}"
    if not callable(obj) or inspect.ismodule(obj):
        raise ComponentImportError(f"{what}: {attr_path!r} is not a function or class (it is of type "
                                   f"{type(obj).__name__})")
    return obj


def import_callable(what: str, path: str) -> Any:
    """The function or class an import path ``package.module:attribute`` names, for ``what`` (e.g. "tool", "reseek_judge
    scorer"); one ``ValueError`` saying why otherwise (a missing module or attribute, not callable)."""
    try:
        return _resolve_import_path(what, str(path))
    except (ComponentImportError, PluginImportError) as e:
        raise ValueError(str(e)) from None


def get(kind: str, name: str) -> Any:
    """Return the component registered as ``(kind, name)``, or the object an import path ``module:attr`` names
    (then registered under that path). The error lists what is available, or says why the import path failed."""
    _check_kind(kind)
    if name in _REGISTRY[kind]:
        return _REGISTRY[kind][name]
    if is_import_path(name):
        obj = _resolve_import_path(kind, name)
        registered = [n for n, o in _REGISTRY[kind].items() if o is obj]
        _REGISTRY[kind][name] = obj
        _META[kind][name] = dict(_META[kind][registered[0]]) if registered else {}
        return obj
    _load_builtins()
    if name not in _REGISTRY[kind]:
        avail = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise UnknownComponentError(f"unknown {kind} {name!r}; registered {kind} names are: {avail}"
                                    f"{import_path_hint(name)}")
    return _REGISTRY[kind][name]


def meta(kind: str, name: str) -> dict[str, Any]:
    get(kind, name)
    return _META[kind][name]


def names(kind: str) -> list[str]:
    """Sorted names registered for ``kind``."""
    _check_kind(kind)
    _load_builtins()
    return sorted(_REGISTRY[kind])
