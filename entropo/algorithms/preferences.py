"""Pairwise preference learning in the RL loop: objectives (registry kind ``"objective"``, ``level="pair"``), the
pair builder (producer ``preference_pairs``) and the differential-information diagnostics.

Pairs live in the Batch as linked rows: rows compared with each other share ``Batch.pair_ids`` (>= 0) and
``Batch.pair_rank`` orders them (0 = chosen). Shuffling, mini-batching and micro-batching move whole pairs
(``Batch.units``), and the trainer divides a pair-level objective's per-row loss by the number of comparisons in the
whole mini-batch (``Batch.num_comparisons``), so gradient accumulation over micro-batches equals the full batch.

Sequence log-probabilities are sums over the loss tokens (``mask`` = ``Batch.token_weights``, the response tokens
unless a selection rule zeroed some, e.g. the shared prefix of two responses). With r(y) = log pi(y) - log pi_ref(y)
and Delta = r(y_w) - r(y_l) per comparison:

- ``dpo`` — Direct Preference Optimization (Rafailov et al., arXiv 2305.18290): ``loss="sigmoid"``:
  -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta); eps = ``label_smoothing`` is conservative DPO (cDPO,
  robust to a fraction eps of flipped labels; the form of TRL's ``label_smoothing``, and MCTS-DPO arXiv 2405.00451);
  ``loss="hinge"``: max(0, 1 - beta Delta) (SLiC-style hinge, TRL ``loss_type="hinge"``); ``loss="ipo"``: see ``ipo``.
- ``ipo`` — A General Theoretical Paradigm to Understand Learning from Human Preferences (Azar et al., arXiv
  2310.12036): (Delta - 1/(2 beta))^2, the IPO convention with beta = 1/tau_IPO (as TRL; TRL averages log-probs over
  tokens for IPO, here they are summed like DPO's — the paper defines Delta on whole-sequence log-probs).
- ``inpo`` — Iterative Nash Policy Optimization (Zhang et al., arXiv 2407.00617): h = log[pi(y_w)/pi(y_l)]
  - eta*tau log[pi_ref(y_w)/pi_ref(y_l)] - (1 - eta*tau) log[pi_t(y_w)/pi_t(y_l)], loss (h - eta/2)^2, with pi_t the
  previous iterate: a frozen snapshot of the policy refreshed every ``train.snapshot_every`` steps
  (``Batch.snapshot_logprobs``). No official code was found; the loss follows the paper's derivation (online mirror
  descent against pi_t, KL-to-reference tau, step size eta). eta*tau = 1 is IPO against pi_ref with
  beta = 1/eta; tau = 0 is online IPO with the moving reference pi_t.

Differential information (Won et al., "Differential Information Distribution: a Bayesian perspective on DPO",
arXiv 2505.23761): q(y) ∝ pi(y)/pi_ref(y); its entropy H(q) says whether preference training sharpens (low) or
smooths (high). ``did_entropy`` is exact on an enumerable space; the objectives log ``did_entropy`` as an estimate
restricted to each comparison's candidate set (q normalised over the rows of a pair: biased, in [0, log 2] for
pairs), and the sign of the chosen log-likelihood change against the reference (``chosen_logratio``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from entropo import registry
from entropo.batch import Batch
from entropo.components import Produced
from entropo.registry import register
from entropo.rollout import replay as _replay  # noqa: F401  (registers the engine 'preference_replay')

DPO_LOSSES = ("sigmoid", "hinge", "ipo")
PREFERENCE_SOURCES = ("verifier", "reward", "judge", "matrix")


# ---- pure functions (hand-checked in tests/test_prefs.py) -------------------------------------------------------------

def sequence_logprobs(logprobs: Tensor, mask: Tensor) -> Tensor:
    """[B] sum of the per-token log-probs over the loss tokens (mask > 0, weighted by the mask)."""
    return (logprobs * mask).sum(-1)


def comparisons(pair_ids: Tensor, pair_rank: Tensor) -> tuple[Tensor, Tensor]:
    """(better, worse) row indices of every ordered comparison: rows with the same ``pair_ids`` >= 0 and a lower
    ``pair_rank`` on the better side. A chosen/rejected pair gives one comparison."""
    same = (pair_ids[:, None] == pair_ids[None, :]) & (pair_ids[:, None] >= 0)
    better = pair_rank[:, None] < pair_rank[None, :]
    idx = (same & better).nonzero()
    return idx[:, 0], idx[:, 1]


def dpo_pair_loss(delta: Tensor, beta: float, loss: str = "sigmoid", label_smoothing: float = 0.0) -> Tensor:
    """Per-comparison loss from Delta = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)].

    sigmoid: -(1-eps) log sigma(beta Delta) - eps log sigma(-beta Delta); hinge: relu(1 - beta Delta);
    ipo: (Delta - 1/(2 beta))^2. Example: Delta = 1, beta = 0.5 -> sigmoid 0.474077, hinge 0.5, ipo 0.0."""
    if loss == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"dpo: loss must be one of {list(DPO_LOSSES)}, got {loss!r}")


def inpo_pair_loss(policy_ratio: Tensor, ref_ratio: Tensor, prev_ratio: Tensor, eta: float, tau: float) -> Tensor:
    """(h - eta/2)^2 with h = policy_ratio - eta*tau*ref_ratio - (1 - eta*tau)*prev_ratio, each a log-ratio
    log p(y_w) - log p(y_l). Example (arXiv 2407.00617 spec toy): 2.0, 0.5, 1.3, eta 0.5, eta*tau 0.2 -> h 0.86,
    loss 0.3721."""
    mix = eta * tau
    h = policy_ratio - mix * ref_ratio - (1 - mix) * prev_ratio
    return (h - eta / 2) ** 2


def did_distribution(logp: Tensor, ref_logp: Tensor, dim: int = -1) -> Tensor:
    """Differential information q ∝ pi / pi_ref, normalised over ``dim`` (exact on an enumerable space)."""
    return torch.softmax(logp - ref_logp, dim=dim)


def did_entropy(logp: Tensor, ref_logp: Tensor, dim: int = -1) -> Tensor:
    """H(q) in nats of the differential information q ∝ pi / pi_ref over ``dim`` (arXiv 2505.23761)."""
    log_q = torch.log_softmax(logp - ref_logp, dim=dim)
    return -(log_q.exp() * log_q).sum(dim)


# ---- objectives ------------------------------------------------------------------------------------------------------

def _pairs_of(micro_batch: Batch | None, name: str) -> tuple[Tensor, Tensor]:
    if micro_batch is None or micro_batch.pair_ids is None or micro_batch.pair_rank is None:
        raise ValueError(f"objective {name!r} needs linked preference pairs (Batch.pair_ids / pair_rank): add the "
                         f"producer 'preference_pairs' to the recipe (producers: [{{name: preference_pairs}}])")
    return comparisons(micro_batch.pair_ids, micro_batch.pair_rank)


def _frozen(micro_batch: Batch, field: str, name: str, fix: str) -> Tensor:
    value = getattr(micro_batch, field)
    if value is None:
        raise ValueError(f"objective {name!r} needs Batch.{field} ({fix})")
    return value


def _pair_metrics(seq: Tensor, ref_seq: Tensor, old_seq: Tensor, w: Tensor, l_: Tensor, micro_batch: Batch
                  ) -> dict[str, Tensor]:
    """Margins, accuracy, chosen/rejected log-likelihood change vs the reference and vs the pre-update policy, and
    the candidate-set DID entropy (q normalised over each pair's rows)."""
    seq, ref_seq, old_seq = seq.detach(), ref_seq.detach(), old_seq.detach()
    r = seq - ref_seq
    delta = r[w] - r[l_]
    out: dict[str, Tensor] = {
        "pref_margin": delta.mean(),
        "pref_accuracy": (delta > 0).float().mean(),
        "chosen_logratio": r[w].mean(),  # > 0: the chosen log-likelihood rose since the reference
        "rejected_logratio": r[l_].mean(),
        "chosen_logp_change": (seq[w] - old_seq[w]).mean(),  # within this step's update (0 on its first pass)
        "pairs": torch.tensor(float(w.numel())),
    }
    units = [u for u in micro_batch.units() if len(u) > 1]
    if units:
        out["did_entropy"] = torch.stack([did_entropy(seq[u], ref_seq[u]) for u in units]).mean()
    return out


def _per_row(loss: Tensor, rows: Tensor, size: int) -> Tensor:
    """Each comparison's loss on its better row: a [B] per-row loss the trainer sums over the mini-batch."""
    return torch.zeros(size, dtype=loss.dtype, device=loss.device).index_add(0, rows, loss)


PAIR_SMOOTHING = "label_smoothing"  # Batch.extras key of a per-pair (per-row) DPO label smoothing


def pair_label_smoothing(micro_batch: Batch, better: Tensor, default: float) -> Tensor | float:
    """The label smoothing of each comparison: ``micro_batch.extras["label_smoothing"]`` on its better row when the
    batch carries one (per-pair confidence, e.g. MCTS-DPO's visit counts), else the objective's scalar ``default``."""
    per_row = micro_batch.extras.get(PAIR_SMOOTHING) if micro_batch.extras else None  # [B] or [B, L]
    if per_row is None:
        return default
    eps = per_row[better].float()
    if eps.dim() > 1:  # an engine's [B, L] extras tensor, constant along the row: its first column
        eps = eps.reshape(eps.shape[0], -1)[:, 0]
    if eps.numel() and (bool((eps < 0).any()) or bool((eps > 0.5).any())):
        raise ValueError(f"dpo: Batch.extras[{PAIR_SMOOTHING!r}] must be in [0, 0.5] per pair, got values in "
                         f"[{float(eps.min()):.3g}, {float(eps.max()):.3g}]; fix the pair builder's smoothing")
    return eps


@register("objective", "dpo", paper="DPO, Direct Preference Optimization (Rafailov et al.), arXiv 2305.18290; "
          "IPO arXiv 2310.12036; cDPO label smoothing", level="pair", needs_ref=True)
def dpo(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, micro_batch: Batch | None = None,
        beta: float = 0.1, loss: str = "sigmoid", label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise DPO family over the micro-batch's linked pairs; returns a per-row loss [B] (``level="pair"``).

    ``loss``: ``sigmoid`` (DPO, arXiv 2305.18290), ``hinge``, ``ipo`` (arXiv 2310.12036); ``label_smoothing`` eps in
    [0, 0.5) is conservative DPO. A per-pair smoothing overrides it: ``Batch.extras["label_smoothing"]`` [B], read on
    each comparison's better row, each value in [0, 0.5] (MCTS-DPO's visit-count confidence, arXiv 2405.00451, caps
    eps at 0.5). ``advantages`` are ignored: the preference is the pair's order."""
    if loss not in DPO_LOSSES:
        raise ValueError(f"dpo: loss must be one of {list(DPO_LOSSES)}, got {loss!r}")
    if beta <= 0:
        raise ValueError(f"dpo: beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    w, l_ = _pairs_of(micro_batch, "dpo")
    ref = _frozen(micro_batch, "ref_logprobs", "dpo", "the trainer computes them when the objective is registered "
                  "with needs_ref=True")
    seq, ref_seq = sequence_logprobs(logprobs, mask), sequence_logprobs(ref, mask)
    r = seq - ref_seq
    pair_loss = dpo_pair_loss(r[w] - r[l_], beta, loss, pair_label_smoothing(micro_batch, w, label_smoothing))
    metrics = _pair_metrics(seq, ref_seq, sequence_logprobs(old_logprobs, mask), w, l_, micro_batch)
    metrics["pair_loss"] = pair_loss.detach().mean() if pair_loss.numel() else torch.tensor(0.0)
    return _per_row(pair_loss, w, logprobs.shape[0]), metrics


@register("objective", "ipo", paper="IPO, A General Theoretical Paradigm to Understand Learning from Human "
          "Preferences (Azar et al.), arXiv 2310.12036", level="pair", needs_ref=True)
def ipo(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, micro_batch: Batch | None = None,
        beta: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO: (Delta - 1/(2 beta))^2 per comparison (``dpo`` with ``loss="ipo"``)."""
    return dpo(logprobs, old_logprobs, advantages, mask, micro_batch=micro_batch, beta=beta, loss="ipo")


@register("objective", "inpo", paper="INPO, Iterative Nash Policy Optimization (Zhang et al.), arXiv 2407.00617",
          level="pair", needs_ref=True, needs_snapshot=True)
def inpo(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, micro_batch: Batch | None = None,
         eta: float = 0.5, tau: float = 0.4) -> tuple[Tensor, dict[str, Tensor]]:
    """INPO's no-regret Nash objective against the previous iterate pi_t (``Batch.snapshot_logprobs``, refreshed
    every ``train.snapshot_every`` steps): (h - eta/2)^2 per comparison, h as in ``inpo_pair_loss``.

    Convention pinned: eta is the mirror-descent step (1/eta plays IPO's beta: with eta*tau = 1 the loss is IPO
    against pi_ref at beta = 1/eta); tau the KL-to-reference weight. Requires 0 <= eta*tau <= 1."""
    if eta <= 0 or tau < 0 or eta * tau > 1:
        raise ValueError(f"inpo: need eta > 0, tau >= 0 and eta*tau <= 1 (got eta={eta}, tau={tau})")
    w, l_ = _pairs_of(micro_batch, "inpo")
    ref = _frozen(micro_batch, "ref_logprobs", "inpo", "needs_ref=True")
    prev = _frozen(micro_batch, "snapshot_logprobs", "inpo", "set train.snapshot_every > 0")
    seq, ref_seq, prev_seq = (sequence_logprobs(x, mask) for x in (logprobs, ref, prev))
    pair_loss = inpo_pair_loss(seq[w] - seq[l_], ref_seq[w] - ref_seq[l_], prev_seq[w] - prev_seq[l_], eta, tau)
    metrics = _pair_metrics(seq, ref_seq, sequence_logprobs(old_logprobs, mask), w, l_, micro_batch)
    metrics["pair_loss"] = pair_loss.detach().mean() if pair_loss.numel() else torch.tensor(0.0)
    metrics["prev_margin"] = ((seq - prev_seq)[w] - (seq - prev_seq)[l_]).detach().mean()
    return _per_row(pair_loss, w, logprobs.shape[0]), metrics


# ---- preference sources and the pair builder -------------------------------------------------------------------------

def _resolve(fn: Any, what: str) -> Any:
    if callable(fn):
        return fn
    if not isinstance(fn, str) or ":" not in fn:
        raise ValueError(f"preference_pairs: {what} must be an import path 'module:function', got {fn!r}")
    module, _, attr = fn.partition(":")
    obj = registry.import_module(module, f"preference_pairs.{what}")
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise ValueError(f"preference_pairs: {what} {fn!r}: module {module!r} has no attribute {attr!r}") from None


def matrix_judge(matrix: list[list[float]], candidates: list[str]):
    """A scripted preference oracle for exact toys: P(a ≻ b) = matrix[i][j], i, j the indices of the stripped
    completions in ``candidates`` (None when either is not a candidate)."""
    index = {c.strip(): i for i, c in enumerate(candidates)}
    if any(len(row) != len(candidates) for row in matrix) or len(matrix) != len(candidates):
        raise ValueError(f"preference_pairs: matrix must be {len(candidates)}x{len(candidates)} (one row/column per "
                         f"candidate)")

    def judge(prompt: Any, a: str, b: str) -> float | None:
        i, j = index.get(a.strip()), index.get(b.strip())
        return None if i is None or j is None else float(matrix[i][j])

    return judge


def _ranked_pairs(rows: list[int], better_than, k: int) -> list[tuple[int, int]]:
    """Up to k disjoint (winner, loser) pairs from consecutive rows (0,1), (2,3), ... judged by ``better_than``."""
    out = []
    for a, b in zip(rows[0::2], rows[1::2]):
        if len(out) >= k:
            break
        verdict = better_than(a, b)
        if verdict is not None:
            out.append(verdict)
    return out


@register("producer", "preference_pairs", paper="online/iterative DPO pair construction (DPO arXiv 2305.18290; "
          "INPO arXiv 2407.00617)")
def preference_pairs(batch: Batch, ctx: Any, source: str = "verifier", pairs_per_group: int = 1,
                     min_reward_gap: float = 1e-6, judge: Any = None, matrix: list[list[float]] | None = None,
                     candidates: list[str] | None = None) -> Produced:
    """Turn each group's samples into linked chosen/rejected pairs; every original row is displaced (the step then
    trains on the pairs only, a row may serve in several pairs).

    ``source``: ``verifier`` — correct ≻ wrong (``Batch.correct``: the environment's or the task verifier's verdict);
    the i-th correct row is paired with the i-th wrong row. ``reward`` — higher reward ≻ lower (the recipe's reward
    functions, which may be a reward model given by import path): best with worst, second best with second worst,
    while the gap exceeds ``min_reward_gap``. ``judge`` — ``judge(prompt, a, b) -> P(a ≻ b)`` given by import path
    ``module:function``, asked on consecutive rows; 0.5 or None skips the pair. ``matrix`` — a scripted preference
    matrix over ``candidates`` (completion strings; exact toys). Unfinished rows are never paired.
    Metrics: ``pairs``, ``groups_without_pair_frac``."""
    if source not in PREFERENCE_SOURCES:
        raise ValueError(f"preference_pairs: source must be one of {list(PREFERENCE_SOURCES)}, got {source!r}")
    if pairs_per_group < 1:
        raise ValueError(f"preference_pairs: pairs_per_group must be >= 1, got {pairs_per_group}")
    oracle = None
    if source == "judge":
        if judge is None:
            raise ValueError("preference_pairs: source=judge needs judge='module:function' (prompt, a, b) -> P(a>b)")
        oracle = _resolve(judge, "judge")
    elif source == "matrix":
        if matrix is None or candidates is None:
            raise ValueError("preference_pairs: source=matrix needs matrix (list of rows) and candidates (strings)")
        oracle = matrix_judge(matrix, candidates)
    texts = batch.info.get("completion", [""] * batch.size)
    samples = batch.info.get("sample", [None] * batch.size)
    finished = batch.finished if batch.finished is not None else torch.ones(batch.size, dtype=torch.bool)
    groups: dict[int, list[int]] = {}
    for r, g in enumerate(batch.group_ids.tolist()):
        if bool(finished[r]):
            groups.setdefault(g, []).append(r)

    def judged(a: int, b: int):
        prompt = samples[a].example.prompt if samples[a] is not None else None
        p = oracle(prompt, texts[a], texts[b])
        if p is None or p == 0.5:
            return None
        return (a, b) if p > 0.5 else (b, a)

    chosen: list[tuple[int, int]] = []
    empty = 0
    for rows in groups.values():
        if source == "verifier":
            good = [r for r in rows if bool(batch.correct[r])]
            bad = [r for r in rows if not bool(batch.correct[r])]
            pairs = list(zip(good, bad))[:pairs_per_group]
        elif source == "reward":
            order = sorted(rows, key=lambda r: -float(batch.rewards[r]))
            pairs = [(order[i], order[-1 - i]) for i in range(min(pairs_per_group, len(order) // 2))
                     if float(batch.rewards[order[i]] - batch.rewards[order[-1 - i]]) > min_reward_gap]
        else:
            pairs = _ranked_pairs(rows, judged, pairs_per_group)
        empty += not pairs
        chosen += pairs
    metrics = {"pairs": float(len(chosen)), "groups_without_pair_frac": empty / max(len(groups), 1)}
    displaced = list(range(batch.size))
    if not chosen:
        return Produced(rows=None, displaced=displaced, metrics=metrics)
    rows = batch.select([r for pair in chosen for r in pair])
    device = batch.input_ids.device
    rows.pair_ids = torch.arange(len(chosen), device=device).repeat_interleave(2)
    rows.pair_rank = torch.tensor([0, 1], device=device).repeat(len(chosen))
    return Produced(rows=rows, displaced=displaced, metrics=metrics)


def bt_probability(score_a: float, score_b: float) -> float:
    """Bradley-Terry P(a ≻ b) = sigma(score_a - score_b) (for judges built from scalar scores)."""
    return 1.0 / (1.0 + math.exp(score_b - score_a))
