"""Adyen contextual-bandit generations (arXiv 2412.00569), DR-RPO (arXiv 2510.14246) and the ORacle scene-graph
task / triplet-F1 reward (arXiv 2404.07031): hand values, an LP oracle, deterministic loops, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from entropo import registry
from entropo.classic import bandits, dr_rpo
from entropo.tasks import or_scene_graph as sg
from entropo.types import Example, Sample

# ---- bandits: inverse-gap weighting, epsilon-greedy, importance weights ---------------------------------------------


def test_igw_hand_values():
    # f = [0.9, 0.7, 0.5, 0.2], K = 4, gamma = 10: p(a) = 1 / (4 + 10 * gap)
    p = bandits.igw_probs(np.array([0.9, 0.7, 0.5, 0.2]), gamma=10.0)
    expected_rest = [1 / (4 + 2.0), 1 / (4 + 4.0), 1 / (4 + 7.0)]
    assert p[1:] == pytest.approx(expected_rest)
    assert p[0] == pytest.approx(1 - sum(expected_rest))
    assert p == pytest.approx([0.6174, 0.1667, 0.125, 0.0909], abs=1e-4)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] >= 1 / 4 and np.all(np.diff(p) < 0)  # best >= 1/K; decreasing in the gap


def test_igw_dynamic_action_set_and_limits():
    scores = np.array([[0.9, 0.7, 0.5, 0.2], [0.1, 0.8, 0.3, 0.9]])
    avail = np.array([[False, True, True, True], [True, True, False, False]])
    p = bandits.igw_probs(scores, avail, gamma=10.0)
    # row 0: K_x = 3, best = action 1 (0.7); action 2 gap 0.2, action 3 gap 0.5
    assert p[0] == pytest.approx([0.0, 1 - 1 / 5 - 1 / 8, 1 / 5, 1 / 8])
    # row 1: K_x = 2, best = action 1 (0.8), action 0 gap 0.7
    assert p[1] == pytest.approx([1 / (2 + 7), 1 - 1 / 9, 0.0, 0.0])
    assert p.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert bandits.igw_probs(scores, avail, gamma=0.0)[1] == pytest.approx([0.5, 0.5, 0, 0])  # gamma 0: uniform
    with pytest.raises(ValueError, match="at least one available"):
        bandits.igw_probs(scores, np.zeros_like(avail))


def test_epsilon_greedy_and_importance_weights():
    p = bandits.epsilon_greedy_probs(np.array([0.2, 0.9, 0.5]), epsilon=0.3)
    assert p == pytest.approx([0.1, 0.8, 0.1])
    # propensities 0.5, 0.25, 0.8 -> 1/p = 2, 4, 1.25; mean 2.4166...; normalised to mean 1
    w = bandits.importance_weights(np.array([0.5, 0.25, 0.8]))
    assert w == pytest.approx(np.array([2.0, 4.0, 1.25]) / (7.25 / 3))
    assert bandits.importance_weights(np.array([0.5, 0.25, 0.8]), clip=3.0, normalize=False) == pytest.approx(
        [2.0, 3.0, 1.25])
    with pytest.raises(ValueError, match="propensities"):
        bandits.importance_weights(np.array([0.5, 0.0]))


def test_lag1_autocorrelation_signs():
    assert bandits.lag1_autocorrelation([1, -1, 1, -1, 1, -1]) < -0.8
    assert bandits.lag1_autocorrelation([1, 2, 3, 4, 5, 6]) > 0.4


TINY = dict(arms=["uniform", "squarecb", "squarecb_ipw"], generations=4, decisions=300, delay=50, memory=300,
            learner="logistic", eval_contexts=200, simulator={"n_actions": 3, "dim": 2})


def test_generation_loop_deterministic_and_windowed(tmp_path):
    a = bandits.run_generations(tmp_path / "a", 3, lambda s: None, **TINY)
    b = bandits.run_generations(tmp_path / "b", 3, lambda s: None, **TINY)
    assert a["squarecb"]["regret_series"] == b["squarecb"]["regret_series"]
    assert a["squarecb_ipw"]["greedy_regret_series"] == b["squarecb_ipw"]["greedy_regret_series"]
    # generation 0 explores uniformly in every arm, on the same transactions: identical regret
    assert a["uniform"]["regret_series"][0] == a["squarecb"]["regret_series"][0]
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # generation 1 fits on decisions labelled by then: t < 300 - 50, i.e. 250 decisions; later windows: 300
    assert rows[1]["squarecb/train_size"] == 250 and rows[2]["squarecb/train_size"] == 300
    # uniform exploration's deployed regret does not depend on its model; SquareCB exploits hence regrets less
    assert a["squarecb"]["regret"] < a["uniform"]["regret"]


class _Crash(Exception):
    pass


def _crash_after(prefix: str):
    def console(line: str) -> None:
        if line.startswith(prefix):
            raise _Crash(line)
    return console


def test_generation_loop_resumes_identically(tmp_path):
    full = bandits.run_generations(tmp_path / "full", 1, lambda s: None, **TINY)
    with pytest.raises(_Crash):  # killed right after generation 1 was logged and checkpointed
        bandits.run_generations(tmp_path / "part", 1, _crash_after("generation 1:"), **TINY)
    resumed = bandits.run_generations(tmp_path / "part", 1, lambda s: None, **TINY)  # continues at generation 2
    for arm in TINY["arms"]:
        assert resumed[arm]["regret_series"] == full[arm]["regret_series"]
        assert resumed[arm]["greedy_regret_series"] == full[arm]["greedy_regret_series"]


def test_bad_bandit_arguments():
    with pytest.raises(ValueError, match="unknown arm"):
        bandits.parse_arms(["thompson"])
    with pytest.raises(ValueError, match="delay"):
        bandits.run_generations(None, 0, arms=["uniform"], decisions=10, delay=10)
    assert registry.get("program", "adyen_bandit") is bandits.adyen_bandit


# ---- DR-RPO: the TV dual against an LP, the mirror-descent step, the robust loop -------------------------------------


@pytest.mark.parametrize("support", ["all", "nominal"])
def test_tv_dual_matches_highs_lp(support):
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(2, 7))
        p = rng.dirichlet(np.ones(n))
        if support == "nominal":
            p[rng.random(n) < 0.3] = 0.0
            p = p / p.sum() if p.sum() > 0 else np.eye(n)[0]
        v = rng.normal(size=n)
        rho = float(rng.uniform(0, 1.2))
        dual = dr_rpo.tv_worst_case(p, v, rho, support)[0]
        assert dual == pytest.approx(dr_rpo.tv_worst_case_lp(p, v, rho, support), abs=1e-7)


def test_tv_hand_value_and_limits():
    p, v = np.array([0.5, 0.3, 0.2]), np.array([1.0, 2.0, 0.0])
    # nominal 0.5 + 0.6 = 1.1; rho = 0.1 moves 0.1 from the top state (v=2) to the bottom (v=0): 1.1 - 0.2 = 0.9
    assert dr_rpo.tv_worst_case(p, v, 0.1)[0] == pytest.approx(0.9)
    assert dr_rpo.tv_worst_case(p, v, 0.0)[0] == pytest.approx(1.1)
    assert dr_rpo.tv_worst_case(p, v, 1.0)[0] == pytest.approx(0.0)
    # support "nominal" with p(bottom) = 0: mass can only go to the v=1 state: 1.1 - 0.1 * (2 - 1) = 1.0
    assert dr_rpo.tv_worst_case([0.5, 0.5, 0.0], v, 0.1, "nominal")[0] == pytest.approx(1.5 - 0.1)


def test_mirror_descent_step_hand_value():
    pi, ref, q = np.array([0.5, 0.5]), np.array([0.8, 0.2]), np.array([1.0, 0.0])
    # pi' ∝ pi^(1-0.5) ref^0.5 exp(q) with eta = 1, lam = 0.5
    raw = np.sqrt(pi) * np.sqrt(ref) * np.exp(q)
    assert dr_rpo.mirror_descent_step(pi, ref, q, 1.0, 0.5) == pytest.approx(raw / raw.sum())
    with pytest.raises(ValueError, match="eta"):
        dr_rpo.mirror_descent_step(pi, ref, q, 1.0, 2.0)


def test_ridge_factors_one_hot_are_empirical_frequencies():
    phi = np.eye(2)[[0, 0, 0, 1]]
    mu, inv = dr_rpo.ridge_factors(phi, np.array([1, 1, 2, 0]), 3, lam=1.0)
    assert mu[0] == pytest.approx([0, 2 / 3, 1 / 3]) and mu[1] == pytest.approx([1, 0, 0])
    assert np.diag(inv) == pytest.approx([1 / 4, 1 / 2])


def test_grid_and_robust_policy_value():
    g = dr_rpo.SlipperyGrid(rows=3, cols=4, slip=0.2)
    p = g.transitions()
    assert p.sum(axis=2) == pytest.approx(np.ones((g.n_states, 4)))
    assert p[g.start, 1, g.index(2, 1)] == pytest.approx(0.8)  # right from start: into the first hole
    # robust value of the optimal robust policy is below the nominal optimum, and rho = 0 is the nominal optimum
    assert dr_rpo.optimal_return(g, 12, rho=0.1) < dr_rpo.optimal_return(g, 12)
    pi = np.full((12, g.n_states, 4), 0.25)
    assert dr_rpo.evaluate(pi, g, rho=0.1) <= dr_rpo.evaluate(pi, g) + 1e-12


def test_dr_rpo_deterministic_and_resumes(tmp_path):
    g = dr_rpo.SlipperyGrid(rows=2, cols=3)
    a = dr_rpo.dr_rpo_train(g, rho=0.1, episodes=6, horizon=6, seed=0)
    b = dr_rpo.dr_rpo_train(g, rho=0.1, episodes=6, horizon=6, seed=0)
    assert np.array_equal(a["pi"], b["pi"])
    half = dr_rpo.dr_rpo_train(g, rho=0.1, episodes=3, horizon=6, seed=0)
    c = dr_rpo.dr_rpo_train(g, rho=0.1, episodes=6, horizon=6, seed=0, state=half["state"])
    assert np.array_equal(a["pi"], c["pi"])
    params = dict(episodes=6, horizon=6, grid={"rows": 2, "cols": 3}, log_every=3)
    full = dr_rpo.dr_rpo_program(tmp_path / "full", 0, lambda s: None, **params)
    dr_rpo.dr_rpo_program(tmp_path / "part", 0, lambda s: None, **dict(params, episodes=3))
    resumed = dr_rpo.dr_rpo_program(tmp_path / "part", 0, lambda s: None, **params)
    assert resumed["robust/worst_case"] == full["robust/worst_case"]
    assert resumed["nominal/slip_0.3"] == full["nominal/slip_0.3"]


# ---- ORacle target: the scene-graph task and the triplet-F1 reward ---------------------------------------------------

GOLD = "surgeon,holding,drill;patient,lying_on,table"


@pytest.mark.parametrize("prediction, f1", [
    (GOLD, 1.0),
    ("patient,lying_on,table;surgeon,holding,drill", 1.0),  # order does not matter
    (" Surgeon , holding , drill ; patient,lying on,table ", 1.0),  # case / spaces normalised
    ("surgeon,holding,drill", 2 / 3),  # P = 1, R = 1/2
    ("surgeon,holding,drill;nurse,holding,saw", 0.5),  # P = 1/2, R = 1/2
    ("surgeon,holding,drill;surgeon,holding,drill", 0.5),  # duplicate is a false positive: P = 1/2, R = 1/2
    ("surgeon,holding,drill;patient,lying_on,table;nurse,close_to,patient", 0.8),  # P = 2/3, R = 1
    ("surgeon,holding,drill;garbage", 0.5),  # malformed piece counts as a false positive
    ("surgeon,holding,saw", 0.0),  # a partially right triplet is wrong
    ("hello world", 0.0), ("", 0.0), (None, 0.0), (",,;;,", 0.0),
])
def test_triplet_f1_hand_values(prediction, f1):
    assert sg.triplet_f1(prediction, GOLD) == pytest.approx(f1)


def test_triplet_f1_reward_and_task():
    task = registry.get("task", "or_scene_graph")(seed=0, eval_size=16)
    ex = task.train_example(0)
    reward = registry.get("reward", "triplet_f1")
    assert reward(Sample(completion=ex.target, example=ex, task=task)) == 1.0
    assert reward(Sample(completion="\x00garbage", example=ex, task=task)) == 0.0
    assert task.correct(ex.target, ex) and task.score(ex.target, ex) == 1.0
    with pytest.raises(ValueError, match="example.answer"):
        reward(Sample(completion="x", example=Example(prompt="p"), task=None))


def test_scene_graph_task_splits_and_determinism():
    t1 = registry.get("task", "or_scene_graph")(seed=3, eval_size=32)
    t2 = registry.get("task", "or_scene_graph")(seed=3, eval_size=32)
    assert [e.prompt for e in t1.eval_examples()] == [e.prompt for e in t2.eval_examples()]
    assert t1.train_example(7).prompt == t2.train_example(7).prompt
    held = {tuple(sorted(sg.parse_triplets(e.answer)[0])) for e in t1.eval_examples()}
    for i in range(300):
        ex = t1.train_example(i)
        assert tuple(sorted(sg.parse_triplets(ex.answer)[0])) not in held
        triplets = sg.parse_triplets(ex.target)[0]
        assert set(triplets) <= set(sg.valid_triplets()) and 1 <= len(triplets) <= 2
    with pytest.raises(TypeError, match="unknown parameter"):
        registry.get("task", "or_scene_graph")(seed=0, colour="red")
    with pytest.raises(ValueError, match="min_triplets"):
        registry.get("task", "or_scene_graph")(seed=0, max_triplets=0)
