"""``otc_grpo``: OTC-GRPO's group estimate of the optimal number of tool calls (Wang et al., "Acting Less is Reasoning
More! Teaching Model to Act Efficiently", arXiv 2504.14870), as a reward-stage shaping.

The per-sample reward ``otc`` (entropo.rewards.tool_efficiency) needs n, the minimal number of tool calls that solves
the question; a reward function sees one sample, so n is estimated here over the group: n = the fewest tool calls
among the group's correct responses (``batch.correct``; calls from ``batch.tool_calls``, counted by the engine per
episode). With ``track=True`` the minimum is also kept per question across steps (the paper's "tracked across
epochs"), keyed by the prompt text and checkpointed. Every row's reward becomes

    r = α · r_tool(m, n) · correct,   r_tool as in OTC-GRPO (sin(f·π/(2n)) peaking at m = n; cos(mπ/(2m + c)) if n = 0)

A group with no correct response has no estimate (spec (g)): its rows keep reward 0 (the product form gives a wrong
answer 0 anyway). No official code exists; formulas follow the paper (see ``otc``'s docstring for the resolutions).
"""

from __future__ import annotations

from typing import Any

import torch

from entropo.batch import Batch
from entropo.registry import register
from entropo.rewards.tool_efficiency import otc_grpo_tool_reward


def group_optimal_calls(calls: list[int], correct: list[bool], group_ids: list[int]) -> dict[int, int]:
    """{group id: fewest tool calls among its correct rows}; groups without a correct row are absent."""
    best: dict[int, int] = {}
    for m, ok, g in zip(calls, correct, group_ids):
        if ok:
            best[g] = min(best.get(g, m), m)
    return best


@register("shaping", "otc_grpo", paper="Acting Less is Reasoning More (OTC-GRPO), arXiv 2504.14870", stage="reward")
class OTCGroup:
    """Replace ``batch.rewards`` by OTC-GRPO's α·r_tool(m, n)·correct with n estimated per group (see module)."""

    def __init__(self, c: float = 1.0, alpha: float = 1.0, track: bool = True):
        self.c, self.alpha, self.track = float(c), float(alpha), bool(track)
        self.best: dict[str, int] = {}  # prompt text -> fewest calls of a correct answer seen so far

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {str(k): int(v) for k, v in state["best"].items()}

    def __call__(self, batch: Batch) -> dict[str, float]:
        if batch.correct is None or batch.tool_calls is None:
            raise ValueError("otc_grpo needs batch.correct and batch.tool_calls (set by the trainer from episodes)")
        calls, correct = batch.tool_calls.tolist(), batch.correct.tolist()
        groups = batch.group_ids.tolist()
        best = group_optimal_calls(calls, correct, groups)
        samples = batch.info.get("sample") or [None] * batch.size
        keys = [str(s.example.prompt) if s is not None else str(g) for s, g in zip(samples, groups)]
        if self.track:
            for key, g in zip(keys, groups):
                if g in best:
                    self.best[key] = min(self.best.get(key, best[g]), best[g])
        rewards = []
        for m, ok, g, key in zip(calls, correct, groups, keys):
            n = self.best.get(key) if self.track else best.get(g)
            rewards.append(self.alpha * otc_grpo_tool_reward(m, n, self.c) if ok and n is not None else 0.0)
        batch.rewards = torch.tensor(rewards, dtype=batch.rewards.dtype, device=batch.rewards.device)
        known = [best[g] for g in set(groups) if g in best]
        metrics = {"otc_tool_calls_mean": float(sum(calls) / max(len(calls), 1)),
                   "otc_groups_with_estimate": float(len(known))}
        if known:
            metrics["otc_optimal_calls_mean"] = float(sum(known) / len(known))
        return metrics
