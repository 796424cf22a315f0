"""Agentic Entropy-Balanced Policy Optimization — the update half (and the registrations of the method).

Paper: "Agentic Entropy-Balanced Policy Optimization" (AEPO), arXiv 2510.14545 — a different method from the
entropy-target AEPO of arXiv 2510.08141 (``entropo.algorithms.aepo``). Its rollout half (entropy pre-monitoring,
budget split, entropy-guided branching after tool calls with the consecutive-branch penalty) is the engine
``agentic_aepo`` (``entropo.rollout.agentic_aepo``); this module registers:

- objective ``agentic_aepo``: the entropy-balanced policy loss, two switches.
  * ``balanced_clipping`` (stop-gradient clipping): the upper clip bound 1 + eps_hi is replaced by
    ``(1 + eps_hi) · rho / sg(rho)``. Its value is 1 + eps_hi, so the loss value equals PPO's everywhere, but where
    A > 0 and rho > 1 + eps_hi the clipped branch's gradient is ``−(1 + eps_hi) · A · grad(logprob)`` instead of 0:
    clipped high-ratio tokens (the paper's concern: high-entropy tokens exploring) keep a bounded gradient. The
    lower bound and the dual clip (A < 0: loss capped at ``clip_c · |A|``) are PPO's.
    Example: A = 1, rho = 1.5, eps_hi = 0.2: loss −1.2 (as PPO), d loss / d logprob = −1.2 (PPO: 0).
  * ``balanced_advantage`` (entropy-aware advantage): ``A' = A · (1 + coef · H_hat)``, ``H_hat = (H − mean) / std``
    over response tokens, std unbiased (std 0 -> 1), coef = 0.2. Uncertain tokens get larger advantages (of either
    sign). ``scope="batch"`` (default): once per step in ``prepare``, over the whole batch with the pre-update
    policy's entropy (independent of the micro-batch split); ``scope="micro"``: the released code's rule, per
    micro-batch with the current policy's (detached) entropy.
    Example: A = 1, H = [0.1, 0.5, 2.0, 0.2] -> A' = [0.86413, 0.95471, 1.29439, 0.88677].
- producer ``agentic_aepo_stats``: adds no rows; logs the engine's budget statistics of the step
  (``producer/agentic_aepo_stats/<key>``: trajectories, branches, trained / copied / sampled / pre-monitor tokens,
  H_root, H_tool) — the equal-budget accounting against plain sampling.

Checked against the official code (``AEPO/verl_aepo_entropy/verl/trainer/ppo/core_algos.py``,
``compute_policy_loss_entropy_balanced_clipping``, and ``workers/actor/dp_actor.py`` of the ARPO repository):
the clip bound is ``(1 + cliprange_high) / ratio.detach() * ratio`` inside ``torch.clamp`` (applied to every token
above the bound, not only high-entropy ones, though the paper motivates it by high-entropy tokens), the advantage
factor ``1 + 0.2 · (H − mean) / std`` uses ``torch.std`` (unbiased) over the micro-batch's valid tokens with std 0
-> 1, dual clip ``clip_ratio_c = 3``, token-mean aggregation. Note: in that snapshot ``dp_actor`` computes the
entropy only when ``entropy_coeff != 0`` (0 in the shipped config), so the advantage term silently does nothing in
the shipped script; here it runs when enabled. The statistics are per micro-batch there (so they depend on
``train.micro_batch_size``): ``scope="micro"`` reproduces that, the default computes them over the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.objectives import importance_ratio, ratio_metrics
from entropo.batch import Batch
from entropo.components import Produced, RolloutContext
from entropo.registry import register
from entropo.rollout import agentic_aepo as _rollout  # noqa: F401  (registers ("engine", "agentic_aepo"))

PAPER = "Agentic Entropy-Balanced Policy Optimization (AEPO), arXiv 2510.14545"
ENTROPY_KEY = "agentic_aepo_entropy"  # the current policy's token entropy, from this objective's token_fns
BALANCED_KEY = "agentic_aepo_advantages"  # [B, L] whole-batch entropy-aware advantages, from prepare (scope=batch)
SCOPES = ("batch", "micro")


def token_entropy(logits: Tensor, _target_ids: Tensor) -> Tensor:
    """Full-distribution entropy of each row of ``logits [N, V]`` (already temperature-scaled) -> [N]; computed
    without a graph (the objective uses it detached, so the [N, V] intermediates are not kept for backward)."""
    with torch.no_grad():
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"agentic_aepo: unknown scope {scope!r}; allowed: 'batch' (whole batch, pre-update policy) "
                         f"or 'micro' (per micro-batch, current policy: the released code)")


def agentic_aepo_token_fns(scope: str = "batch", balanced_advantage: bool = True, **_params: Any) -> dict:
    """The current policy's token entropy, needed only by the micro-batch scope of the entropy-aware advantage."""
    return {ENTROPY_KEY: token_entropy} if scope == "micro" and balanced_advantage else {}


def agentic_aepo_prepare(batch: Batch, generator: torch.Generator | None = None, *, scope: str = "batch",
                         balanced_advantage: bool = True, advantage_coef: float = 0.2, **_params: Any
                         ) -> dict[str, Tensor]:
    """Whole-batch entropy-aware advantages (``scope="batch"``) from the pre-update policy's entropy over every
    response token of the optimized batch; nothing for ``scope="micro"`` or without the advantage term."""
    _check_scope(scope)
    if scope != "batch" or not balanced_advantage:
        return {}
    if batch.old_entropy is None:
        raise ValueError("agentic_aepo: batch.old_entropy is missing (the pre-update scoring pass records it)")
    return {BALANCED_KEY: entropy_balanced_advantages(batch.advantages, batch.old_entropy, batch.response_mask,
                                                      advantage_coef)}


def entropy_balanced_advantages(advantages: Tensor, entropy: Tensor, mask: Tensor, coef: float = 0.2) -> Tensor:
    """A' = A · (1 + coef · (H − mean) / std), mean and unbiased std over tokens with mask > 0 (std 0 or a single
    token -> std 1); H is detached. Tokens outside the mask keep their A (the loss ignores them anyway)."""
    valid = mask > 0
    h = entropy.detach().float()
    values = h[valid]
    if values.numel() == 0:
        return advantages
    mean = values.mean()
    std = values.std() if values.numel() > 1 else torch.ones((), dtype=h.dtype, device=h.device)
    if not torch.isfinite(std) or float(std) == 0.0:
        std = torch.ones((), dtype=h.dtype, device=h.device)
    scaled = advantages * (1.0 + coef * (h - mean) / std).to(advantages.dtype)
    return torch.where(valid, scaled, advantages)


def stop_gradient_clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> Tensor:
    """max(−rho A, −clip(rho, 1 − clip_low, (1 + clip_high) · rho / sg(rho)) A) per token.

    The upper bound's value is 1 + clip_high (forward = PPO) but it carries rho's gradient scaled by
    (1 + clip_high) / rho, so a clipped token with A > 0 gets gradient −(1 + clip_high) A grad(log rho)."""
    upper = (1.0 + clip_high) * ratio / ratio.detach()
    clipped = torch.minimum(ratio.clamp(min=1.0 - clip_low), upper)
    return torch.maximum(-advantages * ratio, -advantages * clipped)


@register("objective", "agentic_aepo", paper=PAPER, token_fns=agentic_aepo_token_fns, prepare=agentic_aepo_prepare,
          recommended_aggregation="token-mean")
def agentic_aepo_objective(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float = 3.0,
    balanced_clipping: bool = True,
    balanced_advantage: bool = True,
    advantage_coef: float = 0.2,
    scope: str = "batch",
    extras: dict | None = None,
    micro_batch: Batch | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Entropy-balanced policy loss of Agentic AEPO (see the module docstring): optional entropy-aware advantage,
    then the stop-gradient (or, with ``balanced_clipping=False``, the plain) clipped surrogate with dual clip
    ``clip_c`` for A < 0. Metrics: ``ratio_metrics``'s, ``clip_frac_dual``, ``sg_clip_frac`` (tokens whose gradient
    the stop-gradient bound keeps: A > 0, rho > 1 + clip_high), ``adv_scale_mean`` (mean |A'| / |A| on A != 0)."""
    _check_scope(scope)
    if clip_c <= 1.0:
        raise ValueError(f"agentic_aepo: clip_c must be > 1 (got {clip_c}); the dual-clip cap lies above the clip")
    response = micro_batch.response_mask if micro_batch is not None else mask
    metrics: dict[str, Tensor] = {}
    if balanced_advantage:
        if scope == "batch":
            if not extras or BALANCED_KEY not in extras:
                raise ValueError(f"agentic_aepo: extras has no {BALANCED_KEY!r}; its prepare hook must run on the "
                                 "whole batch (the trainer does; outside it pass extras={...}, or use scope='micro')")
            balanced = extras[BALANCED_KEY].to(advantages.dtype)
        else:
            if not extras or ENTROPY_KEY not in extras:
                raise ValueError(f"agentic_aepo: extras has no {ENTROPY_KEY!r}; the training pass must run the "
                                 "objective's token_fns (the trainer does; outside it pass extras={...})")
            balanced = entropy_balanced_advantages(advantages, extras[ENTROPY_KEY], response, advantage_coef)
        nonzero = (response > 0) & (advantages != 0)
        metrics["adv_scale_mean"] = (ops.masked_mean((balanced / advantages.where(nonzero, 1.0)).abs(),
                                                     nonzero.float()) if nonzero.any() else torch.tensor(1.0))
        advantages = balanced
    ratio = importance_ratio(logprobs, old_logprobs)
    if balanced_clipping:
        clip_loss = stop_gradient_clipped_surrogate(ratio, advantages, clip_low, clip_high)
    else:
        clip_loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    cap = -advantages * clip_c
    negative = advantages < 0
    loss = torch.where(negative, torch.minimum(clip_loss, cap), clip_loss)
    metrics.update(ratio_metrics(ratio, logprobs, old_logprobs, advantages, mask, clip_low, clip_high))
    active = (mask > 0).float()
    metrics["clip_frac_dual"] = ops.masked_mean((negative & (clip_loss.detach() > cap)).float(), active)
    kept = (advantages > 0) & (ratio.detach() > 1.0 + clip_high) if balanced_clipping else torch.zeros_like(negative)
    metrics["sg_clip_frac"] = ops.masked_mean(kept.float(), active)
    return loss, metrics


@register("producer", "agentic_aepo_stats", paper=PAPER)
def agentic_aepo_stats(batch: Batch, ctx: RolloutContext) -> Produced:
    """Adds no rows: logs the ``agentic_aepo`` engine's budget statistics for this step (``pop_stats``); nothing for
    another engine. Keys: trajectories, global_samples, branches, passes, trained_tokens, copied_tokens,
    premonitor_tokens, sampled_tokens, h_root, h_tool, global_samples_per_question."""
    del batch
    pop = getattr(ctx.engine, "pop_stats", None)
    return Produced(metrics=pop() if callable(pop) else {})
