"""SIREN: selective entropy regularization around a self-anchor (registry kind ``"regularizer"``, name ``"siren"``).

Paper: "Rethinking Entropy Regularization in Large Reasoning Models" (SIREN), arXiv 2509.25133.
Official code checked: Linn3a/siren, ``verl/verl/workers/actor/dp_actor.py`` (``efficient_top_p_sampling``,
``mask_by_quantile``, the ``experiment_type == "siren"`` branch of ``update_policy``) and
``verl/verl/trainer/ppo/ray_trainer.py`` (anchor set once at global step 1 from the old-policy pass).

The term, for one micro-batch of responses i with valid tokens t:

- H^p_{i,t}: entropy of the current policy restricted to its top-p nucleus and renormalized. Probabilities are
  sorted in decreasing order over the top-K logits and the tokens kept are those whose cumulative probability is
  still < p (the token that crosses p is *excluded*, as ``searchsorted`` + ``range < cutoff`` does in the code);
  H^p = 0 when the top-1 probability alone reaches p. Differentiable (the nucleus itself is a constant set).
- peak mask m_{i,t} = 1[H^p_{i,t} > tau_i], tau_i = 0.8-quantile (linear interpolation) of {H^p_{i,t}} over the
  response's own tokens. The code applies the quantile mask twice (once on H^p, once on the already-zeroed
  tensor); the second pass keeps exactly the same set (the re-taken quantile falls between 0 and the smallest
  kept value), so we apply it once.
- H_hat = seq-mean-token-mean of H^p over m: mean over responses of (mean of H^p over the response's peak tokens),
  a response with no peak token adding 0 but still counting in the mean (verl ``agg_loss`` of that repo).
- anchor H_anchor: the same statistic on the **old-policy** top-p entropies of the whole first-step batch, computed
  once (``prepare`` of the first step) and then fixed; it is this component's state (``state_dict``), so a resumed
  run keeps it. A fixed ``anchor`` parameter overrides it (the code's ``entropy_anchor`` config key).
- loss = lambda * (H_hat - H_anchor)^2, lambda = the recipe's ``coef`` (paper 0.005).

How the scalar becomes a per-token loss. The trainer aggregates every regularizer's per-token output with the
recipe's aggregation. The official code computes the squared deviation per *micro-batch* and averages the
micro-batch losses (gradient accumulation), and we do the same: in each micro-batch d = (H_hat_mb - H_anchor)^2 is
computed from the micro-batch's own responses (the per-response quantile needs only the response itself, and a
response is never split across micro-batches) and written on its response tokens with weights chosen so that the
trainer's aggregation returns exactly d when one micro-batch holds the whole mini-batch (and the token- or
sequence-share weighted mean of the micro-batch values otherwise, as gradient accumulation does in the code):

  aggregation = token-mean or seq-mean-token-mean  -> d on every response token
  aggregation = seq-mean-token-sum                 -> d / n_i on the tokens of response i
  aggregation = seq-mean-token-sum-norm            -> d * norm_length / n_i

so the component reads the recipe's ``aggregation.mode`` / ``norm_length`` from the TokenContext the trainer
passes (explicit ``aggregation``/``norm_length`` params override it, for use outside the trainer). The gradient
is the exact gradient of d through H_hat (the peak mask is a constant, as in the code).

Per-token hooks: ``token_fns`` gives ``siren_topp_entropy`` (current policy, differentiable, computed chunk by
chunk in the training pass — no [B, L, V] tensor), ``old_token_fns`` gives ``siren_old_topp_entropy`` (the no-grad
scoring pass before the update), which is what the anchor is taken from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from entropo import ops
from entropo.registry import register
from entropo.types import TokenContext

CURRENT_KEY = "siren_topp_entropy"
OLD_KEY = "siren_old_topp_entropy"
AGGREGATIONS = ops.AGGREGATION_MODES


def top_p_entropy(logits: Tensor, top_p: float = 0.8, top_k: int = 10000) -> Tensor:
    """Entropy [N] of the renormalized top-p nucleus of each row of ``logits`` [N, V].

    Kept tokens: the largest-probability tokens (among the top ``top_k``) whose cumulative probability is < top_p.
    Example: probs [0.5, 0.2, 0.15, 0.1, 0.05], p = 0.8 -> cumulative [0.5, 0.7, 0.85, ...] keeps {0.5, 0.2}
    -> renormalized [0.7143, 0.2857] -> entropy 0.59827. A row whose top-1 probability is >= top_p has entropy 0.
    """
    k = min(int(top_k), logits.shape[-1])
    log_normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)  # [N, 1] over the full vocabulary
    top_logprobs = logits.topk(k, dim=-1).values - log_normalizer  # [N, k], descending
    cumulative = top_logprobs.exp().cumsum(-1)
    kept = cumulative < top_p  # [N, k]; prefix of the sorted list, exclusive of the crossing token
    any_kept = kept.any(-1)  # [N]
    # Keep one entry in empty rows so no log-sum-exp runs over only -inf (its gradient would be NaN); those rows
    # are replaced by 0 below through `where`, which passes no gradient to the discarded branch.
    kept_for_norm = kept.clone()
    kept_for_norm[:, 0] |= ~any_kept
    log_kept_mass = torch.logsumexp(top_logprobs.masked_fill(~kept_for_norm, float("-inf")), dim=-1, keepdim=True)
    nucleus_logprobs = (top_logprobs - log_kept_mass).where(kept_for_norm, 0.0)  # log of renormalized probs
    entropy = -(nucleus_logprobs.exp() * nucleus_logprobs).where(kept_for_norm, 0.0).sum(-1)
    return entropy.where(any_kept, 0.0)


def peak_mask(entropy: Tensor, response_mask: Tensor, quantile: float = 0.8) -> Tensor:
    """[B, L] bool: tokens whose entropy is strictly above their own response's ``quantile`` (linear
    interpolation over the response's tokens). Example: [0.1, 0.5, 0.9, 1.3, 0.0] -> tau = 0.98 -> only 1.3."""
    valid = response_mask > 0
    values = entropy.detach().float().masked_fill(~valid, float("nan"))
    threshold = torch.nanquantile(values, quantile, dim=-1, keepdim=True)  # NaN for empty rows -> no token kept
    return valid & (values > threshold)


def peak_entropy_mean(entropy: Tensor, response_mask: Tensor, quantile: float = 0.8) -> Tensor:
    """H_hat (scalar): mean over responses with tokens of (mean entropy over the response's peak tokens); a response
    with no peak token adds 0 (seq-mean-token-mean over the peak mask, as the official ``agg_loss``)."""
    peaks = peak_mask(entropy, response_mask, quantile).to(entropy.dtype)
    per_response = ops.masked_mean(entropy, peaks, dim=-1)  # [B], 0 where a response has no peak token
    has_tokens = (response_mask > 0).any(-1)
    return per_response.where(has_tokens, 0.0).sum() / has_tokens.sum().clamp_min(1)


def token_weights_for(aggregation: str, response_mask: Tensor, norm_length: float | None) -> Tensor:
    """[B, L] weights c such that the trainer's ``ops.aggregate(d * c, ...)`` over a batch equals d."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"siren: unknown aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
    mask = (response_mask > 0).to(torch.float32)
    if aggregation in ("token-mean", "seq-mean-token-mean"):
        return mask
    per_token = mask / mask.sum(-1, keepdim=True).clamp_min(1.0)  # 1 / n_i on response i
    if aggregation == "seq-mean-token-sum":
        return per_token
    if norm_length is None:
        raise ValueError("siren with aggregation 'seq-mean-token-sum-norm' needs norm_length (the recipe's "
                         "aggregation.norm_length, or rollout.max_new_tokens when that is unset)")
    return per_token * float(norm_length)


@register("regularizer", "siren", paper="SIREN, Rethinking Entropy Regularization in Large Reasoning Models, "
          "arXiv 2509.25133", recommended_coef=0.005)
class Siren:
    """lambda * (H_hat - H_anchor)^2 on top-p, peak-entropy tokens; lambda is the recipe's ``coef``.

    Params: ``top_p`` (0.8), ``top_k`` (10000), ``quantile`` (0.8), ``anchor`` (None: taken from the first step's
    old-policy pass), ``aggregation`` / ``norm_length`` (default None: the recipe's aggregation, passed by the trainer in
    the TokenContext; set them only to use the component outside the trainer).
    State: ``anchor``. Metrics: ``peak_entropy`` (H_hat of the micro-batch), ``anchor``, ``sq_deviation``,
    ``topp_entropy`` (mean H^p over response tokens).
    """

    def __init__(self, top_p: float = 0.8, top_k: int = 10000, quantile: float = 0.8, anchor: float | None = None,
                 aggregation: str | None = None, norm_length: float | None = None):
        if not 0.0 < top_p <= 1.0 or not 0.0 <= quantile <= 1.0 or top_k < 1:
            raise ValueError("siren: need 0 < top_p <= 1, 0 <= quantile <= 1 and top_k >= 1")
        if aggregation is not None:
            token_weights_for(aggregation, torch.ones(1, 1), norm_length)  # validate early, at build time
        self.top_p, self.top_k, self.quantile = float(top_p), int(top_k), float(quantile)
        self.aggregation, self.norm_length = aggregation, norm_length
        self.anchor: float | None = None if anchor is None else float(anchor)

    def _entropy_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda logits, _target_ids: top_p_entropy(logits, self.top_p, self.top_k)

    def token_fns(self) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
        return {CURRENT_KEY: self._entropy_fn()}

    def old_token_fns(self) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
        return {OLD_KEY: self._entropy_fn()}

    def prepare(self, batch: Any, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """First step only: fix the anchor from the old-policy top-p entropies of the whole batch."""
        if self.anchor is None:
            if OLD_KEY not in batch.extras:
                raise ValueError(f"siren: batch.extras has no {OLD_KEY!r} (the old-policy scoring pass must run "
                                 "the component's old_token_fns)")
            self.anchor = float(peak_entropy_mean(batch.extras[OLD_KEY], batch.response_mask, self.quantile))
        return {}

    def __call__(self, ctx: TokenContext) -> tuple[Tensor, dict[str, Tensor]]:
        if self.anchor is None:
            raise ValueError("siren: no anchor yet (prepare() sets it on the first step, or pass anchor=...)")
        if CURRENT_KEY not in ctx.extras:
            raise ValueError(f"siren: ctx.extras has no {CURRENT_KEY!r} (the training pass must run token_fns)")
        topp_entropy = ctx.extras[CURRENT_KEY]  # [B, L], differentiable
        response_mask = ctx.batch.response_mask
        peak_entropy = peak_entropy_mean(topp_entropy, response_mask, self.quantile)  # scalar, differentiable
        sq_deviation = (peak_entropy - self.anchor) ** 2
        # by default the recipe's own aggregation (the trainer passes it in ctx), so the two cannot disagree
        aggregation = self.aggregation or ctx.aggregation
        norm_length = self.norm_length if self.aggregation else ctx.norm_length
        weights = token_weights_for(aggregation, response_mask, norm_length).to(topp_entropy.dtype)
        metrics = {
            "peak_entropy": peak_entropy.detach(),
            "anchor": torch.tensor(self.anchor),
            "sq_deviation": sq_deviation.detach(),
            "topp_entropy": ops.masked_mean(topp_entropy.detach(), response_mask),
        }
        return sq_deviation * weights, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor = state["anchor"]
