"""RewardRunner: compose weighted reward functions over a batch of samples, protecting every call.

``RewardRunner(specs=[{"name": "correct", "weight": 1.0, "params": {...}}, ...], timeout_s=5.0)``;
``runner.score(samples) -> RewardResult`` with the weighted composite ``rewards``, the unweighted per-reward
``components``, per-sample ``failures`` (None or a message) and the task verifier's ``correct`` flags.

A reward (or the task verifier) that raises or exceeds its time limit gives that sample ``failure_value`` (default 0.0)
for that component and a failure message; ``score`` itself never raises because of a reward.

Timeouts (:func:`call_with_timeout`):

* **Main thread of the main interpreter** (the usual case): ``signal.setitimer(ITIMER_REAL)`` plus a ``SIGALRM``
  handler that raises inside the reward, which interrupts pure-Python infinite loops and most long computations
  (not a single long-running C call that never returns to the interpreter). An outer ``ITIMER_REAL`` timer, if one
  was running, is restored afterwards with its remaining time. The exception raised by the handler derives from
  ``BaseException``, so reward code with a broad ``except Exception`` (math-verify has several) cannot swallow it.
* **Any other thread**: the call runs in a daemon thread joined with the timeout. On timeout an asynchronous
  exception is injected into that thread (``PyThreadState_SetAsyncExc``), which stops pure-Python loops at their next
  bytecode; a call hung inside C code cannot be interrupted and its thread is abandoned (it is a daemon thread,
  so it does not block interpreter exit).

math-verify's own ``signal.alarm`` timeouts are disabled by entropo's wrappers (``parsing_timeout=None``,
``timeout_seconds=None``): ``alarm`` and ``setitimer(ITIMER_REAL)`` share one timer, so a nested math-verify alarm would
cancel the runner's, and math-verify refuses to run its alarm off the main thread.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from entropo.registry import get
from entropo.types import Sample

log = logging.getLogger("entropo.rewards")


class CallTimeout(TimeoutError):
    """Raised by :func:`call_with_timeout` when the call exceeded its time limit."""


class _Alarm(BaseException):
    """Raised inside the timed call by the SIGALRM handler (BaseException: not caught by ``except Exception``)."""


class _Abandoned(BaseException):
    """Injected into a timed-out worker thread to stop it."""


def _alarm_call(fn: Callable[..., Any], timeout_s: float, args: tuple, kwargs: dict) -> Any:
    token = object()

    def handler(signum, frame):  # noqa: ARG001
        raise _Alarm(token)

    old_handler = signal.signal(signal.SIGALRM, handler)  # ValueError off the main thread -> caller falls back
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, 0)
    delay = timeout_s if old_delay <= 0 else min(timeout_s, old_delay)
    start = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, delay)
        try:
            return fn(*args, **kwargs)
        finally:
            while True:  # a late alarm may interrupt the restore itself: retry until it completes
                try:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    signal.signal(signal.SIGALRM, old_handler)
                    if old_delay > 0:
                        remaining = max(old_delay - (time.monotonic() - start), 1e-6)
                        signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)
                    break
                except _Alarm:
                    continue
    except _Alarm as e:
        if e.args and e.args[0] is token:
            raise CallTimeout(f"timed out after {float(timeout_s)} s") from None
        raise


def _thread_call(fn: Callable[..., Any], timeout_s: float, args: tuple, kwargs: dict) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - forwarded to the caller (or dropped after a timeout)
            box["error"] = e

    t = threading.Thread(target=run, name="entropo-reward", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        if t.ident is not None:  # stop a pure-Python loop; a call blocked in C keeps running (abandoned daemon)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(_Abandoned))
        raise CallTimeout(f"timed out after {float(timeout_s)} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def call_with_timeout(fn: Callable[..., Any], timeout_s: float | None, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with a wall-clock limit; raises :class:`CallTimeout` when it is exceeded.
    ``timeout_s`` None or <= 0 disables the limit. See the module docstring for the two mechanisms."""
    if timeout_s is None or timeout_s <= 0:
        return fn(*args, **kwargs)
    if (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) is not None  # None: a C-level handler we could not restore
    ):
        try:
            return _alarm_call(fn, timeout_s, args, kwargs)
        except ValueError as e:
            if "signal only works in main thread" not in str(e):
                raise
            # not the main interpreter: fall through to the thread mechanism
    return _thread_call(fn, timeout_s, args, kwargs)


# ---------------------------------------------------------------------------------------------------- runner

_SPEC_KEYS = ("name", "weight", "params", "label", "timeout_s", "failure_value")


@dataclass
class RewardSpec:
    name: str
    fn: Callable[..., float]
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    timeout_s: float | None = None
    failure_value: float | None = None


@dataclass
class RewardResult:
    """Per-sample outputs of :meth:`RewardRunner.score` (all lists have one entry per sample)."""

    rewards: list[float]  # weighted sum over the reward specs (the composite reward)
    components: dict[str, list[float]]  # unweighted value of each reward, keyed by its label (default: its name)
    failures: list[str | None]  # None, or "reward <label> raised ValueError: ..." / "... timed out after 5.0 s"
    correct: list[bool]  # the task verifier (task.correct), also protected

    @property
    def num_failures(self) -> int:
        return sum(f is not None for f in self.failures)


def _spec_field(spec: Any, key: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(key, default)
    return getattr(spec, key, default)


def _check_params(name: str, fn: Callable[..., Any], params: dict[str, Any]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [n for i, n in enumerate(sig.parameters) if i > 0]
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise TypeError(
            f"reward {name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"allowed parameters are: {', '.join(allowed) or '(none)'}"
        )


class RewardRunner:
    """Weighted composite of registered rewards with per-call timeouts and failure isolation.

    ``specs``: a list of dicts (or objects with the same attributes) with ``name`` (registered reward), optional
    ``weight`` (1.0), ``params`` ({}), ``label`` (key in ``components``; defaults to the name, made unique with
    ``#2``, ``#3``... when a name repeats), ``timeout_s`` and ``failure_value`` overriding the runner's defaults.
    Unknown reward names raise the registry's ``UnknownComponentError``; unknown params raise ``TypeError`` here,
    at construction, not at scoring time.
    """

    def __init__(self, specs: Sequence[Any], timeout_s: float | None = 5.0, failure_value: float = 0.0):
        self.timeout_s = timeout_s
        self.failure_value = float(failure_value)
        self.specs: list[RewardSpec] = []
        seen: dict[str, int] = {}
        for spec in specs:
            if isinstance(spec, str):
                spec = {"name": spec}
            if isinstance(spec, Mapping):
                bad = [k for k in spec if k not in _SPEC_KEYS]
                if bad:
                    raise TypeError(
                        f"reward spec has unknown key(s) {', '.join(map(repr, bad))}; allowed: {', '.join(_SPEC_KEYS)}"
                    )
            name = _spec_field(spec, "name")
            if not name:
                raise ValueError(f"reward spec without a name: {spec!r}")
            fn = get("reward", name)
            params = dict(_spec_field(spec, "params") or {})
            _check_params(name, fn, params)
            label = _spec_field(spec, "label") or name
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}#{seen[label]}"
            weight = _spec_field(spec, "weight", 1.0)
            self.specs.append(
                RewardSpec(
                    name=name,
                    fn=fn,
                    weight=1.0 if weight is None else float(weight),
                    params=params,
                    label=label,
                    timeout_s=_spec_field(spec, "timeout_s"),
                    failure_value=_spec_field(spec, "failure_value"),
                )
            )

    def _guarded(self, what: str, fn: Callable[..., Any], timeout_s: float | None, *args: Any, **kwargs: Any):
        """(value, failure message or None)."""
        try:
            return call_with_timeout(fn, timeout_s, *args, **kwargs), None
        except CallTimeout:
            return None, f"{what} timed out after {float(timeout_s)} s"
        except Exception as e:  # noqa: BLE001 - isolate every failure
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return None, f"{what} raised {type(e).__name__}" + (f": {msg[:300]}" if msg else "")

    def score(self, samples: Sequence[Sample]) -> RewardResult:
        n = len(samples)
        rewards = [0.0] * n
        components: dict[str, list[float]] = {s.label: [0.0] * n for s in self.specs}
        failures: list[list[str]] = [[] for _ in range(n)]
        correct = [False] * n
        for i, sample in enumerate(samples):
            task = getattr(sample, "task", None)
            if task is not None:
                ok, fail = self._guarded("verifier (task.correct)", task.correct, self.timeout_s,
                                         sample.completion, sample.example)
                if fail is None:
                    correct[i] = bool(ok)
                else:
                    failures[i].append(fail)
            for spec in self.specs:
                timeout_s = self.timeout_s if spec.timeout_s is None else spec.timeout_s
                value, fail = self._guarded(f"reward {spec.label}", spec.fn, timeout_s, sample, **spec.params)
                if fail is None:
                    try:
                        value = float(value)
                    except (TypeError, ValueError):
                        fail = f"reward {spec.label} returned a non-number {type(value).__name__}"
                    else:
                        if not math.isfinite(value):
                            fail = f"reward {spec.label} returned {value}"
                if fail is not None:
                    failures[i].append(fail)
                    value = self.failure_value if spec.failure_value is None else float(spec.failure_value)
                components[spec.label][i] = value
                rewards[i] += spec.weight * value
        out = [("; ".join(f) if f else None) for f in failures]
        bad = [f for f in out if f is not None]
        if bad:
            log.warning("%d of %d samples had reward failures; first: %s", len(bad), n, bad[0])
        return RewardResult(rewards=rewards, components=components, failures=out, correct=correct)
