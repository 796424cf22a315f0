"""CAPO: Curvature-Aware Policy Optimization — a token mask from a second-order model of the LM head.

Paper: "Stabilizing Policy Gradients for Sample-Efficient Reinforcement Learning in LLM Reasoning" (CAPO),
arXiv 2510.00819. Official code checked: luckeciano/stable-pg-llm ``src/open_r1/grpo_entropy_trainer.py``
(``_compute_gradients``, ``_compute_and_log_hessian_coefficient``, ``_compute_and_log_fisher_curvature``,
``_compute_hessian_token_mask``, ``_compute_fisher_token_mask``).

Idea: restrict the model of the update to the last layer (logits z = W h / T). For a response token with LM-head input
h (dim D), old-policy distribution pi, sampled token a and v = e_a - pi, the token's score gradient w.r.t. W is
g = A v h^T / T. With an optimizer model giving the update direction U for g (here plain SGD, U = g) and
u = U h / T the resulting change of the logits per unit step, the step eta predicts

    Delta J  ~= eta <g, U> + 1/2 eta^2 A [ (v^T u)^2 - u^T F u ],  F = diag(pi) - pi pi^T     (objective shift)
    Delta KL ~= 1/2 eta^2 (v^T u)^2                                                          (policy shift)

and a token stays in the loss iff |Delta J| < tau_H (``symmetric``; else 0 <= Delta J < tau_H) and Delta KL < tau_F.
A threshold of 0 disables its test (as in the official code).

With SGD everything reduces to per-token scalars, so no [B, L, V] tensor is built:
with s = |h|^2 / T^2, |v|^2 = 1 - 2 pi_a + sum pi^2 and q = v^T F v,
    <g, U> = A^2 |v|^2 s,   v^T u = A |v|^2 s,   u^T F u = A^2 s^2 q,
    Delta J = eta A^2 |v|^2 s + 1/2 eta^2 A^3 s^2 (|v|^4 - q),   Delta KL = 1/2 eta^2 A^2 s^2 |v|^4.
|v|^2 and q come from the full old-policy distribution through ``old_token_fns`` (chunked, exact softmax incl. any
logit transform); |h|^2 from one extra no-grad pass of the decoder body over the batch.

Verified against the official code and resolved here:

- [verified] Delta KL = 1/2 lr^2 (v^T G h)^2 (``compute_fisher_token_level`` then ``kl_term``), Delta J =
  lr <g, G_eff> + 1/2 lr^2 hessian (``full_update_term``), token masks by strict inequalities, symmetric or
  one-sided Hessian clipping, a tau of 0 switching a test off, lr = the scheduler's current learning rate.
- [resolved, spec (g)] Optimizer model: the official code keeps Adam-like moment state of the effective LM-head
  gradient over the top-50 logits of each position. Here the optimizer model is SGD (U = g) over the full vocabulary,
  which is exact, stateless and cheap; the thresholds therefore live on a different scale than the paper's Adam-model
  values (they are lr- and model-dependent anyway, spec (g)) and the recipe sets them for the tiny model.
- [resolved] eta defaults to the recipe's peak ``optimizer.lr`` (the trainer's scheduler is not visible to
  components); pass ``lr`` to override.
- [resolved] Only token granularity (the paper's main "token mask"); the sentence/global/sequential variants are not
  implemented. The mask is decided once per step on the WHOLE batch before the update, with the pre-update policy
  pi_old (rho = 1 at that point, as on the official single-update setting), and multiplies ``batch.token_weights``,
  so it cannot depend on the micro-batch split. Temperature T divides h (the logits are z / T).

Component: shaping ``capo_mask`` (stage "advantage", stateless). Metrics (``shaping/capo_*``): ``rejected_frac``
(fraction of the loss tokens masked — the paper reports < 8%), ``rejected_hessian_frac``, ``rejected_fisher_frac``,
``rejected_pos_adv_frac`` (share of the masked tokens with A > 0), ``delta_kl_mean``, ``delta_j_abs_mean``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register

PAPER = "Stabilizing Policy Gradients for Sample-Efficient RL in LLM Reasoning (CAPO), arXiv 2510.00819"
V_SQ_KEY = "capo_v_sq"  # old_token_fns output [B, L]: |e_a - pi|^2
V_FISHER_V_KEY = "capo_v_fisher_v"  # old_token_fns output [B, L]: v^T (diag pi - pi pi^T) v


def score_direction_stats(logits: Tensor, target_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(|v|^2 [N], v^T F v [N]) for v = e_a - pi, F = diag(pi) - pi pi^T, from logits [N, V] and targets a [N]."""
    probs = torch.softmax(logits.float(), dim=-1)  # [N, V]
    p_a = probs.gather(-1, target_ids[:, None]).squeeze(-1)  # [N]
    sum_p2 = (probs * probs).sum(-1)
    sum_p3 = (probs * probs * probs).sum(-1)
    v_sq = 1.0 - 2.0 * p_a + sum_p2
    pi_dot_v = p_a - sum_p2  # sum_j pi_j v_j
    pi_weighted_v_sq = p_a * (1.0 - p_a) ** 2 + sum_p3 - p_a ** 3  # sum_j pi_j v_j^2
    return v_sq, pi_weighted_v_sq - pi_dot_v ** 2


def capo_old_token_fns(**_params):
    return {
        V_SQ_KEY: lambda logits, target: score_direction_stats(logits, target)[0],
        V_FISHER_V_KEY: lambda logits, target: score_direction_stats(logits, target)[1],
    }


def predicted_shifts(advantages: Tensor, h_sq: Tensor, v_sq: Tensor, v_fisher_v: Tensor, lr: float
                     ) -> tuple[Tensor, Tensor]:
    """(Delta J, Delta KL), each shaped like the inputs, for the SGD optimizer model (see module docstring).
    ``h_sq`` is |h|^2 / T^2 of the LM-head input predicting each token."""
    v_dot_u = advantages * v_sq * h_sq  # v^T u with u = U h, U = A v h^T
    grad_dot_update = advantages ** 2 * v_sq * h_sq  # <g, U> = |g|^2
    u_fisher_u = advantages ** 2 * h_sq ** 2 * v_fisher_v
    hessian = advantages * (v_dot_u ** 2 - u_fisher_u)
    delta_j = lr * grad_dot_update + 0.5 * lr ** 2 * hessian
    delta_kl = 0.5 * lr ** 2 * v_dot_u ** 2
    return delta_j, delta_kl


def curvature_keep_mask(delta_j: Tensor, delta_kl: Tensor, tau_hessian: float, tau_fisher: float,
                        symmetric: bool = True) -> tuple[Tensor, Tensor]:
    """(hessian_ok, fisher_ok) bool masks; a tau of 0 switches that test off (everything passes)."""
    if tau_hessian:
        low_ok = delta_j > -tau_hessian if symmetric else delta_j >= 0
        hessian_ok = (delta_j < tau_hessian) & low_ok
    else:
        hessian_ok = torch.ones_like(delta_j, dtype=torch.bool)
    fisher_ok = delta_kl < tau_fisher if tau_fisher else torch.ones_like(delta_kl, dtype=torch.bool)
    return hessian_ok, fisher_ok


@torch.no_grad()
def lm_head_input_sq_norms(model, batch: Batch, micro_batch_size: int, temperature: float = 1.0) -> Tensor:
    """[B, L]: |h|^2 / T^2 of the final hidden state that predicts each response token (the state at t - 1), 0 on
    non-response positions. Same positions/hidden states as ``entropo.models.logprobs`` scores."""
    from entropo.models.logprobs import decoder_hidden_states

    out = torch.zeros_like(batch.response_mask, dtype=torch.float32)
    for start in range(0, batch.size, micro_batch_size):
        rows = slice(start, min(start + micro_batch_size, batch.size))
        input_ids, attention_mask = batch.input_ids[rows], batch.attention_mask[rows]
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = decoder_hidden_states(model, input_ids, attention_mask, position_ids).float()  # [b, L, D]
        sq = hidden.pow(2).sum(-1) / temperature ** 2  # [b, L]; sq[:, t] belongs to the token at t + 1
        out[rows, 1:] = sq[:, :-1]
    return out.where(batch.response_mask > 0, 0.0)


@register("shaping", "capo_mask", paper=PAPER, stage="advantage", old_token_fns=capo_old_token_fns)
def capo_mask(batch: Batch, tau_hessian: float = 0.01, tau_fisher: float = 1e-4, lr: float | None = None,
              symmetric: bool = True, step_ctx=None) -> dict[str, float]:
    """Multiply ``batch.token_weights`` by the CAPO curvature mask (whole batch, pre-update policy)."""
    if V_SQ_KEY not in batch.extras or V_FISHER_V_KEY not in batch.extras:
        raise ValueError("capo_mask needs the old-policy scoring pass outputs (old_token_fns) in batch.extras")
    if step_ctx is None:
        raise ValueError("capo_mask needs step_ctx (the policy model, to read its last hidden states)")
    recipe = step_ctx.recipe
    eta = float(recipe.optimizer.lr if lr is None else lr)
    model_was_training = step_ctx.model.training
    step_ctx.model.eval()
    h_sq = lm_head_input_sq_norms(step_ctx.model, batch, recipe.train.micro_batch_size,
                                  recipe.rollout.temperature).to(batch.response_mask.device)
    step_ctx.model.train(model_was_training)
    return apply_capo_mask(batch, h_sq, eta, tau_hessian, tau_fisher, symmetric)


def apply_capo_mask(batch: Batch, h_sq: Tensor, lr: float, tau_hessian: float, tau_fisher: float,
                    symmetric: bool = True) -> dict[str, float]:
    """The model-free part of ``capo_mask``: predicted shifts from batch.advantages, extras and h_sq, then mask."""
    delta_j, delta_kl = predicted_shifts(batch.advantages.float(), h_sq, batch.extras[V_SQ_KEY].float(),
                                         batch.extras[V_FISHER_V_KEY].float(), lr)
    hessian_ok, fisher_ok = curvature_keep_mask(delta_j, delta_kl, tau_hessian, tau_fisher, symmetric)
    in_loss = (batch.token_weights > 0) & (batch.response_mask > 0)  # [B, L]
    keep = hessian_ok & fisher_ok
    batch.token_weights = batch.token_weights * keep.to(batch.token_weights.dtype)
    active = in_loss.float()
    rejected = (~keep).float() * active
    return {
        "capo_rejected_frac": float(ops.masked_mean((~keep).float(), active)),
        "capo_rejected_hessian_frac": float(ops.masked_mean((~hessian_ok).float(), active)),
        "capo_rejected_fisher_frac": float(ops.masked_mean((~fisher_ok).float(), active)),
        "capo_rejected_pos_adv_frac": float(ops.masked_mean((batch.advantages > 0).float(), rejected)),
        "capo_delta_kl_mean": float(ops.masked_mean(delta_kl, active)),
        "capo_delta_j_abs_mean": float(ops.masked_mean(delta_j.abs(), active)),
    }
