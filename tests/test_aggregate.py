"""entropo.ops: loss aggregation modes, KL estimators, masked / per-group statistics."""

import math

import pytest
import torch

from entropo import ops

# Two sequences of 3 and 2 response tokens, padded to L = 4.
VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])
RESPONSE = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_modes_by_hand():
    # token-mean: (1+2+3+4+5) / 5 = 3
    assert ops.aggregate(VALUES, RESPONSE, "token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-mean: (6/3 + 9/2) / 2 = (2 + 4.5) / 2 = 3.25
    assert ops.aggregate(VALUES, RESPONSE, "seq-mean-token-mean").item() == pytest.approx(3.25)
    # seq-mean-token-sum: (6 + 9) / 2 = 7.5
    assert ops.aggregate(VALUES, RESPONSE, "seq-mean-token-sum").item() == pytest.approx(7.5)
    # seq-mean-token-sum-norm: 15 / (2 seqs * L=4) = 1.875; with norm_length 10: 15 / 20 = 0.75
    assert ops.aggregate(VALUES, RESPONSE, "seq-mean-token-sum-norm").item() == pytest.approx(1.875)
    assert ops.aggregate(VALUES, RESPONSE, "seq-mean-token-sum-norm", norm_length=10).item() == pytest.approx(0.75)


def test_weights_multiply_but_denominator_comes_from_response_mask():
    weights = torch.tensor([[1.0, 0.5, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # token 3 of row 0 de-weighted to 0
    # numerators: row 0 = 1 + 0.5*2 + 0*3 = 2, row 1 = 9
    # token-mean with response_mask: 11 / 5 = 2.2
    assert ops.aggregate(VALUES, weights, "token-mean", response_mask=RESPONSE).item() == pytest.approx(2.2)
    # seq-mean-token-mean: (2/3 + 9/2) / 2 = 2.583333
    assert ops.aggregate(VALUES, weights, "seq-mean-token-mean", response_mask=RESPONSE).item() == pytest.approx(31 / 12)
    # without response_mask the denominator is (weights != 0): 4 tokens -> 11 / 4
    assert ops.aggregate(VALUES, weights, "token-mean").item() == pytest.approx(2.75)


def test_empty_rows_and_empty_batch():
    values = torch.cat([VALUES, torch.full((1, 4), 7.0)])
    mask = torch.cat([RESPONSE, torch.zeros(1, 4)])
    # the empty third row neither adds to the numerator nor counts as a sequence: same as without it
    assert ops.aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(3.25)
    assert ops.aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx(7.5)
    for mode in ops.AGGREGATION_MODES:
        out = ops.aggregate(torch.ones(2, 3), torch.zeros(2, 3), mode)
        assert out.item() == 0.0 and torch.isfinite(out)


def test_global_totals_override_local():
    # token-mean over 10 tokens in the whole mini-batch: 15 / 10
    assert ops.aggregate(VALUES, RESPONSE, "token-mean", total_tokens=10).item() == pytest.approx(1.5)
    # seq-mean-token-sum over 5 sequences: 15 / 5
    assert ops.aggregate(VALUES, RESPONSE, "seq-mean-token-sum", total_seqs=torch.tensor(5)).item() == pytest.approx(3.0)


def test_bad_mode():
    with pytest.raises(ValueError, match="token-mean.*seq-mean-token-sum-norm"):
        ops.aggregate(VALUES, RESPONSE, "mean")


@pytest.mark.parametrize("mode", ops.AGGREGATION_MODES)
def test_micro_batches_sum_to_full_batch_value_and_gradient(mode):
    gen = torch.Generator().manual_seed(0)
    B, L = 8, 6
    x = torch.randn(B, L, generator=gen)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 4, 6])  # uneven, one empty row
    response = (torch.arange(L)[None, :] < lengths[:, None]).float()
    weights = response * torch.rand(B, L, generator=gen)  # fractional token weights
    theta = torch.randn(L, generator=gen)

    def loss(rows, param):
        values = torch.sin(x[rows] * param) + param**2  # any differentiable per-token function of the parameter
        return ops.aggregate(values, weights[rows], mode, response_mask=response[rows], total_tokens=total_tokens,
                             total_seqs=total_seqs, norm_length=8)

    total_tokens = response.sum()
    total_seqs = (response.sum(-1) > 0).sum()
    full_param = theta.clone().requires_grad_()
    full = loss(torch.arange(B), full_param)
    full.backward()

    micro_param = theta.clone().requires_grad_()
    accumulated = 0.0
    for rows in torch.arange(B).split(2):  # 4 micro-batches
        micro = loss(rows, micro_param)
        micro.backward()  # gradients accumulate in micro_param.grad like in the trainer
        accumulated = accumulated + micro.detach()
    assert accumulated.item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(micro_param.grad, full_param.grad)


# ---- KL estimators -------------------------------------------------------------------------------------------------
def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    assert ops.kl(lp, ref, "k1").item() == pytest.approx(0.5)  # -1 - (-1.5)
    assert ops.kl(lp, ref, "k2").item() == pytest.approx(0.125)  # 0.5 * 0.5^2
    assert ops.kl(lp, ref, "k3").item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)  # = 0.106531
    assert ops.kl(lp, ref, "k3").item() == pytest.approx(0.106531, abs=1e-6)
    # k3 >= 0 everywhere and 0 when the policies agree
    x = torch.linspace(-5, 5, 101)
    assert (ops.kl(x, torch.zeros_like(x), "k3") >= 0).all()
    assert ops.kl(x, x, "k3").abs().max().item() == 0.0


def test_k3_clamped_like_verl():
    # x = ref - lp = 30 -> clamped to 20 -> exp(20) - 21 is huge -> clamped to 10
    assert ops.kl(torch.tensor([0.0]), torch.tensor([30.0]), "k3").item() == 10.0
    # x = -30 -> clamped to -20: exp(-20) + 20 - 1 ~ 19 -> clamped to 10
    assert ops.kl(torch.tensor([0.0]), torch.tensor([-30.0]), "k3").item() == 10.0


def test_kl_bad_kind():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        ops.kl(torch.zeros(1), torch.zeros(1), "k4")


# ---- statistics ----------------------------------------------------------------------------------------------------
def test_masked_stats_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert ops.masked_mean(values, mask).item() == pytest.approx(2.0)
    assert ops.masked_var(values, mask).item() == pytest.approx(1.0)  # ((1)^2 + 0 + 1^2) / (3 - 1)
    assert ops.masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    # whiten: (v - 2) / (1 + 1e-6)
    torch.testing.assert_close(ops.masked_whiten(values, mask)[:3], torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-6))
    assert ops.masked_mean(values, torch.zeros(4)).item() == 0.0
    rows = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    torch.testing.assert_close(ops.masked_mean(rows, torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=-1), torch.tensor([2.0, 7.0]))


def test_group_stats_arbitrary_ids_uneven_sizes():
    values = torch.tensor([1.0, 5.0, 0.0, 2.0, 7.0, 0.0])
    group_ids = torch.tensor([40, 3, 40, 3, 99, 40])  # groups: 40 -> [1, 0, 0], 3 -> [5, 2], 99 -> [7]
    count, mean, std = ops.group_stats(values, group_ids)
    torch.testing.assert_close(count, torch.tensor([3.0, 2.0, 3.0, 2.0, 1.0, 3.0]))
    torch.testing.assert_close(mean, torch.tensor([1 / 3, 3.5, 1 / 3, 3.5, 7.0, 1 / 3]))
    # std of [1,0,0]: sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3); of [5,2]: sqrt((2.25 * 2) / 1) = 2.12132; singleton: 0
    s1, s2 = math.sqrt(1 / 3), math.sqrt(4.5)
    torch.testing.assert_close(std, torch.tensor([s1, s2, s1, s2, 0.0, s1]))


def test_broadcast_to_tokens_is_zero_outside_mask():
    out = ops.broadcast_to_tokens(torch.tensor([2.0, float("inf")]), torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert out.tolist() == [[0.0, 2.0, 2.0], [0.0, 0.0, 0.0]]
