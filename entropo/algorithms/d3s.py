"""D³S: Dynamic Dual-Level Down-Sampling — train on the rollouts and tokens that carry the most signal.

Paper: "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy Optimization"
(D³S), arXiv 2509.22115. No official code is public (it was in the paper's supplementary material), so this follows
the method spec (paper statements and third-party notes) — entries below marked [spec] could not be checked in code.

One step, after the advantages of the FULL groups have been computed (GRPO/GSPO normalization; never re-normalized):

1. Sample level [spec]: keep N responses of the batch chosen to maximize the (population) variance of their
   sequence advantages A_i. ``level="cross_group"`` (the paper's preferred D³S) picks the N over the whole batch;
   the optimum is always "the k largest plus the N - k smallest" for some k, so all N + 1 such splits are scored
   exactly with prefix sums. ``level="intra_group"`` keeps, from each group of size G, the n = round(frac * G / 2)
   responses with the largest positive A and the n with the most negative A.
2. Token level [spec]: among the kept responses' tokens, keep the top ceil(K * n_tokens) by |A_{i,t}| * H_{i,t}
   over the WHOLE batch (not per response / micro-batch), H the old-policy entropy (detached, pre-update).
3. Schedule [spec]: (frac_N, K)(p) = (1 - p) (init) + p (final), p = step / (total_steps - 1) in [0, 1], read from
   ``step_ctx.step`` (so it resumes correctly without component state).

How it plugs in and how the spec ambiguities (g) are resolved:

- Sample selection is a shaping at stage "advantage" that zeroes the ``token_weights`` of dropped rows, not a
  ``selection`` component: selection runs before the advantage estimator and would change the group statistics,
  while D³S needs advantages from the full groups. The dropped rows stay in the batch (so their tokens still count
  in the aggregation denominators, see next point).
- ``rescale=True`` (default) multiplies the kept token weights by n_response_tokens / n_kept_tokens, so under
  ``token-mean`` aggregation the loss is exactly the mean over the kept tokens ("the loss is computed only on those
  tokens") rather than that mean shrunk by the kept fraction. ``rescale=False`` keeps plain 0/1 masks.
- N and K are fractions of the batch's responses / kept tokens (the paper's four values N_init, N_final, K_init,
  K_final are not recovered; the defaults 0.5 -> 1.0 responses and 0.2 -> 1.0 tokens start aggressive and relax to
  full data, as the paper describes, and are marked VERIFY). At least one response / token is always kept.
- Ties are broken by position (stable sort): earlier rows / tokens win.
- The per-sample A_i is the mean of ``batch.advantages`` over the response tokens (= the broadcast outcome
  advantage for GRPO-style estimators).

Component: shaping ``d3s`` (stage "advantage", stateless). Metrics (``shaping/d3s_*``): ``progress``,
``sample_frac``, ``token_frac`` (scheduled values), ``kept_samples_frac``, ``kept_tokens_frac`` (of all response
tokens), ``adv_var_all`` / ``adv_var_kept`` (population variance of A_i before / after sample selection).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register

PAPER = "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework (D3S), arXiv 2509.22115"
LEVELS = ("cross_group", "intra_group")


def scheduled(init: float, final: float, progress: float) -> float:
    """(1 - p) init + p final with p clamped to [0, 1]."""
    p = min(1.0, max(0.0, progress))
    return (1.0 - p) * init + p * final


def max_variance_subset(values: Tensor, n: int) -> Tensor:
    """keep [M] bool: the n entries of ``values`` [M] whose population variance is largest (exact).

    A max-variance subset of fixed size is always the k largest plus the n - k smallest values for some k, so
    the n + 1 candidates are scored with prefix sums of the sorted values (ties: the top part takes the earlier
    indices, the bottom part the later ones; the first best k wins)."""
    m = values.numel()
    n = max(0, min(n, m))
    keep = torch.zeros(m, dtype=torch.bool, device=values.device)
    if n == 0:
        return keep
    x = values.double()
    # One permutation, largest first (ties: earlier index first); the n - k smallest are its tail, so the two
    # parts never overlap (n <= m).
    order_desc = torch.sort(x, descending=True, stable=True).indices
    order_asc = order_desc.flip(0)
    zero = x.new_zeros(1)
    top_sum = torch.cat([zero, x[order_desc].cumsum(0)])  # [m + 1]: sum of the k largest
    top_sq = torch.cat([zero, (x[order_desc] ** 2).cumsum(0)])
    bot_sum = torch.cat([zero, x[order_asc].cumsum(0)])  # [m + 1]: sum of the j smallest
    bot_sq = torch.cat([zero, (x[order_asc] ** 2).cumsum(0)])
    best_k, best_var = 0, -math.inf
    for k in range(n + 1):
        total = top_sum[k] + bot_sum[n - k]
        total_sq = top_sq[k] + bot_sq[n - k]
        var = float(total_sq / n - (total / n) ** 2)
        if var > best_var + 1e-12:
            best_k, best_var = k, var
    keep[order_desc[:best_k]] = True
    keep[order_asc[: n - best_k]] = True
    return keep


def intra_group_extremes(values: Tensor, group_ids: Tensor, frac: float) -> Tensor:
    """keep [B] bool: per group of size G, the n = max(1, round(frac G / 2)) largest positive values and the n most
    negative ones (fewer when the group has fewer of a sign)."""
    keep = torch.zeros_like(values, dtype=torch.bool)
    for gid in torch.unique(group_ids).tolist():
        members = (group_ids == gid).nonzero().squeeze(-1)
        n_side = max(1, round(frac * members.numel() / 2))
        v = values[members]
        pos_order = torch.sort(v, descending=True, stable=True).indices
        neg_order = torch.sort(v, stable=True).indices
        pos = pos_order[:n_side][v[pos_order[:n_side]] > 0]
        neg = neg_order[:n_side][v[neg_order[:n_side]] < 0]
        keep[members[pos]] = True
        keep[members[neg]] = True
    return keep


def top_token_mask(scores: Tensor, eligible: Tensor, frac: float) -> Tensor:
    """keep [B, L] bool: the ceil(frac * n) eligible tokens with the largest score over the whole tensor
    (n = eligible count; at least one when n > 0; ties: earlier flat position first)."""
    flat_scores, flat_eligible = scores.flatten(), eligible.flatten()
    n = int(flat_eligible.sum())
    keep = torch.zeros_like(flat_eligible)
    if n == 0:
        return keep.view_as(eligible)
    k = min(n, max(1, math.ceil(frac * n - 1e-9)))
    ranked = torch.sort(flat_scores.masked_fill(~flat_eligible, -math.inf), descending=True, stable=True).indices
    keep[ranked[:k]] = True
    return keep.view_as(eligible)


def population_variance(values: Tensor) -> float:
    return float(values.double().var(unbiased=False)) if values.numel() > 0 else 0.0


@register("shaping", "d3s", paper=PAPER, stage="advantage")
def d3s(batch: Batch, sample_frac_init: float = 0.5, sample_frac_final: float = 1.0, token_frac_init: float = 0.2,
        token_frac_final: float = 1.0, level: str = "cross_group", rescale: bool = True,
        total_steps: int | None = None, step_ctx=None) -> dict[str, float]:
    """Dual-level down-sampling of the whole batch: zero the token_weights of dropped responses and of the
    low-|A|*H tokens of the kept ones, with the fractions scheduled over training."""
    if level not in LEVELS:
        raise ValueError(f"d3s: unknown level {level!r}; allowed: {', '.join(LEVELS)}")
    if batch.old_entropy is None or batch.advantages is None:
        raise ValueError("d3s needs batch.advantages and batch.old_entropy (run after the scoring pass)")
    step = step_ctx.step if step_ctx is not None else 0
    if total_steps is None:
        total_steps = step_ctx.recipe.train.steps if step_ctx is not None else 1
    progress = step / max(1, total_steps - 1)
    sample_frac = scheduled(sample_frac_init, sample_frac_final, progress)
    token_frac = scheduled(token_frac_init, token_frac_final, progress)
    return down_sample(batch, sample_frac, token_frac, level=level, rescale=rescale) | {
        "d3s_progress": min(1.0, progress), "d3s_sample_frac": sample_frac, "d3s_token_frac": token_frac}


def down_sample(batch: Batch, sample_frac: float, token_frac: float, level: str = "cross_group",
                rescale: bool = True) -> dict[str, float]:
    """The schedule-free part of ``d3s``: sample-level then token-level selection, in place on token_weights."""
    response_mask = batch.response_mask
    in_loss = (batch.token_weights > 0) & (response_mask > 0)  # [B, L]
    has_tokens = in_loss.any(-1)  # [B]
    seq_adv = ops.masked_mean(batch.advantages.float(), response_mask, dim=-1)  # [B] A_i
    rows = has_tokens.nonzero().squeeze(-1)
    if level == "cross_group":
        n_keep = max(1, round(sample_frac * rows.numel())) if rows.numel() else 0
        keep_rows = torch.zeros_like(has_tokens)
        keep_rows[rows] = max_variance_subset(seq_adv[rows], n_keep)
    else:
        keep_rows = intra_group_extremes(seq_adv, batch.group_ids, sample_frac) & has_tokens
    eligible = in_loss & keep_rows[:, None]
    scores = batch.advantages.float().abs() * batch.old_entropy.float()  # |A_{i,t}| * H_{i,t}
    keep_tokens = top_token_mask(scores, eligible, token_frac)
    weights = batch.token_weights * keep_tokens.to(batch.token_weights.dtype)
    n_response, n_kept = float(in_loss.sum()), float(keep_tokens.sum())
    if rescale and n_kept > 0:
        weights = weights * (n_response / n_kept)
    batch.token_weights = weights
    return {
        "d3s_kept_samples_frac": float(keep_rows.sum()) / max(1, rows.numel()),
        "d3s_kept_tokens_frac": n_kept / max(1.0, n_response),
        "d3s_adv_var_all": population_variance(seq_adv[rows]),
        "d3s_adv_var_kept": population_variance(seq_adv[keep_rows]),
    }
