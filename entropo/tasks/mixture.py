"""``mixture``: several tasks (data distributions) behind one task, for curricula over distributions (DUMP).

Train index space is the concatenation of the sub-tasks' train sets (``distribution_ranges()`` gives each one's
range), the eval split is the concatenation of their eval splits (``eval_size`` each), and every example carries
``meta["distribution"]`` (its sub-task's position) and ``meta["distribution_name"]`` so samplers, verifiers and
metrics can tell them apart. ``correct`` dispatches to the sub-task that made the example.
"""

from __future__ import annotations

from typing import Any

from entropo import registry
from entropo.registry import register
from entropo.types import Example


class MixtureTask:
    def __init__(self, tasks: list[Any], names: list[str]):
        self.name = "mixture"
        self.tasks, self.names = tasks, names
        self._starts = []
        total = 0
        for t in tasks:
            self._starts.append(total)
            total += t.train_size()
        self._size = total

    def distribution_ranges(self) -> list[range]:
        return [range(s, s + t.train_size()) for s, t in zip(self._starts, self.tasks)]

    def _tag(self, example: Example, j: int) -> Example:
        example.meta = {**example.meta, "distribution": j, "distribution_name": self.names[j]}
        return example

    def train_size(self) -> int:
        return self._size

    def train_example(self, i: int) -> Example:
        for j in reversed(range(len(self.tasks))):
            if i >= self._starts[j]:
                return self._tag(self.tasks[j].train_example(i - self._starts[j]), j)
        raise IndexError(f"train index {i} out of range")

    def eval_examples(self) -> list[Example]:
        return [self._tag(e, j) for j, t in enumerate(self.tasks) for e in t.eval_examples()]

    def correct(self, completion: str, example: Example) -> bool:
        return self.tasks[example.meta["distribution"]].correct(completion, example)

    def score(self, completion: str, example: Example) -> float:
        task = self.tasks[example.meta["distribution"]]
        fn = getattr(task, "score", None)
        return float(fn(completion, example)) if callable(fn) else float(task.correct(completion, example))


@register("task", "mixture", description="several tasks as distributions of one (for curricula such as DUMP)")
def mixture(seed: int, eval_size: int = 64, *, tasks: list[dict[str, Any]] | None = None) -> MixtureTask:
    """``tasks``: a list of ``{name, params, label}`` (label optional, default ``name#i``); each sub-task gets the
    same seed and ``eval_size`` held-out examples."""
    if not tasks:
        raise ValueError("mixture: give task.params.tasks, a list of {name: ..., params: {...}}")
    built, names = [], []
    for i, spec in enumerate(tasks):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"mixture: tasks.{i} must be a mapping with a 'name' (and optional 'params', 'label')")
        unknown = set(spec) - {"name", "params", "label"}
        if unknown:
            raise ValueError(f"mixture: tasks.{i} has unknown keys {sorted(unknown)}; allowed: name, params, label")
        built.append(registry.get("task", spec["name"])(seed=seed, eval_size=eval_size, **spec.get("params", {})))
        names.append(spec.get("label") or f"{spec['name']}#{i}")
    return MixtureTask(built, names)
