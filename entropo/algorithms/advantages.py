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

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register


def turn_returns(batch: Batch, gamma: float) -> tuple[Tensor, Tensor]:
    """Discounted turn-level returns of multi-turn episodes: ``(episode_return [B], token_return [B, L])``.

    Turn k's reward r_k is the sum of ``token_rewards`` over its response tokens (an environment's turn reward sits on
    the turn's last token), plus the outcome ``rewards`` on the last turn; G_k = sum_{j >= k} gamma^(j-k) r_j.
    ``token_return[b, t]`` is G of the turn of token t (0 off the response); ``episode_return`` is G_0. A single-turn
    row has G_0 = its ``returns()``. Example (3 turns, turn rewards [0.5, 0, 1], outcome 1, gamma 0.5): r' = [0.5, 0,
    2] -> G = [1.0, 1.0, 2.0]."""
    mask = batch.response_mask > 0
    dense = batch.token_rewards if batch.token_rewards is not None else torch.zeros_like(batch.response_mask)
    turns = batch.turn_ids if batch.turn_ids is not None else torch.zeros_like(batch.input_ids)
    episode = torch.zeros(batch.size, dtype=torch.float32, device=mask.device)
    token_return = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for b in range(batch.size):
        row_turns = turns[b][mask[b]]
        if row_turns.numel() == 0:
            episode[b] = batch.rewards[b].float()
            continue
        ids, dense_turn = torch.unique(row_turns, sorted=True, return_inverse=True)
        r = torch.zeros(ids.numel(), dtype=torch.float32, device=mask.device)
        r.index_add_(0, dense_turn, dense[b][mask[b]].float())
        r[-1] += batch.rewards[b].float()
        g = torch.zeros_like(r)
        running = torch.zeros((), dtype=torch.float32, device=mask.device)
        for k in range(r.numel() - 1, -1, -1):
            running = r[k] + gamma * running
            g[k] = running
        episode[b] = g[0]
        token_return[b, mask[b]] = g[dense_turn]
    return episode, token_return


@register("advantage", "grpo", paper="GRPO, DeepSeekMath (Shao et al.), arXiv 2402.03300")
def grpo(batch: Batch, eps: float = 1e-6, scale_std: bool = True, turn_gamma: float | None = None) -> Tensor:
    """A_i = (r_i - mean_group r) / (std_group r + eps), std unbiased (N-1), as verl's
    ``compute_grpo_outcome_advantage``. A group of one sample uses mean 0 and std 1 (so A = r / (1 + eps) ~ r).
    ``scale_std=False`` skips the division (= Dr.GRPO). Example: r = [1, 0, 0] -> [1.1547, -0.57735, -0.57735].

    ``turn_gamma`` (multi-turn episodes): each token's advantage uses the discounted return of its own turn,
    A_t = (G_turn(t) - mean_group G_0) / (std_group G_0 + eps) (see ``turn_returns``), so turn rewards are credited
    to the turns that earned them and later turns are not credited with earlier rewards. With turn_gamma = 1 and no
    turn rewards every turn's return is the outcome, and this equals plain GRPO."""
    if turn_gamma is not None:
        episode, token_return = turn_returns(batch, float(turn_gamma))
        count, mean, std = ops.group_stats(episode, batch.group_ids)
        mean = mean.masked_fill(count == 1, 0.0)
        std = std.masked_fill(count == 1, 1.0)
        centred = token_return - ops.broadcast_to_tokens(mean, batch.response_mask)
        if scale_std:
            centred = centred / (ops.broadcast_to_tokens(std, batch.response_mask) + eps)
        return centred.where(batch.response_mask > 0, 0.0)
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
def rloo(batch: Batch, scale_std: bool = False, eps: float = 1e-7) -> Tensor:
    """A_i = r_i - mean_{j != i, j in group} r_j = n / (n - 1) * (r_i - mean_group r).
    A group of one sample has no other sample to form a baseline, so its baseline is 0 and A = r (as verl's
    ``compute_rloo_outcome_advantage``). Example: r = [1, 0, 0] -> [1, -0.5, -0.5]; r = [1, 0, 0, 1] ->
    [0.66667, -0.66667, -0.66667, 0.66667]. The advantages of a group (of two or more) sum to 0.

    ``scale_std=True`` divides by max(std_group r, eps) with the population std (ddof 0): the ablation of LOOP
    ("Reinforcement Learning for Long-Horizon Interactive LLM Agents", arXiv 2502.01600; apple/ml-loop
    ``_compute_adv_estimates`` with ``adv_normalization: true``, which the paper reports hurts). Off by default."""
    returns = batch.returns().float()  # [B]
    count, mean, _ = ops.group_stats(returns, batch.group_ids)
    # sum of the others = n * mean - r_i; their mean divides by n - 1 (guarded: singletons get baseline 0 below)
    leave_one_out_mean = (count * mean - returns) / (count - 1).clamp_min(1.0)
    baseline = leave_one_out_mean.masked_fill(count == 1, 0.0)
    advantage = returns - baseline
    if scale_std:
        _, _, population_std = ops.group_stats(returns, batch.group_ids, unbiased=False)
        advantage = advantage / population_std.clamp_min(eps)
    return ops.broadcast_to_tokens(advantage, batch.response_mask)


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
