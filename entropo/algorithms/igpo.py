"""``igpo``: Information Gain-based Policy Optimization (Wang et al., "Information Gain-based Policy Optimization: A
Simple and Effective Approach for Multi-Turn LLM Agents", arXiv 2510.14967), as an advantage estimator.

Each turn of a multi-turn episode is rewarded by how much it raised the policy's own probability of the gold answer;
the answer turn also gets the outcome reward; the turn rewards are normalized within the group and summed into
turn-level discounted advantages:

1. Probe (teacher-forced, no grad, the policy before the update): for row i and k = 0..T_i-1,
   m_{i,k} = mean_j log pi(a_j | c_{i,k}, template prefix, a_<j), the mean log-prob of the gold answer's tokens
   wrapped in the answer template (default ``<answer>{answer}</answer>``), where c_{i,0} is the bare question and
   c_{i,k} the context after turn k-1 (its action and its observation). Contexts are the batch's own ids (prompt and
   response up to the end of the turn, observation included) with the encoded template prefix and answer appended:
   nothing is decoded and re-encoded. All probes of the batch run as one micro-batched forward pass.
2. Info-gain reward of every non-final turn t: ``log_prob_diff`` (default; the updated code's published run config)
   r_t = m_{t+1} - m_t, or ``prob_diff`` (the first release) r_t = exp(m_{t+1}) - exp(m_t).
3. Outcome reward on the final turn: the row's return (``Batch.returns()``: the recipe's rewards, e.g. ``correct``
   or the task's token F1 via ``task_score``, plus any environment turn rewards).
4. Group normalization over turn-level reward positions (group = ``group_ids``): ``joint`` pools every IG and outcome
   reward of the group, ``separate`` (the published config) z-scores IG rewards with IG statistics and outcomes with
   outcome statistics; mean and population std, std = sqrt(var + 1e-8), std := 1 for a single value, denominator
   std + eps.
5. A_{i,t} = sum_{k >= t} gamma^(k-t) r~_{i,k}, on every policy token of turn t (``turn_ids``); observation, prompt
   and padding tokens get 0.
Optional curriculum (off by default): outcome weight 0.5 -> 1.0 and IG weight 1.0 -> 0.5 linearly over the run,
applied to the raw rewards before normalization.

Checked against the official code (GuoqingWang1/IGPO; updated codebase mirrored at debajoycs98/IGPO,
``verl/trainer/ppo/core_algos.py`` ``compute_grpo_outcome_advantage`` / ``_compute_turn_level_advantage`` and
``scrl/llm_agent/generation.py``): the group statistics (population variance over the reward positions, +1e-8 inside
the square root, std 1 when a group has one value, eps 1e-6 added to the std), the curriculum (applied before
normalization), the backward accumulation A_t = r_t + gamma A_{t+1} broadcast to the turn's response tokens, and the
probe (a fixed "enough information ... <answer>" prefix + gold + suffix appended after each turn's context, the
answer-token span located by offsets, mean of its log-probs; IG only for turns followed by another turn, so a
trajectory of T turns has T-1 IG rewards). Two deliberate differences: (a) the official code finds turn ends and IG
positions as the non-zero raw rewards, so an IG of exactly 0 is neither normalized nor a turn end (its tokens join the
next turn's advantage); here turns come from ``turn_ids``, so such a turn is normalized with the others and keeps its
own advantage; (b) the official probe re-renders the conversation text with the chat template, here the probe
context is the trajectory's own ids. The published defaults are gamma 1, ``log_prob_diff``, ``separate``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register

IG_TYPES = ("log_prob_diff", "prob_diff")
NORM_MODES = ("joint", "separate")


# ---- turn layout and the probe -------------------------------------------------------------------------------------

def turn_ends(batch: Batch, row: int) -> tuple[int, list[int], list[int]]:
    """(first real position, [last prompt position, end of turn 0, end of turn 1, ...], [turn ids]) of one row.

    Turns are the distinct ``turn_ids`` that hold policy tokens, in order; a turn ends at its last token, observation
    included. Probe k uses the context ``input_ids[row, first : ends[k] + 1]``."""
    real = batch.attention_mask[row] > 0
    first = int(real.nonzero()[0]) if bool(real.any()) else 0
    turns_row = batch.turn_ids[row] if batch.turn_ids is not None else torch.where(
        batch.response_mask[row] > 0, 0, -1)
    policy = batch.response_mask[row] > 0
    turns = sorted(set(turns_row[policy].tolist()))
    response = (turns_row >= 0) & real
    start = int(response.nonzero()[0]) if bool(response.any()) else int(real.nonzero()[-1]) + 1
    positions = torch.arange(turns_row.numel(), device=turns_row.device)
    ends = [start - 1] + [int(positions[(turns_row == t) & real].max()) for t in turns]
    return first, ends, turns


@torch.no_grad()
def probe_logprobs(model, contexts: Sequence[Sequence[int]], prefixes: Sequence[Sequence[int]],
                   answers: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64,
                   temperature: float = 1.0) -> Tensor:
    """m = mean log-prob of ``answers[n]`` teacher-forced after ``contexts[n] + prefixes[n]``, for every n ([N]).

    Rows are left-padded and scored in micro-batches of similar length (one forward pass each, no grad)."""
    n = len(contexts)
    out = torch.zeros(n, dtype=torch.float32)
    if n == 0:
        return out
    device = next(model.parameters()).device
    seqs = [list(c) + list(p) + list(a) for c, p, a in zip(contexts, prefixes, answers)]
    order = sorted(range(n), key=lambda i: len(seqs[i]))
    for lo in range(0, n, max(1, batch_size)):
        rows = order[lo: lo + batch_size]
        width = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        score = torch.zeros((len(rows), width), dtype=torch.float32)
        for r, i in enumerate(rows):
            s = seqs[i]
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
            score[r, width - len(answers[i]):] = 1.0
        lp, _ = ops.token_logprobs_and_entropy(model, ids.to(device), mask.to(device), temperature=temperature,
                                               compute_mask=score.to(device), with_entropy=False)
        means = (lp.float().cpu() * score).sum(-1) / score.sum(-1).clamp_min(1.0)
        out[torch.tensor(rows)] = means
    return out


def split_template(template: str) -> tuple[str, str]:
    if template.count("{answer}") != 1:
        raise ValueError(f"igpo: answer_template must contain '{{answer}}' exactly once, got {template!r} "
                         f"(advantage.params.answer_template)")
    prefix, _, suffix = template.partition("{answer}")
    return prefix, suffix


def probe_batch(model, tokenizer, batch: Batch, answer_template: str = "<answer>{answer}</answer>",
                batch_size: int = 64, temperature: float = 1.0) -> list[list[float]]:
    """Per row, [m_0, m_1, ..., m_{T-1}]: the gold answer's mean log-prob after the bare question (m_0) and after
    each non-final turn. The template's suffix follows the answer in the paper's probe but cannot change the answer
    tokens' causal log-probs, so only the prefix and the answer are appended."""
    prefix, _ = split_template(answer_template)
    golds = batch.info.get("answer")
    if golds is None or any(g is None for g in golds):
        raise ValueError("igpo needs the gold answer of every row (Example.answer, batch.info['answer']); use a task "
                         "with answers")
    prefix_ids = list(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
    contexts, prefixes, answers, owner = [], [], [], []
    encoded: dict[str, list[int]] = {}
    for b in range(batch.size):
        gold = str(golds[b])
        if gold not in encoded:
            encoded[gold] = list(tokenizer(gold, add_special_tokens=False)["input_ids"])
            if not encoded[gold]:
                raise ValueError(f"igpo: the gold answer {gold!r} encodes to no tokens")
        first, ends, _turns = turn_ends(batch, b)
        row_ids = batch.input_ids[b].tolist()
        for end in ends[:-1]:  # the question, then the context after every turn but the last
            contexts.append(row_ids[first: end + 1])
            prefixes.append(prefix_ids)
            answers.append(encoded[gold])
            owner.append(b)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    values = probe_logprobs(model, contexts, prefixes, answers, pad, batch_size, temperature).tolist()
    per_row: list[list[float]] = [[] for _ in range(batch.size)]
    for b, v in zip(owner, values):
        per_row[b].append(v)
    return per_row


# ---- rewards, normalization, advantages ----------------------------------------------------------------------------

def info_gains(probe: Sequence[float], kind: str = "log_prob_diff") -> list[float]:
    """IG of each non-final turn from the probe values [m_0, ..., m_{T-1}]: m_{t+1} - m_t (``log_prob_diff``) or
    exp(m_{t+1}) - exp(m_t) (``prob_diff``)."""
    if kind not in IG_TYPES:
        raise ValueError(f"igpo: unknown ig_type {kind!r}; allowed: {', '.join(IG_TYPES)} (advantage.params.ig_type)")
    values = [math.exp(m) for m in probe] if kind == "prob_diff" else list(probe)
    return [values[k + 1] - values[k] for k in range(len(values) - 1)]


def _group_z(values: list[float], eps: float) -> list[float]:
    """(x - mean) / (std + eps), population std with 1e-8 inside the square root; std 1 for a single value."""
    if not values:
        return []
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) + 1e-8) if len(values) > 1 else 1.0
    return [(v - mean) / (std + eps) for v in values]


def normalize_turn_rewards(ig: Sequence[Sequence[float]], outcome: Sequence[float], group_ids: Sequence[int],
                           mode: str = "separate", eps: float = 1e-6) -> list[list[float]]:
    """Per row, the normalized turn rewards [r~_0, ..., r~_{T-1}] (IG rewards of the non-final turns, then the
    outcome), z-scored within each group jointly (``joint``) or per reward type (``separate``)."""
    if mode not in NORM_MODES:
        raise ValueError(f"igpo: unknown norm {mode!r}; allowed: {', '.join(NORM_MODES)} (advantage.params.norm)")
    out = [[0.0] * (len(g) + 1) for g in ig]
    groups: dict[int, list[int]] = {}
    for b, g in enumerate(group_ids):
        groups.setdefault(int(g), []).append(b)
    for rows in groups.values():
        slots_ig = [(b, k) for b in rows for k in range(len(ig[b]))]
        slots_out = [(b, len(ig[b])) for b in rows]
        raw = {(b, k): float(ig[b][k]) for b, k in slots_ig} | {(b, len(ig[b])): float(outcome[b]) for b in rows}
        pools = [slots_ig + slots_out] if mode == "joint" else [slots_ig, slots_out]
        for pool in pools:
            for (b, k), z in zip(pool, _group_z([raw[s] for s in pool], eps)):
                out[b][k] = z
    return out


def discounted(rewards: Sequence[float], gamma: float) -> list[float]:
    """A_t = sum_{k >= t} gamma^(k-t) r_k."""
    out, running = [0.0] * len(rewards), 0.0
    for k in range(len(rewards) - 1, -1, -1):
        running = rewards[k] + gamma * running
        out[k] = running
    return out


def turn_advantages(ig: Sequence[Sequence[float]], outcome: Sequence[float], group_ids: Sequence[int],
                    mode: str = "separate", gamma: float = 1.0, eps: float = 1e-6, ig_weight: float = 1.0,
                    outcome_weight: float = 1.0) -> tuple[list[list[float]], list[list[float]]]:
    """(normalized turn rewards, turn advantages) per row. Spec example (joint, gamma 1): IG [0.2, -0.05] + outcome 1
    and IG [0.1] + outcome 0 in one group -> normalized [-0.130, -0.780, 1.950] / [-0.390, -0.650], advantages
    [1.040, 1.170, 1.950] / [-1.040, -0.650]."""
    weighted_ig = [[ig_weight * v for v in row] for row in ig]
    weighted_out = [outcome_weight * v for v in outcome]
    normalized = normalize_turn_rewards(weighted_ig, weighted_out, group_ids, mode, eps)
    return normalized, [discounted(r, gamma) for r in normalized]


# ---- the estimator ----------------------------------------------------------------------------------------------------

@register("advantage", "igpo", paper="Information Gain-based Policy Optimization (IGPO), arXiv 2510.14967")
class IGPO:
    """Turn-level information-gain advantages (see the module docstring).

    Params: ``ig_type`` (``log_prob_diff`` | ``prob_diff``), ``norm`` (``separate`` | ``joint``), ``gamma`` (1.0),
    ``eps`` (1e-6), ``answer_template`` (the probe's continuation; ``{answer}`` is the gold answer), ``ig_weight`` /
    ``outcome_weight`` (fixed reward weights, 1.0; ``ig_weight: 0`` gives outcome-only turn advantages),
    ``curriculum`` (False; True: outcome weight ``outcome_weight_range`` and IG weight ``ig_weight_range`` move
    linearly over ``train.steps``), ``probe_batch_size`` (rows per probe forward pass), ``probe_temperature``
    (None: the rollout temperature).

    Needs the policy and tokenizer (``step_ctx``) for the probe and ``Batch.turn_ids``. Metrics (logged under
    ``advantage/``): ``ig_mean``, ``ig_abs_mean``, ``ig_positive_frac``, ``ig_turns_mean`` (IG rewards per row),
    ``probe_p0_mean`` (exp m_0), ``probe_p_last_mean`` (exp of the last probe), ``zero_adv_group_frac`` (groups
    whose every advantage is 0: no learning signal), ``probe_s``, and the curriculum weights."""

    def __init__(self, ig_type: str = "log_prob_diff", norm: str = "separate", gamma: float = 1.0, eps: float = 1e-6,
                 answer_template: str = "<answer>{answer}</answer>", ig_weight: float = 1.0,
                 outcome_weight: float = 1.0, curriculum: bool = False,
                 outcome_weight_range: tuple[float, float] = (0.5, 1.0),
                 ig_weight_range: tuple[float, float] = (1.0, 0.5), probe_batch_size: int = 64,
                 probe_temperature: float | None = None):
        if ig_type not in IG_TYPES:
            raise ValueError(f"igpo: unknown ig_type {ig_type!r}; allowed: {', '.join(IG_TYPES)} "
                             f"(advantage.params.ig_type)")
        if norm not in NORM_MODES:
            raise ValueError(f"igpo: unknown norm {norm!r}; allowed: {', '.join(NORM_MODES)} (advantage.params.norm)")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"igpo: gamma must be in [0, 1], got {gamma!r} (advantage.params.gamma)")
        split_template(answer_template)
        self.ig_type, self.norm, self.gamma, self.eps = ig_type, norm, float(gamma), float(eps)
        self.answer_template = answer_template
        self.ig_weight, self.outcome_weight, self.curriculum = float(ig_weight), float(outcome_weight), curriculum
        self.outcome_weight_range = tuple(float(x) for x in outcome_weight_range)
        self.ig_weight_range = tuple(float(x) for x in ig_weight_range)
        self.probe_batch_size, self.probe_temperature = int(probe_batch_size), probe_temperature

    def weights(self, step_ctx: Any) -> tuple[float, float]:
        """(IG weight, outcome weight) at this step."""
        if not self.curriculum:
            return self.ig_weight, self.outcome_weight
        total = getattr(getattr(getattr(step_ctx, "recipe", None), "train", None), "steps", 1) or 1
        progress = min(1.0, getattr(step_ctx, "step", 0) / max(1, total))
        (o0, o1), (i0, i1) = self.outcome_weight_range, self.ig_weight_range
        return i0 + (i1 - i0) * progress, o0 + (o1 - o0) * progress

    def __call__(self, batch: Batch, step_ctx: Any = None) -> tuple[Tensor, dict[str, float]]:
        if step_ctx is None or getattr(step_ctx, "model", None) is None:
            raise ValueError("igpo needs the policy model and tokenizer (step_ctx) to run its probe")
        temperature = self.probe_temperature
        if temperature is None:
            temperature = getattr(getattr(getattr(step_ctx, "recipe", None), "rollout", None), "temperature", 1.0)
        t0 = time.perf_counter()
        was_training = step_ctx.model.training
        step_ctx.model.eval()
        probes = probe_batch(step_ctx.model, step_ctx.tokenizer, batch, self.answer_template,
                             self.probe_batch_size, float(temperature))
        if was_training:
            step_ctx.model.train()
        probe_s = time.perf_counter() - t0
        ig = [info_gains(p, self.ig_type) for p in probes]
        outcome = batch.returns().float().tolist()
        ig_w, out_w = self.weights(step_ctx)
        _, adv_turns = turn_advantages(ig, outcome, batch.group_ids.tolist(), self.norm, self.gamma, self.eps,
                                       ig_w, out_w)
        advantages = broadcast_turns(batch, adv_turns)
        metrics = igpo_metrics(ig, probes, advantages, batch)
        metrics.update({"probe_s": probe_s, "ig_weight": ig_w, "outcome_weight": out_w})
        return advantages, metrics


def broadcast_turns(batch: Batch, adv_turns: Sequence[Sequence[float]]) -> Tensor:
    """[B, L] advantages: row b's turn-t value on every policy token of its turn t, 0 elsewhere."""
    advantages = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.response_mask.device)
    for b in range(batch.size):
        _, _, turns = turn_ends(batch, b)
        if not turns:
            continue
        turns_row = batch.turn_ids[b] if batch.turn_ids is not None else torch.where(
            batch.response_mask[b] > 0, 0, -1)
        policy = batch.response_mask[b] > 0
        for t, value in zip(turns, adv_turns[b]):
            advantages[b, policy & (turns_row == t)] = float(value)
    return advantages


def igpo_metrics(ig: list[list[float]], probes: list[list[float]], advantages: Tensor, batch: Batch
                 ) -> dict[str, float]:
    flat = [v for row in ig for v in row]
    groups = batch.group_ids
    row_zero = ((advantages.abs() > 1e-8) & (batch.response_mask > 0)).sum(-1) == 0  # [B]
    zero_groups = [bool(row_zero[groups == g].all()) for g in torch.unique(groups)]
    out = {
        "ig_mean": sum(flat) / len(flat) if flat else 0.0,
        "ig_abs_mean": sum(abs(v) for v in flat) / len(flat) if flat else 0.0,
        "ig_positive_frac": sum(v > 0 for v in flat) / len(flat) if flat else 0.0,
        "ig_turns_mean": len(flat) / max(1, len(ig)),
        "probe_p0_mean": sum(math.exp(p[0]) for p in probes if p) / max(1, sum(1 for p in probes if p)),
        "probe_p_last_mean": sum(math.exp(p[-1]) for p in probes if p) / max(1, sum(1 for p in probes if p)),
        "zero_adv_group_frac": sum(zero_groups) / max(1, len(zero_groups)),
    }
    return out
