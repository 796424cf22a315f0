"""Objectives: PPO clip (incl. DAPO clip-higher), dual-clip, GSPO — by-hand values on an off-policy batch."""

import math

import pytest
import torch

from entropo import ops, registry
from entropo.algorithms import objectives

# Off-policy toy batch, B = 2, L = 4. log-ratio d = logprobs - old_logprobs per token; the last token of row 1 is
# padding (mask 0). Row 0 has A = +1, row 1 has A = -1.
LOG_RATIO = torch.tensor([[0.5, 0.1, -0.5, 0.0], [0.5, -0.5, -0.1, 0.0]])
OLD = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.5, -0.7, -2.2, -1.0]])
ADV = torch.tensor([[1.0] * 4, [-1.0] * 4])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
# rho = exp(d): row 0 [1.648721, 1.105171, 0.606531, 1], row 1 [1.648721, 0.606531, 0.904837, (1)]


def run(fn, log_ratio=LOG_RATIO, adv=ADV, mask=MASK, **params):
    logprobs = (OLD + log_ratio).clone().requires_grad_()
    loss, metrics = fn(logprobs, OLD, adv, mask, **params)
    (loss * mask).sum().backward()
    return loss.detach(), logprobs.grad, metrics


def test_registered():
    for name in ("ppo_clip", "dual_clip", "gspo"):
        assert registry.get("objective", name) is getattr(objectives, name)


def test_ppo_clip_by_hand():
    loss, grad, metrics = run(objectives.ppo_clip)
    # A = +1: loss = -min(rho, clip(rho, 0.8, 1.2)):
    #   1.648721 -> clipped high -> -1.2; 1.105171 -> -1.105171; 0.606531 (< 0.8 but A > 0 keeps rho) -> -0.606531; 1 -> -1
    # A = -1: loss = max(rho, clip(rho)):
    #   1.648721 (> 1.2 but A < 0 keeps rho) -> 1.648721; 0.606531 -> clipped low -> 0.8; 0.904837; padding rho = 1 -> 1
    expected = torch.tensor([[-1.2, -1.105171, -0.606531, -1.0], [1.648721, 0.8, 0.904837, 1.0]])
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    # gradient: -A * rho where unclipped, exactly 0 where clipped (row 0 token 0, row 1 token 1)
    expected_grad = torch.tensor([[0.0, -1.105171, -0.606531, -1.0], [1.648721, 0.0, 0.904837, 0.0]])
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=0)
    assert grad[0, 0].item() == 0.0 and grad[1, 1].item() == 0.0
    # 7 active tokens: one clipped high, one clipped low
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 7)
    assert metrics["clip_frac_low"].item() == pytest.approx(1 / 7)
    # ratio_mean = (1.648721 + 1.105171 + 0.606531 + 1 + 1.648721 + 0.606531 + 0.904837) / 7 = 1.074359
    assert metrics["ratio_mean"].item() == pytest.approx(1.074359, abs=1e-6)
    # approx_kl_old = mean of k3 = exp(-d) + d - 1 over the 7 tokens:
    # (0.106531 + 0.004837 + 0.148721 + 0 + 0.106531 + 0.148721 + 0.005171) / 7 = 0.074359
    assert metrics["approx_kl_old"].item() == pytest.approx(0.074359, abs=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())


def test_clip_higher():
    loss, grad, metrics = run(objectives.ppo_clip, clip_high=0.28)
    # rho = 1.648721 still above 1.28 -> -1.28; 1.105171 < 1.28 unchanged; low side unchanged (0.8)
    assert loss[0, 0].item() == pytest.approx(-1.28)
    assert loss[0, 1].item() == pytest.approx(-1.105171, abs=1e-6)
    assert loss[1, 1].item() == pytest.approx(0.8)
    # a ratio of 1.25 is clipped with the symmetric 0.2 bound but not with clip-higher
    d = torch.full((1, 1), math.log(1.25))
    one = torch.ones(1, 1)
    old = OLD[:1, :1]
    lp = (old + d).requires_grad_()
    assert objectives.ppo_clip(lp, old, one, one)[0].item() == pytest.approx(-1.2)
    assert objectives.ppo_clip(lp, old, one, one, clip_high=0.28)[0].item() == pytest.approx(-1.25)


def test_ppo_clip_on_policy_gradient_is_minus_advantage_times_grad_logprob():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 7, (3, 5), generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.ones(3, 5)

    def logprob_of_tokens():
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)

    logprobs = logprob_of_tokens()
    loss, metrics = objectives.ppo_clip(logprobs, logprobs.detach(), adv, mask)  # rho = 1
    (grad_ppo,) = torch.autograd.grad(loss.sum(), logits)
    (grad_pg,) = torch.autograd.grad((-adv * logprob_of_tokens()).sum(), logits)
    torch.testing.assert_close(grad_ppo, grad_pg)
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    assert metrics["clip_frac_low"].item() == metrics["clip_frac_high"].item() == 0.0
    assert metrics["approx_kl_old"].item() == 0.0


@pytest.mark.parametrize("name", ["ppo_clip", "dual_clip", "gspo"])
def test_zero_advantage_zero_gradient(name):
    loss, grad, _ = run(registry.get("objective", name), adv=torch.zeros(2, 4))
    assert (loss == 0).all() and (grad == 0).all()


def test_dual_clip_toy_rlvr_25_4():
    # A = -1, rho = 5: vanilla clipped loss max(5, 1.2) = 5; dual-clip min(5, 3) = 3 with zero gradient.
    # Also: A = -1, rho = 2 -> 2 (below the cap, gradient rho = 2); A = +1, rho = 5 -> -1.2 (clipped, zero gradient).
    d = torch.log(torch.tensor([[5.0, 2.0, 5.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3)
    lp = (old + d).requires_grad_()
    vanilla, _ = objectives.ppo_clip(lp, old, adv, mask)
    assert vanilla[0, 0].item() == pytest.approx(5.0)
    loss, metrics = objectives.dual_clip(lp, old, adv, mask)
    torch.testing.assert_close(loss.detach(), torch.tensor([[3.0, 2.0, -1.2]]))
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 2.0, 0.0]]))
    assert metrics["clip_frac_dual"].item() == pytest.approx(1 / 3)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 3)
    # a larger cap c = 10 leaves rho = 5 uncapped
    assert objectives.dual_clip(lp, old, adv, mask, clip_c=10.0)[0][0, 0].item() == pytest.approx(5.0)


def test_dual_clip_equals_ppo_clip_when_cap_inactive():
    loss_dual, grad_dual, metrics = run(objectives.dual_clip)
    loss_ppo, grad_ppo, _ = run(objectives.ppo_clip)
    torch.testing.assert_close(loss_dual, loss_ppo)  # all ratios < 3
    torch.testing.assert_close(grad_dual, grad_ppo)
    assert metrics["clip_frac_dual"].item() == 0.0


def test_dual_clip_rejects_c_not_above_one():
    with pytest.raises(ValueError, match="clip_c"):
        run(objectives.dual_clip, clip_c=1.0)


def test_gspo_toy_rlvr_25_5():
    # 3 response tokens with d = [0.3, -0.1, 0.0] + a padding token with d = 5 (excluded from the mean):
    # log s = 0.2 / 3 = 0.066667 -> s = 1.068939, outside [1 - 3e-4, 1 + 4e-4].
    d = torch.tensor([[0.3, -0.1, 0.0, 5.0], [0.3, -0.1, 0.0, 5.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]] * 2)
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2)
    lp = (old + d).requires_grad_()
    loss, metrics = objectives.gspo(lp, old, adv, mask)
    s = math.exp(0.2 / 3)  # 1.068939
    # A = +1: max(-s, -clip(s)) = -(1 + 4e-4) on every token, constant -> zero gradient for the whole sequence
    # A = -1: max(s, clip(s)) = s on every token, gradient d(s)/d(logprob_t) = s (value s_i, gradient s_i * grad l_t)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.0004] * 4, [s] * 4]))
    (grad,) = torch.autograd.grad((loss * mask).sum(), lp)
    torch.testing.assert_close(grad, torch.tensor([[0.0] * 4, [s, s, s, 0.0]]))
    # 6 active tokens: 3 clipped high (A > 0, s > 1 + 4e-4), none clipped low; ratio_mean = s
    assert metrics["clip_frac_high"].item() == pytest.approx(0.5)
    assert metrics["clip_frac_low"].item() == 0.0
    assert metrics["ratio_mean"].item() == pytest.approx(s, rel=1e-6)


def test_gspo_inside_trust_region_is_sequence_weighted_policy_gradient():
    # d = [2e-4, -1e-4, 2e-4] -> log s = 1e-4, s = 1.0001 inside the bounds: loss = -A s, gradient -A s per token.
    # With seq-mean-token-mean each token of a sequence gets the same weight s / |o_i|.
    d = torch.tensor([[2e-4, -1e-4, 2e-4]])
    old = torch.zeros(1, 3)
    adv = torch.full((1, 3), 2.0)
    mask = torch.ones(1, 3)
    lp = (old + d).requires_grad_()
    loss, metrics = objectives.gspo(lp, old, adv, mask)
    s = math.exp(1e-4)
    total = ops.aggregate(loss, mask, "seq-mean-token-mean")
    (grad,) = torch.autograd.grad(total, lp)
    torch.testing.assert_close(grad, torch.full((1, 3), -2.0 * s / 3))
    assert metrics["clip_frac_high"].item() == metrics["clip_frac_low"].item() == 0.0


def test_objectives_finite_on_masked_extremes():
    # padding tokens may hold garbage log-probs; the loss must stay finite (the ratio is clamped)
    d = torch.tensor([[0.0, 1000.0], [0.0, -1000.0]])
    old = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    for name in ("ppo_clip", "dual_clip", "gspo"):
        loss, metrics = registry.get("objective", name)(old + d, old, torch.ones(2, 2), mask)
        assert torch.isfinite(loss).all()
        assert all(torch.isfinite(v) for v in metrics.values())
