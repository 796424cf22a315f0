"""Reward functions, registered as ``("reward", name)`` with signature ``fn(sample: Sample, **params) -> float``:
``correct``, ``task_score``, ``math_verify``, ``exact_match`` (verifiers.py), ``format`` (format.py), ``overlong``
(length.py, DAPO). :class:`RewardRunner` (runner.py) composes weighted rewards with per-call timeouts and never raises
on a failing reward."""

from entropo.rewards import format, length, tool_efficiency, verifiers  # noqa: F401  (registers the rewards)
from entropo.rewards import reex_sql, reseek  # noqa: F401  (registers reex_sql, reseek_judge)
from entropo.rewards import scene_graph  # noqa: F401,E402  (registers triplet_f1)
from entropo.rewards.runner import RewardResult, RewardRunner, call_with_timeout

__all__ = ["RewardResult", "RewardRunner", "call_with_timeout"]
