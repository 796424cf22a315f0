"""Critique-GRPO: refine wrong answers from natural-language critiques and learn from the refinements off-policy.

Paper: "Critique-GRPO: Advancing LLM Reasoning with Natural Language and Numerical Feedback", arXiv 2506.03106.
Official code checked: zhangxy-2019/critique-GRPO, ``verl/verl/critique_grpo/critique_core_algos.py``
(``compute_token_on_off_policy_loss``).

Verified in the official loss (the shaped off-policy term):
- tokens of the refinement rows (``prefix_mask``) get the loss −A·f(π_θ) with f(p) = p/(p + γ) of the *current*
  policy's token probability, no importance ratio and no clipping (``off_policy_reshape="p_div_p_0.1"``, γ = 0.1).
  Its gradient w.r.t. the log-prob is −A·γp/(p + γ)², largest at p = γ: low-probability (unfamiliar) tokens of a
  refinement are amplified, near-certain tokens barely move;
- the other tokens get the usual PPO term −A·ρ, clipped unless ``loss_remove_clip`` (the paper's scripts remove it;
  here ``remove_clip``, default False so normal rows equal ``ppo_clip`` exactly);
- advantages are those of the mixed group (7 initial + 1 refinement), r − mean without std (the recipe uses
  ``dr_grpo``). Example (tests/test_critique_grpo.py): initial rewards [0,0,0,0,0,0,1] + a correct refinement → mean
  0.25, refinement A = +0.75, wrong initials −0.25.

Realisation in entropo:
- ``producer`` component ``critique_refine`` (entropo/components.py): it runs at rollout time, once the step's rows
  are sampled, rewarded and selected, so the refinements are in their groups *before* the advantage estimator runs
  (their rewards enter the group mean). For each group it takes the wrong responses (at most ``refine_per_group``,
  in batch order), asks a critic for a critique of each, builds a refinement prompt (chat: the original messages +
  the wrong answer as the assistant turn + the critique and an instruction as a user turn; plain text:
  ``text_template``), samples one refinement per pair with ``ctx.engine.generate`` (the loop's rollout generator, so
  runs stay deterministic), rewards it with ``ctx.rewards.score`` and keeps per group the first correct refinement,
  else the highest-scoring one (``keep="best"``, the official ``process_refinement_groups`` rule; an incorrect best
  is still inserted, as in the official code), or all of them (``keep="all"``). Kept rows are *returned* with their
  group's id (the paper replaces one of the 8 slots; adding keeps every on-policy sample's statistics and avoids
  choosing a slot) and ``Batch.off_policy = True``; the trainer stacks them under the batch and its one scoring pass
  gives them old log-probs/entropy under the original prompt, like every row. The objective reads the marker.
- Which prompt a refinement is trained under: the ORIGINAL question. The paper's objective is the likelihood of the
  refined response y' under π_θ(·|q) — the critique is a teacher signal that is not available at test time, so the
  refinement is treated as an off-policy demonstration for q (the official code inserts the refinement as a response
  of the original prompt and marks it with ``prefix_mask``). That is why its tokens get f(π_θ) rather than an
  importance ratio: they were sampled from π(·|q, y, critique), not from π(·|q). The rows are rebuilt as
  [original prompt | refinement tokens]; their ``behaviour_logprobs`` stay those of the critique-conditioned sampling
  (so the scoring pass recomputes the old log-probs under q).
- Critics are plain functions ``critic(sample, correct) -> str`` in ``CRITICS`` (``register_critic``), selected by the
  ``critique`` param: "binary" ("The answer X is incorrect.") or "ground_truth" (adds "The correct answer is Y.", the
  paper's "simple_gt"); a "module:function" path plugs in any other callable (e.g. a model critic later).
- objective ``critique_grpo``: ``ppo_clip`` on normal rows + −A·f(π_θ) on refinement rows (``micro_batch.off_policy``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.answers import final_answer
from entropo.algorithms.objectives import (
    clipped_surrogate,
    importance_ratio,
    ratio_metrics,
)
from entropo.batch import Batch
from entropo.components import Produced, RolloutContext
from entropo.registry import register
from entropo.trainer import build_batch
from entropo.types import Example, RolloutOutput, Sample

# ---- critics ---------------------------------------------------------------------------------------------------------

Critic = Callable[[Sample, bool], str]
CRITICS: dict[str, Critic] = {}


def register_critic(name: str) -> Callable[[Critic], Critic]:
    """Decorator adding a critic ``fn(sample, correct) -> critique text`` under ``name``."""

    def deco(fn: Critic) -> Critic:
        CRITICS[name] = fn
        return fn

    return deco


def _stated_answer(sample: Sample) -> str:
    answer = final_answer(sample)
    return answer if answer is not None else sample.completion.strip() or "(empty)"


@register_critic("binary")
def binary_critique(sample: Sample, correct: bool) -> str:
    """Correctness only (the paper's "simple" critique)."""
    return f"The answer {_stated_answer(sample)} is {'correct' if correct else 'incorrect'}."


@register_critic("ground_truth")
def ground_truth_critique(sample: Sample, correct: bool) -> str:
    """Correctness plus the reference answer (the paper's "simple_gt" critique)."""
    return f"{binary_critique(sample, correct)} The correct answer is {sample.example.answer}."


def resolve_critic(name: str) -> Critic:
    """A registered critic name, or a "module:function" path to any callable with the critic signature."""
    if name in CRITICS:
        return CRITICS[name]
    if ":" in name:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    raise ValueError(f"critique_refine: unknown critique {name!r}; known: {sorted(CRITICS)} or 'module:function'")


# ---- refinement prompts and rows -------------------------------------------------------------------------------------

DEFAULT_TEXT_TEMPLATE = "{prompt}{response}\n{critique}\n{prompt}"
DEFAULT_CHAT_INSTRUCTION = "Using this critique, solve the original problem again and give the corrected answer."


def refinement_prompt(example: Example, response: str, critique: str, text_template: str = DEFAULT_TEXT_TEMPLATE,
                      chat_instruction: str = DEFAULT_CHAT_INSTRUCTION) -> str | list[dict[str, str]]:
    """(prompt, wrong response, critique) -> the prompt the policy refines from, in the prompt's own format."""
    if isinstance(example.prompt, list):
        return [*example.prompt, {"role": "assistant", "content": response},
                {"role": "user", "content": f"{critique}\n{chat_instruction}"}]
    return text_template.format(prompt=example.prompt, response=response, critique=critique)


def responses_under_prompts(refined: RolloutOutput, prompt_ids: list[list[int]], pad_id: int) -> RolloutOutput:
    """Re-lay the refinement tokens after the ORIGINAL prompts: [left pad | prompt | response | right pad].

    ``refined`` row r was sampled after a refinement prompt; ``prompt_ids[r]`` is the token ids of the question it
    is trained under. Behaviour log-probs/entropies (of the critique-conditioned sampling) travel with the tokens."""
    rows = refined.input_ids.shape[0]
    is_resp = refined.response_mask > 0
    prompt_width = max(len(p) for p in prompt_ids)
    width = prompt_width + max(refined.num_tokens, default=0)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    response_mask = torch.zeros((rows, width))
    logprobs = torch.zeros((rows, width))
    entropies = torch.zeros((rows, width))
    for r in range(rows):
        prompt, length = prompt_ids[r], refined.num_tokens[r]
        start = prompt_width - len(prompt)
        input_ids[r, start:prompt_width] = torch.tensor(prompt, dtype=torch.long)
        input_ids[r, prompt_width:prompt_width + length] = refined.input_ids[r][is_resp[r]]
        attention_mask[r, start:prompt_width + length] = 1
        response_mask[r, prompt_width:prompt_width + length] = 1.0
        logprobs[r, prompt_width:prompt_width + length] = refined.behaviour_logprobs[r][is_resp[r]].float()
        entropies[r, prompt_width:prompt_width + length] = refined.behaviour_entropy[r][is_resp[r]].float()
    return RolloutOutput(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                         behaviour_logprobs=logprobs, behaviour_entropy=entropies,
                         prompt_index=torch.arange(rows), completions=list(refined.completions),
                         num_tokens=list(refined.num_tokens), finish_reasons=list(refined.finish_reasons))


def refinement_candidates(batch: Batch, per_group: int | None) -> list[int]:
    """Rows of wrong responses to refine: per group, the first ``per_group`` wrong ones (all when None)."""
    taken: dict[int, int] = {}
    rows = []
    for row, (gid, correct) in enumerate(zip(batch.group_ids.tolist(), batch.correct.tolist())):
        if correct or (per_group is not None and taken.get(gid, 0) >= per_group):
            continue
        taken[gid] = taken.get(gid, 0) + 1
        rows.append(row)
    return rows


def choose_refinements(group_ids: list[int], rewards: list[float], correct: list[bool], keep: str) -> list[int]:
    """Indices of the refinements to insert: all, or per group the first correct one, else the highest reward
    (first on ties). Example: groups [5, 5, 7], rewards [0, 1, 0], correct [F, T, F] -> best: [1, 2]."""
    if keep == "all":
        return list(range(len(group_ids)))
    best: dict[int, int] = {}
    for i, gid in enumerate(group_ids):
        j = best.get(gid)
        if j is None or (correct[i] and not correct[j]) or (correct[i] == correct[j] and rewards[i] > rewards[j]):
            best[gid] = i
    return sorted(best.values())


@register("producer", "critique_refine",
          paper="Critique-GRPO: Advancing LLM Reasoning with Natural Language and Numerical Feedback, arXiv 2506.03106")
class CritiqueRefine:
    """Returns critique-guided refinements of wrong responses, in their groups (see the module docstring).

    Params: ``critique`` ("binary" | "ground_truth" | "module:function"), ``refine_per_group`` (wrong responses
    refined per group; None = all), ``keep`` ("best" | "all"), ``temperature`` (None = rollout temperature),
    ``text_template`` / ``chat_instruction`` (refinement prompt). No state across steps."""

    def __init__(self, critique: str = "ground_truth", refine_per_group: int | None = None, keep: str = "best",
                 temperature: float | None = None, text_template: str = DEFAULT_TEXT_TEMPLATE,
                 chat_instruction: str = DEFAULT_CHAT_INSTRUCTION):
        if keep not in ("best", "all"):
            raise ValueError(f"critique_refine: keep must be 'best' or 'all', got {keep!r}")
        if refine_per_group is not None and refine_per_group < 1:
            raise ValueError("critique_refine: refine_per_group must be >= 1 (or null for all wrong responses)")
        self.critic = resolve_critic(critique)
        self.refine_per_group, self.keep, self.temperature = refine_per_group, keep, temperature
        self.text_template, self.chat_instruction = text_template, chat_instruction

    def __call__(self, batch: Batch, ctx: RolloutContext) -> Produced:
        device = batch.response_mask.device
        rows = refinement_candidates(batch, self.refine_per_group)
        metrics = {"candidates": float(len(rows)), "refined_rows": 0.0, "refine_accuracy": 0.0,
                   "refined_correct": 0.0}
        if not rows:
            return Produced(metrics=metrics)
        samples = [batch.info["sample"][r] for r in rows]
        prompts = [refinement_prompt(s.example, s.completion, self.critic(s, False), self.text_template,
                                     self.chat_instruction) for s in samples]
        ro = ctx.recipe.rollout
        temperature = self.temperature if self.temperature is not None else ro.temperature
        refined = ctx.engine.generate(prompts, 1, temperature=temperature, top_p=ro.top_p,
                                      max_new_tokens=ro.max_new_tokens, stop=ro.stop,
                                      generator=ctx.rollout_generator)
        examples = [s.example for s in samples]
        new_samples = [Sample(completion=c, example=e, task=s.task, num_tokens=nt, max_tokens=ro.max_new_tokens,
                              truncated=(fr == "length"))
                       for c, e, s, nt, fr in zip(refined.completions, examples, samples, refined.num_tokens,
                                                  refined.finish_reasons)]
        scored = ctx.rewards.score(new_samples)
        group_ids = batch.group_ids[rows].tolist()
        chosen = choose_refinements(group_ids, scored.rewards, scored.correct, self.keep)
        metrics["refine_accuracy"] = float(sum(scored.correct)) / len(rows)

        prompt_ids = [ctx.engine.encode_prompt(e.prompt) for e in examples]
        relaid = responses_under_prompts(refined, prompt_ids, ctx.engine.pad_token_id)
        extra = build_batch(relaid, examples, new_samples, scored.rewards, scored.correct, 0, device,
                            reward_terms=scored.components)
        extra = extra.select(chosen)
        extra.group_ids = torch.tensor([group_ids[i] for i in chosen], dtype=torch.long, device=device)
        extra.off_policy = torch.ones(extra.size, dtype=torch.bool, device=device)
        if batch.token_rewards is not None:
            extra.token_rewards = torch.zeros_like(extra.response_mask)
        metrics["refined_rows"] = float(extra.size)
        metrics["refined_correct"] = float(extra.correct.sum())
        return Produced(rows=extra, metrics=metrics)


# ---- the objective ---------------------------------------------------------------------------------------------------

def shaping_value(prob: Tensor, gamma: float) -> Tensor:
    """f(p) = p / (p + γ). Examples (γ = 0.1): p = 0.01 -> 0.09091, 0.1 -> 0.5, 0.5 -> 0.83333, 0.9 -> 0.9."""
    return prob / (prob + gamma)


def refined_row_mask(micro_batch: Batch | None, like: Tensor) -> Tensor:
    """[B, 1] bool: the micro-batch's refinement rows (``off_policy``); none without a micro-batch."""
    if micro_batch is None:
        return torch.zeros(like.shape[0], 1, dtype=torch.bool, device=like.device)
    return micro_batch.off_policy.reshape(like.shape[0], 1).to(like.device)


@register("objective", "critique_grpo",
          paper="Critique-GRPO: Advancing LLM Reasoning with Natural Language and Numerical Feedback, arXiv 2506.03106")
def critique_grpo(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
                  clip_low: float = 0.2, clip_high: float = 0.2, gamma: float = 0.1, remove_clip: bool = False,
                  micro_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Normal rows: ``ppo_clip`` (−A·ρ unclipped with ``remove_clip``). Refinement rows (``micro_batch.off_policy``,
    set by the ``critique_refine`` producer): −A·f(π_θ), f(p) = p/(p + γ), whose gradient is −A·γp/(p + γ)²·∇log π_θ.
    Extra metrics: ``refined_token_frac``, ``refined_prob_mean`` (mean π_θ on refinement tokens)."""
    ratio = importance_ratio(logprobs, old_logprobs)
    on_policy = -advantages * ratio if remove_clip else clipped_surrogate(ratio, advantages, clip_low, clip_high)
    prob = torch.exp(logprobs)
    off_policy = -advantages * shaping_value(prob, gamma)
    refined = refined_row_mask(micro_batch, logprobs).expand_as(logprobs)
    loss = torch.where(refined, off_policy, on_policy)
    active = (mask > 0).float()
    refined_active = active * refined.float()
    # ratio_mean / approx_kl_old over all active tokens: a micro-batch may hold only refinement rows, and π_θ/π_old
    # is defined for them too (both under the original prompt); clip fractions count only the clipped (normal) rows
    # over all active tokens, so a refinement-only micro-batch reports 0 clipping
    metrics = ratio_metrics(ratio, logprobs, old_logprobs, advantages, active, clip_low, clip_high)
    clipped_rows = (~refined).float() * (0.0 if remove_clip else 1.0)
    normal_only = ratio_metrics(ratio, logprobs, old_logprobs, advantages * clipped_rows, active, clip_low, clip_high)
    metrics["clip_frac_low"], metrics["clip_frac_high"] = normal_only["clip_frac_low"], normal_only["clip_frac_high"]
    metrics["refined_token_frac"] = ops.masked_mean(refined.float(), active)
    metrics["refined_prob_mean"] = ops.masked_mean(prob.detach(), refined_active) if refined_active.sum() > 0 \
        else torch.zeros(())
    return loss, metrics
