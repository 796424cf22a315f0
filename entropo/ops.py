"""Tensor operations shared by every algorithm: loss aggregation, KL estimators, masked and per-group statistics.

- ``aggregate``: the four verl loss-aggregation modes (``agg_loss`` in verl ``trainer/ppo/core_algos.py``), with
  global denominators so gradient accumulation over micro-batches equals one pass over the whole mini-batch.
  ``seq-mean-token-sum-norm`` is Dr.GRPO's constant normalisation (Liu et al., arXiv 2503.20783).
- ``kl``: the k1 / k2 / k3 per-token estimators of KL(pi_theta || pi_ref) from Schulman (2020), "Approximating KL
  divergence" (http://joschu.net/blog/kl-approx.html); k3 is verl's ``low_var_kl``.
- ``masked_mean`` / ``masked_var`` / ``masked_whiten``: statistics over the tokens selected by a mask.
- ``broadcast_to_tokens``: one value per sample -> the sample's response tokens.
- ``group_stats``: per-prompt-group count / mean / std of a per-sample value, vectorised over arbitrary group ids
  (the statistics behind GRPO, Shao et al., arXiv 2402.03300).
- ``token_logprobs_and_entropy``: re-exported from ``entropo.models.logprobs``.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATION_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3")

# exp() of a log-ratio beyond this overflows float32 gradients; verl clamps at the same bound.
LOG_RATIO_CLAMP = 20.0
# verl's low_var_kl clamps the k3 value to 10 so one extreme token cannot dominate the KL loss.
K3_MAX = 10.0


# ---- masked statistics -------------------------------------------------------------------------------------------
def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` weighted by ``mask`` (over all elements, or along ``dim``); 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    weighted = values.where(mask != 0, 0.0) * mask  # where first: a NaN/inf on a masked-out token must not leak
    if dim is None:
        return weighted.sum() / mask.sum().clamp_min(1e-8)
    return weighted.sum(dim) / mask.sum(dim).clamp_min(1e-8)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked elements of ``values`` (a scalar). ``unbiased`` divides by (n - 1), as verl does;
    with fewer than two elements the variance is 0."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    sum_sq = (((values - mean) ** 2) * mask).sum()
    count = mask.sum()
    denominator = (count - 1) if unbiased else count
    return sum_sq / denominator.clamp_min(1.0)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-6, shift_mean: bool = True) -> Tensor:
    """``(values - mean) / (std + eps)`` with mean and unbiased std taken over the masked elements only.
    ``shift_mean=False`` only rescales (keeps the mean)."""
    mean = masked_mean(values, mask)
    std = masked_var(values, mask, unbiased=True).sqrt()
    centred = values - mean if shift_mean else values
    return centred / (std + eps)


# ---- per-group statistics ----------------------------------------------------------------------------------------
def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids [B] to dense indices 0..G-1: returns (index [B] long, G)."""
    unique_ids, index = torch.unique(group_ids, return_inverse=True)
    return index, int(unique_ids.numel())


def group_stats(values: Tensor, group_ids: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample statistics of the sample's own group: (count [B], mean [B], std [B]).

    ``values`` [B] is one number per sample; groups may have any size and ids need not be contiguous. ``std`` is
    the unbiased (N-1) estimator when ``unbiased`` (verl / GRPO); a group of one sample has std 0 here (callers
    decide what a singleton group means).
    """
    index, num_groups = group_index(group_ids)
    values = values.to(torch.float32) if not values.is_floating_point() else values
    count = values.new_zeros(num_groups).index_add_(0, index, torch.ones_like(values))
    total = torch.zeros_like(count).index_add_(0, index, values)
    mean = total / count
    sum_sq = torch.zeros_like(count).index_add_(0, index, (values - mean[index]) ** 2)
    denominator = (count - 1) if unbiased else count
    std = (sum_sq / denominator.clamp_min(1.0)).sqrt()
    return count[index], mean[index], std[index]


def broadcast_to_tokens(per_sample: Tensor, response_mask: Tensor) -> Tensor:
    """[B] -> [B, L]: each sample's value on its response tokens, exactly 0 elsewhere (``where``, not a product, so an
    inf/nan value cannot leak into masked positions)."""
    per_sample = per_sample.to(response_mask.dtype) if response_mask.is_floating_point() else per_sample
    return per_sample[:, None].expand_as(response_mask).where(response_mask > 0, 0.0)


# ---- loss aggregation --------------------------------------------------------------------------------------------
def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    response_mask: Tensor | None = None,
    total_tokens: float | Tensor | None = None,
    total_seqs: float | Tensor | None = None,
    norm_length: float | None = None,
) -> Tensor:
    """Reduce a per-token matrix ``values`` [B, L] to a scalar.

    ``mask`` [B, L] (the Batch's ``token_weights``; may be fractional) multiplies ``values``. Denominators come from
    ``response_mask`` (default ``mask != 0``), so de-weighting a token to 0 does not change the denominator (verl
    semantics). With n_i = sum_t response_mask[i, t]:

    - ``token-mean``:              sum(mask * v) / total_tokens                    (DAPO)
    - ``seq-mean-token-mean``:     sum_i [sum_t (mask * v)_i / n_i] / total_seqs   (GRPO, GSPO; rows with n_i = 0 add 0)
    - ``seq-mean-token-sum``:      sum_i sum_t (mask * v)_i / total_seqs
    - ``seq-mean-token-sum-norm``: sum(mask * v) / (total_seqs * norm_length)      (Dr.GRPO)

    ``total_tokens`` (sum of response_mask) and ``total_seqs`` (rows with at least one response token) default to
    this batch's own values. For gradient accumulation the trainer passes the totals of the whole optimizer
    mini-batch, so the sum of the micro-batch results equals the result on the full mini-batch.

    ``norm_length`` is Dr.GRPO's constant (the max generation length); default L = values.shape[1]. verl's
    ``seq-mean-token-sum-norm`` divides only by that constant; we also divide by the number of sequences, following
    Dr.GRPO's "mean over the G responses of (sum over tokens) / constant", so the loss scale does not grow with the
    batch size.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; allowed modes are: {', '.join(AGGREGATION_MODES)}")
    if response_mask is None:
        response_mask = (mask != 0).to(values.dtype)
    weighted = values.where(mask != 0, 0.0) * mask  # [B, L]; where first so garbage on padding cannot leak as NaN
    tokens_per_seq = response_mask.sum(-1)  # [B] n_i

    if mode == "token-mean":
        denominator = response_mask.sum() if total_tokens is None else total_tokens
        return weighted.sum() / _positive(denominator, values)

    seqs = (tokens_per_seq > 0).sum() if total_seqs is None else total_seqs
    seqs = _positive(seqs, values)
    if mode == "seq-mean-token-mean":
        has_tokens = tokens_per_seq > 0
        per_seq_mean = (weighted.sum(-1) / tokens_per_seq.clamp_min(1e-8)).where(has_tokens, 0.0)  # [B]
        return per_seq_mean.sum() / seqs
    if mode == "seq-mean-token-sum":
        return weighted.sum() / seqs
    # seq-mean-token-sum-norm
    length = values.shape[1] if norm_length is None else norm_length
    return weighted.sum() / (seqs * length)


def _positive(denominator: float | Tensor, like: Tensor) -> Tensor:
    # An empty (micro-)batch has a zero numerator; clamping keeps 0 / 0 from producing NaN.
    return torch.as_tensor(denominator, dtype=like.dtype, device=like.device).clamp_min(1e-8)


# ---- KL estimators -----------------------------------------------------------------------------------------------
def kl(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token estimate [B, L] of KL(pi_theta || pi_ref) at tokens sampled from pi_theta (Schulman 2020).

    With x = ref_logprobs - logprobs = log(pi_ref / pi_theta):
    ``k1`` = -x (unbiased, can be negative); ``k2`` = x^2 / 2; ``k3`` = exp(x) - x - 1 (unbiased, >= 0, low variance),
    with x clamped to [-20, 20] and k3 clamped to <= 10 like verl's ``low_var_kl``.
    Example: logprobs = -1, ref = -1.5 gives k1 = 0.5, k2 = 0.125, k3 = exp(-0.5) + 0.5 - 1 = 0.106531.
    """
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if kind == "k3":
        log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (torch.exp(log_ratio) - log_ratio - 1).clamp(max=K3_MAX)
    raise ValueError(f"unknown KL estimator {kind!r}; allowed kinds are: {', '.join(KL_KINDS)}")


# ---- model log-probs ---------------------------------------------------------------------------------------------
def token_logprobs_and_entropy(*args, **kwargs):
    """``(logprobs [B, L], entropy [B, L])`` of each token of ``input_ids`` under ``model``, computed in chunks.

    Re-exported lazily from :func:`entropo.models.logprobs.token_logprobs_and_entropy` (see there for the arguments:
    ``model, input_ids, attention_mask, chunk_size=...``) so that importing ``entropo.ops`` does not import models.
    """
    from entropo.models.logprobs import token_logprobs_and_entropy as f

    return f(*args, **kwargs)
