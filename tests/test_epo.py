"""EPO regularizer (arXiv 2509.22576): phase weight, band penalty (indicator and differentiable), per-turn history
state."""

import math

import pytest
import torch

from entropo import ops, registry
from entropo.algorithms import epo
from entropo.batch import Batch
from entropo.types import TokenContext


def test_registered():
    assert registry.get("regularizer", "epo") is epo.EPO


def test_phase_weight_spec_toy():
    # M = 150, h = 75. e <= 75: 1 - 0.2 (1 - exp(-2 e / 75)); e > 75: 0.8 exp(-3 (e - 75) / 75)
    # w(37) = 1 - 0.2 (1 - e^-0.98667) = 0.87456; w(75) = 1 - 0.2 (1 - e^-2) = 0.82707
    # w(76) = 0.8 e^-0.04 = 0.76863; w(112) = 0.8 e^-1.48 = 0.18211; w(150) = 0.8 e^-3 = 0.03983
    expected = {0: 1.0, 37: 0.87456, 75: 0.82707, 76: 0.76863, 112: 0.18211, 150: 0.03983}
    for e, w in expected.items():
        assert epo.phase_weight(e, 150) == pytest.approx(w, abs=1e-5)
    assert epo.phase_weight(400, 150) == pytest.approx(0.8 * math.exp(-3))  # clamped past M
    assert epo.phase_weight(10, 0) == 1.0


def test_indicator_penalty_spec_toy():
    # H_bar = 1.0, band (0 * 1, 2 * 1) = (0, 2), beta_out = 0.05: H = [0.3, 1.0, 2.5] -> P = [0, 0, 0.05]
    entropy = torch.tensor([[0.3, 1.0, 2.5]], requires_grad=True)
    reference = torch.ones(1, 3)
    p = epo.band_penalty(entropy, reference, 0.0, 2.0, 0.05, "indicator")
    torch.testing.assert_close(p, torch.tensor([[0.0, 0.0, 0.05]]))
    assert not p.requires_grad  # the released code's penalty carries no gradient
    # band_distance: 0.05 * (2.5 - 2) = 0.025 above the band; 0 inside
    d = epo.band_penalty(entropy, reference, 0.0, 2.0, 0.05, "band_distance")
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, 0.025]]))


def test_band_distance_gradient_pulls_entropy_back_into_the_band():
    # band (0.5, 2.0) around H_bar = 1: below -> gradient descent raises H, above -> lowers it, inside -> nothing
    entropy = torch.tensor([[0.2, 1.0, 3.0]], requires_grad=True)
    epo.band_penalty(entropy, torch.ones(1, 3), 0.5, 2.0, 0.1, "band_distance").sum().backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.1, 0.0, 0.1]]))
    # so one descent step moves both outliers toward the band
    stepped = entropy.detach() - 1.0 * entropy.grad
    assert stepped[0, 0] > 0.2 and stepped[0, 2] < 3.0 and stepped[0, 1] == 1.0


def make_batch(old_entropy, turn_ids=None, response_mask=None):
    B, L = old_entropy.shape
    mask = torch.ones(B, L) if response_mask is None else response_mask
    b = Batch(input_ids=torch.zeros(B, L, dtype=torch.long), attention_mask=torch.ones(B, L, dtype=torch.long),
              response_mask=mask, rewards=torch.zeros(B), group_ids=torch.arange(B), turn_ids=turn_ids)
    b.old_entropy = old_entropy
    return b


def context(batch, entropy, extras):
    zeros = torch.zeros_like(entropy)
    return TokenContext(logprobs=zeros, entropy=entropy, old_logprobs=zeros, ref_logprobs=None, advantages=zeros,
                        mask=batch.response_mask, batch=batch, extras=extras)


def test_history_per_turn_and_reference():
    reg = epo.EPO()
    turns = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1.0, 1, 1, 0]])  # the last token is padding: ignored
    step1 = make_batch(torch.tensor([[1.0, 3.0, 0.5, 0.5], [2.0, 2.0, 2.0, 9.0]]), turns, mask)
    out = reg.prepare(step1)
    # turn 0 mean = (1 + 3 + 2 + 2) / 4 = 2; turn 1 mean = (0.5 + 0.5 + 2) / 3 = 1
    torch.testing.assert_close(out[epo.REFERENCE_KEY], torch.tensor([[2.0, 2.0, 1.0, 1.0], [2.0, 2.0, 1.0, 0.0]]))
    reg.update({})
    step2 = make_batch(torch.full((1, 4), 4.0), torch.tensor([[0, 0, 0, 0]]))  # turn 1 absent this step
    out = reg.prepare(step2)
    # turn 0: mean over the two steps of the step means = (2 + 4) / 2 = 3; turn 1 keeps its one-step average 1
    torch.testing.assert_close(out[epo.REFERENCE_KEY], torch.full((1, 4), 3.0))
    assert reg.history_mean().tolist() == [3.0, 1.0] and reg.steps == 1


def test_single_turn_loss_value_and_phase_weight_from_state():
    reg = epo.EPO(beta_out=0.05, mode="indicator", smooth_coef=1.0, phase_steps=150)
    batch = make_batch(torch.ones(1, 3))  # turn_ids None -> one turn; H_bar = 1 after the first prepare
    extras = reg.prepare(batch)
    entropy = torch.tensor([[0.3, 1.0, 2.5]], requires_grad=True)
    loss, metrics = reg(context(batch, entropy, extras))
    # step 0: w = 1 -> loss = -H + P = [-0.3, -1.0, -2.5 + 0.05]
    torch.testing.assert_close(loss, torch.tensor([[-0.3, -1.0, -2.45]]))
    assert metrics["outside_frac"].item() == pytest.approx(1 / 3)
    for _ in range(37):
        reg.update({})
    loss, metrics = reg(context(batch, entropy, extras))
    assert metrics["phase_weight"].item() == pytest.approx(0.87456, abs=1e-5)
    assert loss[0, 2].item() == pytest.approx(-2.5 + 0.87456 * 0.05, abs=1e-5)
    # gradient: the indicator penalty contributes nothing; only the bonus -H
    loss.sum().backward()
    torch.testing.assert_close(entropy.grad, -torch.ones(1, 3))


def test_aggregated_with_trainer_semantics_matches_code_formula():
    # code: pg - c_H (agg(H) - c_s agg(w P)); our per-token -H + c_s w P aggregated and times c_H is the same
    reg = epo.EPO(beta_out=0.1, mode="band_distance", smooth_coef=2.0, phase_weighting=False, kappa_low=0.5)
    batch = make_batch(torch.ones(2, 3), response_mask=torch.tensor([[1.0, 1, 1], [1.0, 1, 0]]))
    extras = reg.prepare(batch)
    entropy = torch.tensor([[0.2, 1.0, 3.0], [1.5, 2.5, 7.0]])
    loss, _ = reg(context(batch, entropy, extras))
    m = batch.response_mask
    agg = ops.aggregate(loss, m, "token-mean")
    penalty = 0.1 * torch.tensor([[0.3, 0.0, 1.0], [0.0, 0.5, 0.0]])
    expected = -ops.aggregate(entropy, m, "token-mean") + 2.0 * ops.aggregate(penalty, m, "token-mean")
    assert agg.item() == pytest.approx(expected.item())


def test_turn_gate():
    reg = epo.EPO(beta_out=1.0, phase_weighting=False, apply_from_turn=1)
    batch = make_batch(torch.ones(1, 4), torch.tensor([[0, 0, 1, 1]]))
    extras = reg.prepare(batch)
    loss, _ = reg(context(batch, torch.full((1, 4), 5.0), extras))  # all far above the band (0, 2)
    torch.testing.assert_close(loss, torch.tensor([[-5.0, -5.0, -5.0 + 3.0, -5.0 + 3.0]]))


def test_state_round_trip_and_determinism():
    g = torch.Generator().manual_seed(0)
    batches = [make_batch(torch.rand(3, 5, generator=g) * 2, torch.randint(0, 3, (3, 5), generator=g))
               for _ in range(4)]
    a, b = epo.EPO(), epo.EPO()
    for batch in batches[:2]:
        a.prepare(batch)
        a.update({})
    b.load_state_dict(a.state_dict())
    outs = []
    for reg in (a, b):
        for batch in batches[2:]:
            last = reg.prepare(batch)
            reg.update({})
        outs.append(last[epo.REFERENCE_KEY])
    torch.testing.assert_close(outs[0], outs[1])
    assert a.state_dict() == b.state_dict() and a.steps == 4


def test_bad_mode_rejected():
    with pytest.raises(ValueError, match="mode"):
        epo.EPO(mode="soft")
