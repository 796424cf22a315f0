"""ETTRL's label-free reward and advantage reshaping (the rollout half is the ``hf_tree`` engine,
``entropo.rollout.tree``).

Papers: "ETTRL: Balancing Exploration and Exploitation in LLM Test-Time Reinforcement Learning Via Entropy
Mechanism", arXiv 2508.11356 (no official code found); its base "TTRL: Test-Time Reinforcement Learning",
arXiv 2504.16084 (official code PRIME-RL/TTRL, ``verl/utils/reward_score/ttrl/`` ``test_time_train_metrics``).

- ``ttrl_majority`` (shaping, stage "reward"): TTRL's majority-vote pseudo-label. Within each group the final answers
  (``answers.final_answer``) are clustered (``answers.cluster_ids``: numeric or normalized equality); the largest
  cluster is the pseudo-label and r_i = 1[answer_i in that cluster]. No ground truth is read: ``example.answer`` and
  ``batch.info["answer"]`` are used only for the ``label_accuracy`` metric, when present.
  Checked in TTRL's code: the label is ``Counter(answers).most_common(1)``, so a tie goes to the answer seen first —
  we use the same rule (the tied cluster whose first member comes first in the group). Difference: TTRL counts an
  unparsable answer as a candidate label; here a response with no extractable answer neither votes nor can be
  rewarded (r = 0), and a group with no extractable answer gets r = 0 everywhere. TTRL votes on more samples than it
  trains on (e.g. 64 vs 32); here votes and training rows are the same group (with ``hf_tree`` every leaf votes).
- ``ear`` (shaping, stage "advantage"): Entropy-based Advantage Reshaping. H̄_i = mean token entropy of response i
  under the pre-update policy (``batch.old_entropy``, detached), Y_i = 1 + (mean_g H̄ − H̄_i) / mean_g H̄ over the
  response's group g (all leaves of the prompt), Â_{i,t} = Y_i·A_{i,t}: confident (low-entropy) responses get
  larger updates, uncertain ones smaller. ``mode="clip"`` is the paper's Adv-Clip alternative A ← clip(A, −β, β).
  Spec toy: H̄ = [0.5, 1.0, 1.5] → Y = [1.5, 1.0, 0.5]. Y < 0 when H̄_i > 2·mean (the formula as stated flips such an
  advantage's sign); ``min_scale`` (default None = as stated) clamps Y from below, e.g. 0. A group whose mean
  entropy is 0 (greedy rows) keeps Y = 1.
"""

from __future__ import annotations

from collections import Counter

import torch

from entropo import ops
from entropo.algorithms.answers import cluster_ids, final_answer, same_answer
from entropo.batch import Batch
from entropo.registry import register


def majority_labels(answers: list[str | None]) -> tuple[list[float], int | None, float]:
    """Majority-vote rewards for one group's answers: (rewards, index of the label's first member or None,
    majority ratio = label votes / group size).

    Unextractable answers (None) never vote and get reward 0. Ties go to the cluster whose first member comes first
    (``cluster_ids`` numbers clusters by first appearance, so that is the smallest tied id)."""
    ids = cluster_ids(answers)
    votes = Counter(c for c, a in zip(ids, answers) if a is not None)
    if not votes:
        return [0.0] * len(answers), None, 0.0
    top = max(votes.values())
    label = min(c for c, v in votes.items() if v == top)
    rewards = [1.0 if (a is not None and c == label) else 0.0 for c, a in zip(ids, answers)]
    return rewards, ids.index(label), top / len(answers)


@register("shaping", "ttrl_majority", paper="TTRL, arXiv 2504.16084 (as used by ETTRL, arXiv 2508.11356)",
          stage="reward")
def ttrl_majority(batch: Batch) -> dict[str, float]:
    """batch.rewards <- 1[final answer == the group's majority answer] (no ground truth used). Metrics:
    ``ttrl_majority_ratio`` (mean share of the majority cluster), ``ttrl_label_accuracy`` (fraction of groups whose
    pseudo-label the task's verifier accepts; only a diagnostic, needs the ground truth) and
    ``ttrl_reward_accuracy`` (fraction of rows whose pseudo-reward equals the true correctness)."""
    samples = batch.info["sample"]
    answers = [final_answer(s) for s in samples]
    rewards = torch.zeros(batch.size, dtype=torch.float32)
    ratios, label_hits = [], []
    group_ids = batch.group_ids.tolist()
    for gid in dict.fromkeys(group_ids):  # groups in order of first appearance
        rows = [i for i, g in enumerate(group_ids) if g == gid]
        group_rewards, first, ratio = majority_labels([answers[i] for i in rows])
        rewards[rows] = torch.tensor(group_rewards)
        ratios.append(ratio)
        label_hits.append(_label_is_correct(samples[rows[first]], answers[rows[first]]) if first is not None else 0.0)
    batch.rewards = rewards.to(batch.rewards.device, batch.rewards.dtype)
    metrics = {"ttrl_majority_ratio": float(sum(ratios) / len(ratios))}
    known = [x for x in label_hits if x is not None]
    if known:
        metrics["ttrl_label_accuracy"] = float(sum(known) / len(known))
    if batch.correct is not None:
        truth = batch.correct.float().to(rewards.device)
        metrics["ttrl_reward_accuracy"] = float((rewards == truth).float().mean())
    return metrics


def _label_is_correct(sample, answer: str) -> float | None:
    """Diagnostic only: does the pseudo-label match the ground truth (None when there is none)?"""
    truth = sample.example.answer
    if truth is None:
        return None
    return 1.0 if same_answer(answer, str(truth)) else 0.0


def entropy_advantage_scale(mean_entropy: torch.Tensor, group_ids: torch.Tensor,
                            min_scale: float | None = None) -> torch.Tensor:
    """Y [B] = 1 + (mean_g H̄ − H̄_i) / mean_g H̄ for per-response mean entropies H̄ [B]; groups with mean 0 get 1."""
    _, group_mean, _ = ops.group_stats(mean_entropy, group_ids)
    safe_mean = group_mean.where(group_mean > 0, torch.ones_like(group_mean))
    scale = 1.0 + (group_mean - mean_entropy) / safe_mean
    scale = scale.where(group_mean > 0, torch.ones_like(scale))
    return scale.clamp_min(min_scale) if min_scale is not None else scale


@register("shaping", "ear", paper="ETTRL entropy-based advantage reshaping, arXiv 2508.11356", stage="advantage")
def ear(batch: Batch, mode: str = "reshape", beta: float = 1.0, min_scale: float | None = None) -> dict[str, float]:
    """``mode="reshape"`` (Adv-Res): A <- Y·A with Y from the responses' mean old-policy entropies (see module
    docstring); ``mode="clip"`` (Adv-Clip): A <- clip(A, −beta, beta). Metrics: ``ear_scale_mean/min/max``."""
    if mode not in ("reshape", "clip"):
        raise ValueError(f"ear: unknown mode {mode!r}; allowed: 'reshape', 'clip'")
    if mode == "clip":
        if beta <= 0:
            raise ValueError(f"ear: beta must be > 0, got {beta}")
        clipped_frac = ops.masked_mean((batch.advantages.abs() > beta).float(), batch.response_mask)
        batch.advantages = batch.advantages.clamp(-beta, beta)
        return {"ear_clip_frac": float(clipped_frac)}
    if batch.old_entropy is None:
        raise ValueError("ear needs batch.old_entropy (the trainer's old-policy scoring pass)")
    mean_entropy = ops.masked_mean(batch.old_entropy.detach(), batch.response_mask, dim=-1)  # [B] H̄_i
    scale = entropy_advantage_scale(mean_entropy, batch.group_ids, min_scale)  # [B] Y_i
    batch.advantages = batch.advantages * scale[:, None].to(batch.advantages.dtype)
    return {"ear_scale_mean": float(scale.mean()), "ear_scale_min": float(scale.min()),
            "ear_scale_max": float(scale.max())}
