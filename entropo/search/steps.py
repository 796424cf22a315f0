"""Partial solutions as token-id steps, and the sampler that extends them.

A *partial* is a prompt (token ids) plus the steps generated so far, each kept as the token ids that were sampled
(with their log-probs under the sampling distribution). Extending a partial feeds ``prompt_ids + step ids`` back to
the model as ids: a prefix is never decoded and re-encoded. A step ends at the step delimiter (a newline by default:
the ``"lines"`` rule of ``entropo.algorithms.segments``; the delimiter token belongs to the step it ends), at EOS
(the partial is then finished), or after ``max_step_tokens`` tokens. A partial is also finished once it has
``max_steps`` steps or ``max_tokens`` response tokens (the verifier then judges what is there).

``StepSampler`` counts every token it samples in ``tokens``: search strategies and scorers (Monte-Carlo rollouts)
generate through the same sampler, so the count difference around a search is that search's exact generation cost
(tokens sampled past ``max_steps`` by ``complete`` are dropped from the partial but still counted: they were generated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from entropo.types import Example


@dataclass(frozen=True)
class Step:
    """One generated step: its token ids, their log-probs (sampling distribution) and why it ended
    (``"stop"``: the delimiter, ``"eos"``, ``"length"``: the step's token budget)."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish: str


@dataclass(frozen=True)
class Partial:
    """A prompt and the steps so far (immutable: extending makes a new partial that shares the old steps)."""

    example: Example
    prompt_ids: tuple[int, ...]
    steps: tuple[Step, ...] = ()
    finished: bool = False

    @property
    def response_ids(self) -> list[int]:
        return [t for s in self.steps for t in s.ids]

    @property
    def ids(self) -> list[int]:
        """The context the model continues from: prompt ids then every step's ids."""
        return list(self.prompt_ids) + self.response_ids

    @property
    def num_tokens(self) -> int:
        return sum(len(s.ids) for s in self.steps)

    def logprobs(self) -> list[float]:
        return [lp for s in self.steps for lp in s.logprobs]

    def text(self, tokenizer: Any) -> str:
        """The decoded response (special tokens skipped), e.g. for the task's verifier."""
        return tokenizer.decode(self.response_ids, skip_special_tokens=True)


def root(example: Example, prompt_ids: list[int]) -> Partial:
    return Partial(example, tuple(int(i) for i in prompt_ids))


@dataclass
class StepSampler:
    """Extends partials with a rollout engine's ``turn_sampler`` (token ids in, token ids out).

    ``next_steps(partials, n)`` → n one-step children per partial; ``complete(partials, n)`` → n full completions
    per partial, split into steps afterwards at delimiter tokens. Randomness comes only from ``generator``.
    """

    engine: Any
    generator: torch.Generator
    temperature: float = 1.0
    top_p: float = 1.0
    max_step_tokens: int = 16
    max_steps: int = 8
    max_tokens: int = 64
    delimiter: str = "\n"
    tokens: int = 0  # every token sampled through this sampler
    _is_delim: dict[int, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.max_step_tokens < 1 or self.max_steps < 1 or self.max_tokens < 1:
            raise ValueError("max_step_tokens, max_steps and max_tokens must be >= 1 "
                             f"(got {self.max_step_tokens}, {self.max_steps}, {self.max_tokens})")
        if not self.delimiter:
            raise ValueError("delimiter must be a non-empty string (e.g. '\\n')")

    # ---- raw decoding ------------------------------------------------------------------------------------------
    def _decode_rows(self, contexts: list[list[int]], budgets: list[int], stop: list[str], temperature: float):
        # the engine's public per-turn sampler (micro-batched by its max_batch_size; any engine: hf, vllm, ...)
        sample_turn = self.engine.turn_sampler(temperature, self.top_p, self.generator)
        out = []
        for (r_ids, r_lp, _, r_why), budget in zip(sample_turn(contexts, max(budgets, default=1), stop), budgets):
            r_lp = [float(x) for x in r_lp.tolist()]
            if len(r_ids) > budget:  # the batch decoded to its longest budget: cut this row at its own
                r_ids, r_lp, r_why = r_ids[:budget], r_lp[:budget], "length"
            self.tokens += len(r_ids)
            out.append((list(r_ids), r_lp, r_why))
        return out

    def _is_delimiter(self, token_id: int) -> bool:
        """Whether the token's own text contains the delimiter (decoded once per id; special tokens never do)."""
        if token_id not in self._is_delim:
            text = self.engine.tokenizer.decode([token_id], skip_special_tokens=True)
            self._is_delim[token_id] = self.delimiter in text
        return self._is_delim[token_id]

    def _child(self, parent: Partial, step: Step) -> Partial:
        steps = parent.steps + (step,)
        total = parent.num_tokens + len(step.ids)
        done = step.finish == "eos" or len(steps) >= self.max_steps or total >= self.max_tokens
        return Partial(parent.example, parent.prompt_ids, steps, done)

    def _budget(self, partial: Partial, cap: int) -> int:
        return max(1, min(cap, self.max_tokens - partial.num_tokens))

    # ---- public ------------------------------------------------------------------------------------------------
    def next_steps(self, partials: list[Partial], n: int, temperature: float | None = None) -> list[list[Partial]]:
        """n children of each (unfinished) partial, one new step each; prompt-major."""
        if any(p.finished for p in partials):
            raise ValueError("next_steps: a finished partial has no next step")
        temp = self.temperature if temperature is None else temperature
        contexts = [p.ids for p in partials for _ in range(n)]
        budgets = [self._budget(p, self.max_step_tokens) for p in partials for _ in range(n)]
        rows = self._decode_rows(contexts, budgets, [self.delimiter], temp)
        out: list[list[Partial]] = []
        for i, p in enumerate(partials):
            out.append([self._child(p, Step(tuple(ids), tuple(lp), why)) for ids, lp, why in rows[i * n:(i + 1) * n]])
        return out

    def complete(self, partials: list[Partial], n: int, temperature: float | None = None) -> list[list[Partial]]:
        """n completions of each partial to the end (EOS, ``max_tokens`` or ``max_steps``), split into steps."""
        temp = self.temperature if temperature is None else temperature
        todo = [p for p in partials if not p.finished]
        contexts = [p.ids for p in todo for _ in range(n)]
        budgets = [self._budget(p, self.max_tokens) for p in todo for _ in range(n)]
        rows = iter(self._decode_rows(contexts, budgets, [], temp)) if contexts else iter(())
        out = []
        for p in partials:
            if p.finished:
                out.append([p] * n)
                continue
            out.append([self._split(p, *next(rows)) for _ in range(n)])
        return out

    def _split(self, parent: Partial, ids: list[int], logprobs: list[float], why: str) -> Partial:
        """Cut a continuation into steps at delimiter tokens (and at ``max_step_tokens``) and attach them."""
        node, start = parent, 0
        for t in range(len(ids)):
            last = t == len(ids) - 1
            cut = self._is_delimiter(ids[t]) or t + 1 - start >= self.max_step_tokens
            if not (cut or last):
                continue
            finish = why if last else ("stop" if self._is_delimiter(ids[t]) else "length")
            node = self._child(node, Step(tuple(ids[start:t + 1]), tuple(logprobs[start:t + 1]), finish))
            start = t + 1
            if node.finished:
                break
        if not node.finished:  # ran out of budget mid-step, or an empty continuation
            node = Partial(node.example, node.prompt_ids, node.steps, True)
        return node
