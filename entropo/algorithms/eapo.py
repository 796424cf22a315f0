"""EAPO's round reward: the outcome geometrically discounted by the rounds still to come ("IterResearch: Rethinking
Long-Horizon Agents via Markovian State Reconstruction", arXiv 2511.07327, Efficiency-Aware Policy Optimization).

IterResearch plays an episode as rounds, each from a rebuilt workspace (``StepResult.context``; environment
``notebook``), and trains on every round as its own row (prompt = the workspace s_t, response = the policy's output
d_t). Trajectory i of T_i rounds with verdict R_i gives round t (1-based) the reward

    r_{i,t} = gamma^(T_i - t) * R_i

so the last round gets R_i and the early rounds of a long trajectory get less than those of a short one. The group
pool C_q is all rounds of the G trajectories of question q (they share ``group_ids``: rows != trajectories); the
advantage is the z-score of r over C_q (``grpo`` on those rows), the rows are trimmed to a multiple of the
data-parallel size (selection ``downsample_to_multiple``) and the objective is GSPO's sequence-level clipped surrogate
(``gspo``).

Provenance: no official training code was found (the Alibaba-NLP/DeepResearch index holds other sub-projects), and
the paper's full text was not readable here: the reward's form follows the paper's description; gamma's value is not
verified (the paper says only that it is slightly below 1); 0.9 is our default, the spec's hand-value choice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo.batch import Batch
from entropo.registry import register


def round_discounts(num_rounds: int, gamma: float) -> list[float]:
    """[gamma^(T-1), ..., gamma, 1] for rounds t = 1..T. Example (gamma 0.9, T 3): [0.81, 0.9, 1.0]."""
    return [float(gamma) ** (num_rounds - t) for t in range(1, num_rounds + 1)]


def row_rounds(batch: Batch) -> Tensor:
    """[B] 0-based round index of each row: the largest ``turn_ids`` on its response tokens (a rebuilt-context row
    holds one round's action; in the append-all layout this is the episode's last turn). Rows without response
    tokens get ``num_turns - 1`` (no discount)."""
    num_turns = batch.num_turns if batch.num_turns is not None else torch.ones(batch.size, dtype=torch.long)
    num_turns = num_turns.to(batch.response_mask.device)
    if batch.turn_ids is None:
        return (num_turns - 1).clamp_min(0)
    turns = batch.turn_ids.where(batch.response_mask > 0, -1).max(-1).values
    return torch.where(turns >= 0, turns, (num_turns - 1).clamp_min(0))


@register("shaping", "geometric_round_discount", stage="reward",
          paper="IterResearch / EAPO, arXiv 2511.07327")
def geometric_round_discount(batch: Batch, gamma: float = 0.9) -> dict[str, float]:
    """rewards *= gamma^(T - 1 - round): round t (0-based ``round``) of a trajectory of T rounds (``num_turns``)
    gets gamma^(T-t-1) R (see module). Only the outcome ``rewards`` are discounted (environment turn rewards in
    ``token_rewards`` are left as they are). gamma = 1 is plain per-round GRPO. Metrics: ``rounds_mean`` (T over
    rows) and ``discount_mean``."""
    if not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"geometric_round_discount: gamma must be in (0, 1], got {gamma}")
    num_turns = batch.num_turns.to(batch.rewards.device) if batch.num_turns is not None else \
        torch.ones(batch.size, dtype=torch.long, device=batch.rewards.device)
    remaining = (num_turns - 1 - row_rounds(batch).to(num_turns.device)).clamp_min(0)
    discount = torch.pow(torch.full_like(batch.rewards, float(gamma)), remaining.to(batch.rewards.dtype))
    batch.rewards = batch.rewards * discount
    return {"rounds_mean": float(num_turns.float().mean()), "discount_mean": float(discount.mean())}
