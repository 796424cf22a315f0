"""ASPO, Advantage Shaping Policy Optimization (Lin & Xu, "Understanding Tool-Integrated Reasoning", arXiv
2508.19201), as the advantage-stage shaping ``aspo``.

Shaping the *reward* to favour early code calls destabilises GRPO (the group normalisation amplifies it), so ASPO
adds a bounded, group-relative bias directly to the advantages of correct, tool-using responses. Within each prompt
group, over the *eligible* responses (correct and containing at least one code call):

    p_i = token position of the first code call,  p̄ = mean p,  L̄ = mean response length (tokens)
    bias_i = clip(δ · (p_i − p̄) / L̄,  −k·|A_i|,  k·|A_i|)
    A′_i = A_i + bias_i   on every response token of i      (rewards and returns untouched)

Defaults δ = −2.0, k = 0.7 (the paper's conservative setting; aggressive: δ = −2.5, k = 0.9). With δ < 0 an earlier
call than the group's eligible mean raises the advantage.

No official code was found (spec §22); this follows the paper's description of its Eq. 2. Resolutions of the
ambiguities (spec (g)): the clip bound is relative to |A_i| (so the bias can never flip the advantage's sign when
k < 1); p̄ and L̄ are means over the eligible responses of the same group (group-level, not batch-level); the
position is normalised by the mean length L̄, not by the std of p. A group with one eligible response gets bias 0.

Inputs: correctness from ``batch.correct`` (the environment's or the task verifier's; reward > ``correct_threshold``
when absent). In multi-turn episodes (``python_tool``, ``tools``) the first call is where the first tool-calling
turn ends, counted in policy tokens (observation tokens excluded), from the engine's record of which turns called a
tool (``EpisodeInfo.tool_call_turns``). In single responses with inline calls the first call is the first occurrence of one of ``call_markers`` in the decoded completion
(``entropo.rewards.tool_efficiency.first_tool_call``), converted to a token position by tokenizing the text before
it with the run's tokenizer (``step_ctx``), or — without a tokenizer — by scaling the character offset to the
response's token count. A_i is the mean advantage over the response's tokens (outcome estimators make it constant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register
from entropo.rewards.tool_efficiency import DEFAULT_CALL_MARKERS, first_tool_call


def aspo_bias(advantage: Tensor, first_call: Tensor, length: Tensor, eligible: Tensor, group_ids: Tensor,
              delta: float = -2.0, k: float = 0.7) -> Tensor:
    """Per-sample bias [B]. ``advantage`` [B] per-sample A_i, ``first_call`` [B] token position of the first call
    (any value where not eligible), ``length`` [B] response lengths, ``eligible`` [B] bool; 0 for ineligible rows."""
    weight = eligible.to(advantage.dtype)
    index, num_groups = ops.group_index(group_ids)
    count = advantage.new_zeros(num_groups).index_add_(0, index, weight)  # eligible responses per group
    position = torch.where(eligible, first_call.to(advantage.dtype), 0.0)
    mean_position = advantage.new_zeros(num_groups).index_add_(0, index, position) / count.clamp_min(1.0)
    lengths = torch.where(eligible, length.to(advantage.dtype), 0.0)
    mean_length = advantage.new_zeros(num_groups).index_add_(0, index, lengths) / count.clamp_min(1.0)
    raw = delta * (position - mean_position[index]) / mean_length[index].clamp_min(1.0)
    bound = k * advantage.abs()
    return torch.where(eligible, torch.maximum(torch.minimum(raw, bound), -bound), 0.0)


def _episode_first_call(batch: Batch, row: int) -> float | None:
    """Policy-token position where the first tool-calling turn of a multi-turn episode ends (the call is issued
    there), or None when the row is not such an episode."""
    samples = batch.info.get("sample")
    episode = getattr(samples[row], "episode", None) if samples else None
    if episode is None or not episode.tool_call_turns or batch.turn_ids is None:
        return None
    policy = batch.response_mask[row] > 0
    return float((policy & (batch.turn_ids[row] <= episode.tool_call_turns[0])).sum())


def _first_call_tokens(batch: Batch, markers: Sequence[str], tokenizer: Any | None) -> tuple[Tensor, Tensor]:
    """(position [B] float, has_call [B] bool) of the first tool call in each response, in policy tokens: from the
    engine's record of tool-calling turns in multi-turn episodes, else from call markers in the completion text."""
    lengths = batch.response_lengths
    positions, has_call = [], []
    for row, text in enumerate(batch.info["completion"]):
        in_episode = _episode_first_call(batch, row)
        if in_episode is not None:
            positions.append(in_episode)
            has_call.append(True)
            continue
        offset = first_tool_call(text, markers)
        has_call.append(offset is not None)
        if offset is None:
            positions.append(0.0)
        elif tokenizer is not None:
            positions.append(float(len(tokenizer(text[:offset], add_special_tokens=False)["input_ids"])))
        else:
            positions.append(float(lengths[row]) * offset / max(len(text), 1))
    device = lengths.device
    return torch.tensor(positions, device=device), torch.tensor(has_call, dtype=torch.bool, device=device)


def _correct(batch: Batch, correct_threshold: float) -> Tensor:
    if batch.correct is not None:
        return batch.correct.to(batch.rewards.device)
    return batch.rewards > correct_threshold


@register("shaping", "aspo", paper="Understanding Tool-Integrated Reasoning (ASPO), arXiv 2508.19201",
          stage="advantage")
def aspo(batch: Batch, delta: float = -2.0, k: float = 0.7, call_markers: Sequence[str] = DEFAULT_CALL_MARKERS,
         correct_threshold: float = 0.5, step_ctx: Any = None) -> dict[str, float]:
    """Add the ASPO bias to ``batch.advantages`` on each eligible response's tokens (see the module docstring).
    Metrics: ``aspo_eligible_frac`` (of the batch) and ``aspo_bias_abs_mean`` (over eligible responses)."""
    if batch.advantages is None:
        raise ValueError("aspo is an advantage-stage shaping: batch.advantages must be set")
    if not math.isfinite(delta) or k < 0:
        raise ValueError(f"aspo: need a finite delta and k >= 0, got delta={delta}, k={k}")
    response_mask = batch.response_mask
    tokenizer = getattr(step_ctx, "tokenizer", None)
    first_call, has_call = _first_call_tokens(batch, call_markers, tokenizer)
    eligible = has_call & _correct(batch, correct_threshold)
    advantage = ops.masked_mean(batch.advantages, response_mask, dim=-1)  # [B] A_i
    bias = aspo_bias(advantage, first_call, batch.response_lengths, eligible, batch.group_ids, delta, k)
    batch.advantages = batch.advantages + ops.broadcast_to_tokens(bias, response_mask)
    n_eligible = float(eligible.sum())
    return {
        "aspo_eligible_frac": n_eligible / max(batch.size, 1),
        "aspo_bias_abs_mean": float(bias.abs().sum()) / n_eligible if n_eligible else 0.0,
    }
