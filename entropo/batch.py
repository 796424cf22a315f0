"""The Batch: the tensors every stage of the RL loop reads and writes.

One Batch holds B trajectories padded to length L. Prompt and response share one row (left-padded prompt, then the
response), so ``input_ids[:, t]`` is scored by the policy with the prefix ``input_ids[:, :t]``. Per-token tensors are
aligned on the token itself: ``old_logprobs[b, t] = log pi_old(input_ids[b, t] | input_ids[b, :t])``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


TENSOR_DICTS = ("extras", "reward_terms")  # fields holding {name: per-row tensor}, sliced with the rows
ZERO_WHEN_ABSENT = ("token_rewards",)  # None means all zeros: batches with and without them concatenate


@dataclass
class Batch:
    input_ids: Tensor  # [B, L] long
    attention_mask: Tensor  # [B, L] long/bool; 1 on real tokens (prompt + response), 0 on padding
    response_mask: Tensor  # [B, L] float; 1 where the policy wrote the token; 0 on prompt, padding, tool output
    rewards: Tensor  # [B] float; outcome reward per trajectory
    group_ids: Tensor  # [B] long; samples of the same prompt share an id
    old_logprobs: Tensor | None = None  # [B, L] log-probs of the policy that is being updated, before the update
    ref_logprobs: Tensor | None = None  # [B, L] frozen reference model log-probs (only when a KL term needs them)
    advantages: Tensor | None = None  # [B, L] zero outside response_mask
    token_weights: Tensor | None = None  # [B, L] starts = response_mask; selection/reweighting multiply into it
    token_rewards: Tensor | None = None  # [B, L] dense or turn-level rewards (e.g. KL-in-reward penalty)
    turn_ids: Tensor | None = None  # [B, L] long; turn index of each token in multi-turn rollouts
    old_entropy: Tensor | None = None  # [B, L] entropy of the policy before the update (detached)
    behaviour_logprobs: Tensor | None = None  # [B, L] log-probs recorded by the rollout engine while sampling
    behaviour_entropy: Tensor | None = None  # [B, L] entropy of the sampling distribution at each generated token
    finished: Tensor | None = None  # [B] bool; False for a response an engine continues in a later step
    correct: Tensor | None = None  # [B] bool; the outcome verdict (environment's, else the task verifier's)
    num_turns: Tensor | None = None  # [B] long; actions in the episode (1 for single-turn rows)
    tool_calls: Tensor | None = None  # [B] long; actions the environment counted as tool calls
    fixed_advantage: Tensor | None = None  # [B] float; a producer's fixed advantage for the row (e.g. AEPO's
    # REINFORCE rows: 1), put on every response token instead of the estimator's; NaN = the estimator decides
    off_policy: Tensor | None = None  # [B] bool; the response was not sampled from the policy under this row's
    # prompt (a critique refinement trained under the original question): objectives may treat it as a demonstration
    pair_ids: Tensor | None = None  # [B] long; rows compared with each other (chosen/rejected, or a ranked list)
    # share an id >= 0; -1 = unlinked. Linked rows stay together through mini-batching and micro-batching (units())
    pair_rank: Tensor | None = None  # [B] long; rank inside the pair (0 = chosen / best, 1 = rejected, 2 = worse ...)
    snapshot_logprobs: Tensor | None = None  # [B, L] log-probs under a frozen snapshot of the policy, refreshed every
    # train.snapshot_every steps (INPO's previous iterate pi_t); only when a component declares needs_snapshot
    reward_terms: dict[str, Tensor] = field(default_factory=dict)  # {reward label: [B] unweighted value}
    extras: dict[str, Tensor] = field(default_factory=dict)  # method-specific per-row tensors [B, ...] (e.g. a
    # whole-batch token selection computed before the update); sliced with the rows like every other tensor
    info: dict[str, Any] = field(default_factory=dict)  # per-sample lists (task, answer, text, truncated, ...)

    def __post_init__(self) -> None:
        if self.token_weights is None:
            self.token_weights = self.response_mask.clone().float()
        rows, device = self.input_ids.shape[0], self.response_mask.device
        if self.fixed_advantage is None:
            self.fixed_advantage = torch.full((rows,), float("nan"), device=device)
        if self.off_policy is None:
            self.off_policy = torch.zeros(rows, dtype=torch.bool, device=device)

    # ---- shape helpers -------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def __len__(self) -> int:
        return self.size

    @property
    def response_lengths(self) -> Tensor:
        """[B] number of policy-written tokens per trajectory."""
        return self.response_mask.sum(-1)

    @property
    def estimated(self) -> Tensor:
        """[B] bool: rows whose advantage the estimator gives (no fixed advantage)."""
        return self.fixed_advantage.isnan()

    def returns(self) -> Tensor:
        """[B] outcome reward plus the sum of any dense token rewards (what outcome-level estimators use)."""
        if self.token_rewards is None:
            return self.rewards
        return self.rewards + (self.token_rewards * self.response_mask).sum(-1)

    def _map(self, fn_tensor, fn_list) -> "Batch":
        kw = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "info":
                kw["info"] = {k: fn_list(x) for k, x in v.items()}
            elif f.name in TENSOR_DICTS:
                kw[f.name] = {k: fn_tensor(x) for k, x in v.items()}
            elif isinstance(v, Tensor):
                kw[f.name] = fn_tensor(v)
            else:
                kw[f.name] = v
        return Batch(**kw)

    def select(self, index: Tensor | list[int]) -> "Batch":
        """Rows ``index`` (in that order) as a new Batch; info lists are indexed the same way."""
        idx = torch.as_tensor(index, dtype=torch.long)
        ids = idx.tolist()
        return self._map(lambda t: t[idx], lambda xs: [xs[i] for i in ids])

    def where(self, rows: Tensor) -> "Batch":
        """The rows where the [B] bool ``rows`` is True (this batch itself when that is every row)."""
        if bool(rows.all()):
            return self
        return self.select(rows.nonzero().flatten().cpu())

    def to(self, device: torch.device | str) -> "Batch":
        return self._map(lambda t: t.to(device), lambda xs: xs)

    # ---- linked rows (pairs) -------------------------------------------------------------------------------------
    def units(self) -> list[Tensor]:
        """The indivisible row sets, in row order of their first row: each linked pair (rows sharing a
        ``pair_ids`` value >= 0) is one unit, every other row a unit of its own. Shuffling, mini-batching and
        micro-batching move whole units, so a pairwise loss always sees both sides of its pairs."""
        if self.pair_ids is None:
            return list(torch.arange(self.size).split(1))
        ids = self.pair_ids.tolist()
        first: dict[int, list[int]] = {}
        out: list[list[int]] = []
        for r, pid in enumerate(ids):
            if pid < 0:
                out.append([r])
            elif pid in first:
                first[pid].append(r)
            else:
                first[pid] = [r]
                out.append(first[pid])
        return [torch.tensor(u, dtype=torch.long) for u in out]

    def num_comparisons(self) -> int:
        """Ordered comparisons (better, worse) inside the linked units: rows of one unit with different
        ``pair_rank``; 1 per chosen/rejected pair, K(K-1)/2 for a strict ranking of K rows."""
        if self.pair_ids is None or self.pair_rank is None:
            return 0
        total = 0
        for unit in self.units():
            if len(unit) > 1:
                ranks = self.pair_rank[unit]
                total += int((ranks[:, None] < ranks[None, :]).sum())
        return total

    def shuffled_units(self, generator: torch.Generator, parts: int) -> list[Tensor]:
        """Rows split into ``parts`` mini-batches of whole units in a random order (each part's rows sorted).

        Without linked rows this is exactly ``torch.randperm(B, generator).chunk(parts)``, rows sorted per part."""
        units = self.units()
        order = torch.randperm(len(units), generator=generator)
        return [torch.cat([units[int(u)] for u in chunk]).sort().values for chunk in order.chunk(parts)]

    def _pack(self, order: list[Tensor], micro_batch_size: int) -> list[Tensor]:
        """Consecutive units packed greedily into chunks of at most ``micro_batch_size`` rows (a unit larger than
        that is a chunk of its own); without linked rows, chunks of exactly ``micro_batch_size`` rows."""
        chunks: list[list[Tensor]] = []
        rows = 0
        for unit in order:
            if not chunks or rows + len(unit) > micro_batch_size:
                chunks.append([])
                rows = 0
            chunks[-1].append(unit)
            rows += len(unit)
        return [torch.cat(c) for c in chunks]

    def split(self, micro_batch_size: int) -> list["Batch"]:
        """Consecutive chunks of at most ``micro_batch_size`` rows (whole units: pairs are never separated)."""
        return [self.select(rows) for rows in self._pack(self.units(), micro_batch_size)]

    def split_by_length(self, micro_batch_size: int) -> list[tuple[Tensor, "Batch"]]:
        """Micro-batches of rows of similar length, each with its row indices into this batch.

        Rows sorted by their number of real tokens share micro-batches, so each one spans few padded columns (the
        log-prob pass runs the model only over columns some row uses). Sums over micro-batches are unchanged.
        Linked rows (pairs) move as one unit, sorted by their longest row."""
        lengths = self.attention_mask.sum(-1).cpu()
        if self.pair_ids is None:
            order = torch.sort(lengths, stable=True).indices
            return [(rows, self.select(rows)) for rows in order.split(micro_batch_size)]
        units = self.units()
        longest = torch.tensor([int(lengths[u].max()) for u in units])
        order = [units[int(i)] for i in torch.sort(longest, stable=True).indices]
        return [(rows, self.select(rows)) for rows in self._pack(order, micro_batch_size)]

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        """Stack batches row-wise, right-padding the shorter ones (pad id 0, masks 0)."""
        if len(batches) == 1:
            return batches[0]
        width = max(b.input_ids.shape[1] for b in batches)
        batches = _distinct_pair_ids(batches)
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(Batch):
            vals = [getattr(b, f.name) for b in batches]
            if f.name == "info":
                keys = set().union(*[v.keys() for v in vals])
                kw["info"] = {k: sum((list(v.get(k, [None] * b.size)) for v, b in zip(vals, batches)), []) for k in keys}
            elif f.name in TENSOR_DICTS:
                kw[f.name] = {k: _cat_padded([v[k] for v in vals], width) for k in vals[0]}
            elif all(v is None for v in vals):
                kw[f.name] = None
            elif any(v is None for v in vals) and f.name in ZERO_WHEN_ABSENT:
                kw[f.name] = _cat_padded([v if v is not None else torch.zeros_like(b.response_mask)
                                          for v, b in zip(vals, batches)], width)
            elif any(v is None for v in vals):
                raise ValueError(f"cannot concat batches: field {f.name!r} is set in some batches and None in others")
            else:
                kw[f.name] = _cat_padded(vals, width)
        return Batch(**kw)


def _distinct_pair_ids(batches: list[Batch]) -> list[Batch]:
    """When some batches link rows, give every batch pair fields (unlinked: id -1, rank 0) and shift each batch's
    ids past the previous ones, so pairs from different batches never merge."""
    if all(b.pair_ids is None for b in batches):
        return batches
    out, offset = [], 0
    for b in batches:
        ids = b.pair_ids if b.pair_ids is not None else torch.full((b.size,), -1, dtype=torch.long,
                                                                   device=b.input_ids.device)
        rank = b.pair_rank if b.pair_rank is not None else torch.zeros_like(ids)
        shifted = torch.where(ids >= 0, ids + offset, ids)
        offset = max(offset, int(shifted.max()) + 1) if b.size else offset
        out.append(dataclasses.replace(b, pair_ids=shifted, pair_rank=rank))
    return out


def _cat_padded(tensors: list[Tensor], width: int) -> Tensor:
    """Row-concatenate; [B, L] tensors are right-padded with zeros to ``width`` first."""
    if tensors[0].dim() == 2:
        return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])
    return torch.cat(tensors)
