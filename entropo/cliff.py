"""The policy cliff: how far a small reward perturbation moves the policy, with and without entropy regularization.

Paper: "The Policy Cliff: A Theoretical Analysis of Reward-Policy Maps in Large Language Models", arXiv 2507.20150
(theory only, no code). Its claim: when several responses are (near-)optimal, the map reward -> optimal policy is
discontinuous (a tiny reward change can flip the argmax policy), and an entropy term makes it Lipschitz
(π*_τ = softmax(r/τ), ‖π*_τ(r) − π*_τ(r′)‖₁ ≤ (max δ − min δ)/τ with δ = r − r′).

Two diagnostics (spec §24):
- ``bandit_cliff(r, r_perturbed, tau)``: the closed form in a one-state bandit (tau = 0 is the unregularized
  argmax with uniform tie-break). Spec toy: r = [1, 1, 0], r′ = [1, 1.01, 0], τ = 0.1 -> ‖Δπ‖₁ = 0.049958 <= 0.1;
  τ = 0 -> 1.0.
- ``policy_cliff(recipe, ...)``: on a real model. Builds model, task, engine and rewards from the recipe (with its
  SFT warm-up), draws ONE rollout batch, and from the same initial weights runs the recipe's update (advantage,
  shaping, objective, regularizers, ``policy_update``) on (a) the true rewards and (b) perturbed rewards (a fraction
  of rewards flipped, or a second reward mixed in), each (i) as the recipe is and (ii) with an added entropy
  regularizer (``entropy_coef``). It reports the policy change between (a) and (b) as the mean over the batch's
  response positions of KL(π_a ‖ π_b) and of ‖π_a − π_b‖₁ of the next-token distributions (at the rollout
  temperature), and the size of each update (KL from the initial policy), so ratio = change / update size too.

``updates`` > 1 repeats the update on the same batch (re-scoring old log-probs each time, rewards and advantages
fixed), moving towards the batch's regularized optimum where the theory's continuity statement applies. With plain
SGD one step's parameter difference between (a) and (b) would not depend on an added regularizer (its gradient is
the same in both runs); with Adam and clipping it does, through the normalisation — so one update is a weak test and
a few updates a stronger one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from entropo import models, registry
from entropo.batch import Batch
from entropo.components import Bound, StepContext, merged_token_fns
from entropo.config import Recipe, check_components
from entropo.rewards.runner import RewardRunner
from entropo.trainer import (Regularizer, assign_advantages, make_optimizer, make_task, policy_update, rollout_batch,
                             score_tokens, seed_everything)


# ---- closed form ---------------------------------------------------------------------------------------------------
def regularized_optimum(rewards: Sequence[float], tau: float) -> torch.Tensor:
    """argmax_π E_π[r] + τ·H(π) = softmax(r/τ); τ = 0: uniform over the maximizers (the unregularized optimum with a
    uniform tie-break)."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if tau > 0:
        return torch.softmax(r / tau, dim=-1)
    best = (r == r.max()).double()
    return best / best.sum()


def bandit_cliff(rewards: Sequence[float], perturbed: Sequence[float], tau: float) -> dict[str, Any]:
    """‖π*_τ(r) − π*_τ(r′)‖₁ and the continuity bound (max δ − min δ)/τ (inf at τ = 0)."""
    pi, pi_perturbed = regularized_optimum(rewards, tau), regularized_optimum(perturbed, tau)
    delta = torch.as_tensor(rewards, dtype=torch.float64) - torch.as_tensor(perturbed, dtype=torch.float64)
    bound = float(delta.max() - delta.min()) / tau if tau > 0 else math.inf
    return {"pi": pi.tolist(), "pi_perturbed": pi_perturbed.tolist(),
            "l1": float((pi - pi_perturbed).abs().sum()), "bound": bound}


# ---- reward perturbations ------------------------------------------------------------------------------------------
def flip_rewards(rewards: torch.Tensor, fraction: float, generator: torch.Generator,
                 reward_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Reflect round(fraction·B) randomly chosen rewards inside ``reward_range`` = (lo, hi): r -> lo + hi − r
    (binary rewards: 0 <-> 1)."""
    count = round(fraction * rewards.numel())
    rows = torch.randperm(rewards.numel(), generator=generator)[:count]
    out = rewards.clone()
    out[rows] = reward_range[0] + reward_range[1] - rewards[rows]
    return out


# ---- policy distance -----------------------------------------------------------------------------------------------
@torch.no_grad()
def next_token_logprobs(model, batch: Batch, temperature: float, micro_batch_size: int) -> torch.Tensor:
    """log π(· | prefix) [T, V] at every response position of ``batch`` (row-major order), at ``temperature``."""
    out = []
    for mb in batch.split(micro_batch_size):
        position_ids = (mb.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=position_ids).logits
        # the token at t is predicted from position t - 1
        predicting = mb.response_mask[:, 1:] > 0  # [b, L-1]
        out.append(torch.log_softmax(logits[:, :-1][predicting].float() / temperature, dim=-1))
    return torch.cat(out)


def policy_distance(logp_a: torch.Tensor, logp_b: torch.Tensor) -> dict[str, float]:
    """Mean over positions of KL(a ‖ b) and of ‖a − b‖₁ for next-token log-distributions [T, V]."""
    p_a = logp_a.exp()
    kl = (p_a * (logp_a - logp_b)).sum(-1)
    return {"kl": float(kl.mean()), "l1": float((p_a - logp_b.exp()).abs().sum(-1).mean())}


# ---- the experiment ------------------------------------------------------------------------------------------------
def _setup(recipe: Recipe, warmup: bool, console):
    """Model (after the recipe's SFT warm-up), task, engine and reward runner, as ``trainer.train`` builds them."""
    seed_everything(recipe.seed)
    model, tokenizer = models.load(recipe.model.name_or_path, dtype=recipe.model.dtype,
                                   gguf_file=recipe.model.gguf_file, tiny_kwargs=recipe.model.tiny)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    task = make_task(recipe.task, recipe.seed, recipe.task.eval_size, "task")
    engine = registry.get("engine", recipe.rollout.engine)(model, tokenizer, chat_template=recipe.rollout.chat_template,
                                                           max_batch_size=recipe.rollout.max_batch_size,
                                                           **recipe.rollout.engine_params)
    if warmup and recipe.warmup.steps > 0:
        from entropo.sft import warmup as sft_warmup

        info = sft_warmup(model, tokenizer, engine, task, recipe.warmup, seed=recipe.seed)
        console(f"SFT warm-up: {recipe.warmup.steps} steps, final loss {info['loss']:.3f}")
    rewards = RewardRunner([r.model_dump() for r in recipe.rewards], timeout_s=recipe.reward_timeout_s)
    return model, tokenizer, task, engine, rewards, device


def _update(model0, batch0: Batch, rewards: torch.Tensor, recipe: Recipe, regularizers: list[tuple[str, float]],
            updates: int, lr: float, ctx_kw: dict) -> Any:
    """A copy of model0 after ``updates`` recipe updates on batch0 with ``rewards`` (same seeds in every run)."""
    model = copy.deepcopy(model0)
    batch = batch0.select(list(range(batch0.size)))
    batch.rewards = rewards.to(batch.rewards.device)
    score_kw = {"temperature": recipe.rollout.temperature, "micro_batch_size": recipe.train.micro_batch_size,
                "chunk_size": recipe.train.logprob_chunk_size}
    advantage = Bound("advantage", recipe.advantage.name, recipe.advantage.params)
    objective = Bound("objective", recipe.objective.name, recipe.objective.params)
    shapers = [Bound("shaping", c.name, c.params) for c in recipe.shaping]
    regs = [Regularizer(Bound("regularizer", name, params), coef) for name, params, coef in regularizers]
    old_token_fns = merged_token_fns([objective, *shapers, *(r.component for r in regs)], "old_token_fns")

    def score(b: Batch) -> None:  # the trainer's pre-update pass; the reference is the initial policy (model0)
        b.old_logprobs, b.old_entropy, extras = score_tokens(model, b, token_fns=old_token_fns, **score_kw)
        b.extras.update(extras)
        if recipe.needs_reference():
            b.ref_logprobs, _, _ = score_tokens(model0, b, **score_kw)

    ctx = StepContext(model=model, **ctx_kw)
    optimizer = make_optimizer(model, recipe.optimizer, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _s: 1.0)
    generator = torch.Generator().manual_seed(recipe.seed + 2)
    model.eval()
    score(batch)
    for shaper in shapers:
        if shaper.stage == "reward":
            shaper(batch, step_ctx=ctx)
    assign_advantages(advantage, batch, ctx)
    for shaper in shapers:
        if shaper.stage == "advantage":
            shaper(batch, step_ctx=ctx)
    for k in range(updates):
        if k:
            model.eval()
            score(batch)
        for comp in (objective, *(r.component for r in regs)):
            batch.extras.update(comp.prepare(batch, generator))
        model.train()
        policy_update(model, optimizer, scheduler, batch, recipe, objective, regs, generator)
    model.eval()
    return model


def policy_cliff(recipe: Recipe, *, perturbation: str = "flip", flip_fraction: float = 0.1,
                 reward_range: tuple[float, float] = (0.0, 1.0), second_reward: str = "format", mix_weight: float = 0.1, entropy_coef: float = 0.01,
                 updates: int = 1, lr: float | None = None, warmup: bool = True, seed: int | None = None,
                 console=print) -> dict[str, Any]:
    """Reward -> policy sensitivity of one recipe update, with and without an entropy regularizer.

    ``perturbation="flip"`` reflects ``flip_fraction`` of the batch's rewards inside ``reward_range`` (0 <-> 1 for the
    default binary range; DAPO-style ±1 rewards need (-1, 1));
    ``"mix"`` uses (1 − mix_weight)·r + mix_weight·r₂ with r₂ the registered reward ``second_reward``.
    ``entropy_coef`` is the coefficient of the added ``entropy`` regularizer in the (ii) runs; ``updates`` the number
    of updates on the one batch; ``lr`` overrides the recipe's peak LR (the schedule is constant here); ``seed``
    overrides the recipe seed. Returns a dict with the perturbation size and, for "plain" and "entropy",
    the (a)-vs-(b) distance, each run's distance from the initial policy, and their ratio; prints a table.
    The recipe's producers (rows added at rollout time, e.g. AEPO) are not run: the experiment perturbs the rewards
    of one fixed batch.
    """
    if perturbation not in ("flip", "mix"):
        raise ValueError(f"perturbation must be 'flip' or 'mix', got {perturbation!r}")
    if seed is not None:
        recipe = recipe.model_copy(update={"seed": seed})
    check_components(recipe)
    model0, tokenizer, task, engine, reward_runner, device = _setup(recipe, warmup, console)
    model0.eval()
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    examples = [task.train_example(i) for i in range(recipe.rollout.prompts_per_step)]
    batch, _ = rollout_batch(engine, task, reward_runner, recipe, examples, recipe.rollout.n,
                             recipe.rollout.temperature, generator, 0, device)
    true_rewards = batch.rewards.clone()
    if perturbation == "flip":
        perturbed = flip_rewards(true_rewards, flip_fraction, torch.Generator().manual_seed(recipe.seed + 5),
                                 tuple(reward_range))
    else:
        second = RewardRunner([{"name": second_reward}], timeout_s=recipe.reward_timeout_s)
        r2 = torch.tensor(second.score(batch.info["sample"]).rewards, dtype=torch.float32, device=device)
        perturbed = (1 - mix_weight) * true_rewards + mix_weight * r2

    ctx_kw = {"tokenizer": tokenizer, "engine": engine, "task": task, "rewards": reward_runner, "recipe": recipe,
              "step": 0, "rollout_generator": generator, "device": device}
    base_regs = [(r.name, r.params, r.coef) for r in recipe.regularizers if r.name != "entropy"]
    variants = {"plain": base_regs, "entropy": base_regs + [("entropy", {}, entropy_coef)]}
    lr = lr if lr is not None else recipe.optimizer.lr
    temperature = recipe.rollout.temperature or 1.0
    mb = recipe.train.micro_batch_size
    logp0 = next_token_logprobs(model0, batch, temperature, mb)
    result: dict[str, Any] = {
        "perturbation": perturbation, "rows": batch.size, "updates": updates, "lr": lr,
        "reward_l1": float((true_rewards - perturbed).abs().sum()),
        "rows_changed": int((true_rewards != perturbed).sum()),
        "entropy_before": float((-logp0.exp() * logp0).sum(-1).mean()),
    }
    for name, regs in variants.items():
        logps = {}
        for label, rewards in (("true", true_rewards), ("perturbed", perturbed)):
            model = _update(model0, batch, rewards, recipe, regs, updates, lr, ctx_kw)
            logps[label] = next_token_logprobs(model, batch, temperature, mb)
            del model
        between = policy_distance(logps["true"], logps["perturbed"])
        moved = policy_distance(logp0, logps["true"])
        result[name] = {
            "kl": between["kl"], "l1": between["l1"],
            "update_kl": moved["kl"], "update_l1": moved["l1"],
            "kl_ratio": between["kl"] / max(moved["kl"], 1e-12),
            "l1_ratio": between["l1"] / max(moved["l1"], 1e-12),
            "entropy_after": float((-logps["true"].exp() * logps["true"]).sum(-1).mean()),
        }
    result["kl_plain_over_entropy"] = result["plain"]["kl"] / max(result["entropy"]["kl"], 1e-12)
    result["l1_plain_over_entropy"] = result["plain"]["l1"] / max(result["entropy"]["l1"], 1e-12)
    console(format_table(result, entropy_coef))
    return result


def format_table(result: dict[str, Any], entropy_coef: float) -> str:
    head = (f"policy cliff: {result['perturbation']} perturbation, {result['rows_changed']}/{result['rows']} rewards "
            f"changed (|Δr|₁ = {result['reward_l1']:.3f}), {result['updates']} update(s), lr {result['lr']:g}")
    rows = [head, f"{'regularizer':<22}{'KL(a‖b)':>12}{'L1(a,b)':>12}{'KL(0‖a)':>12}{'L1(0,a)':>12}{'H after':>10}"]
    for name, label in (("plain", "none"), ("entropy", f"entropy coef {entropy_coef:g}")):
        r = result[name]
        rows.append(f"{label:<22}{r['kl']:>12.3e}{r['l1']:>12.4f}{r['update_kl']:>12.3e}{r['update_l1']:>12.4f}"
                    f"{r['entropy_after']:>10.4f}")
    rows.append(f"ratio none / entropy: KL {result['kl_plain_over_entropy']:.3f}, L1 {result['l1_plain_over_entropy']:.3f}")
    return "\n".join(rows)
