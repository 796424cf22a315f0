"""BAPO: Balanced Policy Optimization with adaptive clipping.

Paper: "BAPO: Stabilizing Off-Policy Reinforcement Learning for LLMs via Balanced Policy Optimization with Adaptive
Clipping", arXiv 2510.18927. Official code checked: WooooDyy/BAPO ``recipe/bapo/policy_loss.py``
(``compute_policy_loss_bapo``, ``_compute_effective_advantage``) and ``recipe/bapo/config.py`` (defaults).

Negative-advantage tokens dominate the PPO gradient and a fixed clip window blocks the entropy-raising updates of
positive low-probability tokens; BAPO widens the clip bounds until the positive tokens contribute enough.

Verified against the official code and resolved here:

- Bounds are absolute ratio values c_lo < 1 < c_hi (not 1 +- eps) [verified].
- Contributions (the code's definition, not the paper's "share of unclipped tokens", spec (g)) [verified]:
  pos = sum_{A >= 0} min(rho, c_hi) A w, neg = sum_{A < 0} max(rho, c_lo) |A| w (w = token weight, the official
  response mask); criterion pos / (neg + eps) >= target (inf when neg = 0). Default target 1.0 (= positive share
  0.5), eps 1e-8, step 0.05 for both bounds, c_lo 0.6 -> 0.8, c_hi 1.2 -> 2.0 (released config / README). Because
  of eps, an exactly balanced batch (pos = neg) does NOT meet target 1 and the bounds widen (official quirk, kept).
- Search order [verified]: first raise c_lo by steps up to its maximum (stopping as soon as the target is met), then
  c_hi. Each call starts again from the start values: no state is carried across calls or steps, so this is a plain
  function component. As spec (g) notes, under the code's definition raising c_lo can only *increase* neg, so in
  practice only c_hi helps reach the target; we keep the official order (it also tightens the clip on negative
  tokens, which is part of the released behaviour).
- Loss [verified]: dual-clip PPO with clamp(rho, c_lo, c_hi) and cap c = ``clip_c`` (3.0) on negative tokens.
- Scope of the search (spec cross-cutting note 2). ``scope="batch"`` (default): the search runs ONCE per step in the
  ``prepare`` hook over every token of the whole optimized batch, with the pre-update policy (pi_old, so rho = 1 and
  pos / neg = sum A+ / sum |A-| whatever the bounds: when the batch is dominated by negative advantages the bounds move
  to their maxima, otherwise they stay at their start). The bounds are then fixed for all mini-batches / epochs and
  never depend on the micro-batch split. ``scope="micro"``: the official behaviour, the search runs on every call of
  the objective (every micro-batch) with the *current* ratio, so later mini-batches / epochs (off-policy, rho != 1)
  get their own bounds; without data-parallel ranks there is no all-reduce to do.

Metrics: ``bapo_ratio_low``, ``bapo_ratio_high``, ``bapo_pos_neg`` (pos / neg at the chosen bounds, capped at 1e6
for logging), plus the dual-clip metrics (clip fractions measured against the chosen bounds).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.objectives import importance_ratio
from entropo.batch import Batch
from entropo.registry import register

LOW_KEY = "bapo_ratio_low"
HIGH_KEY = "bapo_ratio_high"


def pos_neg_ratio(ratio: Tensor, advantages: Tensor, weights: Tensor, ratio_low: float, ratio_high: float,
                  eps: float = 1e-8) -> float:
    """pos / (neg + eps) of the clipped contributions (inf when there is no negative contribution).

    pos = sum over A >= 0 of min(rho, c_hi) A w; neg = sum over A < 0 of max(rho, c_lo) |A| w. All inputs [B, L]."""
    effective_ratio = torch.where(advantages >= 0, ratio.clamp(max=ratio_high), ratio.clamp(min=ratio_low))
    contribution = effective_ratio * advantages * weights  # [B, L], signed
    pos = float(contribution.clamp(min=0).sum())
    neg = float((-contribution).clamp(min=0).sum())
    return math.inf if neg <= 0 else pos / (neg + eps)


def search_bounds(ratio: Tensor, advantages: Tensor, weights: Tensor, *, ratio_low_start: float, ratio_low_max: float,
                  ratio_low_step: float, ratio_high_start: float, ratio_high_max: float, ratio_high_step: float,
                  target: float, eps: float = 1e-8) -> tuple[float, float, float]:
    """The official bound search: raise c_lo step by step (up to its max), then c_hi, until pos/neg >= target.
    Returns (c_lo, c_hi, pos/neg at those bounds)."""
    low, high = ratio_low_start, ratio_high_start
    current = pos_neg_ratio(ratio, advantages, weights, low, high, eps)
    while current < target and low < ratio_low_max and ratio_low_step > 0:
        low = min(low + ratio_low_step, ratio_low_max)
        current = pos_neg_ratio(ratio, advantages, weights, low, high, eps)
    while current < target and high < ratio_high_max and ratio_high_step > 0:
        high = min(high + ratio_high_step, ratio_high_max)
        current = pos_neg_ratio(ratio, advantages, weights, low, high, eps)
    return low, high, current


def bapo_loss(ratio: Tensor, advantages: Tensor, ratio_low: float, ratio_high: float, clip_c: float
              ) -> tuple[Tensor, Tensor]:
    """Dual-clip PPO per-token loss with absolute bounds: (loss [B, L], capped [B, L] bool where the cap is active)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(ratio_low, ratio_high)
    clip_loss = torch.maximum(unclipped, clipped)
    cap = -advantages * clip_c
    negative = advantages < 0
    loss = torch.where(negative, torch.minimum(clip_loss, cap), clip_loss)
    return loss, negative & (clip_loss.detach() > cap)


def _check(scope: str, ratio_low_start: float, ratio_low_max: float, ratio_high_start: float,
           ratio_high_max: float, clip_c: float) -> None:
    if scope not in ("batch", "micro"):
        raise ValueError(f"bapo: unknown scope {scope!r}; allowed: 'batch', 'micro'")
    if not (0 < ratio_low_start <= ratio_low_max < 1 < ratio_high_start <= ratio_high_max):
        raise ValueError("bapo: need 0 < ratio_low_start <= ratio_low_max < 1 < ratio_high_start <= ratio_high_max")
    if clip_c <= 1.0:
        raise ValueError(f"bapo: clip_c must be > 1 (got {clip_c})")


def bapo_prepare(batch: Batch, generator: torch.Generator | None = None, *, ratio_low_start: float = 0.6,
                 ratio_low_max: float = 0.8, ratio_low_step: float = 0.05, ratio_high_start: float = 1.2,
                 ratio_high_max: float = 2.0, ratio_high_step: float = 0.05, target: float = 1.0,
                 clip_c: float = 3.0, eps: float = 1e-8, scope: str = "batch") -> dict[str, Tensor]:
    """Whole-batch bound search at pi_old (rho = 1): the chosen bounds as [B] tensors (one value) in the extras.
    Same parameters (and defaults) as the objective; ``scope="micro"`` does nothing here."""
    _check(scope, ratio_low_start, ratio_low_max, ratio_high_start, ratio_high_max, clip_c)
    if scope != "batch":
        return {}
    weights = batch.token_weights.float()
    ratio = torch.ones_like(weights)  # pre-update policy: pi_theta = pi_old on every token
    low, high, _ = search_bounds(ratio, batch.advantages.float(), weights, ratio_low_start=ratio_low_start,
                                 ratio_low_max=ratio_low_max, ratio_low_step=ratio_low_step,
                                 ratio_high_start=ratio_high_start, ratio_high_max=ratio_high_max,
                                 ratio_high_step=ratio_high_step, target=target, eps=eps)
    return {LOW_KEY: weights.new_full((batch.size,), low), HIGH_KEY: weights.new_full((batch.size,), high)}


@register("objective", "bapo", paper="BAPO, Balanced Policy Optimization with Adaptive Clipping, arXiv 2510.18927",
          prepare=bapo_prepare)
def bapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ratio_low_start: float = 0.6,
    ratio_low_max: float = 0.8,
    ratio_low_step: float = 0.05,
    ratio_high_start: float = 1.2,
    ratio_high_max: float = 2.0,
    ratio_high_step: float = 0.05,
    target: float = 1.0,
    clip_c: float = 3.0,
    eps: float = 1e-8,
    scope: str = "batch",
    extras: dict | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Dual-clip PPO with the adaptive bounds [c_lo, c_hi] (see module doc). With ``scope="batch"`` the bounds come
    from ``extras`` (set by the prepare hook on the whole batch); if absent (direct call) they are searched on the
    tensors given, which is also what ``scope="micro"`` does on every call."""
    _check(scope, ratio_low_start, ratio_low_max, ratio_high_start, ratio_high_max, clip_c)
    ratio = importance_ratio(logprobs, old_logprobs)
    extras = extras or {}
    weights = mask.float()
    if scope == "batch" and LOW_KEY in extras and extras[LOW_KEY].numel() > 0:
        low, high = float(extras[LOW_KEY].reshape(-1)[0]), float(extras[HIGH_KEY].reshape(-1)[0])
    else:
        low, high, _ = search_bounds(ratio.detach(), advantages, weights, ratio_low_start=ratio_low_start,
                                     ratio_low_max=ratio_low_max, ratio_low_step=ratio_low_step,
                                     ratio_high_start=ratio_high_start, ratio_high_max=ratio_high_max,
                                     ratio_high_step=ratio_high_step, target=target, eps=eps)
    loss, capped = bapo_loss(ratio, advantages, low, high, clip_c)
    active = (mask > 0).float()
    ratio_d = ratio.detach()
    balance = pos_neg_ratio(ratio_d, advantages, weights, low, high, eps)
    metrics = {
        "bapo_ratio_low": torch.tensor(low),
        "bapo_ratio_high": torch.tensor(high),
        "bapo_pos_neg": torch.tensor(min(balance, 1e6)),
        "clip_frac_low": ops.masked_mean(((advantages < 0) & (ratio_d < low)).float(), active),
        "clip_frac_high": ops.masked_mean(((advantages > 0) & (ratio_d > high)).float(), active),
        "clip_frac_dual": ops.masked_mean(capped.float(), active),
        "ratio_mean": ops.masked_mean(ratio_d, active),
        "approx_kl_old": ops.masked_mean(ops.kl(logprobs.detach(), old_logprobs.detach(), "k3"), active),
    }
    return loss, metrics
