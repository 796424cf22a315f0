"""Reward / advantage shaping (registry kind ``"shaping"``): ``fn(batch, **params) -> metrics: dict[str, float]``,
mutating the batch in place. Meta ``stage="reward"`` runs before the advantage estimator, ``stage="advantage"``
after it.

- ``kl_penalty``: KL-in-the-reward penalty of PPO-RLHF (Ziegler et al. 2019, arXiv 1909.08593; Ouyang et al. 2022,
  arXiv 2203.02155), per token with the k1/k2/k3 estimators of Schulman (2020), "Approximating KL divergence".
"""

from __future__ import annotations

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register


@register(
    "shaping",
    "kl_penalty",
    paper="KL-in-reward penalty (Ziegler et al. 2019, arXiv 1909.08593); Schulman 2020 KL estimators",
    stage="reward",
    needs_ref=True,
)
def kl_penalty(batch: Batch, coef: float = 0.01, kind: str = "k1") -> dict[str, float]:
    """token_rewards -= coef * KL_kind(old_logprobs, ref_logprobs) on response tokens (created at 0 when absent).
    The estimate uses the rollout policy's log-probs (``old_logprobs``), so the penalty is a fixed reward, not a
    differentiable loss. Metrics: ``kl_penalty_mean`` (mean per-token penalty coef * KL subtracted) and ``kl_ref``
    (mean per-token KL), both over response tokens."""
    if batch.old_logprobs is None or batch.ref_logprobs is None:
        raise ValueError("kl_penalty needs batch.old_logprobs and batch.ref_logprobs (meta needs_ref=True)")
    response_mask = batch.response_mask
    per_token_kl = ops.kl(batch.old_logprobs, batch.ref_logprobs, kind).detach()  # [B, L]
    penalty = (coef * per_token_kl).where(response_mask > 0, 0.0)
    token_rewards = batch.token_rewards if batch.token_rewards is not None else penalty.new_zeros(penalty.shape)
    batch.token_rewards = token_rewards - penalty
    return {
        "kl_penalty_mean": float(ops.masked_mean(penalty, response_mask)),
        "kl_ref": float(ops.masked_mean(per_token_kl, response_mask)),
    }


@register(
    "shaping",
    "truncated_is",
    paper="Truncated importance sampling for the rollout-engine vs trainer mismatch (Yao et al. 2025, 'Your Efficient "
          "RL Framework Secretly Brings You Off-Policy RL Training')",
    stage="advantage",
)
def truncated_is(batch: Batch, cap: float = 2.0) -> dict[str, float]:
    """token_weights *= min(pi_old / pi_behaviour, cap) on response tokens: the trainer's pre-update log-probs
    (``old_logprobs``) against those the rollout engine recorded while sampling (``behaviour_logprobs``; e.g. vLLM's
    kernels). A no-op ratio of 1 where the two agree. Metrics: ``tis_ratio_mean`` (before the cap), ``tis_capped_frac``
    and ``tis_weight_mean`` (after it), over response tokens."""
    if cap <= 0:
        raise ValueError(f"truncated_is: cap must be > 0, got {cap}")
    if batch.old_logprobs is None or batch.behaviour_logprobs is None:
        raise ValueError("truncated_is needs batch.old_logprobs and batch.behaviour_logprobs")
    mask = batch.response_mask
    ratio = (batch.old_logprobs - batch.behaviour_logprobs).exp().where(mask > 0, 1.0)
    weight = ratio.clamp(max=cap)
    batch.token_weights = batch.token_weights * weight
    return {
        "tis_ratio_mean": float(ops.masked_mean(ratio, mask)),
        "tis_capped_frac": float(ops.masked_mean((ratio > cap).float(), mask)),
        "tis_weight_mean": float(ops.masked_mean(weight, mask)),
    }
