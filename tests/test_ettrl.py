"""ETTRL shaping: TTRL majority-vote pseudo-rewards (no ground truth, tie rule, unparsable answers) and EAR
entropy-based advantage reshaping (spec §16 (f) toy, zero-entropy groups, Adv-Clip)."""

from __future__ import annotations

import pytest
import torch

from entropo import registry
from entropo.algorithms.ettrl import ear, entropy_advantage_scale, majority_labels, ttrl_majority
from entropo.batch import Batch
from entropo.types import Example, Sample


class _Task:
    """Final answer = the completion itself (``final_answer`` prefers a task's ``extract_answer``)."""

    def extract_answer(self, text):
        return text or None


def _batch(completions, group_ids, truth="7", rewards=None):
    task = _Task()
    rows = len(completions)
    samples = [Sample(completion=c, example=Example(prompt="q", answer=truth), task=task) for c in completions]
    response_mask = torch.zeros(rows, 5)
    response_mask[:, 2:] = 1
    return Batch(
        input_ids=torch.ones(rows, 5, dtype=torch.long), attention_mask=torch.ones(rows, 5, dtype=torch.long),
        response_mask=response_mask,
        rewards=torch.tensor(rewards if rewards is not None else [0.0] * rows),
        group_ids=torch.tensor(group_ids),
        correct=torch.tensor([c == truth for c in completions], dtype=torch.bool),
        info={"sample": samples, "answer": [truth] * rows},
    )


def test_registered_with_stages():
    assert registry.meta("shaping", "ttrl_majority")["stage"] == "reward"
    assert registry.meta("shaping", "ear")["stage"] == "advantage"


def test_majority_vote_rewards_by_hand():
    # answers 3,3,5,3.0 -> clusters {3, 3, 3.0} (numeric equality) and {5}; majority = 3 -> rewards 1,1,0,1
    rewards, first, ratio = majority_labels(["3", "3", "5", "3.0"])
    assert rewards == [1.0, 1.0, 0.0, 1.0] and first == 0 and ratio == 0.75


def test_majority_tie_goes_to_the_answer_seen_first():
    # 2 votes for "5" (first seen at row 0) and 2 for "3": tie -> "5", as TTRL's Counter.most_common(1)
    assert majority_labels(["5", "3", "3", "5"])[0] == [1.0, 0.0, 0.0, 1.0]
    assert majority_labels(["3", "5", "5", "3"])[0] == [1.0, 0.0, 0.0, 1.0]


def test_unparsable_answers_neither_vote_nor_win():
    # two None answers would outvote "4" if they formed a cluster; they do not, and they get reward 0
    assert majority_labels([None, None, "4"])[0] == [0.0, 0.0, 1.0]
    assert majority_labels([None, None]) == ([0.0, 0.0], None, 0.0)


def test_ttrl_majority_uses_no_ground_truth():
    completions = ["7", "7", "8", "9", "9", "9", "1", "2"]
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    a = _batch(completions, groups, truth="7", rewards=[0, 1, 0, 1, 1, 1, 0, 0])
    b = _batch(completions, groups, truth="999")
    b.info["answer"] = [None] * 8
    for s in b.info["sample"]:
        s.example.answer = None
    ttrl_majority(a)
    metrics_b = ttrl_majority(b)
    # group 0: majority 7 -> [1,1,0]; group 1: all 9 -> [1,1,1]; group 2: tie 1 vs 2 -> first seen, "1" -> [1,0]
    expected = [1, 1, 0, 1, 1, 1, 1, 0]
    assert a.rewards.tolist() == expected and b.rewards.tolist() == expected
    assert "ttrl_label_accuracy" not in metrics_b  # no ground truth: the diagnostic is skipped


def test_ttrl_majority_metrics():
    batch = _batch(["7", "7", "8", "9", "9", "9"], [0, 0, 0, 1, 1, 1], truth="7")
    m = ttrl_majority(batch)
    # majority ratios 2/3 and 3/3 -> 5/6; labels "7" (right) and "9" (wrong) -> 0.5
    assert m["ttrl_majority_ratio"] == pytest.approx(5 / 6)
    assert m["ttrl_label_accuracy"] == 0.5
    # pseudo-rewards [1,1,0,1,1,1] vs true [1,1,0,0,0,0] -> 3/6 agree
    assert m["ttrl_reward_accuracy"] == 0.5


def _advantage_batch(entropies, advantages, groups):
    rows = len(entropies)
    batch = _batch(["x"] * rows, groups)
    batch.old_entropy = torch.tensor(entropies, dtype=torch.float32)[:, None].expand(rows, 5).clone()
    batch.old_entropy[:, :2] = 100.0  # prompt positions must not count
    batch.advantages = torch.tensor(advantages, dtype=torch.float32)[:, None] * batch.response_mask
    return batch


def test_ear_spec_toy():
    # H = [0.5, 1.0, 1.5], mean 1.0: Y = 1 + (1 - H) / 1 = [1.5, 1.0, 0.5]
    scale = entropy_advantage_scale(torch.tensor([0.5, 1.0, 1.5]), torch.tensor([0, 0, 0]))
    assert torch.allclose(scale, torch.tensor([1.5, 1.0, 0.5]))
    batch = _advantage_batch([0.5, 1.0, 1.5], [2.0, -1.0, 4.0], [0, 0, 0])
    m = ear(batch)
    # A * Y = [2 * 1.5, -1 * 1, 4 * 0.5] on response tokens, 0 on the prompt
    assert torch.allclose(batch.advantages[:, 2:], torch.tensor([[3.0], [-1.0], [2.0]]).expand(3, 3))
    assert batch.advantages[:, :2].abs().sum() == 0
    assert m["ear_scale_max"] == pytest.approx(1.5) and m["ear_scale_min"] == pytest.approx(0.5)


def test_ear_groups_are_separate_and_zero_entropy_group_is_unchanged():
    # group 0: H = [1, 3], mean 2 -> Y = [1.5, 0.5]; group 1: H = [0, 0] -> mean 0 -> Y = 1
    batch = _advantage_batch([1.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, -1.0], [5, 5, 9, 9])
    ear(batch)
    assert torch.allclose(batch.advantages[:, 2], torch.tensor([1.5, 0.5, 1.0, -1.0]))


def test_ear_min_scale_and_sign_flip():
    # H = [0.1, 0.1, 2.8], mean 1.0 -> Y = [1.9, 1.9, -0.8]: the stated formula flips the last sign
    scale = entropy_advantage_scale(torch.tensor([0.1, 0.1, 2.8]), torch.tensor([0, 0, 0]))
    assert torch.allclose(scale, torch.tensor([1.9, 1.9, -0.8]))
    clamped = entropy_advantage_scale(torch.tensor([0.1, 0.1, 2.8]), torch.tensor([0, 0, 0]), min_scale=0.0)
    assert torch.allclose(clamped, torch.tensor([1.9, 1.9, 0.0]))


def test_ear_clip_mode():
    batch = _advantage_batch([1.0, 1.0], [2.5, -0.3], [0, 0])
    m = ear(batch, mode="clip", beta=1.0)
    assert torch.allclose(batch.advantages[:, 2], torch.tensor([1.0, -0.3]))
    assert m["ear_clip_frac"] == 0.5


def test_ear_zero_advantage_stays_zero():
    batch = _advantage_batch([0.2, 0.9, 1.7], [0.0, 0.0, 0.0], [0, 0, 0])
    ear(batch)
    assert batch.advantages.abs().sum() == 0
