"""Entropy-fork tree rollout (ETMR) — the rollout half of ETTRL.

Paper: "ETTRL: Balancing Exploration and Exploitation in LLM Test-Time Reinforcement Learning Via Entropy
Mechanism", arXiv 2508.11356 (Entropy-fork Tree Majority Rollout). No official code was found (spec §16 (e)); the
procedure follows the paper's description as summarised in the spec: each tree starts from one complete sample,
the N positions of that sample where the sampling distribution had the highest entropy become fork points, and at
each fork B new branches continue from the shared prefix to completion. A tree has 1 + B·N leaves; a prompt that
needs n samples gets M = ceil(n / (1 + B·N)) trees and the leaves are trimmed to exactly n (the surplus is never
generated).

Choices where the paper is silent (spec §16 (g)), made here:
- the fork token itself is re-sampled: a branch forking at response position t keeps the root's tokens [0, t) and
  draws token t onwards afresh (the entropy recorded at t is that of the distribution token t was drawn from, so
  "fork at a high-entropy token" means "draw that uncertain token again");
- every response position may be a fork point (including the root's last token); ties in entropy go to the
  earlier position; a root shorter than N tokens reuses its positions in entropy order (more branches per fork) so
  every tree still has 1 + B·N leaves;
- a branch's budget is the root's: prefix length + new tokens <= max_new_tokens.

Prefix sharing: a branch never re-samples its prefix. Its prefix tokens, their behaviour log-probs and entropies are
copied from the root (same model, same sampling distribution), and decoding resumes with the same KV-cached loop as
``HFEngine`` (the inherited ``_generate_micro_batch``). With the static-cache path (``HFEngine``'s default) the
roots' K/V are kept for the whole ``generate`` call (``HFEngine.prefix_kv_scope``), so a branch copies the K/V of
prompt + prefix from its root and only runs its last prefix token before sampling; otherwise prompt + prefix is one
parallel prefill forward per branch.

``last_stats`` after each ``generate`` holds ``generated_tokens`` (tokens actually sampled: roots in full plus each
branch's new suffix) and ``leaf_tokens`` (the total length of the returned responses, i.e. what independent sampling
of the same leaves would have generated); ``last_leaves`` describes every returned row (tree, parent, fork position).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entropo.envs.base import EnvFactory, require_single_turn
from entropo.registry import register
from entropo.rollout.hf import HFEngine, check_sampling_args, default_generator
from entropo.types import Example, RolloutOutput


@dataclass
class Leaf:
    """Where one returned row comes from: the root row of its tree and, for branches, the fork position."""

    prompt: int
    tree: int  # tree index within the prompt (0..M-1)
    root_row: int  # index of the root in the engine's root list
    fork_position: int | None  # None for the root itself; else the response position t where the branch starts


def trees_per_prompt(n: int, n_fork_points: int, branches: int) -> int:
    """M = ceil(n / (1 + B·N)): trees needed for n leaves (M = 4, N = 3, B = 2 gives 28 leaves >= n)."""
    return math.ceil(n / (1 + branches * n_fork_points))


def fork_positions(entropies: Tensor, n_fork_points: int) -> list[int]:
    """The N response positions with the highest entropy, highest first (ties: earlier position first).

    A response shorter than N tokens repeats its positions in the same order, so exactly N fork points come back.
    """
    length = int(entropies.numel())
    if length == 0:
        raise ValueError("cannot fork an empty response")
    ranked = sorted(range(length), key=lambda t: (-float(entropies[t]), t))
    return [ranked[k % length] for k in range(n_fork_points)]


def plan_leaves(num_prompts: int, n: int, n_fork_points: int, branches: int) -> list[Leaf]:
    """Leaf order (prompt-major, then tree, then fork rank, then branch), trimmed to n per prompt.

    ``fork_position`` holds the fork *rank* k (0..N-1) here; ``generate`` replaces it by the position once the root
    is sampled."""
    per_tree = 1 + branches * n_fork_points
    trees = trees_per_prompt(n, n_fork_points, branches)
    leaves: list[Leaf] = []
    for p in range(num_prompts):
        own: list[Leaf] = []
        for m in range(trees):
            root = p * trees + m
            own.append(Leaf(p, m, root, None))
            own.extend(Leaf(p, m, root, k) for k in range(n_fork_points) for _ in range(branches))
        assert len(own) == trees * per_tree
        leaves.extend(own[:n])
    return leaves


@register("engine", "hf_tree", paper="ETTRL (entropy-fork tree majority rollout), arXiv 2508.11356")
class HFTreeEngine(HFEngine):
    """``HFEngine`` with entropy-fork tree sampling: ``generate`` has the same signature and returns
    ``RolloutOutput`` with exactly ``n`` leaves per prompt (prompt-major). Params (recipe ``rollout.engine_params``):
    ``n_fork_points`` (N, default 3) and ``branches`` (B, default 2)."""

    def __init__(self, model, tokenizer, *, chat_template: str | bool = "auto", max_batch_size: int = 64,
                 n_fork_points: int = 3, branches: int = 2, **engine_params: Any):
        super().__init__(model, tokenizer, chat_template=chat_template, max_batch_size=max_batch_size,
                         **engine_params)
        if n_fork_points < 0 or branches < 0:
            raise ValueError(f"n_fork_points and branches must be >= 0, got {n_fork_points}, {branches}")
        self.n_fork_points, self.branches = int(n_fork_points), int(branches)
        self.last_stats: dict[str, float] = {}
        self.last_leaves: list[Leaf] = []

    def _sample_rows(self, row_prompts: list[list[int]], budgets: list[int], temperature: float, top_p: float,
                     stop: list[str], generator: torch.Generator, device):
        """Decode rows in micro-batches of ``max_batch_size``; row r gets at most ``budgets[r]`` new tokens.

        A micro-batch decodes up to its largest budget; a row that ran past its own budget is cut there (finish
        reason "length"). Cutting a sequentially sampled row is the same as stopping it at that length."""
        responses, logprobs, entropies, reasons = [], [], [], []
        for start in range(0, len(row_prompts), self.max_batch_size):
            rows = slice(start, start + self.max_batch_size)
            out = self._generate_micro_batch(row_prompts[rows], temperature, top_p, max(budgets[rows]), stop,
                                             generator, device)
            for ids, lp, ent, why, budget in zip(*out, budgets[rows]):
                if len(ids) > budget:
                    ids, lp, ent, why = ids[:budget], lp[:budget], ent[:budget], "length"
                responses.append(ids)
                logprobs.append(lp)
                entropies.append(ent)
                reasons.append(why)
        return responses, logprobs, entropies, reasons

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str | list[dict]],
        n: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        generator: torch.Generator | None = None,
        environment: EnvFactory | None = None,
        env_seed: int = 0,
        limits: Any = None,
        rounds: bool = False,
    ) -> RolloutOutput:
        """Sample ``n`` leaves per prompt from entropy-fork trees (see the module docstring). Single-turn only (one
        round per episode, so ``rounds`` changes nothing)."""
        del env_seed, limits, rounds
        require_single_turn(self, environment)
        prompts = [p.prompt if isinstance(p, Example) else p for p in prompts]
        stop = check_sampling_args(n, temperature, top_p, max_new_tokens, stop)
        device = next(self.model.parameters()).device
        generator = generator if generator is not None else default_generator(device)
        trees = trees_per_prompt(n, self.n_fork_points, self.branches)
        store = self.new_prefix_kv()  # the roots' K/V, for the branches that fork off them
        with self.prefix_kv_scope(store):
            return self._generate_tree(prompts, n, trees, temperature, top_p, max_new_tokens, stop, generator,
                                       device, store)

    def _generate_tree(self, prompts, n, trees, temperature, top_p, max_new_tokens, stop, generator, device,
                       store) -> RolloutOutput:
        # 1. roots: M independent complete samples per prompt (HFEngine validates the arguments and prompts).
        roots = HFEngine.generate(self, prompts, trees, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, stop=stop, generator=generator)
        prompt_token_ids = [self.encode_prompt(p) for p in prompts]
        root_tokens, root_logprobs, root_entropies = [], [], []
        for r in range(roots.input_ids.shape[0]):
            on_response = roots.response_mask[r].bool()
            root_tokens.append(roots.input_ids[r][on_response].tolist())
            root_logprobs.append(roots.behaviour_logprobs[r][on_response])
            root_entropies.append(roots.behaviour_entropy[r][on_response])
        forks = [fork_positions(h, self.n_fork_points) for h in root_entropies]

        # 2. branches: prompt + the root's prefix [0, t) as the prompt of a continuation with the remaining budget.
        leaves = plan_leaves(len(prompts), n, self.n_fork_points, self.branches)
        for leaf in leaves:
            if leaf.fork_position is not None:
                leaf.fork_position = forks[leaf.root_row][leaf.fork_position]
        branch_leaves = [leaf for leaf in leaves if leaf.fork_position is not None]
        if store:
            store.accepting = False  # branches read the roots' K/V; nothing extends a branch
        branch_out = self._sample_rows(
            [prompt_token_ids[b.prompt] + root_tokens[b.root_row][: b.fork_position] for b in branch_leaves],
            [max_new_tokens - b.fork_position for b in branch_leaves],
            temperature, top_p, stop, generator, device,
        )

        # 3. leaves: roots as sampled; branches = root prefix (tokens, log-probs, entropies copied) + their suffix.
        responses, logprobs, entropies, reasons = [], [], [], []
        suffixes = iter(zip(*branch_out))
        generated = sum(roots.num_tokens)  # every root is a returned leaf (tree m's root precedes its branches)
        for leaf in leaves:
            root = leaf.root_row
            if leaf.fork_position is None:
                responses.append(root_tokens[root])
                logprobs.append(root_logprobs[root])
                entropies.append(root_entropies[root])
                reasons.append(roots.finish_reasons[root])
                continue
            t = leaf.fork_position
            ids, lp, ent, why = next(suffixes)
            generated += len(ids)
            responses.append(root_tokens[root][:t] + list(ids))
            logprobs.append(torch.cat([root_logprobs[root][:t], lp]))
            entropies.append(torch.cat([root_entropies[root][:t], ent]))
            reasons.append(why)
        self.last_leaves = leaves
        self.last_stats = {"generated_tokens": float(generated),
                           "leaf_tokens": float(sum(len(r) for r in responses))}
        return self._assemble(prompt_token_ids, [leaf.prompt for leaf in leaves], responses, logprobs, entropies,
                              reasons)
