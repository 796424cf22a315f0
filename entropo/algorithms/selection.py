"""Sample selection (registry kind ``"selection"``): ``fn(batch, **params) -> keep [B] bool``.

- ``dynamic_sampling``: DAPO's dynamic sampling / group filtering (Yu et al., arXiv 2503.14476; verl
  ``recipe/dapo`` ``filter_groups``): drop every prompt group whose rewards are all equal, since its GRPO advantages
  are all zero and it contributes no gradient (only dilutes the batch).
- ``min_abs_advantage``: LOOP's rollout filter (Chen et al., "Reinforcement Learning for Long-Horizon Interactive LLM
  Agents", arXiv 2502.01600): drop the rows whose |advantage| is below a threshold (all groups with identical returns),
  over the whole batch, optionally rounded to a multiple of N rows.
- ``downsample_to_multiple``: keep N * floor(kept / N) rows (a random remainder dropped), for schemes whose row count
  varies (EAPO per-round rows, arXiv 2511.07327; LOOP's filter). The same rule on a keep mask is the plain function
  ``trim_to_multiple``, which other selections reuse.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.components import Bound
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


def trim_to_multiple(keep: Tensor, multiple: int, priority: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """``keep`` [B] bool with its True count cut to ``multiple * floor(count / multiple)``.

    The rows dropped are the kept rows of lowest ``priority`` [B] (ties: the later row goes first), or, without a
    priority, a uniformly random subset drawn with ``generator``. EAPO's data-parallel downsampling (arXiv
    2511.07327: 137 rows, N = 8 -> 136 kept). Example: keep = [T, T, T, F, T], multiple 3, priority
    [5, 1, 3, 9, 4] -> 4 kept, cut to 3 by dropping the lowest-priority kept row 1 -> [T, F, T, F, T].
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1 (got {multiple})")
    kept = keep.nonzero().flatten()
    excess = int(kept.numel()) % multiple
    if excess == 0:
        return keep.clone()
    if priority is not None:
        order = _stable_ascending_later_first(priority[kept].float())  # lowest first; ties: the later row first
        drop = kept[order[:excess]]
    else:
        device = generator.device if generator is not None else keep.device
        drop = kept[torch.randperm(int(kept.numel()), generator=generator, device=device).to(keep.device)[:excess]]
    out = keep.clone()
    out[drop] = False
    return out


def _stable_ascending_later_first(values: Tensor) -> Tensor:
    """Indices sorting ``values`` ascending, equal values in reverse index order."""
    n = values.numel()
    flipped = torch.argsort(values.flip(0), stable=True)
    return (n - 1) - flipped


def round_up_to_multiple(keep: Tensor, multiple: int, priority: Tensor) -> Tensor:
    """``keep`` with its True count raised to the next multiple of ``multiple`` by adding back the dropped rows of
    highest ``priority`` (never more rows than the batch's largest multiple; at least one multiple). This is how
    apple/ml-loop ``_filter_rollouts`` rounds the kept rollouts to the number of workers (``ceil``, capped at
    ``len // world_size`` multiples)."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1 (got {multiple})")
    size = keep.numel()
    count = int(keep.sum())
    target = min(max(1, -(-count // multiple)) * multiple, (size // multiple) * multiple)
    if target <= count:
        return trim_to_multiple(keep, multiple, priority)
    dropped = (~keep).nonzero().flatten()
    order = torch.argsort(-priority[dropped].float(), stable=True)  # highest priority first, earlier row first
    out = keep.clone()
    out[dropped[order[: target - count]]] = True
    return out


def row_abs_advantage(advantages: Tensor, response_mask: Tensor) -> Tensor:
    """[B] the largest |A| over each row's response tokens (the row's scalar advantage for outcome estimators; 0 for
    a row without response tokens)."""
    return (advantages.abs() * (response_mask > 0)).amax(dim=-1) if advantages.numel() else advantages.new_zeros(0)


@register("selection", "min_abs_advantage", paper="LOOP rollout filter, arXiv 2502.01600")
def min_abs_advantage(batch: Batch, threshold: float = 0.01, estimator: str = "rloo",
                      estimator_params: dict | None = None, multiple_of: int = 1, rounding: str = "up",
                      step_ctx=None) -> Tensor:
    """keep[i] = |A_i| >= ``threshold``, A the ``estimator``'s advantage (default ``rloo``, leave-one-out, no std)
    computed on the **whole** batch the rollout round produced (groups complete, as the loop samples them).

    LOOP (arXiv 2502.01600; apple/ml-loop ``_filter_rollouts``, threshold ``abs_adv_threshold: 0.01``): rollouts are
    sorted by |A| and those at or above the threshold kept — with 0/1 returns this removes exactly the groups whose
    returns are all equal (their leave-one-out advantages are all 0), while every rollout of a mixed group of K has
    |A| >= 1/(K-1). ``multiple_of`` > 1 rounds the kept count to a multiple (LOOP: the number of workers):
    ``rounding="up"`` adds back the dropped rows of largest |A| (the official rule, ``round_up_to_multiple``),
    ``"down"`` drops the kept rows of smallest |A| (``trim_to_multiple``).

    The trainer's advantage phase then runs the recipe's estimator on the kept rows. That equals the advantages this
    filter saw whenever the dropped rows are whole groups (the 0/1-return case above, and ``multiple_of=1``); with
    continuous returns or a trim that splits a group, the kept rows of a split group get a baseline over the rows
    that remain (the official code keeps the pre-filter values)."""
    if threshold < 0:
        raise ValueError(f"min_abs_advantage: threshold must be >= 0 (got {threshold})")
    if rounding not in ("up", "down"):
        raise ValueError(f"min_abs_advantage: rounding must be 'up' or 'down' (got {rounding!r})")
    out = Bound("advantage", estimator, estimator_params or {})(batch, step_ctx=step_ctx)
    advantages = out[0] if isinstance(out, tuple) else out
    magnitude = row_abs_advantage(advantages.float(), batch.response_mask)
    keep = magnitude >= threshold
    if multiple_of > 1:
        keep = (round_up_to_multiple(keep, multiple_of, magnitude) if rounding == "up"
                else trim_to_multiple(keep, multiple_of, magnitude))
    return keep


@register("selection", "downsample_to_multiple", paper="EAPO adaptive downsampling, IterResearch arXiv 2511.07327")
def downsample_to_multiple(batch: Batch, multiple: int = 8, step_ctx=None) -> Tensor:
    """Keep ``multiple * floor(B / multiple)`` rows of the batch, dropping a random remainder (< ``multiple`` rows)
    drawn with the run's rollout generator (deterministic and resumable). Example: 137 rows, multiple 8 -> 136.
    It sees the round's whole batch, not what other selections dropped: to trim after a filter, use the filter's own
    rounding (``min_abs_advantage(multiple_of=...)``) or call ``trim_to_multiple`` on its keep mask."""
    keep = torch.ones(batch.size, dtype=torch.bool, device=batch.rewards.device)
    generator = step_ctx.rollout_generator if step_ctx is not None else torch.Generator().manual_seed(0)
    return trim_to_multiple(keep, multiple, generator=generator)
