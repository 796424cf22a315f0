"""DUMP: distribution-level curriculum learning with a UCB bandit over data distributions.

Paper: Wang et al., "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM Post-training",
arXiv 2504.09710. Official code checked: ZhentingWang/DUMP ``verl/utils/curriculum_learning.py``
(``LearnabilityEstimator``, ``CurriculumController``, ``CurriculumSampler``), called after ``compute_advantage``.

Each distribution j of a ``mixture`` task is a bandit arm. Its learnability is the mean absolute advantage of its
recent responses: a sliding window of the last W per-response advantages (each the mean of the response's token
advantages); mu_j = mean |A| over the window, n_j = responses seen from j, N = sum n_j,
UCB_j = mu_j + c * sqrt(2 ln(N + 1) / (n_j + 1)) (the code's +1s; the paper writes ln N / n_j),
w = softmax(UCB / tau). Each prompt slot draws a distribution from w, then a uniformly random example of it.
Defaults W = 300, tau = 0.1, c = 1 (the released script). An arm never seen has mu = 0 and the largest bonus.
The window, counts and the sampling generator are checkpointed, so a resumed run draws the same prompts.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from entropo import ops
from entropo.registry import register


def ucb_scores(mean_abs_adv: list[float], counts: list[int], exploration: float = 1.0) -> list[float]:
    """UCB_j = mu_j + c * sqrt(2 ln(N + 1) / (n_j + 1))."""
    total = sum(counts)
    return [m + exploration * math.sqrt(2.0 * math.log(total + 1) / (n + 1)) for m, n in zip(mean_abs_adv, counts)]


def softmax_weights(scores: list[float], tau: float) -> list[float]:
    return torch.softmax(torch.tensor(scores, dtype=torch.float64) / tau, dim=0).tolist()


@register("sampler", "dump", paper="DUMP, arXiv 2504.09710")
class DUMPSampler:
    """UCB curriculum over the distributions of a ``mixture`` task (see module docstring)."""

    def __init__(self, task: Any, seed: int, window: int = 300, tau: float = 0.1, exploration: float = 1.0):
        ranges = getattr(task, "distribution_ranges", None)
        if not callable(ranges):
            raise ValueError("sampler 'dump' needs a task with several distributions: use task.name=mixture with "
                             "task.params.tasks=[{name: ..., params: ...}, ...]")
        if window < 1 or tau <= 0:
            raise ValueError("dump: window must be >= 1 and tau > 0")
        self.ranges = ranges()
        self.window, self.tau, self.exploration = int(window), float(tau), float(exploration)
        self.recent: list[list[float]] = [[] for _ in self.ranges]  # |A| of the last `window` responses per arm
        self.counts = [0 for _ in self.ranges]
        self.generator = torch.Generator().manual_seed(seed * 7919 + 17)

    def weights(self) -> list[float]:
        means = [sum(r) / len(r) if r else 0.0 for r in self.recent]
        return softmax_weights(ucb_scores(means, self.counts, self.exploration), self.tau)

    def next(self, k: int) -> list[int]:
        w = torch.tensor(self.weights(), dtype=torch.float64)
        arms = torch.multinomial(w, k, replacement=True, generator=self.generator).tolist()
        out = []
        for j in arms:
            r = self.ranges[j]
            out.append(r.start + int(torch.randint(len(r), (1,), generator=self.generator)))
        return out

    def update(self, batch: Any) -> dict[str, float]:
        """Feed this step's per-response |mean token advantage| to each response's distribution."""
        per_response = ops.masked_mean(batch.advantages.float(), batch.response_mask, dim=-1).abs().tolist()
        for value, sample in zip(per_response, batch.info["sample"]):
            j = sample.example.meta["distribution"]
            self.recent[j] = (self.recent[j] + [value])[-self.window:]
            self.counts[j] += 1
        return {f"p_{j}": w for j, w in enumerate(self.weights())}

    def state_dict(self) -> dict[str, Any]:
        return {"recent": [list(r) for r in self.recent], "counts": list(self.counts),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent, self.counts = [list(r) for r in state["recent"]], list(state["counts"])
        self.generator.set_state(state["generator"])
