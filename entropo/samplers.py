"""Prompt samplers: which training prompts each RL step sees (kind ``sampler``; ``uniform`` is the default).

A sampler is a class built once per run as ``cls(task, seed, **params)`` with ``next(k) -> list[int]`` (train indices
of the task), ``update(batch) -> metrics`` (called after advantages, so curricula can learn from the step), and
``state_dict()/load_state_dict()`` (checkpointed: a resumed run sees exactly the prompts it would have seen).
"""

from __future__ import annotations

from typing import Any

import torch

from entropo.registry import register


@register("sampler", "uniform", paper="(none: shuffled epochs)")
class PromptSampler:
    """Walks a seeded permutation of the task's train indices, epoch after epoch; its position is checkpointed.
    Built by the trainer as ``PromptSampler(task, seed)`` (or with an int size, for tests)."""

    def __init__(self, task: Any, seed: int):
        size = task if isinstance(task, int) else task.train_size()
        if size < 1:
            raise ValueError("the task has no training examples")
        self.size, self.seed, self.epoch, self.pos = size, seed, 0, 0
        self._perm: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.size, generator=g).tolist()
        return self._perm

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            perm = self._permutation()
            take = min(k - len(out), self.size - self.pos)
            out.extend(perm[self.pos:self.pos + take])
            self.pos += take
            if self.pos == self.size:
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict[str, int]) -> None:
        self.epoch, self.pos, self._perm = s["epoch"], s["pos"], None

    def update(self, batch: Any) -> dict[str, float]:
        return {}
