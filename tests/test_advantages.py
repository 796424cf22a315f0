"""Advantage estimators: GRPO, Dr.GRPO, RLOO, REINFORCE++ (values from rlvr.md section 25 and by hand)."""

import math

import pytest
import torch

from entropo import registry
from entropo.algorithms import advantages
from entropo.batch import Batch


def make_batch(rewards, group_ids, lengths=None, L=5, token_rewards=None):
    """A batch whose rows have 1 prompt token followed by ``lengths[i]`` response tokens (default 3)."""
    B = len(rewards)
    lengths = torch.tensor(lengths if lengths is not None else [3] * B)
    positions = torch.arange(L)[None, :]
    response = ((positions >= 1) & (positions < 1 + lengths[:, None])).float()
    return Batch(
        input_ids=torch.ones(B, L, dtype=torch.long),
        attention_mask=(positions < 1 + lengths[:, None]).long(),
        response_mask=response,
        rewards=torch.tensor(rewards, dtype=torch.float),
        group_ids=torch.tensor(group_ids, dtype=torch.long),
        token_rewards=token_rewards,
    )


def per_sample(adv, batch):
    """The scalar each row carries on its response tokens (asserting it is constant there and 0 elsewhere)."""
    mask = batch.response_mask > 0
    assert (adv[~mask] == 0).all()
    first = adv.gather(1, mask.float().argmax(1, keepdim=True)).squeeze(1)
    assert torch.allclose(adv, first[:, None] * mask)
    return first


def test_registered():
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        assert registry.get("advantage", name) is getattr(advantages, name)


def test_grpo_toys_rlvr_25_1():
    # group 17: r = [1,0,0]: mean 1/3, unbiased std sqrt((4/9+1/9+1/9)/2) = 0.57735 -> (2/3)/0.57735 = 1.15470, (-1/3)/0.57735
    # group 5 : r = [1,1,0]: mean 2/3, same std -> 0.57735, 0.57735, -1.15470. Rows of the two groups are interleaved.
    batch = make_batch([1, 1, 0, 1, 0, 0], [17, 5, 17, 5, 17, 5])
    got = per_sample(advantages.grpo(batch), batch)
    expected = torch.tensor([1.15470, 0.57735, -0.57735, 0.57735, -0.57735, -1.15470])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_grpo_dapo_group_identical_group_and_singleton():
    # DAPO group [+1,-1,-1,-1]: mean -0.5, unbiased std sqrt((2.25 + 3*0.25)/3) = 1 -> [1.5, -0.5, -0.5, -0.5] / (1 + 1e-6)
    # group 2 all equal -> 0; singleton group 9 with r = 0.7 -> mean 0, std 1 -> 0.7 / (1 + 1e-6)
    batch = make_batch([1, -1, -1, -1, 1, 1, 0.7], [0, 0, 0, 0, 2, 2, 9])
    got = per_sample(advantages.grpo(batch), batch)
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.7]) / (1 + 1e-6)
    torch.testing.assert_close(got, expected)


def test_grpo_zero_outside_response_and_uneven_lengths():
    batch = make_batch([1, 0, 0], [3, 3, 3], lengths=[1, 4, 0])
    adv = advantages.grpo(batch)
    assert (adv[batch.response_mask == 0] == 0).all()
    assert adv[0, 1].item() == pytest.approx(1.1547, abs=1e-4)
    assert (adv[1, 1:5] == adv[1, 1]).all() and adv[1, 1].item() == pytest.approx(-0.57735, abs=1e-5)


def test_grpo_uses_returns_including_token_rewards():
    # outcome rewards are equal, dense rewards sum to [1, 0] -> returns [1, 0]: mean 0.5, std sqrt(0.5) -> +-0.70711
    token_rewards = torch.zeros(2, 5)
    token_rewards[0, 1:4] = torch.tensor([0.5, 0.25, 0.25])
    token_rewards[1, 0] = 9.0  # on the prompt token: outside response_mask, ignored by returns()
    batch = make_batch([0, 0], [1, 1], token_rewards=token_rewards)
    torch.testing.assert_close(per_sample(advantages.grpo(batch), batch), torch.tensor([0.70711, -0.70711]), atol=1e-5, rtol=0)


def test_grpo_invariant_to_permutation_and_relabeling():
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randint(0, 2, (12,), generator=gen).float().tolist()
    groups = [0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3]
    batch = make_batch(rewards, groups)
    base = per_sample(advantages.grpo(batch), batch)
    perm = torch.randperm(12, generator=gen)
    relabel = {0: 1000, 1: -7, 2: 5, 3: 2**40}
    shuffled = make_batch([rewards[i] for i in perm], [relabel[groups[i]] for i in perm])
    torch.testing.assert_close(per_sample(advantages.grpo(shuffled), shuffled), base[perm])


def test_dr_grpo_toys_rlvr_25_2():
    # r - group mean: [1,0,0] -> [2/3, -1/3, -1/3]; [1,1,0] -> [1/3, 1/3, -2/3]; singleton 0.5 -> 0.5
    batch = make_batch([1, 0, 0, 1, 1, 0, 0.5], [0, 0, 0, 1, 1, 1, 2])
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3, 0.5])
    torch.testing.assert_close(per_sample(advantages.dr_grpo(batch), batch), expected)


def test_rloo_by_hand():
    # r = [1,0,0]: 1 - mean(0,0) = 1; 0 - mean(1,0) = -0.5 twice. r = [3,1]: 3-1 = 2, 1-3 = -2. singleton 0.4 -> 0.4
    batch = make_batch([1, 0, 0, 3, 1, 0.4], [8, 8, 8, 2, 2, 6])
    expected = torch.tensor([1.0, -0.5, -0.5, 2.0, -2.0, 0.4])
    torch.testing.assert_close(per_sample(advantages.rloo(batch), batch), expected)


def test_rloo_is_rescaled_dr_grpo():
    # r_i - (n mean - r_i)/(n-1) = n/(n-1) (r_i - mean) for groups of n >= 2
    gen = torch.Generator().manual_seed(2)
    groups = [0] * 4 + [1] * 3 + [2] * 2
    batch = make_batch(torch.rand(9, generator=gen).tolist(), groups)
    n = torch.tensor([4.0] * 4 + [3.0] * 3 + [2.0] * 2)
    torch.testing.assert_close(per_sample(advantages.rloo(batch), batch), n / (n - 1) * per_sample(advantages.dr_grpo(batch), batch))


def test_reinforce_pp_batch_normalisation_ignores_groups():
    # r = [1,0,0,0] in two groups: batch mean 0.25, unbiased std sqrt((0.5625 + 3*0.0625)/3) = 0.5
    # -> (0.75 / 0.5, -0.25 / 0.5) = [1.5, -0.5, -0.5, -0.5]  (divided by 0.5 + 1e-6)
    batch = make_batch([1, 0, 0, 0], [0, 0, 1, 1])
    got = per_sample(advantages.reinforce_pp(batch), batch)
    torch.testing.assert_close(got, torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))


def test_reinforce_pp_group_baseline():
    # group means 0.5 and 0 -> [0.5, -0.5, 0, 0]; batch mean 0; unbiased std sqrt(0.5 / 3) = 0.408248
    # -> [1.224745, -1.224745, 0, 0]
    batch = make_batch([1, 0, 0, 0], [0, 0, 1, 1])
    got = per_sample(advantages.reinforce_pp(batch, group_baseline=True), batch)
    s = math.sqrt(0.5 / 3)
    torch.testing.assert_close(got, torch.tensor([0.5, -0.5, 0.0, 0.0]) / (s + 1e-6))


def test_reinforce_pp_token_whitening():
    # returns [1, 0] with 3 and 1 response tokens -> token values [1,1,1,0]: mean 0.75,
    # unbiased std sqrt((3*0.0625 + 0.5625)/3) = 0.5 -> row 0: 0.25/0.5 = 0.5, row 1: -0.75/0.5 = -1.5
    batch = make_batch([1, 0], [0, 0], lengths=[3, 1])
    got = per_sample(advantages.reinforce_pp(batch, whiten="tokens"), batch)
    torch.testing.assert_close(got, torch.tensor([0.25, -0.75]) / (0.5 + 1e-6))
    with pytest.raises(ValueError):
        advantages.reinforce_pp(batch, whiten="groups")
