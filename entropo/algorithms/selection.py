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
