"""Regularizers (KL-to-reference loss, entropy bonus) and the KL-in-reward shaping, by hand."""

import math

import pytest
import torch

from entropo import registry
from entropo.algorithms import regularizers, shaping
from entropo.batch import Batch
from entropo.types import TokenContext


def context(logprobs, ref_logprobs=None, entropy=None, mask=None):
    mask = torch.ones_like(logprobs) if mask is None else mask
    return TokenContext(
        logprobs=logprobs,
        entropy=torch.zeros_like(logprobs) if entropy is None else entropy,
        old_logprobs=logprobs.detach(),
        ref_logprobs=ref_logprobs,
        advantages=torch.zeros_like(logprobs),
        mask=mask,
        batch=None,
    )


def test_registered_with_meta():
    assert registry.get("regularizer", "kl") is regularizers.kl
    assert registry.meta("regularizer", "kl")["needs_ref"] is True
    assert registry.get("regularizer", "entropy") is regularizers.entropy
    assert registry.meta("shaping", "kl_penalty")["stage"] == "reward"
    assert registry.meta("shaping", "kl_penalty")["needs_ref"] is True


def test_kl_values_and_metric_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.3]])
    ref = torch.tensor([[-1.5, -1.0, 50.0]])  # last token masked out (garbage reference value)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # k1 = l - ref: [0.5, -1.0]; k2 = (l - ref)^2 / 2: [0.125, 0.5]; k3 = exp(ref - l) - (ref - l) - 1:
    # [exp(-0.5) + 0.5 - 1, exp(1) - 1 - 1] = [0.106531, 0.718282]
    expected = {"k1": [0.5, -1.0], "k2": [0.125, 0.5], "k3": [math.exp(-0.5) - 0.5, math.e - 2]}
    for kind, values in expected.items():
        loss, metrics = regularizers.kl(context(logprobs, ref, mask=mask), kind=kind)
        torch.testing.assert_close(loss[0, :2], torch.tensor(values))
        assert metrics["kl_ref"].item() == pytest.approx(sum(values) / 2)  # masked mean over the 2 tokens
    assert regularizers.kl(context(logprobs, ref, mask=mask))[0][0, 0].item() == pytest.approx(0.106531, abs=1e-6)


def test_kl_gradients():
    logprobs = torch.tensor([[-1.0, -2.0, -0.3]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.3]])
    # d k2 / d l = l - ref = [0.5, -1.0, 0]: gradient descent moves l towards ref
    (grad,) = torch.autograd.grad(regularizers.kl(context(logprobs, ref), kind="k2")[0].sum(), logprobs)
    torch.testing.assert_close(grad, torch.tensor([[0.5, -1.0, 0.0]]))
    # d k3 / d l = 1 - exp(ref - l) = [1 - exp(-0.5), 1 - e, 0]
    (grad,) = torch.autograd.grad(regularizers.kl(context(logprobs, ref), kind="k3")[0].sum(), logprobs)
    torch.testing.assert_close(grad, torch.tensor([[1 - math.exp(-0.5), 1 - math.e, 0.0]]))
    # d k1 / d l = 1
    (grad,) = torch.autograd.grad(regularizers.kl(context(logprobs, ref), kind="k1")[0].sum(), logprobs)
    torch.testing.assert_close(grad, torch.ones(1, 3))


def test_kl_without_reference_raises():
    with pytest.raises(ValueError, match="ref_logprobs"):
        regularizers.kl(context(torch.zeros(1, 2)))


def entropy_of(logits):
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def test_entropy_values_by_hand():
    # uniform over 4 -> log 4 = 1.386294; one-hot-ish logits [10, 0] -> small entropy; the third token is masked out
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, -1e9, -1e9], [1.0, 2.0, 3.0, 4.0]]])
    h = entropy_of(logits)  # [1, 3]
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, metrics = regularizers.entropy(context(torch.zeros(1, 3), entropy=h, mask=mask))
    torch.testing.assert_close(loss, -h)
    assert loss[0, 0].item() == pytest.approx(-math.log(4))
    # p = [1/(1+e^-10), e^-10/(1+e^-10)]: H = log(1 + e^-10) + 10 e^-10/(1 + e^-10) = 0.000499
    assert h[0, 1].item() == pytest.approx(math.log1p(math.exp(-10)) + 10 * math.exp(-10) / (1 + math.exp(-10)), rel=1e-4)
    assert metrics["entropy"].item() == pytest.approx((math.log(4) + h[0, 1].item()) / 2)


def test_entropy_bonus_sgd_step_raises_entropy():
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0]], [[0.0, 3.0, 0.1, 0.2]]], requires_grad=True)  # [B=2, L=1, V=4]
    before = entropy_of(logits).detach()
    loss, _ = regularizers.entropy(context(torch.zeros(2, 1), entropy=entropy_of(logits)))
    loss.mean().backward()
    with torch.no_grad():
        after = entropy_of(logits - 0.1 * logits.grad)
    assert (after > before).all()


# ---- KL-in-reward shaping (stage "reward", PPO-RLHF) ---------------------------------------------------------------
def shaping_batch(token_rewards=None):
    return Batch(
        input_ids=torch.ones(1, 4, dtype=torch.long),
        attention_mask=torch.ones(1, 4, dtype=torch.long),
        response_mask=torch.tensor([[0.0, 1.0, 1.0, 0.0]]),  # prompt token, 2 response tokens, padding
        rewards=torch.tensor([1.0]),
        group_ids=torch.tensor([0]),
        old_logprobs=torch.tensor([[-9.0, -1.0, -2.0, 0.0]]),
        ref_logprobs=torch.tensor([[-1.0, -1.5, -1.0, -3.0]]),
        token_rewards=token_rewards,
    )


def test_kl_penalty_by_hand():
    batch = shaping_batch()
    metrics = shaping.kl_penalty(batch, coef=0.1)
    # k1 on response tokens = old - ref = [0.5, -1.0]; penalty coef * k1 = [0.05, -0.1]; nothing on prompt/padding
    torch.testing.assert_close(batch.token_rewards, torch.tensor([[0.0, -0.05, 0.1, 0.0]]))
    assert metrics["kl_penalty_mean"] == pytest.approx((0.05 - 0.1) / 2)
    assert metrics["kl_ref"] == pytest.approx((0.5 - 1.0) / 2)
    # returns = 1 + (-0.05 + 0.1) = 1.05: advantage estimators see the penalised outcome
    assert batch.returns().item() == pytest.approx(1.05)


def test_kl_penalty_adds_to_existing_token_rewards_and_k3():
    batch = shaping_batch(token_rewards=torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    shaping.kl_penalty(batch, coef=1.0, kind="k3")
    # k3 with x = ref - old = [-0.5, 1.0]: [exp(-0.5) + 0.5 - 1, e - 1 - 1] = [0.106531, 0.718282]
    expected = torch.tensor([[0.0, 1.0 - (math.exp(-0.5) - 0.5), -(math.e - 2), 0.0]])
    torch.testing.assert_close(batch.token_rewards, expected)


def test_kl_penalty_needs_reference():
    batch = shaping_batch()
    batch.ref_logprobs = None
    with pytest.raises(ValueError, match="ref_logprobs"):
        shaping.kl_penalty(batch)
