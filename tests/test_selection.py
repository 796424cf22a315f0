"""Selection: DAPO dynamic sampling keeps only groups whose rewards differ."""

import torch

from entropo import registry
from entropo.algorithms import selection
from entropo.batch import Batch


def make_batch(rewards, group_ids, token_rewards=None):
    B = len(rewards)
    return Batch(
        input_ids=torch.ones(B, 3, dtype=torch.long),
        attention_mask=torch.ones(B, 3, dtype=torch.long),
        response_mask=torch.ones(B, 3),
        rewards=torch.tensor(rewards, dtype=torch.float),
        group_ids=torch.tensor(group_ids, dtype=torch.long),
        token_rewards=token_rewards,
    )


def test_registered():
    assert registry.get("selection", "dynamic_sampling") is selection.dynamic_sampling


def test_dynamic_sampling_by_hand_uneven_groups():
    # group 7: [1, 0, 0] spread 1 -> keep; group 3: [1, 1] spread 0 -> drop; group 9: [1] singleton -> drop;
    # group 11: [0, 0, 0, 1] spread 1 -> keep; group -2: [-1, -1, +1] (DAPO +-1 rewards) -> keep. Rows interleaved.
    rewards = [1, 1, 0, 1, 0, 1, 0, 0, 0, 1, -1, -1, 1]
    groups = [7, 3, 7, 3, 7, 9, 11, 11, 11, 11, -2, -2, -2]
    keep = selection.dynamic_sampling(make_batch(rewards, groups))
    assert keep.dtype == torch.bool and keep.shape == (13,)
    assert keep.tolist() == [True, False, True, False, True, False, True, True, True, True, True, True, True]


def test_dynamic_sampling_uses_rewards_not_returns():
    # equal outcome rewards but different dense token rewards: still zero spread in the reward -> dropped
    token_rewards = torch.tensor([[0.0, 0.3, 0.0], [0.0, 0.0, 0.0]])
    keep = selection.dynamic_sampling(make_batch([1, 1], [0, 0], token_rewards=token_rewards))
    assert keep.tolist() == [False, False]


def test_dynamic_sampling_eps():
    # spread 1e-9 is below the default eps 1e-8 -> dropped; spread 0.5 with eps 0.6 -> dropped
    assert selection.dynamic_sampling(make_batch([0.0, 1e-9], [0, 0])).tolist() == [False, False]
    assert selection.dynamic_sampling(make_batch([0.0, 0.5], [0, 0]), eps=0.6).tolist() == [False, False]
    assert selection.dynamic_sampling(make_batch([0.0, 0.5], [0, 0])).tolist() == [True, True]


def test_dynamic_sampling_unknown_metric():
    import pytest

    with pytest.raises(ValueError, match="reward"):
        selection.dynamic_sampling(make_batch([0.0, 1.0], [0, 0]), metric="accuracy")
