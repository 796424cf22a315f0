"""``otc``: the tool-efficiency reward of OTC, Optimal Tool Calls (Wang et al., "Acting Less is Reasoning More!
Teaching Model to Act Efficiently", arXiv 2504.14870).

A correct answer earns more when it uses fewer tool calls. With m the number of tool calls of the response, r_φ its
correctness (the task verifier, 0/1) and c a smoothness constant:

    r = α · r_tool · r_φ
    OTC-PPO:   r_tool = cos(m·π / (2m + c))                         (1 at m = 0, decreasing in m)
    OTC-GRPO:  n = the minimal number of tool calls that solves the question;
               f(m, n) = 0 if m = n = 0;  m if n = 0;  2nm / (m + n) otherwise
               r_tool = 1 if f = n = 0;  cos(m·π / (2m + c)) if n = 0;  sin(f·π / (2n)) otherwise (peak at m = n)

No official code exists (spec §23); the formulas follow the paper's description. Resolutions: the product form
α·r_tool·r_φ (a wrong answer earns 0), c = 1 and α = 1 by default (the paper's values were not recovered).

Where the numbers come from:

- m: in a multi-turn episode, the number of turns its environment counted as tool calls (``sample.episode``, recorded
  by the engine); in a single response with inline calls, the occurrences of the ``call_markers`` strings in the
  completion (default: ``<tool_call>``, ``<code>``, and fenced ```` ```python ````).
- n (``variant: grpo``): the ``optimal_calls`` param, else ``sample.example.meta[optimal_calls_key]`` (default key
  ``min_tool_calls``). The paper estimates n from the group's correct responses (tracked across epochs); a reward
  function sees one sample, so the group estimate is the reward-stage shaping ``otc_grpo``
  (``entropo.algorithms.otc``); when n is unknown this reward falls back to the OTC-PPO form (n treated as unknown,
  not as 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from entropo.registry import register
from entropo.types import Sample

DEFAULT_CALL_MARKERS = ("<tool_call>", "<code>", "```python")


def count_tool_calls(text: str, markers: Sequence[str] = DEFAULT_CALL_MARKERS) -> int:
    """Number of (non-overlapping) occurrences of any call marker in ``text``."""
    return sum(text.count(marker) for marker in markers)


def first_tool_call(text: str, markers: Sequence[str] = DEFAULT_CALL_MARKERS) -> int | None:
    """Character offset of the first call marker in ``text`` (None when there is no call)."""
    offsets = [i for i in (text.find(marker) for marker in markers) if i >= 0]
    return min(offsets) if offsets else None


def otc_ppo_tool_reward(m: int, c: float = 1.0) -> float:
    """cos(mπ / (2m + c)): 1 with no call, decaying towards cos(π/2) = 0 as calls grow."""
    return math.cos(m * math.pi / (2 * m + c))


def otc_grpo_tool_reward(m: int, n: int, c: float = 1.0) -> float:
    """OTC-GRPO's r_tool for m calls when n calls is the known optimum (see the module docstring)."""
    if n == 0:
        return 1.0 if m == 0 else otc_ppo_tool_reward(m, c)
    f = 2 * n * m / (m + n)  # harmonic-mean-like mapping: f = n exactly when m = n
    return math.sin(f * math.pi / (2 * n))


def _tool_calls(sample: Sample, markers: Sequence[str]) -> int:
    """m: the engine's count of tool-calling turns in a multi-turn episode, else call markers in the text."""
    episode = getattr(sample, "episode", None)
    if episode is not None and (episode.num_turns > 1 or episode.tool_calls):
        return int(episode.tool_calls)
    return count_tool_calls(sample.completion, markers)


@register("reward", "otc", paper="Acting Less is Reasoning More (OTC, Optimal Tool Calls), arXiv 2504.14870")
def otc(sample: Sample, variant: str = "ppo", c: float = 1.0, alpha: float = 1.0, optimal_calls: int | None = None,
        optimal_calls_key: str = "min_tool_calls", call_markers: Sequence[str] = DEFAULT_CALL_MARKERS) -> float:
    """α · r_tool(m[, n]) · correct. ``variant`` is ``"ppo"`` or ``"grpo"`` (needs n; see the module docstring)."""
    if variant not in ("ppo", "grpo"):
        raise ValueError(f"otc: variant must be 'ppo' or 'grpo', got {variant!r}")
    if sample.task is None:
        raise ValueError("otc needs sample.task (its verifier decides correctness)")
    verdict = sample.episode.env_correct if getattr(sample, "episode", None) is not None else None
    if not (verdict if verdict is not None else sample.task.correct(sample.completion, sample.example)):
        return 0.0
    m = _tool_calls(sample, call_markers)
    n = optimal_calls if optimal_calls is not None else sample.example.meta.get(optimal_calls_key)
    if variant == "grpo" and n is not None:
        tool_reward = otc_grpo_tool_reward(m, int(n), c)
    else:
        tool_reward = otc_ppo_tool_reward(m, c)
    return float(alpha * tool_reward)
