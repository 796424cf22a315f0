"""Data-parallel training on torch.distributed: one process per device, launched by ``torchrun`` or
``accelerate launch`` (``train.distributed: ddp``).

The split of work (docs/architecture.md, "Scaling out"):

- **Rollouts are sharded.** The prompts of a step are cut into ``rollout.shards`` contiguous chunks (default: one per
  process); each process samples its chunk with that shard's own generator and scores it with the reward functions.
- **The batch is global.** The sampled rows are gathered so that every process holds the whole step batch, in shard
  order. Everything a method defines over the batch (selection and dynamic-sampling refills, group and batch
  statistics, whole-batch token selections such as Clip-Cov's top-k, entropy quantiles, diagnostics) then runs on the
  global batch, identically in every process: no method needs distributed code.
- **Model passes are sharded.** The pre-update scoring pass and each optimizer mini-batch split their rows across
  processes; each process's loss uses the denominators of the global mini-batch (token/sequence counts), so the
  gradients summed over processes (one all-reduce after the micro-batches) equal one full-batch backward.

A one-process run with ``rollout.shards: N`` samples exactly what an N-process run samples (same chunks, same
generators), which is what the equivalence tests compare. Gradients are all-reduced in flat buckets after a
process's micro-batches rather than through ``DistributedDataParallel``'s per-backward hooks: processes may hold
different numbers of micro-batches (length-sorted shards), which DDP's hooks would deadlock on.

``train.distributed: fsdp`` shards the policy's parameters, gradients and AdamW moments over the processes with
FSDP2 (``torch.distributed.fsdp.fully_shard``: one unit per decoder layer plus the root), so the 16 bytes per
parameter of training state are divided by the number of processes. The work is split as above; what changes:

- **Passes that do not train run on gathered weights.** Rollout, scoring, advantages and evaluation happen inside
  ``Dist.gathered``: every process all-gathers the full weights once, then runs as many forwards as its own rows need
  (no collective per forward, so processes with different numbers of rows or turns never wait on each other), and
  frees them before the update.
- **The update runs in lockstep.** Every forward/backward of a sharded model is a collective, so a process with fewer
  micro-batches in a mini-batch runs zero-weighted ones until all have run the same number (``lockstep_padding``).
  FSDP reduce-scatters the mean of the processes' gradients; ``sync_grads`` rescales it to the sum, which is what the
  global-denominator losses need.
- **Checkpoints hold full tensors** (gathered on rank 0), in the same layout as a one-process run's model weights.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

BUCKET_BYTES = 64 * 2**20  # gradients travel in flat buckets of at most this size (not one call per parameter)


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate) started, from its environment (1 if none)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, and the rollout ``shards`` it samples."""

    rank: int = 0
    world: int = 1
    shards: int = 1
    initialized_here: bool = False
    mode: str = "none"  # train.distributed: none | ddp | fsdp

    @property
    def sharded(self) -> bool:
        """Parameters are sharded over processes (FSDP2)."""
        return self.mode == "fsdp" and self.enabled

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def own_shards(self) -> list[int]:
        """The rollout shards this process samples (all of them in a one-process run)."""
        return list(range(self.rank, self.shards, self.world))

    # ---- collectives (no-ops in one process) ------------------------------------------------------------------------
    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def max_float(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    def max_int(self, value: int) -> int:
        return int(self.max_float(float(value)))

    def sync_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Make every process's gradients the sum over processes (after its micro-batches' backward passes)."""
        if not self.enabled:
            return
        if self.sharded:  # FSDP reduce-scattered the mean during backward; the losses' global denominators want the sum
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.world)
            return
        self.all_reduce_grads(params)

    def lockstep_padding(self, count: int) -> int:
        """How many zero-weighted micro-batches this process adds so that every process runs the same number of
        forward/backward passes (sharded parameters only: there every pass is a collective)."""
        return self.max_int(count) - count if self.sharded else 0

    # ---- sharded parameters (FSDP2) ---------------------------------------------------------------------------------
    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """Shard ``model``'s parameters over the processes (FSDP2): one unit per decoder layer, plus the root (the
        embeddings, the final norm and the LM head). A no-op unless ``train.distributed: fsdp``."""
        if not self.sharded:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        layer_types = tuple(getattr(model, "_no_split_modules", None) or ())
        layers = [m for m in model.modules() if type(m).__name__ in layer_types]
        if not layers:
            raise ValueError(f"train.distributed=fsdp: cannot find the decoder layers of {type(model).__name__} (it "
                             f"names none in _no_split_modules); use train.distributed=ddp")
        mesh = init_device_mesh(device_for(self).type, (self.world,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        # the root keeps its weights (embeddings, LM head) gathered from its forward to the end of the backward: the
        # log-prob pass reads the LM head's weight outside the root's forward (entropo/models/logprobs.py)
        fully_shard(model, mesh=mesh, reshard_after_forward=False)
        return model

    @contextlib.contextmanager
    def gathered(self, *models: Any):
        """Within: the sharded ``models`` hold their full weights in every process, so each process may run any
        number of forward passes on its own (collective on entry; every process must enter). A no-op otherwise."""
        fsdp_models = [m for m in models if self.sharded and _is_fsdp(m)]
        units = [u for m in fsdp_models for u in m.modules() if _is_fsdp(u)]
        for u in units:  # every unit (each layer, the root) gathers its own parameter group
            u.set_reshard_after_forward(False, recurse=False)
            u.unshard()
        try:
            yield
        finally:
            for u in units:
                u.reshard()
                u.set_reshard_after_forward(u not in fsdp_models, recurse=False)  # as shard() set them

    def full_state_dict(self, model: torch.nn.Module, everywhere: bool = False) -> dict[str, torch.Tensor]:
        """The model's full weights (collective with sharded parameters): on rank 0 only (``{}`` elsewhere), or in
        every process with ``everywhere``."""
        if not self.sharded:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))

    def load_full_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        if not self.sharded:
            model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def optimizer_state_dict(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's full state (collective with sharded parameters; keyed by parameter name there, on rank 0)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state_dict(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                                  state: dict[str, Any]) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over processes, in flat buckets. A parameter without a gradient here (this
        process had no rows in the mini-batch) contributes zeros and receives the sum."""
        if not self.enabled:
            return
        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in params:
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
            if size >= BUCKET_BYTES:
                _reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket)

    def close(self) -> None:
        if self.initialized_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.initialized_here = False


def _is_fsdp(module: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _reduce_bucket(params: list[torch.nn.Parameter]) -> None:
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def split_evenly(items: list[Any], parts: int) -> list[list[Any]]:
    """``parts`` contiguous chunks whose sizes differ by at most one (the first ones larger); some may be empty."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def init(mode: str, shards: int | None) -> Dist:
    """This process's place in the run a launcher set up (``train.distributed: ddp``), read from its environment;
    ``connect`` then joins the process group. Raises ValueError (the caller turns it into a ConfigError naming the
    field) for a launch that does not match the recipe."""
    world = launched_world_size()
    if mode == "none":
        if world > 1:
            raise ValueError(f"train.distributed: the launcher started {world} processes but the recipe trains in one; "
                             f"set train.distributed=ddp or fsdp (or launch a single process)")
        return Dist(shards=shards or 1)
    if shards is not None and shards % world:
        raise ValueError(f"rollout.shards={shards} must be a multiple of the {world} processes (or unset: one per "
                         f"process)")
    return Dist(rank=launched_rank(), world=world, shards=shards or world, mode=mode)


def connect(dist: Dist, timeout_s: float) -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs). Called after the model is loaded: Hugging Face's
    ``save_pretrained`` writes nothing on ranks other than 0 once a group exists, which a per-process model folder
    (the tiny model's) relies on."""
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        dist.initialized_here = True


def device_for(dist: Dist) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if dist.enabled else torch.device("cuda")
    return torch.device("cpu")
