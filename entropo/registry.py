"""One registry per component kind (advantage, objective, regularizer, ...).

A component is a plain function (or a class for stateful controllers / engines / tasks) registered under
``(kind, name)``. The trainer looks every stage up here by the name given in the recipe, so adding a method never
needs an ``if`` in the trainer.
"""

from __future__ import annotations

from typing import Any, Callable

KINDS = (
    "advantage",
    "objective",
    "regularizer",
    "selection",
    "shaping",
    "reward",
    "task",
    "engine",
    "controller",
    "sampler",
    "environment",
)

_REGISTRY: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
_META: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}


class UnknownComponentError(KeyError):
    """Raised when a recipe names a component that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


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
    import entropo.envs  # noqa: F401
    import entropo.rewards  # noqa: F401
    import entropo.rollout  # noqa: F401
    import entropo.samplers  # noqa: F401
    import entropo.tasks  # noqa: F401


def get(kind: str, name: str) -> Any:
    """Return the component registered as ``(kind, name)``; the error lists what is available."""
    _check_kind(kind)
    if name not in _REGISTRY[kind]:
        _load_builtins()
    if name not in _REGISTRY[kind]:
        avail = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise UnknownComponentError(f"unknown {kind} {name!r}; registered {kind} names are: {avail}")
    return _REGISTRY[kind][name]


def meta(kind: str, name: str) -> dict[str, Any]:
    get(kind, name)
    return _META[kind][name]


def names(kind: str) -> list[str]:
    """Sorted names registered for ``kind``."""
    _check_kind(kind)
    _load_builtins()
    return sorted(_REGISTRY[kind])
