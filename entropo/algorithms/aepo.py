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

Realisation in entropo: a stateful ``producer`` (entropo/components.py). After the step's rows are sampled, rewarded
and selected, it samples the first prompts again at T through ``ctx.sample`` (the loop's own episodes and rewards,
new group ids), computes their advantages with a fresh instance of the run's estimator on those rows alone (as the
official code does), keeps the first s rows with advantage > ``threshold`` and returns them with
``Batch.fixed_advantage = 1``. The trainer stacks them under the batch; its one scoring pass gives them old
log-probs/entropy at ``rollout.temperature`` (re-scored: the engine's records are at T), old_token_fns outputs and
reference log-probs like every row; the advantage phase puts 1 on every response token of theirs and keeps them out
of the estimator and its statistics. The objective, regularizers, prepare hooks and diagnostics see
the mixed batch. Choices:
- ``mix="add"`` (default) adds the s rows and keeps every main-batch row (their group advantages intact);
  ``mix="replace"`` is the official code's replacement of the first s main rows: they are returned as
  ``Produced.displaced`` and removed before scoring. This replacement breaks those rows' groups either way; here the
  rest of such a group gets advantages from the estimator on the rows that remain, where the official code computes
  them on the full group before replacing.
- H_cur is state: the mean token entropy of the previous step's mixed batch under the pre-update policy, read from
  that step's metrics in ``update`` (``entropy_source="entropy"``: ``entropy/mean``, the full-distribution entropy
  ``old_entropy``; ``"neg_logprob"``: ``entropy/neg_logprob_mean``, the mean −log π of the sampled tokens, the sample
  estimate the official ``actor/entropy_loss`` is). On the very first step there is no previous value: the main rows'
  behaviour entropy (the sampling distribution's, equal to the pre-update policy's when the engine records exact
  log-probs at the training temperature) is used; the official code starts from 0, i.e. always T_high first.
- at least one prompt is resampled (``max(1, floor(P · prompt_fraction))``), so tiny batches still get the term.
"""

from __future__ import annotations

from typing import Any

import torch

from entropo import ops
from entropo.batch import Batch
from entropo.components import Bound, Produced, RolloutContext
from entropo.registry import register

ENTROPY_METRIC = {"entropy": "entropy/mean", "neg_logprob": "entropy/neg_logprob_mean"}  # the trainer's diagnostics


def choose_temperature(h_cur: float, target: float, t_high: float, t_low: float) -> float:
    """T_high when entropy is at or below the target (raise it), T_low above (lower it)."""
    return t_high if h_cur <= target else t_low


def reinforce_count(num_successes: int, max_samples: int, below_target: bool) -> int:
    """s = min(N_R, #successes), halved (floor) when entropy is above the target. Example (tests/test_aepo.py):
    27 successes, N_R = 60: below -> 27, above -> 13."""
    s = min(max_samples, num_successes)
    return s if below_target else s // 2


def behaviour_entropy(batch: Batch, source: str) -> float:
    """The batch's mean over response tokens of the sampling distribution's entropy ("entropy") or of the sampled
    tokens' −log-prob ("neg_logprob"), as the engine recorded them."""
    values = batch.behaviour_entropy if source == "entropy" else -batch.behaviour_logprobs
    return float(ops.masked_mean(values, batch.response_mask))


def first_prompts(batch: Batch, fraction: float) -> list[Any]:
    """The examples of the first max(1, floor(G * fraction)) groups, in batch order."""
    firsts: dict[int, int] = {}
    for row, gid in enumerate(batch.group_ids.tolist()):
        firsts.setdefault(gid, row)
    count = max(1, int(len(firsts) * fraction))
    return [batch.info["sample"][row].example for row in list(firsts.values())[:count]]


@register("producer", "aepo", paper="Arbitrary Entropy Policy Optimization (AEPO), arXiv 2510.08141")
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
        if entropy_source not in ENTROPY_METRIC:
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

    def update(self, metrics: dict[str, Any]) -> None:
        """H_cur for the next step: this step's mixed batch under the pre-update policy (absent: no batch trained)."""
        value = metrics.get(ENTROPY_METRIC[self.entropy_source])
        if value is not None:
            self.h_cur = float(value)

    def __call__(self, batch: Batch, ctx: RolloutContext) -> Produced:
        recipe = ctx.recipe
        h_cur = self.h_cur if self.h_cur is not None else behaviour_entropy(batch, self.entropy_source)
        below = h_cur <= self.target_entropy
        temperature = choose_temperature(h_cur, self.target_entropy, self.temperature_high, self.temperature_low)

        extra = ctx.sample(first_prompts(batch, self.prompt_fraction), recipe.rollout.n, temperature)
        # the run's estimator, fresh, on the resampled rows alone (the official code's compute_advantage on them)
        estimator = Bound("advantage", recipe.advantage.name, recipe.advantage.params)
        out = estimator(extra, step_ctx=ctx)
        advantages = out[0] if isinstance(out, tuple) else out
        row_advantage = ops.masked_mean(advantages, extra.response_mask, dim=-1)  # [E]
        successes = (row_advantage > self.threshold).nonzero().flatten()
        s = reinforce_count(int(successes.numel()), self.max_samples, below)
        chosen = extra.select(successes[:s].cpu())
        chosen.fixed_advantage = torch.ones(chosen.size, device=chosen.response_mask.device)  # REINFORCE, reward 1
        if batch.token_rewards is not None and chosen.token_rewards is None:
            chosen.token_rewards = torch.zeros_like(chosen.response_mask)
        displaced = list(range(min(s, batch.size))) if self.mix == "replace" else []
        return Produced(rows=chosen, displaced=displaced, metrics={
            "h_cur": h_cur,
            "temperature": temperature,
            "successes": float(successes.numel()),
            "rows": float(s),
            "extra_accuracy": float(extra.correct.float().mean()),
            "main_behaviour_entropy": behaviour_entropy(batch, "entropy"),
            "extra_tokens": float(extra.response_mask.sum()),
        })
