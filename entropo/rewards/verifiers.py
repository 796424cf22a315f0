"""Verifier rewards: ``correct`` (the task's own verifier), ``task_score`` (the task's graded score, e.g.
reasoning-gym's ``score_answer``), ``math_verify`` (math-verify equivalence), ``exact_match`` (normalized string
equality of an extracted answer).

Reward signature: ``fn(sample: entropo.types.Sample, **params) -> float``. None of these set their own timeouts:
the :class:`entropo.rewards.runner.RewardRunner` owns the time limit (math-verify's internal ``signal.alarm`` is
disabled because it would cancel the runner's timer and does not work off the main thread).
"""

from __future__ import annotations

from entropo.registry import register
from entropo.tasks.base import extract as _extract
from entropo.tasks.base import math_equal, normalize_answer
from entropo.types import Sample


def _need_task(sample: Sample, reward: str):
    if sample.task is None:
        raise ValueError(f"reward {reward!r} needs sample.task (the Task whose verifier decides correctness)")
    return sample.task


@register("reward", "correct", description="task verifier: correct_value if correct else wrong_value (DAPO: +1/-1)")
def correct(sample: Sample, correct_value: float = 1.0, wrong_value: float = 0.0) -> float:
    """``correct_value`` if the outcome is correct else ``wrong_value``: the environment's verdict when its episode
    gave one (``sample.episode.env_correct``), else ``sample.task.correct(completion, example)`` on the final action.
    DAPO (arXiv 2503.14476) uses ``correct_value=1, wrong_value=-1``."""
    verdict = sample.episode.env_correct if sample.episode is not None else None
    if verdict is None:
        verdict = _need_task(sample, "correct").correct(sample.completion, sample.example)
    return float(correct_value) if verdict else float(wrong_value)


@register("reward", "task_score", description="the task's graded score (reasoning-gym score_answer) or its verifier")
def task_score(sample: Sample, correct_value: float = 1.0, wrong_value: float = 0.0) -> float:
    """``task.score(completion, example)`` when the task has a ``score`` method (reasoning-gym: partial credit in
    [0, 1]); otherwise the same as ``correct``. The score is mapped linearly onto ``[wrong_value, correct_value]``."""
    task = _need_task(sample, "task_score")
    score_fn = getattr(task, "score", None)
    if callable(score_fn):
        s = float(score_fn(sample.completion, sample.example))
        return float(wrong_value) + s * (float(correct_value) - float(wrong_value))
    return correct(sample, correct_value=correct_value, wrong_value=wrong_value)


@register("reward", "math_verify", description="math-verify equivalence of the completion and example.answer")
def math_verify(sample: Sample, correct_value: float = 1.0, wrong_value: float = 0.0) -> float:
    """math-verify ``parse`` of the completion (``\\boxed{}``, ``$...$``, plain numbers/expressions) and of the gold
    ``example.answer`` (wrapped in ``$...$`` when it is bare LaTeX), then ``verify(gold, pred)``."""
    gold = sample.example.answer
    if gold is None:
        raise ValueError("reward 'math_verify' needs example.answer (the gold answer)")
    return float(correct_value) if math_equal(sample.completion, str(gold)) else float(wrong_value)


@register("reward", "exact_match", description="normalized exact match of an extracted answer and example.answer")
def exact_match(
    sample: Sample,
    extract: str = "last_line",
    lowercase: bool = True,
    strip_period: bool = True,
    correct_value: float = 1.0,
    wrong_value: float = 0.0,
) -> float:
    """Extract the answer (``extract``: ``last_line`` | ``answer_tag`` | ``last_number`` | ``none`` = whole
    completion), normalize both sides (strip, collapse whitespace, optional lowercase, optional trailing-period
    removal) and compare. No extraction match (e.g. no ``<answer>`` tag) → ``wrong_value``."""
    gold = sample.example.answer
    if gold is None:
        raise ValueError("reward 'exact_match' needs example.answer (the gold answer)")
    got = _extract(sample.completion, extract)
    if got is None:
        return float(wrong_value)
    same = normalize_answer(got, lowercase, strip_period) == normalize_answer(str(gold), lowercase, strip_period)
    return float(correct_value) if same else float(wrong_value)

