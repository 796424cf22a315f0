"""The engine ``preference_replay``: offline preference rows (task ``preferences``) played through the RL loop
(DPO, Direct Preference Optimization, arXiv 2305.18290). Registered when ``entropo.algorithms.preferences`` is
imported (the tasks package cannot import engines: circular imports)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from entropo.registry import register
from entropo.rollout.episodes import assemble, single_action_episode
from entropo.rollout.hf import HFEngine
from entropo.types import RolloutOutput


@register("engine", "preference_replay", paper="offline DPO data replay (DPO, arXiv 2305.18290)")
class PreferenceReplayEngine(HFEngine):
    """Training rollouts replay each example's ``meta["chosen"]`` and ``meta["rejected"]`` as its rows: with
    ``rollout.n`` = 2 one of each (chosen first); a larger n repeats them (row k is the chosen response for even k).
    The environment verdict is correct / wrong, so the ``preference_pairs`` producer (source ``verifier``) links
    them. Responses are the tokenizer's encoding of the text plus EOS, cut to ``max_new_tokens``; when the example
    carries token ids (``meta["prompt_ids"]``/``["chosen_ids"]``/``["rejected_ids"]``, task ``preferences`` reads
    them from the file's id columns) those ids are replayed as they are (cut to ``max_new_tokens`` too). When every
    example carries ``meta["label_smoothing"]`` (a per-pair smoothing column), it goes to ``Batch.extras`` (constant
    along each row), where the ``dpo`` objective reads it per pair. Nothing is
    sampled, so the behaviour log-probs are not the policy's (the trainer scores the rows). Evaluation
    (``generate``) samples from the policy like ``hf``."""

    @property
    def records_policy_logprobs(self) -> bool:
        return False

    def rollout(self, examples: Sequence[Any], n: int, **sampling: Any) -> RolloutOutput:
        if n < 2:
            raise ValueError(f"engine preference_replay replays a chosen and a rejected response per prompt: set "
                             f"rollout.n=2 (got {n})")
        max_new = int(sampling.get("max_new_tokens", 64))
        episodes, index = [], []
        for p, ex in enumerate(examples):
            if "chosen" not in ex.meta or "rejected" not in ex.meta:
                raise ValueError("engine preference_replay needs examples with meta chosen/rejected: use task "
                                 "'preferences'")
            has_ids = "chosen_ids" in ex.meta and "rejected_ids" in ex.meta
            prompt_ids = list(ex.meta["prompt_ids"]) if "prompt_ids" in ex.meta else self.encode_prompt(ex.prompt)
            pair = ((ex.meta["chosen"], True, "chosen_ids"), (ex.meta["rejected"], False, "rejected_ids"))
            for text, good, ids_key in (pair[k % 2] for k in range(n)):
                if has_ids:  # token ids recorded when the responses were sampled: replayed exactly, EOS included
                    ids = [int(t) for t in ex.meta[ids_key]]
                else:
                    ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + self.eos_token_ids[:1]
                ended = not has_ids or (bool(ids) and ids[-1] in self.eos_token_ids)
                reason = "eos" if len(ids) <= max_new and ended else "length"
                ids = ids[:max_new]
                zeros = torch.zeros(len(ids))
                ep = single_action_episode(prompt_ids, ids, zeros, zeros, reason, text)
                ep.info.env_correct = good
                episodes.append(ep)
                index.append(p)
        out = assemble(episodes, index, self.pad_token_id,
                       lambda rows: self.tokenizer.batch_decode(rows, skip_special_tokens=True))
        out.payloads = list(examples)
        if examples and all("label_smoothing" in ex.meta for ex in examples):  # per-pair DPO smoothing → Batch.extras
            eps = torch.tensor([float(examples[int(p)].meta["label_smoothing"]) for p in index])
            out.extras["label_smoothing"] = eps[:, None].expand_as(out.response_mask).contiguous()
        return out
