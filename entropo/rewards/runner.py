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
  ``BaseException``, so reward code with a broad ``except Exception`` (math-verify has several) cannot swallow it; a
  call that catches even that and returns a value still counts as timed out (a failure).
* **Any other thread**: the call runs in a daemon thread joined with the timeout. On timeout an asynchronous
  exception is injected into that thread (``PyThreadState_SetAsyncExc``), which stops pure-Python loops at their next
  bytecode; a call hung inside C code cannot be interrupted and its thread is abandoned (it is a daemon thread,
  so it does not block interpreter exit).

* **Process isolation** (``isolation="process"``, per reward or for the whole runner): the reward runs in a worker
  process (multiprocessing ``forkserver``, else ``spawn``) fed one sample at a time; at the limit the worker is killed
  (SIGKILL) and replaced, so even a C call that never returns to the interpreter (``hashlib.pbkdf2_hmac``, a regex
  blow-up) is stopped on time. The task travels to the worker once, when it starts; rewards must be importable
  module-level functions. Cost: one round trip per sample (~0.1 ms), and a worker start after each kill.

Per-step budget (``budget_s``): each reward function may spend at most this long between two :meth:`RewardRunner.
end_step` calls (the trainer calls it once per RL step); after that its remaining samples fail at once with the
failure value instead of each costing a full timeout. ``end_step()`` returns the metric ``reward/budget_exhausted``
(samples failed that way) and a warning is logged the first time a reward runs out in a step.

math-verify's own ``signal.alarm`` timeouts are disabled by entropo's wrappers (``parsing_timeout=None``,
``timeout_seconds=None``): ``alarm`` and ``setitimer(ITIMER_REAL)`` share one timer, so a nested math-verify alarm would
cancel the runner's, and math-verify refuses to run its alarm off the main thread.
"""

from __future__ import annotations

import ctypes
import dataclasses
import inspect
import logging
import math
import pickle
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
    fired = []

    def handler(signum, frame):  # noqa: ARG001
        fired.append(True)
        raise _Alarm(token)

    old_handler = signal.signal(signal.SIGALRM, handler)  # ValueError off the main thread -> caller falls back
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, 0)
    delay = timeout_s if old_delay <= 0 else min(timeout_s, old_delay)
    start = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, delay)
        try:
            value = fn(*args, **kwargs)
            if fired:  # the call caught the timeout (``except BaseException``) and returned anyway
                raise CallTimeout(f"timed out after {float(timeout_s)} s (it caught the timeout and returned)")
            return value
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


# ---------------------------------------------------------------------------------------------------- process isolation

def _worker_main(conn, fn: Callable[..., Any], task: Any) -> None:
    """Worker process loop: receive (sample, kwargs), reply (True, value) or (False, error message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the trainer is gone
            return
        if msg is None:
            return
        sample, kwargs = msg
        if task is not None and getattr(sample, "task", 0) is None:
            sample.task = task
        try:
            reply = (True, fn(sample, **kwargs))
        except BaseException as e:  # noqa: BLE001 - reported to the trainer
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            reply = (False, type(e).__name__ + (f": {text[:300]}" if text else ""))
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - an unpicklable return value
            conn.send((False, f"TypeError: returned an unpicklable {type(reply[1]).__name__}"))


def _mp_context():
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # imported once in the fork server; each worker is then a cheap fork of it
        ctx.set_forkserver_preload(["entropo.types", "entropo.rewards", "entropo.tasks"])
        return ctx
    return mp.get_context("spawn")


class ProcessWorker:
    """One reward function in a worker process, restarted after a kill. ``call(timeout_s, sample, **kwargs)``."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._proc = None
        self._conn = None
        self._task: Any = None

    def _start(self, task: Any) -> None:
        ctx = _mp_context()
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, self.fn, task), name="entropo-reward", daemon=True)
        try:
            proc.start()
        except Exception as e:  # noqa: BLE001 - e.g. a task that cannot be pickled: a setup problem, not a sample's
            parent.close()
            raise TypeError(f"isolation=process: cannot start a worker process for reward "
                            f"{getattr(self.fn, '__name__', self.fn)!r} with task {type(task).__name__} "
                            f"({type(e).__name__}: {e}); use isolation=inline for this reward") from None
        finally:
            child.close()
        self._proc, self._conn, self._task = proc, parent, task

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
            self._conn.close()
        self._proc = self._conn = None

    def call(self, timeout_s: float | None, sample: Any, **kwargs: Any) -> Any:
        task = getattr(sample, "task", None)
        if self._proc is None or not self._proc.is_alive() or task is not self._task:
            self.stop()
            self._start(task)
        if task is not None and dataclasses.is_dataclass(sample):
            sample = dataclasses.replace(sample, task=None)  # the worker holds its own copy of the task
        try:
            self._conn.send((sample, kwargs))
        except Exception as e:  # noqa: BLE001 - pickling fails before anything is written
            raise RewardError(f"cannot send the sample to the worker process ({type(e).__name__}: {e})") from None
        if not self._conn.poll(timeout_s if timeout_s and timeout_s > 0 else None):
            self.stop()
            raise CallTimeout(f"timed out after {float(timeout_s)} s (worker process killed)")
        try:
            ok, value = self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc is not None else None
            self.stop()
            raise RuntimeError(f"the reward's worker process died (exit code {code})") from None
        if not ok:
            raise RewardError(value)
        return value


class RewardError(Exception):
    """An exception raised by a reward in its worker process (its message starts with the original type name)."""


# ---------------------------------------------------------------------------------------------------- runner

_SPEC_KEYS = ("name", "weight", "params", "label", "timeout_s", "failure_value", "isolation", "budget_s")
ISOLATION = ("inline", "process")


@dataclass
class RewardSpec:
    name: str
    fn: Callable[..., float]
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    timeout_s: float | None = None
    failure_value: float | None = None
    isolation: str = "inline"
    budget_s: float | None = None
    worker: ProcessWorker | None = None


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
    ``#2``, ``#3``... when a name repeats), ``timeout_s``, ``failure_value``, ``isolation`` (``"inline"`` or
    ``"process"``) and ``budget_s`` (per-step time budget) overriding the runner's defaults.
    Unknown reward names raise the registry's ``UnknownComponentError``; unknown params raise ``TypeError`` here,
    at construction, not at scoring time.
    """

    def __init__(self, specs: Sequence[Any], timeout_s: float | None = 5.0, failure_value: float = 0.0,
                 isolation: str = "inline", budget_s: float | None = None):
        self.timeout_s = timeout_s
        self.failure_value = float(failure_value)
        self.budget_s = budget_s
        self._spent: dict[str, float] = {}
        self._exhausted: dict[str, int] = {}
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
            mode = _spec_field(spec, "isolation") or isolation
            if mode not in ISOLATION:
                raise ValueError(f"reward {name!r}: isolation must be one of {', '.join(ISOLATION)}, got {mode!r}")
            worker = None
            if mode == "process":
                try:
                    pickle.dumps(fn)
                except Exception as e:  # noqa: BLE001
                    raise TypeError(f"reward {name!r}: isolation=process runs it in a worker process, which needs a "
                                    f"module-level function it can import by name ({type(e).__name__}: {e})") from None
                worker = ProcessWorker(fn)
            budget = _spec_field(spec, "budget_s")
            self.specs.append(
                RewardSpec(
                    name=name,
                    fn=fn,
                    weight=1.0 if weight is None else float(weight),
                    params=params,
                    label=label,
                    timeout_s=_spec_field(spec, "timeout_s"),
                    failure_value=_spec_field(spec, "failure_value"),
                    isolation=mode,
                    budget_s=budget_s if budget is None else float(budget),
                    worker=worker,
                )
            )

    def close(self) -> None:
        """Stop the worker processes of process-isolated rewards (they also end with this process)."""
        for spec in self.specs:
            if spec.worker is not None:
                spec.worker.stop()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def end_step(self) -> dict[str, float]:
        """Close one RL step's reward budgets: the step's ``reward/budget_exhausted`` metric (samples failed because
        their reward's budget was used up; {} when no reward has a budget), and fresh budgets for the next step."""
        metrics = {"reward/budget_exhausted": sum(self._exhausted.values())} if any(
            s.budget_s is not None for s in self.specs) else {}
        self._spent.clear()
        self._exhausted.clear()
        return metrics

    def _call_spec(self, spec: RewardSpec, sample: Sample) -> tuple[Any, str | None]:
        """(value, failure message or None) of one reward on one sample, within its time limit and step budget."""
        what = f"reward {spec.label}"
        timeout_s = self.timeout_s if spec.timeout_s is None else spec.timeout_s
        if spec.budget_s is not None:
            left = spec.budget_s - self._spent.get(spec.label, 0.0)
            if left <= 0:
                if not self._exhausted.get(spec.label):
                    log.warning("reward %s used its per-step budget of %s s (reward_budget_s); its remaining samples "
                                "this step fail at once", spec.label, spec.budget_s)
                self._exhausted[spec.label] = self._exhausted.get(spec.label, 0) + 1
                return None, f"{what} skipped: its per-step budget of {spec.budget_s} s is used up"
            left = max(round(left, 3), 0.001)
            timeout_s = left if timeout_s is None or timeout_s <= 0 else min(timeout_s, left)
        t0 = time.monotonic()
        try:
            if spec.worker is not None:
                try:
                    return spec.worker.call(timeout_s, sample, **spec.params), None
                except CallTimeout as e:
                    return None, f"{what} {e}"
                except (RewardError, RuntimeError, OSError, pickle.PicklingError) as e:
                    return None, f"{what} raised {e}"
            return self._guarded(what, spec.fn, timeout_s, sample, **spec.params)
        finally:
            if spec.budget_s is not None:
                self._spent[spec.label] = self._spent.get(spec.label, 0.0) + time.monotonic() - t0

    def _guarded(self, what: str, fn: Callable[..., Any], timeout_s: float | None, *args: Any, **kwargs: Any):
        """(value, failure message or None)."""
        try:
            return call_with_timeout(fn, timeout_s, *args, **kwargs), None
        except CallTimeout as e:
            return None, f"{what} {e}"
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
                value, fail = self._call_spec(spec, sample)
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
