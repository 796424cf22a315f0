"""Sample selection (registry kind ``"selection"``): ``fn(batch, **params) -> keep [B] bool``.

- ``dynamic_sampling``: DAPO's dynamic sampling / group filtering (Yu et al., arXiv 2503.14476; verl
  ``recipe/dapo`` ``filter_groups``): drop every prompt group whose rewards are all equal, since its GRPO advantages
  are all zero and it contributes no gradient (only dilutes the batch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register


@register("selection", "dynamic_sampling", paper="DAPO dynamic sampling, arXiv 2503.14476")
def dynamic_sampling(batch: Batch, metric: str = "reward", eps: float = 1e-8) -> Tensor:
    """keep[i] = (max - min of ``batch.rewards`` over i's group) > eps. Uses the outcome reward, not
    ``batch.returns()`` (dense shaping such as a KL penalty would make every group look diverse). A group of one
    sample has zero spread and is dropped."""
    if metric != "reward":
        raise ValueError(f"dynamic_sampling: unknown metric {metric!r}; supported: 'reward'")
    rewards = batch.rewards.float()  # [B]
    index, num_groups = ops.group_index(batch.group_ids)
    group_max = rewards.new_full((num_groups,), -torch.inf).scatter_reduce(0, index, rewards, "amax")
    group_min = rewards.new_full((num_groups,), torch.inf).scatter_reduce(0, index, rewards, "amin")
    return (group_max - group_min)[index] > eps


@register("selection", "downsample_to_multiple",
          paper="IterResearch EAPO adaptive downsampling, arXiv 2511.07327")
def downsample_to_multiple(batch: Batch, n: int, step_ctx=None, seed: int = 0) -> Tensor:
    """Keep n * floor(B / n) rows, dropping a random remainder of fewer than n rows (EAPO's adaptive downsampling
    to a multiple of the data-parallel size, IterResearch arXiv 2511.07327; any scheme whose row count varies,
    e.g. one row per round). Example: 137 rows, n = 8 -> 136 kept. Fewer than n rows: all are dropped. The choice
    is random but reproducible: seeded from ``seed``, the run seed and the step (never the sampling generator).
    Applied per rollout try, i.e. to each try's rows (the whole step with ``rollout.max_tries = 1``)."""
    if int(n) < 1:
        raise ValueError(f"downsample_to_multiple: n must be >= 1, got {n}")
    rows = batch.size
    drop = rows % int(n)
    keep = torch.ones(rows, dtype=torch.bool, device=batch.group_ids.device)
    if drop:
        run_seed = int(getattr(getattr(step_ctx, "recipe", None), "seed", 0) or 0)
        step = int(getattr(step_ctx, "step", 0) or 0)
        generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + run_seed * 7_919 + step) % (2**62))
        keep[torch.randperm(rows, generator=generator)[:drop].to(keep.device)] = False
    return keep
