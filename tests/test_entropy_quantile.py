"""TRL parity: top-entropy-quantile token mask (arXiv 2506.01939), TRL's adaptive entropy coefficient (Skywork-OR1,
arXiv 2505.22312) and the loss-token entropy bonus."""

import math

import pytest
import torch

from entropo import ops
from entropo.algorithms.controllers import AdaptiveEntropy
from entropo.algorithms.regularizers import entropy as entropy_regularizer
from entropo.algorithms.entropy_quantile import (
    TRLAdaptiveEntropy,
    entropy_quantile_mask,
    high_entropy_mask,
)
from entropo.batch import Batch
from entropo.types import TokenContext


def batch_with_entropy() -> Batch:
    # 2 rows x 4 tokens; the last token of row 0 is padding (its entropy 9.0 must be ignored)
    entropy = torch.tensor([[0.1, 0.5, 2.0, 9.0], [1.0, 0.3, 0.7, 1.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    b = Batch(input_ids=torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long),
              response_mask=mask, rewards=torch.zeros(2), group_ids=torch.zeros(2, dtype=torch.long))
    b.old_entropy = entropy
    return b


def test_quantile_mask_hand_values():
    b = batch_with_entropy()
    b.token_weights = b.token_weights * 0.5  # an earlier reweighting must be kept (multiplied into)
    metrics = entropy_quantile_mask(b, top_quantile=0.2)
    # valid sorted: [0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0]; 0.8 quantile at 0.8 * 6 = 4.8 -> 1.0 + 0.8 * 0.5 = 1.4
    assert metrics["entropy_quantile_threshold"] == pytest.approx(1.4)
    assert b.token_weights.tolist() == [[0, 0, 0.5, 0], [0, 0, 0, 0.5]]
    assert metrics["entropy_quantile_kept_frac"] == pytest.approx(2 / 7)


def test_quantile_mask_extremes_match_trl_semantics():
    b = batch_with_entropy()
    keep_all, t = high_entropy_mask(b.old_entropy, b.response_mask > 0, 1.0)  # 0 quantile = min: everything stays
    assert t == pytest.approx(0.1) and torch.equal(keep_all, b.response_mask > 0)
    keep_max, t = high_entropy_mask(b.old_entropy, b.response_mask > 0, 0.0)  # only the maximum (padding excluded)
    assert t == pytest.approx(2.0) and keep_max.nonzero().tolist() == [[0, 2]]
    # top half: median of 7 values = 0.7 -> tokens >= 0.7: 2.0, 1.0, 0.7, 1.5
    keep_half, t = high_entropy_mask(b.old_entropy, b.response_mask > 0, 0.5)
    assert t == pytest.approx(0.7) and int(keep_half.sum()) == 4
    with pytest.raises(ValueError):
        entropy_quantile_mask(b, top_quantile=1.5)


def test_quantile_is_over_the_whole_batch_not_per_row():
    b = batch_with_entropy()
    b.old_entropy = torch.tensor([[3.0, 2.5, 2.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    entropy_quantile_mask(b, top_quantile=0.3)
    # 7 valid values; 0.7 quantile at 0.7 * 6 = 4.2 -> 2.0 + 0.2 * 0.5 = 2.1 -> keeps 3.0 and 2.5, both in row 0
    assert b.token_weights.nonzero().tolist() == [[0, 0], [0, 1]]
    # a per-row (or per-micro-batch of one row) quantile, as a micro-batch-local rule would do, keeps row 1's 0.4
    row1, _ = high_entropy_mask(b.old_entropy[1:], b.response_mask[1:] > 0, 0.3)
    assert row1.nonzero().tolist() == [[0, 3]]


def test_trl_adaptive_entropy_hand_values_and_gating():
    c = TRLAdaptiveEntropy(init_coef=0.0, target=0.5, delta=0.1, coef_min=0.0, coef_max=0.15)
    assert c.value() == 0.0  # nothing measured yet (TRL: last entropy = inf > target)
    c.update({"entropy": 0.4})  # 0.4 <= 0.5: coef 0 -> 0.1, applied
    assert c.coef == pytest.approx(0.1) and c.value() == pytest.approx(0.1)
    c.update({"entropy": 0.5})  # equal to target counts as "at or below": coef 0.2 clamped to 0.15
    assert c.coef == pytest.approx(0.15) and c.value() == pytest.approx(0.15)
    c.update({"entropy": 0.6})  # above: coef 0.05, but not applied while entropy > target
    assert c.coef == pytest.approx(0.05) and c.value() == 0.0
    c.update({"other": 1.0})  # metric absent: unchanged
    assert c.coef == pytest.approx(0.05)
    c.update({"entropy": 0.9})
    c.update({"entropy": 0.9})  # clamped at coef_min
    assert c.coef == 0.0
    # state round trip (last_entropy included, inf survives)
    fresh = TRLAdaptiveEntropy()
    assert math.isinf(fresh.state_dict()["last_entropy"])
    fresh.load_state_dict(c.state_dict())
    assert fresh.state_dict() == c.state_dict() and fresh.value() == c.value()
    # the built-in Skywork-style controller differs: no gating, strict "<" (so it would lower coef at entropy == target)
    builtin = AdaptiveEntropy(init_coef=0.1, target=0.5, delta=0.1, coef_max=1.0)
    builtin.update({"entropy": 0.5})
    assert builtin.coef == pytest.approx(0.0)


def test_entropy_regularizer_on_loss_tokens_only_as_trl():
    entropy = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    token_weights = torch.tensor([[0.0, 1.0, 0.5]])
    response_mask = torch.ones(1, 3)
    batch = Batch(input_ids=torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.long),
                  response_mask=response_mask, rewards=torch.zeros(1), group_ids=torch.zeros(1, dtype=torch.long))
    ctx = TokenContext(logprobs=torch.zeros(1, 3), entropy=entropy, old_logprobs=torch.zeros(1, 3), ref_logprobs=None,
                       advantages=torch.zeros(1, 3), mask=token_weights, batch=batch)
    loss, metrics = entropy_regularizer(ctx, tokens="loss")
    # the trainer aggregates regularizers over response_mask: token-mean = -(2 + 3) / 3 (TRL dapo: sum(H m) / N)
    assert float(ops.aggregate(loss.detach(), response_mask, "token-mean")) == pytest.approx(-5 / 3)
    assert float(metrics["entropy"]) == pytest.approx(2.5)  # mean over the 2 loss tokens
    loss.sum().backward()
    assert entropy.grad.tolist() == [[0.0, -1.0, -1.0]]


def test_entropy_regularizer_rejects_unknown_token_set():
    batch = Batch(input_ids=torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.ones(1, 2, dtype=torch.long),
                  response_mask=torch.ones(1, 2), rewards=torch.zeros(1), group_ids=torch.zeros(1, dtype=torch.long))
    ctx = TokenContext(logprobs=torch.zeros(1, 2), entropy=torch.ones(1, 2), old_logprobs=torch.zeros(1, 2),
                       ref_logprobs=None, advantages=torch.zeros(1, 2), mask=torch.ones(1, 2), batch=batch)
    with pytest.raises(ValueError, match="tokens"):
        entropy_regularizer(ctx, tokens="all")
