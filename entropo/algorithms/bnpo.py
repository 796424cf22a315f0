"""BNPO: Beta Normalization Policy Optimization.

Paper: "BNPO: Beta Normalization Policy Optimization" (Xiao, Zhang, Cao), arXiv 2506.02864. Official code checked:
changyi7231/BNPO ``recipe/bnpo/src/bnpo_ray_trainer.py`` (``compute_bnpo_outcome_advantage``; the advantage
decomposition loop in ``RayBNPOTrainer.fit``).

The advantage of a response is (r - p_q) / f(p_q; alpha, beta), where p_q is its prompt's success rate and f a Beta
density whose parameters follow the distribution of success rates of the current policy (the variance-minimising
normaliser of the paper); with alpha = beta = 1 it is Dr.GRPO's r - p.

Verified against the official code and resolved here:

- Rewards are first mapped to [0, 1] with (r - r_min) / (r_max - r_min) (defaults 0, 1) [verified].
- p_q = group mean of the mapped rewards; a group of one response has p = 0 (official quirk, kept) [verified].
- mu, sigma^2 = mean and unbiased variance of p_q over the prompts of the batch (one prompt: mu = 0, sigma^2 = 1)
  [verified]; method of moments a = (mu (1 - mu) / sigma^2 - 1) mu, b = (... - 1)(1 - mu); alpha = max(1 + a / 3, 1),
  beta = max(1 + b / 3, 1) [verified]. If all prompts share the same p (sigma^2 = 0), a, b = +inf -> alpha, beta = inf
  in the official code; we guard sigma^2 with a floor of 1e-12 so the parameters stay finite (huge), which gives the
  same result when p is 0 or 1 (numerator 0) and a very peaked, finite normaliser otherwise.
- A = (r - p) * clamp(1 / Beta_pdf(p; alpha, beta), 0, 1e6), broadcast on the response tokens [verified]. At p in
  {0, 1} the pdf can be 0 or inf, but r - p = 0 there, so A = 0 (1/pdf is clamped first, so no 0 * inf).
- "Running policy's success rate": the official code refits (mu, sigma^2) on every batch, i.e. the current policy.
  ``momentum`` (default 0 = official) optionally smooths them across steps with an exponential moving average
  (mu <- m mu_prev + (1 - m) mu_batch, same for sigma^2), which is the state of this class component (checkpointed
  through ``state_dict``) — useful with few prompts per step, where the per-batch fit is noisy.
- Advantage decomposition (``decompose=True``) [verified]: the official loop (``RayBNPOTrainer.fit`` with
  ``use_advantage_decomposition``) computes the BNPO advantage separately for every batch key that contains
  "reward_tensor" — ``acc_reward_tensor`` and ``format_reward_tensor``, the separate accuracy and format rewards
  — each with its own Beta fit, and averages them. The combined reward is stored under ``token_level_scores`` /
  ``token_level_rewards``, whose names do not contain "reward_tensor", so it is NOT one of the averaged terms.
  Here the components are the recipe's reward terms: ``batch.reward_terms`` ({reward label: [B] unweighted
  value}), which the trainer fills from the reward runner when it scores the rollout (nothing is scored twice;
  unfinished rows have no outcome yet and carry 0), each mapped to [0, 1] with its own observed range when it is
  not already inside [0, 1] (the official code assumes [0, 1] terms and asserts p in [0, 1]).
  ``include_total`` (default False = official) optionally adds the composite ``batch.returns()`` as one more
  averaged term — an entropo extension, not in the released code. ``decompose`` itself defaults to off (as the
  paper's main runs).

Metrics go to the trainer through the advantages only; ``last_alpha`` / ``last_beta`` are kept on the instance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register

MAX_INVERSE_DENSITY = 1e6
MIN_VARIANCE = 1e-12


def success_rates(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(p per sample [B], p per group [G]): group mean of the [0, 1] scores; singleton groups get p = 0 (official)."""
    count, mean, _ = ops.group_stats(scores, group_ids)
    p_sample = mean.masked_fill(count == 1, 0.0)
    index, num_groups = ops.group_index(group_ids)
    p_group = torch.zeros(num_groups, dtype=p_sample.dtype).scatter(0, index, p_sample)
    return p_sample, p_group


def batch_moments(p_group: Tensor) -> tuple[float, float]:
    """(mu, sigma^2) of the prompts' success rates: mean and unbiased variance; one prompt -> (0, 1) (official)."""
    if p_group.numel() <= 1:
        return 0.0, 1.0
    return float(p_group.mean()), float(p_group.var(unbiased=True))


def beta_parameters(mu: float, variance: float) -> tuple[float, float]:
    """alpha = max(1 + a/3, 1), beta = max(1 + b/3, 1) with (a, b) the method-of-moments Beta fit of (mu, sigma^2)."""
    spread = mu * (1.0 - mu) / max(variance, MIN_VARIANCE) - 1.0
    a, b = spread * mu, spread * (1.0 - mu)
    return max(1.0 + a / 3.0, 1.0), max(1.0 + b / 3.0, 1.0)


def beta_normalized_advantage(scores: Tensor, p_sample: Tensor, alpha: float, beta: float) -> Tensor:
    """[B] (r - p) * clamp(1 / Beta_pdf(p; alpha, beta), 0, 1e6)."""
    density = torch.distributions.Beta(torch.tensor(alpha, dtype=torch.float64),
                                       torch.tensor(beta, dtype=torch.float64)).log_prob(p_sample.double()).exp()
    inverse = (1.0 / density).clamp(0.0, MAX_INVERSE_DENSITY)  # 1/0 = inf -> 1e6; 1/inf = 0
    return ((scores.double() - p_sample.double()) * inverse).to(scores.dtype)


def to_unit_interval(values: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    """(r - r_min) / (r_max - r_min); with no range given, values already in [0, 1] are kept and others use their
    observed min/max (a constant term maps to 0)."""
    if low is None or high is None:
        if float(values.min()) >= 0.0 and float(values.max()) <= 1.0:
            return values
        low, high = float(values.min()), float(values.max())
        if high == low:
            return torch.zeros_like(values)
    return (values - low) / (high - low)


@register("advantage", "bnpo", paper="BNPO: Beta Normalization Policy Optimization, arXiv 2506.02864")
class BNPO:
    """Beta-normalised outcome advantage (see module doc). Params: ``r_min`` / ``r_max`` (reward range mapped to
    [0, 1]), ``momentum`` (EMA of the success-rate moments across steps; 0 = official per-batch fit),
    ``decompose`` (advantage decomposition: the average of the per-term advantages of the recipe's reward terms, as
    the released code) / ``include_total`` (also average in the composite reward; default False, not official).
    Example (tests/test_bnpo.py): groups r = [1, 0, 0], [1, 1, 0] -> alpha = beta = 1.58333,
    A = [0.5436, -0.2718, -0.2718], [0.2718, 0.2718, -0.5436]."""

    def __init__(self, r_min: float = 0.0, r_max: float = 1.0, momentum: float = 0.0, decompose: bool = False,
                 include_total: bool = False):
        if r_max <= r_min:
            raise ValueError(f"bnpo: r_max ({r_max}) must exceed r_min ({r_min})")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"bnpo: momentum must be in [0, 1) (got {momentum})")
        self.r_min, self.r_max, self.momentum = r_min, r_max, momentum
        self.decompose, self.include_total = decompose, include_total
        self.moments: dict[str, list[float]] = {}  # term name -> [mu, sigma^2] running estimate
        self.last_alpha: dict[str, float] = {}
        self.last_beta: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"moments": {k: list(v) for k, v in self.moments.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.moments = {k: list(v) for k, v in state.get("moments", {}).items()}

    def term_advantage(self, name: str, scores: Tensor, group_ids: Tensor) -> Tensor:
        """[B] BNPO advantage of one reward term already mapped to [0, 1]; updates that term's running moments."""
        p_sample, p_group = success_rates(scores, group_ids)
        mu, variance = batch_moments(p_group)
        if self.momentum > 0 and name in self.moments:
            prev_mu, prev_var = self.moments[name]
            mu = self.momentum * prev_mu + (1 - self.momentum) * mu
            variance = self.momentum * prev_var + (1 - self.momentum) * variance
        self.moments[name] = [mu, variance]
        alpha, beta = beta_parameters(mu, variance)
        self.last_alpha[name], self.last_beta[name] = alpha, beta
        return beta_normalized_advantage(scores, p_sample, alpha, beta)

    def __call__(self, batch: Batch) -> Tensor:
        total = to_unit_interval(batch.returns().float(), self.r_min, self.r_max)
        if not self.decompose:
            advantage = self.term_advantage("total", total, batch.group_ids)
            return ops.broadcast_to_tokens(advantage, batch.response_mask)
        if not batch.reward_terms:
            raise ValueError("bnpo: decompose=True needs batch.reward_terms (the reward runner's per-reward values, "
                             "filled by the trainer)")
        terms = {f"term/{k}": to_unit_interval(v.float()) for k, v in batch.reward_terms.items()}
        if self.include_total:
            terms["total"] = total
        advantages = [self.term_advantage(name, scores, batch.group_ids) for name, scores in terms.items()]
        return ops.broadcast_to_tokens(torch.stack(advantages).mean(0), batch.response_mask)
