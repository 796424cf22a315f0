"""Clip-Cov and KL-Cov: restrain the few tokens whose log-prob/advantage covariance drives entropy collapse.

Paper: Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv 2505.22617.
Official code checked: PRIME-RL/Entropy-Mechanism-of-RL ``verl/trainer/ppo/core_algos.py`` (stored copy at commit
6071b11; ``compute_policy_loss_clip_cov`` / ``compute_policy_loss_kl_cov``) and its port upstream to volcengine/verl
``verl/trainer/ppo/core_algos.py`` (registered as policy losses ``"clip_cov"`` / ``"kl_cov"``).

Why it works: for a softmax policy the first-order entropy change of one update is minus the covariance between a
token's log-probability and its (step-size-scaled) logit change; with policy-gradient steps that change is
proportional to the advantage. Tokens with a large centred product C_n = (l_n - mean l) (A_n - mean A) —
confident-and-rewarded or rare-and-penalised — are the ones that eat entropy, so both methods restrain those.

What was verified in the official code and how each open point is resolved here:

- Covariance [verified]: C_n = (A_n - mean_N A) (l_n - mean_N l) over the N valid tokens, l detached. The released
  code (``compute_policy_loss_clip_cov`` / ``compute_policy_loss_kl_cov``, called by the actor on every micro-batch)
  computes it per MICRO-BATCH with the CURRENT log-probs. ``scope`` chooses:

  * ``scope="batch"`` (default): the ``prepare`` hook computes it ONCE over every token of the whole optimized batch
    with the pre-update log-probs (pi_old). On the first mini-batch of a step with one micro-batch the two coincide
    (rho = 1); the selection then stays fixed for later mini-batches / epochs and never depends on the micro-batch
    split. Valid tokens are those in the loss (``token_weights > 0``), i.e. verl's loss mask.
  * ``scope="micro"``: the released behaviour exactly — on every call of the objective (one micro-batch) C, the
    candidate set and the selection are computed from the tensors of that call with the current log-probs; N is the
    micro-batch's number of valid tokens. In off-policy mini-batches / epochs the selected tokens differ from the
    whole-batch rule.
- Clip-Cov [verified]: candidates are valid tokens with clip_cov_lb < C_n < clip_cov_ub (strict) that the standard
  clip has not already clipped (released: ``pg_losses2 > pg_losses1``, strict); m = max(1, floor(clip_cov_ratio *
  N)) of them are drawn uniformly without replacement (all of them when fewer), in row-major order of the
  candidates as ``torch.nonzero`` lists them; their loss is multiplied by 0 (exact zero gradient; they still count
  in the aggregation denominator). With ``scope="batch"`` rho = 1 at prepare time, so no token is clipped yet and
  the "not already clipped" condition is vacuous; the standard clip is applied as usual at loss time (zeroing a token
  that is also clipped later changes only a constant). The draw uses a torch generator: in the trainer the seeded
  update generator handed to ``prepare`` (also kept for the per-call draws of ``scope="micro"``), so runs are
  reproducible; with none (a direct call) the global RNG, as the released code's ``torch.randperm`` — so with the
  same RNG state the micro scope draws exactly the released tokens.
- KL-Cov [verified]: the top k' = max(1, floor(kl_cov_ratio * N)) tokens by C_n get loss -rho A + beta |l - l_old|,
  every other token -rho A; there is NO ratio clipping anywhere in KL-Cov (the official code ignores clip_ratio).
  At rho = 1 (first mini-batch, one epoch) |l - l_old| = 0 with zero (sub)gradient, so KL-Cov only acts on later,
  off-policy mini-batches / epochs: use ``train.mini_batches >= 2`` or ``ppo_epochs >= 2``. Ties in C are broken
  by ``torch.topk`` over the flattened [B, L] scores (the released code: over the list of valid tokens); with
  continuous log-probs ties do not occur.
- Units: ``clip_cov_ratio`` and ``kl_cov_ratio`` are FRACTIONS of the valid tokens (verl port convention, default
  2e-4), not the original repo's percentages (its scripts' ``k_percent=0.2`` means kl_cov_ratio = 2e-3).

Metrics: ``cov_selected_frac`` (fraction of valid tokens selected; the trainer's token-weighted averaging over
micro-batches turns it into the whole-batch fraction), plus the usual ratio metrics; KL-Cov adds ``abs_log_ratio``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.objectives import (
    ratio_metrics,
    clipped_surrogate,
    importance_ratio,
)
from entropo.registry import register

PAPER = "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models, arXiv 2505.22617"
CLIP_COV_KEY = "clip_cov_selected"  # batch.extras entry: [B, L] float, 1 on tokens whose gradient is removed
KL_COV_KEY = "kl_cov_selected"  # batch.extras entry: [B, L] float, 1 on tokens that get the |log ratio| penalty


def centred_covariance(logprobs: Tensor, advantages: Tensor, weights: Tensor) -> Tensor:
    """C [B, L] = (l - mean_w l) (A - mean_w A), means weighted by ``weights`` (a 0/1 mask for the token rule);
    0 where the weight is 0. ``ops.masked_mean(C, weights)`` is then the covariance Cov_w(l, A): with weights = pi over
    the actions of one state it is Cov_{a~pi}(log pi(a), A(a)), the entropy-dynamics term of the paper."""
    logprobs, advantages = logprobs.detach().float(), advantages.detach().float()
    centred_logp = logprobs - ops.masked_mean(logprobs, weights)
    centred_adv = advantages - ops.masked_mean(advantages, weights)
    return (centred_logp * centred_adv).where(weights > 0, 0.0)


def select_clip_cov(cov: Tensor, valid: Tensor, ratio: float, lower: float, upper: float,
                    generator: torch.Generator | None, eligible: Tensor | None = None) -> Tensor:
    """Bool [B, L]: m = max(1, floor(ratio * N)) tokens drawn uniformly from {eligible, lower < C < upper} (all of
    them when there are fewer), N = number of valid tokens; ``eligible`` defaults to ``valid`` (the micro scope passes
    the valid tokens the standard clip has not clipped). The draw is on the CPU with ``generator`` (None: the global
    RNG)."""
    num_valid = int(valid.sum())
    eligible = valid if eligible is None else eligible & valid
    candidates = (eligible & (cov > lower) & (cov < upper)).flatten().nonzero().squeeze(-1).cpu()
    selected = torch.zeros(cov.numel(), dtype=torch.bool)
    if num_valid and candidates.numel():
        budget = max(1, int(ratio * num_valid))
        order = torch.randperm(candidates.numel(), generator=generator)
        selected[candidates[order[:budget]]] = True
    return selected.view_as(cov).to(cov.device)


def select_top_cov(cov: Tensor, valid: Tensor, ratio: float) -> Tensor:
    """Bool [B, L]: the k' = max(1, floor(ratio * N)) valid tokens with the largest C (N = number of valid tokens)."""
    num_valid = int(valid.sum())
    selected = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if num_valid:
        k = min(num_valid, max(1, int(ratio * num_valid)))
        scores = cov.flatten().where(valid.flatten(), float("-inf"))
        selected[torch.topk(scores, k).indices] = True
    return selected.view_as(cov)


def _valid_tokens(batch) -> Tensor:
    return batch.token_weights > 0


def _check_scope(name: str, scope: str) -> None:
    if scope not in ("batch", "micro"):
        raise ValueError(f"{name}: unknown scope {scope!r}; allowed: 'batch' (whole batch, pre-update log-probs; "
                         "the default) or 'micro' (per micro-batch, current log-probs: the released code)")


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} is a fraction of the valid tokens in (0, 1] (e.g. 2e-4), got {value}")


@register("objective", "clip_cov", paper=PAPER)
class ClipCov:
    """Clip-Cov: PPO clipped surrogate with the gradient of a few random high-covariance tokens removed.

    Params: ``clip_low`` / ``clip_high`` (standard clip, default 0.2 / 0.2; the paper's scripts use 1 / 1),
    ``clip_cov_ratio`` (fraction of valid tokens to detach, default 2e-4), ``clip_cov_lb`` / ``clip_cov_ub``
    (covariance band, default 1 / 5), ``scope`` ("batch": selection made in ``prepare`` over the whole batch with
    pi_old, the default; "micro": per micro-batch with the current log-probs, as the released code; see module doc).
    Example (spec toy): A = [1,1,1,-1,-1,-1], p = [.9,.5,.1,.9,.5,.1] -> C = [0.928, 0.341, -1.269, -0.928, -0.341,
    1.269]; band (1, 5) -> only token 5 is a candidate and it is detached.
    """

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.2, clip_cov_ratio: float = 2e-4,
                 clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0, scope: str = "batch"):
        _check_ratio("clip_cov_ratio", clip_cov_ratio)
        _check_scope("clip_cov", scope)
        if clip_cov_lb >= clip_cov_ub:
            raise ValueError(f"clip_cov needs clip_cov_lb < clip_cov_ub, got {clip_cov_lb} >= {clip_cov_ub}")
        self.clip_low, self.clip_high = clip_low, clip_high
        self.ratio, self.lower, self.upper = clip_cov_ratio, clip_cov_lb, clip_cov_ub
        self.scope = scope
        self.generator: torch.Generator | None = None  # micro scope: the trainer's update generator (set in prepare)

    def prepare(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if self.scope == "micro":
            self.generator = generator  # the per-call draws of this step come from the trainer's seeded generator
            return {}
        valid = _valid_tokens(batch)
        cov = centred_covariance(batch.old_logprobs, batch.advantages, valid.float())
        selected = select_clip_cov(cov, valid, self.ratio, self.lower, self.upper, generator)
        return {CLIP_COV_KEY: selected.float()}

    def select_micro(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
        """Bool [B, L]: the released per-call selection — C from the current (detached) log-probs of these tokens,
        candidates in the band and not clipped by the standard clip, m = max(1, floor(ratio * N)) drawn."""
        valid = mask > 0
        ratio = importance_ratio(logprobs.detach(), old_logprobs)
        unclipped = -advantages * ratio
        clipped = -advantages * ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        cov = centred_covariance(logprobs, advantages, valid.float())
        return select_clip_cov(cov, valid, self.ratio, self.lower, self.upper, self.generator,
                               eligible=~(clipped > unclipped))

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                 extras: dict | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if self.scope == "micro":
            selected = self.select_micro(logprobs, old_logprobs, advantages, mask)
        elif not extras or CLIP_COV_KEY not in extras:
            raise ValueError("clip_cov: batch.extras has no selection; its prepare hook must run on the whole batch "
                             "(or use scope='micro')")
        else:
            selected = extras[CLIP_COV_KEY] > 0
        ratio = importance_ratio(logprobs, old_logprobs)
        # masked_fill, not a product with a detached copy: the selected entries get exactly zero gradient.
        loss = clipped_surrogate(ratio, advantages, self.clip_low, self.clip_high).masked_fill(selected, 0.0)
        metrics = ratio_metrics(ratio, logprobs, old_logprobs, advantages, mask, self.clip_low, self.clip_high)
        metrics["cov_selected_frac"] = ops.masked_mean(selected.float(), (mask > 0).float())
        return loss, metrics


@register("objective", "kl_cov", paper=PAPER)
class KLCov:
    """KL-Cov: unclipped surrogate -rho A, plus ``kl_coef`` * |l - l_old| on the top ``kl_cov_ratio`` fraction of
    tokens by covariance (selected once per batch in ``prepare`` with pi_old, or per micro-batch with the current
    log-probs when ``scope="micro"``, as the released code).

    Params: ``kl_cov_ratio`` (fraction, default 2e-4; the paper's 7B scripts mean 2e-3), ``kl_coef`` (beta, verl's
    ``ppo_kl_coef``, default 1), ``scope`` ("batch" | "micro"). Zero effect at rho = 1: needs off-policy
    mini-batches / epochs.
    Example (spec toy above): kl_cov_ratio = 0.2, N = 6 -> k' = 1 -> token 5; 0.5 -> tokens {5, 0, 1}.
    """

    def __init__(self, kl_cov_ratio: float = 2e-4, kl_coef: float = 1.0, scope: str = "batch"):
        _check_ratio("kl_cov_ratio", kl_cov_ratio)
        _check_scope("kl_cov", scope)
        self.ratio, self.kl_coef, self.scope = kl_cov_ratio, kl_coef, scope

    def prepare(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if self.scope == "micro":
            return {}
        valid = _valid_tokens(batch)
        cov = centred_covariance(batch.old_logprobs, batch.advantages, valid.float())
        return {KL_COV_KEY: select_top_cov(cov, valid, self.ratio).float()}

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                 extras: dict | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if self.scope == "micro":  # the released rule: top-k of C over this call's tokens, current log-probs
            valid = mask > 0
            selected = select_top_cov(centred_covariance(logprobs, advantages, valid.float()), valid, self.ratio)
        elif not extras or KL_COV_KEY not in extras:
            raise ValueError("kl_cov: batch.extras has no selection; its prepare hook must run on the whole batch "
                             "(or use scope='micro')")
        else:
            selected = extras[KL_COV_KEY] > 0
        ratio = importance_ratio(logprobs, old_logprobs)
        abs_log_ratio = (logprobs - old_logprobs).abs()
        loss = -advantages * ratio + (self.kl_coef * abs_log_ratio).where(selected, 0.0)
        active = (mask > 0).float()
        # KL-Cov has no clip, but the clip fractions at 0.2 still say how far off-policy the mini-batch is.
        metrics = ratio_metrics(ratio, logprobs, old_logprobs, advantages, mask, 0.2, 0.2)
        metrics["cov_selected_frac"] = ops.masked_mean(selected.float(), active)
        metrics["abs_log_ratio"] = ops.masked_mean(abs_log_ratio.detach(), active)
        return loss, metrics
