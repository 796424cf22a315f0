"""Clip-Cov / KL-Cov (arXiv 2505.22617): covariance formula, entropy dynamics, whole-batch selection, gradients, and
the R = -a e^H + b fit (spec section 1, toy (f))."""

import math

import pytest
import torch

from entropo import diagnostics as diag
from entropo import ops
from entropo.algorithms.entropy_mechanism import (
    CLIP_COV_KEY,
    KL_COV_KEY,
    ClipCov,
    KLCov,
    centred_covariance,
    select_clip_cov,
    select_top_cov,
)
from entropo.batch import Batch
from entropo.components import Bound


def toy_batch() -> Batch:
    """Spec toy: 2 responses x 3 tokens, A = [+1]*3 + [-1]*3, p = [0.9, 0.5, 0.1] twice."""
    p = torch.tensor([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    b = Batch(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3, dtype=torch.long),
              response_mask=torch.ones(2, 3), rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]))
    b.old_logprobs = p.log()
    b.advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    return b


def test_covariance_matches_spec_toy():
    b = toy_batch()
    cov = centred_covariance(b.old_logprobs, b.advantages, b.response_mask)
    # mean l = (2 ln .9 + 2 ln .5 + 2 ln .1) / 6 = -1.03370; mean A = 0
    # C_0 = (ln .9 + 1.03370) * 1 = (-0.10536 + 1.03370) = 0.92834; C_2 = ln .1 + 1.03370 = -1.26889; row 2 negated
    expected = torch.tensor([[0.92834, 0.34055, -1.26889], [-0.92834, -0.34055, 1.26889]])
    assert torch.allclose(cov, expected, atol=1e-5)


def _entropy(logits: torch.Tensor) -> float:
    p = torch.softmax(logits.double(), -1)
    return float(-(p * p.log()).sum())


def test_covariance_predicts_softmax_entropy_change():
    # Spec toy: z = [2, 1, 0], Q = [1, 0, -1], A = Q - E_pi Q, eta = 0.01.
    z = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    pi = torch.softmax(z, -1)  # [0.665241, 0.244728, 0.090031]
    advantage = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    advantage = advantage - (pi * advantage).sum()  # [0.42479, -0.57521, -1.57521]
    eta = 0.01
    logp = pi.log()
    # Cov_{a~pi}: the weighted-mean form of the token covariance, with the actions as "tokens" weighted by pi.
    natural_cov = ops.masked_mean(centred_covariance(logp, advantage, pi), pi)
    vanilla_cov = ops.masked_mean(centred_covariance(logp, pi * advantage, pi), pi)
    assert -eta * float(natural_cov) == pytest.approx(-0.0042440, abs=1e-7)
    assert -eta * float(vanilla_cov) == pytest.approx(-0.0011978, abs=1e-7)
    # exact entropy changes: natural PG moves logits by eta A, vanilla PG by eta pi A
    exact_natural = _entropy(z + eta * advantage) - _entropy(z)
    exact_vanilla = _entropy(z + eta * pi * advantage) - _entropy(z)
    assert exact_natural == pytest.approx(-0.0042478, abs=1e-7)
    assert exact_vanilla == pytest.approx(-0.0011990, abs=1e-7)
    # first-order prediction within 0.1 % of the exact change
    assert -eta * float(natural_cov) == pytest.approx(exact_natural, rel=2e-3)
    assert -eta * float(vanilla_cov) == pytest.approx(exact_vanilla, rel=2e-3)


def test_kl_cov_top_k_selection_toy():
    b = toy_batch()
    cov = centred_covariance(b.old_logprobs, b.advantages, b.response_mask)
    valid = b.response_mask > 0
    # k = 0.2: k' = max(1, floor(0.2 * 6)) = 1 -> the largest C (1.26889) is flat index 5
    assert select_top_cov(cov, valid, 0.2).flatten().nonzero().flatten().tolist() == [5]
    # k = 0.5: k' = 3 -> C = 1.26889 (5), 0.92834 (0), 0.34055 (1)
    assert sorted(select_top_cov(cov, valid, 0.5).flatten().nonzero().flatten().tolist()) == [0, 1, 5]
    # tiny ratio still selects one token; invalid tokens are never selected
    valid[1, 2] = False
    assert select_top_cov(cov, valid, 1e-4).flatten().nonzero().flatten().tolist() == [0]


def test_clip_cov_band_and_seeded_random_choice():
    b = toy_batch()
    cov = centred_covariance(b.old_logprobs, b.advantages, b.response_mask)
    valid = b.response_mask > 0
    # band (1, 5): only C = 1.26889 (token 5) is a candidate; m = max(1, floor(2e-4 * 6)) = 1
    g = torch.Generator().manual_seed(0)
    assert select_clip_cov(cov, valid, 2e-4, 1.0, 5.0, g).flatten().nonzero().flatten().tolist() == [5]
    # band (0.5, 5): candidates {0, 5}, one chosen at random; the seeded generator makes it reproducible
    picks = []
    for seed in range(20):
        sel = select_clip_cov(cov, valid, 2e-4, 0.5, 5.0, torch.Generator().manual_seed(seed))
        again = select_clip_cov(cov, valid, 2e-4, 0.5, 5.0, torch.Generator().manual_seed(seed))
        assert torch.equal(sel, again) and int(sel.sum()) == 1
        picks.append(int(sel.flatten().nonzero()))
    assert set(picks) == {0, 5}
    # ratio 0.5 -> m = 3 > |S| = 2: all candidates
    sel = select_clip_cov(cov, valid, 0.5, 0.5, 5.0, torch.Generator().manual_seed(0))
    assert sorted(sel.flatten().nonzero().flatten().tolist()) == [0, 5]
    # empty band: nothing selected
    assert not select_clip_cov(cov, valid, 0.5, 2.0, 5.0, torch.Generator()).any()


def _random_batch(rows=8, length=5, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    response_mask = (torch.rand(rows, length, generator=g) > 0.2).float()
    b = Batch(input_ids=torch.zeros(rows, length, dtype=torch.long),
              attention_mask=torch.ones(rows, length, dtype=torch.long), response_mask=response_mask,
              rewards=torch.zeros(rows), group_ids=torch.arange(rows) // 4)
    b.old_logprobs = -torch.rand(rows, length, generator=g) * 3
    b.advantages = torch.randn(rows, 1, generator=g).expand(rows, length) * response_mask
    return b


@pytest.mark.parametrize("name, params", [("clip_cov", {"clip_cov_ratio": 0.2, "clip_cov_lb": 0.1}),
                                          ("kl_cov", {"kl_cov_ratio": 0.2})])
def test_selection_is_whole_batch_and_independent_of_micro_batch_split(name, params):
    b = _random_batch()
    obj = Bound("objective", name, params)
    b.extras.update(obj.prepare(b, torch.Generator().manual_seed(1)))
    key = CLIP_COV_KEY if name == "clip_cov" else KL_COV_KEY
    assert b.extras[key].sum() >= 1
    # an off-policy current policy, so both objectives depend on the selection
    logprobs = b.old_logprobs + 0.3 * torch.randn(b.old_logprobs.shape, generator=torch.Generator().manual_seed(2))
    full, _ = obj(logprobs, b.old_logprobs, b.advantages, b.token_weights, extras=b.extras)
    for size in (1, 3, 5):
        parts = [obj(logprobs[i:i + size], m.old_logprobs, m.advantages, m.token_weights, extras=m.extras)[0]
                 for i, m in zip(range(0, b.size, size), b.split(size))]
        assert torch.equal(torch.cat(parts), full)
    # per-micro-batch selection (what the reference code does) would differ: top-k of each half is not the global one
    halves = [obj.prepare(m, torch.Generator().manual_seed(1))[key] for m in b.split(4)]
    assert not torch.equal(torch.cat(halves), b.extras[key])


def test_clip_cov_selected_tokens_get_exactly_zero_gradient():
    b = _random_batch()
    obj = ClipCov(clip_cov_ratio=0.2, clip_cov_lb=0.1, clip_cov_ub=50.0)
    selected = obj.prepare(b, torch.Generator().manual_seed(0))[CLIP_COV_KEY]
    assert selected.sum() >= 2
    logprobs = b.old_logprobs.clone().requires_grad_(True)  # on-policy: rho = 1, nothing clipped
    loss, metrics = obj(logprobs, b.old_logprobs, b.advantages, b.token_weights, extras={CLIP_COV_KEY: selected})
    ops.aggregate(loss, b.token_weights, "token-mean").backward()
    grad = logprobs.grad
    assert torch.all(grad[selected > 0] == 0.0)
    other = (selected == 0) & (b.response_mask > 0) & (b.advantages != 0)
    n = b.response_mask.sum()
    # unselected tokens: d/dl of -A rho / N at rho = 1 is -A / N
    assert torch.allclose(grad[other], -b.advantages[other] / n)
    # metric: fraction of loss tokens selected
    assert float(metrics["cov_selected_frac"]) == pytest.approx(float(selected.sum() / n))


def test_clip_cov_zero_advantage_zero_gradient_and_missing_prepare_is_an_error():
    b = _random_batch()
    b.advantages = torch.zeros_like(b.advantages)
    obj = ClipCov(clip_cov_ratio=0.2)
    extras = obj.prepare(b, torch.Generator())
    logprobs = b.old_logprobs.clone().requires_grad_(True)
    loss, _ = obj(logprobs, b.old_logprobs, b.advantages, b.token_weights, extras=extras)
    loss.sum().backward()
    assert torch.all(logprobs.grad == 0)
    with pytest.raises(ValueError, match="prepare"):
        obj(logprobs, b.old_logprobs, b.advantages, b.token_weights, extras={})
    with pytest.raises(ValueError, match="fraction"):
        ClipCov(clip_cov_ratio=2.0)


def test_kl_cov_off_policy_values_and_gradients():
    # Two tokens, token 0 selected. l_old = [-1, -1], l = [-0.8, -1.3], A = [1, -1], beta = 1.
    old = torch.tensor([[-1.0, -1.0]])
    logprobs = torch.tensor([[-0.8, -1.3]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]])
    extras = {KL_COV_KEY: torch.tensor([[1.0, 0.0]])}
    loss, metrics = KLCov(kl_cov_ratio=0.5, kl_coef=1.0)(logprobs, old, adv, torch.ones(1, 2), extras=extras)
    # token 0: -1 * e^{0.2} + |0.2| = -1.221403 + 0.2 = -1.021403 ; token 1 (not selected, no clip): e^{-0.3} = 0.740818
    assert torch.allclose(loss, torch.tensor([[-1.021403, 0.740818]]), atol=1e-6)
    loss.sum().backward()
    # d/dl: token 0: -A rho + beta sign(l - l_old) = -1.221403 + 1 = -0.221403 ; token 1: -A rho = 0.740818
    assert torch.allclose(logprobs.grad, torch.tensor([[-0.221403, 0.740818]]), atol=1e-6)
    assert float(metrics["abs_log_ratio"]) == pytest.approx(0.25)  # (0.2 + 0.3) / 2
    assert float(metrics["cov_selected_frac"]) == pytest.approx(0.5)
    # on-policy (rho = 1) the penalty is 0 and the gradient equals plain -A
    on = old.clone().requires_grad_(True)
    loss_on, _ = KLCov(kl_cov_ratio=0.5)(on, old, adv, torch.ones(1, 2), extras=extras)
    loss_on.sum().backward()
    assert torch.allclose(loss_on, -adv) and torch.allclose(on.grad, -adv)


def test_entropy_performance_fit_spec_toy():
    # R = -a e^H + b with a = 0.3, b = 0.9: ceiling R(0) = b - a = 0.6; R(1) = 0.9 - 0.3 e = 0.084515
    entropy = [0.1 * i for i in range(1, 12)]
    accuracy = [-0.3 * math.exp(h) + 0.9 for h in entropy]
    fit = diag.fit_entropy_performance(entropy, accuracy)
    assert fit["a"] == pytest.approx(0.3, abs=1e-9) and fit["b"] == pytest.approx(0.9, abs=1e-9)
    assert fit["ceiling"] == pytest.approx(0.6, abs=1e-9) and fit["r2"] == pytest.approx(1.0)
    assert -fit["a"] * math.e + fit["b"] == pytest.approx(0.084515, abs=1e-6)
    assert diag.fit_entropy_performance([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None  # no entropy spread: no fit
