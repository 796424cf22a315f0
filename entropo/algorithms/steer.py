"""STEER: Stabilizing Token-level Entropy-changE via Reweighting.

Paper: "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective", arXiv 2510.10150.
Official code checked: zz-haooo/STEER ``verl/trainer/ppo/core_algos.py`` (``compute_token_weights`` and
``compute_policy_loss_with_entropy``, loss mode ``entropy_control``), ``verl/workers/actor/dp_actor.py`` (the
entropies fed in are the ones stored by the old-policy log-prob pass; the log-probs are the current micro-batch's)
and ``run/run_exp.sh`` / ``run/run_linear.sh`` (stored copy at commit b31df71).

Each token gets a first-order estimate Omega of how much this update will move the entropy; tokens with a large |Omega|
have their loss down-weighted by lambda in [lambda_min, lambda_max], so the per-step entropy change stays moderate.

Verified against the official code and resolved here:

- Omega (``omega="code"``, default) [verified]: Omega = (A / p_old) * p (1 - p) (log p + H_old), p = pi(token)
  clamped to [1e-8, 1 - 1e-8], p_old clamped to [1e-8, 1], H_old the old-policy token entropy; non-finite -> 0; |Omega|
  is used. The released code evaluates p with the CURRENT policy inside every micro-batch and maps |Omega| to weights
  with the min / max over that micro-batch's valid tokens. ``scope`` chooses:

  * ``scope="batch"`` (default): the weights are computed ONCE per step in ``prepare`` over the whole batch with the
    pre-update policy, so p = p_old (rho = 1, as on the released first mini-batch) and Omega = A (1 - p_old)(log p_old
    + H_old), min / max over the whole batch. The weights then stay fixed across mini-batches/epochs and do not
    depend on the micro-batch split.
  * ``scope="micro"``: the released behaviour exactly — on every call of the objective, p from the current (detached)
    log-probs, H_old from the micro-batch's ``old_entropy``, min / max (and the exp mapping's max) over that call's
    valid tokens. Only with ``omega="code"`` (the released code has no exact variant).
- Omega (``omega="exact"``) [spec (g)]: the code's p (1 - p)(log p + H) is only an approximation of the
  first-order entropy change of a softmax whose logits move by eta A (e_a - pi): the exact value is
  -eta A [p_a (log p_a + H) - sum_j p_j^2 (log p_j + H)]. ``omega="exact"`` uses |A [p_a (log p_a + H) -
  sum_j p_j^2 (log p_j + H)]|, with sum_j p_j^2 (log p_j + H) taken from the full old distribution through an
  ``old_token_fns`` functional. Off by default: the paper's results use the code's definition.
- Exponential mapping (``mapping="exp"``, the main setting of ``run_exp.sh``) [verified]: k = -ln(lambda_min) /
  max(max|Omega|, 0.02), lambda = clip(exp(-k |Omega|), lambda_min, 1); the upper bound is 1 whatever lambda_max says
  (exp(-k|Omega|) <= 1), so the exp mapping only ever down-weights.
- Linear mapping (``mapping="linear"``, ``run_linear.sh``) [verified]: lambda = clip(lambda_max - (|Omega| - min) *
  (lambda_max - lambda_min) / (max - min), lambda_min, lambda_max); (lambda_min + lambda_max) / 2 when max == min.
  min / max over all valid tokens of the whole batch (``scope="batch"``) or of the micro-batch (``"micro"``).
- Defaults: lambda_min = 0.8; lambda_max = 1.0 for exp (the script) and 1.2 for linear (the script and the function
  signature; the actor's fallback 0.95 / 1.05 is not used by any script). Loss: dual-clip PPO per-token loss
  (clip 0.2 / 0.28, c = 10) times lambda, lambda detached; the recipe's aggregation applies (token-mean in the paper).

Metrics: ``steer_weight_mean`` / ``steer_weight_min`` / ``steer_weight_max`` over the tokens in the loss, plus the
dual-clip metrics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.objectives import dual_clip
from entropo.batch import Batch
from entropo.registry import register

PAPER = "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective (STEER), arXiv 2510.10150"
WEIGHT_KEY = "steer_weight"  # batch.extras entry: [B, L] lambda per token (0 outside the loss tokens)
SQUARED_TERM_KEY = "steer_sum_p2_logp_plus_h"  # old_token_fns output: sum_j p_j^2 (log p_j + H) per token
MIN_MAX_OMEGA = 0.02  # floor of max|Omega| in k, from the official code (keeps tiny batches from over-penalising)


def omega_code(advantages: Tensor, logprobs: Tensor, old_logprobs: Tensor, old_entropy: Tensor) -> Tensor:
    """|Omega| [B, L] = |(A / p_old) p (1 - p)(log p + H_old)| (official definition); non-finite values -> 0."""
    p = logprobs.exp().clamp(1e-8, 1.0 - 1e-8)
    p_old = old_logprobs.exp().clamp(1e-8, 1.0)
    omega = advantages / p_old * p * (1.0 - p) * (p.log() + old_entropy)
    return omega.where(omega.isfinite(), 0.0).abs()


def omega_exact(advantages: Tensor, old_logprobs: Tensor, old_entropy: Tensor, sum_p2_logp_plus_h: Tensor) -> Tensor:
    """|Omega| [B, L] = |A [p (log p + H) - sum_j p_j^2 (log p_j + H)]|: the exact first-order entropy change (per unit
    step) of a softmax whose logits move by A (e_token - pi)."""
    p = old_logprobs.exp()
    omega = advantages * (p * (old_logprobs + old_entropy) - sum_p2_logp_plus_h)
    return omega.where(omega.isfinite(), 0.0).abs()


def sum_p2_logp_plus_h(logits: Tensor, target_ids: Tensor) -> Tensor:
    """Per-token functional [N]: sum_j p_j^2 (log p_j + H) of softmax(logits) (target_ids unused)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1, keepdim=True)
    return (p * p * (log_p + entropy)).sum(-1)


def exp_weights(abs_omega: Tensor, valid: Tensor, lambda_min: float) -> Tensor:
    """lambda [B, L] = clip(exp(-k |Omega|), lambda_min, 1), k = -ln(lambda_min) / max(max_valid |Omega|, 0.02)."""
    top = float(abs_omega[valid].max()) if valid.any() else 0.0
    k = -math.log(lambda_min) / max(top, MIN_MAX_OMEGA)
    return torch.exp(-k * abs_omega).clamp(lambda_min, 1.0).where(valid, 0.0)


def linear_weights(abs_omega: Tensor, valid: Tensor, lambda_min: float, lambda_max: float) -> Tensor:
    """lambda [B, L]: |Omega| mapped linearly from [min, max] (over the valid tokens) onto [lambda_max, lambda_min]."""
    if not valid.any():
        return torch.zeros_like(abs_omega)
    lo, hi = float(abs_omega[valid].min()), float(abs_omega[valid].max())
    if hi > lo:
        weights = lambda_max - (abs_omega - lo) * (lambda_max - lambda_min) / (hi - lo)
    else:
        weights = torch.full_like(abs_omega, (lambda_min + lambda_max) / 2)
    return weights.clamp(lambda_min, lambda_max).where(valid, 0.0)


@register("objective", "steer", paper=PAPER)
class Steer:
    """Dual-clip PPO token loss x lambda (detached), lambda from the token's estimated entropy change |Omega|.

    Params: ``clip_low`` 0.2, ``clip_high`` 0.28, ``clip_c`` 10 (dual-clip cap), ``lambda_min`` 0.8, ``lambda_max``
    (None -> 1.0 for exp, 1.2 for linear; the exp mapping is capped at 1 regardless), ``mapping`` "exp" | "linear",
    ``omega`` "code" | "exact", ``scope`` "batch" (weights computed in ``prepare`` over the whole batch with pi_old,
    the default) | "micro" (per micro-batch with the current policy, as the released code; see module doc).
    Example (spec toy): A = 1, p = p_old = [0.9, 0.5, 0.1], H_old = [0.4, 1.0, 2.0] -> |Omega| = [0.02946, 0.15343,
    0.27233]; exp -> k = ln(1.25) / 0.27233 = 0.81940, lambda = [0.97615, 0.88186, 0.8]; linear [0.8, 1.2] ->
    lambda = [1.2, 0.99583, 0.8].
    """

    def __init__(self, clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float = 10.0, lambda_min: float = 0.8,
                 lambda_max: float | None = None, mapping: str = "exp", omega: str = "code", scope: str = "batch"):
        if scope not in ("batch", "micro"):
            raise ValueError(f"steer: unknown scope {scope!r}; allowed: 'batch' (whole batch, pre-update policy; the "
                             "default) or 'micro' (per micro-batch, current policy: the released code)")
        if scope == "micro" and omega != "code":
            raise ValueError("steer: scope='micro' reproduces the released code, which has only omega='code'")
        if mapping not in ("exp", "linear"):
            raise ValueError(f"steer: mapping must be 'exp' or 'linear', got {mapping!r}")
        if omega not in ("code", "exact"):
            raise ValueError(f"steer: omega must be 'code' or 'exact', got {omega!r}")
        if lambda_max is None:
            lambda_max = 1.0 if mapping == "exp" else 1.2
        if not 0.0 < lambda_min <= lambda_max:
            raise ValueError(f"steer needs 0 < lambda_min <= lambda_max, got {lambda_min}, {lambda_max}")
        if mapping == "exp" and lambda_min >= 1.0:
            raise ValueError("steer: the exp mapping needs lambda_min < 1")
        self.clip_low, self.clip_high, self.clip_c = clip_low, clip_high, clip_c
        self.lambda_min, self.lambda_max, self.mapping, self.omega = lambda_min, lambda_max, mapping, omega
        self.scope = scope

    def old_token_fns(self) -> dict:
        return {SQUARED_TERM_KEY: sum_p2_logp_plus_h} if self.omega == "exact" else {}

    def token_weights(self, advantages: Tensor, old_logprobs: Tensor, old_entropy: Tensor, valid: Tensor,
                      sum_p2: Tensor | None = None, logprobs: Tensor | None = None) -> Tensor:
        """lambda [B, L] for the valid tokens; p = p_old (the pre-update policy; rho = 1) unless ``logprobs`` (the
        current policy's, micro scope) are given. Min / max are over the valid tokens passed in."""
        advantages, old_logprobs, old_entropy = advantages.float(), old_logprobs.float(), old_entropy.float()
        current = old_logprobs if logprobs is None else logprobs.detach().float()
        if self.omega == "exact":
            abs_omega = omega_exact(advantages, old_logprobs, old_entropy, sum_p2.float())
        else:
            abs_omega = omega_code(advantages, current, old_logprobs, old_entropy)
        if self.mapping == "exp":
            return exp_weights(abs_omega, valid, self.lambda_min)
        return linear_weights(abs_omega, valid, self.lambda_min, self.lambda_max)

    def prepare(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if batch.old_entropy is None:
            raise ValueError("steer needs batch.old_entropy (the old-policy scoring pass)")
        if self.scope == "micro":
            return {}
        sum_p2 = batch.extras.get(SQUARED_TERM_KEY)
        if self.omega == "exact" and sum_p2 is None:
            raise ValueError(f"steer omega='exact' needs batch.extras[{SQUARED_TERM_KEY!r}] from old_token_fns")
        valid = batch.token_weights > 0
        return {WEIGHT_KEY: self.token_weights(batch.advantages, batch.old_logprobs, batch.old_entropy, valid, sum_p2)}

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                 extras: dict | None = None, micro_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if self.scope == "micro":
            if micro_batch is None or micro_batch.old_entropy is None:
                raise ValueError("steer scope='micro' needs the micro-batch's old_entropy (the trainer passes it)")
            weights = self.token_weights(advantages, old_logprobs, micro_batch.old_entropy, mask > 0,
                                         logprobs=logprobs)
        elif not extras or WEIGHT_KEY not in extras:
            raise ValueError("steer: batch.extras has no weights; its prepare hook must run on the whole batch "
                             "(or use scope='micro')")
        else:
            weights = extras[WEIGHT_KEY].detach()
        loss, metrics = dual_clip(logprobs, old_logprobs, advantages, mask, clip_low=self.clip_low,
                                  clip_high=self.clip_high, clip_c=self.clip_c)
        active = mask > 0
        metrics["steer_weight_mean"] = ops.masked_mean(weights, active.float())
        if active.any():
            metrics["steer_weight_min"] = weights[active].min()
            metrics["steer_weight_max"] = weights[active].max()
        return loss * weights, metrics
