"""Execution-tree decoding with a vote on execution results (the inference method of ReEx-SQL: Reasoning with
Execution-Aware Reinforcement Learning for Text-to-SQL, arXiv 2505.12768), and the single-path baselines it is
compared with at an equal token budget.

``tree_vote_decode``: every episode starts as one node; at each level every live node is expanded into ``branches``
children, each sampling one more turn. A child whose turn ran an intermediate query successfully
(``info["branch"] == "ok"``) is a new node; one whose query failed (``"error"``) is pruned — unless all its siblings
failed too, then the first one is kept so the model can recover from the error message; a child that answered
(``"final"``) is a leaf; a malformed or cut turn is dropped. At most ``max_frontier`` nodes per example are expanded
per level. The answer is the leaf whose execution result (``info["vote_key"]``) is most common among the leaves
(ties: the earliest leaf); leaves whose final query failed do not vote. The paper's exact tree rule (branch
factor, depth, pruning details) was not recovered; these choices are ours.

Built from outside the episode loop: each level is one ``run_episodes`` call whose turn sampler *replays* the
already-sampled turns of a node (the exact ids sampled at the parent level, keyed by the context they were sampled
in) and samples only the new turn, so the environment sees and answers the same history, token in and token out.
Replayed turns are not counted as tokens; ``tokens`` is the number of policy tokens sampled for the whole tree.

Environments taking part report ``branch`` and ``vote_key`` in their step info (``text_to_sql`` does).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from entropo.envs.base import EnvFactory
from entropo.rollout.episodes import EpisodeLimits, run_episodes
from entropo.types import Example


@dataclass
class VoteResult:
    """One example's decoded answer: the chosen final turn, its verdict, the vote and the cost."""

    answer: str  # the chosen final turn ("" when no leaf)
    correct: bool  # the environment's verdict on the chosen leaf
    tokens: int  # policy tokens sampled for this example (all branches / paths)
    leaves: int  # answers produced
    votes: dict[str, int] = field(default_factory=dict)  # vote key -> count (failed finals excluded)
    pruned: int = 0  # branches dropped because their intermediate query failed


def vote(leaves: Sequence[tuple[str, bool, str]]) -> tuple[int, dict[str, int]]:
    """Index of the chosen leaf among ``(vote_key, correct, answer)`` leaves and the vote counts.

    The most common non-empty key wins (ties: the key whose first leaf comes first); with no valid key the first
    leaf is chosen; with no leaf at all, -1."""
    if not leaves:
        return -1, {}
    counts = Counter(key for key, _, _ in leaves if key)
    if not counts:
        return 0, {}
    best = max(counts.values())
    for i, (key, _, _) in enumerate(leaves):
        if key and counts[key] == best:
            return i, dict(counts)
    return 0, dict(counts)  # unreachable


def engine_turn_sampler(engine, temperature: float, top_p: float, generator: torch.Generator):
    """A ``run_episodes`` turn sampler drawing from an ``HFEngine`` (its micro-batched decoder)."""
    return engine.turn_sampler(temperature, top_p, generator)


def replaying(sample_turn, row_turns: list[list[list[int]]]):
    """A turn sampler for rows that first replay recorded turns: on call t, row r returns ``row_turns[r][t]`` when it
    has one and samples otherwise. Replayed turns get the same observations as when they were sampled (the
    environment answers the same action the same way), so every row is still running while it replays."""
    calls = [0]

    def sampler(contexts: list[list[int]], budget: int, stops: list[str]):
        t = calls[0]
        calls[0] += 1
        replay = [t < len(turns) for turns in row_turns]
        if any(replay):
            if len(contexts) != len(row_turns):
                raise RuntimeError("tree decoding: an episode ended while replaying its recorded turns; the "
                                   "environment must answer a replayed action as it did the first time")
        else:
            return sample_turn(contexts, budget, stops)
        todo = [i for i, r in enumerate(replay) if not r]
        fresh = dict(zip(todo, sample_turn([contexts[i] for i in todo], budget, stops))) if todo else {}
        out = []
        for i in range(len(contexts)):
            if i in fresh:
                out.append(fresh[i])
            else:
                ids = row_turns[i][t]
                out.append((list(ids), torch.zeros(len(ids)), torch.zeros(len(ids)), "stop"))
        return out

    return sampler


def turn_ids(ep, turn: int) -> list[int]:
    """The sampled ids of one turn of an episode."""
    return [i for i, p, t in zip(ep.ids, ep.policy, ep.turn_of) if p and t == turn]


def tree_vote_decode(engine, examples: Sequence[Example], environment: EnvFactory, *, branches: int = 3,
                     max_depth: int | None = None, max_frontier: int | None = None, temperature: float = 1.0,
                     top_p: float = 1.0, limits: EpisodeLimits | None = None,
                     generator: torch.Generator | None = None, env_seed: int = 0,
                     sample_turn=None) -> list[VoteResult]:
    """Tree decoding with pruning of failed intermediate queries and an execution-result vote (module docstring).

    ``max_depth``: turns per path (default: ``limits.max_turns`` or the environment's ``max_turns``);
    ``max_frontier``: nodes per example expanded per level (default ``branches``); ``sample_turn``: a
    ``run_episodes`` turn sampler to use instead of the engine's own decoder (the engine then only provides
    ``chat`` and ``env_workers``)."""
    if branches < 1:
        raise ValueError(f"tree_vote_decode: branches must be >= 1, got {branches}")
    limits = limits or EpisodeLimits()
    depth_limit = max_depth or limits.max_turns or int(getattr(environment(), "max_turns", 1))
    max_frontier = max_frontier or branches
    if sample_turn is None:
        sample_turn = engine_turn_sampler(engine, temperature, top_p, generator or torch.Generator().manual_seed(0))
    # live nodes: (example index, the node's turns so far as sampled ids)
    frontier: list[tuple[int, list[list[int]]]] = [(i, []) for i in range(len(examples))]
    leaves: list[list[tuple[str, bool, str]]] = [[] for _ in examples]
    tokens = [0] * len(examples)
    pruned = [0] * len(examples)
    seed = env_seed
    for depth in range(depth_limit):
        if not frontier:
            break
        rows = [node for node in frontier for _ in range(branches)]
        level_limits = replace(limits, max_turns=depth + 1, check_template=False)
        episodes = run_episodes([environment() for _ in rows], [examples[i] for i, _ in rows],
                                [seed + r for r in range(len(rows))], engine.chat,
                                replaying(sample_turn, [turns for _, turns in rows]), level_limits,
                                workers=getattr(engine, "env_workers", 8))
        seed += len(rows)
        next_frontier: list[tuple[int, list[list[int]]]] = []
        for start in range(0, len(rows), branches):
            i = rows[start][0]
            kids = episodes[start:start + branches]
            survivors, failed = [], []
            for ep in kids:
                tokens[i] += sum(1 for p, t in zip(ep.policy, ep.turn_of) if p and t == depth)
                branch = ep.info.info.get("branch") if ep.info.env_error is None and len(ep.actions) == depth + 1 \
                    else None
                if branch == "final":
                    leaves[i].append((str(ep.info.info.get("vote_key", "")), bool(ep.info.env_correct),
                                      ep.actions[-1]))
                elif branch in ("ok", "error") and depth + 1 < depth_limit:
                    (survivors if branch == "ok" else failed).append(ep)
            if not survivors and failed:  # every branch failed: keep one to read its error message
                survivors, failed = failed[:1], failed[1:]
            pruned[i] += len(failed)
            for ep in survivors[:max_frontier]:
                next_frontier.append((i, [turn_ids(ep, t) for t in range(depth + 1)]))
        frontier = next_frontier
    out = []
    for i in range(len(examples)):
        chosen, counts = vote(leaves[i])
        key, ok, answer = leaves[i][chosen] if chosen >= 0 else ("", False, "")
        out.append(VoteResult(answer=answer, correct=ok, tokens=tokens[i], leaves=len(leaves[i]), votes=counts,
                              pruned=pruned[i]))
    return out


def sample_vote_decode(engine, examples: Sequence[Example], environment: EnvFactory, *, paths: int,
                       token_budgets: Sequence[int] | None = None, temperature: float = 1.0, top_p: float = 1.0,
                       limits: EpisodeLimits | None = None, generator: torch.Generator | None = None,
                       env_seed: int = 0) -> list[VoteResult]:
    """Single-path (linear) decoding: ``paths`` independent episodes per example, then the same execution vote.

    With ``token_budgets`` (one per example, e.g. the tokens ``tree_vote_decode`` spent on it) only the first
    paths whose cumulative policy tokens fit the budget take part (always at least one): an equal-budget
    comparison. ``paths=1, temperature=0`` is plain greedy decoding."""
    limits = limits or EpisodeLimits()
    generator = generator or torch.Generator().manual_seed(0)
    out = engine.generate(list(examples), paths, temperature=temperature, top_p=top_p,
                          max_new_tokens=limits.max_new_tokens, generator=generator, environment=environment,
                          env_seed=env_seed, limits=limits)
    results = []
    for i in range(len(examples)):
        rows = range(i * paths, (i + 1) * paths)
        used, leaves, spent = 0, [], 0
        for r in rows:
            cost = int(out.num_tokens[r])
            if token_budgets is not None and used and spent + cost > token_budgets[i]:
                break
            used += 1
            spent += cost
            ep = out.episodes[r]
            if ep.info.get("branch") == "final":
                leaves.append((str(ep.info.get("vote_key", "")), bool(ep.env_correct), ep.final_action))
        chosen, counts = vote(leaves)
        key, ok, answer = leaves[chosen] if chosen >= 0 else ("", False, "")
        results.append(VoteResult(answer=answer, correct=ok, tokens=spent, leaves=len(leaves), votes=counts))
    return results


def summarize(results: Sequence[VoteResult]) -> dict[str, Any]:
    """Accuracy and mean tokens / leaves per example."""
    n = max(1, len(results))
    return {"accuracy": sum(r.correct for r in results) / n, "tokens_mean": sum(r.tokens for r in results) / n,
            "leaves_mean": sum(r.leaves for r in results) / n}
