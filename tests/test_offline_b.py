"""OGSRL (arXiv 2505.16242) and HIB (arXiv 2305.18464): hand-computed toy checks of the Lagrange multiplier, the
guardian, the constraint check, the IB loss's KL term, the PPO clip loss, the history window; the two Gymnasium
environments; resuming the two programs from a checkpoint."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from entropo.algorithms.objectives import clipped_surrogate, importance_ratio  # noqa: E402
from entropo.classic import hib, ogsrl  # noqa: E402
from entropo.registry import get  # noqa: E402

# ---- OGSRL ----------------------------------------------------------------------------------------------------------


def test_lagrange_multiplier_dual_ascent_by_hand():
    lam = get("controller", "lagrange_multiplier")(budget=1.0, lr=0.5, init_coef=0.2, max_coef=1.0, metric="c")
    lam.update({"c": 1.6})  # 0.2 + 0.5 * (1.6 - 1.0) = 0.5
    assert lam.value() == pytest.approx(0.5)
    lam.update({"c": 0.0})  # 0.5 + 0.5 * (0 - 1) = 0.0 (projected at 0)
    assert lam.value() == 0.0
    lam.update({"c": 0.2})  # max(0, 0 - 0.4) = 0
    assert lam.value() == 0.0
    lam.update({"c": 9.0})  # 0 + 4 = 4 -> clipped at max_coef 1
    assert lam.value() == 1.0
    lam.update({"other": 5.0})  # metric absent: unchanged
    assert lam.value() == 1.0
    clone = ogsrl.LagrangeMultiplier(budget=0.0)
    clone.load_state_dict(lam.state_dict())
    assert clone.state_dict() == lam.state_dict()
    with pytest.raises(ValueError, match="lr"):
        ogsrl.LagrangeMultiplier(budget=1.0, lr=0.0)


def test_lagrangian_advantage_by_hand():
    # (A_r - 1 * A_1 - 3 * A_2) / (1 + 1 + 3) = (2 - 1 - 3) / 5
    out = ogsrl.lagrangian_advantage(torch.tensor([2.0]), [torch.tensor([1.0]), torch.tensor([1.0])], [1.0, 3.0])
    assert out.item() == pytest.approx(-0.4)
    assert ogsrl.returns_to_go(torch.tensor([[1.0], [2.0], [3.0]])).flatten().tolist() == [6.0, 5.0, 3.0]


def test_monomials_and_christoffel_score_by_hand():
    assert ogsrl.monomial_exponents(2, 2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    assert len(ogsrl.monomial_exponents(3, 3)) == math.comb(6, 3)
    # 1-D, degree 1, data {-1, 1}: standardised z = x / std (std = sqrt(2)), phi = (1, z), M = diag(1, 1/2):
    # p(x) = 1 + 2 z^2 = 1 + x^2 before the threshold; tau = quantile of {2, 2} = 2, so p(x) = (1 + x^2) / 2
    g = ogsrl.ChristoffelGuardian(degree=1, delta=0.5, reg=0.0).fit(np.array([[-1.0], [1.0]]))
    assert g.score(np.array([[0.0], [1.0], [3.0]])).tolist() == pytest.approx([0.5, 1.0, 5.0])


def test_guardian_cost_in_and_out_of_support():
    rng = np.random.default_rng(0)
    data = np.stack([rng.uniform(0, 1, 2000), rng.uniform(0, 1, 2000), 0.5 * rng.uniform(0, 1, 2000)], 1)
    g = ogsrl.ChristoffelGuardian(degree=3, delta=0.01).fit(data)
    assert g.cost(data).mean().item() == pytest.approx(0.01, abs=0.002)  # about delta of the data is outside
    inside = np.array([[0.5, 0.5, 0.25], [0.3, 0.7, 0.1]])
    outside = np.array([[0.5, 0.5, 1.5], [3.0, 0.5, 0.25], [-1.0, -1.0, 0.0]])
    assert g.cost(inside).tolist() == [0.0, 0.0]
    assert g.cost(outside).tolist() == [1.0, 1.0, 1.0]
    assert (g.score(outside) > 2 * g.score(inside).max()).all()
    clone = ogsrl.ChristoffelGuardian()
    clone.load_state_dict(g.state_dict())
    assert torch.equal(clone.score(outside), g.score(outside))


def test_constraint_report_logic():
    r = ogsrl.constraint_report({"safe": 0.8, "ood": 1.5}, {"safe": 1.0, "ood": 1.0})
    assert r["safe"]["ok"] and r["safe"]["slack"] == pytest.approx(0.2)
    assert not r["ood"]["ok"] and r["ood"]["slack"] == pytest.approx(-0.5)
    assert not r["all_ok"]
    assert ogsrl.constraint_report({"safe": 1.05, "ood": 1.0}, {"safe": 1.0, "ood": 1.0}, tol=0.1)["all_ok"]
    assert ogsrl.constraint_report({"safe": 1.0}, {"safe": 1.0})["all_ok"]  # on the budget counts as satisfied
    with pytest.raises(KeyError, match="ood"):
        ogsrl.constraint_report({"safe": 0.0}, {"safe": 1.0, "ood": 1.0})


def test_patient_env_seeded_costs_and_bad_actions():
    env = ogsrl.patient_env_class()()
    o1, _ = env.reset(seed=3)
    o2, _ = env.reset(seed=3)
    assert np.array_equal(o1, o2) and 1.5 <= o1[0] <= 3.0 and o1[1] == 0.0
    _, r, term, trunc, info = env.step(np.array([5.0]))  # out of range: clipped to 3, flagged
    assert info["invalid_action"] and info["dose"] == 3.0 and not term and not trunc
    _, _, _, _, info = env.step(np.array([np.nan]))  # malformed: no dose, flagged, no crash
    assert info["invalid_action"] and info["dose"] == 0.0
    _, _, _, _, info = env.step(np.array([0.5]))
    assert not info["invalid_action"]
    # the true dynamics by hand (noise-free part): overdose harm 2 (a - 1)^2 and toxicity 0.25 a^2
    class Zero:
        def standard_normal(self, shape):
            return np.zeros(shape)
    h, x, r, c = ogsrl.patient_step(np.array([2.0, 2.0]), np.array([0.0, 3.5]), np.array([0.5, 2.0]), Zero())
    assert h.tolist() == pytest.approx([1.85, 2.95]) and x.tolist() == pytest.approx([0.0625, 3.1])
    assert r.tolist() == pytest.approx([-1.85, -2.95]) and c.tolist() == [0.0, 1.0]
    d1, d2 = ogsrl.collect_dataset(3, seed=1), ogsrl.collect_dataset(3, seed=1)
    assert all(np.array_equal(d1[k], d2[k]) for k in d1) and len(d1["t"]) == 3 * ogsrl.HORIZON
    assert not np.array_equal(d1["act"], ogsrl.collect_dataset(3, seed=2)["act"])


def _run_twice(program, tmp_path, **params):
    full = program(tmp_path / "full", 0, lambda s: None, **params)
    part = dict(params, iterations=params["checkpoint_every"])
    program(tmp_path / "resumed", 0, lambda s: None, **part)
    resumed = program(tmp_path / "resumed", 0, lambda s: None, **params)
    rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("full", "resumed")]
    return full, resumed, rows


def test_ogsrl_program_resumes_identically(tmp_path):
    full, resumed, rows = _run_twice(ogsrl.ogsrl_program, tmp_path, n_episodes=10, members=2, model_epochs=3,
                                     iterations=4, batch=16, ppo_epochs=1, eval_episodes=20, checkpoint_every=2)
    assert full == resumed
    assert rows[0] == rows[1] and [r["step"] for r in rows[0]] == [0, 1, 2, 3]


# ---- HIB ------------------------------------------------------------------------------------------------------------


def test_ib_kl_term_by_hand():
    # KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - 1 - 2 log sigma)
    mu = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    log_std = torch.tensor([[0.0, 0.0], [0.0, 0.0], [math.log(2.0), 0.0]])
    kl = hib.gaussian_kl_standard(mu, log_std)
    assert kl.tolist() == pytest.approx([0.0, 0.5, 0.5 * (4 - 1 - 2 * math.log(2))])
    # the IB loss = InfoNCE + beta * mean KL: with beta = 2 and the InfoNCE term known, the difference is 2 * mean KL
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    groups = torch.tensor([0, 1, 2])
    noise = torch.zeros_like(mu)
    l2, m = hib.ib_loss(mu + 0.1, log_std, g, groups, beta=2.0, noise=noise)
    l0, _ = hib.ib_loss(mu + 0.1, log_std, g, groups, beta=0.0, noise=noise)
    assert (l2 - l0).item() == pytest.approx(2.0 * hib.gaussian_kl_standard(mu + 0.1, log_std).mean().item())


def test_info_nce_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5  # s = I / 0.5: each row's positive scores 2, the negative 0 -> loss = -log(e^2 / (e^2 + 1))
    expected = -math.log(math.e ** 2 / (math.e ** 2 + 1))
    assert hib.info_nce(z, g, torch.tensor([0, 1]), t).item() == pytest.approx(expected)
    # the same episode twice: both columns are positives of both rows -> loss 0
    assert hib.info_nce(z, g, torch.tensor([4, 4]), t).item() == pytest.approx(0.0, abs=1e-6)


def test_ppo_clip_loss_by_hand():
    # entropo's clipped surrogate, reused by both programs: max(-rho A, -clip(rho, 0.8, 1.2) A)
    logp, old = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])), torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = clipped_surrogate(importance_ratio(logp, old), adv, 0.2, 0.2)
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8])


def test_history_window():
    h = np.zeros((2, 3, 5))
    s = lambda v: np.full((2, 4), float(v))  # noqa: E731
    h = hib.push_history(h, s(1), np.array([1, 1]), np.array([True, True]))  # episode start: no previous action
    h = hib.push_history(h, s(2), np.array([1, 0]), np.array([False, False]))
    assert h[0, :, 0].tolist() == [0.0, 1.0, 2.0] and h[0, :, 4].tolist() == [0.0, 0.0, 1.0]
    assert h[1, :, 4].tolist() == [0.0, 0.0, -1.0]
    h = hib.push_history(h, s(3), np.array([0, 0]), np.array([False, True]))  # row 1 starts a new episode
    assert h[0, :, 0].tolist() == [1.0, 2.0, 3.0] and h[0, :, 4].tolist() == [0.0, 1.0, -1.0]
    assert h[1, :, 0].tolist() == [0.0, 0.0, 3.0] and h[1, :, 4].tolist() == [0.0, 0.0, 0.0]


def test_gae_by_hand():
    # one env, 2 steps, gamma = 0.5, lambda = 1: delta_1 = 1 + 0.5*4 - 2 = 1; delta_0 = 1 + 0.5*2 - 1 = 1
    adv, ret = hib.gae(torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [2.0]]), torch.zeros(2, 1),
                       torch.tensor([4.0]), 0.5, 1.0)
    assert adv.flatten().tolist() == pytest.approx([1.5, 1.0])
    adv, _ = hib.gae(torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [0.0]]),
                     torch.tensor([4.0]), 0.5, 1.0)
    assert adv.flatten().tolist() == pytest.approx([0.0, 1.0])  # done after step 0: no bootstrap into step 1


def test_cartpole_env_seeded_heldout_unseen_and_bad_actions():
    env = hib.cartpole_env_class()()
    o1, i1 = env.reset(seed=5)
    o2, i2 = env.reset(seed=5)
    assert np.array_equal(o1, o2) and np.array_equal(i1["params"], i2["params"])
    assert hib.in_train_box(i1["params"][None])[0] and np.abs(i1["privileged"]).max() <= 1.0
    _, r, term, trunc, info = env.step(7)
    assert info["invalid_action"] and r == 1.0
    _, _, _, _, info = env.step("left")
    assert info["invalid_action"]
    _, _, _, _, info = env.step(1)
    assert not info["invalid_action"]
    rng = np.random.default_rng(0)
    assert hib.in_train_box(hib.sample_params(500, "train", rng)).all()
    held = hib.sample_params(500, "heldout", rng)
    assert not hib.in_train_box(held).any()  # the held-out split is never a training parameter set
    _, info = env.reset(seed=1, options={"split": "heldout"})
    assert not hib.in_train_box(info["params"][None])[0]
    with pytest.raises(ValueError, match="split"):
        hib.sample_params(1, "test", rng)
    # the batched physics is Gymnasium's CartPole at its default parameters, no wind
    gym = pytest.importorskip("gymnasium")
    ref = gym.make("CartPole-v1").unwrapped
    ref.reset(seed=0)
    s = np.array(ref.state, dtype=np.float64)
    ref.step(1)
    mine, _ = hib.cartpole_step(s[None], np.array([1]), np.array([[ref.masspole, ref.length, ref.force_mag, 0.0, 1.0]]))
    assert mine[0] == pytest.approx(np.array(ref.state, dtype=np.float64), rel=1e-5)


def test_hib_program_resumes_identically(tmp_path):
    full, resumed, rows = _run_twice(hib.hib_program, tmp_path, num_envs=4, rollout=16, iterations=4, minibatch=32,
                                     epochs=1, eval_episodes=4, checkpoint_every=2)
    assert full == resumed
    assert rows[0] == rows[1] and "ib/nce" in rows[0][0]
