"""Hostile reward functions and components for tests/test_faults.py.

A module of its own with light imports: process-isolated rewards are imported by name in their worker process.
"""

import hashlib
import time


from entropo.registry import register


@register("reward", "_fault_pbkdf2")
def pbkdf2(sample, iterations: int = 50_000_000):
    """One long C call that never returns to the interpreter (signals wait for it): 'fast' completions are cheap."""
    n = 1 if sample.completion == "fast" else iterations
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", n)
    return 1.0


@register("reward", "_fault_swallows_and_returns")
def swallows_and_returns(sample):
    """Catches even BaseException (the timeout) and reports success."""
    try:
        while True:
            pass
    except BaseException:  # noqa: BLE001 - the point of the test
        return 1.0


@register("reward", "_fault_hangs")
def hangs(sample):
    time.sleep(30)
    return 1.0


@register("reward", "_fault_uses_task")
def uses_task(sample):
    """Needs the task in the worker process."""
    return 1.0 if sample.task.correct(sample.completion, sample.example) else 0.0


@register("regularizer", "_fault_nan_on_calls")
class NanOnCalls:
    """Sum of log-probs (a real gradient), except NaN on the listed (0-based) calls: a non-finite loss and gradient."""

    def __init__(self, calls: list[int] = ()):  # noqa: B006 - read only
        self.calls = set(calls)
        self.n = 0

    def __call__(self, ctx):
        bad = self.n in self.calls
        self.n += 1
        per_token = ctx.logprobs * (float("nan") if bad else 1.0)
        return per_token, {}
