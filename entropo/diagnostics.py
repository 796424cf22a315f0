"""Diagnostics that show entropy collapse before it costs a run.

- token entropy of responses and its change since the previous step;
- the centred covariance of log-prob and advantage over response tokens, Cov(log pi(y_t), A_t). The Entropy Mechanism
  paper (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models",
  arXiv 2505.22617) shows the entropy change of a softmax policy under policy gradient is approximately
  -lr * Cov(log pi, A): a persistently positive covariance predicts entropy falling;
- pass@k with the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code",
  arXiv 2107.03374);
- the fit R = -a * exp(H) + b of accuracy against entropy over a run (Entropy Mechanism paper, eq. 1); its
  predicted ceiling is R at H = 0, i.e. -a + b.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> float:
    m = (mask > 0).to(x.dtype)
    n = m.sum()
    return float((x * m).sum() / n) if n > 0 else 0.0


def cov_logp_adv(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> float:
    """Centred covariance of log-prob and advantage over tokens with mask > 0 (population, 1/N)."""
    m = mask > 0
    if m.sum() < 2:
        return 0.0
    lp, adv = logprobs[m].double(), advantages[m].double()
    return float(((lp - lp.mean()) * (adv - adv.mean())).mean())


def zero_variance_group_fraction(rewards: Tensor, group_ids: Tensor) -> float:
    """Fraction of groups whose rewards are all equal (they carry no group-relative signal)."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    g = len(uniq)
    if g == 0:
        return 0.0
    r = rewards.double()
    hi = torch.full((g,), -math.inf, dtype=torch.double).scatter_reduce(0, inv, r, "amax")
    lo = torch.full((g,), math.inf, dtype=torch.double).scatter_reduce(0, inv, r, "amin")
    return float(((hi - lo) <= 1e-12).double().mean())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) for n samples of which c are correct."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def fit_entropy_performance(entropy: list[float], accuracy: list[float]) -> dict[str, float] | None:
    """Least-squares fit of accuracy = -a * exp(entropy) + b; returns a, b, the ceiling -a + b, and R^2."""
    h = np.asarray(entropy, dtype=float)
    r = np.asarray(accuracy, dtype=float)
    ok = np.isfinite(h) & np.isfinite(r)
    h, r = h[ok], r[ok]
    if len(h) < 3 or np.ptp(h) < 1e-9:
        return None
    x = np.exp(h)
    design = np.stack([-x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    pred = design @ np.array([a, b])
    ss_res, ss_tot = float(((r - pred) ** 2).sum()), float(((r - r.mean()) ** 2).sum())
    return {"a": float(a), "b": float(b), "ceiling": float(-a + b), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}
