"""``overlong``: DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
System at Scale", arXiv 2503.14476, Eq. 13; verl ``reward_manager/dapo.py``):

    R_len(L) = 0                                    if L <= L_max - L_cache
             = -(L - (L_max - L_cache)) / L_cache   if L_max - L_cache < L <= L_max
             = -1                                   if L > L_max

multiplied by ``penalty_factor`` and added to the correctness reward (give both to the RewardRunner).
Toy values (L_max = 20480, L_cache = 4096): L = 16384 → 0, 18432 → −0.5, 20480 → −1.0.
"""

from __future__ import annotations

from entropo.registry import register
from entropo.types import Sample


def overlong_penalty(length: int, max_length: int, buffer: int, penalty_factor: float = 1.0) -> float:
    """The DAPO formula above for one response length."""
    if max_length <= 0:
        raise ValueError(f"overlong: max_length must be positive, got {max_length}")
    if not 0 < buffer <= max_length:
        raise ValueError(f"overlong: buffer (L_cache) must be in (0, max_length={max_length}], got {buffer}")
    start = max_length - buffer
    if length <= start:
        return 0.0
    if length > max_length:
        return -float(penalty_factor)
    return -(length - start) / buffer * float(penalty_factor)


@register("reward", "overlong", description="DAPO soft overlong punishment (arXiv 2503.14476)")
def overlong(
    sample: Sample,
    max_length: int | None = None,
    buffer: int | None = None,
    buffer_fraction: float = 0.2,
    penalty_factor: float = 1.0,
) -> float:
    """Soft overlong penalty on ``L = sample.num_tokens``. ``max_length`` (L_max) defaults to ``sample.max_tokens``
    (the rollout's max_new_tokens); ``buffer`` (L_cache) defaults to ``round(buffer_fraction · L_max)`` (DAPO:
    4096 / 20480 = 0.2). A truncated sample counts as at least L_max tokens (→ ``-penalty_factor``)."""
    lmax = int(max_length) if max_length is not None else int(sample.max_tokens)
    if lmax <= 0:
        raise ValueError("overlong: set max_length (sample.max_tokens is 0, so L_max is unknown)")
    lcache = int(buffer) if buffer is not None else max(1, round(buffer_fraction * lmax))
    length = int(sample.num_tokens)
    if sample.truncated:
        length = max(length, lmax)
    return overlong_penalty(length, lmax, lcache, penalty_factor)
