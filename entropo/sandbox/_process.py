"""Parent side of a sandboxed call: probe which OS layers work here, start ``_bootstrap.py`` in a fresh session
and work directory, read its output with a bound, enforce the wall clock, kill every process the call left behind,
remove the work directory, and turn what happened into an :class:`~entropo.sandbox.base.ExecResult`.

Used by :class:`~entropo.sandbox.PythonSandbox` (``mode: python``) and :class:`~entropo.sandbox.SQLiteSandbox`
(``mode: sqlite``). Never raises: an internal failure becomes ``ExecResult(ok=False, error="sandbox error: ...")``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from entropo.sandbox.base import ExecResult, SandboxLimits

log = logging.getLogger("entropo.sandbox")

BOOTSTRAP = Path(__file__).with_name("_bootstrap.py")
SETUP_FAILED = 125  # the bootstrap's exit code for a failed isolation layer
OPEN_FILES = 64  # RLIMIT_NOFILE of the sandbox
READ_CHUNK = 65536
EXIT_GRACE_S = 0.5  # after the main process exits: how long leftover pipe writers get before we stop reading
# Unique per-call uids (root only) come from this range, far above any real account.
UID_BASE, UID_SPAN = 1_500_000_000, 500_000_000


# ----------------------------------------------------------------------------------------------------------------
# Which OS layers work on this machine (probed once per interpreter)


@dataclass(frozen=True)
class Layers:
    """``netns``: "root" / "userns" (how the bootstrap gets a private network namespace) or None;
    ``uid_drop``: the sandbox runs under a unique unprivileged uid (only possible when we are root)."""

    netns: str | None
    uid_drop: bool


_layers: dict[str, Layers] = {}
_layers_lock = threading.Lock()


def probe_layers(python: str) -> Layers:
    """Ask a throwaway bootstrap (``mode: probe``) which layers it can set up; cached per interpreter."""
    with _layers_lock:
        if python in _layers:
            return _layers[python]
        config = {"mode": "probe", "uid": UID_BASE + UID_SPAN - 1 if os.geteuid() == 0 else None}
        layers = Layers(netns=None, uid_drop=False)
        try:
            proc = subprocess.run([python, "-I", "-B", str(BOOTSTRAP), json.dumps(config)], capture_output=True,
                                  text=True, timeout=30, cwd=tempfile.gettempdir(), env=_base_env())
            found = json.loads(proc.stdout.strip().splitlines()[-1])
            layers = Layers(netns=found.get("netns"), uid_drop=bool(found.get("uid")))
        except Exception as e:  # noqa: BLE001  (no OS layers then; the in-process guards still apply)
            log.warning("sandbox probe with %s failed (%s: %s); running without OS isolation layers", python,
                        type(e).__name__, e)
        if not layers.netns:
            log.warning("sandbox: no network namespace available; only the in-process socket guard blocks network")
        _layers[python] = layers
        return layers


_active_uids: set[int] = set()
_uid_lock = threading.Lock()


def _allocate_uid() -> int:
    with _uid_lock:
        while True:
            uid = UID_BASE + secrets.randbelow(UID_SPAN - 1)
            if uid not in _active_uids:
                _active_uids.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _active_uids.discard(uid)


# ----------------------------------------------------------------------------------------------------------------
# Finding and killing what a call left behind


def _processes(session: int, uid: int | None) -> list[int]:
    """Live (non-zombie) processes in session/process group ``session`` or, when given, owned by ``uid``."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
            state, pgrp, sid = fields[0], int(fields[2]), int(fields[3])
            if state in (b"Z", b"X"):
                continue
            if sid == session or pgrp == session:
                found.append(int(name))
            elif uid is not None:
                with open(f"/proc/{name}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            if uid in (int(x) for x in line.split()[1:]):
                                found.append(int(name))
                            break
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def kill_all(session: int, uid: int | None) -> bool:
    """SIGKILL the sandbox's process group, then sweep /proc for survivors of its session (and of its uid, which
    also catches processes that left the session with setsid) until none is left. True when none is left."""
    try:
        os.killpg(session, signal.SIGKILL)
    except OSError:
        pass
    for _ in range(200):
        victims = _processes(session, uid)
        if not victims:
            return True
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
    log.warning("sandbox: processes of session %d survive SIGKILL: %s", session, _processes(session, uid))
    return False


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid stays reserved until we sweep its group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def remove_tree(path: str) -> None:
    def retry(func, p, exc):  # a directory the code made unwritable/unreadable: give it back and retry
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("sandbox: could not remove %s", path)


# ----------------------------------------------------------------------------------------------------------------
# Output capture with a bound


class _Capture:
    """Keeps the first ``limit - tail`` bytes and the last ``tail`` bytes of a stream; counts the rest."""

    def __init__(self, limit: int) -> None:
        self.tail_keep = min(2048, limit // 4)
        self.head_keep = limit - self.tail_keep
        self.head = bytearray()
        self.tail = b""
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_keep:
            self.tail = (self.tail + data)[-self.tail_keep:]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + self.tail).decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(self.tail)
        marker = f"\n[... {omitted} bytes truncated ...]\n"
        return bytes(self.head).decode("utf-8", "replace") + marker + self.tail.decode("utf-8", "replace")


# ----------------------------------------------------------------------------------------------------------------
# One sandboxed call


def _base_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _child_env(workdir: str) -> dict[str, str]:
    env = _base_env()
    # One thread per numeric library: thread pools would count against RLIMIT_NPROC and RLIMIT_AS.
    env.update(HOME=workdir, TMPDIR=workdir, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


@dataclass
class _Run:
    returncode: int | None
    stdout: _Capture
    stderr: _Capture
    timed_out: bool
    overflow: bool


def _supervise(proc: subprocess.Popen, limits: SandboxLimits, kill_after_s: float, started: float,
               uid: int | None) -> _Run:
    out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
    drain_limit = max(1 << 20, 16 * limits.output_bytes)  # past this much output the process is killed
    deadline = started + kill_after_s
    sel = selectors.DefaultSelector()
    for stream, capture in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ, capture)
    pidfd = None
    try:
        pidfd = os.pidfd_open(proc.pid)  # readable once the child exits: no polling needed
        sel.register(pidfd, selectors.EVENT_READ, None)
    except (AttributeError, OSError):
        pidfd = None

    def read(fd: int, capture: _Capture) -> bool:
        """Read what is there; False at EOF."""
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            capture.add(data)
            if capture.total > drain_limit:
                return True

    exited = timed_out = overflow = False
    grace_deadline = None
    try:
        while True:
            if not exited and _has_exited(proc.pid):
                exited = True
                kill_all(proc.pid, uid)  # background processes it left go with it; their pipe ends close
                grace_deadline = time.monotonic() + EXIT_GRACE_S
                if pidfd is not None:
                    sel.unregister(pidfd)
            streams = [key for key in sel.get_map().values() if key.data is not None]
            if exited and not streams:
                break
            now = time.monotonic()
            if not exited and now >= deadline:
                timed_out = True
                break
            if exited and now >= grace_deadline:
                break
            wait = (grace_deadline if exited else deadline) - now
            if pidfd is None and not exited:
                wait = min(wait, 0.02)
            for key, _ in sel.select(timeout=max(wait, 0.0)):
                if key.data is None:
                    continue  # the pidfd: handled at the top of the loop
                if not read(key.fd, key.data):
                    sel.unregister(key.fd)
                elif key.data.total > drain_limit:
                    overflow = True
            if overflow:
                break
        if not exited or overflow or timed_out:
            kill_all(proc.pid, uid)
        for key in list(sel.get_map().values()):  # what was written just before the end
            if key.data is not None:
                read(key.fd, key.data)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    try:
        returncode = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # SIGKILLed but not gone (uninterruptible sleep): leave it to the kernel
        returncode = None
    return _Run(returncode, out, err, timed_out, overflow)


def run_sandboxed(python: str, limits: SandboxLimits, config: dict, files: dict[str, str] | None = None,
                  stdin: str = "", kill_after_s: float | None = None) -> ExecResult:
    """Run the bootstrap with ``config`` (mode and mode-specific keys) under ``limits`` in a fresh work directory
    holding ``files``; the process tree is killed at ``kill_after_s`` (default ``limits.timeout_s``)."""
    started = time.monotonic()
    workdir = uid = proc = None
    try:
        layers = probe_layers(python)
        workdir = tempfile.mkdtemp(prefix="entropo-sandbox-")
        for name, text in (files or {}).items():
            Path(workdir, name).write_text(text, encoding="utf-8")
        if layers.uid_drop:
            uid = _allocate_uid()
            os.chown(workdir, uid, uid)
        config = dict(config)
        config.update(
            netns=None if limits.network else layers.netns,
            uid=uid,
            network=limits.network,
            parent=os.getpid(),
            limits={"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_size_mb": limits.file_size_mb,
                    "max_processes": limits.max_processes, "open_files": OPEN_FILES},
        )
        argv = [python, "-I", "-B", "-u", str(BOOTSTRAP), json.dumps(config)]
        with tempfile.TemporaryFile() as stdin_file:
            if stdin:
                stdin_file.write(stdin.encode("utf-8"))
                stdin_file.seek(0)
            proc = subprocess.Popen(argv, cwd=workdir, env=_child_env(workdir),
                                    stdin=stdin_file if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        run = _supervise(proc, limits, limits.timeout_s if kill_after_s is None else kill_after_s, started, uid)
        return _result(run, limits, time.monotonic() - started)
    except Exception as e:  # noqa: BLE001  (errors come back as results, never as exceptions)
        log.exception("sandbox: internal error")
        return ExecResult(ok=False, stdout="", stderr="", exit_code=None, timed_out=False,
                          error=f"sandbox error: {type(e).__name__}: {e}", duration_s=time.monotonic() - started,
                          truncated=False)
    finally:
        if proc is not None:
            if proc.returncode is None:
                kill_all(proc.pid, uid)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if uid is not None:
            _release_uid(uid)
        if workdir is not None:
            remove_tree(workdir)


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _result(run: _Run, limits: SandboxLimits, duration_s: float) -> ExecResult:
    stdout, stderr = run.stdout.text(), run.stderr.text()
    rc = run.returncode
    if run.timed_out:
        error = f"timeout after {float(limits.timeout_s)} s"
    elif run.overflow:
        error = f"output truncated: more than {max(run.stdout.total, run.stderr.total)} bytes written, process killed"
    elif rc is None:
        error = "could not reap the sandbox process"
    elif rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            error = f"cpu time limit ({limits.cpu_s} s) exceeded"
        elif sig == signal.SIGXFSZ:
            error = f"file size limit ({limits.file_size_mb} MB) exceeded"
        else:
            error = f"killed by signal {sig} ({_signal_name(sig)})"
    elif rc > 0:
        last = _last_line(stderr)
        if last.startswith("MemoryError") or "std::bad_alloc" in last:
            error = f"memory limit ({limits.memory_mb} MB): {last}"
        else:
            error = last or f"exit code {rc}"
    else:
        error = None
    ok = rc == 0 and not run.timed_out and not run.overflow
    return ExecResult(ok=ok, stdout=stdout, stderr=stderr, exit_code=rc, timed_out=run.timed_out, error=error,
                      duration_s=duration_s, truncated=run.stdout.truncated or run.stderr.truncated)
