"""Non-finite guard: a NaN/inf loss or gradient never reaches the weights, and no checkpoint holds non-finite weights.

``policy_update`` asks :func:`update_is_finite` before each optimizer step. A non-finite loss or gradient norm skips
that step (no ``optimizer.step()``, no scheduler step), logs a warning and counts it (metric
``actor/nonfinite_skipped``); after ``train.max_nonfinite_steps`` skipped updates in a row the run stops with
:class:`NonFiniteError`. After each step :func:`check_weights` confirms the weights are still finite (an update from
finite gradients can still overflow them, e.g. with a huge learning rate) and stops the run at once if not, so the
last checkpoint on disk stays the last good state; ``save_checkpoint`` checks again before writing.
"""

from __future__ import annotations

import logging
import math
import weakref

import torch

log = logging.getLogger("entropo.train")


class NonFiniteError(FloatingPointError):
    """The run produced non-finite values it cannot continue from."""


class _Counter:
    def __init__(self) -> None:
        self.in_a_row = 0


_counters: "weakref.WeakKeyDictionary[torch.optim.Optimizer, _Counter]" = weakref.WeakKeyDictionary()


def update_is_finite(optimizer: torch.optim.Optimizer, loss: float | None, grad_norm: torch.Tensor | float,
                     limit: int) -> bool:
    """True if the update may be applied. False (skip it) for a non-finite loss or gradient norm; raises
    NonFiniteError when that makes ``limit`` skipped updates in a row for this optimizer."""
    counter = _counters.setdefault(optimizer, _Counter())
    norm = float(grad_norm)
    if (loss is None or math.isfinite(loss)) and math.isfinite(norm):
        counter.in_a_row = 0
        return True
    counter.in_a_row += 1
    what = f"loss {loss}" if loss is not None and not math.isfinite(loss) else f"gradient norm {norm}"
    log.warning("skipped an optimizer update: non-finite %s (%d in a row; the run stops at %d)", what,
                counter.in_a_row, limit)
    if counter.in_a_row >= limit:
        raise NonFiniteError(
            f"{counter.in_a_row} optimizer updates in a row had a non-finite {what.split()[0]} and were skipped "
            f"(train.max_nonfinite_steps={limit}); the weights were not changed by them. Lower optimizer.lr, set "
            f"train.grad_clip, or check the rewards and regularizer coefficients (the checkpoints on disk hold only "
            f"finite weights)")
    return False


def nonfinite_params(model: torch.nn.Module) -> tuple[int, list[str]]:
    """(number of non-finite parameter values, names of the parameters holding them)."""
    bad, names = 0, []
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = int((~torch.isfinite(p)).sum())
            if n:
                bad += n
                names.append(name)
    return bad, names


def check_weights(model: torch.nn.Module, when: str) -> None:
    """Raise NonFiniteError if any parameter holds NaN or inf."""
    with torch.no_grad():
        # a sharded parameter (FSDP2) is checked on this process's shard: every shard is checked by its owner
        finite = torch.stack([torch.isfinite(getattr(p, "to_local", lambda: p)()).all()
                              for p in model.parameters()]).all()
    if bool(finite):
        return
    bad, names = nonfinite_params(model)
    raise NonFiniteError(
        f"{when}: {bad} weights are NaN or inf (in {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); "
        f"the run stops and no checkpoint of these weights is written (those on disk are finite). The update "
        f"overflowed: lower optimizer.lr and/or set train.grad_clip, and start a new run")
