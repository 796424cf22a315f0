"""SIREN regularizer (arXiv 2509.25133): top-p entropy, per-response peak mask, anchor state, and that the value the
trainer aggregates equals lambda * (H_hat - H_anchor)^2."""

import math

import pytest
import torch

from entropo import models, ops, registry
from entropo.algorithms import siren
from entropo.batch import Batch
from entropo.components import Bound
from entropo.config import load_recipe
from entropo.trainer import Regularizer, accumulate_gradients
from entropo.types import TokenContext


def naive_top_p_entropy(probs: list[float], p: float) -> float:
    """Reference: sort, keep while the running sum (including the token) stays < p, renormalize, entropy."""
    kept, total = [], 0.0
    for q in sorted(probs, reverse=True):
        total += q
        if total >= p:
            break
        kept.append(q)
    mass = sum(kept)
    return -sum(q / mass * math.log(q / mass) for q in kept) if kept else 0.0


def test_registered():
    assert registry.get("regularizer", "siren") is siren.Siren


def test_top_p_entropy_spec_toy():
    # probs [0.5, 0.2, 0.15, 0.1, 0.05], p = 0.8: cumulative [0.5, 0.7, 0.85, 0.95, 1.0] -> keep {0.5, 0.2}
    # -> renormalized [5/7, 2/7] -> H^p = -(5/7 ln 5/7 + 2/7 ln 2/7) = 0.59827 (full entropy 1.33307)
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert siren.top_p_entropy(logits, 0.8)[0].item() == pytest.approx(0.59827, abs=1e-5)
    # p = 0.96 keeps the first four (0.95 < 0.96): renormalized [0.5, 0.2, 0.15, 0.1] / 0.95
    four = [0.5 / 0.95, 0.2 / 0.95, 0.15 / 0.95, 0.1 / 0.95]
    assert siren.top_p_entropy(logits, 0.96)[0].item() == pytest.approx(-sum(q * math.log(q) for q in four), abs=1e-5)
    # top-1 already >= p -> empty nucleus -> 0, with a finite (zero) gradient
    peaked = torch.log(torch.tensor([[0.9, 0.05, 0.05]])).requires_grad_()
    h = siren.top_p_entropy(peaked, 0.8)
    assert h.item() == 0.0
    h.sum().backward()
    assert torch.isfinite(peaked.grad).all() and peaked.grad.abs().sum() == 0


def test_top_p_entropy_matches_reference_and_honours_top_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 12, generator=g) * 2
    probs = torch.softmax(logits, -1)
    got = siren.top_p_entropy(logits, 0.8)
    expected = [naive_top_p_entropy(row.tolist(), 0.8) for row in probs]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # top_k = 2 keeps at most the two most likely tokens of the nucleus
    got_k2 = siren.top_p_entropy(logits, 0.99, top_k=2)
    expected_k2 = [naive_top_p_entropy(sorted(row.tolist(), reverse=True)[:2], 0.99) for row in probs]
    torch.testing.assert_close(got_k2, torch.tensor(expected_k2), rtol=1e-5, atol=1e-6)


def test_peak_mask_spec_toy_per_response():
    # sorted [0, 0.1, 0.5, 0.9, 1.3]; 0.8-quantile at position 0.8 * 4 = 3.2 -> 0.9 + 0.2 * 0.4 = 0.98: only 1.3
    entropy = torch.tensor([[0.1, 0.5, 0.9, 1.3, 0.0, 7.0],
                            [2.0, 1.0, 3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0],  # the 7.0 is padding: never considered
                         [1.0, 1, 1, 0, 0, 0]])
    assert torch.nanquantile(entropy[0, :5], 0.8).item() == pytest.approx(0.98)
    peaks = siren.peak_mask(entropy, mask)
    # row 2: [2, 1, 3] -> quantile at position 1.6 -> 2 + 0.6 * 1 = 2.6 -> only 3.0: the threshold is per response
    assert peaks.tolist() == [[False, False, False, True, False, False], [False, False, True, False, False, False]]
    # H_hat = mean over responses of the peak means = (1.3 + 3.0) / 2
    assert siren.peak_entropy_mean(entropy, mask).item() == pytest.approx(2.15)


def toy_context(topp_entropy, response_mask):
    batch = Batch(input_ids=torch.zeros_like(response_mask, dtype=torch.long),
                  attention_mask=torch.ones_like(response_mask, dtype=torch.long), response_mask=response_mask,
                  rewards=torch.zeros(response_mask.shape[0]), group_ids=torch.zeros(response_mask.shape[0]))
    zeros = torch.zeros_like(response_mask)
    return TokenContext(logprobs=zeros, entropy=zeros, old_logprobs=zeros, ref_logprobs=None, advantages=zeros,
                        mask=response_mask, batch=batch, extras={siren.CURRENT_KEY: topp_entropy})


@pytest.mark.parametrize("mode", ops.AGGREGATION_MODES)
def test_spec_toy_value_under_every_aggregation(mode):
    # response 1, H^p = [0.1, 0.5, 0.2, 0.9, 0.0]: tau = 0.5 + 0.2 * 0.4 = 0.58 -> peak {0.9}, peak mean 0.9;
    # response 2, H^p = [0.1, 0.9] (+ padding): tau = 0.1 + 0.8 * 0.8 = 0.74 -> peak {0.9}, peak mean 0.9.
    # H_hat = (0.9 + 0.9) / 2 = 0.9; anchor 1.2; lambda = 0.005 -> 0.005 * (0.9 - 1.2)^2 = 0.005 * 0.09 = 0.00045
    topp = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0], [0.1, 0.9, 0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1.0, 1, 0, 0, 0]])
    reg = siren.Siren(anchor=1.2, aggregation=mode, norm_length=7)
    per_token, metrics = reg(toy_context(topp, mask))
    assert metrics["peak_entropy"].item() == pytest.approx(0.9)
    value = 0.005 * ops.aggregate(per_token, mask, mode, response_mask=mask, norm_length=7)  # as the trainer does
    assert value.item() == pytest.approx(0.00045, rel=1e-5)
    # gradient: d/dH^p of 0.005 (H_hat - 1.2)^2 = 0.005 * 2 * (-0.3) * (1/2 per response) on the two peak tokens only
    value.backward()
    expected = torch.zeros(2, 5)
    expected[0, 3] = expected[1, 1] = 0.005 * 2 * (0.9 - 1.2) / 2
    torch.testing.assert_close(topp.grad, expected)


def test_sum_norm_needs_norm_length():
    with pytest.raises(ValueError, match="norm_length"):
        siren.Siren(aggregation="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="aggregation"):
        siren.Siren(aggregation="token-sum")


def test_anchor_from_first_old_pass_and_state_round_trip():
    old = torch.tensor([[0.1, 0.5, 0.9, 1.3, 0.0]])  # peak {1.3} -> anchor 1.3
    mask = torch.ones(1, 5)
    batch = Batch(input_ids=torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 5, dtype=torch.long),
                  response_mask=mask, rewards=torch.zeros(1), group_ids=torch.zeros(1))
    batch.extras[siren.OLD_KEY] = old
    reg = siren.Siren()
    with pytest.raises(ValueError, match="anchor"):
        reg(toy_context(old, mask))
    assert reg.prepare(batch) == {}
    assert reg.anchor == pytest.approx(1.3)
    batch.extras[siren.OLD_KEY] = old * 2  # later steps never move the anchor
    reg.prepare(batch)
    assert reg.anchor == pytest.approx(1.3)
    fresh = siren.Siren()
    fresh.load_state_dict(reg.state_dict())
    assert fresh.anchor == pytest.approx(1.3)
    assert set(reg.old_token_fns()) == {siren.OLD_KEY} and set(reg.token_fns()) == {siren.CURRENT_KEY}


def _toy_batch(model, B=6, L=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, model.config.vocab_size, (B, L), generator=g)
    attention = torch.ones(B, L, dtype=torch.long)
    response = torch.zeros(B, L)
    for b in range(B):
        attention[b, : b % 2] = 0
        response[b, 3: 3 + 3 + b] = 1  # response lengths 3..8
    batch = Batch(input_ids=input_ids, attention_mask=attention, response_mask=response,
                  rewards=torch.zeros(B), group_ids=torch.arange(B) // 3)
    with torch.no_grad():
        lp, _ = ops.token_logprobs_and_entropy(model, input_ids, attention, compute_mask=response)
    batch.old_logprobs = lp
    batch.advantages = torch.zeros(B, L)  # zero advantage: the whole loss is the regularizer
    return batch


def full_logits_top_p_entropy(model, batch, p):
    """Reference H^p [B, L] from the model's full logits (the naive [B, L, V] way the chunked hook avoids)."""
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits.float()
    out = torch.zeros_like(batch.response_mask)
    probs = torch.softmax(logits, -1)
    for b, t in batch.response_mask.nonzero().tolist():
        out[b, t] = naive_top_p_entropy(probs[b, t - 1].tolist(), p)
    return out


@pytest.fixture(scope="module")
def tiny_model():
    return models.tiny(seed=0)[0]


@pytest.mark.parametrize("mode", ops.AGGREGATION_MODES)
def test_trainer_aggregated_value_equals_formula(mode, tiny_recipe_overrides, tiny_model):
    model = tiny_model
    model.zero_grad()
    batch = _toy_batch(model)
    recipe = load_recipe(None, tiny_recipe_overrides + [f"aggregation.mode={mode}", "aggregation.norm_length=9"])
    recipe.train.micro_batch_size = batch.size  # one micro-batch = the mini-batch: the exact formula
    lam, anchor = 0.5, 1.0
    reg = Bound("regularizer", "siren", {"aggregation": mode, "norm_length": 9, "anchor": anchor})
    metrics = accumulate_gradients(model, batch, recipe, Bound("objective", "ppo_clip"), [Regularizer(reg, lam)])
    h_hat = siren.peak_entropy_mean(full_logits_top_p_entropy(model, batch, 0.8), batch.response_mask)
    assert metrics["actor/pg_loss"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["actor/loss"] == pytest.approx(lam * (h_hat.item() - anchor) ** 2, rel=1e-4)
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0

    # Two micro-batches of three responses: like the official code's gradient accumulation, the value is the
    # sequence-share weighted mean of the per-micro-batch squared deviations.
    if mode == "seq-mean-token-mean":
        model.zero_grad()
        recipe.train.micro_batch_size = 3
        metrics = accumulate_gradients(model, batch, recipe, Bound("objective", "ppo_clip"), [Regularizer(reg, lam)])
        halves = [batch.select(list(range(3))), batch.select(list(range(3, 6)))]
        expected = sum(lam * (siren.peak_entropy_mean(full_logits_top_p_entropy(model, h, 0.8), h.response_mask).item()
                              - anchor) ** 2 for h in halves) / 2
        assert metrics["actor/loss"] == pytest.approx(expected, rel=1e-4)
