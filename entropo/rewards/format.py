"""``format`` reward: 1.0 when the completion matches a regular expression, else 0.0. The default pattern is the
DeepSeek-R1 / TinyZero think-then-answer layout ``^<think>.*?</think>\\s*<answer>.*?</answer>$`` (DOTALL)."""

from __future__ import annotations

import functools
import re

from entropo.registry import register
from entropo.types import Sample

THINK_ANSWER = r"^<think>.*?</think>\s*<answer>.*?</answer>$"


@functools.lru_cache(maxsize=64)
def _compile(pattern: str, dotall: bool) -> re.Pattern:
    return re.compile(pattern, re.DOTALL if dotall else 0)


@register("reward", "format", description="regex format reward (default: <think>...</think><answer>...</answer>)")
def format_reward(
    sample: Sample,
    pattern: str = THINK_ANSWER,
    dotall: bool = True,
    strip: bool = True,
    match_value: float = 1.0,
    miss_value: float = 0.0,
) -> float:
    """``match_value`` if ``re.search(pattern, completion)`` (completion stripped first when ``strip``), else
    ``miss_value``. Anchor the pattern with ``^...$`` for a whole-completion match."""
    text = sample.completion.strip() if strip else sample.completion
    return float(match_value) if _compile(pattern, dotall).search(text) else float(miss_value)
