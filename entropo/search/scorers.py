"""Step scorers: the ``StepScorer`` protocol that guides search, and its implementations.

A scorer maps partial solutions (a prompt and the steps so far, ``entropo.search.steps.Partial``) to one number each;
higher is better. Search strategies only call ``score(partials)``; what the number means is the scorer's:

- ``outcome``: the task's own verifier on finished answers (+1 correct, -1 wrong) and 0 for unfinished partials —
  the outcome reward. It reads the gold answer, so on a held-out set it is an *oracle* verifier.
- ``rollout``: a Monte-Carlo value: ``n`` completions of the partial by the policy, 2·(fraction correct) - 1 (finished
  partials: the outcome). Every rollout token is generated through the search's sampler and so counted in its cost.
  Reads the gold answer (the verifier judges the rollouts).
- ``logprob``: the model's own confidence, the mean log-prob of the response tokens under the sampling
  distribution. Reads no answer: a non-oracle baseline.
- ``arith_steps``: a process checker (a PRM stand-in, B17's "tool-grounded" verifier reduced to recomputing
  arithmetic) for the ``arith_chain`` task: -1 as soon as a finished line is not the correct next step of the chain
  computed from the prompt's operands, +1 for a finished correct chain, 0 while every line so far is right.

A learned PRM plugs in as any object with ``name`` and ``score(partials) -> list[float]`` (``make_scorer`` also
accepts an import path ``module:factory`` called as ``factory(task=..., tokenizer=..., sampler=..., **params)``).
"""

from __future__ import annotations

from typing import Any, Protocol

from entropo.search.steps import Partial


class StepScorer(Protocol):
    name: str

    def score(self, partials: list[Partial]) -> list[float]: ...


class OutcomeScorer:
    """+``correct`` / ``wrong`` on finished partials by the task's verifier; ``unfinished`` otherwise."""

    name = "outcome"

    def __init__(self, task: Any, tokenizer: Any, correct: float = 1.0, wrong: float = -1.0, unfinished: float = 0.0):
        self.task, self.tokenizer = task, tokenizer
        self.values = (correct, wrong, unfinished)

    def verdict(self, partial: Partial) -> bool:
        return bool(self.task.correct(partial.text(self.tokenizer), partial.example))

    def score(self, partials: list[Partial]) -> list[float]:
        good, bad, open_ = self.values
        return [(good if self.verdict(p) else bad) if p.finished else open_ for p in partials]


class RolloutScorer(OutcomeScorer):
    """Monte-Carlo value of a partial: ``2·mean(correct) - 1`` over ``n`` policy completions (PAV's Q^μ estimate
    with μ = the policy, "Rewarding Progress", arXiv 2410.08146), the outcome on finished partials."""

    name = "rollout"

    def __init__(self, task: Any, tokenizer: Any, sampler: Any, n: int = 4):
        super().__init__(task, tokenizer)
        if n < 1:
            raise ValueError(f"rollout scorer: n must be >= 1, got {n}")
        self.sampler, self.n = sampler, int(n)

    def score(self, partials: list[Partial]) -> list[float]:
        out = [0.0] * len(partials)
        open_idx = [i for i, p in enumerate(partials) if not p.finished]
        for i, p in enumerate(partials):
            if p.finished:
                out[i] = 1.0 if self.verdict(p) else -1.0
        if open_idx:
            done = self.sampler.complete([partials[i] for i in open_idx], self.n)
            for i, completions in zip(open_idx, done):
                out[i] = 2.0 * sum(self.verdict(c) for c in completions) / self.n - 1.0
        return out


class LogprobScorer:
    """Mean log-prob of the response tokens (the policy's confidence; 0 for an empty response). No answer read."""

    name = "logprob"

    def score(self, partials: list[Partial]) -> list[float]:
        out = []
        for p in partials:
            lps = p.logprobs()
            out.append(sum(lps) / len(lps) if lps else 0.0)
        return out


class ArithStepScorer:
    """Process checker for ``arith_chain``: each finished line must be step k of the left-to-right chain."""

    name = "arith_steps"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @staticmethod
    def check(text: str, operands: list[int], ops: list[str], finished: bool) -> float:
        from entropo.tasks.arith_chain import chain_lines

        gold = chain_lines(list(operands), list(ops))
        lines = text.split("\n")
        complete = lines if finished else lines[:-1]  # the last line of an unfinished partial may still grow
        for k, line in enumerate(complete):
            if k >= len(gold) or line.strip().replace(" ", "") != gold[k]:
                return -1.0
        return 1.0 if finished and len(complete) == len(gold) else (-1.0 if finished else 0.0)

    def score(self, partials: list[Partial]) -> list[float]:
        out = []
        for p in partials:
            meta = p.example.meta
            if "operands" not in meta or "ops" not in meta:
                raise ValueError("scorer arith_steps needs Example.meta['operands'] and ['ops'] (task arith_chain); "
                                 "use scorer outcome, rollout or logprob for other tasks")
            out.append(self.check(p.text(self.tokenizer), meta["operands"], meta["ops"], p.finished))
        return out


SCORERS = ("outcome", "rollout", "logprob", "arith_steps")


def make_scorer(name: str, *, task: Any, tokenizer: Any, sampler: Any, **params: Any) -> StepScorer:
    """A scorer by name (``SCORERS``) or import path ``module:factory``; ``params`` go to its constructor."""
    if name == "outcome":
        return OutcomeScorer(task, tokenizer, **params)
    if name == "rollout":
        return RolloutScorer(task, tokenizer, sampler, **params)
    if name == "logprob":
        return LogprobScorer(**params)
    if name == "arith_steps":
        return ArithStepScorer(tokenizer, **params)
    if ":" in name:
        from entropo.registry import import_callable

        return import_callable("scorer", name)(task=task, tokenizer=tokenizer, sampler=sampler, **params)
    raise ValueError(f"unknown scorer {name!r}; allowed: {', '.join(SCORERS)} or an import path module:factory")


