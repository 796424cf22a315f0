"""Methods on real multi-turn tool episodes: OTC (engine-counted calls, OTC-GRPO's group estimate), ASPO's first-call
position from tool turns, EMPG's steps = turns."""

import math

import pytest
import torch

from entropo.algorithms.aspo import _first_call_tokens, aspo
from entropo.algorithms.otc import OTCGroup, group_optimal_calls
from entropo.algorithms.segments import step_ids
from entropo.batch import Batch
from entropo.rewards.tool_efficiency import otc
from entropo.types import EpisodeInfo, Example, Sample


class _Task:
    def correct(self, completion, example):
        return completion.strip() == example.answer


def _sample(completion, tool_calls, num_turns, answer="408", env_correct=None):
    return Sample(completion=completion, example=Example(prompt="12*34=", answer=answer), task=_Task(),
                  episode=EpisodeInfo(num_turns=num_turns, tool_calls=tool_calls, env_correct=env_correct,
                                      tool_call_turns=list(range(tool_calls))))


def test_otc_counts_the_engines_tool_calls_not_text_markers():
    # a final answer without any call marker, after two tool-calling turns: m = 2 -> cos(2π/5) = 0.30902
    assert otc(_sample("408", tool_calls=2, num_turns=3)) == pytest.approx(0.30902, abs=1e-5)
    assert otc(_sample("408", tool_calls=0, num_turns=1)) == 1.0  # single turn, no markers: m = 0
    assert otc(_sample("407", tool_calls=1, num_turns=2)) == 0.0  # wrong answer
    assert otc(_sample("407", tool_calls=1, num_turns=2, env_correct=True)) == pytest.approx(0.5)  # env's verdict


def _otc_batch(calls, correct, groups, prompts=None):
    b = len(calls)
    prompts = prompts or [f"q{g}" for g in groups]
    return Batch(input_ids=torch.ones(b, 2, dtype=torch.long), attention_mask=torch.ones(b, 2),
                 response_mask=torch.ones(b, 2), rewards=torch.zeros(b), group_ids=torch.tensor(groups),
                 correct=torch.tensor(correct), tool_calls=torch.tensor(calls),
                 info={"sample": [Sample(completion="", example=Example(prompt=p), task=None) for p in prompts]})


def test_otc_grpo_group_estimate_by_hand():
    assert group_optimal_calls([0, 1, 2, 3, 2], [False, True, True, False, True], [0] * 5) == {0: 1}
    batch = _otc_batch([0, 1, 2, 3, 2, 4, 4], [False, True, True, False, True, False, False], [0] * 5 + [1] * 2)
    metrics = OTCGroup(track=False)(batch)
    # n = 1 in group 0: m = 1 -> f = 1 -> sin(π/2) = 1; m = 2 -> f = 4/3 -> sin(2π/3) = 0.86603; wrong rows 0;
    # group 1 has no correct answer: no estimate, rewards 0
    assert batch.rewards.tolist() == pytest.approx([0, 1, 0.86603, 0, 0.86603, 0, 0], abs=1e-5)
    assert metrics["otc_optimal_calls_mean"] == 1.0 and metrics["otc_groups_with_estimate"] == 1.0
    # tracked across steps per question: n = min(earlier best 1, this group's 3) = 1
    tracked = OTCGroup(track=True)
    tracked.best = {"q0": 1}
    later = _otc_batch([3, 4], [True, True], [0, 0])
    tracked(later)
    assert later.rewards.tolist() == pytest.approx([math.sin(0.75 * math.pi), math.sin(0.8 * math.pi)], abs=1e-6)
    assert tracked.state_dict() == {"best": {"q0": 1}}
    fresh = _otc_batch([3, 4], [True, True], [0, 0])
    OTCGroup(track=False)(fresh)  # n = 3: m = 3 peaks at 1; m = 4 -> f = 24/7
    assert fresh.rewards.tolist() == pytest.approx([1.0, math.sin(24 / 7 * math.pi / 6)], abs=1e-6)


def _episode_batch():
    """Two 3-turn episodes (2 policy tokens per turn, 1 observation token after turns 0 and 1):
    row 0 called a tool in turns 0 and 1, row 1 only in turn 1."""
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 1, 1]] * 2, dtype=torch.float32)
    turns = torch.tensor([[-1, 0, 0, 0, 1, 1, 1, 2, 2]] * 2)
    samples = [Sample(completion="408", example=Example(prompt="q"), task=None,
                      episode=EpisodeInfo(num_turns=3, tool_calls=len(t), tool_call_turns=t)) for t in ([0, 1], [1])]
    return Batch(input_ids=torch.ones(2, 9, dtype=torch.long), attention_mask=torch.ones(2, 9), response_mask=mask,
                 rewards=torch.tensor([1.0, 1.0]), group_ids=torch.tensor([0, 0]), turn_ids=turns,
                 correct=torch.tensor([True, True]), advantages=mask * torch.tensor([[0.5], [-0.5]]),
                 info={"sample": samples, "completion": ["408", "408"]})


def test_aspo_first_call_is_where_the_first_tool_turn_ends_in_policy_tokens():
    batch = _episode_batch()
    position, has_call = _first_call_tokens(batch, ("```python",), None)
    assert position.tolist() == [2.0, 4.0] and has_call.tolist() == [True, True]  # observation tokens not counted
    aspo(batch, delta=-2.0, k=0.7)
    # p = [2, 4], p̄ = 3, L̄ = 6: raw = -2 (p - 3) / 6 = [1/3, -1/3]; bounds k|A| = 0.35 -> bias [1/3, -1/3]
    assert batch.advantages[0, 1].item() == pytest.approx(0.5 + 1 / 3)
    assert batch.advantages[1, 1].item() == pytest.approx(-0.5 - 1 / 3)
    assert torch.all(batch.advantages[batch.response_mask == 0] == 0)


def test_empg_steps_are_the_episode_turns():
    batch = _episode_batch()
    expected = torch.tensor([[-1, 0, 0, -1, 1, 1, -1, 2, 2]] * 2)
    assert torch.equal(step_ids(batch), expected)
    single = _episode_batch()
    single.turn_ids = torch.where(single.response_mask > 0, 0, -1)  # one-turn rows: the text rule applies
    assert torch.equal(step_ids(single, rule="none"), torch.where(single.response_mask > 0, 0, -1))
