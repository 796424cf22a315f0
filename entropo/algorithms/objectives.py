"""Policy-gradient surrogate objectives (registry kind ``"objective"``).

Signature: ``fn(logprobs, old_logprobs, advantages, mask, **params) -> (per_token_loss [B, L], metrics)``, all
tensors [B, L]; ``mask`` is the Batch's ``token_weights`` and is used only for metrics (tokens with mask > 0).
Objectives never aggregate: the trainer multiplies by the mask and reduces with ``entropo.ops.aggregate``.

- ``ppo_clip``: clipped surrogate of PPO (Schulman et al. 2017, arXiv 1707.06347) as used by GRPO (arXiv
  2402.03300), with DAPO's decoupled "clip-higher" bounds (Yu et al., arXiv 2503.14476): clip_high = 0.28.
- ``dual_clip``: dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games", arXiv 1912.09729).
- ``gspo``: Group Sequence Policy Optimization, token-level variant (Zheng et al., arXiv 2507.18071).

Metrics (detached scalars, means over tokens with mask > 0): ``clip_frac_low`` (A < 0 and ratio < 1 - clip_low),
``clip_frac_high`` (A > 0 and ratio > 1 + clip_high), ``ratio_mean``, ``approx_kl_old`` (k3 estimate of
KL(pi_theta || pi_old)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.registry import register


def importance_ratio(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """rho [B, L] = exp(logprobs - old_logprobs), log-ratio clamped to [-20, 20] (as verl) so exp cannot overflow."""
    return torch.exp((logprobs - old_logprobs).clamp(-ops.LOG_RATIO_CLAMP, ops.LOG_RATIO_CLAMP))


def clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """L [B, L] = max(-rho A, -clip(rho, 1 - clip_low, 1 + clip_high) A): the pessimistic PPO bound, as a loss."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped)


def ratio_metrics(
    ratio: Tensor,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> dict[str, Tensor]:
    active = (mask > 0).float()
    ratio = ratio.detach()
    low = ((advantages < 0) & (ratio < 1.0 - clip_low)).float()
    high = ((advantages > 0) & (ratio > 1.0 + clip_high)).float()
    return {
        "clip_frac_low": ops.masked_mean(low, active),
        "clip_frac_high": ops.masked_mean(high, active),
        "ratio_mean": ops.masked_mean(ratio, active),
        "approx_kl_old": ops.masked_mean(ops.kl(logprobs.detach(), old_logprobs.detach(), "k3"), active),
    }


CLIP_BOUNDS = ("additive", "reciprocal")


def lower_clip_margin(clip_low: float, clip_bounds: str) -> float:
    """The margin m of the lower bound 1 - m: ``clip_low`` itself (``additive``), or clip_low / (1 + clip_low) so
    that 1 - m = 1 / (1 + clip_low) (``reciprocal``, LOOP, arXiv 2502.01600: eps = 0.1 -> [0.90909, 1.1])."""
    if clip_bounds not in CLIP_BOUNDS:
        raise ValueError(f"clip_bounds must be one of {list(CLIP_BOUNDS)}, got {clip_bounds!r}")
    if clip_bounds == "reciprocal":
        if clip_low <= -1.0:
            raise ValueError(f"clip_bounds=reciprocal needs clip_low > -1 (got {clip_low})")
        return clip_low / (1.0 + clip_low)
    return clip_low


@register("objective", "ppo_clip", paper="PPO clip (1707.06347) as in GRPO 2402.03300; clip-higher: DAPO 2503.14476; "
          "reciprocal bounds: LOOP 2502.01600")
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_bounds: str = "additive",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token clipped surrogate loss max(-rho A, -clip(rho, lower, 1 + clip_high) A).
    DAPO's clip-higher is ``clip_high=0.28``. At rho = 1 the gradient is -A * grad(logprobs).

    ``clip_bounds``: ``"additive"`` (default) clips to [1 - clip_low, 1 + clip_high]; ``"reciprocal"`` clips to
    [1 / (1 + clip_low), 1 + clip_high], the bounds of LOOP ("Reinforcement Learning for Long-Horizon Interactive
    LLM Agents", arXiv 2502.01600), symmetric in log-ratio: with clip_low = clip_high = 0.1 the interval is
    [0.90909, 1.1]. Checked against apple/ml-loop ``phi_agents/rl/train.py`` ``_ppo_loss``: clip_min = 1/(1+eps),
    clip_max = 1+eps, objective min(rho A, clip(rho, clip_min, clip_max) A) per output token (loss_type
    ``pg_per_token``), the rollout's loss the mean over its output tokens (recipes: ``seq-mean-token-mean``). The
    metric ``clip_frac_low`` counts ratios under the reciprocal bound in that mode."""
    clip_low = lower_clip_margin(clip_low, clip_bounds)
    ratio = importance_ratio(logprobs, old_logprobs)
    loss = clipped_surrogate(ratio, advantages, clip_low, clip_high)
    return loss, ratio_metrics(ratio, logprobs, old_logprobs, advantages, mask, clip_low, clip_high)


@register("objective", "dual_clip", paper="Dual-clip PPO (Ye et al. 2020), arXiv 1912.09729")
def dual_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate, and for A < 0 the loss is further capped at -clip_c * A (= clip_c |A|), so a huge ratio on
    a bad token cannot blow up the update; the capped branch is a constant (zero gradient).
    Example: A = -1, rho = 5: clipped loss = max(5, 1.2) = 5; dual-clip loss = min(5, 3) = 3.
    Extra metric ``clip_frac_dual``: fraction of tokens where the cap is active. Follows verl
    ``compute_policy_loss_vanilla``."""
    if clip_c <= 1.0:
        raise ValueError(f"dual_clip needs clip_c > 1 (got {clip_c}); the cap must lie above the clipped ratio")
    ratio = importance_ratio(logprobs, old_logprobs)
    clip_loss = clipped_surrogate(ratio, advantages, clip_low, clip_high)
    cap = -advantages * clip_c
    negative = advantages < 0
    loss = torch.where(negative, torch.minimum(clip_loss, cap), clip_loss)
    metrics = ratio_metrics(ratio, logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
    capped = (negative & (clip_loss.detach() > cap)).float()
    metrics["clip_frac_dual"] = ops.masked_mean(capped, (mask > 0).float())
    return loss, metrics


@register(
    "objective",
    "gspo",
    paper="GSPO, Group Sequence Policy Optimization (Zheng et al.), arXiv 2507.18071",
    recommended_aggregation="seq-mean-token-mean",
)
def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sequence-level ratio, token-level form (verl ``compute_policy_loss_gspo``).

    log s_i = masked mean over the response tokens (mask > 0) of (logprobs - old_logprobs);
    s_{i,t} = exp(sg[log s_i] + logprobs_{i,t} - sg[logprobs_{i,t}]) with the log clamped <= 10: its value is s_i for
    every token of sequence i, its gradient s_i * grad(logprobs_{i,t}). Loss max(-s A, -clip(s, 1 - clip_low,
    1 + clip_high) A) per token, so when s_i leaves the (tiny) trust region the whole sequence gets zero gradient.
    Recipes should aggregate with ``seq-mean-token-mean`` (what GSPO's 1/|o_i| normalisation means).
    Example: logprobs - old over 3 tokens = [0.3, -0.1, 0] -> s = exp(0.066667) = 1.06894, clipped for A > 0.
    """
    active = (mask > 0).to(logprobs.dtype)
    log_seq_ratio = ops.masked_mean(logprobs - old_logprobs, active, dim=-1)  # [B]
    log_token_ratio = log_seq_ratio.detach()[:, None] + logprobs - logprobs.detach()  # [B, L], value = log s_i
    seq_ratio = torch.exp(log_token_ratio.clamp(max=10.0))
    loss = clipped_surrogate(seq_ratio, advantages, clip_low, clip_high)
    return loss, ratio_metrics(seq_ratio, logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
