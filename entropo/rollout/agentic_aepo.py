"""Entropy-balanced rollout of Agentic AEPO (registry: ``("engine", "agentic_aepo")``).

Paper: "Agentic Entropy-Balanced Policy Optimization" (AEPO), arXiv 2510.14545 — not the entropy-target AEPO of
arXiv 2510.08141 (``entropo.algorithms.aepo``). The update half (stop-gradient clipping, entropy-aware advantage) is
``entropo.algorithms.agentic_aepo``.

A training rollout of ``n`` trajectories per question (the budget ``k = n``, equal to plain GRPO sampling):

1. Entropy pre-monitoring (``dynamic=True``): one pre-rollout episode per question. ``H_root`` is the entropy of its
   first action, ``H_tool`` the mean entropy over its actions (the first one included, as the official code does;
   it falls back to ``H_root`` when the episode made no tool call). The question gets
   ``m = floor(k · sigmoid(0.5 · (H_root − H_tool))) + 1`` global samples, clipped to [1, k]: a question whose tool
   steps are more uncertain than its start gets fewer global samples and more budget for branching.
   ``dynamic=False`` uses ``initial_rollouts`` global samples instead (the official 14B script's setting).
2. Global samples play their episodes; after every round, each trajectory still running after a tool call may
   branch: ``p = (U(0,1) + w · (H_now − H_init)) · max(0, 1 − 0.05 · l_c)`` clamped to [0, 1], a branch iff
   ``p >= P_branch``; ``H_now`` is the entropy of the action just taken, ``H_init`` that of the trajectory's first
   action, ``l_c`` the number of consecutive rounds in which this question's tree already grew (reset to 0 by a
   round without a branch): the penalty on consecutive high-entropy branching. At most ``beam_size − 1`` branches
   per trajectory per round and never beyond the budget. A branch is ``_Episode.fork``: the parent's prompt and
   trajectory ids are copied as ids (never decoded and re-encoded) with their log-probs and entropies, the
   environment is copied (``env.fork()`` when it has one, else a deep copy of an in-process ``Environment``; a
   proxy to an out-of-process environment without ``fork()`` is not branched), and both continue sampling at the
   next turn. Branches belong to their question's group (same ``prompt_index``).
3. A question whose trajectories have all ended while budget is left gets one new global sample per pass (the
   official code adds one per round once no trajectory of the question is active) until it has exactly ``k``.

Segment entropy (both steps): the sum of the token entropies over the first ``entropy_tokens`` (20) tokens of an
action, divided by ln(V), V the tokenizer's vocabulary size — the official code's normalisation; it computes the
token entropies from vLLM's top-10 log-probs (−Σ p log p over those 10), here they are the full-distribution
entropies the engine records while sampling (after temperature / top-p).

Checked against the official code (``AEPO/verl_aepo_entropy/verl/workers/rollout/vllm_rollout/
vllm_rollout_with_tools.py`` of the ARPO repository, ``_calculate_initial_rollouts_dynamical`` and the branching
loop of ``generate_sequences``): the budget formula, the branch probability, the 0.05 penalty, beam_size − 1 and the
one-new-sample fill are as there. Differences, deliberate: one pre-rollout gives both ``H_root`` and ``H_tool``
(the official code spends a separate 50-token generation on ``H_root``); a branch inherits its parent's
``H_init`` (the official code records a branch's own first post-fork segment as its initial entropy, and never
clears that record between batches); new samples are added between passes rather than mid-round; the consecutive
counter is updated every round (officially only in rounds where some question grew).

Budget accounting (``last_stats`` after every ``rollout``, and ``pop_stats()`` for the ``agentic_aepo_stats``
producer that logs them): ``trajectories`` (= k per question), ``trained_tokens`` (policy tokens of the returned
rows: what plain sampling of the same rows would generate), ``copied_tokens`` (policy tokens branches inherited),
``sampled_tokens`` (tokens actually sampled: trained − copied + pre-monitor), ``premonitor_tokens``,
``global_samples`` / ``branches`` (rows of each kind), ``h_root`` / ``h_tool`` (means over questions).
The pending statistics are kept as sums (``pop_stat_sums`` / ``add_stat_sums``), so the trainer can carry each
rollout shard's sums with its rows and every process logs them over the global batch of a data-parallel run.
Evaluation (``generate``) is plain independent sampling, as for ``hf``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from entropo.envs.base import EnvFactory, Environment, single_turn_factory
from entropo.registry import register
from entropo.rollout.episodes import EpisodeLimits, _Episode, assemble, run_episodes
from entropo.rollout.hf import HFEngine, check_sampling_args, default_generator
from entropo.types import Example, RolloutOutput

log = logging.getLogger(__name__)

PAPER = "Agentic Entropy-Balanced Policy Optimization (AEPO), arXiv 2510.14545"
CONSECUTIVE_PENALTY = 0.05  # hard-coded in the official code
ROOT_SIGMOID_SCALE = 0.5  # hard-coded in the official code


# ---- the pure rules (hand-checkable) ---------------------------------------------------------------------------------

def segment_entropy(token_entropies: Tensor, vocab_size: int, tokens: int = 20, reduce: str = "sum") -> float:
    """Sum (``reduce="sum"``, the official code's) or mean (``"mean"``) of the first ``tokens`` token entropies of one
    action, divided by ln(vocab_size); 0 for an empty action. The sum grows with the action's length up to
    ``tokens``; the mean does not. Example: entropies [0.5, 1.0, 1.5], V = e^2, tokens = 2 -> sum (0.5 + 1.0) / 2 =
    0.75, mean 0.375."""
    if vocab_size < 2:
        raise ValueError(f"agentic_aepo: vocab_size must be >= 2, got {vocab_size}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"agentic_aepo: segment_reduce must be 'sum' or 'mean', got {reduce!r}")
    head = token_entropies[:tokens].detach().float()
    if head.numel() == 0:
        return 0.0
    total = float(head.sum() if reduce == "sum" else head.mean())
    return total / math.log(vocab_size)


def global_sample_count(budget: int, h_root: float, h_tool: float) -> int:
    """Global samples m = floor(k · sigmoid(0.5 · (H_root − H_tool))) + 1, clipped to [1, k].
    Example: k = 12, H_root = 1, H_tool = 2 -> sigmoid(−0.5) = 0.37754 -> floor(4.53) + 1 = 5."""
    if budget < 1:
        raise ValueError(f"agentic_aepo: the budget (rollout.n) must be >= 1, got {budget}")
    sigmoid = 1.0 / (1.0 + math.exp(-ROOT_SIGMOID_SCALE * (h_root - h_tool)))
    return max(1, min(budget, int(budget * sigmoid) + 1))


def branch_probability(u: float, h_now: float, h_init: float, entropy_weight: float, consecutive: int) -> float:
    """p = (U + w · (H_now − H_init)) · max(0, 1 − 0.05 · l_c), clamped to [0, 1].
    Example: U = 0.4, w = 0.2, H_now − H_init = 1, l_c = 2 -> 0.6 · 0.9 = 0.54."""
    p = (u + entropy_weight * (h_now - h_init)) * max(0.0, 1.0 - CONSECUTIVE_PENALTY * consecutive)
    return min(1.0, max(0.0, p))


def action_entropies(ep: _Episode, turn: int) -> Tensor:
    """Token entropies of the episode's action at ``turn`` (its policy tokens of that turn), from the records."""
    if not ep.ids:
        return torch.zeros(0)
    entropies = torch.cat(ep.entropies)
    keep = torch.tensor([p and t == turn for p, t in zip(ep.policy, ep.turn_of)], dtype=torch.bool)
    return entropies[keep]


def fork_environment(env: Any) -> Any:
    """An environment in the same state as ``env``: ``env.fork()`` when the class defines it, else a deep copy of an
    in-process ``Environment``. Anything else (a proxy to an environment in another process, whose copy would share
    the remote state) must define ``fork()``; without one this raises and the planner skips that branch."""
    if env is None:
        return None
    fork = getattr(env, "fork", None)
    if callable(fork):
        return fork()
    if isinstance(env, Environment):
        return copy.deepcopy(env)
    raise TypeError(f"{type(env).__name__} is not an in-process Environment and has no fork(): a copy could share "
                    f"its state with the parent's; define fork() to branch its episodes")


class BranchPlanner:
    """The ``on_round`` driver of ``run_episodes``: decides after every round which trajectories branch.

    ``groups[i]`` is the question of ``episodes[i]`` (rows first, then branches in creation order); ``counts`` the
    trajectories per question so far (shared with the engine, which adds new global samples between passes).
    ``copied[i]`` is the number of policy tokens episode ``i`` inherited from its parent at the fork (0 for rows)."""

    def __init__(self, groups: list[int], counts: dict[int, int], budget: int, *, vocab_size: int,
                 generator: torch.Generator, beam_size: int = 2, branch_threshold: float = 0.5,
                 entropy_weight: float = 0.2, entropy_tokens: int = 20, segment_reduce: str = "sum",
                 consecutive: dict[int, int] | None = None):
        self.groups, self.counts, self.budget = list(groups), counts, int(budget)
        self.copied = [0] * len(self.groups)
        self.is_branch = [False] * len(self.groups)
        self.parents: list[int | None] = [None] * len(self.groups)  # index of the episode a branch was forked from
        self.vocab_size, self.generator = int(vocab_size), generator
        self.beam_size, self.branch_threshold = int(beam_size), float(branch_threshold)
        self.entropy_weight, self.entropy_tokens = float(entropy_weight), int(entropy_tokens)
        self.segment_reduce = segment_reduce
        self.consecutive: dict[int, int] = consecutive if consecutive is not None else {}
        self.decisions: list[dict[str, float]] = []  # every draw: question, turn, p, branched (for tests / logs)

    def _entropy(self, ep: _Episode, turn: int) -> float:
        return segment_entropy(action_entropies(ep, turn), self.vocab_size, self.entropy_tokens, self.segment_reduce)

    def __call__(self, episodes: list[_Episode], turn: int) -> list[_Episode]:
        new: list[_Episode] = []
        new_groups: list[int] = []
        new_copied: list[int] = []
        new_parents: list[int] = []
        grew: set[int] = set()
        for question in dict.fromkeys(self.groups):
            remaining = self.budget - self.counts.get(question, 0)
            consecutive = self.consecutive.get(question, 0)
            created = 0
            sources = [i for i, ep in enumerate(episodes)
                       if self.groups[i] == question and ep.running and turn in ep.info.tool_call_turns]
            for i in sources:
                per_source = min(self.beam_size - 1, remaining - created)
                if per_source <= 0:
                    break
                ep = episodes[i]
                h_now, h_init = self._entropy(ep, turn), self._entropy(ep, 0)
                for _ in range(per_source):
                    u = float(torch.rand((), generator=self.generator))
                    p = branch_probability(u, h_now, h_init, self.entropy_weight, consecutive)
                    branched = p >= self.branch_threshold
                    self.decisions.append({"question": question, "turn": turn, "p": p, "branched": float(branched)})
                    if not branched:
                        continue
                    try:
                        env = fork_environment(ep.env)
                    except Exception as e:  # an environment that cannot be copied: no branch, the run goes on
                        log.warning("agentic_aepo: cannot fork environment %s: %s", type(ep.env).__name__, e)
                        continue
                    new.append(ep.fork(env))
                    new_groups.append(question)
                    new_copied.append(sum(ep.policy))
                    new_parents.append(i)
                    created += 1
            if created:
                grew.add(question)
                self.counts[question] = self.counts.get(question, 0) + created
        for question in dict.fromkeys(self.groups):
            self.consecutive[question] = self.consecutive.get(question, 0) + 1 if question in grew else 0
        self.groups += new_groups
        self.copied += new_copied
        self.is_branch += [True] * len(new)
        self.parents += new_parents
        return new


# ---- the engine ----------------------------------------------------------------------------------------------------

@register("engine", "agentic_aepo", paper=PAPER)
class AgenticAEPOEngine(HFEngine):
    """``hf`` sampling with Agentic AEPO's entropy-balanced training rollout (see the module docstring).

    Params (``rollout.engine_params``, besides ``hf``'s): ``dynamic`` (True: pre-monitor entropies to split the
    budget), ``initial_rollouts`` (global samples per question when ``dynamic`` is False; default half the budget),
    ``beam_size`` (2: at most 1 branch per trajectory per round), ``branch_threshold`` (P_branch, 0.5),
    ``entropy_weight`` (w, 0.2 as the 14B script; the official yaml default is 0.5), ``entropy_tokens`` (20),
    ``segment_reduce`` ("sum": the official code's sum over those tokens; "mean" removes the action-length effect).
    """

    def __init__(self, model, tokenizer, *, dynamic: bool = True, initial_rollouts: int | None = None,
                 beam_size: int = 2, branch_threshold: float = 0.5, entropy_weight: float = 0.2,
                 entropy_tokens: int = 20, segment_reduce: str = "sum", **hf_params: Any):
        super().__init__(model, tokenizer, **hf_params)
        if beam_size < 1:
            raise ValueError(f"agentic_aepo: beam_size must be >= 1 (1 = no branching), got {beam_size}")
        if initial_rollouts is not None and initial_rollouts < 1:
            raise ValueError(f"agentic_aepo: initial_rollouts must be >= 1, got {initial_rollouts}")
        if entropy_tokens < 1:
            raise ValueError(f"agentic_aepo: entropy_tokens must be >= 1, got {entropy_tokens}")
        self.dynamic, self.initial_rollouts = bool(dynamic), initial_rollouts
        self.beam_size, self.branch_threshold = int(beam_size), float(branch_threshold)
        self.entropy_weight, self.entropy_tokens = float(entropy_weight), int(entropy_tokens)
        segment_entropy(torch.zeros(1), 2, 1, segment_reduce)  # validate early
        self.segment_reduce = segment_reduce
        self.vocab_size = len(tokenizer)
        self.last_stats: dict[str, float] = {}
        self.last_planner: BranchPlanner | None = None
        self.last_parents: list[int | None] = []  # per returned row: the row it branched from (None: global sample)
        self.last_split: list[int] = []  # global samples per question planned by the pre-monitoring
        self._pending: dict[str, float] = {}

    def pop_stats(self) -> dict[str, float]:
        """Budget statistics over the rollouts since the last call (the ``agentic_aepo_stats`` producer): counts
        summed, ``h_root`` / ``h_tool`` / ``global_samples_per_question`` averaged over the pre-monitored questions."""
        sums = self.pop_stat_sums()
        monitored = sums.pop("monitored_questions", 0.0)
        out = {k: v for k, v in sums.items() if not k.endswith("_sum")}
        if monitored:
            for k in ("h_root", "h_tool", "global_samples_per_question"):
                out[k] = sums[f"{k}_sum"] / monitored
        return out

    def pop_stat_sums(self) -> dict[str, float]:
        """The pending statistics as sums (means kept as ``<key>_sum`` with ``monitored_questions``), cleared."""
        out, self._pending = self._pending, {}
        return out

    def add_stat_sums(self, sums: dict[str, float]) -> None:
        """Add another rollout's (e.g. another process's shard's) ``pop_stat_sums`` to the pending statistics."""
        self._pending = {k: self._pending.get(k, 0.0) + sums.get(k, 0.0) for k in {*self._pending, *sums}}

    @torch.no_grad()
    def rollout(self, examples: Sequence[Any], n: int, *, temperature: float = 1.0, top_p: float = 1.0,
                max_new_tokens: int = 64, stop: Sequence[str] = (), generator: torch.Generator | None = None,
                environment: EnvFactory | None = None, env_seed: int = 0,
                limits: EpisodeLimits | None = None) -> RolloutOutput:
        """``n`` trajectories per example: global samples plus entropy-guided branches (exactly ``n`` rows each)."""
        stop = check_sampling_args(n, temperature, top_p, max_new_tokens, stop)
        device = next(self.model.parameters()).device
        generator = generator if generator is not None else default_generator(device)
        examples = [p if isinstance(p, Example) else Example(prompt=p) for p in examples]
        environment = environment if environment is not None else single_turn_factory()
        limits = replace(limits or EpisodeLimits(), max_new_tokens=max_new_tokens)
        self._check_prompt_lengths(examples, limits)
        sample_turn = self.turn_sampler(temperature, top_p, generator, device)
        seeds = iter(range(env_seed, env_seed + 1_000_000_000))

        def play(questions: list[int], on_round=None) -> list[_Episode]:
            return run_episodes([environment() for _ in questions], [examples[q] for q in questions],
                                [next(seeds) for _ in questions], self.chat, sample_turn, limits, stop=stop,
                                workers=self.env_workers, on_round=on_round)

        # 1. entropy pre-monitoring: the budget split per question
        questions = list(range(len(examples)))
        h_root = h_tool = [float("nan")] * len(examples)
        premonitor_tokens = 0
        if self.dynamic:
            pre = play(questions)
            h_root, h_tool = [], []
            for ep in pre:
                turns = sorted({t for t, p in zip(ep.turn_of, ep.policy) if p})
                segs = [segment_entropy(action_entropies(ep, t), self.vocab_size, self.entropy_tokens,
                                        self.segment_reduce) for t in turns]
                h_root.append(segs[0] if segs else 0.0)
                h_tool.append(sum(segs) / len(segs) if segs else h_root[-1])
                premonitor_tokens += sum(ep.policy)
            globals_per_question = [global_sample_count(n, r, t) for r, t in zip(h_root, h_tool)]
        else:
            start = self.initial_rollouts if self.initial_rollouts is not None else max(1, n // 2)
            globals_per_question = [min(n, start)] * len(examples)

        # 2./3. global samples with branching, then one new global sample per unfinished question per pass
        counts: dict[int, int] = {}
        consecutive: dict[int, int] = {}
        episodes: list[_Episode] = []
        groups: list[int] = []
        copied: list[int] = []
        is_branch: list[bool] = []
        parents: list[int | None] = []
        rows = [q for q in questions for _ in range(globals_per_question[q])]
        passes = 0
        while rows:
            passes += 1
            for q in rows:
                counts[q] = counts.get(q, 0) + 1
            planner = BranchPlanner(rows, counts, n, vocab_size=self.vocab_size, generator=generator,
                                    beam_size=self.beam_size, branch_threshold=self.branch_threshold,
                                    entropy_weight=self.entropy_weight, entropy_tokens=self.entropy_tokens,
                                    segment_reduce=self.segment_reduce, consecutive=consecutive)
            offset = len(episodes)
            episodes += play(rows, on_round=planner)
            parents += [None if p is None else p + offset for p in planner.parents]
            groups += planner.groups
            copied += planner.copied
            is_branch += planner.is_branch
            self.last_planner = planner
            rows = [q for q in questions if counts[q] < n]

        order = sorted(range(len(episodes)), key=lambda i: (groups[i], i))  # prompt-major, creation order within
        out = assemble([episodes[i] for i in order], [groups[i] for i in order], self.pad_token_id,
                       lambda ids: self.tokenizer.batch_decode(ids, skip_special_tokens=True))
        out.payloads = list(examples)
        position = {i: r for r, i in enumerate(order)}
        self.last_parents = [None if parents[i] is None else position[parents[i]] for i in order]
        self.last_split = list(globals_per_question)
        trained = sum(sum(ep.policy) for ep in episodes)
        stats = {
            "trajectories": float(len(episodes)),
            "global_samples": float(sum(not b for b in is_branch)),
            "branches": float(sum(is_branch)),
            "passes": float(passes),
            "trained_tokens": float(trained),
            "copied_tokens": float(sum(copied)),
            "premonitor_tokens": float(premonitor_tokens),
            "sampled_tokens": float(trained - sum(copied) + premonitor_tokens),
        }
        sums = dict(stats)
        if self.dynamic:
            stats["h_root"] = sum(h_root) / len(h_root)
            stats["h_tool"] = sum(h_tool) / len(h_tool)
            stats["global_samples_per_question"] = sum(globals_per_question) / len(globals_per_question)
            sums.update(monitored_questions=float(len(h_root)), h_root_sum=float(sum(h_root)),
                        h_tool_sum=float(sum(h_tool)), global_samples_per_question_sum=float(sum(globals_per_question)))
        self.add_stat_sums(sums)
        self.last_stats = stats
        return out
