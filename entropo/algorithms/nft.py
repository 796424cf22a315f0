"""NFT, Negative-aware Fine-Tuning (Chen et al., "Bridging Supervised Learning and Reinforcement Learning in Math
Reasoning", arXiv 2505.18116), as the objective ``nft``.

NFT trains on self-generated answers like rejection fine-tuning, but also learns from the wrong ones through an
*implicit negative policy* built from the same parameters. With r̂ the prompt's fraction of correct answers and
R = exp(min(ℓ − ℓ_old, 10)) the token ratio (ℓ = log π_θ(token)):

    correct answer:  L = −log clampV(R, ε_pos)
    wrong answer:    L = −log clampV(N, ε_neg) · neg_weight,   N = (1 − r̂·R) / (1 − r̂)

``clampV(x, ε)`` has the value ``max(x, ε)`` but the gradient of ``x`` (straight-through), so the clamp bounds the
loss value without cutting the gradient. The per-token loss is then multiplied by a prompt weight: ``normalize=1``
→ (1 − r̂), ``normalize=2`` → sqrt((1 − r̂)/r̂), ``normalize=0`` → 1. r̂ is clamped to [0.02, 0.98].

On-policy (R = 1) the gradient is −(1 − r̂)∇ℓ on correct tokens and +r̂∇ℓ on wrong ones with ``normalize=1``: the
gradient of the policy-gradient loss with Dr.GRPO advantages (1 − r̂, −r̂) for 0/1 rewards; with ``normalize=2`` it
is GRPO's (biased-std) advantages ±sqrt((1−r̂)/r̂), −sqrt(r̂/(1−r̂)). ``neg_weight=0`` gives RFT.

Verified against the official code (NVlabs/NFT ``dp_actor.py``, ``update_policy``): the ratio clamp at 10 on the
log-ratio (upper side only), r̂ clamp [0.02, 0.98], ``proxy = (1 − r̂R)/(1 − r̂)``, straight-through clamps with
``clamp_negative`` (default 1.0, taken as ``abs``) and ``clamp_positive`` (default 0), ``neg_weight`` applied to the
wrong-answer loss only, and the two ``normalize`` weights. Resolutions of the ambiguities:

- Aggregation: the official code sums ``loss · mask`` over tokens and divides by the constant 1000. Objectives in
  entropo never aggregate; the recipe chooses (``seq-mean-token-sum-norm`` with ``norm_length`` is the constant-divisor
  form up to the batch-size factor). The gradient *direction* per token is unaffected.
- r̂ and correctness come from the *whole* optimized batch in ``prepare`` (so they never depend on the micro-batch
  split): the correct flag is ``batch.correct`` (the task verifier) when present, else ``reward >
  correct_threshold``; r̂ is the group mean of that flag. Groups with r̂ ∈ {0, 1} carry no signal; the official run
  removes them by dynamic sampling (the recipe does too) and here they also get weight 0 (``drop_uniform_groups``),
  because clamping r̂ to 0.02/0.98 would otherwise train on them.
- Only the token-level ratio (the paper's default ``ratio_type=token``) is implemented.
- The ``advantages`` argument is ignored: NFT's signal is (correct flag, r̂), not an advantage estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register

RATE_MIN, RATE_MAX = 0.02, 0.98  # official clamp of the per-prompt correct rate
LOG_RATIO_MAX = 10.0  # official upper clamp of ℓ − ℓ_old before exp


def clamp_value_keep_grad(values: Tensor, min_value: float) -> Tensor:
    """Value max(values, min_value), gradient of ``values`` everywhere (straight-through clamp)."""
    return values + (values.clamp_min(min_value) - values).detach()


def prompt_weight(correct_rate: Tensor, normalize: int) -> Tensor:
    """Per-row weight of the NFT loss from the (clamped) correct rate r̂ [B]."""
    if normalize == 1:
        return 1.0 - correct_rate
    if normalize == 2:
        return ((1.0 - correct_rate) / correct_rate).sqrt()
    if normalize == 0:
        return torch.ones_like(correct_rate)
    raise ValueError(f"nft: normalize must be 0, 1 or 2, got {normalize}")


def nft_token_loss(logprobs: Tensor, old_logprobs: Tensor, correct: Tensor, correct_rate: Tensor, *,
                   neg_weight: float = 1.0, clamp_negative: float = 1.0, clamp_positive: float = 0.0,
                   normalize: int = 1) -> Tensor:
    """Per-token NFT loss [B, L]. ``correct`` [B] is 1 for a correct answer, 0 for a wrong one; ``correct_rate`` [B]
    is the prompt's r̂ (clamped here to [0.02, 0.98])."""
    rate = correct_rate.to(logprobs.dtype).clamp(RATE_MIN, RATE_MAX)[:, None]  # [B, 1]
    is_correct = correct.to(logprobs.dtype)[:, None]  # [B, 1]
    ratio = torch.exp((logprobs - old_logprobs).clamp(max=LOG_RATIO_MAX))  # [B, L] R
    negative_ratio = (1.0 - rate * ratio) / (1.0 - rate)  # [B, L] N, the implicit negative policy's ratio
    positive_loss = -torch.log(clamp_value_keep_grad(ratio, clamp_positive))
    negative_loss = -torch.log(clamp_value_keep_grad(negative_ratio, abs(clamp_negative)))
    loss = is_correct * positive_loss + (1.0 - is_correct) * neg_weight * negative_loss
    return loss * prompt_weight(rate, normalize)


def correct_flags(batch: Batch, correct_threshold: float) -> Tensor:
    """[B] float 0/1: the verifier's verdict when the batch carries it, else reward > threshold."""
    if batch.correct is not None:
        return batch.correct.float().to(batch.rewards.device)
    return (batch.rewards > correct_threshold).float()


def nft_prepare(batch: Batch, generator: torch.Generator | None = None, *, correct_threshold: float = 0.5,
                drop_uniform_groups: bool = True, **_: object) -> dict[str, Tensor]:
    """Whole-batch statistics: per-row correct flag, the group's correct rate r̂, and a row weight that is 0 for
    groups where every answer is right or every answer is wrong (when ``drop_uniform_groups``)."""
    correct = correct_flags(batch, correct_threshold)
    _, rate, _ = ops.group_stats(correct, batch.group_ids)
    informative = ((rate > 0) & (rate < 1)).float() if drop_uniform_groups else torch.ones_like(rate)
    return {"nft_correct": correct, "nft_correct_rate": rate, "nft_row_weight": informative}


@register("objective", "nft", paper="Bridging Supervised Learning and RL in Math Reasoning (NFT), arXiv 2505.18116",
          prepare=nft_prepare)
def nft(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, neg_weight: float = 1.0,
        clamp_negative: float = 1.0, clamp_positive: float = 0.0, normalize: int = 1,
        correct_threshold: float = 0.5, drop_uniform_groups: bool = True,
        extras: dict | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token NFT loss (see the module docstring). Needs ``nft_correct`` / ``nft_correct_rate`` /
    ``nft_row_weight`` in ``extras`` (written by this objective's whole-batch ``prepare`` hook)."""
    extras = extras or {}
    if "nft_correct" not in extras:
        raise ValueError("nft needs extras from its prepare hook (nft_correct, nft_correct_rate, nft_row_weight)")
    loss = nft_token_loss(logprobs, old_logprobs, extras["nft_correct"], extras["nft_correct_rate"],
                          neg_weight=neg_weight, clamp_negative=clamp_negative, clamp_positive=clamp_positive,
                          normalize=normalize)
    loss = loss * extras["nft_row_weight"].to(loss.dtype)[:, None]
    active = (mask > 0).float()
    correct_tokens = active * extras["nft_correct"].to(active.dtype)[:, None]
    ratio = torch.exp((logprobs.detach() - old_logprobs).clamp(max=LOG_RATIO_MAX))
    metrics = {
        "ratio_mean": ops.masked_mean(ratio, active),
        "approx_kl_old": ops.masked_mean(ops.kl(logprobs.detach(), old_logprobs, "k3"), active),
        "correct_token_frac": ops.masked_mean(correct_tokens, active),
        "correct_rate_mean": ops.masked_mean(extras["nft_correct_rate"].to(active.dtype)[:, None].expand_as(active),
                                             active),
    }
    return loss, metrics
