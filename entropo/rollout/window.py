"""Windowed rollouts with successive batching, the rollout side of T-PPO (Truncated Proximal Policy Optimization,
Fan et al., arXiv 2506.15050).

``hf_window`` generates at most ``window`` new tokens per row per training step. A row that ends (EOS, stop string,
or the recipe's ``max_new_tokens`` in total) leaves with its outcome; a row that used its whole window without ending
is returned as ``"partial"`` and carried over: the next training rollout re-prefills its prompt + the tokens written
so far with the *current* policy and continues it, beside the newly sampled prompts. This lets the update start
before the longest response of a batch is finished.

Token layout of a returned row: ``[left pad | prompt | earlier windows | this window | right pad]``.
``response_mask`` covers only *this window's* tokens, so the policy loss, the entropy/KL terms and every diagnostic
see each token exactly once, in the step that generated it (T-PPO's selective filtering: prompt and already-trained
tokens are masked). ``extras["generated_mask"]`` covers every generated token of the row (earlier windows too): the
value head of ``gae`` fits its targets on whole finished responses with it.

The paper's exact window length and batch-refill policy are not public (no official code; spec §19 (c)); here the
batch of a step is the recipe's new prompts plus every carried row, and ``max_carried_rows`` bounds the carry-over.
Evaluation (``generate``) always completes responses. Stop strings are checked within a window only, so one that
straddles a window boundary is missed (it still ends at EOS or the budget).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from entropo.envs.base import EnvFactory, require_single_turn
from entropo.registry import register
from entropo.rollout.hf import HFEngine, check_sampling_args, default_generator
from entropo.types import Example, RolloutOutput


@dataclass
class CarriedRow:
    """An unfinished response waiting for its next window."""

    group: int  # rows sampled from the same prompt in the same step share it (their group in later batches)
    payload: Any  # the caller's Example
    prompt_ids: list[int]
    generated_ids: list[int] = field(default_factory=list)


@register("engine", "hf_window", paper="T-PPO, Truncated Proximal Policy Optimization (Fan et al.), arXiv 2506.15050")
class HFWindowEngine(HFEngine):
    """``hf`` sampling, but training rollouts advance each response by at most ``window`` tokens per step."""

    def __init__(self, model, tokenizer, *, chat_template: str | bool = "auto", max_batch_size: int = 64,
                 window: int = 16, max_carried_rows: int = 1024):
        super().__init__(model, tokenizer, chat_template=chat_template, max_batch_size=max_batch_size)
        if window < 1:
            raise ValueError(f"rollout.engine_params.window must be >= 1, got {window}")
        if max_carried_rows < 0:
            raise ValueError(f"rollout.engine_params.max_carried_rows must be >= 0, got {max_carried_rows}")
        self.window = window
        self.max_carried_rows = max_carried_rows
        self.carried: list[CarriedRow] = []
        self.next_group = 0

    @torch.no_grad()
    def rollout(self, examples: Sequence[Any], n: int, *, temperature: float = 1.0, top_p: float = 1.0,
                max_new_tokens: int = 64, stop: Sequence[str] = (), generator: torch.Generator | None = None,
                environment: EnvFactory | None = None, env_seed: int = 0, limits: Any = None) -> RolloutOutput:
        """Continue every carried row and start ``n`` rows per new example, each by at most ``window`` tokens.
        Single-turn only (an episode never spans steps in multi-turn environments)."""
        del env_seed, limits
        require_single_turn(self, environment)
        stop = check_sampling_args(n, temperature, top_p, max_new_tokens, stop)
        device = next(self.model.parameters()).device
        generator = generator if generator is not None else default_generator(device)
        fresh = []
        for example in examples:
            prompt_ids = self.encode_prompt(example.prompt)
            fresh += [CarriedRow(self.next_group, example, prompt_ids) for _ in range(n)]
            self.next_group += 1
        rows = self.carried + fresh
        if not rows:
            raise ValueError("hf_window.rollout: no new examples and no unfinished rows to continue")

        # Rows with the same remaining budget decode together (at most two budgets: the window, and the tail of
        # max_new_tokens when it is not a multiple of the window); order within the batch stays carried-first.
        budgets = [min(self.window, max_new_tokens - len(r.generated_ids)) for r in rows]
        new_ids: list[list[int]] = [[] for _ in rows]
        new_lp: list[torch.Tensor] = [torch.zeros(0)] * len(rows)
        new_ent: list[torch.Tensor] = [torch.zeros(0)] * len(rows)
        reasons = [""] * len(rows)
        for budget in sorted(set(budgets)):
            members = [i for i, b in enumerate(budgets) if b == budget]
            for start in range(0, len(members), self.max_batch_size):
                chunk = members[start:start + self.max_batch_size]
                ids, lps, ents, why = self._generate_micro_batch(
                    [rows[i].prompt_ids + rows[i].generated_ids for i in chunk], temperature, top_p, budget, stop,
                    generator, device)
                for j, i in enumerate(chunk):
                    new_ids[i], new_lp[i], new_ent[i], reasons[i] = ids[j], lps[j], ents[j], why[j]

        finish_reasons = []
        for i, row in enumerate(rows):
            done_total = len(row.generated_ids) + len(new_ids[i])
            if reasons[i] == "length" and done_total < max_new_tokens:
                finish_reasons.append("partial")  # used its window without ending: continue next step
            else:
                finish_reasons.append(reasons[i])
        out = self._assemble_windows(rows, new_ids, new_lp, new_ent, finish_reasons)

        carried = [CarriedRow(r.group, r.payload, r.prompt_ids, r.generated_ids + new_ids[i])
                   for i, r in enumerate(rows) if finish_reasons[i] == "partial"]
        if len(carried) > self.max_carried_rows:
            raise RuntimeError(
                f"hf_window would carry {len(carried)} unfinished rows (> max_carried_rows={self.max_carried_rows}); "
                f"raise rollout.engine_params.window or max_carried_rows, or lower rollout.max_new_tokens")
        self.carried = carried
        return out

    def _assemble_windows(self, rows: list[CarriedRow], new_ids, new_lp, new_ent, finish_reasons) -> RolloutOutput:
        # Lay out prompt + earlier windows as the "prompt" part, then mark the earlier windows as generated.
        first_of_group: dict[int, CarriedRow] = {}
        for r in rows:
            first_of_group.setdefault(r.group, r)
        groups = list(first_of_group)  # in order of first appearance
        slot_of = {g: s for s, g in enumerate(groups)}
        contexts = [r.prompt_ids + r.generated_ids for r in rows]
        out = self._assemble(contexts, list(range(len(rows))), new_ids, new_lp, new_ent, finish_reasons)
        generated_mask = out.response_mask.clone()
        context_end = max(len(c) for c in contexts)  # contexts are right-aligned at this column
        for i, r in enumerate(rows):
            if r.generated_ids:
                generated_mask[i, context_end - len(r.generated_ids): context_end] = 1.0
        payloads = [first_of_group[g].payload for g in groups]
        full_texts = self.tokenizer.batch_decode([r.generated_ids + new_ids[i] for i, r in enumerate(rows)],
                                                 skip_special_tokens=True)
        out.prompt_index = torch.tensor([slot_of[r.group] for r in rows], dtype=torch.long)
        out.payloads = payloads
        out.completions = full_texts  # rewards judge the whole response, not just this window
        for episode, text in zip(out.episodes, full_texts):
            episode.final_action, episode.actions = text, [text]
        out.num_tokens = [len(r.generated_ids) + len(new_ids[i]) for i, r in enumerate(rows)]
        out.extras = {"generated_mask": generated_mask}
        return out

    def state_dict(self) -> dict[str, Any]:
        # plain data only (checkpoints load with weights_only=True): an Example payload becomes a tagged dict
        carried = [{**vars(r), "payload": {"example": asdict(r.payload)} if isinstance(r.payload, Example)
                    else r.payload} for r in self.carried]
        return {"carried": carried, "next_group": self.next_group}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def payload(p: Any) -> Any:
            return Example(**p["example"]) if isinstance(p, dict) and set(p) == {"example"} else p

        self.carried = [CarriedRow(**{**r, "payload": payload(r["payload"])}) for r in state.get("carried", [])]
        self.next_group = int(state.get("next_group", 0))
