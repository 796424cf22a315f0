"""EPO: entropy bonus + entropy smoothing band + phase weight (registry kind ``"regularizer"``, name ``"epo"``).

Paper: "EPO: Entropy-regularized Policy Optimization for LLM Agents Reinforcement Learning", arXiv 2509.22576.
Official code checked: WujiangXu/EPO, ``verl/workers/actor/dp_actor.py`` (``generate_entropy_penalty``,
``_calculate_epoch_based_entropy_weight``, the ``entropy_smooth`` branch of ``update_policy``) and
``verl/trainer/ppo/ray_trainer.py`` (``entropy_history``: per-step entropy list appended after each rollout, before
the update; the actor receives its element-wise mean over all stored rollouts).

Per token (i, t) of turn s (``batch.turn_ids``; a single-turn batch, ``turn_ids is None``, is all turn 0), with H the
current policy's entropy (differentiable) and H_bar_s the historical average entropy of turn s:

  per-token loss = -H + smooth_coef * w(e) * P,     the trainer multiplies by coef (c_H) and aggregates,

which is the code's  pg_loss - c_H * (agg(H) - c_s * agg(w * P))  because the aggregation is linear.

- band: (kappa_low * H_bar_s, kappa_high * H_bar_s), defaults (0, 2) from the README commands.
- ``mode="indicator"`` (code-faithful): P = beta_out outside the open band, 0 inside. It is built from comparisons
  only, so it changes the loss *value* but carries no gradient — the released code's smoothing term does not affect
  the update at all.
- ``mode="band_distance"`` (default; our choice, faithful to the paper's stated intent of penalizing entropy that
  leaves the historical band): P = beta_out * (relu(kappa_low * H_bar - H) + relu(H - kappa_high * H_bar)), the
  distance outside the band. Its gradient pushes H down above the band and up below it and is zero inside, and
  it is 0 inside the band and on its edges.
- phase weight w(e), M = ``phase_steps`` (code: 150 epochs, hard-coded), h = M // 2, e clamped to [0, M]:
  w = 1 - 0.2 * (1 - exp(-2 e / h)) for e <= h, else 0.8 * exp(-3 (e - h) / (M - h)). The code counts trainer
  epochs (one rollout batch per epoch in its agent setups); we count RL steps, held in this component's state.
  ``phase_weighting=False`` uses w = 1.
- turn gate: the code applies P only to micro-batches containing a sample from env step >= max_steps // 2 (25 of
  50). That depends on the micro-batch split and would switch P off for every single-turn task, so we gate per
  token: P is applied to tokens of turn >= ``apply_from_turn`` (default 0: everywhere).
- history (state, checkpointed): for each turn index, the running sum and count of the per-step mean old-policy
  entropy of that turn's response tokens (``batch.old_entropy``, the policy that sampled the batch). It is updated
  in ``prepare`` from the whole batch before the update (as the code appends before updating), so H_bar_s = mean
  over all steps so far, this one included. The code left-pads each step's list with zeros to max_steps (which
  misaligns turn indices for short episodes and drags the averages toward 0); we average only over the steps in
  which turn s occurred.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from entropo import ops
from entropo.registry import register
from entropo.types import TokenContext

REFERENCE_KEY = "epo_reference_entropy"
MODES = ("band_distance", "indicator")


def phase_weight(step: int, phase_steps: int = 150) -> float:
    """w(e): slow decay 1 -> 0.8 over the first half of ``phase_steps``, then fast decay 0.8 -> 0.8 e^-3.
    Example (M = 150): w(37) = 1 - 0.2 (1 - e^(-2*37/75)) = 0.87456; w(76) = 0.8 e^(-3/75) = 0.76863."""
    if phase_steps <= 0:
        return 1.0
    e = max(0, min(int(step), phase_steps))
    half = phase_steps // 2
    if e <= half:
        return 1.0 if half == 0 else 1.0 - 0.2 * (1.0 - math.exp(-2.0 * e / half))
    return 0.8 * math.exp(-3.0 * (e - half) / (phase_steps - half))


def band_penalty(entropy: Tensor, reference: Tensor, kappa_low: float, kappa_high: float, beta_out: float,
                 mode: str) -> Tensor:
    """P [B, L] for entropies H and reference entropies H_bar (both [B, L]); see the module doc.
    Example (indicator): H_bar = 1, H = [0.3, 1.0, 2.5], band (0, 2), beta_out = 0.05 -> [0, 0, 0.05];
    band_distance gives [0, 0, 0.05 * 0.5 = 0.025]."""
    low, high = kappa_low * reference, kappa_high * reference
    if mode == "indicator":
        inside = (entropy.detach() > low) & (entropy.detach() < high)
        return torch.where(inside, 0.0, beta_out).to(entropy.dtype)
    if mode == "band_distance":
        return beta_out * (torch.relu(low - entropy) + torch.relu(entropy - high))
    raise ValueError(f"epo: unknown mode {mode!r}; allowed: {', '.join(MODES)}")


def turn_index(batch: Any) -> Tensor:
    """[B, L] long turn index of each token (all 0 for single-turn batches)."""
    if batch.turn_ids is None:
        return torch.zeros_like(batch.response_mask, dtype=torch.long)
    return batch.turn_ids.long()


@register("regularizer", "epo", paper="EPO, Entropy-regularized Policy Optimization for LLM Agents RL, arXiv 2509.22576",
          recommended_coef=0.001)
class EPO:
    """Entropy bonus with a smoothing band around the per-turn historical entropy and a phase weight.

    Params: ``smooth_coef`` c_s (1.0), ``kappa_low`` (0.0), ``kappa_high`` (2.0), ``beta_out`` (0.05; ALFWorld 0.1),
    ``mode`` ("band_distance" | "indicator"), ``phase_weighting`` (True), ``phase_steps`` M (150),
    ``apply_from_turn`` (0). State: per-turn entropy sums / counts and the number of completed steps.
    Metrics: ``entropy``, ``penalty`` (mean w * P), ``outside_frac``, ``reference_entropy``, ``phase_weight``.
    """

    def __init__(self, smooth_coef: float = 1.0, kappa_low: float = 0.0, kappa_high: float = 2.0,
                 beta_out: float = 0.05, mode: str = "band_distance", phase_weighting: bool = True,
                 phase_steps: int = 150, apply_from_turn: int = 0):
        if mode not in MODES:
            raise ValueError(f"epo: unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        if kappa_low > kappa_high:
            raise ValueError("epo: kappa_low must be <= kappa_high")
        self.smooth_coef, self.kappa_low, self.kappa_high = float(smooth_coef), float(kappa_low), float(kappa_high)
        self.beta_out, self.mode = float(beta_out), mode
        self.phase_weighting, self.phase_steps, self.apply_from_turn = bool(phase_weighting), int(phase_steps), \
            int(apply_from_turn)
        self.turn_entropy_sum: list[float] = []  # per turn index: sum over steps of that step's mean entropy
        self.turn_count: list[int] = []  # per turn index: number of steps in which the turn occurred
        self.steps = 0  # completed RL steps (the phase weight's e)

    # ---- history ---------------------------------------------------------------------------------------------
    def record(self, entropy: Tensor, turns: Tensor, response_mask: Tensor) -> None:
        """Add one step's per-turn mean entropies (over response tokens) to the history."""
        valid = response_mask > 0
        for s in torch.unique(turns[valid]).tolist():
            in_turn = (valid & (turns == s)).to(entropy.dtype)
            while len(self.turn_count) <= s:
                self.turn_entropy_sum.append(0.0)
                self.turn_count.append(0)
            self.turn_entropy_sum[s] += float(ops.masked_mean(entropy.detach(), in_turn))
            self.turn_count[s] += 1

    def history_mean(self) -> Tensor:
        """[S] average entropy of each turn index over the recorded steps (0 for a turn never seen)."""
        sums = torch.tensor(self.turn_entropy_sum, dtype=torch.float32)
        counts = torch.tensor(self.turn_count, dtype=torch.float32)
        return sums / counts.clamp_min(1.0)

    def prepare(self, batch: Any, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Record this step's old-policy entropies, then give each token its turn's historical average."""
        if batch.old_entropy is None:
            raise ValueError("epo: prepare needs batch.old_entropy (the old-policy scoring pass)")
        turns = turn_index(batch)
        self.record(batch.old_entropy, turns, batch.response_mask)
        means = self.history_mean().to(batch.old_entropy.device)
        if means.numel() == 0:  # a batch without response tokens: nothing to reference
            return {REFERENCE_KEY: torch.zeros_like(batch.old_entropy)}
        reference = means[turns.clamp(0, means.numel() - 1)]
        return {REFERENCE_KEY: reference.where(batch.response_mask > 0, 0.0)}

    def current_weight(self) -> float:
        return phase_weight(self.steps, self.phase_steps) if self.phase_weighting else 1.0

    # ---- loss ------------------------------------------------------------------------------------------------
    def __call__(self, ctx: TokenContext) -> tuple[Tensor, dict[str, Tensor]]:
        if REFERENCE_KEY not in ctx.extras:
            raise ValueError(f"epo: ctx.extras has no {REFERENCE_KEY!r} (set by the component's prepare hook)")
        entropy, reference = ctx.entropy, ctx.extras[REFERENCE_KEY].to(ctx.entropy.dtype)
        response_mask = ctx.batch.response_mask
        penalty = band_penalty(entropy, reference, self.kappa_low, self.kappa_high, self.beta_out, self.mode)
        gate = (turn_index(ctx.batch) >= self.apply_from_turn).to(entropy.dtype)
        weighted_penalty = self.current_weight() * penalty * gate
        outside = (entropy.detach() <= self.kappa_low * reference) | (entropy.detach() >= self.kappa_high * reference)
        metrics = {
            "entropy": ops.masked_mean(entropy.detach(), response_mask),
            "penalty": ops.masked_mean(weighted_penalty.detach(), response_mask),
            "outside_frac": ops.masked_mean(outside.float(), response_mask),
            "reference_entropy": ops.masked_mean(reference, response_mask),
            "phase_weight": torch.tensor(self.current_weight()),
        }
        return -entropy + self.smooth_coef * weighted_penalty, metrics

    def update(self, metrics: dict[str, Any]) -> None:
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"turn_entropy_sum": list(self.turn_entropy_sum), "turn_count": list(self.turn_count),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.turn_entropy_sum = list(state["turn_entropy_sum"])
        self.turn_count = list(state["turn_count"])
        self.steps = int(state["steps"])
