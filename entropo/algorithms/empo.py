"""EMPO — fully unsupervised reward from semantic-entropy minimisation (shaping kind, stage "reward").

Paper: Zhang et al., "Right Question is Already Half the Answer: Fully Unsupervised LLM Reasoning Incentivization",
arXiv 2504.05812. Official code: QingyangZhang/EMPO, ``src/open_r1/rewards.py`` (``get_empo_math_reward`` /
``semantic_entropy_math_reward``) and ``semantic_uncertainty.py`` (``get_semantic_ids_by_rule``). What we verified in
the stored snapshots of ``rewards.py``:

- per prompt, the G responses' final answers are clustered greedily by an equivalence rule (math-verify);
  p(c) = |c| / G; SE = -Σ_c p(c) log p(c);
- if SE < log G (i.e. not all answers distinct), r_i = p(c(o_i)), and r_i = 0 when no answer could be extracted;
  otherwise every r_i of the prompt is 0;
- an earlier snapshot rewarded log p(c) instead of p(c); the later one (and the paper) uses p(c), our default
  (``value="log_prob"`` reproduces the earlier variant; it is <= 0 and unextractable answers still get 0).
- the paper's optional lower threshold (skip prompts whose SE is already tiny) is ``min_entropy`` (off by default;
  the math reward in the code has only the upper threshold).

Differences, by design: answers are extracted and compared with ``entropo.algorithms.answers`` (task extractor,
numeric equality) rather than math-verify; an unextractable answer is its own singleton cluster for SE (the code
lets all empty predictions fall into one cluster). The test ``SE < log G`` is evaluated exactly as "fewer clusters
than responses" (Shannon entropy of frequencies reaches log G only when all G answers are distinct).

The ground truth is never read: not ``sample.example.answer`` and not ``batch.info["answer"]``. The correctness
reward listed in the recipe is still computed by the trainer before shaping, so ``accuracy`` in the metrics is the
true verifier's; this component overwrites ``batch.rewards`` for the advantage estimator.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from entropo.algorithms.answers import cluster_ids, final_answer
from entropo.batch import Batch
from entropo.registry import register

VALUES = ("prob", "log_prob")


def empo_group_rewards(answers: list[str | None], value: str = "prob", min_entropy: float | None = None
                       ) -> tuple[list[float], float]:
    """Rewards of one prompt's responses from their final answers (None = unextractable), and the group's SE.

    Example: cluster sizes (5, 2, 1) of G = 8 -> rewards [0.625]*5 + [0.25]*2 + [0.125]; all 8 distinct -> all 0."""
    if value not in VALUES:
        raise ValueError(f"unknown value {value!r}; allowed: {', '.join(VALUES)}")
    clusters = cluster_ids(answers)
    size = len(answers)
    counts = Counter(clusters)
    probs = {c: n / size for c, n in counts.items()}
    entropy = -sum(p * math.log(p) for p in probs.values())
    confident = len(counts) < size and (min_entropy is None or entropy > min_entropy)
    rewards = []
    for answer, c in zip(answers, clusters):
        if not confident or answer is None:
            rewards.append(0.0)
        else:
            rewards.append(probs[c] if value == "prob" else math.log(probs[c]))
    return rewards, entropy


@register("shaping", "empo", paper="EMPO: Right Question is Already Half the Answer, arXiv 2504.05812",
          stage="reward")
def empo(batch: Batch, value: str = "prob", min_entropy: float | None = None) -> dict[str, float]:
    """Replace ``batch.rewards`` with the EMPO reward: the frequency of the response's answer cluster within its
    prompt group (0 for unextractable answers; all 0 when every answer of the group differs)."""
    answers = [final_answer(s) for s in batch.info["sample"]]  # from the completion text only
    rewards = torch.zeros(batch.size, dtype=torch.float32, device=batch.rewards.device)
    entropies, skipped, groups = [], 0, 0
    for gid in torch.unique(batch.group_ids).tolist():
        rows = (batch.group_ids == gid).nonzero().squeeze(-1).tolist()
        group_rewards, entropy = empo_group_rewards([answers[i] for i in rows], value, min_entropy)
        rewards[rows] = torch.tensor(group_rewards, dtype=torch.float32, device=rewards.device)
        entropies.append(entropy)
        groups += 1
        skipped += int(all(r == 0.0 for r in group_rewards))
    batch.rewards = rewards
    return {
        "empo_reward_mean": float(rewards.mean()),
        "empo_semantic_entropy": sum(entropies) / max(groups, 1),
        "empo_skipped_group_frac": skipped / max(groups, 1),
        "empo_extracted_frac": sum(a is not None for a in answers) / max(len(answers), 1),
    }
