"""BAPO (arXiv 2510.18927): contributions and bound search (spec section 9 toy (f)), loss values, whole-batch scope."""

import pytest
import torch

from entropo.algorithms.bapo import (
    HIGH_KEY,
    LOW_KEY,
    bapo,
    pos_neg_ratio,
    search_bounds,
)
from entropo.batch import Batch
from entropo.components import Bound

# spec toy: tokens (rho, A) = (1.1,+1), (1.5,+1), (0.5,-1), (1.0,-1), (0.7,-1)
RHO = torch.tensor([[1.1, 1.5, 0.5, 1.0, 0.7]])
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0]])
ONES = torch.ones(1, 5)
SEARCH = {"ratio_low_start": 0.6, "ratio_low_max": 0.8, "ratio_low_step": 0.05, "ratio_high_start": 1.2,
          "ratio_high_max": 2.0, "ratio_high_step": 0.05}


def test_contributions_spec_toy():
    # pos = min(1.1, 1.2) + min(1.5, 1.2) = 2.3; neg = max(0.5, 0.6) + 1.0 + 0.7 = 2.3 -> pos/neg = 1
    assert pos_neg_ratio(RHO, ADV, ONES, 0.6, 1.2) == pytest.approx(1.0, abs=1e-6)
    # c_lo = 0.8: neg = 0.8 + 1.0 + 0.8 = 2.6 -> 2.3 / 2.6 (raising c_lo only hurts, spec (g))
    assert pos_neg_ratio(RHO, ADV, ONES, 0.8, 1.2) == pytest.approx(2.3 / 2.6, abs=1e-6)
    # a zero-weight token is not counted: drop (0.5, -1) -> neg = 1.7, pos/neg = 2.3 / 1.7
    weights = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    assert pos_neg_ratio(RHO, ADV, weights, 0.6, 1.2) == pytest.approx(2.3 / 1.7, abs=1e-6)
    assert pos_neg_ratio(RHO, ADV.clamp(min=0), ONES, 0.6, 1.2) == float("inf")


def test_search_met_at_start_keeps_bounds():
    low, high, ratio = search_bounds(RHO, ADV, ONES, target=1.0, **SEARCH)
    assert (low, high) == (0.6, 1.2) and ratio == pytest.approx(1.0, abs=1e-6)


def test_search_raises_low_then_high_to_their_maxima():
    # target 1.2 is unreachable: c_lo climbs to 0.8 (neg 2.6), then c_hi to 2.0 (pos 1.1 + 1.5 = 2.6): ratio 1.0
    low, high, ratio = search_bounds(RHO, ADV, ONES, target=1.2, **SEARCH)
    assert low == pytest.approx(0.8) and high == pytest.approx(2.0) and ratio == pytest.approx(1.0, abs=1e-6)


def test_search_stops_as_soon_as_target_met():
    # (1.1,+1), (1.5,+1), (1.0,-1), (1.0,-1): neg = 2 whatever c_lo; pos = 1.1 + min(1.5, c_hi)
    # c_hi: 1.25 -> 1.175, 1.3 -> 1.2, 1.35 -> 1.225, 1.4 -> 1.25 >= 1.24: stop at 1.4 (c_lo went to its max first)
    rho, adv = torch.tensor([[1.1, 1.5, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    low, high, ratio = search_bounds(rho, adv, torch.ones(1, 4), target=1.24, **SEARCH)
    assert low == pytest.approx(0.8) and high == pytest.approx(1.4) and ratio == pytest.approx(1.25, abs=1e-6)


def test_loss_values_with_searched_bounds():
    # bounds (0.8, 2.0), c = 3: (1.1,+1) -> -1.1; (1.5,+1) -> -1.5; (0.5,-1) -> max(0.5, 0.8) = 0.8;
    # (1.0,-1) -> 1.0; (0.7,-1) -> 0.8; extra token (5.0,-1): max(5, 2) = 5 capped at c |A| = 3
    rho = torch.tensor([[1.1, 1.5, 0.5, 1.0, 0.7, 5.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, -1.0]])
    old = torch.zeros(1, 6)
    loss, metrics = bapo(rho.log(), old, adv, torch.ones(1, 6), target=100.0, scope="micro")
    assert torch.allclose(loss, torch.tensor([[-1.1, -1.5, 0.8, 1.0, 0.8, 3.0]]), atol=1e-5)
    assert float(metrics["bapo_ratio_low"]) == pytest.approx(0.8) and float(metrics["bapo_ratio_high"]) == 2.0
    assert float(metrics["clip_frac_dual"]) == pytest.approx(1 / 6)


def test_zero_advantage_gives_zero_gradient():
    logprobs = torch.randn(2, 4, requires_grad=True)
    loss, _ = bapo(logprobs, logprobs.detach() + 0.3, torch.zeros(2, 4), torch.ones(2, 4), scope="micro")
    loss.sum().backward()
    assert torch.count_nonzero(logprobs.grad) == 0


def toy_batch(advantages: torch.Tensor) -> Batch:
    rows, length = advantages.shape
    b = Batch(input_ids=torch.zeros(rows, length, dtype=torch.long),
              attention_mask=torch.ones(rows, length, dtype=torch.long), response_mask=torch.ones(rows, length),
              rewards=torch.zeros(rows), group_ids=torch.arange(rows))
    b.old_logprobs, b.advantages = torch.zeros(rows, length), advantages
    return b


def test_batch_scope_bounds_independent_of_micro_split():
    # rows 0-1 positive, rows 2-3 negative with more mass: at rho = 1 pos/neg = 4 / 6 < 1 -> both bounds to max.
    adv = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -2.0], [-1.0, -2.0]])
    batch = toy_batch(adv)
    objective = Bound("objective", "bapo", {"target": 1.0})
    extras = objective.prepare(batch, torch.Generator())
    assert torch.allclose(extras[LOW_KEY], torch.full((4,), 0.8)) and torch.allclose(extras[HIGH_KEY], torch.full((4,), 2.0))
    batch.extras.update(extras)
    logprobs = torch.log(torch.tensor([[1.5, 2.5], [1.0, 1.0], [0.5, 0.9], [0.7, 1.0]]))
    whole, _ = objective(logprobs, batch.old_logprobs, adv, batch.token_weights, extras=batch.extras)
    parts = []
    for rows in (torch.tensor([0, 1]), torch.tensor([2, 3])):
        micro = batch.select(rows)
        part, metrics = objective(logprobs[rows], micro.old_logprobs, micro.advantages, micro.token_weights,
                                  extras=micro.extras)
        assert float(metrics["bapo_ratio_low"]) == pytest.approx(0.8)
        parts.append(part)
    assert torch.allclose(torch.cat(parts), whole)
    # the per-micro-batch search (official) would leave the all-positive half at its start bounds instead
    _, micro_metrics = Bound("objective", "bapo", {"scope": "micro"})(logprobs[:2], batch.old_logprobs[:2], adv[:2],
                                                                      torch.ones(2, 2), extras={})
    assert float(micro_metrics["bapo_ratio_low"]) == pytest.approx(0.6)


def test_batch_scope_positive_heavy_batch_keeps_start_bounds():
    # pos/neg = 2 / 1 >= 1 at rho = 1. (An exactly balanced batch gives 2 / (2 + 1e-8) < 1, so with the official
    # eps a perfect balance still widens the bounds.)
    batch = toy_batch(torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
    extras = Bound("objective", "bapo").prepare(batch, torch.Generator())
    assert float(extras[LOW_KEY][0]) == pytest.approx(0.6) and float(extras[HIGH_KEY][0]) == pytest.approx(1.2)
    assert Bound("objective", "bapo", {"scope": "micro"}).prepare(batch, torch.Generator()) == {}


def test_invalid_params_raise():
    with pytest.raises(ValueError):
        bapo(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), ratio_low_start=1.1)
    with pytest.raises(ValueError):
        bapo(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), scope="mini")
