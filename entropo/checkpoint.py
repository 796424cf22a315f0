"""Checkpoints: model, optimizer, scheduler, controllers, sampler position and every RNG state, written atomically.

A checkpoint is a directory ``RUN/checkpoints/step_000012/`` holding ``state.pt`` and ``manifest.json``. It is written
to a temporary sibling directory (``.tmp_*``): ``state.pt`` first, fsynced; then the manifest, holding the size and
SHA-256 of ``state.pt``, written last once the file is on disk and loads back; then the directory is renamed into
place. A checkpoint counts only if its manifest is there and the files match it (:func:`verify`), so a crash, a
truncated or emptied file, or a folder someone named ``step_*`` is never picked by :func:`latest` or resumed from
(:func:`resume_point` falls back to the newest good one, naming the bad ones). Resuming reproduces the uninterrupted
run exactly (tests/test_trainer.py).

Safe to load: ``state.pt`` holds only tensors and plain data (numbers, strings, lists, tuples, dicts), checked when it
is written (:func:`check_plain`), and it is always read with ``torch.load(weights_only=True)``, which refuses any other
pickled object instead of running it: a run directory made by someone else cannot run code on ``--resume``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

PREFIX = "step_"
STATE = "state.pt"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp_"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or trusted, with the path and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding pickled objects other than tensors and plain data: refused, never skipped."""


# ---- RNG state as plain data -------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states as tensors, lists and numbers (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


# ---- the payload check ---------------------------------------------------------------------------------------------

_PLAIN = (type(None), bool, int, float, complex, str, bytes)  # exact types: numpy.float64 is a float subclass
_TORCH = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value in ``obj`` that ``torch.load(weights_only=True)`` would refuse.

    Checkpoints hold only tensors, numbers, strings, bytes, None and lists/tuples/dicts of them. A component whose
    ``state_dict()`` returns anything else (a numpy array or scalar, a dataclass, a set, a function) fails here, at the
    first save, with the path to the offending value."""
    stack = [(obj, where)]
    while stack:
        value, path = stack.pop()
        if type(value) in _PLAIN or isinstance(value, _TORCH):
            continue
        if type(value) in (list, tuple):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif type(value) in (dict, OrderedDict):
            for k, v in value.items():
                if not isinstance(k, (str, int, float, bool, type(None))):
                    raise TypeError(f"{path} has a key of type {type(k).__name__} ({k!r}); checkpoints hold only "
                                    f"plain data so they load with weights_only=True: use str/int keys")
                stack.append((v, f"{path}[{k!r}]"))
        else:
            raise TypeError(
                f"{path} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints hold only tensors and "
                f"plain data (numbers, str, bytes, None, lists, tuples, dicts) so that they load with "
                f"weights_only=True. Convert it in the state_dict() that returns it (float(x), x.tolist(), "
                f"torch.as_tensor(x), dataclasses.asdict(x)) and back in load_state_dict().")


# ---- atomic files --------------------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Recording:
    """A binary file wrapper that remembers the OSError a write raised (torch.save turns it into a RuntimeError from
    inline_container.cc that names neither the cause nor the file)."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def _write_error(e: BaseException, path: Path, rec: _Recording | None = None) -> CheckpointError | None:
    """A one-line CheckpointError for a failed write (disk full, quota, read-only, ...), or None if it was not one."""
    os_err = rec.error if rec is not None and rec.error is not None else e if isinstance(e, OSError) else None
    if os_err is None:
        return None
    if os_err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(f"no space left on {path.parent} while writing {path.name}: free some space (or set "
                               f"logging.output_dir / --run-dir to another disk) and resume with --resume")
    return CheckpointError(f"cannot write {path}: {os_err.strerror or os_err}")


def _open_for_write(path: Path):
    return open(path, "wb")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so readers see the old or the new content, never a torn one."""
    atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` straight into a temp file, then rename: atomic, and no in-memory copy of the bytes."""
    check_plain(obj, Path(path).name)
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, fsync, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    rec = None
    try:
        with os.fdopen(fd, "wb") as f:
            rec = _Recording(f)
            write(rec)
            rec.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        err = _write_error(e, path, rec) if isinstance(e, Exception) else None
        if err is not None:
            raise err from e
        raise
    _fsync_dir(path.parent)


# ---- manifest and verification -------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify(ckpt_dir: str | Path) -> str | None:
    """None if the checkpoint is complete (its manifest is there and every file has the size and SHA-256 it lists),
    else why not."""
    d = Path(ckpt_dir)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = manifest["files"]
        if STATE not in files:
            return f"{MANIFEST} does not list {STATE}"
    except FileNotFoundError:
        return f"no {MANIFEST} (the checkpoint was never completed)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    for name, meta in files.items():
        p = d / name
        if "/" in name or name.startswith("."):
            return f"{MANIFEST} lists an odd file name {name!r}"
        if not p.is_file():
            return f"{name} is missing"
        size = p.stat().st_size
        if size != meta.get("size"):
            return f"{name} is {size} bytes, the manifest says {meta.get('size')} (truncated or overwritten)"
        if _sha256(p) != meta.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest (corrupted)"
    return None


# ---- save / list / load --------------------------------------------------------------------------------------------

def remove_stale_tmp(run_dir: str | Path) -> list[Path]:
    """Delete ``.tmp_*`` checkpoint folders a killed run left behind (call it holding the run lock)."""
    root = Path(run_dir) / "checkpoints"
    stale = sorted(root.glob(f"{TMP_PREFIX}*")) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def save(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save ``state`` as checkpoint ``step`` and delete all but the ``keep`` newest."""
    check_plain(state)
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=TMP_PREFIX))
    target, rec = tmp / STATE, None
    try:
        with _open_for_write(target) as f:
            rec = _Recording(f)
            torch.save(state, rec)
            rec.flush()
            os.fsync(f.fileno())
        try:  # it reads back (cheap: mmap), with weights_only=True as resume will
            torch.load(target, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(". Please")[0]
            raise TypeError(f"the checkpoint does not load with weights_only=True ({detail}); a state_dict() returns "
                            f"something other than tensors and plain data") from None
        manifest = {"format": FORMAT, "step": step,
                    "files": {STATE: {"size": target.stat().st_size, "sha256": _sha256(target)}}}
        rec = None
        with _open_for_write(tmp / MANIFEST) as f:  # written last: its presence marks the checkpoint complete
            rec = _Recording(f)
            rec.write(json.dumps(manifest, indent=1).encode())
            rec.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _write_error(e, final, rec) if isinstance(e, Exception) else None
        if err is not None:
            raise err from e
        raise
    _fsync_dir(root)
    for old in all_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def all_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders with a manifest, oldest first (not verified: see :func:`latest`)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def candidates(run_dir: str | Path) -> list[Path]:
    """Every ``step_<digits>`` folder, newest first, complete or not."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def latest(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run that verifies (:func:`verify`), or None."""
    return next((p for p in candidates(run_dir) if verify(p) is None), None)


def load(path: str | Path) -> dict[str, Any]:
    """The payload of a checkpoint folder, read with ``weights_only=True``: plain data and tensors only, so nothing
    in the file can run code. A file holding other objects raises :class:`CheckpointError` saying so."""
    f = Path(path) / STATE
    if not f.is_file():
        raise CheckpointError(f"{f} is missing")
    if f.stat().st_size == 0:
        raise CheckpointError(f"{f} is corrupted (empty: 0 bytes)")
    if not zipfile.is_zipfile(f):
        raise CheckpointError(f"{f} is corrupted (not a complete torch zip archive: truncated or overwritten)")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" not in text and "Unsupported operand" not in text:
            raise CheckpointError(f"{f} is corrupted ({text.splitlines()[0][:160]})") from None
        detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(". Please")[0]
        raise UnsafeCheckpointError(
            f"refusing to load {f}: it holds pickled objects other than tensors and plain data ({detail[:160]}). "
            f"entropo never writes those, so the file was made or altered by something else; nothing in it was run. "
            f"Delete that checkpoint (or the run) if you do not trust its source.") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:  # a torn archive
        raise CheckpointError(f"{f} is corrupted ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def resume_point(run_dir: str | Path, warn: Callable[[str], None] = print) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that verifies and loads, and its payload; ``(None, None)`` if there is none.

    A checkpoint that is incomplete or corrupted is skipped with a warning naming it (the run resumes from the one
    before). A checkpoint holding objects other than plain data is not skipped: :func:`load` refuses it and the
    error stops the resume, since someone other than entropo wrote it."""
    for p in candidates(run_dir):
        why = verify(p)
        if why is None:
            try:
                return p, load(p)
            except UnsafeCheckpointError:
                raise
            except CheckpointError as e:
                why = str(e)
        warn(f"warning: skipping checkpoint {p}: {why}")
    return None, None
