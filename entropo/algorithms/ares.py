"""ARES — difficulty-aware entropy shaping: HWE-token reward (shaping ``ares``) and per-bucket adaptive KL
(regularizer ``ares_kl``).

Paper: "ARES: Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping", arXiv 2510.08457 (its
RL stage is called AEPO). Official code: shawn0728/ARES. Verified there:

- ``examples/reward_function/aepo.py`` (``compute_score``): the bucketed entropy reward (Huber / sigmoid shapes,
  margins 0.15/0.25/0.35, kappa 2/3/4, temperatures 2/2.5/3, cap alpha_d x 1/1/1.2, wrong-answer gains 0.6/0.8/1),
  total reward = accuracy + entropy score — reproduced exactly (see :func:`entropy_reward`).
- ``verl/workers/rollout/vllm_rollout_spmd.py`` (``compute_reasoning_token_window_entropy``): at each response position
  whose *top-1 (greedy)* token string — decoded, leading "▁"/"Ġ" removed, stripped, lower-cased — is in the trigger
  set, average the entropies of the next ``window`` tokens (positions with fewer than ``window`` following tokens are
  skipped); count averages >= tau; soft cost = Σ max(0, average - tau).
- ``verl/trainer/ray_trainer.py`` (``update_difficulty_and_skip_gid_set``), run on the current batch *before* its
  rewards: bucket by group accuracy (easy >= 2/3, medium >= 1/3, else hard); target T_d = round(mean over the bucket's
  prompts of their mean HWE count); alpha_d += 0.05 * (mean - T_d) for easy/medium, (T_d - mean) for hard, clipped
  to [0, 2] (init 0.5). Note that with T_d the rounded mean itself, the alpha step is only the rounding residual.
- ``verl/workers/actor/dp_actor.py`` (``_update_beta_per_bucket``): see :class:`AresKL`.

Resolved differences:
- entropies are the exact full-vocabulary entropies of the pre-update policy (``batch.old_entropy``), not vLLM's
  top-10-plus-tail approximation H ≈ -Σ_top10 p log p - (1 - Σp) log(1 - Σp) (which under-estimates H when the tail
  is spread over many tokens).
- the trigger set of the paper is a data file (``crucial_token_final_version.json``, not reproduced); ``triggers`` is
  a param: default a small list of reflection/transition words (:data:`DEFAULT_TRIGGERS`), or ``"all"`` (every
  position). ``trigger_token="greedy"`` (default, as the code) takes the argmax token of the scoring pass (an
  ``old_token_fns`` hook); ``"sampled"`` uses the sampled token.
- tau: the code passes an adaptive threshold (EMA of a batch median of per-sample 98th percentiles of window
  entropies) and falls back to 1.5; we use the fixed ``tau`` (spec default 1.5).
- the paper's HWE-triggered branching rollout is not part of this component.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from entropo import ops
from entropo.algorithms.segments import decode_tokens
from entropo.batch import Batch
from entropo.registry import register
from entropo.types import TokenContext

BUCKETS = ("easy", "medium", "hard")
EASY, MEDIUM, HARD = 0, 1, 2
DEFAULT_TRIGGERS = ("wait", "but", "however", "so", "let", "check", "alternatively", "hmm")
# Per-bucket constants of the official reward (aepo.py), indexed easy / medium / hard.
MARGIN_FRAC = (0.15, 0.25, 0.35)
KAPPA = (2.0, 3.0, 4.0)
TEMPERATURE = (2.0, 2.5, 3.0)
CAP_SCALE = (1.0, 1.0, 1.2)
WRONG_GAIN = (0.6, 0.8, 1.0)
_LEADING_MARKERS = re.compile(r"^[▁Ġ]+")


# ---- difficulty buckets and HWE counting ----------------------------------------------------------------------------
def difficulty_buckets(correct: Tensor, group_ids: Tensor, easy_at: float = 2 / 3, medium_at: float = 1 / 3
                       ) -> Tensor:
    """[B] long bucket of each sample's prompt from its group accuracy: 0 easy (>= 2/3), 1 medium (>= 1/3), 2 hard."""
    _, accuracy, _ = ops.group_stats(correct.float(), group_ids)
    return torch.where(accuracy >= easy_at, EASY, torch.where(accuracy >= medium_at, MEDIUM, HARD)).long()


def normalize_token(text: str) -> str:
    return _LEADING_MARKERS.sub("", text).strip().lower()


def trigger_positions(token_ids: Tensor, response_mask: Tensor, tokenizer: Any, triggers: Any) -> Tensor:
    """[B, L] bool: response positions whose token (normalised text) is a trigger word; all positions if "all"."""
    on = response_mask > 0
    if triggers == "all":
        return on
    words = {normalize_token(w) for w in triggers}
    texts = decode_tokens(tokenizer, token_ids[on].tolist())
    hit_ids = [i for i, t in texts.items() if normalize_token(t) in words]
    hits = torch.isin(token_ids, torch.tensor(hit_ids, dtype=token_ids.dtype, device=token_ids.device))
    return hits & on


def hwe_counts(entropy: Tensor, response_mask: Tensor, triggers: Tensor, window: int = 4, tau: float = 1.5
               ) -> tuple[Tensor, Tensor]:
    """High-window-entropy count and soft cost per sample, ([B], [B]).

    For each trigger position with at least ``window`` later response tokens, w = mean entropy of the next
    ``window`` response tokens; count = #(w >= tau), soft cost = Σ max(0, w - tau)."""
    counts = entropy.new_zeros(entropy.shape[0])
    costs = entropy.new_zeros(entropy.shape[0])
    for b in range(entropy.shape[0]):
        on = response_mask[b] > 0
        h = entropy[b][on].float()  # response tokens in order (skips tool output in multi-turn rows)
        trig = triggers[b][on]
        n = h.numel()
        if n <= window:
            continue
        csum = torch.cat([h.new_zeros(1), h.cumsum(0)])
        starts = torch.arange(n - window, device=h.device)  # positions i with i + window <= n - 1
        window_mean = (csum[starts + 1 + window] - csum[starts + 1]) / window
        valid = trig[: n - window]
        counts[b] = ((window_mean >= tau) & valid).sum()
        costs[b] = ((window_mean - tau).clamp_min(0.0) * valid).sum()
    return counts, costs


# ---- the bucketed entropy reward -------------------------------------------------------------------------------------
def _huber(x: float, kappa: float) -> float:
    x = max(x, 0.0)
    return x * x / (2 * kappa) if x <= kappa else x - kappa / 2


def _sigmoid(x: float, temperature: float) -> float:
    return 1.0 / (1.0 + math.exp(-x / max(temperature, 1e-6)))


def entropy_reward(correct: bool, bucket: int, count: float, target: float, alpha: float) -> float:
    """ARES entropy reward of one response (added to its correctness reward). delta = count - target,
    margin m = max(1, frac_d * max(target, 1)), cap = alpha * cap_scale_d.

    Spec examples (alpha 0.5): (correct, easy, 10, 4) -> -0.5; (correct, easy, 5, 4) -> 0; (wrong, easy, 4, 4) -> 0.15;
    (correct, medium, 4, 8) -> -0.06667; (correct, hard, 10, 4) -> 0.55311; (wrong, hard, 10, 4) -> 0.49345;
    (correct, hard, 1, 10) -> -0.14."""
    delta = count - target
    margin = max(1.0, MARGIN_FRAC[bucket] * max(target, 1.0))
    kappa, temperature = KAPPA[bucket], TEMPERATURE[bucket]
    cap = alpha * CAP_SCALE[bucket]
    if not correct:  # wrong answers: a bounded bonus for exploring more than the target
        return _sigmoid(max(delta - margin, 0.0), temperature) * cap * WRONG_GAIN[bucket]
    if bucket == EASY:  # penalise only over-thinking
        return -min(cap, _huber(delta - margin, kappa) / (margin + kappa) * cap)
    if bucket == MEDIUM:  # penalise deviation either way
        return -min(cap, _huber(abs(delta) - margin, kappa) / (margin + kappa) * cap)
    if delta >= -margin:  # hard & correct: reward exploring at least about the target
        return _sigmoid(delta + margin, temperature) * cap
    return -min(cap, 0.5 * _huber(-delta - margin, kappa) / (margin + kappa) * cap)


@register("shaping", "ares", paper="ARES: Difficulty-Aware Token-Level Entropy Shaping, arXiv 2510.08457",
          stage="reward")
class AresEntropyReward:
    """Adds the bucketed HWE entropy reward to ``batch.rewards``; keeps per-bucket strengths alpha_d (and the last
    targets) as checkpointed state. Writes ``batch.extras``: ``ares_bucket`` [B] and ``ares_soft_cost`` [B] (read by
    ``ares_kl`` for its "second chance" relaxation)."""

    def __init__(self, window: int = 4, tau: float = 1.5, triggers: Any = DEFAULT_TRIGGERS,
                 trigger_token: str = "greedy", alpha_init: float = 0.5, alpha_lr: float = 0.05,
                 alpha_min: float = 0.0, alpha_max: float = 2.0, easy_at: float = 2 / 3, medium_at: float = 1 / 3):
        if trigger_token not in ("greedy", "sampled"):
            raise ValueError("ares: trigger_token must be 'greedy' or 'sampled'")
        if triggers != "all" and (isinstance(triggers, str) or not all(isinstance(w, str) for w in triggers)):
            raise ValueError("ares: triggers must be 'all' or a list of words")
        if window < 1:
            raise ValueError("ares: window must be >= 1")
        self.window, self.tau, self.triggers, self.trigger_token = int(window), float(tau), triggers, trigger_token
        self.alpha_lr, self.alpha_min, self.alpha_max = float(alpha_lr), float(alpha_min), float(alpha_max)
        self.easy_at, self.medium_at = float(easy_at), float(medium_at)
        self.alpha = [float(alpha_init)] * 3
        self.target = [1.0] * 3

    def old_token_fns(self) -> dict:
        if self.trigger_token != "greedy" or self.triggers == "all":
            return {}
        # argmax ids are < 2**24 for any real vocabulary, so the float32 store is exact
        return {"ares_greedy_id": lambda logits, target_ids: logits.argmax(-1).float()}

    def update_buckets(self, bucket: Tensor, counts: Tensor, group_ids: Tensor) -> None:
        """Targets and alpha from this batch (official order: before the rewards are computed)."""
        _, group_mean_count, _ = ops.group_stats(counts, group_ids)
        for d in range(3):
            in_bucket = bucket == d
            if not in_bucket.any():
                continue
            # one value per prompt: the group's mean count (unique over its group id)
            prompt_means = torch.stack([group_mean_count[group_ids == g][0]
                                        for g in torch.unique(group_ids[in_bucket])])
            mean = float(prompt_means.mean())
            self.target[d] = float(round(mean))
            step = mean - self.target[d] if d != HARD else self.target[d] - mean
            self.alpha[d] = min(max(self.alpha[d] + self.alpha_lr * step, self.alpha_min), self.alpha_max)

    def __call__(self, batch: Batch, step_ctx: Any = None) -> dict[str, float]:
        if batch.old_entropy is None:
            raise ValueError("ares needs batch.old_entropy")
        if self.triggers == "all":
            token_ids = batch.input_ids
        elif self.trigger_token == "greedy" and "ares_greedy_id" in batch.extras:
            token_ids = batch.extras["ares_greedy_id"].long()
        else:
            token_ids = batch.input_ids
        tokenizer = getattr(step_ctx, "tokenizer", None)
        if self.triggers != "all" and tokenizer is None:
            raise ValueError("ares: matching trigger words needs step_ctx.tokenizer")
        triggers = trigger_positions(token_ids, batch.response_mask, tokenizer, self.triggers)
        counts, costs = hwe_counts(batch.old_entropy, batch.response_mask, triggers, self.window, self.tau)
        correct = batch.correct.to(counts.device)
        bucket = difficulty_buckets(correct, batch.group_ids.to(counts.device), self.easy_at, self.medium_at)
        self.update_buckets(bucket, counts, batch.group_ids.to(counts.device))
        bonus = torch.tensor([entropy_reward(bool(c), int(d), float(n), self.target[int(d)], self.alpha[int(d)])
                              for c, d, n in zip(correct.tolist(), bucket.tolist(), counts.tolist())],
                             dtype=batch.rewards.dtype, device=batch.rewards.device)
        batch.rewards = batch.rewards + bonus
        batch.extras["ares_bucket"] = bucket.to(batch.rewards.device)
        batch.extras["ares_soft_cost"] = costs.to(batch.rewards.device)
        metrics = {"ares_hwe_count": float(counts.mean()), "ares_soft_cost": float(costs.mean()),
                   "ares_entropy_reward": float(bonus.mean())}
        for d, name in enumerate(BUCKETS):
            metrics[f"ares_alpha_{name}"] = self.alpha[d]
            metrics[f"ares_target_{name}"] = self.target[d]
            metrics[f"ares_frac_{name}"] = float((bucket == d).float().mean())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": list(self.alpha), "target": list(self.target)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.target = list(state["alpha"]), list(state["target"])


# ---- the per-bucket adaptive KL ------------------------------------------------------------------------------------
@register("regularizer", "ares_kl", paper="ARES: Difficulty-Aware Token-Level Entropy Shaping, arXiv 2510.08457",
          needs_ref=True)
class AresKL:
    """Per-token KL to the reference times a per-bucket multiplier beta_d, adapted in log space (official
    ``dp_actor._update_beta_per_bucket``). Per bucket d, at each controller update with the bucket's mean
    per-sequence KL ``cur``:

        kl_ema <- (1 - decay) * cur + decay * kl_ema        (kl_ema starts at the first cur)
        e = kl_ema / target - 1;  skip if |e| < deadzone, or if this is not an update_interval-th update
        e_ema <- (1 - decay) * e + decay * e_ema;   log beta_d += lr * clip(e_ema, -clip, clip)
        beta_d clipped to [beta_min, beta_max]

    Official defaults: beta_init 1, target 0.01, decay 0.97, lr 0.05, clip 0.2, deadzone 0.02, interval 100,
    [1e-4, 1e2]; KL kind k3 (verl ``low_var_kl``), base coefficient 0.01 (the recipe's ``coef``).
    Difference: the official actor updates once per micro-batch call, so its interval counts micro-batches and
    its statistics depend on the micro-batch split; here the per-sequence KLs of every micro-batch of an RL step
    are pooled and the controller runs once per step in ``update`` (the interval counts RL steps).
    "Second chance": samples that are easy, wrong and have soft HWE cost >= ``second_chance_min_cost`` (from the
    ``ares`` shaping; off when it is absent) get their KL scaled by ``second_chance_scale``.
    Buckets come from the group accuracy of ``batch.correct`` (computed in ``prepare`` on the whole batch).
    State (checkpointed): beta, kl_ema, e_ema, updates.
    """

    def __init__(self, kind: str = "k3", beta_init: float = 1.0, target: float = 0.01, ema_decay: float = 0.97,
                 lr: float = 0.05, error_clip: float = 0.2, deadzone: float = 0.02, update_interval: int = 100,
                 beta_min: float = 1e-4, beta_max: float = 1e2, second_chance: bool = True,
                 second_chance_scale: float = 0.67, second_chance_min_cost: float = 0.5, easy_at: float = 2 / 3,
                 medium_at: float = 1 / 3):
        if target <= 0 or update_interval < 1 or not 0 < beta_min <= beta_max:
            raise ValueError("ares_kl: need target > 0, update_interval >= 1, 0 < beta_min <= beta_max")
        self.kind, self.target, self.ema_decay, self.lr = kind, float(target), float(ema_decay), float(lr)
        self.error_clip, self.deadzone, self.update_interval = float(error_clip), float(deadzone), int(update_interval)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.second_chance, self.second_chance_scale = bool(second_chance), float(second_chance_scale)
        self.second_chance_min_cost, self.easy_at, self.medium_at = float(second_chance_min_cost), easy_at, medium_at
        self.beta = [float(beta_init)] * 3
        self.kl_ema: list[float | None] = [None] * 3
        self.e_ema = [0.0] * 3
        self.updates = 0
        self._kl_sum = [0.0] * 3  # per-sequence KL pooled over the step's micro-batches (not checkpointed: per step)
        self._kl_n = [0] * 3

    def prepare(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        device = batch.response_mask.device
        correct = batch.correct.to(device)
        bucket = difficulty_buckets(correct, batch.group_ids.to(device), self.easy_at, self.medium_at)
        relax = torch.ones(batch.size, device=device)
        cost = batch.extras.get("ares_soft_cost")
        if self.second_chance and cost is not None:
            second = (bucket == EASY) & ~correct & (cost.to(device) >= self.second_chance_min_cost)
            relax = relax.masked_fill(second, self.second_chance_scale)
        return {"ares_kl_bucket": bucket, "ares_kl_relax": relax}

    def __call__(self, ctx: TokenContext) -> tuple[Tensor, dict[str, Tensor]]:
        if ctx.ref_logprobs is None:
            raise ValueError("ares_kl needs reference log-probs (meta needs_ref=True)")
        response_mask = ctx.batch.response_mask
        bucket = ctx.extras["ares_kl_bucket"].long()  # [B]
        relax = ctx.extras["ares_kl_relax"]
        per_token_kl = ops.kl(ctx.logprobs, ctx.ref_logprobs, self.kind)  # [B, L]
        with torch.no_grad():
            seq_kl = ops.masked_mean(per_token_kl.detach(), response_mask, dim=-1)  # [B]
            has_tokens = response_mask.sum(-1) > 0
            for d in range(3):
                sel = (bucket == d) & has_tokens
                self._kl_sum[d] += float(seq_kl[sel].sum())
                self._kl_n[d] += int(sel.sum())
        beta = torch.tensor(self.beta, dtype=per_token_kl.dtype, device=per_token_kl.device)[bucket]  # [B]
        loss = per_token_kl * (beta * relax)[:, None]
        metrics = {"kl_ref": ops.masked_mean(per_token_kl.detach(), response_mask),
                   "beta_mean": ops.masked_mean(beta[:, None].expand_as(per_token_kl), response_mask)}
        metrics.update({f"beta_{name}": self.beta[d] for d, name in enumerate(BUCKETS)})
        return loss, metrics

    def update(self, metrics: dict[str, Any] | None = None) -> None:
        """One controller step from the KL pooled since the last call (no-op when no tokens were seen)."""
        if not any(self._kl_n):
            return
        self.updates += 1
        for d in range(3):
            if self._kl_n[d] == 0:
                continue
            current = self._kl_sum[d] / self._kl_n[d]
            previous = self.kl_ema[d] if self.kl_ema[d] is not None else current
            self.kl_ema[d] = (1 - self.ema_decay) * current + self.ema_decay * previous
            error = self.kl_ema[d] / self.target - 1.0
            if abs(error) < self.deadzone or self.updates % self.update_interval != 0:
                continue
            self.e_ema[d] = (1 - self.ema_decay) * error + self.ema_decay * self.e_ema[d]
            step = min(max(self.e_ema[d], -self.error_clip), self.error_clip)
            log_beta = math.log(min(max(self.beta[d], self.beta_min), self.beta_max)) + self.lr * step
            self.beta[d] = math.exp(min(max(log_beta, math.log(self.beta_min)), math.log(self.beta_max)))
        self._kl_sum, self._kl_n = [0.0] * 3, [0] * 3

    def state_dict(self) -> dict[str, Any]:
        return {"beta": list(self.beta), "kl_ema": list(self.kl_ema), "e_ema": list(self.e_ema),
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta, self.kl_ema = list(state["beta"]), list(state["kl_ema"])
        self.e_ema, self.updates = list(state["e_ema"]), int(state["updates"])
