
import numpy as np
import pytest
import torch

from entropo import diagnostics as diag
from entropo.algorithms.controllers import AdaptiveEntropy, AdaptiveKL


def test_cov_logp_adv_by_hand():
    # masked tokens: lp = [-1, -2, -3], A = [1, 1, -2]; means -2 and 0
    # cov = ((1)(1) + (0)(1) + (-1)(-2)) / 3 = 1.0
    lp = torch.tensor([[-1.0, -2.0, 9.0], [-3.0, 7.0, 7.0]])
    adv = torch.tensor([[1.0, 1.0, 5.0], [-2.0, 3.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert diag.cov_logp_adv(lp, adv, mask) == pytest.approx(1.0)
    # constant advantage -> zero covariance
    assert diag.cov_logp_adv(lp, torch.full_like(adv, 0.3), mask) == pytest.approx(0.0)


def test_zero_variance_group_fraction():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 5.0])
    groups = torch.tensor([7, 7, 3, 3, 9, 9, 11])  # groups 7: same, 3: differ, 9: same, 11: singleton (same)
    assert diag.zero_variance_group_fraction(rewards, groups) == pytest.approx(3 / 4)


def test_pass_at_k_matches_combinatorics():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert diag.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert diag.pass_at_k(5, 0, 3) == 0.0
    assert diag.pass_at_k(5, 4, 2) == 1.0
    assert diag.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        diag.pass_at_k(2, 1, 3)


def test_entropy_fit_recovers_parameters():
    h = np.linspace(0.1, 1.5, 20)
    r = -0.2 * np.exp(h) + 0.9
    fit = diag.fit_entropy_performance(list(h), list(r))
    assert fit["a"] == pytest.approx(0.2, abs=1e-9)
    assert fit["b"] == pytest.approx(0.9, abs=1e-9)
    assert fit["ceiling"] == pytest.approx(0.7, abs=1e-9)
    assert diag.fit_entropy_performance([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None


def test_adaptive_kl_controller_by_hand():
    c = AdaptiveKL(init_coef=0.1, target=0.01, horizon=10)
    c.update({"kl_ref": 0.02})  # error = clip(2-1) = 0.2 -> coef * (1 + 0.2/10)
    assert c.value() == pytest.approx(0.1 * 1.02)
    c.update({"kl_ref": 0.0})  # error = -1 -> clipped -0.2
    assert c.value() == pytest.approx(0.1 * 1.02 * 0.98)
    state = c.state_dict()
    c2 = AdaptiveKL()
    c2.load_state_dict(state)
    assert c2.value() == c.value() and c2.target == 0.01


def test_adaptive_entropy_controller_by_hand():
    c = AdaptiveEntropy(init_coef=0.0, target=1.0, delta=0.01, coef_max=0.015)
    c.update({"entropy": 0.5})
    assert c.value() == pytest.approx(0.01)
    c.update({"entropy": 0.5})
    assert c.value() == pytest.approx(0.015)  # clamped at coef_max
    c.update({"entropy": 2.0})
    assert c.value() == pytest.approx(0.005)
    c.update({"other": 1.0})  # metric absent -> unchanged
    assert c.value() == pytest.approx(0.005)
