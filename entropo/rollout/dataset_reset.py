"""Dataset resets for training rollouts (DR-PO).

Paper: "Dataset Reset Policy Optimization for RLHF" (DR-PO), arXiv 2404.08495. Offline data holds good responses;
online RL *resets* to random prefixes of them, so the policy practises continuing from informative states it would
rarely reach on its own. With probability ``reset_prob`` a prompt's rollouts teacher-force the first ``h`` tokens of
the example's demonstration y* (``h`` uniform on {1, ..., L-1}, L = len(y*) in tokens; demonstrations with L < 2 are
never reset) and the policy samples the rest.

Engine ``dataset_reset`` (recipe: ``rollout.engine: dataset_reset``, ``rollout.engine_params: {reset_prob, min_frac,
max_frac, field, per_sample}``) is the ``hf`` engine whose *training* rollouts (``rollout``) are reset; evaluation
(``generate``) is never reset. So any recipe (GRPO, PPO, ...) gets resets without a change to the trainer:

- the forced ids are the demonstration's token ids (``field``: ``target``, ``answer`` or ``meta.<key>``, encoded once
  without special tokens), placed right after the prompt, **response_mask 0** (context, never trained on; behaviour
  log-prob/entropy 0); the continuation is sampled and trained on (mask 1). The response budget
  ``max_new_tokens`` covers both (``h <= max_new_tokens - 1``, so at least one token is sampled);
- the reward functions and the environment see the *whole* response, forced prefix + continuation (the completion
  text is the decode of both), as in the paper (the reward model scores the full response);
- ``per_sample: false`` (default, an entropo extension for group methods): the ``n`` rows of a prompt share one reset
  point, so a GRPO group compares continuations of the same state; ``true``: every row draws its own (the paper's PPO);
- ``min_frac``/``max_frac`` narrow h to [ceil(min_frac * L), floor(max_frac * L)] intersected with [1, L-1];
- the reset draws use their own RNG, seeded from a hash of the rollout generator's state (read, never advanced), so
  with ``reset_prob: 0`` the rows are exactly the ``hf`` engine's, and runs/resumes are deterministic by seed.

Official code (Cornell-RL/drpo ``src/tldr/drpo.py``, as described in the spec): the reference roll-in is
teacher-forced, then the policy generates; the PG loss masks the roll-in tokens out and normalises by the non-forced
tokens; the reset prefix length is a uniformly random row of a lower-triangular mask, i.e. uniform on {1, ..., L-1}.
The masking here is the same (``response_mask`` 0 on forced tokens, so every aggregation counts only sampled ones).
Reduced: the paper resets to the preferred response of a preference pair and trains PPO with a reward model; here
any task field holding a demonstration can serve (e.g. ``Example.target`` of arithmetic, the chosen text of the
preference task).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import replace
from typing import Any, Sequence

import torch

from entropo.envs.base import single_turn_factory
from entropo.registry import register
from entropo.rollout.episodes import EpisodeLimits, _rounds, assemble, run_episodes
from entropo.rollout.hf import HFEngine, check_sampling_args, default_generator
from entropo.types import Example, RolloutOutput


def demonstration_text(example: Example, field: str) -> str | None:
    """The demonstration held in ``field`` of ``example`` (``target``, ``answer`` or ``meta.<key>``); None if absent."""
    if field.startswith("meta."):
        value = example.meta.get(field[len("meta."):])
    elif field in ("target", "answer"):
        value = getattr(example, field)
    else:
        raise ValueError(f"rollout.engine_params.field={field!r}: use 'target', 'answer' or 'meta.<key>'")
    return None if value is None else str(value)


def prefix_bounds(length: int, min_frac: float, max_frac: float, budget: int) -> tuple[int, int] | None:
    """The inclusive range of reset prefix lengths h for a demonstration of ``length`` tokens, or None (no reset):
    h in [1, L-1] (the paper), narrowed to [ceil(min_frac L), floor(max_frac L)] and to h <= budget - 1."""
    lo = max(1, math.ceil(min_frac * length))
    hi = min(length - 1, math.floor(max_frac * length), budget - 1)
    return (lo, hi) if lo <= hi else None


def generator_seed(generator: torch.Generator, salt: int) -> int:
    """A seed derived from the generator's state without drawing from it (its stream stays untouched)."""
    state = generator.get_state().cpu().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(state + salt.to_bytes(8, "little", signed=True)).digest()[:8], "little")


class _Tracked:
    """An environment that remembers whether its reset succeeded (the episode loop samples only those rows)."""

    def __init__(self, env):
        self.env = env
        self.reset_ok = False

    def reset(self, example, seed):
        out = self.env.reset(example, seed)
        self.reset_ok = True
        return out

    def __getattr__(self, name):  # step, close, stop, max_turns, observation_role, ...
        return getattr(self.env, name)


@register("engine", "dataset_reset")
class DatasetResetEngine(HFEngine):
    """The ``hf`` engine with DR-PO dataset resets on training rollouts (see the module docstring).
    DR-PO: Dataset Reset Policy Optimization for RLHF, arXiv 2404.08495."""

    def __init__(self, model, tokenizer, *, reset_prob: float = 1.0, min_frac: float = 0.0, max_frac: float = 1.0,
                 field: str = "target", per_sample: bool = False, seed: int = 0, **hf_params: Any):
        super().__init__(model, tokenizer, **hf_params)
        if not 0.0 <= float(reset_prob) <= 1.0:
            raise ValueError(f"rollout.engine_params.reset_prob must be in [0, 1], got {reset_prob}")
        if not 0.0 <= float(min_frac) <= float(max_frac) <= 1.0:
            raise ValueError(f"rollout.engine_params: need 0 <= min_frac <= max_frac <= 1, got min_frac={min_frac}, "
                             f"max_frac={max_frac}")
        if not (field in ("target", "answer") or field.startswith("meta.")):
            raise ValueError(f"rollout.engine_params.field={field!r}: use 'target', 'answer' or 'meta.<key>'")
        self.reset_prob, self.min_frac, self.max_frac = float(reset_prob), float(min_frac), float(max_frac)
        self.field, self.per_sample, self.seed = field, bool(per_sample), int(seed)

    def demonstration_ids(self, example: Example) -> list[int]:
        text = demonstration_text(example, self.field)
        return [] if not text else self.chat.encode(text, add_special_tokens=False)

    def reset_plan(self, examples: Sequence[Example], n: int, generator: torch.Generator,
                   max_new_tokens: int) -> list[list[int]]:
        """Per row (prompt-major, ``n`` per example): the forced demonstration ids ([] = a plain rollout)."""
        rng = random.Random(generator_seed(generator, self.seed))
        plan: list[list[int]] = []
        for example in examples:
            demo = self.demonstration_ids(example) if self.reset_prob > 0 else []
            bounds = prefix_bounds(len(demo), self.min_frac, self.max_frac, max_new_tokens) if demo else None
            shared: list[int] | None = None
            for _ in range(n):
                if shared is None or self.per_sample:
                    reset = rng.random() < self.reset_prob  # drawn even without bounds: plans stay aligned by seed
                    h = rng.randint(*bounds) if reset and bounds is not None else 0
                    shared = demo[:h]
                plan.append(list(shared))
        return plan

    def rollout(self, examples: Sequence[Any], n: int, **sampling: Any) -> RolloutOutput:
        examples = [e if isinstance(e, Example) else Example(prompt=e) for e in examples]
        device = next(self.model.parameters()).device
        generator = sampling.get("generator")
        sampling["generator"] = generator if generator is not None else default_generator(device)
        plan = self.reset_plan(examples, n, sampling["generator"], int(sampling.get("max_new_tokens", 64)))
        if not any(plan):
            return super().rollout(examples, n, **sampling)
        out = self._generate_reset(examples, n, plan, **sampling)
        out.payloads = list(examples)
        return out

    @torch.no_grad()
    def _generate_reset(self, examples: list[Example], n: int, plan: list[list[int]], *, temperature: float = 1.0,
                        top_p: float = 1.0, max_new_tokens: int = 64, stop: Sequence[str] = (),
                        generator: torch.Generator, environment=None, env_seed: int = 0,
                        limits: EpisodeLimits | None = None) -> RolloutOutput:
        """``generate(..., rounds=True)`` with the first action of row r starting with the forced ids ``plan[r]``."""
        stop = check_sampling_args(n, temperature, top_p, max_new_tokens, stop)
        device = next(self.model.parameters()).device
        environment = environment if environment is not None else single_turn_factory()
        limits = replace(limits or EpisodeLimits(), max_new_tokens=max_new_tokens)
        self._check_prompt_lengths(examples, limits)
        row_prompt_index = [i for i in range(len(examples)) for _ in range(n)]
        envs = [_Tracked(environment()) for _ in row_prompt_index]
        inner = self.turn_sampler(temperature, top_p, generator, device)
        first_turn = [True]

        def sample_turn(contexts: list[list[int]], budget: int, stops: list[str]):
            if not first_turn[0]:
                return inner(contexts, budget, stops)
            first_turn[0] = False
            forced = [plan[r] for r, env in enumerate(envs) if env.reset_ok]  # the rows sampled now, in row order
            sampled = inner([c + f for c, f in zip(contexts, forced)], budget, stops)
            out = []
            for f, (ids, lps, ents, why) in zip(forced, sampled):
                room = budget - len(f)
                if f and len(ids) > room:  # the forced prefix counts against the action's token budget
                    ids, lps, ents, why = ids[:room], lps[:room], ents[:room], "length"
                zeros = torch.zeros(len(f))
                out.append((f + list(ids), torch.cat([zeros, lps.float()]), torch.cat([zeros, ents.float()]), why))
            return out

        self.last_timing: dict[str, float] = {}
        episodes = run_episodes(envs, [examples[i] for i in row_prompt_index],
                                [env_seed + r for r in range(len(row_prompt_index))], self.chat, sample_turn, limits,
                                stop=stop, workers=self.env_workers, timing=self.last_timing)
        for ep, forced, env in zip(episodes, plan, envs):
            h = len(forced) if env.reset_ok and ep.actions else 0
            first = _rounds(ep)[0]
            for k in range(min(h, len(first.policy))):
                first.policy[k] = False  # forced demonstration tokens: context, never trained on
            ep.info.info["reset_prefix_tokens"] = h
        return assemble(episodes, row_prompt_index, self.pad_token_id,
                        lambda rows: self.tokenizer.batch_decode(rows, skip_special_tokens=True), rounds=True)
