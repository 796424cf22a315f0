"""Process rewards: step scores on tokens, PAV progress rewards, and the advantages that use them.

"Rewarding Progress: Scaling Automated Process Verifiers for LLM Reasoning" (Setlur et al., arXiv 2410.08146):
a step's process reward is its *progress*, the advantage A^μ(s_h, a_h) = Q^μ(s_h, a_h) − V^μ(s_h) under a
*prover* policy μ, where Q^μ of a prefix is the probability that μ completes it to a correct answer. In practice
(and here) it is the difference of consecutive Monte-Carlo success estimates: with q_0 = Q̂^μ(prompt) and
q_h = Q̂^μ(prompt + steps 1..h), step h gets A_h = q_h − q_{h−1}. The prover is Best-of-K of the current policy
(the paper's recommended complementary prover): μ succeeds from a prefix iff any of K policy completions is correct,
so Q^{BoK} = 1 − (1 − Q^π)^K. K = 1 is μ = π. No official code exists (the paper's spec lists none); the formulas
are the paper's definitions, α is a free weight ("single digits" in the paper; unverified).

Pieces (steps are the ``"lines"`` segments of ``entropo.algorithms.segments``; a step's reward sits on its last
token, the newline that ends it, or the last response token):

- ``step_end_mask`` / ``place_step_rewards``: step scores → ``Batch.token_rewards`` at step-end tokens;
- ``bok_success`` / ``mc_prover_values``: the Monte-Carlo Q^μ estimate of a set of prefixes (any completion
  function: the tiny LM's ``StepSampler`` in training, a tabular policy in the tests);
- shaping ``pav`` (stage ``reward``): writes A^μ_h per step on ``token_rewards`` from MC completions of every step
  prefix (``source="mc"``) or from a learned PAV/PRM's predictions (``source="prm"``, ``entropo.search.prm``);
- advantage ``process_advantage``: A_t = outcome advantage (GRPO on ``rewards`` only) + α · process term, the process
  term being the reward of token t's own step (``mode="step"``, PAV: "per-step reward α·A^μ ... combined with the
  outcome") or the sum of step rewards from its step on (``mode="to_go"``, PRIME-style returns-to-go of process
  rewards, "Process Reinforcement through Implicit Rewards", arXiv 2502.01456, without its implicit PRM).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from entropo.batch import Batch
from entropo.registry import register


# ---- step scores on tokens --------------------------------------------------------------------------------------
def step_end_mask(step_index: Tensor) -> Tensor:
    """[B, L] bool: True on the last response token of each step (``step_index`` from ``segments.step_ids``:
    -1 off the response). A step ends where the next response token has another step id or the response ends."""
    on = step_index >= 0
    out = torch.zeros_like(on)
    for b in range(step_index.shape[0]):
        pos = on[b].nonzero().flatten()
        if pos.numel() == 0:
            continue
        ids = step_index[b, pos]
        last = torch.ones_like(ids, dtype=torch.bool)
        last[:-1] = ids[1:] != ids[:-1]
        out[b, pos[last]] = True
    return out


def place_step_rewards(step_index: Tensor, scores: Sequence[Sequence[float]]) -> Tensor:
    """[B, L] float: ``scores[b][h]`` on the last token of step h of row b, 0 elsewhere. Each row needs exactly one
    score per step (a clear error otherwise)."""
    ends = step_end_mask(step_index)
    out = torch.zeros(step_index.shape, dtype=torch.float32, device=step_index.device)
    for b in range(step_index.shape[0]):
        pos = ends[b].nonzero().flatten()
        if len(scores[b]) != pos.numel():
            raise ValueError(f"place_step_rewards: row {b} has {pos.numel()} steps but {len(scores[b])} scores")
        if pos.numel():
            out[b, pos] = torch.tensor([float(s) for s in scores[b]], dtype=torch.float32, device=out.device)
    return out


def progress(q: Sequence[float]) -> list[float]:
    """Step progress from prefix values ``q = [q_0 (prompt), q_1, ..., q_H]``: ``[q_1 − q_0, ..., q_H − q_{H−1}]``."""
    return [float(q[h] - q[h - 1]) for h in range(1, len(q))]


# ---- Monte-Carlo prover values ----------------------------------------------------------------------------------
def bok_success(p: float | Tensor, k: int) -> float | Tensor:
    """Exact success probability of the Best-of-K prover from a prefix where one policy completion succeeds with
    probability ``p``: 1 − (1 − p)^K (K = 1: the policy itself)."""
    return 1.0 - (1.0 - p) ** k


def mc_prover_values(prefixes: list[Any], complete: Callable[[list[Any], int], list[list[Any]]],
                     success: Callable[[Any], bool], n_mc: int, k: int = 1) -> list[float]:
    """Q̂^μ of each prefix for μ = Best-of-K(π): ``n_mc`` independent provers, each drawing K completions of the
    prefix with ``complete(prefixes, n) -> n completions per prefix`` and succeeding iff one is correct (by
    ``success``). Returns the fraction of successful provers per prefix (an unbiased estimate of 1 − (1 − Q^π)^K)."""
    if n_mc < 1 or k < 1:
        raise ValueError(f"mc_prover_values: n_mc and k must be >= 1, got n_mc={n_mc}, k={k}")
    if not prefixes:
        return []
    done = complete(prefixes, n_mc * k)
    out = []
    for completions in done:
        wins = [bool(success(c)) for c in completions]
        provers = [any(wins[j * k:(j + 1) * k]) for j in range(n_mc)]
        out.append(sum(provers) / n_mc)
    return out


def zero_signal_group_frac(rewards: Tensor, group_ids: Tensor, dense: Tensor, tol: float = 1e-12) -> float:
    """Fraction of groups that carry no learning signal under ``process_advantage``: every outcome reward of the
    group is equal (its group-relative outcome advantage is 0) and every dense step reward of its rows is 0 (its
    process term is 0). For outcome-only GRPO the second condition is always true (the trainer's
    ``selection/zero_variance_group_frac``)."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    if len(uniq) == 0:
        return 0.0
    r = rewards.double()
    hi = torch.full((len(uniq),), -math.inf, dtype=torch.double).scatter_reduce(0, inv, r, "amax")
    lo = torch.full((len(uniq),), math.inf, dtype=torch.double).scatter_reduce(0, inv, r, "amin")
    dense_abs = dense.double().abs().amax(-1) if dense.numel() else torch.zeros_like(r)
    busy = torch.zeros(len(uniq), dtype=torch.double).scatter_reduce(0, inv, dense_abs, "amax")
    return float((((hi - lo) <= tol) & (busy <= tol)).double().mean())


# ---- the batch side ---------------------------------------------------------------------------------------------
def row_prompt_and_steps(batch: Batch, b: int, step_index: Tensor) -> tuple[list[int], list[list[int]]]:
    """Prompt ids (real tokens before the response) and the response's steps as id lists, for a single-turn row."""
    mask = batch.response_mask[b] > 0
    pos = mask.nonzero().flatten()
    if pos.numel() == 0:
        return batch.input_ids[b][batch.attention_mask[b] > 0].tolist(), []
    start = int(pos[0])
    prompt = batch.input_ids[b, :start][batch.attention_mask[b, :start] > 0].tolist()
    ids = batch.input_ids[b][mask].tolist()
    sids = step_index[b][mask].tolist()
    steps: list[list[int]] = []
    for t, s in zip(ids, sids):
        if s >= len(steps):
            steps.append([])
        steps[s].append(int(t))
    return prompt, steps


def _check_single_turn(batch: Batch, who: str) -> None:
    if batch.turn_ids is not None and bool((batch.turn_ids[batch.response_mask > 0] > 0).any()):
        raise ValueError(f"{who}: multi-turn rows are not supported (prefix completions would skip the environment); "
                         "use it on single-turn tasks such as arith_chain")


def _prefix_partials(batch: Batch, step_index: Tensor) -> tuple[list[Any], list[tuple[int, int]]]:
    """One ``Partial`` per (row, prefix h = 0..H−1): the prompt plus steps 1..h (h = H, the full response, is judged by
    the outcome, not completed)."""
    from entropo.search.steps import Partial, Step

    samples = batch.info.get("sample")
    if samples is None:
        raise ValueError("pav needs batch.info['sample'] (the rows' examples; batches made by the trainer have it)")
    partials, where = [], []
    for b in range(batch.size):
        prompt, steps = row_prompt_and_steps(batch, b, step_index)
        for h in range(len(steps)):
            done = tuple(Step(tuple(s), tuple(0.0 for _ in s), "stop") for s in steps[:h])
            partials.append(Partial(samples[b].example, tuple(prompt), done))
            where.append((b, h))
    return partials, where


_PRM_CACHE: dict[tuple[str, float], Any] = {}


def _load_prm_cached(path: str) -> Any:
    """The PRM at ``path``, loaded once per file version (the shaping runs every step)."""
    from pathlib import Path

    from entropo.search.prm import WEIGHTS_FILE, load_prm

    weights = Path(path) / WEIGHTS_FILE
    key = (path, weights.stat().st_mtime if weights.exists() else -1.0)
    if key not in _PRM_CACHE:
        _PRM_CACHE.clear()
        _PRM_CACHE[key] = load_prm(path)
    return _PRM_CACHE[key]


@register("shaping", "pav", paper="PAV, Rewarding Progress (Setlur et al.), arXiv 2410.08146", stage="reward")
def pav(batch: Batch, n_mc: int = 4, k: int = 4, source: str = "mc", prm_path: str | None = None, scale: float = 1.0,
        rule: str = "lines", max_tokens: int | None = None, temperature: float = 1.0,
        step_ctx: Any = None) -> dict[str, float]:
    """token_rewards += scale · A^μ_h on the last token of each step h (see the module docstring).

    ``source="mc"``: q_h by ``mc_prover_values`` with the current policy (``step_ctx.engine``) as π and Best-of-``k``
    as μ, ``n_mc`` provers per prefix; q_H of the full response is its outcome (``batch.correct``). ``source="prm"``:
    q_h = a learned PAV's prediction (``prm_path``: a folder written by ``entropo run prm_train``), q_H likewise.
    Completions are capped at ``max_tokens`` response tokens (default: the recipe's ``rollout.max_new_tokens``).
    Metrics: ``pav_steps`` (mean steps per row), ``pav_progress_abs`` (mean |A^μ|), ``pav_q0`` (mean q_0),
    ``pav_zero_signal_group_frac`` (groups with equal outcomes and no nonzero progress: ``zero_signal_group_frac``)."""
    from entropo.algorithms.segments import step_ids

    if source not in ("mc", "prm"):
        raise ValueError(f"pav: source must be 'mc' or 'prm', got {source!r}")
    if step_ctx is None:
        raise ValueError("pav needs the step context (it is passed by the trainer)")
    _check_single_turn(batch, "pav")
    tokenizer = step_ctx.tokenizer
    sidx = step_ids(batch, tokenizer, rule)
    partials, where = _prefix_partials(batch, sidx)
    if source == "mc":
        from entropo.search.runner import make_sampler
        from entropo.tasks.base import stable_seed

        budget = max_tokens or int(getattr(step_ctx.recipe.rollout, "max_new_tokens", 64))
        sampler = make_sampler(step_ctx.engine, stable_seed(int(step_ctx.recipe.seed), "pav", step_ctx.step),
                               temperature=temperature, max_step_tokens=budget, max_steps=10_000, max_tokens=budget)

        def success(p) -> bool:
            return bool(step_ctx.task.correct(p.text(tokenizer), p.example))

        q_prefix = mc_prover_values(partials, sampler.complete, success, n_mc, k)
        q_final = [float(c) for c in batch.correct.tolist()] if batch.correct is not None else [
            float(step_ctx.task.correct(s.completion, s.example)) for s in batch.info["sample"]]
        extra = {"pav_completion_tokens": float(sampler.tokens)}
    else:
        if not prm_path:
            raise ValueError("pav: source='prm' needs prm_path (a folder written by `entropo run prm_train`)")
        model = _load_prm_cached(str(prm_path))
        q_prefix = model.predict_last([p.ids for p in partials])
        finals = [batch.input_ids[b][batch.attention_mask[b] > 0].tolist() for b in range(batch.size)]
        q_final = model.predict_last(finals)
        extra = {}
    per_row: list[list[float]] = [[] for _ in range(batch.size)]
    for (b, _), q in zip(where, q_prefix):
        per_row[b].append(q)
    scores, q0 = [], []
    for b in range(batch.size):
        if not per_row[b]:
            scores.append([])
            continue
        qs = per_row[b] + [q_final[b]]
        q0.append(qs[0])
        scores.append([scale * a for a in progress(qs)])
    dense = place_step_rewards(sidx, scores).to(batch.response_mask.dtype)
    batch.token_rewards = dense if batch.token_rewards is None else batch.token_rewards + dense
    flat = [abs(a) for row in scores for a in row]
    return {"pav_steps": sum(len(r) for r in scores) / max(1, batch.size),
            "pav_zero_signal_group_frac": zero_signal_group_frac(batch.rewards, batch.group_ids, dense),
            "pav_progress_abs": sum(flat) / max(1, len(flat)), "pav_q0": sum(q0) / max(1, len(q0)), **extra}


@register("advantage", "process_advantage",
          paper="PAV (Setlur et al.), arXiv 2410.08146; PRIME returns-to-go (Cui et al.), arXiv 2502.01456")
def process_advantage(batch: Batch, alpha: float = 1.0, mode: str = "step", outcome: str = "grpo",
                      rule: str = "lines", step_ctx: Any = None) -> Tensor:
    """A_t = outcome advantage of the row + α · process term of token t, from ``batch.token_rewards`` (written by
    ``pav`` or any step-reward shaping) and the outcome ``rewards`` (the outcome estimator ``outcome`` — ``grpo``,
    ``dr_grpo``, ``rloo`` — sees the rows with their dense rewards removed, so process rewards are never summed
    into the outcome). ``mode="step"``: the process term is the reward sum of t's own step (PAV's per-step
    α·A^μ); ``mode="to_go"``: the sum over t's step and all later steps of its row (PRIME-style). Steps: the
    ``rule`` segments (``lines``). Example (a row "1\\n2" of two steps "1\\n" and "2", step rewards 0.5 and −0.25 on
    its 2nd and 3rd tokens, α = 2, outcome advantage 1): step → [2, 2, 0.5]; to_go → [1.5, 1.5, 0.5]."""
    from entropo import registry
    from entropo.algorithms.segments import flatten_steps, step_ids

    if mode not in ("step", "to_go"):
        raise ValueError(f"process_advantage: mode must be 'step' or 'to_go', got {mode!r}")
    if outcome not in ("grpo", "dr_grpo", "rloo"):
        raise ValueError(f"process_advantage: outcome must be grpo, dr_grpo or rloo, got {outcome!r}")
    base = registry.get("advantage", outcome)(dataclasses.replace(batch, token_rewards=None))
    if batch.token_rewards is None:
        return base
    tokenizer = step_ctx.tokenizer if step_ctx is not None else None
    sidx = step_ids(batch, tokenizer, rule)
    gid, step_row, is_last = flatten_steps(sidx)
    n = int(step_row.numel())
    on = gid >= 0
    sums = torch.zeros(n, dtype=torch.float32, device=gid.device)
    sums.index_add_(0, gid[on], (batch.token_rewards * batch.response_mask)[on].float())
    if mode == "to_go":  # suffix sums within each row: steps of a row are consecutive, is_last closes a row
        acc = torch.zeros((), dtype=torch.float32, device=gid.device)
        togo = torch.zeros_like(sums)
        for s in range(n - 1, -1, -1):
            acc = sums[s] + (acc if not bool(is_last[s]) else 0.0)
            togo[s] = acc
        sums = togo
    process = torch.zeros_like(base)
    process[on] = sums[gid[on]].to(base.dtype)
    return (base + alpha * process).where(batch.response_mask > 0, 0.0)


from entropo.search import prm as _prm  # noqa: E402,F401  (registers the program prm_train)
