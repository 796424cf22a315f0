"""Rewards: hand-checked values for every reward, composite weights, failure isolation and timeouts."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from entropo.registry import UnknownComponentError, get, names, register
from entropo.rewards import RewardRunner, call_with_timeout
from entropo.rewards.length import overlong_penalty
from entropo.rewards.runner import CallTimeout
from entropo.types import Example, Sample


class AddTask:
    """Minimal task: the last number must equal example.answer."""

    name = "add"

    def correct(self, completion, example):
        from entropo.tasks.base import extract_last_number, numbers_equal

        return numbers_equal(extract_last_number(completion), example.answer)


class GradedTask(AddTask):
    def score(self, completion, example):
        return 0.25


def S(completion, answer="12", task=None, num_tokens=0, max_tokens=0, truncated=False):
    return Sample(completion=completion, example=Example(prompt="q", answer=answer), task=task or AddTask(),
                  num_tokens=num_tokens, max_tokens=max_tokens, truncated=truncated)


# test-only rewards (registered once; names prefixed so they cannot clash with built-ins)
@register("reward", "_test_raises")
def _raises(sample):
    raise ValueError("boom")


@register("reward", "_test_loops")
def _loops(sample):
    while True:
        pass


@register("reward", "_test_swallows")
def _swallows(sample):
    # reward code with a broad `except Exception` (like math-verify) must not swallow the timeout
    while True:
        try:
            while True:
                pass
        except Exception:  # noqa: BLE001
            pass


@register("reward", "_test_loops_if_bad")
def _loops_if_bad(sample):
    if "bad" in sample.completion:
        while True:
            pass
    return 0.5


@register("reward", "_test_nan")
def _nan(sample):
    return float("nan")


def test_builtin_rewards_registered():
    assert {"correct", "task_score", "math_verify", "exact_match", "format", "overlong"} <= set(names("reward"))


def test_correct_and_task_score():
    correct, task_score = get("reward", "correct"), get("reward", "task_score")
    assert correct(S("7 + 5 = 12")) == 1.0
    assert correct(S("12 + 1 = 13")) == 0.0
    assert correct(S("12"), correct_value=1.0, wrong_value=-1.0) == 1.0
    assert correct(S("13"), correct_value=1.0, wrong_value=-1.0) == -1.0  # DAPO +1/-1
    assert task_score(S("12")) == 1.0  # no score(): same as correct
    assert task_score(S("13")) == 0.0
    assert task_score(S("13", task=GradedTask())) == 0.25
    assert task_score(S("13", task=GradedTask()), wrong_value=-1.0) == -1.0 + 0.25 * 2.0


def test_task_score_reasoning_gym():
    t = get("task", "reasoning_gym")(seed=0, eval_size=1, dataset="leg_counting", size=5)
    e = t.train_example(0)
    ts = get("reward", "task_score")
    assert ts(Sample(completion=f"<answer>{e.answer}</answer>", example=e, task=t)) == 1.0
    assert ts(Sample(completion="<answer>-1</answer>", example=e, task=t)) < 1.0


def test_math_verify_reward():
    mv = get("reward", "math_verify")
    assert mv(S("so the result is \\boxed{12}")) == 1.0
    assert mv(S("The answer is 12.")) == 1.0
    assert mv(S("The answer is 13.")) == 0.0
    assert mv(S("$\\frac{2}{4}$", answer="\\frac{1}{2}")) == 1.0  # bare LaTeX gold wrapped in $...$
    assert mv(S("\\boxed{0.5}", answer="1/2")) == 1.0
    assert mv(S("\\boxed{x^2+1}", answer="1 + x^2")) == 1.0
    assert mv(S("\\boxed{3}", answer="$\\boxed{3}$")) == 1.0
    assert mv(S("no answer", answer="\\frac{1}{2}")) == 0.0
    assert mv(S("\\boxed{12}"), correct_value=1.0, wrong_value=-1.0) == 1.0


def test_math_verify_inside_runner_thread_and_timer():
    # math-verify's own signal.alarm is disabled, so it runs off the main thread and under the runner's timer
    runner = RewardRunner([{"name": "math_verify"}], timeout_s=5.0)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", runner.score([S("\\boxed{12}"), S("\\boxed{11}")])))
    th.start()
    th.join(30)
    assert out["r"].rewards == [1.0, 0.0] and out["r"].failures == [None, None]
    r = runner.score([S("\\boxed{12}")])
    assert r.rewards == [1.0] and r.failures == [None]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_exact_match():
    em = get("reward", "exact_match")
    assert em(S("thinking...\nParis.", answer="paris")) == 1.0  # last line, lowercase, trailing period
    assert em(S("thinking...\nParis.", answer="paris"), lowercase=False) == 0.0
    assert em(S("Paris.", answer="Paris"), strip_period=False) == 0.0
    assert em(S("<answer> Paris </answer>\nbye", answer="Paris"), extract="answer_tag") == 1.0
    assert em(S("no tag", answer="Paris"), extract="answer_tag") == 0.0
    assert em(S("it is 12 apples", answer="12"), extract="last_number") == 1.0
    assert em(S("  12  ", answer="12"), extract="none") == 1.0
    with pytest.raises(ValueError, match="extract mode"):
        em(S("12"), extract="first_word")


def test_format_reward():
    fmt = get("reward", "format")
    assert fmt(S("<think>a\nb</think>\n<answer>12</answer>")) == 1.0
    assert fmt(S("  <think>a</think><answer>12</answer>\n")) == 1.0  # stripped
    assert fmt(S("<answer>12</answer>")) == 0.0
    assert fmt(S("<think>a</think><answer>12</answer> extra")) == 0.0
    assert fmt(S("The answer is 12"), pattern=r"answer is \d+") == 1.0
    assert fmt(S("nope"), pattern=r"answer", match_value=1.0, miss_value=-1.0) == -1.0


def test_overlong_dapo_toy_values():
    # arXiv 2503.14476 / rlvr.md 25.3: L_max = 20480, L_cache = 4096
    assert overlong_penalty(16384, 20480, 4096) == 0.0
    assert overlong_penalty(18432, 20480, 4096) == -0.5
    assert overlong_penalty(20480, 20480, 4096) == -1.0
    assert overlong_penalty(30000, 20480, 4096) == -1.0
    assert overlong_penalty(1000, 20480, 4096) == 0.0
    ol = get("reward", "overlong")
    assert ol(S("x", num_tokens=18432), max_length=20480, buffer=4096) == -0.5
    assert ol(S("x", num_tokens=18432), max_length=20480, buffer=4096, penalty_factor=0.5) == -0.25
    # defaults: L_max = sample.max_tokens (100), buffer = 0.2 * 100 = 20
    assert ol(S("x", num_tokens=80, max_tokens=100)) == 0.0
    assert ol(S("x", num_tokens=90, max_tokens=100)) == -0.5
    assert ol(S("x", num_tokens=100, max_tokens=100, truncated=True)) == -1.0
    assert ol(S("x", num_tokens=0, max_tokens=100, truncated=True)) == -1.0  # truncated counts as L_max
    with pytest.raises(ValueError, match="max_length"):
        ol(S("x", num_tokens=10))


def test_runner_composite_weights_hand_values():
    runner = RewardRunner(
        [
            {"name": "correct", "weight": 1.0, "params": {"correct_value": 1.0, "wrong_value": -1.0}},
            {"name": "format", "weight": 0.5},
            {"name": "overlong", "weight": 2.0, "params": {"max_length": 100, "buffer": 20}},
        ]
    )
    samples = [
        S("<think>7+5</think><answer>12</answer>", num_tokens=50),  # +1, fmt 1, len 0      -> 1 + 0.5 + 0 = 1.5
        S("<think>7+5</think><answer>13</answer>", num_tokens=90),  # -1, fmt 1, len -0.5   -> -1 + 0.5 - 1 = -1.5
        S("12", num_tokens=100, truncated=True),  # +1, fmt 0, len -1        -> 1 + 0 - 2 = -1.0
    ]
    r = runner.score(samples)
    assert r.rewards == pytest.approx([1.5, -1.5, -1.0])
    assert r.components == {"correct": [1.0, -1.0, 1.0], "format": [1.0, 1.0, 0.0], "overlong": [0.0, -0.5, -1.0]}
    assert r.correct == [True, False, True]
    assert r.failures == [None, None, None] and r.num_failures == 0


def test_runner_raising_and_looping_rewards_are_isolated():
    runner = RewardRunner(
        [{"name": "correct"}, {"name": "_test_raises", "weight": 3.0}, {"name": "_test_loops_if_bad", "weight": 2.0}],
        timeout_s=0.2,
    )
    t0 = time.monotonic()
    r = runner.score([S("12"), S("bad 13"), S("12")])
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0
    assert r.components["correct"] == [1.0, 0.0, 1.0]
    assert r.components["_test_raises"] == [0.0, 0.0, 0.0]
    assert r.components["_test_loops_if_bad"] == [0.5, 0.0, 0.5]
    assert r.rewards == pytest.approx([2.0, 0.0, 2.0])  # good samples still scored
    assert r.failures[0] == "reward _test_raises raised ValueError: boom"
    assert "reward _test_loops_if_bad timed out after 0.2 s" in r.failures[1]
    assert "reward _test_raises raised ValueError: boom" in r.failures[1]
    assert r.correct == [True, False, True]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_runner_infinite_loop_and_failure_value():
    runner = RewardRunner([{"name": "_test_loops"}, {"name": "_test_swallows", "failure_value": -1.0}],
                          timeout_s=0.2, failure_value=-0.5)
    r = runner.score([S("12")])
    assert r.components == {"_test_loops": [-0.5], "_test_swallows": [-1.0]}
    assert r.rewards == [-1.5]
    assert r.failures[0] == ("reward _test_loops timed out after 0.2 s; reward _test_swallows timed out after 0.2 s")


def test_runner_timeout_off_main_thread():
    runner = RewardRunner([{"name": "correct"}, {"name": "_test_loops"}], timeout_s=0.2)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", runner.score([S("12"), S("13")])))
    th.start()
    th.join(10)
    assert not th.is_alive()
    r = out["r"]
    assert r.components["correct"] == [1.0, 0.0]
    assert r.failures == ["reward _test_loops timed out after 0.2 s"] * 2
    time.sleep(0.05)  # the injected exception stops the abandoned pure-Python loops
    assert not [t for t in threading.enumerate() if t.name == "entropo-reward" and t.is_alive()]


def test_runner_protects_verifier_and_bad_return_values():
    class BrokenTask:
        def correct(self, completion, example):
            raise RuntimeError("verifier bug")

    r = RewardRunner([{"name": "_test_nan"}]).score([S("12", task=BrokenTask())])
    assert r.correct == [False]
    assert r.failures[0] == "verifier (task.correct) raised RuntimeError: verifier bug; reward _test_nan returned nan"
    assert r.rewards == [0.0]


def test_runner_spec_errors_and_labels():
    with pytest.raises(UnknownComponentError, match="unknown reward 'corect'.*correct"):
        RewardRunner([{"name": "corect"}])
    with pytest.raises(TypeError, match="'pattrn'.*pattern"):
        RewardRunner([{"name": "format", "params": {"pattrn": "x"}}])
    with pytest.raises(TypeError, match="'wieght'"):
        RewardRunner([{"name": "format", "wieght": 2}])
    runner = RewardRunner(["format", {"name": "format", "params": {"pattern": "12"}}, {"name": "correct", "label": "acc"}])
    r = runner.score([S("12")])
    assert r.components == {"format": [0.0], "format#2": [1.0], "acc": [1.0]}


def test_call_with_timeout_nested_restores_outer_timer():
    def inner():
        return call_with_timeout(lambda: 7, 0.5)

    assert call_with_timeout(inner, 2.0) == 7
    # an outer timer set by someone else survives a timed call
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(CallTimeout):
            call_with_timeout(lambda: time.sleep(5), 0.05)
        assert 0.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.3
        time.sleep(0.4)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
