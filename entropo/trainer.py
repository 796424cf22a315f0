"""The RL loop, as phases: setup -> per step (rollout -> score -> advantages -> update -> log/eval/checkpoint).

``train()`` reads top to bottom on one screen; each phase is a short named function over a ``Run`` (everything built
once at setup). Every method-specific piece is a registered component looked up by the recipe (entropo.registry), so
this file never branches on a method name. One RL step:

  1. ``rollout_phase``: the sampler picks prompts; the engine plays ``n`` episodes of each in the recipe's
     environment (a single-turn task is a one-turn episode: the same path); rewards score the outcomes; selection
     filters keep groups, refilling from new prompts up to ``rollout.max_tries`` rounds; then each producer returns
     rows to add (AEPO's temperature samples, Critique-GRPO's refinements), stacked under the batch;
  2. ``score_phase``: old log-probs/entropy of the policy before the update (reused from the engine on the rows where
     they are exact), and reference log-probs when a component needs them — for every row, produced ones included;
  3. ``advantage_phase``: reward-stage shaping, the advantage estimator (on the rows without a producer's fixed
     advantage), advantage-stage shaping, then each objective/regularizer's whole-batch ``prepare`` hook (batch-level
     token selection; entropo/components.py);
  4. ``update_phase``: the auxiliary slot first (learned auxiliaries such as ``gae``'s critic are fitted on the batch
     whose advantages they just served), then ``ppo_epochs`` x ``mini_batches`` optimizer steps, each accumulating
     gradients over micro-batches with the aggregation's denominators taken over the whole mini-batch (accumulation =
     one big batch); then the engine's ``after_update`` hook (an out-of-process engine syncs weights there);
  5. ``finish_step``: diagnostics, controllers, periodic held-out eval, metrics.jsonl/TensorBoard, checkpoint.
See docs/architecture.md for the data flow.
"""

from __future__ import annotations

import contextlib
import dataclasses

import math
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from entropo import checkpoint as ckpt
from entropo import diagnostics as diag
from entropo import distributed, guards, heap, models, ops, preflight, recipe_diff, registry, runlock
from entropo.batch import Batch
from entropo.distributed import Dist
from entropo.config import ConfigError, Recipe, check_components
from entropo.logging import MetricsLogger, NullLogger, Progress
from entropo.components import Auxiliary, Bound, Produced, RolloutContext, StepContext, merged_token_fns
from entropo.rewards.runner import RewardRunner
from entropo.samplers import PromptSampler  # noqa: F401  (re-exported: the default sampler)
from entropo.envs.base import EnvFactory, SingleTurn
from entropo.rollout.episodes import EpisodeLimits
from entropo.types import EpisodeInfo, Example, RolloutOutput, Sample, TokenContext


# ---- small pieces the loop uses ------------------------------------------------------------------------------------

@dataclass
class Regularizer:
    """A regularizer component with its coefficient (fixed, or set each step by a controller)."""

    component: Bound
    coef: float
    controller: Any | None = None

    @property
    def name(self) -> str:
        return self.component.name

    def value(self) -> float:
        return self.controller.value() if self.controller is not None else self.coef


@dataclass
class RunState:
    """Loop state that is neither model nor optimizer; saved in every checkpoint."""

    step: int = 0  # RL steps completed
    next_group_id: int = 0
    prev_entropy: float | None = None
    eval_start: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # (entropy, accuracy) per step for the R(H) fit


def make_optimizer(model, cfg, lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, fused when ``cfg.fused`` (and the parameters' device supports it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(lr=cfg.lr if lr is None else lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.fused:
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except RuntimeError:  # a device/dtype without a fused kernel
            pass
    return torch.optim.AdamW(params, foreach=True, **kw)


def resolve_auto_micro_batch(recipe: Recipe, model, engine, task, probe_prompts: int = 64) -> Recipe:
    """The recipe with ``train.micro_batch_size`` set from the activation budget, for the longest row expected:
    the longest of the first ``probe_prompts`` training prompts plus ``rollout.max_new_tokens``."""
    from entropo.memory import auto_micro_batch_size

    count = min(probe_prompts, task.train_size())
    longest_prompt = max(len(engine.encode_prompt(task.train_example(i).prompt)) for i in range(count))
    rows = auto_micro_batch_size(model.config, budget_mb=recipe.train.activation_memory_mb,
                                 row_tokens=longest_prompt + recipe.rollout.max_new_tokens,
                                 checkpointing=recipe.train.activation_checkpointing is True)
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"micro_batch_size": rows})})


def enable_activation_checkpointing(model) -> None:
    """Per-layer activation recomputation (transformers >= 5.x name, with the older name as fallback)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def training_state_mb(model, optimizer) -> float:
    """This process's bytes of trainable weights and AdamW state (a sharded parameter counts its local shard): what
    ``train.distributed=fsdp`` divides by the number of processes (gradients are freed after each update)."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    params = [local(p) for p in model.parameters() if p.requires_grad]
    state = [local(v) for st in optimizer.state.values() for v in st.values()
             if isinstance(v, torch.Tensor) and v.dim() > 0]
    return sum(t.numel() * t.element_size() for t in params + state) / 2**20


def lr_lambda(cfg_opt, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak LR at optimizer step s: linear warm-up, then constant/linear/cosine decay."""

    def f(s: int) -> float:
        if s < cfg_opt.warmup_steps:
            return (s + 1) / cfg_opt.warmup_steps
        if cfg_opt.schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg_opt.warmup_steps)
        progress = min(1.0, (s - cfg_opt.warmup_steps) / span)
        lo = cfg_opt.min_lr_ratio
        if cfg_opt.schedule == "linear":
            return lo + (1 - lo) * (1 - progress)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@torch.no_grad()
def score_tokens(model, batch: Batch, *, temperature: float, micro_batch_size: int, chunk_size: int,
                 token_fns: dict[str, Callable] | None = None):
    """Log-probs, entropies ([B,L] each) and any per-token functionals ({name: [B,L]}) of the response tokens under
    ``model``, with no grad, micro-batched."""
    shape = tuple(batch.input_ids.shape)
    logprobs = torch.zeros(shape, dtype=torch.float32, device=batch.input_ids.device)
    entropy = torch.zeros_like(logprobs)
    extras = {k: torch.zeros_like(logprobs) for k in (token_fns or {})}
    for rows, mb in batch.split_by_length(micro_batch_size):
        rows = rows.to(logprobs.device)
        lp, ent, ex = ops.token_logprobs_and_entropy(
            model, mb.input_ids, mb.attention_mask, chunk_size=chunk_size, temperature=temperature,
            compute_mask=mb.response_mask, token_fns=token_fns or {},
        )
        logprobs[rows], entropy[rows] = lp.float(), ent.float()
        for k, v in ex.items():
            extras[k][rows] = v.float()
    return logprobs, entropy, extras


def build_batch(rollout: RolloutOutput, examples: list[Example], samples: list[Sample], rewards: list[float],
                correct: list[bool], first_group_id: int, device: torch.device,
                behaviour_temperature: float | None = None,
                reward_terms: dict[str, list[float]] | None = None) -> Batch:
    """Turn engine output + rewards into a Batch; rows of prompt slot p share group id first_group_id + p."""
    idx = rollout.prompt_index.tolist()
    episodes = rollout.episodes or [EpisodeInfo(num_turns=1) for _ in idx]
    return Batch(
        input_ids=rollout.input_ids.to(device),
        attention_mask=rollout.attention_mask.to(device),
        response_mask=rollout.response_mask.float().to(device),
        rewards=torch.tensor(rewards, dtype=torch.float32, device=device),
        group_ids=(rollout.prompt_index + first_group_id).long().to(device),
        behaviour_logprobs=rollout.behaviour_logprobs.float().to(device),
        behaviour_entropy=rollout.behaviour_entropy.float().to(device),
        token_rewards=rollout.token_rewards.float().to(device) if rollout.token_rewards is not None else None,
        turn_ids=(rollout.turn_ids if rollout.turn_ids is not None else single_turn_ids(rollout.response_mask)).to(device),
        finished=torch.tensor(rollout.finished, dtype=torch.bool, device=device),
        correct=torch.tensor(correct, dtype=torch.bool, device=device),
        num_turns=torch.tensor([e.num_turns for e in episodes], dtype=torch.long, device=device),
        tool_calls=torch.tensor([e.tool_calls for e in episodes], dtype=torch.long, device=device),
        reward_terms={k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in (reward_terms or {}).items()},
        extras={k: v.to(device) for k, v in rollout.extras.items()},
        info={
            "completion": list(rollout.completions),
            "answer": [examples[i].answer for i in idx],
            "finish_reason": list(rollout.finish_reasons),
            "num_tokens": list(rollout.num_tokens),
            "sample": list(samples),
            # the temperature at which behaviour_logprobs are the policy's own log-probs (None: constrained sampling)
            "behaviour_temperature": [behaviour_temperature] * len(samples),
        },
    )


def single_turn_ids(response_mask: Tensor) -> Tensor:
    """Turn ids of rows that are one turn each: 0 on the response, -1 elsewhere."""
    return torch.where(response_mask > 0, 0, -1).long()


def assign_advantages(advantage: Bound, batch: Batch, step_ctx: StepContext) -> dict[str, float]:
    """Set ``batch.advantages``: the estimator's on the rows it decides (``Batch.estimated``), a producer's
    ``fixed_advantage`` on every response token of the others. The estimator sees only its own rows, so fixed rows
    never enter its group or batch statistics. It may also return metrics (``gae``: value statistics)."""
    estimated = batch.estimated
    advantages = ops.broadcast_to_tokens(batch.fixed_advantage.nan_to_num(0.0), batch.response_mask)
    metrics: dict[str, float] = {}
    if bool(estimated.any()):
        out = advantage(batch.where(estimated), step_ctx=step_ctx)
        values, metrics = out if isinstance(out, tuple) else (out, {})
        advantages[estimated] = values.to(advantages.dtype)
    batch.advantages = advantages
    return {f"advantage/{k}": v for k, v in metrics.items()}


def accumulate_gradients(model, mini: Batch, recipe: Recipe, objective: Bound, regs: list[Regularizer],
                         whole: Batch | None = None, dist: Dist | None = None) -> dict[str, float]:
    """Forward/backward one optimizer mini-batch in micro-batches; gradients equal one full-batch backward.

    The aggregation denominators (token count, sequence count) are those of the whole mini-batch, so the sum of the
    micro-batch losses is exactly the mini-batch loss (tests/test_trainer.py checks this for every mode). In a
    data-parallel run ``mini`` is this process's share of the rows of ``whole`` (the global mini-batch, whose
    denominators every process uses) and the metrics are summed over processes (entropo/distributed.py).

    An objective registered with ``level="pair"`` (pairwise preference losses) returns a per-row loss [B] instead of
    a per-token one (each comparison's loss on one of its rows); it is summed and divided by the number of
    comparisons in the whole mini-batch (``Batch.num_comparisons``), so accumulation is exact for it too.
    """
    agg = recipe.aggregation
    dist = dist or Dist()
    whole = whole if whole is not None else mini
    norm_length = agg.norm_length or recipe.rollout.max_new_tokens
    total_tokens = whole.response_mask.sum()
    total_seqs = (whole.response_mask.sum(-1) > 0).sum()
    pair_level = objective.meta.get("level") == "pair"
    total_pairs = max(whole.num_comparisons(), 1) if pair_level else 0
    token_fns = merged_token_fns([objective] + [r.component for r in regs])
    sums: dict[str, float] = {}
    weight_total = 0.0
    pg_loss_sum = total_loss_sum = 0.0  # micro-batch losses add up to the mini-batch loss
    seq_log_ratio_sum = 0.0  # sum over rows of each row's summed log(pi / pi_old) on its response tokens
    plan = None
    if recipe.train.activation_checkpointing == "auto":  # which layers recompute: decided per micro-batch shape
        from entropo.memory import CheckpointPlan

        plan = CheckpointPlan(model, recipe.train.activation_memory_mb)
    micros = [micro for _rows, micro in mini.split_by_length(recipe.train.micro_batch_size)
              if bool(micro.response_mask.any())]
    for _ in range(dist.lockstep_padding(len(micros))):  # sharded weights: every process runs as many passes
        logprobs, _entropy = ops.token_logprobs_and_entropy(model, whole.input_ids[:1], whole.attention_mask[:1],
                                                            compute_mask=whole.response_mask[:1])
        (logprobs.sum() * 0.0).backward()
    for micro in micros:
        n_tok = float(micro.response_mask.sum())
        if plan is not None:
            plan.apply(micro.attention_mask)
        logprobs, entropy, current = ops.token_logprobs_and_entropy(
            model, micro.input_ids, micro.attention_mask, chunk_size=recipe.train.logprob_chunk_size,
            temperature=recipe.rollout.temperature, compute_mask=micro.response_mask, token_fns=token_fns,
        )
        extras = {**micro.extras, **current}
        per_token_loss, metrics = objective(logprobs, micro.old_logprobs, micro.advantages, micro.token_weights,
                                            extras=extras, micro_batch=micro)
        denominators = dict(response_mask=micro.response_mask, total_tokens=total_tokens, total_seqs=total_seqs,
                            norm_length=norm_length)
        if pair_level:  # a per-row loss [B]: mean over the mini-batch's comparisons
            loss = per_token_loss.sum() / total_pairs
        else:
            loss = ops.aggregate(per_token_loss, micro.token_weights, agg.mode, **denominators)
        metrics = {f"actor/{k}": float(v) for k, v in metrics.items()}
        pg_loss_sum += float(loss.detach())
        seq_log_ratio_sum += float(((logprobs.detach() - micro.old_logprobs) * micro.response_mask).sum())
        ctx = TokenContext(logprobs=logprobs, entropy=entropy, old_logprobs=micro.old_logprobs,
                           ref_logprobs=micro.ref_logprobs, advantages=micro.advantages, mask=micro.token_weights,
                           batch=micro, extras=extras, aggregation=agg.mode, norm_length=norm_length)
        for reg in regs:
            reg_per_token, reg_metrics = reg.component(ctx)
            # Regularizers cover every response token: token_weights masks only the policy-gradient term.
            reg_loss = ops.aggregate(reg_per_token, micro.response_mask, agg.mode, **denominators)
            loss = loss + reg.value() * reg_loss
            metrics.update({f"reg/{reg.name}/{k}": float(v) for k, v in reg_metrics.items()})
        loss.backward()
        total_loss_sum += float(loss.detach())
        metrics["actor/entropy_current"] = diag.masked_mean(entropy.detach(), micro.response_mask)
        if plan is not None:
            metrics["actor/checkpointed_layers"] = float(plan.last)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v * n_tok
        weight_total += n_tok
    if dist.enabled:  # every process's share adds up to the global mini-batch
        parts = dist.all_gather_object((sums, weight_total, pg_loss_sum, total_loss_sum, seq_log_ratio_sum))
        sums = {}
        for part_sums, *_ in parts:
            for k, v in part_sums.items():
                sums[k] = sums.get(k, 0.0) + v
        weight_total, pg_loss_sum, total_loss_sum, seq_log_ratio_sum = (sum(p[i] for p in parts) for i in range(1, 5))
    if not weight_total:
        return {}
    out = {k: v / weight_total for k, v in sums.items()}
    out.update({"actor/pg_loss": pg_loss_sum, "actor/loss": total_loss_sum,
                # k1 KL(pi_old || pi) per trajectory: -mean over rows of the summed log importance weight
                "actor/kl_old_seq_k1": -seq_log_ratio_sum / max(float(total_seqs), 1.0)})
    return out


def process_rows(mini: Batch, dist: Dist) -> list[int]:
    """This process's rows of a mini-batch: every ``world``-th unit (a linked pair stays in one process)."""
    return sorted(r for unit in mini.units()[dist.rank::dist.world] for r in unit.tolist())


def policy_update(model, optimizer, scheduler, batch: Batch, recipe: Recipe, objective: Bound,
                  regs: list[Regularizer], generator: torch.Generator, early_stop: Any | None = None,
                  dist: Dist | None = None) -> dict[str, float]:
    """PPO-style epochs x mini-batches over one rollout batch; returns token-weighted mean metrics.

    ``early_stop`` (``train.early_stop``, e.g. ``kl_early_stop``): asked with each mini-batch's metrics after its
    backward pass; when ``stop_update`` is True that optimizer step is skipped and the remaining mini-batches and
    epochs of this RL step are not run. With ``dist`` (data-parallel), each process backpropagates every
    ``world``-th row of each mini-batch and the gradients are summed over processes before clipping and the step."""
    dist = dist or Dist()
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    count = skipped = 0
    stopped = False
    for _epoch in range(recipe.train.ppo_epochs):
        if stopped:
            break
        for rows in batch.shuffled_units(generator, recipe.train.mini_batches):  # linked pairs stay together
            mini = batch.select(rows)
            optimizer.zero_grad(set_to_none=True)
            mine = mini.select(process_rows(mini, dist)) if dist.enabled else mini
            metrics = accumulate_gradients(model, mine, recipe, objective, regs, whole=mini, dist=dist)
            if not metrics:
                continue
            dist.sync_grads(params)
            if early_stop is not None and early_stop.stop_update(metrics):
                optimizer.zero_grad(set_to_none=True)
                stopped = True
                break
            clip = recipe.train.grad_clip
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # sharded params
            if not guards.update_is_finite(optimizer, metrics.get("actor/loss"), grad_norm,
                                           recipe.train.max_nonfinite_steps):
                skipped += 1  # a NaN/inf loss or gradient: no step (see entropo/guards.py)
                continue
            optimizer.step()
            guards.check_weights(model, "after an optimizer update")
            scheduler.step()
            metrics["actor/grad_norm"] = float(grad_norm)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
    # the gradients are spent: freeing them now (the next update starts from None anyway) keeps them out of the
    # rollout and scoring phases' memory (e.g. while a mapped reference model is resident)
    optimizer.zero_grad(set_to_none=True)
    out = {k: v / count for k, v in sums.items()} if count else {}
    out["actor/lr"] = scheduler.get_last_lr()[0]
    out["actor/optimizer_steps"] = count
    out["actor/nonfinite_skipped"] = skipped
    if early_stop is not None:
        out["actor/early_stopped"] = float(stopped)
    return out


def episode_limits(recipe: Recipe) -> EpisodeLimits:
    ro = recipe.rollout
    return EpisodeLimits(max_turns=ro.max_turns, max_new_tokens=ro.max_new_tokens,
                         max_episode_tokens=ro.max_episode_tokens, max_observation_tokens=ro.max_observation_tokens,
                         strict_template=ro.strict_template)


def make_environment(recipe: Recipe) -> EnvFactory:
    spec, ro = recipe.environment, recipe.rollout
    cls = registry.get("environment", spec.name)
    if ro.env_backend == "ray" and cls is not SingleTurn:  # a plain completion has nothing to offload
        from entropo.envs.ray_pool import RayEnvFactory

        return RayEnvFactory(cls, dict(spec.params), workers=ro.env_ray_workers, address=ro.env_ray_address)
    return EnvFactory(cls, dict(spec.params))


def outcome_correct(task, rollout: RolloutOutput, examples: list[Example]) -> list[bool]:
    """Per row: the environment's verdict when it gave one, else the task verifier on the final action."""
    out = []
    for r, (p, text) in enumerate(zip(rollout.prompt_index.tolist(), rollout.completions)):
        verdict = rollout.episodes[r].env_correct if rollout.episodes else None
        if verdict is None:
            try:
                verdict = bool(task.correct(text, examples[p]))
            except Exception:  # a broken verifier marks the sample wrong, never kills the eval
                verdict = False
        out.append(bool(verdict))
    return out


def evaluate(engine, task, examples: list[Example], recipe: Recipe, seed: int,
             environment: EnvFactory | None = None) -> dict[str, float]:
    """pass@k on held-out prompts (greedy pass@1 when eval.temperature == 0), episodes played as in training."""
    ev, ro = recipe.eval, recipe.rollout
    environment = environment or make_environment(recipe)
    n = ev.n if ev.temperature > 0 else 1
    gen = torch.Generator(device=next(engine.model.parameters()).device).manual_seed(seed)
    out = engine.generate(list(examples), n, temperature=ev.temperature, top_p=ro.top_p,
                          max_new_tokens=ro.max_new_tokens, stop=ro.stop, generator=gen, environment=environment,
                          env_seed=seed * 1_000_003, limits=episode_limits(recipe))
    correct = outcome_correct(task, out, list(examples))
    per_prompt = np.array(correct, dtype=float).reshape(len(examples), n)
    res = {}
    for k in ev.k if ev.temperature > 0 else [1]:
        res[f"pass@{k}"] = float(np.mean([diag.pass_at_k(n, int(c), k) for c in per_prompt.sum(1)]))
    res["accuracy"] = float(per_prompt.mean())
    if not environment.single_turn:
        res["turns_mean"] = float(np.mean([e.num_turns for e in out.episodes]))
        res["tool_calls_mean"] = float(np.mean([e.tool_calls for e in out.episodes]))
    return res


# ---- the run --------------------------------------------------------------------------------------------------------

def make_task(spec, seed: int, eval_size: int, where: str):
    """Build a task; a bad parameter or a missing dataset column becomes one ConfigError naming the field."""
    try:
        return registry.get("task", spec.name)(seed=seed, eval_size=eval_size, **spec.params)
    except (TypeError, ValueError, KeyError, FileNotFoundError) as e:
        raise ConfigError(f"{where} ({spec.name}): {e}") from e


def run_dir_for(recipe: Recipe, run_dir: str | Path | None = None) -> Path:
    if run_dir is not None:
        return Path(run_dir)
    return Path(recipe.logging.output_dir) / (recipe.logging.run_name or recipe.name)


def rollout_batch(engine, task, rewards: RewardRunner, recipe: Recipe, examples: list[Example], n: int,
                  temperature: float, generator: torch.Generator, first_group_id: int, device: torch.device,
                  environment: EnvFactory | None = None, env_seed: int = 0) -> tuple[Batch, dict[str, Any]]:
    """Play n episodes per example, score them, and return the Batch plus timing/token counts.

    ``stats["groups"]`` is the number of group ids used (the engine may add slots for rows it carried over).
    Unfinished rows (from engines that continue responses in later steps) have no outcome yet: reward 0, not
    correct, and the reward functions never see them. ``stats["episodes"]`` holds the rows' ``EpisodeInfo``.
    """
    t0 = time.perf_counter()
    rollout = engine.rollout(examples, n, temperature=temperature, top_p=recipe.rollout.top_p,
                             max_new_tokens=recipe.rollout.max_new_tokens, stop=recipe.rollout.stop,
                             generator=generator, environment=environment or make_environment(recipe),
                             env_seed=env_seed, limits=episode_limits(recipe))
    t_rollout = time.perf_counter() - t0
    t0 = time.perf_counter()
    slots = rollout.payloads if rollout.payloads is not None else list(examples)
    episodes = rollout.episodes or [None] * len(rollout.completions)
    transcripts = rollout.transcripts or list(rollout.completions)
    samples = [Sample(completion=c, example=slots[p], task=task, num_tokens=nt,
                      max_tokens=recipe.rollout.max_new_tokens, truncated=fr in ("length", "budget"),
                      episode=ep, transcript=tx)
               for c, p, nt, fr, ep, tx in zip(rollout.completions, rollout.prompt_index.tolist(), rollout.num_tokens,
                                               rollout.finish_reasons, episodes, transcripts)]
    finished = [r for r, done in enumerate(rollout.finished) if done]
    scored = rewards.score([samples[r] for r in finished])
    reward_list, correct = [0.0] * len(samples), [False] * len(samples)
    terms = {k: [0.0] * len(samples) for k in scored.components}
    for j, (r, value, ok) in enumerate(zip(finished, scored.rewards, scored.correct)):
        verdict = episodes[r].env_correct if episodes[r] is not None else None
        reward_list[r], correct[r] = value, ok if verdict is None else verdict
        for k, values in scored.components.items():
            terms[k][r] = values[j]
    t_reward = time.perf_counter() - t0
    exact = recipe.rollout.top_p == 1.0 and getattr(engine, "records_policy_logprobs", False)
    batch = build_batch(rollout, slots, samples, reward_list, correct, first_group_id, device,
                        behaviour_temperature=temperature if exact else None, reward_terms=terms)
    stats = {"rollout_s": t_rollout, "reward_s": t_reward, "tokens": float(rollout.response_mask.sum()),
             "failures": float(sum(f is not None for f in scored.failures)), "groups": len(slots),
             "episodes": [e for e in episodes if e is not None]}
    return batch, stats


def batch_to_wire(batch: Batch) -> Batch:
    """The batch as it travels between processes: on the CPU, samples without their task (re-attached on arrival)."""
    out = batch.to("cpu")
    if "sample" in out.info:
        out.info["sample"] = [dataclasses.replace(x, task=None) for x in out.info["sample"]]
    return out


def batch_from_wire(batch: Batch, task: Any, device: torch.device) -> Batch:
    out = batch.to(device)
    if "sample" in out.info:
        out.info["sample"] = [dataclasses.replace(x, task=task) for x in out.info["sample"]]
    return out


@dataclass
class Run:
    """Everything ``setup`` builds once: what the phases of every step read and update."""

    recipe: Recipe
    out_dir: Path
    device: torch.device
    model: Any
    tokenizer: Any
    task: Any
    eval_examples: list[Example]
    engine: Any
    environment: EnvFactory
    rewards: RewardRunner
    advantage: Bound
    objective: Bound
    shapers: list[Bound]
    selectors: list[Bound]
    producers: list[Bound]
    regs: list[Regularizer]
    components: list[Bound]
    auxiliaries: list[Auxiliary]
    sampler: Any
    rollout_gen: torch.Generator
    update_gen: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: RunState
    logger: MetricsLogger
    ref_model: Any = None
    # the scope in which ref_model computes the reference (LoRA: the policy itself with its adapters off)
    ref_scope: Callable[[], Any] = contextlib.nullcontext
    lora: Any = None  # entropo.models.lora.LoRA when model.lora is set
    old_token_fns: dict[str, Callable] = field(default_factory=dict)
    early_stop: Any = None  # train.early_stop: a controller whose stop_update ends a step's update early
    dist: Dist = field(default_factory=Dist)  # this process's rank/world and its rollout shards
    # with rollout.shards > 1: each owned shard's own generator (rollout_gen then serves components and producers,
    # identically in every process)
    shard_gens: dict[int, torch.Generator] = field(default_factory=dict)
    snapshot: Any = None  # PolicySnapshot when a component needs_snapshot (INPO's previous iterate)

    def sample(self, examples: list[Example], n: int, temperature: float) -> tuple[Batch, dict[str, Any]]:
        """Play and score n episodes per example as the loop does (group ids continue the run's numbering)."""
        batch, stats = self.sample_chunk(examples, n, temperature, self.rollout_gen, self.state.next_group_id)
        self.state.next_group_id += stats.pop("groups")
        return batch, stats

    def sample_chunk(self, examples: list[Example], n: int, temperature: float, generator: torch.Generator,
                     first_group_id: int) -> tuple[Batch, dict[str, Any]]:
        env_seed = self.recipe.seed * 1_000_000_007 + first_group_id * n
        return rollout_batch(self.engine, self.task, self.rewards, self.recipe, examples, n, temperature, generator,
                             first_group_id, self.device, environment=self.environment, env_seed=env_seed)

    def sample_sharded(self, examples: list[Example], n: int, temperature: float) -> tuple[Batch, dict[str, Any]]:
        """``sample`` over ``rollout.shards`` contiguous chunks of the prompts, each with its shard's generator; in
        a data-parallel run each process samples its own shards and the rows are gathered (shard order)."""
        if self.dist.shards == 1:
            return self.sample(examples, n, temperature)
        chunks = distributed.split_evenly(examples, self.dist.shards)
        starts = np.cumsum([0] + [len(c) for c in chunks]).tolist()
        # an engine that keeps statistics of its rollouts (agentic_aepo's budget) hands each shard's sums over with
        # the shard's rows, so every process ends up with the statistics of the global batch
        stat_sums = getattr(self.engine, "pop_stat_sums", None)
        local = []
        for shard in self.dist.own_shards():
            if not chunks[shard]:
                continue
            batch, stats = self.sample_chunk(chunks[shard], n, temperature, self.shard_gens[shard],
                                             self.state.next_group_id + starts[shard])
            if stats.pop("groups") != len(chunks[shard]):
                raise ConfigError(f"rollout.engine={self.recipe.rollout.engine}: the engine carries rows over between "
                                  f"steps, which sharded rollouts do not support; set rollout.shards=1 and "
                                  f"train.distributed=none")
            stats["engine_stat_sums"] = stat_sums() if callable(stat_sums) else {}
            local.append((shard, batch_to_wire(batch), stats))
        parts = sorted((p for rank_parts in self.dist.all_gather_object(local) for p in rank_parts),
                       key=lambda p: p[0])
        if callable(stat_sums):
            for _, _, part_stats in parts:
                self.engine.add_stat_sums(part_stats["engine_stat_sums"])
        self.state.next_group_id += len(examples)
        batch = Batch.concat([batch_from_wire(b, self.task, self.device) for _, b, _ in parts])
        stats: dict[str, Any] = {k: sum(p[2][k] for p in parts) for k in ("tokens", "failures")}
        for k in ("rollout_s", "reward_s"):  # wall time: the slowest process
            stats[k] = self.dist.max_float(sum(p[2][k] for p in local))
        stats["episodes"] = [e for p in parts for e in p[2]["episodes"]]
        return batch, stats

    def step_ctx(self, step: int) -> StepContext:
        return StepContext(model=self.model, tokenizer=self.tokenizer, engine=self.engine, task=self.task,
                           rewards=self.rewards, recipe=self.recipe, step=step, rollout_generator=self.rollout_gen,
                           device=self.device)

    def rollout_ctx(self, step_ctx: StepContext) -> RolloutContext:
        """The producers' context: the step context plus ``sample``, the loop's own episodes and rewards."""
        return RolloutContext.of(step_ctx, lambda examples, n, temperature: self.sample(examples, n, temperature)[0])


@runlock.holding_run_dir(lambda recipe, run_dir=None, **_: run_dir_for(recipe, run_dir))  # one run per run dir
def train(recipe: Recipe, *, run_dir: str | Path | None = None, resume: bool = False,
          stop_after: int | None = None, console: Callable[[str], None] = print,
          deadline: float | None = None) -> dict[str, Any]:
    """Run a recipe end to end. ``stop_after`` ends the process-local loop early (to test resume); ``deadline`` (a
    ``time.time()`` value) ends it at the first checkpoint written at or after that time, so a ``--resume`` goes on
    from there with nothing lost."""
    if distributed.launched_rank() != 0:  # a data-parallel run speaks through rank 0
        console = lambda *_a, **_k: None  # noqa: E731
    run = setup(recipe, run_dir, resume, console)
    progress = Progress(run.recipe.train.steps, run.state.step,
                        enabled=run.recipe.logging.progress and run.dist.is_main)
    start_step = run.state.step
    for step in range(start_step, run.recipe.train.steps):
        if stop_after is not None and step >= start_step + stop_after:
            break
        t_step = time.perf_counter()
        run.model.eval()  # no dropout while sampling and scoring
        ctx = run.step_ctx(step)
        # sharded weights (train.distributed=fsdp) are gathered for the passes that do not train; no-op otherwise
        with run.dist.gathered(run.model, run.ref_model):
            if run.snapshot is not None:
                run.snapshot.refresh(run.model, step)  # the previous iterate, every train.snapshot_every steps
            batch, metrics = rollout_phase(run, ctx)
            if batch is not None:
                metrics["time/score_s"] = timed(score_phase, run, batch)
                metrics.update(advantage_phase(run, batch, ctx))
                metrics.update(fit_auxiliaries(run, batch, ctx))
        if batch is not None:
            metrics.update(update_phase(run, batch, ctx))
            metrics.update(batch_diagnostics(run, batch))
        finish_step(run, step, metrics, t_step)
        progress.update(step, metrics)
        every = run.recipe.checkpoint.every
        if (deadline is not None and every and run.state.step % every == 0 and time.time() >= deadline
                and run.state.step < run.recipe.train.steps):
            console(f"deadline reached: stopped after the checkpoint of step {run.state.step}; --resume continues")
            break
    progress.close()
    return finish_run(run)


def timed(fn: Callable[..., Any], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# ---- phase 0: set-up ------------------------------------------------------------------------------------------------

def setup(recipe: Recipe, run_dir: str | Path | None, resume: bool, console: Callable[[str], None]) -> Run:
    """Build (or restore from the latest checkpoint) everything the loop needs."""
    check_components(recipe)
    try:
        dist = distributed.init(recipe.train.distributed, recipe.rollout.shards)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out_dir = run_dir_for(recipe, run_dir)
    if dist.is_main:  # rank 0 alone writes to the run directory
        ckpt.remove_stale_tmp(out_dir)
    latest, saved = ckpt.resume_point(out_dir, warn=console) if resume else (None, None)  # newest that verifies
    if resume and latest is None:
        console(f"--resume: no checkpoint in {out_dir}; starting from scratch")
    if not resume and (out_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose another "
                              f"--run-dir / logging.run_name")
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        recipe_diff.check_and_write(out_dir, recipe, saved, latest, console)  # refuses a resume that changes the run

    seed_everything(recipe.seed)
    # freed activations leave the process (glibc would keep them); the threshold trades page faults for memory
    heap.return_freed_memory(heap.threshold_for(recipe.train.malloc_mmap_threshold, recipe.model.lora is not None))
    device = distributed.device_for(dist)
    model, tokenizer = load_model(recipe, device)
    distributed.connect(dist, recipe.train.dist_timeout_s)
    if dist.sharded:
        for what, refused in (("model.lora", recipe.model.lora is not None),
                              ("train.snapshot_every (a policy snapshot)", recipe.needs_snapshot())):
            if refused:
                raise ConfigError(f"train.distributed=fsdp does not support {what} yet; use train.distributed=ddp")
        try:
            model = dist.shard(model)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    lora = None
    if recipe.model.lora is not None:
        from entropo.models.lora import LoRA

        try:
            lora = LoRA(model, recipe.model.lora)  # before the optimizer: it sees only the adapters as trainable
        except ValueError as e:
            raise ConfigError(str(e)) from None
    task = make_task(recipe.task, recipe.seed, recipe.task.eval_size, "task")
    engine = registry.get("engine", recipe.rollout.engine)(model, tokenizer, chat_template=recipe.rollout.chat_template,
                                                           max_batch_size=recipe.rollout.max_batch_size,
                                                           **recipe.rollout.engine_params)
    if dist.sharded and not getattr(engine, "supports_sharded_policy", True):
        raise ConfigError(f"rollout.engine={recipe.rollout.engine} reads the policy's weights out of process, which "
                          f"train.distributed=fsdp does not support yet; use train.distributed=ddp")
    eval_examples = task.eval_examples()[: recipe.eval.max_prompts]
    preflight.check_prompt_lengths(engine, task, eval_examples,
                                   recipe.rollout.max_episode_tokens or recipe.rollout.max_new_tokens)
    if recipe.train.micro_batch_size == "auto":
        recipe = resolve_auto_micro_batch(recipe, model, engine, task)
        console(f"train.micro_batch_size=auto -> {recipe.train.micro_batch_size} rows "
                f"(activation budget {recipe.train.activation_memory_mb:.0f} MB)")
    advantage = Bound("advantage", recipe.advantage.name, recipe.advantage.params)
    objective = Bound("objective", recipe.objective.name, recipe.objective.params)
    shapers = [Bound("shaping", c.name, c.params) for c in recipe.shaping]
    regs = [Regularizer(Bound("regularizer", r.name, r.params), r.coef,
                        registry.get("controller", r.controller.name)(**r.controller.params) if r.controller else None)
            for r in recipe.regularizers]
    selectors = [Bound("selection", c.name, c.params) for c in recipe.selection]
    producers = [Bound("producer", c.name, c.params) for c in recipe.producers]
    components = [advantage, objective, *shapers, *selectors, *producers, *(r.component for r in regs)]
    auxiliaries = [aux for c in components for aux in c.auxiliaries()]  # learned models beside the policy
    optimizer = make_optimizer(model, recipe.optimizer)
    total_opt_steps = recipe.train.steps * recipe.train.ppo_epochs * recipe.train.mini_batches
    run = Run(
        recipe=recipe, out_dir=out_dir, device=device, model=model, tokenizer=tokenizer, task=task,
        eval_examples=eval_examples, engine=engine,
        environment=make_environment(recipe),
        rewards=RewardRunner([r.model_dump() for r in recipe.rewards], timeout_s=recipe.reward_timeout_s,
                             isolation=recipe.reward_isolation, budget_s=recipe.reward_budget_s),
        advantage=advantage, objective=objective, shapers=shapers, selectors=selectors, producers=producers, regs=regs,
        components=components, auxiliaries=auxiliaries,
        sampler=registry.get("sampler", recipe.sampler.name)(task, recipe.seed, **recipe.sampler.params),
        rollout_gen=torch.Generator(device=device).manual_seed(recipe.seed + 1),  # on the sampling device
        update_gen=torch.Generator().manual_seed(recipe.seed + 2), optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe.optimizer, total_opt_steps)),
        state=RunState(),
        logger=MetricsLogger(out_dir, tensorboard=recipe.logging.tensorboard, wandb=recipe.logging.wandb,
                             mlflow=recipe.logging.mlflow, run_name=out_dir.name,
                             config=recipe.model_dump(mode="json")) if dist.is_main else NullLogger(),
        old_token_fns=merged_token_fns(components, "old_token_fns"),
        lora=lora,
        early_stop=(registry.get("controller", recipe.train.early_stop.name)(**recipe.train.early_stop.params)
                    if recipe.train.early_stop is not None else None),
        dist=dist,
        shard_gens={shard: torch.Generator(device=device).manual_seed(recipe.seed + 1 + SHARD_SEED_STRIDE * (shard + 1))
                    for shard in dist.own_shards()} if dist.shards > 1 else {},
    )
    if latest is not None:
        restore_checkpoint(run, saved)
        engine.after_update(model)  # an out-of-process engine takes the restored weights
        console(f"resumed from {latest} (step {run.state.step})")
    else:
        if recipe.warmup.steps > 0:
            from entropo.sft import warmup

            warm_task = task if recipe.warmup.task is None else make_task(recipe.warmup.task, recipe.seed,
                                                                          recipe.task.eval_size, "warmup.task")
            info = warmup(model, tokenizer, engine, warm_task, recipe.warmup, seed=recipe.seed,
                          environment=run.environment.local())
            console(f"SFT warm-up: {recipe.warmup.steps} steps, final loss {info['loss']:.3f}, {info['time']:.1f} s")
            engine.after_update(model)  # an out-of-process engine takes the warmed-up weights
            if lora is not None:  # the base becomes the RL starting policy (the reference); new adapters from 0
                lora.fold_in()
                if dist.is_main:
                    ckpt.atomic_torch_save(out_dir / LORA_BASE, lora.base_state_dict())
        with dist.gathered(model):
            if dist.is_main:  # the same weights in every process: rank 0 evaluates
                run.state.eval_start = evaluate(engine, task, run.eval_examples, recipe, recipe.seed + 3,
                                                run.environment)
    run.logger.truncate_after(run.state.step - 1)  # drop rows of steps this run will (re)do: each step is logged once
    if recipe.needs_snapshot():
        run.snapshot = PolicySnapshot(run.model, recipe.train.snapshot_every, recipe.model.dtype, run.device)
        if latest is not None and saved.get("snapshot") is not None:
            run.snapshot.load_state_dict(saved["snapshot"])
    run.ref_model = load_reference_model(run, fresh=latest is None)
    dist.barrier()  # rank 0 has prepared the run directory (recipe, reference, LoRA base) before anyone goes on
    if run.ref_model is not None and lora is not None and recipe.model.reference is None:
        run.ref_scope = lora.disabled  # (load_reference_model set a MappedReference's scope otherwise)
    return run


class PolicySnapshot:
    """A frozen copy of the policy, refreshed every ``every`` steps (at the start of steps 0, every, 2·every, ...):
    the previous iterate pi_t of iterative methods (INPO, arXiv 2407.00617). Its log-probs fill
    ``Batch.snapshot_logprobs`` in the score phase; its weights and the step they were taken at are checkpointed, so a
    resume in the middle of an iteration keeps the same pi_t."""

    def __init__(self, policy, every: int, dtype, device):
        self.every = int(every)
        self.model = models.load_reference(policy, dtype=dtype, device=device)
        self.taken_at = 0

    def refresh(self, policy, step: int) -> None:
        if step % self.every == 0 and step != self.taken_at:
            self.model.load_state_dict(policy.state_dict())
            self.taken_at = step

    def state_dict(self) -> dict[str, Any]:
        return {"taken_at": self.taken_at, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.taken_at = int(state["taken_at"])
        self.model.load_state_dict(state["model"])


LORA_BASE = "lora_base.pt"  # the base weights after a warm-up was folded in (a resume needs them)
SHARD_SEED_STRIDE = 7919  # rollout shard s samples with seed + 1 + stride * (s + 1); seed + 1 is rollout_gen's


def load_model(recipe: Recipe, device: torch.device):
    try:
        model, tokenizer = models.load(recipe.model.name_or_path, dtype=recipe.model.dtype,
                                       gguf_file=recipe.model.gguf_file, tiny_kwargs=recipe.model.tiny)
    except (OSError, ValueError, TypeError) as e:  # FileNotFoundError is an OSError
        raise ConfigError(f"model.name_or_path={recipe.model.name_or_path!r}: {e}") from e
    model.to(device)
    if recipe.train.threads is not None:
        torch.set_num_threads(recipe.train.threads)
    mode = recipe.train.activation_checkpointing
    if mode:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"train.activation_checkpointing={str(mode).lower()}: {type(model).__name__} does not "
                              f"support it; set it to false")
        # only active in train mode, i.e. in the update; sampling and scoring are unaffected
        enable_activation_checkpointing(model)
        if mode == "auto":  # installed on every layer; the update switches layers on per micro-batch
            from entropo.memory import checkpointable_layers

            for layer in checkpointable_layers(model):
                layer.gradient_checkpointing = False
    return model, tokenizer


def load_reference_model(run: Run, fresh: bool):
    """The frozen reference policy when a component needs one: ``model.reference``, or the policy at RL start
    (after any warm-up), kept on disk beside the run for resumes."""
    recipe = run.recipe
    if not recipe.needs_reference():
        return None
    if recipe.model.reference is not None:
        return models.load_reference(recipe.model.reference, dtype=recipe.model.dtype, device=run.device)
    if run.lora is not None:
        return run.model  # computed under run.ref_scope: the base with the adapters off, no second model
    ref_path = run.out_dir / "reference.pt"
    if run.dist.sharded:  # a fresh model of the same architecture, sharded like the policy
        state = (run.dist.full_state_dict(run.model, everywhere=True) if fresh
                 else torch.load(ref_path, map_location="cpu", weights_only=True))
        ref_model = models.load_reference(models.blank_like(run.model), dtype=recipe.model.dtype, device=run.device)
        ref_model.load_state_dict(state)
        if fresh and run.dist.is_main:
            ckpt.atomic_torch_save(ref_path, state)
        return run.dist.shard(ref_model)
    ref_model = models.load_reference(run.model, dtype=recipe.model.dtype, device=run.device)
    if fresh and run.dist.is_main:
        ckpt.atomic_torch_save(ref_path, run.model.state_dict())
    elif recipe.model.reference_resident:
        ref_model.load_state_dict(torch.load(ref_path, map_location="cpu", weights_only=True))
    if not recipe.model.reference_resident:
        run.ref_scope = MappedReference(ref_model, ref_path, run.device).scope
    return ref_model


class MappedReference:
    """``model.reference_resident: false``: the reference model's parameters are placeholders except inside
    ``scope()``, which memory-maps them from ``path`` (the file the resident reference is loaded from, so the values
    are identical) and drops the mapping on exit. Buffers (e.g. rotary frequencies) stay resident: they are not saved
    in a state dict of parameters alone."""

    def __init__(self, model, path: Path, device):
        self.model, self.path, self.device = model, Path(path), torch.device(device)
        self._release()

    def _release(self) -> None:  # each parameter becomes a storage-less (meta) tensor of the same shape and dtype
        for module in self.model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                module._parameters[name] = torch.nn.Parameter(torch.empty_like(param, device="meta"),
                                                              requires_grad=False)

    @contextlib.contextmanager
    def scope(self):
        state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        if self.device.type != "cpu":
            state = {k: v.to(self.device) for k, v in state.items()}
        params = {name for name, _ in self.model.named_parameters(remove_duplicate=False)}
        missing = params - set(state)
        if missing:
            raise RuntimeError(f"{self.path} lacks reference parameters {sorted(missing)[:3]}; delete it to start "
                               f"over, or set model.reference_resident=true")
        self.model.load_state_dict({k: v for k, v in state.items() if k in params}, strict=False, assign=True)
        del state
        try:
            yield
        finally:
            self._release()


# ---- phase 1: rollout ------------------------------------------------------------------------------------------------

def rollout_phase(run: Run, ctx: StepContext) -> tuple[Batch | None, dict[str, Any]]:
    """Episodes, rewards and selection, refilling from new prompts up to ``rollout.max_tries`` rounds.
    Returns the kept rows as one Batch (None when nothing was kept) and the step's outcome metrics."""
    ro = run.recipe.rollout
    kept: list[Batch] = []
    generated: list[Batch] = []
    episodes: list[EpisodeInfo] = []
    totals = {"rollout_s": 0.0, "reward_s": 0.0, "tokens": 0.0, "failures": 0.0}
    kept_groups, tries = 0, 0
    while kept_groups < ro.prompts_per_step and tries < ro.max_tries:
        tries += 1
        examples = [run.task.train_example(i) for i in run.sampler.next(ro.prompts_per_step - kept_groups)]
        batch, stats = run.sample_sharded(examples, ro.n, ro.temperature)
        episodes += stats.pop("episodes")
        totals = {k: totals[k] + stats[k] for k in totals}
        generated.append(batch)
        keep = torch.ones(batch.size, dtype=torch.bool, device=run.device)
        for select in run.selectors:
            keep &= select(batch, step_ctx=ctx).to(run.device)
        if keep.any():
            kept.append(batch.select(keep.nonzero().squeeze(-1).cpu()))
            kept_groups += int(torch.unique(batch.group_ids[keep]).numel())
    metrics = outcome_metrics(generated, kept, tries, totals)
    metrics.update(episode_metrics(episodes))
    if not kept:
        return None, metrics
    batch, produced = add_produced_rows(run, Batch.concat(kept), run.rollout_ctx(ctx))
    metrics.update(produced)
    if batch.size == 0:  # producers displaced every row (e.g. no preference pair could be formed)
        return None, metrics
    return batch, metrics


def add_produced_rows(run: Run, batch: Batch, ctx: RolloutContext) -> tuple[Batch, dict[str, float]]:
    """Each producer in turn sees the batch and returns rows to stack under it (and rows of it they displace)."""
    metrics: dict[str, float] = {}
    for producer in run.producers:
        out: Produced = producer(batch, ctx)
        metrics.update({f"producer/{producer.name}/{k}": v for k, v in out.metrics.items()})
        if out.displaced:
            displaced = set(out.displaced)
            batch = batch.select([r for r in range(batch.size) if r not in displaced])
        if out.rows is not None and out.rows.size:
            batch = Batch.concat([batch, out.rows.to(run.device)]) if batch.size else out.rows.to(run.device)
    return batch, metrics


def outcome_metrics(generated: list[Batch], kept: list[Batch], tries: int, totals: dict[str, float]) -> dict[str, Any]:
    """Reward/accuracy over finished responses (unfinished rows have no outcome yet), selection and length stats."""
    rewards = torch.cat([b.rewards for b in generated])
    finished = torch.cat([b.finished for b in generated])
    correct = torch.cat([b.correct for b in generated])[finished]
    finish = sum((b.info["finish_reason"] for b in generated), [])
    done_rewards = rewards[finished]
    return {
        "reward/mean": float(done_rewards.mean()) if done_rewards.numel() else float("nan"),
        "reward/std": float(done_rewards.std()) if done_rewards.numel() > 1 else 0.0,
        "accuracy": float(correct.float().mean()) if correct.numel() else float("nan"),
        "response/partial_frac": 1.0 - float(finished.float().mean()),
        "reward/failures": int(totals["failures"]),
        "selection/zero_variance_group_frac": diag.zero_variance_group_fraction(
            rewards, torch.cat([b.group_ids for b in generated])),
        "selection/dropped_frac": 1.0 - sum(b.size for b in kept) / rewards.numel(),
        "selection/rounds": tries,
        "response/length_mean": float(torch.cat([b.response_lengths for b in kept]).mean()) if kept else 0.0,
        "response/truncated_frac": float(np.mean([f in ("length", "budget") for f in finish])),
        "time/rollout_s": totals["rollout_s"], "time/reward_s": totals["reward_s"],
        "tokens_per_s": totals["tokens"] / max(totals["rollout_s"], 1e-9),
    }


def episode_metrics(episodes: list[EpisodeInfo]) -> dict[str, float]:
    """Turns, tool calls and token-exactness of the step's episodes (all rows, before selection). An episode whose
    context was rebuilt has one row per round, all with the same ``EpisodeInfo``: it counts once."""
    episodes = list({id(e): e for e in episodes}.values())
    if not episodes:
        return {}
    return {
        "episode/turns_mean": float(np.mean([e.num_turns for e in episodes])),
        "episode/tool_calls_mean": float(np.mean([e.tool_calls for e in episodes])),
        "episode/template_mismatch_frac": float(np.mean([e.template_mismatch > 0 for e in episodes])),
        "episode/env_errors": float(sum(e.env_error is not None for e in episodes)),
        "episode/truncated_observations": float(sum(e.truncated_observations for e in episodes)),
    }


# ---- phase 2: score --------------------------------------------------------------------------------------------------

def score_phase(run: Run, batch: Batch) -> None:
    """The pre-update pass: policy log-probs/entropy, old_token_fns outputs, reference log-probs."""
    recipe = run.recipe
    score_kw = dict(temperature=recipe.rollout.temperature, micro_batch_size=recipe.train.micro_batch_size,
                    chunk_size=recipe.train.logprob_chunk_size)
    # the engine sampled these rows from these very weights at this temperature: its records are the old policy
    temperatures = batch.info.get("behaviour_temperature", [None] * batch.size)
    reusable = recipe.train.old_logprobs != "recompute" and not run.old_token_fns
    redo = [r for r, t in enumerate(temperatures) if not (reusable and t == recipe.rollout.temperature)]
    batch.old_logprobs = batch.behaviour_logprobs.clone()
    batch.old_entropy = batch.behaviour_entropy.clone()
    if len(redo) == batch.size:
        batch.old_logprobs, batch.old_entropy, old_extras = score_sharded(run, run.model, batch,
                                                                          token_fns=run.old_token_fns, **score_kw)
        batch.extras.update(old_extras)
    elif redo:  # e.g. a producer's rows sampled at another temperature or under another prompt
        batch.old_logprobs[redo], batch.old_entropy[redo], _ = score_sharded(run, run.model, batch.select(redo),
                                                                             **score_kw)
    if run.ref_model is not None:
        with run.ref_scope():
            batch.ref_logprobs, _, _ = score_sharded(run, run.ref_model, batch, **score_kw)
    snapshot = getattr(run, "snapshot", None)  # the previous iterate (INPO); absent from partial test runs
    if snapshot is not None:
        batch.snapshot_logprobs, _, _ = score_sharded(run, snapshot.model, batch, **score_kw)


def score_sharded(run: Run, model, batch: Batch, **kw):
    """``score_tokens`` over the batch; in a data-parallel run each process scores every ``world``-th row and the
    results are gathered, so every process holds the whole batch's values."""
    dist = getattr(run, "dist", None)  # a partial run (tests build one from a namespace) is one process
    if dist is None or not dist.enabled:
        return score_tokens(model, batch, **kw)
    mine = list(range(dist.rank, batch.size, dist.world))
    part = None
    if mine:
        lp, ent, ex = score_tokens(model, batch.select(mine), **kw)
        part = (mine, lp.cpu(), ent.cpu(), {k: v.cpu() for k, v in ex.items()})
    logprobs = torch.zeros(tuple(batch.input_ids.shape), dtype=torch.float32, device=batch.input_ids.device)
    entropy = torch.zeros_like(logprobs)
    extras: dict[str, Tensor] = {k: torch.zeros_like(logprobs) for k in (kw.get("token_fns") or {})}
    for got in dist.all_gather_object(part):
        if got is None:
            continue
        rows, lp, ent, ex = got
        logprobs[rows], entropy[rows] = lp.to(logprobs.device), ent.to(logprobs.device)
        for k, v in ex.items():
            extras[k][rows] = v.to(logprobs.device)
    return logprobs, entropy, extras


# ---- phase 3: advantages ---------------------------------------------------------------------------------------------

def advantage_phase(run: Run, batch: Batch, ctx: StepContext) -> dict[str, Any]:
    """Reward-stage shaping, the estimator, the sampler's update, advantage-stage shaping, whole-batch prepare."""
    metrics: dict[str, Any] = {}
    for shaper in run.shapers:
        if shaper.stage == "reward":
            metrics.update({f"shaping/{k}": v for k, v in shaper(batch, step_ctx=ctx).items()})
    metrics.update(assign_advantages(run.advantage, batch, ctx))
    # curricula learn here, from the estimator's advantages (a producer's fixed ones say nothing about a prompt)
    metrics.update({f"sampler/{k}": v for k, v in run.sampler.update(batch.where(batch.estimated)).items()})
    for shaper in run.shapers:
        if shaper.stage == "advantage":
            metrics.update({f"shaping/{k}": v for k, v in shaper(batch, step_ctx=ctx).items()})
    for comp in (run.objective, *(r.component for r in run.regs)):
        batch.extras.update(comp.prepare(batch, run.update_gen))
    return metrics


# ---- phase 4: update -------------------------------------------------------------------------------------------------

def update_phase(run: Run, batch: Batch, ctx: StepContext) -> dict[str, Any]:
    """The policy's optimizer steps (the learned auxiliaries were fitted on this batch just before, by
    ``fit_auxiliaries``, while the policy's weights were still those the batch was scored with)."""
    run.model.train()
    t0 = time.perf_counter()
    metrics = policy_update(run.model, run.optimizer, run.scheduler, batch, run.recipe, run.objective, run.regs,
                             run.update_gen, early_stop=run.early_stop, dist=run.dist)
    elapsed = time.perf_counter() - t0
    run.engine.after_update(run.model)
    train_tokens = float(batch.attention_mask.sum()) * run.recipe.train.ppo_epochs
    metrics.update({"time/update_s": elapsed, "time/update_tokens_per_s": train_tokens / elapsed if elapsed else 0.0})
    return metrics


def fit_auxiliaries(run: Run, batch: Batch, ctx: StepContext) -> dict[str, float]:
    """Fit each learned auxiliary (``gae``'s critic) after its use in this step's advantages and before the policy
    moves, so it reads the same policy features its values were computed from."""
    metrics: dict[str, float] = {}
    for aux in run.auxiliaries:
        metrics.update({f"aux/{aux.name}/{k}": v for k, v in aux.fit(batch, ctx).items()})
    return metrics


def batch_diagnostics(run: Run, batch: Batch) -> dict[str, float]:
    """Entropy, its change, cov(log-prob, advantage), KLs and selection weight of the batch that was optimized."""
    mask = batch.response_mask
    entropy = diag.masked_mean(batch.old_entropy, mask)
    out = {
        "entropy/mean": entropy,
        "entropy/delta": entropy - run.state.prev_entropy if run.state.prev_entropy is not None else 0.0,
        "entropy/neg_logprob_mean": diag.masked_mean(-batch.old_logprobs, mask),  # sampled-token estimate
        "cov/logp_adv": diag.cov_logp_adv(batch.old_logprobs, batch.advantages, mask),
        "advantage/mean": diag.masked_mean(batch.advantages, mask),
        "advantage/abs_mean": diag.masked_mean(batch.advantages.abs(), mask),
        "kl/behaviour": diag.masked_mean(ops.kl(batch.old_logprobs, batch.behaviour_logprobs, "k3"), mask),
        "selection/token_weight_mean": diag.masked_mean(batch.token_weights, mask),
    }
    if batch.ref_logprobs is not None:
        out["kl/ref"] = diag.masked_mean(ops.kl(batch.old_logprobs, batch.ref_logprobs, "k3"), mask)
    for label, values in batch.reward_terms.items():
        out[f"reward/term/{label}"] = float(values[batch.finished].mean()) if bool(batch.finished.any()) else 0.0
    run.state.prev_entropy = entropy
    return out


# ---- phase 5: controllers, eval, log, checkpoint ---------------------------------------------------------------------

def finish_step(run: Run, step: int, metrics: dict[str, Any], t_step: float) -> None:
    recipe, state = run.recipe, run.state
    metrics.setdefault("actor/optimizer_steps", 0)
    metrics.setdefault("time/score_s", 0.0)
    metrics.setdefault("time/update_s", 0.0)
    metrics.setdefault("time/update_tokens_per_s", 0.0)
    short_names = {k.split("/")[-1]: v for k, v in metrics.items()}
    for reg in run.regs:
        metrics[f"reg/{reg.name}/coef"] = reg.value()
        if reg.controller is not None:
            reg.controller.update({**short_names, **metrics})
    for comp in run.components:
        comp.update(metrics)
    state.step = step + 1
    if recipe.eval.every and state.step % recipe.eval.every == 0 and state.step < recipe.train.steps:
        run.model.eval()
        with run.dist.gathered(run.model):
            if run.dist.is_main:  # the weights are the same in every process: rank 0 evaluates
                metrics.update({f"eval/{k}": v for k, v in evaluate(run.engine, run.task, run.eval_examples, recipe,
                                                                     recipe.seed + 3, run.environment).items()})
    metrics.update({"time/step_s": time.perf_counter() - t_step, "peak_mem_mb": peak_memory_mb(),
                    "memory/train_state_mb": training_state_mb(run.model, run.optimizer)})
    metrics.update(run.rewards.end_step())  # reward/budget_exhausted (with reward_budget_s); budgets renew per step
    if "entropy/mean" in metrics and not math.isnan(metrics["accuracy"]):
        state.history.append({"entropy": metrics["entropy/mean"], "accuracy": metrics["accuracy"]})
    run.logger.log(step, metrics)
    every = recipe.checkpoint.every
    if (every and state.step % every == 0) or state.step == recipe.train.steps:
        save_checkpoint(run)


def finish_run(run: Run) -> dict[str, Any]:
    """Final held-out eval, the HF model folder, the R(H) fit and plots; returns the run's summary (rank 0 does
    all of it in a data-parallel run)."""
    recipe, state = run.recipe, run.state
    summary: dict[str, Any] = {"run_dir": str(run.out_dir), "steps": state.step, "eval_start": state.eval_start}
    done = state.step >= recipe.train.steps
    if done and run.dist.sharded:  # every process takes part in gathering the weights
        run.model.eval()
        with run.dist.gathered(run.model):
            if run.dist.is_main:
                summary["eval_end"] = evaluate(run.engine, run.task, run.eval_examples, recipe, recipe.seed + 3,
                                               run.environment)
        final_weights = run.dist.full_state_dict(run.model)
    if done and run.dist.is_main:
        run.model.eval()
        if "eval_end" not in summary:
            summary["eval_end"] = evaluate(run.engine, run.task, run.eval_examples, recipe, recipe.seed + 3,
                                           run.environment)
        run.logger.log(state.step, {f"eval/{k}": v for k, v in summary["eval_end"].items()} | {"final": True})
        final_dir = run.out_dir / "final"
        if run.lora is not None:
            run.lora.save_final(final_dir, run.tokenizer, merged=recipe.model.lora.merge_final)
        else:
            if run.dist.sharded:  # an unsharded copy saves exactly what a one-process run saves (tied weights once)
                plain = models.blank_like(run.model).to(dtype=next(iter(final_weights.values())).dtype)
                plain.load_state_dict(final_weights)
                plain.save_pretrained(final_dir)
            else:
                run.model.save_pretrained(final_dir)
            run.tokenizer.save_pretrained(final_dir)
        summary["final_model"] = str(final_dir)
        fit = diag.fit_entropy_performance([h["entropy"] for h in state.history],
                                           [h["accuracy"] for h in state.history])
        if fit:
            summary["entropy_fit"] = fit
        if recipe.logging.plots:
            from entropo.plots import plot_run

            summary["plots"] = [str(p) for p in plot_run(run.out_dir)]
    run.logger.close()
    run.rewards.close()
    run.dist.barrier()  # no process leaves (and tears the group down) before rank 0 has written the final model
    run.dist.close()
    return summary


# ---- checkpoints -----------------------------------------------------------------------------------------------------

def restore_checkpoint(run: Run, saved: dict[str, Any]) -> None:
    """Load a verified checkpoint payload (``ckpt.resume_point``) into the run's objects."""
    if run.lora is not None:
        if (run.out_dir / LORA_BASE).exists():
            run.lora.load_base(torch.load(run.out_dir / LORA_BASE, map_location="cpu", weights_only=True))
        run.lora.load_trainable(saved["model"])
    else:
        run.dist.load_full_state_dict(run.model, saved["model"])
    run.dist.load_optimizer_state_dict(run.model, run.optimizer, saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.sampler.load_state_dict(saved["sampler"])
    run.rollout_gen.set_state(saved["rollout_gen"])
    shard_states = saved.get("shard_gens") or {}
    for shard, gen in run.shard_gens.items():
        if shard not in shard_states:
            raise ckpt.CheckpointError(f"the checkpoint has no generator for rollout shard {shard} (it was written with "
                                       f"rollout.shards={len(shard_states) or 1}); resume with the same rollout.shards "
                                       f"and number of processes")
        gen.set_state(shard_states[shard])
    run.update_gen.set_state(saved["update_gen"])
    for reg, c_state in zip(run.regs, saved["controllers"]):
        if reg.controller is not None:
            reg.controller.load_state_dict(c_state)
    for comp, c_state in zip(run.components, saved["components"]):
        comp.load_state_dict(c_state)
    for aux, a_state in zip(run.auxiliaries, saved.get("auxiliaries", [])):
        aux.load_state_dict(a_state)
    if run.early_stop is not None and saved.get("early_stop") is not None:
        run.early_stop.load_state_dict(saved["early_stop"])
    run.engine.load_state_dict(saved.get("engine", {}))
    run.state = RunState(**saved["run_state"])
    by_rank = saved.get("rng_by_rank")
    ckpt.set_rng_state(by_rank[run.dist.rank] if by_rank and run.dist.rank < len(by_rank) else saved["rng"])


def save_checkpoint(run: Run) -> Path | None:
    """Write the step's checkpoint (rank 0; the other processes send it their generator and RNG states)."""
    guards.check_weights(run.model, f"checkpoint of step {run.state.step}")  # never save non-finite weights
    shard_gens = {s: g for part in run.dist.all_gather_object({s: g.get_state() for s, g in run.shard_gens.items()})
                  for s, g in part.items()}
    rng_by_rank = run.dist.all_gather_object(ckpt.rng_state())
    # with sharded weights, gathering the model and optimizer state takes every process (rank 0 receives them)
    model_state = run.lora.trainable_state_dict() if run.lora is not None else run.dist.full_state_dict(run.model)
    optimizer_state = run.dist.optimizer_state_dict(run.model, run.optimizer)
    if not run.dist.is_main:
        run.dist.barrier()  # wait until rank 0 has written it
        return None
    payload = {
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(),
        "rollout_gen": run.rollout_gen.get_state(),
        "update_gen": run.update_gen.get_state(),
        "controllers": [r.controller.state_dict() if r.controller else None for r in run.regs],
        "components": [c.state_dict() for c in run.components],
        "auxiliaries": [aux.state_dict() for aux in run.auxiliaries],  # learned auxiliaries with their optimizers
        "early_stop": run.early_stop.state_dict() if run.early_stop is not None else None,
        "snapshot": run.snapshot.state_dict() if run.snapshot is not None else None,
        "engine": run.engine.state_dict(),
        "run_state": vars(run.state).copy(),
        "rng": ckpt.rng_state(),
        "recipe": run.recipe.model_dump(mode="json"),
        "shard_gens": shard_gens,
        "rng_by_rank": rng_by_rank if run.dist.enabled else None,
    }
    path = ckpt.save(run.out_dir, run.state.step, payload, keep=run.recipe.checkpoint.keep)
    run.dist.barrier()
    return path
