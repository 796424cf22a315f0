"""RiskPO (arXiv 2510.00911): bundling, Mixed-VaR paper advantage (spec section 11 toy (f)), credit modes, quantile
tracking state."""

import pytest
import torch

from entropo.algorithms.riskpo import RiskPO, mixed_var_advantage, paper_assignment
from entropo.batch import Batch
from entropo.components import Bound


def make_batch(rewards, groups, length=2) -> Batch:
    rows = len(rewards)
    return Batch(input_ids=torch.zeros(rows, length, dtype=torch.long),
                 attention_mask=torch.ones(rows, length, dtype=torch.long), response_mask=torch.ones(rows, length),
                 rewards=torch.tensor(rewards, dtype=torch.float32), group_ids=torch.tensor(groups))


# spec toy: one bundle, questions s1 = [1,0,1,0], s2 = [1,1,0,0] -> papers X = [2,1,1,0]
TOY = ([1, 0, 1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])
# batch quantiles q_0.2 = 0.6, q_0.9 = 1.7; g_R = [0, -1, -1, -1.571429]; g_C = [0, 0, 0, -3]
# mix (w = 1.5) = (1.5 g_C + g_R) / 2.5 = [0, -0.4, -0.4, -2.428571]; / std(X) = 0.816497 -> below
PAPER_ADV = torch.tensor([0.0, -0.489898, -0.489898, -2.974358])


def test_mixed_var_formula_spec_toy():
    x = torch.tensor([2.0, 1.0, 1.0, 0.0])
    adv = mixed_var_advantage(x, torch.tensor(0.6), torch.tensor(1.7), 0.2, 0.9, 1.5, eps=0.0)
    assert torch.allclose(adv, torch.tensor([0.0, -0.4, -0.4, -2.428571]), atol=1e-5)
    assert (adv <= 0).all()  # natural baseline: only low-scoring papers are pushed down
    pure_rvar = mixed_var_advantage(x, torch.tensor(0.6), torch.tensor(1.7), 0.2, 0.9, 0.0, eps=0.0)
    assert torch.allclose(pure_rvar, torch.tensor([0.0, -1.0, -1.0, -1.571429]), atol=1e-5)
    no_baseline = mixed_var_advantage(x, torch.tensor(0.6), torch.tensor(1.7), 0.2, 0.9, 0.0, False, eps=0.0)
    assert torch.allclose(no_baseline, pure_rvar + 1.1 / 0.7, atol=1e-5)  # shifted by (q_b - q_a) / (beta - alpha)


def test_spec_toy_credit_modes():
    batch = make_batch(*TOY)
    uniform = RiskPO(quantile_mode="batch", credit="uniform")(batch)[:, 0]
    assert torch.allclose(uniform, PAPER_ADV.repeat(2), atol=1e-4)
    # "std": / question std = sqrt(1/3) = 0.57735 -> [0, -0.84853, -0.84853, -5.15174]
    std = Bound("advantage", "riskpo", {"quantile_mode": "batch"})(batch)[:, 0]
    assert torch.allclose(std, torch.tensor([0.0, -0.84853, -0.84853, -5.15174]).repeat(2), atol=1e-4)
    # "score": x0.5 where r > 0, x1.5 where r = 0. s1 = [1,0,1,0], s2 = [1,1,0,0]
    score = RiskPO(quantile_mode="batch", credit="score")(batch)[:, 0]
    factors = torch.tensor([0.5, 1.5, 0.5, 1.5, 0.5, 0.5, 1.5, 1.5])
    assert torch.allclose(score, PAPER_ADV.repeat(2) * factors, atol=1e-4)
    # "sum-mean": centred rewards (mean 0.5): paper 0 (+.5,+.5) -> halves; papers 1, 2 (-.5,+.5) sum 0 -> A/2 each;
    # paper 3 (-.5,-.5) -> halves
    sum_mean = RiskPO(quantile_mode="batch", credit="sum-mean")(batch)[:, 0]
    assert torch.allclose(sum_mean, (PAPER_ADV / 2).repeat(2), atol=1e-4)


def test_interleaved_batch_order_gives_same_papers():
    # same two questions, rows interleaved: paper j is still the j-th response of each question in batch order
    batch = make_batch([1, 1, 0, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 1, 0, 1])
    adv = RiskPO(quantile_mode="batch")(batch)[:, 0]
    expected = torch.tensor([0.0, -0.84853, -0.84853, -5.15174])
    assert torch.allclose(adv[0::2], expected, atol=1e-4) and torch.allclose(adv[1::2], expected, atol=1e-4)


def test_bundles_and_unequal_groups():
    # bundle_size 2 over 3 groups (sizes 3, 2, 2): bundle 0 = groups 0, 1 with 2 papers (group 0's third response
    # is in no paper); bundle 1 = group 2 alone
    bundle, paper, num_bundles, max_papers = paper_assignment(torch.tensor([7, 7, 7, 9, 9, 4, 4]), 2)
    assert bundle.tolist() == [0, 0, 0, 0, 0, 1, 1] and paper.tolist() == [0, 1, -1, 0, 1, 0, 1]
    assert (num_bundles, max_papers) == (2, 2)
    adv = RiskPO(bundle_size=2, quantile_mode="batch")(make_batch([1, 0, 1, 0, 1, 1, 0], [7, 7, 7, 9, 9, 4, 4]))
    assert adv[2].abs().sum() == 0  # outside every paper
    assert (adv <= 0).all()
    # a bundle with a single paper has q = X: every advantage 0
    single = RiskPO(bundle_size=2, quantile_mode="batch")(make_batch([1, 0], [0, 1]))
    assert single.abs().sum() == 0


def test_quantile_tracking_initialises_then_steps():
    comp = RiskPO(quantile_mode="track", credit="uniform")
    batch = make_batch(*TOY)
    first = comp(batch)[:, 0]
    # first call: grid initialised to the empirical quantiles -> same as batch mode on a single bundle
    assert torch.allclose(first, PAPER_ADV.repeat(2), atol=1e-4)
    state = comp.state_dict()
    comp(batch)
    # one SGD step: q_0.2 = 0.6, F = #{X < 0.6} / 4 = 0.25 -> 0.6 + 0.1 (0.2 - 0.25) = 0.595
    # q_0.9 = 1.7, F = 3/4 -> 1.7 + 0.1 (0.9 - 0.75) = 1.715
    q_low, q_high = comp.last_quantiles
    assert float(q_low[0]) == pytest.approx(0.595, abs=1e-5) and float(q_high[0]) == pytest.approx(1.715, abs=1e-5)
    # restoring the state taken after the first call replays the same second step
    restored = RiskPO(quantile_mode="track", credit="uniform")
    restored.load_state_dict(state)
    restored(batch)
    assert torch.allclose(restored.last_quantiles[0], q_low) and torch.allclose(restored.last_quantiles[1], q_high)


def test_constant_bundle_with_tracked_quantiles_is_guarded():
    comp = RiskPO(quantile_mode="track", credit="uniform")
    comp(make_batch(*TOY))  # grid initialised: q_0.2 = 0.6, q_0.9 = 1.7
    all_wrong = make_batch([0] * 8, TOY[1])  # X = [0, 0, 0, 0], std 0
    adv = comp(all_wrong)[:, 0]
    # SGD step with F = 1: q_0.2 = 0.6 + 0.1 (0.2 - 1) = 0.52, q_0.9 = 1.7 + 0.1 (0.9 - 1) = 1.69
    # g_R = (0.52 - 1.69) / 0.7 = -1.671429; g_C = -0.52 / 0.2 = -2.6; mix = (1.5 * -2.6 - 1.671429) / 2.5
    # = -2.228571; bundle std 0 <= min_std -> divide by 1 (the official 0 + 1e-6 would give -2.2e6)
    assert torch.allclose(adv, torch.full((8,), -2.228571), atol=1e-4)
    official = RiskPO(quantile_mode="track", credit="uniform", min_std=0.0)
    official(make_batch(*TOY))
    assert float(official(all_wrong)[0, 0]) == pytest.approx(-2.228571e6, rel=1e-3)


def test_state_round_trip_matches_continuing_instance():
    batch = make_batch(*TOY)
    original = RiskPO(quantile_mode="mix")
    original(batch)
    restored = RiskPO(quantile_mode="mix")
    restored.load_state_dict(original.state_dict())
    assert torch.allclose(restored(batch), original(batch))
    assert RiskPO().state_dict() == {"tracked": None}


def test_invalid_params_raise():
    with pytest.raises(ValueError):
        RiskPO(alpha=0.9, beta=0.2)
    with pytest.raises(ValueError):
        RiskPO(credit="median")
