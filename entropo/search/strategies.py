"""Test-time search strategies over steps: greedy, best-of-N, step-level beam search, MCTS.

The taxonomy is the o1 roadmap survey's ("Scaling of Search and Learning: A Roadmap to Reproduce o1 from
Reinforcement Learning Perspective", arXiv 2412.14135): tree search (best-of-N, beam, MCTS) guided by an external
signal (a verifier, a process reward model, a Monte-Carlo value) — here any ``StepScorer``.

Every strategy is ``fn(example, prompt_ids, sampler, scorer, **params) -> (Partial, info)``; the cost of a search is
the number of tokens the sampler generated during it (policy samples and scorer rollouts alike), measured by the
caller as the difference of ``sampler.tokens``. ``budget_params(name, b)`` maps one budget number to each strategy's
size parameter (best-of-N: n = b; beam: width b, 2 proposals per beam; MCTS: b iterations per move, 4b at the root).
"""

from __future__ import annotations

from typing import Any, Callable

from entropo.search.mcts import MCTS, pair_records, tree_pairs
from entropo.search.steps import Partial, root


def argmax_first(scores: list[float]) -> int:
    """Index of the largest score, the first one on ties."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def greedy(example, prompt_ids, sampler, scorer, **_) -> tuple[Partial, dict]:
    """One completion at temperature 0 (the scorer is not used)."""
    return sampler.complete([root(example, prompt_ids)], 1, temperature=0.0)[0][0], {}


def best_of_n(example, prompt_ids, sampler, scorer, n: int = 4, **_) -> tuple[Partial, dict]:
    """n complete samples; the scorer's argmax (first on ties)."""
    if n < 1:
        raise ValueError(f"best_of_n: n must be >= 1, got {n}")
    candidates = sampler.complete([root(example, prompt_ids)], n)[0]
    scores = scorer.score(candidates)
    i = argmax_first(scores)
    return candidates[i], {"scores": scores, "chosen": i}


def beam_search(example, prompt_ids, sampler, scorer, width: int = 4, expand: int = 2, **_) -> tuple[Partial, dict]:
    """Step-level beam search: each unfinished beam proposes ``expand`` next steps; finished beams stay in the pool;
    the pool is ranked by the scorer and the top ``width`` kept (stable: ties keep pool order). Ends when every kept
    beam is finished; returns the best finished beam (the best beam if none finished)."""
    if width < 1 or expand < 1:
        raise ValueError(f"beam: width and expand must be >= 1, got {width}, {expand}")
    beams = [root(example, prompt_ids)]
    scores = [0.0]
    history = []
    while any(not b.finished for b in beams):
        live = [b for b in beams if not b.finished]
        children = [c for kids in sampler.next_steps(live, expand) for c in kids]
        kept = [(b, s) for b, s in zip(beams, scores) if b.finished]
        child_scores = scorer.score(children)
        pool = kept + list(zip(children, child_scores))
        order = sorted(range(len(pool)), key=lambda i: -pool[i][1])[:width]
        beams, scores = [pool[i][0] for i in order], [pool[i][1] for i in order]
        history.append(scores)
    done = [i for i, b in enumerate(beams) if b.finished] or list(range(len(beams)))
    best = done[argmax_first([scores[i] for i in done])]
    return beams[best], {"scores": history}


def mcts(example, prompt_ids, sampler, scorer, n_iters: int = 4, n_actions: int = 2, w_exp: float = 1.0,
         gamma: float = 1.0, depth_limit: int = 8, length_penalty: float = 1.25, tokenizer: Any = None,
         **_) -> tuple[Partial, dict]:
    """MCTS-DPO's search (``entropo.search.mcts.MCTS``); info holds the root, the chosen path and its step pairs."""
    searcher = MCTS(sampler, scorer, n_iters=n_iters, n_actions=n_actions, w_exp=w_exp, gamma=gamma,
                    depth_limit=depth_limit, length_penalty=length_penalty)
    final, tree, path = searcher.search(example, prompt_ids)
    pairs = tree_pairs(path)
    info = {"root": tree, "path": path, "pairs": pairs}
    if tokenizer is not None:
        info["pair_records"] = pair_records(pairs, tokenizer, example)
    return final, info


STRATEGIES: dict[str, Callable[..., tuple[Partial, dict]]] = {
    "greedy": greedy, "best_of_n": best_of_n, "beam": beam_search, "mcts": mcts,
}


def budget_params(name: str, budget: int) -> dict[str, int]:
    """The size parameter of each strategy for one budget number."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    return {"greedy": {}, "best_of_n": {"n": budget}, "beam": {"width": budget},
            "mcts": {"n_iters": budget}}[name]
