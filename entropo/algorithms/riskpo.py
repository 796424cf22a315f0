"""RiskPO: risk-based policy optimization with a Mixed Value-at-Risk objective over question bundles.

Paper: "RiskPO: Risk-Based Policy Optimization via Verifiable Reward for LLM Post-Training", arXiv 2510.00911.
Official code checked: RTkenny/RiskPO ``verl/trainer/ppo/core_algos.py``
(``compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking``), ``verl/trainer/ppo/ray_trainer.py`` (bundle ids,
the quantile-tracking SGD) and ``scripts/run_qwen2.5_1.5b_MVaR_math.sh`` (the defaults used here).

Instead of the mean reward, the policy ascends a mixture of the lower-tail CVaR and a range VaR of the score of a
"paper" (several questions answered together), which puts the gradient on the hard instances.

Verified against the official code and resolved here:

- Bundles [verified]: ``bundle_size`` consecutive prompts (groups) form a bundle (official: consecutive prompts of the
  dataloader batch; here the order of first appearance of the groups in the batch, i.e. the sampling order). Paper j of
  a bundle = the j-th response (batch order) of every question in it; X_j = sum of their rewards; the number of papers
  is the smallest group size of the bundle, responses beyond it belong to no paper and get advantage 0 (official).
- Quantiles [verified]: ``quantile_mode="batch"``: per-bundle empirical quantiles q_alpha, q_beta of the paper scores
  (linear interpolation, ``torch.quantile``); a bundle with one paper uses q = X and std 1. ``"track"`` (script
  default): global quantiles on the level grid 0.05, 0.10, ..., 0.95, set on the first call to the empirical
  quantiles of all paper scores of the batch, afterwards updated once per call (before use) by one SGD step on the
  pinball loss, q_l <- q_l + lr_q (l - F(q_l)) with F(q) = fraction of this batch's paper scores strictly below q;
  q_alpha, q_beta are read at the grid levels nearest to alpha, beta. ``"mix"``: the average of the two (official
  option). The tracked grid is the state of this class component (``state_dict``).
- Paper advantage [verified]: g_R = [(X - q_a)+ - (X - q_b)+ + (q_a - q_b)] / (beta - alpha + eps) (the (q_a - q_b)
  "natural baseline" makes every advantage <= 0, spec (g): that is the released setting ``natural_baseline_adv=True``;
  ``natural_baseline=False`` drops it); g_C = -(q_a - X)+ / (alpha + eps); A = (w g_C + g_R) / (w + 1) with
  w = ``cvar_weight`` (1.5; w = 0 is the pure RVaR objective); ``norm_by_std``: / (std of the bundle's paper scores,
  unbiased, + eps). eps = 1e-6 as in the code.
- Degenerate bundles (deviation, ``min_std``): when every paper of a bundle has the same score (e.g. every answer
  wrong) the official code divides by 0 + 1e-6. With batch quantiles the numerator is 0 there, but with tracked
  quantiles it is not (q_alpha > X gives g_C = -(q_alpha - X) / alpha), so such a bundle gets advantages of order
  -1e6 that swamp the update: our 30-step tiny-model run with the official rule reached a mean |A| of 1.8e5 and
  accuracy fell from 0.14 to 0.05. As the code already does for the question std, a bundle std <= ``min_std``
  (1e-3) counts as 1; ``min_std=0`` restores the official behaviour.
- Credit assignment [verified]: "uniform" (A to each response of the paper), "std" (script default: / (std of the
  question's rewards in the batch, unbiased, + eps), a std <= 1e-3 counts as 1), "score" (x 0.5 if r > 0 else x 1.5),
  "sum-mean" (A (r - mean_q) / sum over the paper of (r - mean_q); A / n_questions when that sum is ~0).
- alpha / beta: 0.2 / 0.9 from the released script (the paper summary says 0.8 for beta); bundle size 5, lr_q 0.1.

``last_quantiles`` on the instance holds (q_alpha, q_beta) used for the last batch (per bundle) for inspection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register

QUANTILE_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95
CREDIT_MODES = ("uniform", "std", "score", "sum-mean")
QUANTILE_MODES = ("batch", "track", "mix")


def group_layout(group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(group rank [B], position in group [B], group sizes [G]) with groups ranked by first appearance in the batch
    and positions counted in batch order."""
    index, num_groups = ops.group_index(group_ids)
    rows = torch.arange(index.numel())
    first_row = torch.full((num_groups,), index.numel(), dtype=torch.long).scatter_reduce(0, index, rows, "amin")
    rank_of_group = torch.empty(num_groups, dtype=torch.long)
    rank_of_group[torch.argsort(first_row)] = torch.arange(num_groups)
    rank = rank_of_group[index]  # [B]
    order = torch.argsort(rank, stable=True)  # rows grouped by rank, batch order kept inside a group
    sizes = torch.bincount(rank, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.empty_like(rank)
    position[order] = torch.arange(rank.numel()) - starts[rank[order]]
    return rank, position, sizes


def paper_assignment(group_ids: Tensor, bundle_size: int) -> tuple[Tensor, Tensor, int, int]:
    """(bundle [B], paper [B] or -1 when the response is in no paper, number of bundles, max papers per bundle)."""
    rank, position, sizes = group_layout(group_ids)
    num_groups = sizes.numel()
    bundle_of_group = torch.arange(num_groups) // bundle_size
    num_bundles = int(bundle_of_group.max()) + 1
    papers_per_bundle = torch.full((num_bundles,), int(sizes.max()), dtype=torch.long)
    papers_per_bundle = papers_per_bundle.scatter_reduce(0, bundle_of_group, sizes, "amin")
    bundle = bundle_of_group[rank]
    paper = torch.where(position < papers_per_bundle[bundle], position, torch.full_like(position, -1))
    return bundle, paper, num_bundles, int(papers_per_bundle.max())


def paper_scores(scores: Tensor, bundle: Tensor, paper: Tensor, num_bundles: int, max_papers: int
                 ) -> tuple[Tensor, Tensor]:
    """(X [num_bundles, max_papers] = sum of the rewards of each paper, valid [num_bundles, max_papers] bool)."""
    in_paper = paper >= 0
    flat = bundle[in_paper] * max_papers + paper[in_paper]
    totals = scores.new_zeros(num_bundles * max_papers).index_add_(0, flat, scores[in_paper])
    valid = torch.zeros(num_bundles * max_papers, dtype=torch.bool)
    valid[flat] = True
    return totals.view(num_bundles, max_papers), valid.view(num_bundles, max_papers)


def bundle_statistics(x: Tensor, valid: Tensor, alpha: float, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per bundle (q_alpha [N], q_beta [N], std [N]) of its paper scores; one paper -> q = X, std = 1 (official).
    The std is the raw unbiased std (0 for a constant bundle): the caller applies the ``min_std`` guard."""
    q_low, q_high, std = [], [], []
    for row, ok in zip(x, valid):
        papers = row[ok]
        if papers.numel() == 1:
            q_low.append(papers[0]), q_high.append(papers[0]), std.append(papers.new_tensor(1.0))
        else:
            q_low.append(torch.quantile(papers, alpha)), q_high.append(torch.quantile(papers, beta))
            std.append(papers.std())
    return torch.stack(q_low), torch.stack(q_high), torch.stack(std)


def mixed_var_advantage(x: Tensor, q_low: Tensor, q_high: Tensor, alpha: float, beta: float, cvar_weight: float,
                        natural_baseline: bool = True, eps: float = 1e-6) -> Tensor:
    """Paper advantage (w g_C + g_R) / (w + 1) (see module doc); all tensors broadcast together."""
    range_var = (x - q_low).clamp(min=0) - (x - q_high).clamp(min=0)
    if natural_baseline:
        range_var = range_var + (q_low - q_high)
    range_var = range_var / (beta - alpha + eps)
    lower_cvar = -(q_low - x).clamp(min=0) / (alpha + eps)
    return (cvar_weight * lower_cvar + range_var) / (cvar_weight + 1.0)


def assign_credit(paper_adv: Tensor, scores: Tensor, group_ids: Tensor, bundle: Tensor, paper: Tensor,
                  max_papers: int, mode: str, eps: float = 1e-6) -> Tensor:
    """[B] advantage of each response from its paper's advantage (``paper_adv`` [B], 0 outside papers)."""
    in_paper = (paper >= 0).to(scores.dtype)
    if mode == "uniform":
        return paper_adv * in_paper
    _, group_mean, group_std = ops.group_stats(scores, group_ids)
    if mode == "std":
        group_std = torch.where(group_std > 1e-3, group_std, torch.ones_like(group_std))
        return paper_adv / (group_std + eps) * in_paper
    if mode == "score":
        return paper_adv * torch.where(scores > 0, 0.5, 1.5) * in_paper
    # sum-mean: share proportional to (r - mean_q) within the paper
    centred = (scores - group_mean) * in_paper
    flat = (bundle * max_papers + paper.clamp(min=0)).long()
    paper_sum = torch.zeros(int(flat.max()) + 1, dtype=scores.dtype).index_add_(0, flat, centred)[flat]
    paper_count = torch.zeros(int(flat.max()) + 1, dtype=scores.dtype).index_add_(0, flat, in_paper)[flat]
    degenerate = paper_sum.abs() <= 1e-6
    share = torch.where(degenerate, 1.0 / paper_count.clamp(min=1.0), centred / paper_sum.where(~degenerate, 1.0))
    return paper_adv * share * in_paper


@register("advantage", "riskpo", paper="RiskPO: Risk-Based Policy Optimization via Verifiable Reward, arXiv 2510.00911")
class RiskPO:
    """Mixed-VaR bundle advantage (see module doc). Params: ``alpha`` (0.2), ``beta`` (0.9), ``bundle_size`` (5),
    ``cvar_weight`` (1.5), ``norm_by_std`` (True), ``credit`` ("std"), ``quantile_mode`` ("track"), ``lr_q`` (0.1),
    ``natural_baseline`` (True), ``eps`` (1e-6), ``min_std`` (1e-3; a bundle std at or below it counts as 1).
    Example (spec toy, batch quantiles, one bundle of 2 questions x 4):
    rewards [1,0,1,0], [1,1,0,0] -> X = [2,1,1,0], A_paper = [0, -0.4899, -0.4899, -2.9744], "std" credit
    -> [0, -0.8485, -0.8485, -5.1517]."""

    def __init__(self, alpha: float = 0.2, beta: float = 0.9, bundle_size: int = 5, cvar_weight: float = 1.5,
                 norm_by_std: bool = True, credit: str = "std", quantile_mode: str = "track", lr_q: float = 0.1,
                 natural_baseline: bool = True, eps: float = 1e-6, min_std: float = 1e-3):
        if not 0.0 < alpha < beta < 1.0:
            raise ValueError(f"riskpo: need 0 < alpha < beta < 1 (got {alpha}, {beta})")
        if credit not in CREDIT_MODES:
            raise ValueError(f"riskpo: unknown credit {credit!r}; allowed: {CREDIT_MODES}")
        if quantile_mode not in QUANTILE_MODES:
            raise ValueError(f"riskpo: unknown quantile_mode {quantile_mode!r}; allowed: {QUANTILE_MODES}")
        if bundle_size < 1 or cvar_weight < 0 or lr_q < 0:
            raise ValueError("riskpo: bundle_size >= 1, cvar_weight >= 0 and lr_q >= 0 are required")
        self.alpha, self.beta, self.bundle_size, self.cvar_weight = alpha, beta, bundle_size, cvar_weight
        self.norm_by_std, self.credit, self.quantile_mode, self.lr_q = norm_by_std, credit, quantile_mode, lr_q
        self.natural_baseline, self.eps, self.min_std = natural_baseline, eps, min_std
        self.levels = torch.tensor(QUANTILE_LEVELS)
        self.tracked: Tensor | None = None  # [19] tracked quantiles of the paper score, None before the first call
        self.last_quantiles: tuple[Tensor, Tensor] | None = None

    def state_dict(self) -> dict:
        return {"tracked": None if self.tracked is None else self.tracked.tolist()}

    def load_state_dict(self, state: dict) -> None:
        tracked = state.get("tracked")
        self.tracked = None if tracked is None else torch.tensor(tracked, dtype=torch.float32)

    def track(self, all_papers: Tensor) -> tuple[float, float]:
        """Initialise (first call) or take one pinball-loss SGD step on the level grid; returns (q_alpha, q_beta)."""
        if self.tracked is None:
            self.tracked = torch.quantile(all_papers, self.levels.to(all_papers.dtype)).float()
        else:
            below = (all_papers[None, :] < self.tracked[:, None]).float().mean(1)  # F(q_l) [19]
            self.tracked = self.tracked + self.lr_q * (self.levels - below)
        low = int((self.levels - self.alpha).abs().argmin())
        high = int((self.levels - self.beta).abs().argmin())
        return float(self.tracked[low]), float(self.tracked[high])

    def __call__(self, batch: Batch) -> Tensor:
        scores = batch.returns().float().cpu()
        group_ids = batch.group_ids.cpu()
        bundle, paper, num_bundles, max_papers = paper_assignment(group_ids, self.bundle_size)
        x, valid = paper_scores(scores, bundle, paper, num_bundles, max_papers)
        q_low, q_high, std = bundle_statistics(x, valid, self.alpha, self.beta)
        if self.quantile_mode != "batch":
            tracked_low, tracked_high = self.track(x[valid])
            if self.quantile_mode == "track":
                q_low, q_high = torch.full_like(q_low, tracked_low), torch.full_like(q_high, tracked_high)
            else:
                q_low, q_high = (q_low + tracked_low) / 2, (q_high + tracked_high) / 2
        self.last_quantiles = (q_low, q_high)
        adv = mixed_var_advantage(x, q_low[:, None], q_high[:, None], self.alpha, self.beta, self.cvar_weight,
                                  self.natural_baseline, self.eps)  # [num_bundles, max_papers]
        if self.norm_by_std:
            if self.min_std > 0:
                std = torch.where(std > self.min_std, std, torch.ones_like(std))
            adv = adv / (std[:, None] + self.eps)
        paper_adv = adv[bundle, paper.clamp(min=0)]  # [B]; rows outside papers are zeroed by the credit step
        advantage = assign_credit(paper_adv, scores, group_ids, bundle, paper, max_papers, self.credit, self.eps)
        return ops.broadcast_to_tokens(advantage.to(batch.response_mask.device), batch.response_mask)
