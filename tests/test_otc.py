"""OTC tool-efficiency reward (arXiv 2504.14870): spec toy values for OTC-PPO and OTC-GRPO, and where m / n come from."""

import math

import pytest

from entropo import registry
from entropo.rewards.tool_efficiency import (
    count_tool_calls,
    first_tool_call,
    otc,
    otc_grpo_tool_reward,
    otc_ppo_tool_reward,
)
from entropo.types import EpisodeInfo, Example, Sample


class ExactTask:
    def correct(self, completion, example):
        return completion.strip().endswith(example.answer)


def test_otc_ppo_toy_values():
    # c = 1: cos(mπ/(2m + 1)) for m = 0..4 = cos(0), cos(π/3), cos(2π/5), cos(3π/7), cos(4π/9)
    expected = [1.0, 0.5, 0.30902, 0.22252, 0.17365]
    assert [otc_ppo_tool_reward(m, 1.0) for m in range(5)] == pytest.approx(expected, abs=1e-5)


def test_otc_grpo_toy_values():
    # n = 2: f = 2·2m/(m + 2) = [0, 4/3, 2, 12/5, 8/3, 20/7]; sin(fπ/4) = [0, 0.86603, 1, 0.95106, 0.86603, 0.78183]
    expected = [0.0, 0.86603, 1.0, 0.95106, 0.86603, 0.78183]
    assert [otc_grpo_tool_reward(m, 2, 1.0) for m in range(6)] == pytest.approx(expected, abs=1e-5)
    # n = 0: 1 at m = 0, then the OTC-PPO curve
    assert [otc_grpo_tool_reward(m, 0, 1.0) for m in range(4)] == pytest.approx([1, 0.5, 0.30902, 0.22252], abs=1e-5)


def _sample(completion, answer="7", meta=None):
    return Sample(completion=completion, example=Example(prompt="3+4=", answer=answer, meta=meta or {}),
                  task=ExactTask())


def test_reward_counts_markers_and_multiplies_by_correctness():
    assert registry.get("reward", "otc") is otc
    two_calls = "<code>3+4</code> then <tool_call>x</tool_call> so 7"
    assert count_tool_calls(two_calls) == 2 and first_tool_call(two_calls) == 0
    assert first_tool_call("no call") is None
    # correct, m = 2, PPO form: cos(2π/5) = 0.30902; α = 2 doubles it
    assert otc(_sample(two_calls)) == pytest.approx(0.30902, abs=1e-5)
    assert otc(_sample(two_calls), alpha=2.0) == pytest.approx(0.61803, abs=1e-5)
    # wrong answer → 0 whatever the calls (product with r_φ)
    assert otc(_sample(two_calls, answer="8")) == 0.0
    assert otc(_sample("7")) == 1.0  # no call


def test_reward_grpo_reads_optimal_calls_from_param_or_meta():
    one_call = "```python\nprint(3+4)\n```\n7"
    # n = 2 from the example's meta, m = 1: sin((4/3)π/4) = sin(π/3) = 0.86603
    assert otc(_sample(one_call, meta={"min_tool_calls": 2}), variant="grpo") == pytest.approx(0.86603, abs=1e-5)
    # the param wins over meta: n = 1, m = 1 → f = 1 → sin(π/2) = 1
    assert otc(_sample(one_call, meta={"min_tool_calls": 2}), variant="grpo", optimal_calls=1) == pytest.approx(1.0)
    # n unknown → OTC-PPO form: cos(π/3) = 0.5
    assert otc(_sample(one_call), variant="grpo") == pytest.approx(0.5)
    with pytest.raises(ValueError):
        otc(_sample(one_call), variant="nope")


def test_reward_prefers_the_engines_tool_call_count():
    """In a multi-turn episode m is the engine's count of tool-calling turns, not markers in the final text."""
    s = Sample(completion="7", example=Example(prompt="p", answer="7"), task=ExactTask(),
               episode=EpisodeInfo(num_turns=4, tool_calls=3))
    assert otc(s) == pytest.approx(math.cos(3 * math.pi / 7))
