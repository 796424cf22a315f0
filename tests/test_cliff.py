"""The policy-cliff diagnostics: the closed-form bandit (spec §24 (f)), reward flipping, the policy distance, and
one small end-to-end ``policy_cliff`` run on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.cliff import bandit_cliff, flip_rewards, policy_cliff, policy_distance, regularized_optimum
from entropo.config import load_recipe


def test_bandit_spec_toy():
    # r = [1, 1, 0] vs r' = [1, 1.01, 0], tau = 0.1: softmax(r / 0.1) = [0.499989, 0.499989, 0.0000227],
    # softmax(r' / 0.1) = [0.475011, 0.524968, 0.0000216]; |Δπ|₁ = 0.049958 <= bound (max δ − min δ)/τ = 0.01/0.1
    b = bandit_cliff([1, 1, 0], [1, 1.01, 0], 0.1)
    assert b["pi"] == pytest.approx([0.499989, 0.499989, 0.0000227], abs=1e-6)
    assert b["pi_perturbed"] == pytest.approx([0.475011, 0.524968, 0.0000216], abs=1e-6)
    assert b["l1"] == pytest.approx(0.049958, abs=1e-6)
    assert b["bound"] == pytest.approx(0.1) and b["l1"] <= b["bound"]
    # unregularized argmax with uniform tie-break: [0.5, 0.5, 0] -> [0, 1, 0], |Δπ|₁ = 1.0 (the cliff)
    a = bandit_cliff([1, 1, 0], [1, 1.01, 0], 0.0)
    assert a["pi"] == [0.5, 0.5, 0.0] and a["pi_perturbed"] == [0.0, 1.0, 0.0]
    assert a["l1"] == pytest.approx(1.0) and math.isinf(a["bound"])


def test_bound_holds():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        r = torch.rand(5, generator=g)
        r2 = r + 0.05 * torch.randn(5, generator=g)
        for tau in (0.05, 0.2, 1.0):
            # the move is bounded by (max δ − min δ)/τ (it need not shrink monotonically: with a clear winner a
            # small τ puts both policies on the same argmax)
            b = bandit_cliff(r.tolist(), r2.tolist(), tau)
            assert b["l1"] <= b["bound"] + 1e-9
    assert regularized_optimum([0, 0], 1e6).tolist() == pytest.approx([0.5, 0.5])


def test_flip_rewards():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    out = flip_rewards(r, 0.2, torch.Generator().manual_seed(0))
    changed = (out != r).nonzero().flatten()
    assert changed.numel() == 2 and torch.equal(out[changed], 1 - r[changed])
    assert torch.equal(flip_rewards(torch.zeros(4), 0.5, torch.Generator().manual_seed(0)).sort().values,
                       torch.tensor([0.0, 0.0, 1.0, 1.0]))  # all-zero batch still flips (range is (0, 1))
    assert torch.equal(flip_rewards(torch.tensor([1.0, -1.0]), 1.0, torch.Generator(), (-1.0, 1.0)),
                       torch.tensor([-1.0, 1.0]))


def test_policy_distance_by_hand():
    a = torch.tensor([[0.5, 0.5]]).log()
    b = torch.tensor([[0.25, 0.75]]).log()
    d = policy_distance(a, b)
    # KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 (ln 2 + ln(2/3)) = 0.143841; L1 = 0.25 + 0.25 = 0.5
    assert d["kl"] == pytest.approx(0.143841, abs=1e-6) and d["l1"] == pytest.approx(0.5)
    assert policy_distance(a, a) == {"kl": 0.0, "l1": 0.0}


def test_policy_cliff_end_to_end_tiny():
    recipe = load_recipe(None, ["model.name_or_path=tiny", "warmup.steps=5", "rollout.prompts_per_step=2",
                                "rollout.n=4", "rollout.max_new_tokens=3", "optimizer.lr=1e-3",
                                "task.params={digits: 1, chat: false, template: '{expr}='}"])
    lines = []
    res = policy_cliff(recipe, flip_fraction=0.25, entropy_coef=0.01, console=lines.append)
    assert res["rows"] == 8 and res["rows_changed"] == 2 and res["reward_l1"] == 2.0
    for name in ("plain", "entropy"):
        r = res[name]
        assert r["kl"] >= 0 and 0 <= r["l1"] <= 2 and r["update_kl"] >= 0
    # different rewards -> different policies; the entropy term moves the policy even where rewards carry no signal
    assert res["plain"]["l1"] > 0 and res["entropy"]["update_l1"] > 0
    assert "KL(a‖b)" in lines[-1] and "ratio none / entropy" in lines[-1]
