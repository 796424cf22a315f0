"""ASPO advantage shaping (arXiv 2508.19201): spec toy, the |A| clip, eligibility, groups, the shaping on a Batch."""

import pytest
import torch

from entropo.algorithms.aspo import aspo, aspo_bias
from entropo.batch import Batch


def test_spec_toy():
    # Spec (f): two eligible responses, A = 0.8, p = [100, 300], L̄ = 1000: p̄ = 200,
    # raw bias = -2·(100 - 200)/1000 = +0.2 and -2·(300 - 200)/1000 = -0.2, inside ±0.7·0.8 = ±0.56 → A' = [1.0, 0.6].
    adv = torch.tensor([0.8, 0.8])
    bias = aspo_bias(adv, torch.tensor([100.0, 300.0]), torch.tensor([1000.0, 1000.0]), torch.tensor([True, True]),
                     torch.tensor([0, 0]), delta=-2.0, k=0.7)
    assert torch.allclose(adv + bias, torch.tensor([1.0, 0.6]))


def test_bias_clipped_to_k_abs_advantage():
    # p = [0, 1000], L̄ = 1000: raw = -2·(∓500)/1000 = ±1.0 → clipped to ±0.7·|A|; with A = [0.8, 0.5] the bounds are
    # 0.56 and 0.35 → bias [+0.56, -0.35].
    bias = aspo_bias(torch.tensor([0.8, 0.5]), torch.tensor([0.0, 1000.0]), torch.tensor([1000.0, 1000.0]),
                     torch.tensor([True, True]), torch.tensor([3, 3]))
    assert torch.allclose(bias, torch.tensor([0.56, -0.35]))


def test_only_eligible_rows_and_per_group_means():
    # group 0: rows 0, 1 eligible (p 100, 300; lengths 800, 1200 → L̄ 1000), row 2 not eligible (its p is ignored);
    # group 1: a single eligible response → p = p̄ → bias 0.
    bias = aspo_bias(torch.tensor([0.8, 0.8, -0.5, 0.9]), torch.tensor([100.0, 300.0, 5.0, 50.0]),
                     torch.tensor([800.0, 1200.0, 10.0, 100.0]), torch.tensor([True, True, False, True]),
                     torch.tensor([7, 7, 7, 9]))
    assert torch.allclose(bias, torch.tensor([0.2, -0.2, 0.0, 0.0]))


def _batch(completions, correct, group_ids, advantages, lengths):
    b, width = len(completions), 6
    response_mask = torch.zeros(b, width)
    for i, n in enumerate(lengths):
        response_mask[i, 2:2 + n] = 1.0  # two prompt tokens, then the response, then padding
    return Batch(input_ids=torch.zeros(b, width, dtype=torch.long), attention_mask=torch.ones(b, width),
                 response_mask=response_mask, rewards=torch.tensor([float(c) for c in correct]),
                 group_ids=torch.tensor(group_ids), advantages=torch.tensor(advantages)[:, None] * response_mask,
                 correct=torch.tensor(correct, dtype=torch.bool), info={"completion": completions})


def test_shaping_on_batch_without_tokenizer():
    # Character offsets scaled to tokens: "<code>x" first call at char 0 → token 0; "abcd<code>" at char 4 of 10,
    # 4 tokens → token 1.6. Lengths 4, 4 → L̄ 4; p̄ = 0.8; raw = -2·(∓0.8)/4 = ±0.4, bound 0.7·1.0 = 0.7.
    # Row 2 is correct but calls no tool; row 3 calls a tool but is wrong: both untouched.
    batch = _batch(["<code>x", "abcd<code>", "12", "<code>"], [True, True, True, False], [0, 0, 0, 0],
                   [1.0, 1.0, 1.0, -1.0], [4, 4, 3, 2])
    before = batch.advantages.clone()
    metrics = aspo(batch)
    expected_bias = torch.tensor([0.4, -0.4, 0.0, 0.0])
    assert torch.allclose(batch.advantages, before + expected_bias[:, None] * batch.response_mask)
    assert torch.all(batch.advantages[batch.response_mask == 0] == 0)  # prompt and padding stay 0
    assert metrics["aspo_eligible_frac"] == pytest.approx(0.5)
    assert metrics["aspo_bias_abs_mean"] == pytest.approx(0.4)


def test_zero_advantage_gives_zero_bias():
    bias = aspo_bias(torch.zeros(2), torch.tensor([0.0, 100.0]), torch.tensor([100.0, 100.0]),
                     torch.tensor([True, True]), torch.tensor([0, 0]))
    assert torch.all(bias == 0)


def test_needs_advantages():
    batch = _batch(["a"], [True], [0], [0.0], [1])
    batch.advantages = None
    with pytest.raises(ValueError):
        aspo(batch)
