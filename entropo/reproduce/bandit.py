"""The entropy-change identity of the Entropy Mechanism paper (arXiv 2505.22617) on a tabular softmax policy.

A K-armed bandit with policy pi = softmax(z) and a per-arm advantage A (E_pi[A] = 0). The entropy's gradient is

    dH/dz_j = -pi_j * (log pi_j - E_pi[log pi]),

so for any logit step dz the first-order entropy change is  sum_j dH/dz_j * dz_j = -Cov_{a~pi}(log pi(a), dz(a)).
The paper's two cases are the two logit steps of policy gradient:

  natural PG   dz = eta * A            ->  dH ~= -eta * Cov_pi(log pi, A)
  vanilla PG   dz = eta * pi * A       ->  dH ~= -eta * Cov_pi(log pi, pi * A)

(pi_j * A_j is the exact softmax gradient of E_pi[A] when E_pi[A] = 0.) The remainder is second order, so the
prediction error scales as eta^2: a log-log slope of 2. Everything here is pure torch in float64, no language model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PG_KINDS = ("natural", "vanilla")


def entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dimension."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def centered_advantage(logits: Tensor, q_values: Tensor) -> Tensor:
    """A = Q - E_pi[Q], so that E_pi[A] = 0 (the baseline-subtracted advantage of policy gradient)."""
    probs = torch.softmax(logits, dim=-1)
    return q_values - (probs * q_values).sum(-1, keepdim=True)


def logit_step(logits: Tensor, advantage: Tensor, eta: float, kind: str) -> Tensor:
    """The logit change of one policy-gradient step: eta*A (natural PG) or eta*pi*A (vanilla PG)."""
    if kind == "natural":
        return eta * advantage
    if kind == "vanilla":
        return eta * torch.softmax(logits, dim=-1) * advantage
    raise ValueError(f"unknown policy-gradient kind {kind!r}; allowed: {', '.join(PG_KINDS)}")


def policy_covariance(logits: Tensor, values: Tensor) -> Tensor:
    """Cov_{a~pi}(log pi(a), values(a)) under pi = softmax(logits)."""
    logp = torch.log_softmax(logits, dim=-1)
    probs = logp.exp()
    centred_logp = logp - (probs * logp).sum(-1, keepdim=True)
    centred_values = values - (probs * values).sum(-1, keepdim=True)
    return (probs * centred_logp * centred_values).sum(-1)


def predicted_entropy_change(logits: Tensor, advantage: Tensor, eta: float, kind: str) -> Tensor:
    """The paper's first-order entropy change: -eta*Cov(log pi, A) (natural) or -eta*Cov(log pi, pi*A) (vanilla)."""
    return -policy_covariance(logits, logit_step(logits, advantage, eta, kind))


def actual_entropy_change(logits: Tensor, advantage: Tensor, eta: float, kind: str) -> Tensor:
    """H(z + dz) - H(z) for the policy-gradient step dz, computed exactly."""
    return entropy(logits + logit_step(logits, advantage, eta, kind)) - entropy(logits)


def random_instances(num: int, arms: int, seed: int, logit_scale: float = 2.0) -> tuple[Tensor, Tensor]:
    """``num`` random bandits: logits ~ N(0, scale^2), Q ~ N(0, 1), A = Q - E_pi Q. Float64, [num, arms] each."""
    gen = torch.Generator().manual_seed(seed)
    logits = logit_scale * torch.randn(num, arms, generator=gen, dtype=torch.float64)
    q_values = torch.randn(num, arms, generator=gen, dtype=torch.float64)
    return logits, centered_advantage(logits, q_values)


def loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


@dataclass
class IdentityResult:
    """Predicted vs actual entropy change over many random bandits, per PG kind and step size."""

    etas: np.ndarray  # [E]
    predicted: dict[str, np.ndarray]  # kind -> [E, N]
    actual: dict[str, np.ndarray]  # kind -> [E, N]

    def abs_error(self, kind: str) -> np.ndarray:
        return np.abs(self.actual[kind] - self.predicted[kind])

    def median_abs_error(self, kind: str) -> np.ndarray:
        """[E] median over instances of |actual - predicted|."""
        return np.median(self.abs_error(kind), axis=1)

    def median_rel_error(self, kind: str) -> np.ndarray:
        """[E] median over instances of |actual - predicted| / |actual|."""
        return np.median(self.abs_error(kind) / np.maximum(np.abs(self.actual[kind]), 1e-300), axis=1)

    def slope(self, kind: str) -> float:
        """Log-log slope of the median absolute error against eta (2 for an error of order eta^2)."""
        return loglog_slope(self.etas, self.median_abs_error(kind))

    def correlation(self, kind: str, eta_index: int) -> float:
        """Pearson correlation of predicted and actual changes over instances at one step size."""
        return float(np.corrcoef(self.predicted[kind][eta_index], self.actual[kind][eta_index])[0, 1])


def identity_experiment(num: int = 500, arms: int = 10, etas: list[float] | None = None, seed: int = 0
                        ) -> IdentityResult:
    """Predicted vs actual one-step entropy change on ``num`` random ``arms``-armed bandits for each eta."""
    eta_values = np.asarray(etas if etas is not None else np.logspace(-4, -1, 7), dtype=float)
    logits, advantage = random_instances(num, arms, seed)
    predicted = {k: np.stack([predicted_entropy_change(logits, advantage, float(e), k).numpy() for e in eta_values])
                 for k in PG_KINDS}
    actual = {k: np.stack([actual_entropy_change(logits, advantage, float(e), k).numpy() for e in eta_values])
              for k in PG_KINDS}
    return IdentityResult(etas=eta_values, predicted=predicted, actual=actual)
