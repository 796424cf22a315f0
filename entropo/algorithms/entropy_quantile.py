"""TRL GRPOConfig entropy options: the top-entropy-quantile token mask and the adaptive entropy coefficient.

- ``entropy_quantile_mask`` (shaping, stage "advantage"): keep in the policy loss only the top ``top_quantile``
  fraction of response tokens by entropy — TRL's ``top_entropy_quantile`` (rho), from Wang et al., "Beyond the 80/20
  Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning", arXiv 2506.01939
  (the paper recommends rho = 0.2).
- ``trl_adaptive_entropy`` (controller): TRL's ``use_adaptive_entropy`` rule (from Skywork-OR1, arXiv 2505.22312).
- TRL's entropy bonus, which acts on the same tokens as the policy loss, is the ``entropy`` regularizer with
  ``tokens: loss``.

Checked in TRL's source (huggingface/trl ``trl/trainer/grpo_trainer.py`` / ``grpo_config.py``, snapshot
v1.9.0-26-gf2cd577; the GRPOConfig field list and defaults match the 1.16 documentation: ``top_entropy_quantile=1.0``,
``entropy_coef=0.0``, ``entropy_coef_min=0.0``, ``entropy_coef_max=1.0``, ``entropy_coef_delta=0.005``,
``entropy_target=0.2``):

- Quantile mask: TRL takes the entropies of the valid completion tokens, ``threshold = torch.quantile(H, 1 - rho)``
  (linear interpolation) and keeps tokens with H >= threshold; the policy per-token loss is multiplied by that mask
  (padding keeps its denominator, as here). DIFFERENCES: TRL computes the quantile inside ``compute_loss``, i.e. per
  gradient-accumulation micro-batch (gathered over data-parallel ranks), with the entropies of the current forward
  pass; here it is computed once over ALL response tokens of the whole optimized batch with the pre-update entropy
  H_old (``batch.old_entropy``), so it does not depend on the micro-batch split and stays fixed across mini-batches.
  On the first (on-policy) mini-batch the entropies coincide; the token set differs unless TRL's micro-batch is
  the whole batch.
- Adaptive coefficient: after every optimizer step TRL measures the mean current-policy entropy over the tokens of
  the loss (the quantile-masked ones when the mask is on); coef += delta if that entropy <= target, else coef -=
  delta, clamped to [entropy_coef_min, entropy_coef_max]; and the bonus is only APPLIED while the last measured
  entropy is <= target (coef 0 otherwise; before the first measurement the last entropy is +inf, so step 1 has no
  bonus). The built-in ``adaptive_entropy`` controller differs (it always applies its coefficient and increments on
  a strict ``<``), hence this separate controller. DIFFERENCE: TRL updates per optimizer step; the trainer calls
  controllers once per RL step, so the two agree when ``train.mini_batches = ppo_epochs = 1``.
- Entropy bonus: TRL's bonus uses the same token mask as the policy loss; with its default ``loss_type="dapo"`` the
  term is sum(H * mask) / (number of completion tokens), exactly what ``entropy`` with ``tokens: loss`` gives with ``token-mean``
  aggregation (the trainer divides regularizers by the response-token count). The built-in ``entropy``
  regularizer covers every response token instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.controllers import Controller
from entropo.batch import Batch
from entropo.registry import register

QUANTILE_PAPER = ("Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for "
                  "LLM Reasoning, arXiv 2506.01939; TRL GRPOConfig.top_entropy_quantile")
ADAPTIVE_PAPER = "Skywork-OR1 adaptive entropy control, arXiv 2505.22312; TRL GRPOConfig.use_adaptive_entropy"


def high_entropy_mask(entropy: Tensor, valid: Tensor, top_quantile: float) -> tuple[Tensor, float]:
    """(bool [B, L], threshold): valid tokens with entropy >= the (1 - top_quantile) quantile of the valid tokens'
    entropies (linear interpolation, as torch.quantile / TRL). top_quantile = 0 keeps only the maximum."""
    values = entropy[valid].float()
    if values.numel() == 0:
        return torch.zeros_like(valid), float("nan")
    threshold = torch.quantile(values, 1.0 - top_quantile)
    return (entropy >= threshold) & valid, float(threshold)


@register("shaping", "entropy_quantile_mask", paper=QUANTILE_PAPER, stage="advantage")
def entropy_quantile_mask(batch: Batch, top_quantile: float = 0.2) -> dict[str, float]:
    """token_weights *= 1[H_old >= quantile_{1 - top_quantile}(H_old over ALL response tokens of the batch)].

    Example: valid entropies [0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0], top_quantile 0.2 -> the 0.8 quantile sits at
    position 0.8 * 6 = 4.8 -> 1.0 + 0.8 * (1.5 - 1.0) = 1.4 -> only the tokens with 1.5 and 2.0 stay.
    Metrics: ``entropy_quantile_threshold``, ``entropy_quantile_kept_frac`` (of response tokens)."""
    if not 0.0 <= top_quantile <= 1.0:
        raise ValueError(f"entropy_quantile_mask: top_quantile must be in [0, 1], got {top_quantile}")
    if batch.old_entropy is None:
        raise ValueError("entropy_quantile_mask needs batch.old_entropy (the old-policy scoring pass)")
    valid = batch.response_mask > 0
    keep, threshold = high_entropy_mask(batch.old_entropy, valid, top_quantile)
    batch.token_weights = batch.token_weights * keep.to(batch.token_weights.dtype)
    return {"entropy_quantile_threshold": threshold,
            "entropy_quantile_kept_frac": float(ops.masked_mean(keep.float(), batch.response_mask))}


@register("controller", "trl_adaptive_entropy", paper=ADAPTIVE_PAPER)
class TRLAdaptiveEntropy(Controller):
    """TRL's adaptive entropy coefficient: coef += delta when the measured entropy <= target, else -= delta (clamped
    to [coef_min, coef_max]); ``value()`` is coef while the last measured entropy <= target and 0 otherwise.

    Params (TRL names): ``init_coef`` (entropy_coef, 0), ``target`` (entropy_target, 0.2 nats), ``delta``
    (entropy_coef_delta, 0.005), ``coef_min`` / ``coef_max`` (0 / 1), ``metric`` (the step metric holding the
    entropy, default "entropy" = the ``entropy`` regularizer's metric). State: coef, last_entropy.
    Example: init 0, target 0.5, delta 0.1: entropies 0.4, 0.45, 0.6 -> coef 0.1, 0.2, 0.1 and value() 0.1, 0.2, 0.
    """

    def __init__(self, init_coef: float = 0.0, target: float = 0.2, delta: float = 0.005, coef_min: float = 0.0,
                 coef_max: float = 1.0, metric: str = "entropy"):
        if coef_min > coef_max:
            raise ValueError("trl_adaptive_entropy: coef_min must be <= coef_max")
        if delta < 0:
            raise ValueError("trl_adaptive_entropy: delta must be >= 0")
        self.coef, self.target, self.delta = float(init_coef), float(target), float(delta)
        self.coef_min, self.coef_max, self.metric = float(coef_min), float(coef_max), metric
        self.last_entropy = math.inf  # nothing measured yet: TRL applies no bonus before its first measurement

    def value(self) -> float:
        return float(self.coef) if self.last_entropy <= self.target else 0.0

    def update(self, metrics: dict[str, Any]) -> None:
        if self.metric not in metrics:
            return
        entropy = float(metrics[self.metric])
        step = self.delta if entropy <= self.target else -self.delta
        self.coef = min(max(self.coef + step, self.coef_min), self.coef_max)
        self.last_entropy = entropy
