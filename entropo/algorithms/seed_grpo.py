"""SEED-GRPO — semantic-entropy scaling of each prompt's advantages (shaping kind, stage "advantage").

Paper: Chen, Chen, Wang, Yang, "SEED-GRPO: Semantic Entropy Enhanced GRPO for Uncertainty-Aware Policy
Optimization", arXiv 2505.12346. No official code was found (the OpenReview page says code "will be released"); we
checked the paper's abstract/HTML and third-party summaries with the ``search`` tool. What they settle:

- A_i = r_i - mean_group(r) (Dr.GRPO style; recipe ``advantage: dr_grpo``), Â_i = A_i * f(alpha * SE(q) / SE_max),
  SE_max = log G, f "linear, exponential or focal"; SE(q) ≈ -(1/K) Σ_k log p(C_k|q) with
  p(C_k|q) = Σ_{o in C_k} π_old(o|q) (their Eq. 5).
- NOT settled by anything we could read: the exact f and alpha. Defaults follow the spec (§8): linear f(x) = 1 - x,
  alpha = 0.02 (a third-party quote). ``f="reciprocal"`` is 1 / (1 + x) — the reported reference form
  A / (1 + alpha' SE) with alpha' = alpha / log G (alpha = 0.0417 there); ``f="exp"`` is exp(-x).

Our choices (params):
- ``prob="frequency"`` (default): p(C_k) = |C_k| / G. Raw sequence likelihoods π_old(o|q) are products of hundreds of
  token probabilities (1e-100 and below, underflowing float32), and summing them inside a cluster lets one sequence
  dominate; sample frequencies are the standard Monte-Carlo estimate of the cluster masses.
  ``prob="likelihood"``: mass of a response = exp(mean token log-prob under π_old) (length-normalised likelihood),
  summed per cluster and renormalised over the clusters of the prompt.
- ``estimator="shannon"`` (default): SE = -Σ_k p_k log p_k (bounded by log G, so SE / log G ∈ [0, 1]).
  ``estimator="mean_log"``: the paper's Eq. 5, -(1/K) Σ_k log p_k. Spec example, cluster sizes (5, 2, 1) of G = 8:
  Shannon 0.90026, Eq. 5 1.31191; linear multiplier (alpha 0.02, Shannon) 0.99134; reciprocal (alpha 0.0417) 0.98227.
Clusters are equivalent final answers (``entropo.algorithms.answers``); an unextractable answer is its own cluster.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.answers import cluster_ids, final_answer
from entropo.batch import Batch
from entropo.registry import register

PROBS = ("frequency", "likelihood")
ESTIMATORS = ("shannon", "mean_log")
SCALE_FNS = ("linear", "reciprocal", "exp")


def semantic_entropy(cluster_probs: Tensor, estimator: str = "shannon") -> float:
    """Semantic entropy of one prompt from its clusters' probabilities [K] (summing to 1)."""
    p = cluster_probs[cluster_probs > 0]
    if estimator == "shannon":
        return float(-(p * p.log()).sum())
    if estimator == "mean_log":
        return float(-p.log().mean())
    raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")


def uncertainty_multiplier(normalized_entropy: float, f: str = "linear") -> float:
    """f(x) at x = alpha * SE / log G."""
    if f == "linear":
        return 1.0 - normalized_entropy
    if f == "reciprocal":
        return 1.0 / (1.0 + normalized_entropy)
    if f == "exp":
        return math.exp(-normalized_entropy)
    raise ValueError(f"unknown f {f!r}; allowed: {', '.join(SCALE_FNS)}")


def cluster_probabilities(clusters: list[int], sample_mass: Tensor | None = None) -> Tensor:
    """[K] probability of each cluster: frequencies, or the normalised sum of ``sample_mass`` [G] per cluster."""
    idx = torch.tensor(clusters, dtype=torch.long)
    mass = torch.ones(len(clusters), dtype=torch.float64) if sample_mass is None else sample_mass.double().cpu()
    totals = torch.zeros(int(idx.max()) + 1, dtype=torch.float64).index_add_(0, idx, mass)
    return totals / totals.sum()


@register("shaping", "seed_grpo", paper="SEED-GRPO: Semantic Entropy Enhanced GRPO, arXiv 2505.12346",
          stage="advantage")
def seed_grpo(batch: Batch, alpha: float = 0.02, f: str = "linear", estimator: str = "shannon",
              prob: str = "frequency") -> dict[str, float]:
    """Multiply every advantage of a prompt group by f(alpha * SE / log G) (G = the group's size).

    Within-group ranking is unchanged; only the update size per prompt shrinks with semantic diversity. A group of one
    sample has SE_max = log 1 = 0 and is left unchanged."""
    if prob not in PROBS:
        raise ValueError(f"unknown prob {prob!r}; allowed: {', '.join(PROBS)}")
    if batch.advantages is None:
        raise ValueError("seed_grpo runs at the advantage stage and needs batch.advantages")
    answers = [final_answer(s) for s in batch.info["sample"]]
    sample_mass = None
    if prob == "likelihood":
        if batch.old_logprobs is None:
            raise ValueError("prob='likelihood' needs batch.old_logprobs")
        sample_mass = ops.masked_mean(batch.old_logprobs, batch.response_mask, dim=-1).exp()  # [B]
    multiplier = torch.ones(batch.size, dtype=torch.float32, device=batch.advantages.device)
    entropies, normalized = [], []
    for gid in torch.unique(batch.group_ids).tolist():
        rows = (batch.group_ids == gid).nonzero().squeeze(-1).tolist()
        if len(rows) < 2:
            continue
        clusters = cluster_ids([answers[i] for i in rows])
        probs = cluster_probabilities(clusters, None if sample_mass is None else sample_mass[rows])
        se = semantic_entropy(probs, estimator)
        x = alpha * se / math.log(len(rows))
        multiplier[rows] = uncertainty_multiplier(x, f)
        entropies.append(se)
        normalized.append(se / math.log(len(rows)))
    batch.advantages = batch.advantages * multiplier[:, None]
    return {
        "seed_semantic_entropy": float(sum(entropies) / len(entropies)) if entropies else 0.0,
        "seed_normalized_entropy": float(sum(normalized) / len(normalized)) if normalized else 0.0,
        "seed_multiplier_mean": float(multiplier.mean()),
        "seed_multiplier_min": float(multiplier.min()),
    }
