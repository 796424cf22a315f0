"""Outcome advantage estimators (registry kind ``"advantage"``): ``fn(batch, **params) -> advantages [B, L]``.

Each estimator turns one outcome per trajectory (``batch.returns()``: reward plus summed dense token rewards) into
one scalar advantage per trajectory, broadcast over its response tokens and exactly 0 elsewhere.

- ``grpo``: group-standardised reward, GRPO (DeepSeekMath, Shao et al., arXiv 2402.03300).
- ``dr_grpo``: group-centred reward without the std division, Dr.GRPO (Liu et al., arXiv 2503.20783).
- ``rloo``: leave-one-out baseline, RLOO (Ahmadian et al., arXiv 2402.14740).
- ``reinforce_pp``: batch-normalised reward (optionally after a group baseline), REINFORCE++ (Hu et al.,
  arXiv 2501.03262).

Groups are the samples sharing ``batch.group_ids``; ids may be any longs and groups may differ in size (e.g. after
filtering). Statistics are computed with scatter/index_add, never a Python loop over samples.
"""

from __future__ import annotations

from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register


@register("advantage", "grpo", paper="GRPO, DeepSeekMath (Shao et al.), arXiv 2402.03300")
def grpo(batch: Batch, eps: float = 1e-6, scale_std: bool = True) -> Tensor:
    """A_i = (r_i - mean_group r) / (std_group r + eps), std unbiased (N-1), as verl's
    ``compute_grpo_outcome_advantage``. A group of one sample uses mean 0 and std 1 (so A = r / (1 + eps) ~ r).
    ``scale_std=False`` skips the division (= Dr.GRPO). Example: r = [1, 0, 0] -> [1.1547, -0.57735, -0.57735]."""
    returns = batch.returns().float()  # [B]
    count, mean, std = ops.group_stats(returns, batch.group_ids)
    singleton = count == 1
    mean = mean.masked_fill(singleton, 0.0)
    std = std.masked_fill(singleton, 1.0)
    advantage = returns - mean
    if scale_std:
        advantage = advantage / (std + eps)
    return ops.broadcast_to_tokens(advantage, batch.response_mask)


@register("advantage", "dr_grpo", paper="Dr.GRPO, Understanding R1-Zero-Like Training (Liu et al.), arXiv 2503.20783")
def dr_grpo(batch: Batch) -> Tensor:
    """A_i = r_i - mean_group r (no std division; a singleton group has A = r).
    Example: r = [1, 0, 0] -> [0.66667, -0.33333, -0.33333]."""
    return grpo(batch, scale_std=False)


@register("advantage", "rloo", paper="RLOO, Back to Basics (Ahmadian et al.), arXiv 2402.14740")
def rloo(batch: Batch) -> Tensor:
    """A_i = r_i - mean_{j != i, j in group} r_j = n / (n - 1) * (r_i - mean_group r).
    A group of one sample has no other sample to form a baseline, so its baseline is 0 and A = r (as verl's
    ``compute_rloo_outcome_advantage``). Example: r = [1, 0, 0] -> [1, -0.5, -0.5]."""
    returns = batch.returns().float()  # [B]
    count, mean, _ = ops.group_stats(returns, batch.group_ids)
    # sum of the others = n * mean - r_i; their mean divides by n - 1 (guarded: singletons get baseline 0 below)
    leave_one_out_mean = (count * mean - returns) / (count - 1).clamp_min(1.0)
    baseline = leave_one_out_mean.masked_fill(count == 1, 0.0)
    return ops.broadcast_to_tokens(returns - baseline, batch.response_mask)


@register("advantage", "reinforce_pp", paper="REINFORCE++ (Hu et al.), arXiv 2501.03262")
def reinforce_pp(batch: Batch, eps: float = 1e-6, whiten: str = "sequences", group_baseline: bool = False) -> Tensor:
    """A = (r - mean_batch r) / (std_batch r + eps): normalised over the whole batch, not per group.

    ``whiten="sequences"`` (default): mean and unbiased std over the B per-sample returns (one number per sequence).
    ``whiten="tokens"``: mean and std over all response tokens of the batch, each sequence's return repeated on each
    of its tokens (OpenRLHF's token-level whitening; longer responses weigh more). The advantage stays one scalar per
    sequence because the outcome is (we do not form per-token returns-to-go of dense rewards).
    ``group_baseline=True`` (REINFORCE++-baseline): subtract the group mean first, then batch-normalise.
    """
    if whiten not in ("sequences", "tokens"):
        raise ValueError(f"unknown whiten {whiten!r}; allowed: 'sequences', 'tokens'")
    returns = batch.returns().float()  # [B]
    if group_baseline:
        _, group_mean, _ = ops.group_stats(returns, batch.group_ids)
        returns = returns - group_mean
    if whiten == "sequences":
        has_tokens = (batch.response_lengths > 0).float()  # [B]; rows without response tokens carry no sample
        advantage = ops.masked_whiten(returns, has_tokens, eps=eps)
        return ops.broadcast_to_tokens(advantage, batch.response_mask)
    token_returns = ops.broadcast_to_tokens(returns, batch.response_mask)  # [B, L]
    whitened = ops.masked_whiten(token_returns, batch.response_mask, eps=eps)
    return whitened.where(batch.response_mask > 0, 0.0)
