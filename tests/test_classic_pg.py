"""HDPO (arXiv 2306.11246), N-PG-IGT / (N-)HARPG (arXiv 2302.01734) and the penalty method for bilevel optimization
(arXiv 2309.01753): closed-form / hand-computed checks on toy cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from entropo.classic import bilevel_penalty as bp
from entropo.classic import hdpo
from entropo.classic import stochastic_pg as spg

# ---- HDPO ------------------------------------------------------------------------------------------------------------


def _poisson_quantile(rate: float, q: float) -> int:
    """Smallest k with P(Poisson(rate) <= k) >= q, by summing the pmf by hand."""
    k, pmf = 0, math.exp(-rate)
    cdf = pmf
    while cdf < q:
        k += 1
        pmf *= rate / k
        cdf += pmf
    return k


def test_optimal_base_stock_is_the_critical_fractile_quantile():
    # Poisson(5), L = 4: demand over the L+1 = 5 periods d_t..d_{t+4} is Poisson(25); p/(p+h) = 0.9 -> 32
    p9 = hdpo.InventoryProblem(lead_time=4, holding_cost=1, underage_cost=9)
    assert hdpo.optimal_base_stock(p9)[0] == _poisson_quantile(25, 0.9) == 32
    p19 = hdpo.InventoryProblem(lead_time=2, holding_cost=1, underage_cost=19)
    assert hdpo.optimal_base_stock(p19)[0] == _poisson_quantile(15, 0.95)
    # normal demand: S* = 5·3 + 1.6·sqrt(3)·z_0.9, z_0.9 = 1.2815515655
    pn = hdpo.InventoryProblem(lead_time=2, demand="normal", demand_std=1.6)
    assert hdpo.optimal_base_stock(pn)[0] == pytest.approx(15 + 1.6 * math.sqrt(3) * 1.2815515655, abs=1e-6)


def test_simulator_timing_and_costs_by_hand():
    # L = 2, constant order 3, state [on-hand 4, arriving next period 1], demands 6, 2, 5, h = 1, p = 9, backlog.
    prob = hdpo.InventoryProblem(lead_time=2, holding_cost=1, underage_cost=9, periods=3, ignore_periods=0)
    out = hdpo.simulate(prob, lambda s: torch.full((s.shape[0],), 3.0), torch.tensor([[6.0, 2.0, 5.0]]),
                        torch.tensor([[4.0, 1.0]]))
    # t0: 4-6 = -2 -> cost 18; on-hand -2+1 = -1, pipeline [3]
    # t1: -1-2 = -3 -> cost 27; on-hand -3+3 = 0 (order of t0 arrives for d_2 = L periods later)
    # t2: 0-5 = -5 -> cost 45
    assert out["costs"].tolist() == [[18.0, 27.0, 45.0]]
    lost = hdpo.InventoryProblem(lead_time=2, holding_cost=1, underage_cost=9, periods=3, ignore_periods=0,
                                 lost_sales=True)
    out = hdpo.simulate(lost, lambda s: torch.full((s.shape[0],), 3.0), torch.tensor([[6.0, 2.0, 5.0]]),
                        torch.tensor([[4.0, 1.0]]))
    # t0: cost 18, on-hand 0+1 = 1; t1: 1-2 -> cost 9, on-hand 0+3 = 3; t2: 3-5 -> cost 18
    assert out["costs"].tolist() == [[18.0, 9.0, 18.0]]


def test_hdpo_learns_the_optimal_base_stock_level_and_its_cost():
    prob = hdpo.InventoryProblem(lead_time=2, holding_cost=1, underage_cost=19, periods=10, ignore_periods=3)
    s_star, c_star = hdpo.optimal_base_stock(prob)
    policy = hdpo.BaseStockPolicy(8.0)
    hdpo.train(prob, policy, "hdpo", steps=80, n_paths=256, lr=0.6, seed=0)
    assert abs(policy.level.item() - s_star) <= 1.0
    demands, state = hdpo._paths(prob, 2048, seed=1)
    # the simulated steady-state cost at S* matches the closed-form newsvendor cost
    assert hdpo.evaluate_cost(prob, hdpo.BaseStockPolicy(s_star), demands, state) == pytest.approx(c_star, rel=0.03)
    assert hdpo.evaluate_cost(prob, policy, demands, state) <= 1.03 * c_star


def test_pathwise_and_reinforce_estimate_the_same_gradient_with_less_variance():
    prob = hdpo.InventoryProblem(lead_time=2, holding_cost=1, underage_cost=9, periods=10, ignore_periods=0)
    policy = hdpo.BaseStockPolicy(8.0)  # far below S* = 19: a large, clear gradient
    v = hdpo.gradient_variance(prob, policy, n_paths=64, repeats=24, noise_std=1.0, seed=0)
    assert v["mean_grad_cosine"] > 0.99  # 1 parameter: the two mean gradients have the same sign
    assert v["variance_ratio"] > 3.0


def test_hdpo_checkpoint_resume_gives_identical_results(tmp_path):
    prob = hdpo.InventoryProblem(lead_time=2, periods=6, ignore_periods=0)
    full = hdpo.BaseStockPolicy(5.0)
    h_full = hdpo.train(prob, full, "hdpo", steps=6, n_paths=32, lr=0.3, seed=3)
    part = hdpo.BaseStockPolicy(5.0)
    hdpo.train(prob, part, "hdpo", steps=3, n_paths=32, lr=0.3, seed=3, out_dir=tmp_path, checkpoint_every=3)
    resumed = hdpo.BaseStockPolicy(5.0)  # a fresh process: the state comes from the checkpoint
    h_res = hdpo.train(prob, resumed, "hdpo", steps=6, n_paths=32, lr=0.3, seed=3, out_dir=tmp_path,
                       checkpoint_every=3)
    assert resumed.level.item() == full.level.item()
    assert h_res == h_full


def test_malformed_orders_and_held_out_paths():
    prob = hdpo.InventoryProblem(lead_time=1, periods=2, ignore_periods=0)
    d, s = torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0]])
    neg = hdpo.simulate(prob, lambda x: torch.full((x.shape[0],), -5.0), d, s)["costs"]
    zero = hdpo.simulate(prob, lambda x: torch.zeros(x.shape[0]), d, s)["costs"]
    assert torch.equal(neg, zero)  # a negative order is no order, not a crash
    with pytest.raises(ValueError, match="policy"):
        hdpo.simulate(prob, lambda x: torch.full((x.shape[0],), float("nan")), d, s)
    # the held-out generator seeds never meet a training batch's (seed·1_000_003 + step)
    assert hdpo.HELD_OUT_SEED - 100 > 100 * 1_000_003 + 10**9
    a, _ = hdpo._paths(prob, 4, seed=5)
    b, _ = hdpo._paths(prob, 4, seed=5)
    assert torch.equal(a, b)  # paths are deterministic in the seed


def test_inventory_bad_input_names_the_field():
    with pytest.raises(ValueError, match="lead_time"):
        hdpo.InventoryProblem(lead_time=0)
    with pytest.raises(ValueError, match="demand"):
        hdpo.InventoryProblem(demand="uniform")
    with pytest.raises(ValueError, match="estimator"):
        hdpo.train(hdpo.InventoryProblem(), hdpo.BaseStockPolicy(1.0), "sgd", 1, 1, 0.1, 0)
    with pytest.raises(ValueError, match="backlog"):
        hdpo.optimal_base_stock(hdpo.InventoryProblem(lost_sales=True))


# ---- N-PG-IGT / (N-)HARPG --------------------------------------------------------------------------------------------


def _bandit_mdp() -> spg.TabularMDP:
    return spg.TabularMDP(np.ones((1, 2, 1)), np.array([[1.0, 0.0]]), np.array([1.0]), 0.5)


def test_exact_return_by_hand():
    theta = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # π = (3/4, 1/4)
    assert float(spg.exact_return(_bandit_mdp(), theta)) == pytest.approx(0.75 / (1 - 0.5))
    assert float(spg.exact_return(_bandit_mdp(), theta, horizon=2)) == pytest.approx(0.75 * 1.5)
    # softmax PG: ∂J/∂θ_0 = π_0(1 − π_0)·(r_0 − r_1)/(1 − γ) = 3/16 · 2
    assert spg.exact_gradient(_bandit_mdp(), theta.numpy())[0, 0] == pytest.approx(3 / 16 * 2)
    assert spg.optimal_return(_bandit_mdp()) == pytest.approx(2.0)


def _enumerate(mdp: spg.TabularMDP, theta: np.ndarray, H: int):
    """All trajectories of length H with their probabilities (s_0 ~ ρ)."""
    S, A = mdp.r.shape
    pi = spg.softmax(theta)
    states, actions, weights = [], [], []
    for seq in itertools.product(range(S), range(A), repeat=H):
        s, a = seq[0::2], seq[1::2]
        w = mdp.rho[s[0]]
        for k in range(H):
            w *= pi[s[k], a[k]] * (mdp.P[s[k], a[k], s[k + 1]] if k + 1 < H else 1.0)
        states.append(s), actions.append(a), weights.append(w)
    st, ac = np.array(states), np.array(actions)
    tr = spg.Trajectories(st, ac, mdp.r[st, ac], pi[st])
    return tr, np.array(weights)


def test_gpomdp_and_hessian_vector_estimators_are_unbiased():
    """Averaged over ALL trajectories with their probabilities (the limit of averaging many samples), GPOMDP equals
    the exact gradient of the truncated return and B(τ)v equals a finite difference of that exact gradient."""
    mdp = spg.random_mdp(2, 2, seed=4, gamma=0.7, branching=2)
    H = 3
    rng = np.random.default_rng(0)
    theta, v = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    tr, w = _enumerate(mdp, theta, H)
    assert w.sum() == pytest.approx(1.0)
    hv, g = spg.hessian_vector(tr, mdp.gamma, 2, np.broadcast_to(v, (len(w), 2, 2)))
    exact_g = spg.exact_gradient(mdp, theta, H)
    np.testing.assert_allclose(np.tensordot(w, g, 1), exact_g, atol=1e-10)
    np.testing.assert_allclose(np.tensordot(w, spg.gpomdp(tr, mdp.gamma, 2), 1), exact_g, atol=1e-10)
    eps = 1e-5
    fd = (spg.exact_gradient(mdp, theta + eps * v, H) - spg.exact_gradient(mdp, theta - eps * v, H)) / (2 * eps)
    est = np.tensordot(w, hv, 1)
    assert np.linalg.norm(est - fd) / np.linalg.norm(fd) < 1e-5


def test_hessian_vector_monte_carlo_average_within_five_percent():
    mdp = spg.random_mdp(2, 2, seed=4, gamma=0.7, branching=2)
    H, N = 3, 40000
    rng = np.random.default_rng(1)
    theta, v = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    tr = spg.sample(mdp, np.broadcast_to(theta, (N, 2, 2)), H, rng)
    hv, _ = spg.hessian_vector(tr, mdp.gamma, 2, np.broadcast_to(v, (N, 2, 2)))
    eps = 1e-5
    fd = (spg.exact_gradient(mdp, theta + eps * v, H) - spg.exact_gradient(mdp, theta - eps * v, H)) / (2 * eps)
    assert np.linalg.norm(hv.mean(0) - fd) / np.linalg.norm(fd) < 0.05


def test_schedules_and_normalized_step_by_hand():
    assert spg.schedules("n_pg_igt", 0) == (1.0, 1.0)
    eta, decay = spg.schedules("n_pg_igt", 31)  # 32^-0.8 = 1/16, 32^-0.6 = 1/8
    assert (eta, decay) == (pytest.approx(1 / 16), pytest.approx(1 / 8))
    assert spg.schedules("n_harpg", 2) == (pytest.approx(0.5), pytest.approx(math.sqrt(0.5)))
    mdp = spg.random_mdp(3, 2, seed=0)
    for method in ("n_mpg", "n_pg_igt", "n_harpg"):
        res = spg.run_method(mdp, method, iterations=1, scales=[0.3, 0.7], seed=0, horizon=5, eval_every=1)
        np.testing.assert_allclose(np.sqrt((res["theta"] ** 2).sum((1, 2))), [0.3, 0.7])  # ‖θ_1 − θ_0‖ = γ_0
    with pytest.raises(ValueError, match="method"):
        spg.schedules("adam", 0)


def test_random_mdp_is_deterministic_and_checks_input():
    a, b = spg.random_mdp(4, 3, seed=7), spg.random_mdp(4, 3, seed=7)
    assert np.array_equal(a.P, b.P) and np.array_equal(a.r, b.r)
    np.testing.assert_allclose(a.P.sum(-1), 1.0)
    with pytest.raises(ValueError, match="gamma"):
        spg.random_mdp(4, 3, seed=0, gamma=1.0)
    with pytest.raises(ValueError, match="branching"):
        spg.random_mdp(2, 3, seed=0, branching=3)


def test_vanilla_pg_improves_the_exact_return():
    mdp = spg.random_mdp(3, 2, seed=1)
    res = spg.run_method(mdp, "pg", iterations=200, scales=[0.1] * 8, seed=0, horizon=20, eval_every=200)
    assert res["gap"][-1].mean() < 0.7 * res["gap"][0].mean()


# ---- penalty method for bilevel optimization ----------------------------------------------------------------------


def _one_d() -> bp.QuadraticBilevel:
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return bp.QuadraticBilevel(t([2.0]).reshape(1, 1), t([1.0]).reshape(1, 1), t(1.0), mu=0.5)


def test_quadratic_closed_forms_by_hand():
    # g = y² − yx, f = ½(y − 1)² + ¼x²: y*(x) = x/2, F(x) = ½(x/2 − 1)² + ¼x², F'(x) = 0.75x − 0.5, x* = 2/3.
    # min_y σf + g: σ(y − 1) + 2y − x = 0 -> y_σ = (x + σ)/(2 + σ); ψ_σ'(x) = x/2 + (y* − y_σ)/σ·1 = 0
    # gives x_σ = 1/(1.5 + 0.5σ), so F'(x_σ) = −0.25σ/(1.5 + 0.5σ) = O(σ).
    q = _one_d()
    assert float(q.x_star()) == pytest.approx(2 / 3)
    for s in (0.4, 0.1, 0.025):
        xs = float(q.x_sigma(s))
        assert xs == pytest.approx(1 / (1.5 + 0.5 * s))
        assert float(q.grad_F(torch.tensor([xs], dtype=torch.float64))) == pytest.approx(-0.25 * s / (1.5 + 0.5 * s))


def test_penalty_method_reaches_x_sigma_and_the_gap_is_linear_in_sigma():
    q = _one_d()
    res = bp.penalty_method(q.f, q.g, torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                            sigma=0.1, outer_steps=60, inner_steps=6, lr_x=0.8, lr_y=0.45)
    assert float(res.x) == pytest.approx(1 / 1.55, abs=1e-6)
    assert float(res.y) == pytest.approx((1 / 1.55 + 0.1) / 2.1, abs=1e-6)  # y_σ(x_σ)
    assert float(res.z) == pytest.approx(1 / 1.55 / 2, abs=1e-6)  # y*(x_σ)
    sweep = bp.quadratic_sweep(seed=0, sigmas=[0.05, 0.025, 0.0125], n=2, m=3, outer_steps=60, inner_steps=6)
    assert max(sweep["distance_to_x_sigma"]) < 1e-6
    gaps = np.array(sweep["gap_algorithm"])
    assert np.all(np.diff(gaps) < 0)
    assert 0.9 < sweep["slope_algorithm"] < 1.1  # ‖∇F(x_σ)‖ ∝ σ
    with pytest.raises(ValueError, match="sigma"):
        bp.penalty_method(q.f, q.g, torch.zeros(1), torch.zeros(1), sigma=0.0, outer_steps=1, inner_steps=1,
                          lr_x=0.1, lr_y=0.1)


def test_regularized_return_and_soft_optimal_logits():
    P = torch.ones(1, 2, 1, dtype=torch.float64)
    r = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    rho = torch.ones(1, dtype=torch.float64)
    # soft-optimal policy of a bandit: π ∝ exp(r/τ) (the γ-discounted V adds a constant per action)
    th = bp.soft_optimal_logits(P, r, 0.5, tau=0.5)
    pi = torch.softmax(th, -1)
    assert float(pi[0, 0]) == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    # J_τ = (Σ π r + τ H(π)) / (1 − γ) = τ·logsumexp(r/τ) / (1 − γ) at the soft optimum
    expected = 0.5 * math.log(math.exp(2) + 1) / 0.5
    assert float(bp.regularized_return(P, r, rho, 0.5, th, 0.5)) == pytest.approx(expected)


def test_recipes_match_their_programs():
    from entropo.api import RECIPES_DIR
    from entropo.config import ConfigError
    from entropo.programs import load_program

    for name in ("hdpo", "stochastic_pg", "bilevel_penalty"):
        assert load_program(RECIPES_DIR / f"{name}.yaml").program == name
    with pytest.raises(ConfigError, match="params.horizon_typo"):
        load_program(RECIPES_DIR / "stochastic_pg.yaml", ["params.horizon_typo=3"])


def test_hdpo_program_resumes_into_the_same_directory(tmp_path):
    import shutil

    from entropo.checkpoint import all_checkpoints

    kw = dict(lead_time=2, periods=6, ignore_periods=2, steps=4, n_paths=16, hidden=8, layers=1, eval_paths=64,
              variance_repeats=2, checkpoint_every=2)
    first = hdpo.hdpo_program(tmp_path, 0, lambda *_: None, **kw)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    shutil.rmtree(all_checkpoints(tmp_path / "reinforce")[-1])  # as if killed after step 2
    again = hdpo.hdpo_program(tmp_path, 0, lambda *_: None, **kw)
    assert {k: v for k, v in again.items() if k != "plot"} == {k: v for k, v in first.items() if k != "plot"}
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
