"""Lp-Reg: low-probability regularization toward a min-p filtered proxy (registry kind ``"objective"``, ``"lp_reg"``).

Paper: "Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward" (Lp-Reg),
arXiv 2510.03222. Official code checked: CarlanLark/Lp-Reg-dev, ``verl/trainer/ppo/core_algos.py``
(``compute_policy_loss_lp_reg``), ``verl/workers/actor/dp_actor.py`` (``apply_min_p``, the ``lp_reg`` loss mode with
``minp_old_log_prob=True``) and ``recipe/lp_reg/Qwen3_14b_lp_reg_onpolicy_64gpu.sh`` (defaults).

Per token n with sampled token o_n:

- proxy (from the old-policy pass, an ``old_token_fns`` hook on each chunk of logits): pi_proxy = pi_old restricted
  to the tokens with pi_old(v) >= min_p * max_u pi_old(u) ("min_p", default min_p = 0.02) or pi_old(v) >= min_p
  ("fixed"), renormalized. The hook stores log pi_proxy(o_n) in ``batch.extras["lp_reg_proxy_logprob"]``; a
  sampled token that the filter removed gets ``FILTERED_LOGPROB`` (-1e4, the value the code's -1e4 logit gives up
  to the normalizer), so the condition below can never hold for it: filtered tokens are never regularized.
- selection (``prepare``: once per step, on the WHOLE optimized batch): among tokens with token weight > 0 and
  A < 0, the k = max(1, floor(neg_fraction * N_neg)) lowest log-probabilities, and only when k > 1 (the code's
  ``if neg_logp_k > 1`` — with k = 1 nothing is selected); likewise for A > 0 with ``pos_fraction`` (default 0).
  The code ranks by the current log-prob inside each micro-batch; we rank by the pre-update policy's log-prob
  (pi_old; on-policy the current policy equals pi_old at that point, ratio = 1) over the whole batch, so the
  selection does not depend on the micro-batch split. Ties are broken by position (stable sort).
- loss: on a selected token that still satisfies l_n < log pi_proxy(o_n) (checked with the *current* detached
  log-prob, as the code does): -rho_n A_n + beta * k3(l_n, log pi_proxy(o_n)), k3 = e^x - x - 1 with
  x = log pi_proxy - l (verl ``low_var_kl``, ``ops.kl(..., "k3")``: x clamped to [-20, 20], value to <= 10). The
  ratio is not clipped on these tokens. Everywhere else: the standard clipped surrogate.

About the KL direction: per sampled token, k3 with these arguments estimates KL(pi_theta || pi_proxy) at the
sampled token (a reverse-KL estimator under pi_theta sampling); the paper describes the term as a KL toward the
proxy. We keep the code's estimator; its gradient e^x - 1 > 0 (x > 0 on every regularized token) raises l_n toward
the proxy's (larger) probability.

Defaults: clip bounds 0.2 / 0.28 like the other recipes (the paper's scripts use clip_ratio_low = 1.0,
clip_ratio_high = 9.0, i.e. ratio clamped to [0, 10]); beta = 1; min_p = 0.02; neg_fraction 0.01
(Qwen3-14B; 0.005 for Qwen2.5-32B); pos_fraction 0; token-mean aggregation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.objectives import (
    ratio_metrics,
    clipped_surrogate,
    importance_ratio,
)
from entropo.registry import register

PROXY_KEY = "lp_reg_proxy_logprob"
SELECTED_KEY = "lp_reg_selected"
FILTERED_LOGPROB = -1.0e4
PROXY_KINDS = ("min_p", "fixed")

# Defaults shared by the objective and its hooks (the hooks receive only the params a recipe sets).
DEFAULT_MIN_P = 0.02
DEFAULT_PROXY = "min_p"
DEFAULT_NEG_FRACTION = 0.01
DEFAULT_POS_FRACTION = 0.0


def proxy_logprob(logits: Tensor, target_ids: Tensor, min_p: float = DEFAULT_MIN_P,
                  proxy: str = DEFAULT_PROXY) -> Tensor:
    """log pi_proxy(target) [N] for logits [N, V]; ``FILTERED_LOGPROB`` where the filter removed the target.

    Example: pi_old = [0.6, 0.3, 0.09, 0.01], min_p = 0.02 -> threshold 0.02 * 0.6 = 0.012 removes the last token
    -> pi_proxy = [0.6, 0.3, 0.09] / 0.99 = [0.60606, 0.30303, 0.09091, 0 (filtered)].
    """
    if proxy not in PROXY_KINDS:
        raise ValueError(f"lp_reg: unknown proxy {proxy!r}; allowed: {', '.join(PROXY_KINDS)}")
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    probs = logprobs.exp()
    if proxy == "min_p":  # threshold relative to the most likely token (the code compares probabilities)
        kept = probs >= min_p * probs.max(-1, keepdim=True).values
    else:
        kept = probs >= min_p
    any_kept = kept.any(-1)
    log_kept_mass = torch.logsumexp(logprobs.masked_fill(~kept, float("-inf")), dim=-1)
    target_logprob = logprobs.gather(-1, target_ids[:, None]).squeeze(-1)
    target_kept = kept.gather(-1, target_ids[:, None]).squeeze(-1) & any_kept
    return (target_logprob - log_kept_mass.where(any_kept, 0.0)).where(target_kept, FILTERED_LOGPROB)


def lowest_fraction(values: Tensor, candidates: Tensor, fraction: float) -> Tensor:
    """[B, L] bool: the k = max(1, floor(fraction * #candidates)) candidates with the lowest ``values``, or none
    when k <= 1 (the official code's rule). Stable: equal values are taken in row-major position order."""
    selected = torch.zeros_like(candidates, dtype=torch.bool)
    flat_index = candidates.reshape(-1).nonzero().squeeze(-1)  # [N_c]
    k = max(1, int(flat_index.numel() * fraction))
    if flat_index.numel() == 0 or k <= 1:
        return selected
    order = torch.sort(values.reshape(-1)[flat_index], stable=True).indices[:k]
    selected.view(-1)[flat_index[order]] = True
    return selected


def select_tokens(batch: Any, generator: torch.Generator | None = None, *,
                  neg_fraction: float = DEFAULT_NEG_FRACTION, pos_fraction: float = DEFAULT_POS_FRACTION,
                  **_objective_params: Any) -> dict[str, Tensor]:
    """``prepare`` hook: the tokens to regularize, chosen over the whole batch by the pre-update log-probs."""
    if batch.old_logprobs is None or batch.advantages is None:
        raise ValueError("lp_reg: prepare needs batch.old_logprobs and batch.advantages")
    active = (batch.token_weights > 0) & (batch.response_mask > 0)
    old_logprobs = batch.old_logprobs.float()
    selected = lowest_fraction(old_logprobs, active & (batch.advantages < 0), neg_fraction)
    selected |= lowest_fraction(old_logprobs, active & (batch.advantages > 0), pos_fraction)
    return {SELECTED_KEY: selected.float()}


def proxy_token_fns(*, min_p: float = DEFAULT_MIN_P, proxy: str = DEFAULT_PROXY,
                    **_objective_params: Any) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """``old_token_fns`` hook: the proxy log-prob of each sampled token under the filtered pi_old."""
    if proxy not in PROXY_KINDS:
        raise ValueError(f"lp_reg: unknown proxy {proxy!r}; allowed: {', '.join(PROXY_KINDS)}")
    return {PROXY_KEY: lambda logits, target_ids: proxy_logprob(logits, target_ids, min_p, proxy)}


@register("objective", "lp_reg", paper="Lp-Reg, Low-probability Tokens Sustain Exploration in RLVR, arXiv 2510.03222",
          prepare=select_tokens, old_token_fns=proxy_token_fns, recommended_aggregation="token-mean")
def lp_reg(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    beta: float = 1.0,
    min_p: float = DEFAULT_MIN_P,
    proxy: str = DEFAULT_PROXY,
    neg_fraction: float = DEFAULT_NEG_FRACTION,
    pos_fraction: float = DEFAULT_POS_FRACTION,
    kl_kind: str = "k3",
    extras: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate, except -rho A + beta * KL(l, log pi_proxy) on the selected low-probability tokens whose
    current log-prob is still below the proxy's. ``min_p``/``proxy`` are read by the old-pass hook and
    ``neg_fraction``/``pos_fraction`` by the prepare hook. Extra metrics: ``reg_frac`` (regularized share of the
    tokens with mask > 0), ``selected_frac``, ``proxy_kl`` (mean KL term over regularized tokens)."""
    extras = extras or {}
    missing = [k for k in (PROXY_KEY, SELECTED_KEY) if k not in extras]
    if missing:
        raise ValueError(f"lp_reg: extras lack {missing} (the trainer fills them from the objective's "
                         "old_token_fns and prepare hooks)")
    proxy_logprobs = extras[PROXY_KEY].to(logprobs.dtype)
    selected = extras[SELECTED_KEY] > 0
    ratio = importance_ratio(logprobs, old_logprobs)
    clipped_loss = clipped_surrogate(ratio, advantages, clip_low, clip_high)
    regularized = selected & (logprobs.detach() < proxy_logprobs) & (proxy_logprobs > FILTERED_LOGPROB)
    proxy_kl = ops.kl(logprobs, proxy_logprobs, kl_kind)
    loss = torch.where(regularized, -advantages * ratio + beta * proxy_kl, clipped_loss)
    metrics = ratio_metrics(ratio, logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
    active = (mask > 0).float()
    metrics["reg_frac"] = ops.masked_mean(regularized.float(), active)
    metrics["selected_frac"] = ops.masked_mean(selected.float(), active)
    metrics["proxy_kl"] = ops.masked_mean(proxy_kl.detach(), regularized.float() * active)
    return loss, metrics

