"""Splitting responses into reasoning steps ("segments"), for methods that assign credit per step.

EMPG (Wang et al., "Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM Agents",
arXiv 2509.09265) works on agent *steps*: one assistant turn between chat-template delimiters. A single-turn
reasoning response has no turns, so we cut it into reasoning segments instead. The rule, shared by every method that
imports this module:

- **multi-turn batches** (``batch.turn_ids`` is set): a step is a turn — all response tokens with the same turn id,
  numbered 0, 1, ... in the order the turns appear. Tool output / environment tokens are not response tokens and so
  belong to no step.
- **single-turn batches**, rule ``"sentences"`` (default): a new segment starts after a response token whose decoded
  text contains a newline, or whose decoded text ends with sentence-ending punctuation (``.``, ``!``, ``?``) and the
  next response token's text starts with whitespace (unless that next token holds a newline: it then closes the
  segment itself, so "done.\n" is one segment, not two), or whose own text contains such punctuation followed by
  whitespace (a merged ". " token). ``"3.5"`` therefore does not split, ``"done. Next"`` does.
- rule ``"lines"``: only the newline condition.
- rule ``"none"``: the whole response is one segment.

Tokens are decoded one at a time with special tokens skipped (so EOS never splits). The boundary token belongs to the
segment it ends. Positions outside ``response_mask`` get step id -1.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

SEGMENT_RULES = ("sentences", "lines", "none")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")  # text ends a sentence (closing quotes/brackets allowed)
_SENTENCE_END_INSIDE = re.compile(r"[.!?][\"')\]]*\s")  # a merged token such as ". " or ".\n"


def decode_tokens(tokenizer: Any, token_ids: list[int]) -> dict[int, str]:
    """Text of each distinct id decoded on its own (special tokens -> ""), as {id: text}."""
    unique = sorted({int(i) for i in token_ids})
    texts = tokenizer.batch_decode([[i] for i in unique], skip_special_tokens=True)
    return dict(zip(unique, texts))


def boundaries_after(texts: list[str], rule: str = "sentences") -> list[bool]:
    """For a response given as its tokens' texts, True at each token after which a new segment starts (the last
    token never opens a segment, since nothing follows it)."""
    if rule not in SEGMENT_RULES:
        raise ValueError(f"unknown segment rule {rule!r}; allowed: {', '.join(SEGMENT_RULES)}")
    n = len(texts)
    out = [False] * n
    if rule == "none":
        return out
    for t, text in enumerate(texts[:-1]):
        if "\n" in text:
            out[t] = True
        elif rule == "sentences":
            next_text = texts[t + 1]
            next_is_plain_space = next_text[:1].isspace() and "\n" not in next_text
            if _SENTENCE_END_INSIDE.search(text) or (_SENTENCE_END.search(text) and next_is_plain_space):
                out[t] = True
    return out


def segment_text_ids(token_ids: list[int], tokenizer: Any, rule: str = "sentences",
                     texts: dict[int, str] | None = None) -> list[int]:
    """Segment index (0, 1, ...) of each token of one response given as token ids."""
    texts = texts if texts is not None else decode_tokens(tokenizer, token_ids)
    cuts = boundaries_after([texts[int(i)] for i in token_ids], rule)
    ids, current = [], 0
    for cut in cuts:
        ids.append(current)
        current += int(cut)
    return ids


def step_ids(batch: Any, tokenizer: Any = None, rule: str = "sentences") -> Tensor:
    """[B, L] long: the step index of each response token within its row (0, 1, ...), -1 off the response.

    Uses ``batch.turn_ids`` when some row has several turns (steps = turns), else the text rule above (needs
    ``tokenizer``)."""
    mask = batch.response_mask > 0
    out = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    if batch.turn_ids is not None and bool((batch.turn_ids[mask] > 0).any()):  # multi-turn: steps are turns
        for b in range(mask.shape[0]):
            turns = batch.turn_ids[b][mask[b]]
            if turns.numel():
                _, dense = torch.unique(turns, sorted=True, return_inverse=True)  # turn ids in order -> 0..n-1
                out[b, mask[b]] = dense
        return out
    if rule == "none":
        return out.masked_fill(mask, 0)
    if tokenizer is None:
        raise ValueError("text segmentation needs a tokenizer (pass step_ctx, or use rule='none')")
    texts = decode_tokens(tokenizer, batch.input_ids[mask].tolist())
    for b in range(mask.shape[0]):
        ids = batch.input_ids[b][mask[b]].tolist()
        if ids:
            out[b, mask[b]] = torch.tensor(segment_text_ids(ids, tokenizer, rule, texts), device=mask.device)
    return out


def flatten_steps(step_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Number every (row, step) pair of the batch once: returns

    - ``global_id [B, L]`` long: index of the token's step among all steps of the batch (-1 off the response),
    - ``step_row [S]`` long: the row each step belongs to,
    - ``is_last [S]`` bool: True for the last step of its row.
    Steps of a row are consecutive and in order, so step s + 1 is the next step of the same row unless ``is_last``.
    """
    steps_per_row = (step_index.max(-1).values + 1).clamp_min(0)  # [B]; rows without response tokens have 0 steps
    offsets = torch.cumsum(steps_per_row, 0) - steps_per_row  # [B] first global id of each row
    global_id = (step_index + offsets[:, None]).where(step_index >= 0, torch.full_like(step_index, -1))
    step_row = torch.repeat_interleave(torch.arange(step_index.shape[0], device=step_index.device), steps_per_row)
    total = int(steps_per_row.sum())
    is_last = torch.zeros(total, dtype=torch.bool, device=step_index.device)
    ends = offsets + steps_per_row - 1
    is_last[ends[steps_per_row > 0]] = True
    return global_id, step_row, is_last


def step_means(values: Tensor, global_id: Tensor, num_steps: int) -> Tensor:
    """[S] mean of ``values [B, L]`` over each step's tokens (``global_id`` from :func:`flatten_steps`)."""
    on = global_id >= 0
    idx = global_id[on]
    sums = values.new_zeros(num_steps).index_add_(0, idx, values[on].float())
    counts = values.new_zeros(num_steps).index_add_(0, idx, torch.ones_like(values[on], dtype=values.dtype))
    return sums / counts.clamp_min(1.0)
