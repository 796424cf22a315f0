"""EMPG — Entropy-Modulated Policy Gradients (shaping kind, stage "advantage").

Paper: Wang, Liu, Fu et al., "Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM Agents",
arXiv 2509.09265. No official repository was found; the project page (https://empgseed-seed.github.io) publishes
pseudocode (``compute_empg_advantage``), which we checked against the spec (/work/shared/methods/rlvr.md §7):

- verified on the project page: step entropy = mean of ``old_entropy`` over the step's tokens; one min–max
  normalisation over *all* steps of the batch with eps = 1e-8 in the denominator; g = exp(-k Ĥ) divided by its mean
  over all steps of the batch (+ 1e-8); future-clarity f = exp(-k' Ĥ); defaults k = 1, k' = 1, zeta = 0.1.
- not visible in the excerpt we could read: the final normalisation. We follow the spec: A_final = A_mod minus the
  mean of A_mod over all steps of the batch (each step counts once, whatever its length). ``final_norm="mean_std"``
  also divides by the (unbiased) std over steps; ``"none"`` skips it.
- the bonus of step t uses the *next* step's Ĥ_{t+1} (the final step of a trajectory gets no bonus), as in the spec.

Single-turn use: steps are reasoning segments (``entropo.algorithms.segments``, rule documented there); when
``batch.turn_ids`` is set, steps are turns. Entropy is the pre-update policy's (``batch.old_entropy``, detached).
The per-trajectory advantage A(i) of a step is the mean of ``batch.advantages`` over the step's tokens — exactly the
trajectory's scalar for outcome estimators (GRPO, DAPO, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from entropo.algorithms import segments
from entropo.batch import Batch
from entropo.registry import register

FINAL_NORMS = ("mean", "mean_std", "none")


def empg_step_advantages(step_advantage: Tensor, step_entropy: Tensor, is_last: Tensor, *, k: float = 1.0,
                         k_future: float = 1.0, zeta: float = 0.1, eps: float = 1e-8, final_norm: str = "mean"
                         ) -> dict[str, Tensor]:
    """EMPG on a flat list of S steps (all trajectories of the batch, each trajectory's steps consecutive).

    ``step_advantage [S]`` A(i) of the step's trajectory, ``step_entropy [S]`` mean token entropy, ``is_last [S]``
    True on each trajectory's final step. Returns {"final", "modulated", "scale", "bonus", "h_norm"} (all [S]).
    """
    if final_norm not in FINAL_NORMS:
        raise ValueError(f"unknown final_norm {final_norm!r}; allowed: {', '.join(FINAL_NORMS)}")
    h_norm = (step_entropy - step_entropy.min()) / (step_entropy.max() - step_entropy.min() + eps)
    raw_scale = torch.exp(-k * h_norm)
    scale = raw_scale / (raw_scale.mean() + eps)  # self-calibrated: batch mean of g is 1
    clarity = torch.exp(-k_future * h_norm)
    # bonus of step t is the clarity of step t+1 in the same trajectory; the last step has none
    next_clarity = torch.cat([clarity[1:], clarity.new_zeros(1)])
    bonus = zeta * next_clarity.where(~is_last, torch.zeros_like(clarity))
    modulated = step_advantage * scale + bonus
    final = modulated
    if final_norm != "none":
        final = modulated - modulated.mean()
    if final_norm == "mean_std" and modulated.numel() > 1:
        final = final / (modulated.std() + eps)
    return {"final": final, "modulated": modulated, "scale": scale, "bonus": bonus, "h_norm": h_norm}


@register("shaping", "empg", paper="Harnessing Uncertainty: Entropy-Modulated Policy Gradients, arXiv 2509.09265",
          stage="advantage")
def empg(batch: Batch, step_ctx: Any = None, k: float = 1.0, k_future: float = 1.0, zeta: float = 0.1,
         eps: float = 1e-8, final_norm: str = "mean", segment_rule: str = "sentences") -> dict[str, float]:
    """Rewrite ``batch.advantages`` with EMPG's step-modulated advantage, constant over each step's tokens.

    A_mod = A(i) * g(Ĥ_t) + zeta * f(Ĥ_{t+1}); A_final = A_mod - mean over all steps of the batch. Needs
    ``batch.old_entropy`` and, for single-turn text segmentation, ``step_ctx.tokenizer``.
    Spec example (k = k' = 1, zeta = 0.1): A = [+1, -1], step entropies [[0.2, 0.8, 0.5], [1.0, 0.4, 0.6]] give
    A_final = [[1.43435, 0.64677, 0.90760], [-0.63252, -1.27985, -1.07635]].
    """
    if batch.old_entropy is None or batch.advantages is None:
        raise ValueError("empg needs batch.old_entropy and batch.advantages (it runs at the advantage stage)")
    tokenizer = getattr(step_ctx, "tokenizer", None)
    step_index = segments.step_ids(batch, tokenizer, segment_rule)  # [B, L]
    global_id, _step_row, is_last = segments.flatten_steps(step_index)
    num_steps = int(is_last.numel())
    if num_steps == 0:
        return {"empg_steps": 0.0}
    step_entropy = segments.step_means(batch.old_entropy.float(), global_id, num_steps)  # [S]
    step_advantage = segments.step_means(batch.advantages.float(), global_id, num_steps)  # [S]
    out = empg_step_advantages(step_advantage, step_entropy, is_last, k=k, k_future=k_future, zeta=zeta, eps=eps,
                               final_norm=final_norm)
    on = global_id >= 0
    advantages = torch.zeros_like(batch.advantages, dtype=torch.float32)
    advantages[on] = out["final"][global_id[on]]
    batch.advantages = advantages
    rows_with_steps = int((step_index.max(-1).values >= 0).sum())
    return {
        "empg_steps": float(num_steps),
        "empg_steps_per_sample": num_steps / max(rows_with_steps, 1),
        "empg_scale_min": float(out["scale"].min()),
        "empg_scale_max": float(out["scale"].max()),
        "empg_bonus_mean": float(out["bonus"].mean()),
        "empg_shift": float(out["modulated"].mean()),
    }
