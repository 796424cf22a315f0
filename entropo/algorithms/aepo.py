"""AEPO: hold the policy entropy at a target by REINFORCE on successes sampled at a controlled temperature.

Paper: "Arbitrary Entropy Policy Optimization" (AEPO), arXiv 2510.08141. Official code: 597358816/AEPO
(EasyR1/verl), ``verl/trainer/ray_trainer.py`` (``fit``, branch ``algorithm == "AEPO"``, ``_select_by_advantage``)
and ``verl/trainer/config.py`` (``temperature_high=1.2``, ``temperature_low=0.8``, ``entropy_base=0.5``,
``reinforce_sample_num=60``).

Verified in the official code (latest stored commit of ``ray_trainer.py``), per training step:
  1. T = temperature_high if H_cur <= H* (``entropy_base``) else temperature_low, where H_cur is the entropy the
     previous update logged;
  2. the first quarter of the step's prompts (``len // 4``) is sampled again, n responses each, at temperature T;
     they are rewarded and get advantages from the run's own estimator (GRPO);
  3. responses with advantage > 0.05 (signed, not absolute: the successes of mixed groups) are kept and their
     advantage is set to 1 (REINFORCE with reward 1, no baseline);
  4. s = min(N_R, #kept) if H_cur <= H*, else floor(min(N_R, #kept) / 2); the first s kept rows *replace* the first s
     rows of the main batch;
  5. old log-probs are recomputed on the mixed batch at the training temperature, then the usual update runs.
An older commit re-sampled all prompts instead of a quarter; the fraction is the ``prompt_fraction`` param here.

Realisation in entropo: a stateful ``shaping`` component at stage "advantage". It runs after the trainer's old-policy
scoring pass and advantage estimator, so the rows it adds are scored with ``step_ctx.score`` — the loop's own pass
(old log-probs and entropy at ``rollout.temperature``, old_token_fns outputs, reference log-probs) — get advantage 1
on every response token, and are stacked onto the batch with ``Batch.concat``; the batch object is updated in place
(all of its fields are replaced by those of the mixed batch), because shaping returns metrics, not a new batch. The
objective, regularizers, prepare hooks and diagnostics then see the mixed batch. Choices:
- ``mix="add"`` (default) appends the s rows and keeps every main-batch row (their group advantages intact);
  ``mix="replace"`` is the official code's replacement of the first s main rows (which breaks those groups; spec
  §4 (g)). Either way α (the weight of the REINFORCE term) is implicit: s rows among the batch.
- H_cur is state: the mean token entropy of the previous step's mixed batch under the pre-update policy, computed
  here once the batch is mixed (``entropy_source="entropy"``: full-distribution entropy ``old_entropy``;
  ``"neg_logprob"``: mean −log π of the sampled tokens, the sample estimate the official ``actor/entropy_loss`` is).
  On the very first step there is no previous value: the current batch's estimate is used (the official code starts
  from 0, i.e. always T_high first).
- at least one prompt is resampled (``max(1, floor(P · prompt_fraction))``), so tiny batches still get the term.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from entropo import ops
from entropo.batch import Batch
from entropo.components import Bound
from entropo.registry import register


def choose_temperature(h_cur: float, target: float, t_high: float, t_low: float) -> float:
    """T_high when entropy is at or below the target (raise it), T_low above (lower it)."""
    return t_high if h_cur <= target else t_low


def reinforce_count(num_successes: int, max_samples: int, below_target: bool) -> int:
    """s = min(N_R, #successes), halved (floor) when entropy is above the target. Spec toy: 27 successes, N_R = 60:
    below -> 27, above -> 13."""
    s = min(max_samples, num_successes)
    return s if below_target else s // 2


def mean_token_entropy(batch: Batch, source: str) -> float:
    """The batch's mean over response tokens of old_entropy ("entropy") or of -old_logprobs ("neg_logprob")."""
    values = batch.old_entropy if source == "entropy" else -batch.old_logprobs
    return float(ops.masked_mean(values, batch.response_mask))


def replace_contents(batch: Batch, new: Batch) -> None:
    """Make ``batch`` hold ``new``'s rows (in place, so the trainer's reference sees them)."""
    for f in dataclasses.fields(Batch):
        setattr(batch, f.name, getattr(new, f.name))


def first_prompts(batch: Batch, fraction: float) -> list[Any]:
    """The examples of the first max(1, floor(G * fraction)) groups, in batch order."""
    firsts: dict[int, int] = {}
    for row, gid in enumerate(batch.group_ids.tolist()):
        firsts.setdefault(gid, row)
    count = max(1, int(len(firsts) * fraction))
    return [batch.info["sample"][row].example for row in list(firsts.values())[:count]]


@register("shaping", "aepo", paper="Arbitrary Entropy Policy Optimization (AEPO), arXiv 2510.08141",
          stage="advantage")
class AEPO:
    """Entropy controller + REINFORCE rows from temperature-T resampling (see the module docstring).

    Params: ``target_entropy`` H* (0.5), ``temperature_high`` (1.2), ``temperature_low`` (0.8), ``max_samples`` N_R
    (60), ``prompt_fraction`` (0.25), ``threshold`` (0.05, on the per-row advantage), ``mix`` ("add" | "replace"),
    ``entropy_source`` ("entropy" | "neg_logprob"). State: ``h_cur`` (checkpointed)."""

    def __init__(self, target_entropy: float = 0.5, temperature_high: float = 1.2, temperature_low: float = 0.8,
                 max_samples: int = 60, prompt_fraction: float = 0.25, threshold: float = 0.05, mix: str = "add",
                 entropy_source: str = "entropy"):
        if mix not in ("add", "replace"):
            raise ValueError(f"aepo: mix must be 'add' or 'replace', got {mix!r}")
        if entropy_source not in ("entropy", "neg_logprob"):
            raise ValueError(f"aepo: entropy_source must be 'entropy' or 'neg_logprob', got {entropy_source!r}")
        if not 0 < prompt_fraction <= 1 or max_samples < 0 or min(temperature_high, temperature_low) <= 0:
            raise ValueError("aepo: need 0 < prompt_fraction <= 1, max_samples >= 0 and positive temperatures")
        self.target_entropy, self.temperature_high, self.temperature_low = target_entropy, temperature_high, \
            temperature_low
        self.max_samples, self.prompt_fraction, self.threshold = int(max_samples), prompt_fraction, threshold
        self.mix, self.entropy_source = mix, entropy_source
        self.h_cur: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"h_cur": self.h_cur}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h_cur = state["h_cur"]

    def __call__(self, batch: Batch, step_ctx) -> dict[str, float]:
        recipe = step_ctx.recipe
        h_cur = self.h_cur if self.h_cur is not None else mean_token_entropy(batch, self.entropy_source)
        below = h_cur <= self.target_entropy
        temperature = choose_temperature(h_cur, self.target_entropy, self.temperature_high, self.temperature_low)

        extra, stats = step_ctx.sample(first_prompts(batch, self.prompt_fraction), recipe.rollout.n, temperature)
        step_ctx.score(extra)  # the loop's own scoring pass: old log-probs/entropy, extras, reference log-probs
        estimator = Bound("advantage", recipe.advantage.name, recipe.advantage.params)
        row_advantage = ops.masked_mean(estimator(extra, step_ctx=step_ctx), extra.response_mask, dim=-1)  # [E]
        successes = (row_advantage > self.threshold).nonzero().flatten()
        s = reinforce_count(int(successes.numel()), self.max_samples, below)
        chosen = extra.select(successes[:s].cpu())
        chosen.advantages = ops.broadcast_to_tokens(torch.ones(chosen.size, device=chosen.response_mask.device),
                                                    chosen.response_mask)
        if batch.token_rewards is not None:
            chosen.token_rewards = torch.zeros_like(chosen.response_mask)
        main_entropy = mean_token_entropy(batch, "entropy")
        if s > 0:
            main = batch.select(list(range(min(s, batch.size), batch.size))) if self.mix == "replace" else batch
            replace_contents(batch, Batch.concat([chosen, main]) if main.size else chosen)
        self.h_cur = mean_token_entropy(batch, self.entropy_source)
        return {
            "aepo_h_cur": h_cur,
            "aepo_temperature": temperature,
            "aepo_successes": float(successes.numel()),
            "aepo_rows": float(s),
            "aepo_extra_accuracy": float(extra.correct.float().mean()),
            "aepo_entropy_main": main_entropy,
            "aepo_extra_tokens": stats["tokens"],
        }
