"""One run per run directory: an exclusive ``fcntl.flock`` on ``RUN/.lock`` held for the life of the run.

The lock file holds the holder's pid (and host). A second run into the same directory (train, ``--resume`` or
``--overwrite``) fails at once with :class:`RunLockedError` naming that pid. The kernel drops a flock when its process
dies (also on ``kill -9``), so a lock left by a killed run is free: it is taken over, and reported as stale with the
dead holder's pid. The file is never deleted (deleting a lock file others may have opened breaks the exclusion); on
release it is emptied.

Within one process the lock is re-entrant for the thread holding it (the CLI takes it before ``--overwrite`` clears
the directory, then ``train()`` takes it again).
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any, Callable

LOCK_NAME = ".lock"

_held: dict[str, "RunLock"] = {}
_held_guard = threading.Lock()


class RunLockedError(RuntimeError):
    """The run directory is in use by another live run."""


class RunLock:
    """Context manager: ``with RunLock(run_dir): ...``. ``stale`` is the pid of a dead previous holder, if any."""

    def __init__(self, run_dir: str | Path, on_stale: Callable[[str], None] | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.on_stale = on_stale
        self.stale: str | None = None
        self._fd: int | None = None
        self._depth = 0
        self._owner: int | None = None
        self._delegate: RunLock | None = None

    # re-entrant within the owning thread: one RunLock object per resolved path
    def __enter__(self) -> "RunLock":
        if int(os.environ.get("RANK", "0")) != 0:  # a data-parallel launch: rank 0 holds the lock for every rank
            self._delegate = self
            self._depth = -1
            return self
        key = str(self.run_dir.resolve())
        with _held_guard:
            held = _held.get(key)
            if held is not None:
                if held._owner != threading.get_ident():
                    raise RunLockedError(f"{self.run_dir} is in use by another run in this process (pid {os.getpid()}"
                                         f", another thread); wait for it to finish or use another --run-dir")
                held._depth += 1
                self._delegate = held
                return held
            self._acquire()
            self._depth, self._owner, self._delegate = 1, threading.get_ident(), None
            _held[key] = self
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._depth == -1:  # the no-op lock of a rank other than 0
            self._delegate, self._depth = None, 0
            return
        target = self._delegate or self
        key = str(target.run_dir.resolve())
        with _held_guard:
            target._depth -= 1
            if target._depth == 0:
                _held.pop(key, None)
                target._release()

    def _acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.run_dir} is in use by another run ({holder or 'pid unknown'}); wait for it to finish or stop "
                f"it, or choose another --run-dir / logging.run_name") from None
        except OSError as e:  # a file system without flock support
            os.close(fd)
            raise RunLockedError(f"cannot lock {self.path}: {e.strerror}; use a run dir on a local disk") from None
        previous = _read(fd)
        if previous:  # the lock was free but names a holder: that process died without releasing it
            self.stale = previous
            if self.on_stale is not None:
                self.on_stale(f"removed a stale lock on {self.run_dir} ({previous}, no longer running)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete everything in ``run_dir`` except the lock file (call it holding the lock: ``--overwrite``)."""
    for p in Path(run_dir).iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def holding_run_dir(run_dir_of: Callable[..., Path]) -> Callable:
    """Decorator: run the function holding the lock on the directory ``run_dir_of(*args, **kwargs)``; a stale lock is
    reported through the function's ``console`` keyword argument when it has one."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with RunLock(run_dir_of(*args, **kwargs), on_stale=kwargs.get("console", print)):
                return fn(*args, **kwargs)

        return wrapper

    return deco
