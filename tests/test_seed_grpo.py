"""SEED-GRPO (arXiv 2505.12346): semantic-entropy scaling of each prompt's advantages."""

import math
from types import SimpleNamespace

import pytest
import torch

from entropo import registry
from entropo.algorithms.advantages import dr_grpo
from entropo.algorithms.seed_grpo import (
    cluster_probabilities,
    seed_grpo,
    semantic_entropy,
    uncertainty_multiplier,
)
from entropo.batch import Batch
from entropo.types import Example, Sample

TASK = SimpleNamespace()  # no extract_answer: answers.final_answer falls back to the last number


def make_batch(groups, L=4):
    """groups: list of (answers, rewards) per prompt; each completion is 'x = <answer>'."""
    completions, rewards, gids = [], [], []
    for g, (answers, rs) in enumerate(groups):
        completions += [f"x = {a}" if a is not None else "no idea" for a in answers]
        rewards += rs
        gids += [g] * len(answers)
    B = len(completions)
    response_mask = torch.zeros(B, L)
    response_mask[:, 1:] = 1
    batch = Batch(input_ids=torch.ones(B, L, dtype=torch.long), attention_mask=torch.ones(B, L, dtype=torch.long),
                  response_mask=response_mask, rewards=torch.tensor(rewards, dtype=torch.float32),
                  group_ids=torch.tensor(gids), old_logprobs=-torch.rand(B, L) * response_mask,
                  info={"sample": [Sample(completion=c, example=Example(prompt="q", answer=None), task=TASK)
                                   for c in completions]})
    batch.advantages = dr_grpo(batch)
    return batch


SIZES_521 = ["7"] * 5 + ["3"] * 2 + ["9"]  # cluster sizes (5, 2, 1), G = 8


def test_registered():
    assert registry.get("shaping", "seed_grpo") is seed_grpo
    assert registry.meta("shaping", "seed_grpo")["stage"] == "advantage"


def test_spec_toy_entropies_and_multipliers():
    # rlvr.md §8 (f): p = [5/8, 2/8, 1/8]
    p = cluster_probabilities([0] * 5 + [1] * 2 + [2])
    torch.testing.assert_close(p, torch.tensor([0.625, 0.25, 0.125], dtype=torch.float64))
    # Shannon: -(.625 ln .625 + .25 ln .25 + .125 ln .125) = .29375 + .34657 + .25993 = 0.90026
    assert abs(semantic_entropy(p, "shannon") - 0.90026) < 1e-5
    # Eq. 5: -(ln .625 + ln .25 + ln .125)/3 = (.47000 + 1.38629 + 2.07944)/3 = 1.31191
    assert abs(semantic_entropy(p, "mean_log") - 1.31191) < 1e-5
    log_g = math.log(8)  # 2.07944
    # linear, alpha 0.02: 1 - 0.02 * 0.90026 / 2.07944 = 0.99134
    assert abs(uncertainty_multiplier(0.02 * 0.90026 / log_g, "linear") - 0.99134) < 1e-5
    # reciprocal with alpha' = 0.0417 / log G: 1 / (1 + 0.0417 * 0.90026 / 2.07944) = 0.98227
    assert abs(uncertainty_multiplier(0.0417 * 0.90026 / log_g, "reciprocal") - 0.98227) < 1e-5


def test_shaping_scales_each_group_by_its_own_multiplier():
    rewards = [1.0] * 5 + [0.0] * 3
    batch = make_batch([(SIZES_521, rewards), (["4"] * 4, [1.0, 0.0, 0.0, 1.0])])
    before = batch.advantages.clone()
    metrics = seed_grpo(batch, alpha=0.02)
    # group 0: x 0.99134; group 1: one cluster -> SE 0 -> x 1
    torch.testing.assert_close(batch.advantages[:8], before[:8] * 0.991342, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.advantages[8:], before[8:])
    assert abs(metrics["seed_multiplier_min"] - 0.991342) < 1e-5
    batch = make_batch([(SIZES_521, rewards)])
    before = batch.advantages.clone()
    seed_grpo(batch, alpha=0.0417, f="reciprocal")
    torch.testing.assert_close(batch.advantages, before * 0.98227, atol=1e-5, rtol=0)


def test_all_distinct_answers_with_alpha_one_zero_the_group_and_masks_hold():
    batch = make_batch([([str(i) for i in range(4)], [1.0, 0.0, 0.0, 0.0])])
    seed_grpo(batch, alpha=1.0)  # SE = log G -> 1 - 1 = 0: no update from a fully uncertain prompt
    assert torch.allclose(batch.advantages, torch.zeros_like(batch.advantages))
    batch = make_batch([(SIZES_521, [1.0] * 5 + [0.0] * 3)])
    seed_grpo(batch, alpha=0.5)
    assert (batch.advantages[batch.response_mask == 0] == 0).all()


def test_unextractable_answers_are_singletons_and_likelihood_option():
    batch = make_batch([(["5", "5", None, None], [1.0, 1.0, 0.0, 0.0])])
    metrics = seed_grpo(batch, alpha=1.0)
    # clusters {5,5}, {None}, {None}: p = [.5, .25, .25] -> SE = 1.03972; / ln 4 = 0.75
    assert abs(metrics["seed_normalized_entropy"] - 0.75) < 1e-5
    batch = make_batch([(SIZES_521, [1.0] * 5 + [0.0] * 3)])
    metrics = seed_grpo(batch, alpha=1.0, prob="likelihood")
    assert 0 < metrics["seed_multiplier_mean"] < 1
    with pytest.raises(ValueError):
        seed_grpo(make_batch([(SIZES_521, [0.0] * 8)]), prob="bogus")
