"""Offline RL on entropo's own datasets: TD3+BC, A2PR, FamO2O, OTA (entropo.classic.offline_rl / ota / offline_data).

Hand-computed values of each loss/target on toy tensors, dataset determinism by seed, the maze environment's contract,
and resume equality of the checkpointed loops."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from entropo.classic import offline_data as od  # noqa: E402
from entropo.classic import offline_rl as rl  # noqa: E402
from entropo.classic import ota  # noqa: E402


# ---- TD3+BC / A2PR ---------------------------------------------------------------------------------------------------

def test_td3bc_lambda_and_actor_loss_by_hand():
    q = torch.tensor([[1.0], [-3.0]])
    pi, a = torch.tensor([[0.5], [0.0]]), torch.tensor([[0.0], [1.0]])
    assert rl.td3bc_lambda(q, 2.5).item() == pytest.approx(2.5 / 2.0)  # alpha / mean|Q|
    # -1.25 * mean(Q) + mean((pi - a)^2) = -1.25 * (-1) + (0.25 + 1) / 2
    assert rl.td3bc_actor_loss(q, pi, a, 2.5).item() == pytest.approx(1.25 + 0.625)
    # lambda is a constant for the gradient: d loss / d Q_i = -lambda / B
    qq = q.clone().requires_grad_(True)
    rl.td3bc_actor_loss(qq, pi, a, 2.5).backward()
    assert torch.allclose(qq.grad, torch.full_like(q, -1.25 / 2))


def test_a2pr_advantage_gate_by_hand():
    a = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5]])
    a_vae = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.0]])
    adv_data = torch.tensor([[1.0], [-1.0], [0.5], [-2.0], [0.0]])
    adv_vae = torch.tensor([[0.5], [-0.5], [0.5], [-3.0], [0.0]])
    target, weight = rl.a2pr_bc_target(a, a_vae, adv_data, adv_vae)
    # VAE action where A(s, vae) >= A(s, a): rows 1, 2 (tie), 4 (tie)
    assert torch.allclose(target, torch.tensor([[0.1], [0.8], [0.7], [0.4], [0.0]]))
    # w = 1[A(vae) >= 0] + 1[A(a) > 0]; rows with both advantages negative get no BC pull
    assert torch.equal(weight, torch.tensor([[2.0], [0.0], [2.0], [0.0], [1.0]]))
    pi = torch.tensor([[0.0], [0.0], [0.0], [0.0], [0.0]])
    q = torch.tensor([[2.0], [2.0], [2.0], [2.0], [2.0]])
    bc = (2 * 0.01 + 0 + 2 * 0.49 + 0 + 0) / 5
    assert rl.a2pr_actor_loss(q, pi, target, weight, 2.5).item() == pytest.approx(-2.5 + bc)
    _, w_half = rl.a2pr_bc_target(a, a_vae, adv_data, adv_vae, mask=0.5)
    assert torch.equal(w_half, weight * 0.5)


def test_a2pr_agent_update_gates_and_learns_shapes():
    torch.manual_seed(0)
    agent = rl.A2PR(3, 1, (8,))
    s, a = torch.randn(16, 3), torch.rand(16, 1) * 2 - 1
    r, nd = torch.randn(16, 1), torch.ones(16, 1)
    out = {}
    for _ in range(2):
        out.update(agent.update(s, a, r, s, nd))
    assert 0.0 <= out["a2pr/gated_share"] <= 1.0 and "loss/vae" in out and "lambda" in out
    assert all(p.grad is None for p in agent.vae.parameters())


# ---- FamO2O ----------------------------------------------------------------------------------------------------------

def test_famo2o_sincos_encoding_matches_formula():
    enc = rl.sincos_encoding(torch.tensor([1.0, 3.0], dtype=torch.float64), n=10000.0, d=6)
    for row, b in zip(enc, (1.0, 3.0)):
        want = []
        for i in range(3):
            x = b / 10000.0 ** (2 * i / 6)
            want += [math.sin(x), math.cos(x)]
        assert torch.allclose(row, torch.tensor(want, dtype=torch.float64))


def test_famo2o_balance_conditioned_awr_by_hand():
    q, v = torch.tensor([[1.0], [0.0], [10.0]]), torch.tensor([[0.0], [0.0], [0.0]])
    beta = torch.tensor([[2.0], [3.0], [1.0]])
    logp = torch.tensor([[-1.0], [-2.0], [-0.5]])
    # weights: exp(2*1), exp(0), min(exp(10), 100)
    want = -(math.exp(2.0) * -1.0 + 1.0 * -2.0 + 100.0 * -0.5) / 3
    assert rl.famo2o_actor_loss(q, v, beta, logp).item() == pytest.approx(want)
    # a larger balance coefficient leans harder toward the higher-advantage action
    q2, v2, lp = torch.tensor([[1.0], [-1.0]]), torch.zeros(2, 1), torch.zeros(2, 1, requires_grad=True)
    ratios = []
    for b in (1.0, 3.0):
        lp.grad = None
        rl.famo2o_actor_loss(q2, v2, torch.full((2, 1), b), lp).backward()
        ratios.append((lp.grad[0] / lp.grad[1]).item())
    assert ratios[0] == pytest.approx(math.exp(2.0)) and ratios[1] == pytest.approx(math.exp(6.0))


def test_famo2o_balance_loss_and_model_range():
    temp = torch.tensor(0.5)
    assert rl.famo2o_balance_loss(torch.tensor([-1.0, 1.0]), torch.tensor([2.0, 4.0]), temp).item() == \
        pytest.approx(((0.5 * -1 - 2) + (0.5 * 1 - 4)) / 2)
    torch.manual_seed(0)
    bm = rl.BalanceModel(3, (8,), (8.0, 14.0))
    assert bm.to_beta(torch.tensor(-1.0)).item() == 8.0 and bm.to_beta(torch.tensor(1.0)).item() == 14.0
    beta, logp = bm.sample(torch.randn(256, 3))
    assert beta.min() >= 8.0 and beta.max() <= 14.0 and torch.isfinite(logp).all()
    # log-density of the squashed sample = Normal log-density - log|d tanh/du| (checked against autograd on one point)
    mean = torch.tensor([[0.3]])
    u = torch.tensor([[0.7]])
    ref = torch.distributions.Normal(mean, 1.0).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)
    got = torch.distributions.Normal(mean, 1.0).log_prob(u) - 2.0 * (math.log(2.0) - u
                                                                       - torch.nn.functional.softplus(-2.0 * u))
    assert torch.allclose(ref, got, atol=1e-6)


# ---- OTA -------------------------------------------------------------------------------------------------------------

def test_ota_option_target_by_hand():
    at_goal = torch.tensor([True, False, False, False])
    hit = torch.tensor([False, True, False, False])
    v_next = torch.tensor([-5.0, -5.0, -5.0, 0.0])
    y = ota.option_value_target(at_goal, hit, v_next, gamma=0.9)
    assert torch.allclose(y, torch.tensor([0.0, -1.0, -1.0 + 0.9 * -5.0, -1.0]))


def test_ota_fixed_point_counts_options_on_a_corridor():
    # On a corridor walked left to right, iterating the option target with n = 3 from V = 0 reaches
    # V^h(s, g) = -(1 - gamma^m) / (1 - gamma), m = ceil(d / 3) options, while n = 1 gives m = d steps.
    gamma, length = 0.9, 8
    for n in (1, 3):
        v = torch.zeros(length, length)
        for _ in range(length + 1):  # values move one option back per sweep
            new = torch.zeros_like(v)
            for s in range(length):
                for g in range(length):
                    if g < s:
                        continue
                    end = min(s + n, length - 1)
                    hit = torch.tensor(g in range(s + 1, end + 1))
                    new[s, g] = ota.option_value_target(torch.tensor(s == g), hit, v[end, g], gamma)
            v = new
        for d in range(length):
            m = math.ceil(d / n)
            assert v[0, d].item() == pytest.approx(-(1 - gamma ** m) / (1 - gamma), abs=1e-5)


def test_goal_sampler_option_end_and_hits_are_consistent():
    idx = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    episode = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    smp = ota.GoalSampler(idx, episode, option_len=2, gamma=0.9)
    s, s1, sn, g, hit1, hitn = smp.sample(np.random.default_rng(0), 400)
    for a, b, c, gg, h1, hn in zip(s, s1, sn, g, hit1, hitn):
        a, b, c, gg = int(a), int(b), int(c), int(gg)
        end = 3 if a < 4 else 7
        assert b == a + 1 and c == min(a + 2, end)
        assert bool(h1) == (b == gg) and bool(hn) == (gg in range(a + 1, c + 1))


def test_sign_share_is_perfect_for_the_true_distance():
    wall = od.make_maze(3, 0.2, seed=1)
    cells, dmat = od.all_pairs_distances(wall)

    class TrueV(torch.nn.Module):
        def forward(self, s, g):
            return -torch.as_tensor(dmat, dtype=torch.float32)[s, g]

    idx = np.arange(len(cells))
    end = np.full(len(cells), len(cells) - 1)
    r = ota.sign_shares({"true": TrueV(), "neg": lambda s, g: -TrueV()(s, g)}, idx, end, dmat, 2, 500, [1, 5], 0)
    assert r["true_all"] == 1.0 and r["neg_all"] == 0.0


# ---- datasets and the maze environment -------------------------------------------------------------------------------

def test_datasets_are_deterministic_by_seed(tmp_path):
    a, ia = od.collect("pendulum", 3, episodes=4, max_steps=20)
    b, ib = od.collect("pendulum", 3, episodes=4, max_steps=20)
    c, _ = od.collect("pendulum", 4, episodes=4, max_steps=20)
    assert ia["sha256"] == ib["sha256"] and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["observations"], c["observations"])
    assert sorted(ia["returns"]) == ["expert", "random"] and ia["transitions"] == 80
    m1, _ = od.collect("maze", 1, episodes=3, max_steps=15, cells=3)
    m2, _ = od.collect("maze", 1, episodes=3, max_steps=15, cells=3)
    assert all(np.array_equal(m1[k], m2[k]) for k in m1)
    # the cache writes a manifest, reloads the same arrays, and regenerates a corrupted file
    d1, man = od.load_or_collect("pendulum", 3, root=tmp_path, episodes=4, max_steps=20)
    assert man["sha256"] == ia["sha256"]
    (npz,) = tmp_path.glob("*.npz")
    assert json.loads(npz.with_suffix(".json").read_text())["seed"] == 3
    npz.write_bytes(b"garbage")
    d2, _ = od.load_or_collect("pendulum", 3, root=tmp_path, episodes=4, max_steps=20)
    assert np.array_equal(d1["actions"], d2["actions"])
    with pytest.raises(ValueError, match="dataset="):
        od.collect("hopper", 0)


def test_expert_beats_random_on_pendulum():
    _, info = od.collect("pendulum", 0, episodes=6, expert_fraction=0.5)
    assert info["returns"]["expert"]["mean"] > info["returns"]["random"]["mean"] + 500


def test_maze_env_contract():
    env = od.maze_env(cells=3, loop_fraction=0.0, maze_seed=0, max_steps=5)
    o1, _ = env.reset(seed=7)
    o2, _ = env.reset(seed=7)
    assert np.array_equal(o1["observation"], o2["observation"])
    assert np.array_equal(o1["desired_goal"], o2["desired_goal"])
    env.reset(options={"start": (1, 1), "goal": (1, 1)})
    obs, r, term, trunc, _ = env.step(0)  # up from (1, 1) is the outer wall: stay, and the goal is here
    assert tuple(obs["observation"]) == (1, 1) and term and r == 0.0
    with pytest.raises(ValueError, match="action="):
        env.step(7)
    with pytest.raises(ValueError, match="options.start"):
        env.reset(options={"start": (0, 0)})
    wall = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 0, 1], [1, 1, 1, 1]], dtype=bool)
    d = od.bfs_distances(wall, (2, 2))
    assert d[1, 1] == 2 and d[1, 2] == 1 and d[0, 0] == -1


# ---- resume equality -------------------------------------------------------------------------------------------------

def _strip(res):
    return {k: v for k, v in res.items() if k != "wall_s"}


def test_offline_program_resumes_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPO_OFFLINE_DIR", str(tmp_path / "cache"))
    kw = dict(method="a2pr", batch_size=16, hidden=(8,), eval_every=2, eval_episodes=1, ckpt_every=2,
              dataset={"episodes": 2, "max_steps": 20})
    full = rl.offline_program(tmp_path / "full", 0, lambda m: None, steps=6, **kw)
    rl.offline_program(tmp_path / "split", 0, lambda m: None, steps=4, **kw)
    resumed = rl.offline_program(tmp_path / "split", 0, lambda m: None, steps=6, **kw)
    assert resumed["evals"] == full["evals"]
    from entropo import checkpoint

    a = checkpoint.load(checkpoint.latest(tmp_path / "full"))["agent"]["modules"]["actor"]
    b = checkpoint.load(checkpoint.latest(tmp_path / "split"))["agent"]["modules"]["actor"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated lines after the resume


def test_ota_program_resumes_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPO_OFFLINE_DIR", str(tmp_path / "cache"))
    kw = dict(batch_size=32, hidden=(16,), eval_every=3, ckpt_every=3, eval_pairs=300, distance_bins=(1, 4),
              dataset={"episodes": 4, "max_steps": 30, "cells": 3})
    full = ota.ota_program(tmp_path / "full", 0, lambda m: None, steps=6, **kw)
    ota.ota_program(tmp_path / "split", 0, lambda m: None, steps=3, **kw)
    resumed = ota.ota_program(tmp_path / "split", 0, lambda m: None, steps=6, **kw)
    assert resumed["evals"] == full["evals"] and resumed["hiql"] == full["hiql"] and resumed["ota"] == full["ota"]


def test_famo2o_program_resumes_identically_across_the_online_phase(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPO_OFFLINE_DIR", str(tmp_path / "cache"))
    kw = dict(batch_size=16, hidden=(8,), online_steps=4, episode_len=2, eval_every=4, eval_episodes=1,
              fixed_betas=(1.0,), ckpt_every=2, dataset={"episodes": 2, "max_steps": 20})
    full = rl.famo2o_program(tmp_path / "full", 0, lambda m: None, steps=2, **kw)
    rl.famo2o_program(tmp_path / "split", 0, lambda m: None, steps=2, **{**kw, "online_steps": 2})
    resumed = rl.famo2o_program(tmp_path / "split", 0, lambda m: None, steps=2, **kw)
    assert resumed["evals"] == full["evals"]
    from entropo import checkpoint

    a, b = (checkpoint.load(checkpoint.latest(tmp_path / d)) for d in ("full", "split"))
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["extra"]["online"][k], b["extra"]["online"][k]) for k in a["extra"]["online"])
    assert a["extra"]["online"]["s"].shape[0] == 4  # four online transitions were added to the buffer
    assert all(torch.equal(a["agent"]["modules"]["balance"][k], b["agent"]["modules"]["balance"][k])
               for k in a["agent"]["modules"]["balance"])
    with pytest.raises(ValueError, match="multiples of the episode length"):
        rl.famo2o_program(tmp_path / "bad", 0, lambda m: None, steps=3, **kw)
