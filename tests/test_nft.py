"""NFT objective (arXiv 2505.18116): the spec's toy values, the on-policy equivalence with Dr.GRPO / GRPO, RFT."""

import math

import pytest
import torch

from entropo.algorithms.nft import nft, nft_prepare, nft_token_loss
from entropo.algorithms.objectives import ppo_clip
from entropo.batch import Batch


def grad_per_token(correct, rate, logprobs, old_logprobs, **kw):
    """d(sum of per-token NFT losses)/d logprobs, [B, L]."""
    lp = logprobs.clone().requires_grad_(True)
    nft_token_loss(lp, old_logprobs, torch.tensor(correct), torch.tensor(rate), **kw).sum().backward()
    return lp.grad


@pytest.mark.parametrize("rate, w_correct, w_wrong", [(0.25, 0.75, -0.25), (0.75, 0.25, -0.75)])
def test_on_policy_weights_match_spec(rate, w_correct, w_wrong):
    # Spec (f): on-policy (R = 1), normalize=1 → the gradient is -w ∇ℓ with w = +(1 - r̂) for a correct answer and
    # w = -r̂ for a wrong one: r̂ = 0.25 → (+0.75, -0.25); r̂ = 0.75 → (+0.25, -0.75).
    lp = torch.full((2, 3), -1.3)
    g = grad_per_token([1.0, 0.0], [rate, rate], lp, lp.clone(), normalize=1)
    assert torch.allclose(g[0], torch.full((3,), -w_correct), atol=1e-6)
    assert torch.allclose(g[1], torch.full((3,), -w_wrong), atol=1e-6)
    # and the loss value is 0 on-policy (R = 1 and N = 1)
    assert float(nft_token_loss(lp, lp, torch.tensor([1.0, 0.0]), torch.tensor([rate, rate])).abs().sum()) < 1e-6


def test_off_policy_wrong_token_clamped_value_keeps_gradient():
    # Spec (f): wrong token, R = 2, r̂ = 0.25: N = (1 - 0.25·2)/0.75 = 0.66667 → value clamped to ε_neg = 1.0
    # (loss -log 1 = 0) but the gradient coefficient on ∇ℓ is r̂R/((1 - r̂)·1.0) = 0.5/0.75 = 0.66667.
    old = torch.tensor([[-2.0]])
    lp = old + math.log(2.0)
    loss = nft_token_loss(lp, old, torch.tensor([0.0]), torch.tensor([0.25]), normalize=0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    g = grad_per_token([0.0], [0.25], lp, old, normalize=0)
    assert float(g) == pytest.approx(0.5 / 0.75, rel=1e-5)
    # Unclamped (ε_neg tiny): loss = -log(0.66667) = 0.405465, gradient r̂R/((1 - r̂)N) = 0.66667/0.66667 = 1.0
    loss = nft_token_loss(lp, old, torch.tensor([0.0]), torch.tensor([0.25]), normalize=0, clamp_negative=1e-6)
    assert float(loss) == pytest.approx(-math.log(2 / 3), rel=1e-5)
    g = grad_per_token([0.0], [0.25], lp, old, normalize=0, clamp_negative=1e-6)
    assert float(g) == pytest.approx(1.0, rel=1e-5)


def test_on_policy_equals_dr_grpo_and_grpo_gradients():
    # Special case (spec (b)): on-policy, normalize=1 gives the gradient of the PG loss with Dr.GRPO advantages
    # r - mean(r) = (1 - r̂, -r̂); normalize=2 gives GRPO's with the biased std sqrt(r̂(1 - r̂)).
    torch.manual_seed(0)
    lp = -torch.rand(4, 5) - 0.1
    correct = torch.tensor([1.0, 0.0, 0.0, 0.0])  # one prompt, r̂ = 0.25
    rate = torch.full((4,), 0.25)
    for normalize, adv in [(1, correct - 0.25), (2, (correct - 0.25) / math.sqrt(0.25 * 0.75))]:
        g_nft = grad_per_token(correct.tolist(), rate.tolist(), lp, lp.clone(), normalize=normalize)
        x = lp.clone().requires_grad_(True)
        ppo_clip(x, lp.clone(), adv[:, None].expand(4, 5), torch.ones(4, 5))[0].sum().backward()
        assert torch.allclose(g_nft, x.grad, atol=1e-6)


def test_neg_weight_zero_is_rft():
    lp = torch.full((2, 2), -0.7)
    g = grad_per_token([1.0, 0.0], [0.5, 0.5], lp, lp - 0.3, neg_weight=0.0)
    assert torch.all(g[1] == 0) and torch.all(g[0] != 0)


def _batch(rewards, group_ids, correct=None):
    b = len(rewards)
    return Batch(input_ids=torch.zeros(b, 3, dtype=torch.long), attention_mask=torch.ones(b, 3),
                 response_mask=torch.ones(b, 3), rewards=torch.tensor(rewards), group_ids=torch.tensor(group_ids),
                 correct=None if correct is None else torch.tensor(correct, dtype=torch.bool))


def test_prepare_uses_whole_batch_and_drops_uniform_groups():
    # groups: 0 → 1 of 4 correct (r̂ 0.25); 1 → all correct (dropped); 2 → all wrong (dropped)
    batch = _batch([1, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 2, 2])
    out = nft_prepare(batch)
    assert out["nft_correct"].tolist() == [1, 0, 0, 0, 1, 1, 0, 0]
    assert out["nft_correct_rate"].tolist() == [0.25] * 4 + [1.0, 1.0, 0.0, 0.0]
    assert out["nft_row_weight"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    # the verifier's verdict wins over the reward when present
    out = nft_prepare(_batch([1.0, 1.0], [0, 0], correct=[True, False]))
    assert out["nft_correct"].tolist() == [1, 0] and out["nft_correct_rate"].tolist() == [0.5, 0.5]


def test_objective_zero_weight_rows_get_zero_gradient():
    batch = _batch([1, 0, 1, 1], [0, 0, 1, 1])
    extras = nft_prepare(batch)
    old = torch.full((4, 3), -1.0)
    lp = (old + 0.2).requires_grad_(True)
    loss, metrics = nft(lp, old, torch.zeros(4, 3), torch.ones(4, 3), extras=extras)
    loss.sum().backward()
    assert torch.all(lp.grad[2:] == 0) and torch.all(lp.grad[:2] != 0)
    assert metrics["correct_token_frac"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        nft(lp, old, torch.zeros(4, 3), torch.ones(4, 3), extras={})
