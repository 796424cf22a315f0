"""CAPO (arXiv 2510.00819): closed-form curvature terms vs the dense formulas, spec section 12 toy (f), the whole-batch
mask on a batch and on the tiny model (independent of the micro-batch split)."""

from types import SimpleNamespace

import pytest
import torch

from entropo import models
from entropo.algorithms.capo import (
    V_FISHER_V_KEY,
    V_SQ_KEY,
    apply_capo_mask,
    curvature_keep_mask,
    lm_head_input_sq_norms,
    predicted_shifts,
    score_direction_stats,
)
from entropo.batch import Batch
from entropo.components import Bound, merged_token_fns
from entropo.trainer import score_tokens


def test_score_direction_stats_spec_toy():
    # pi = [0.5, 0.5], a = 0: v = [0.5, -0.5], |v|^2 = 0.5; F v = [0.25, -0.25] (pi^T v = 0), v^T F v = 0.25
    v_sq, v_f_v = score_direction_stats(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    assert torch.allclose(v_sq, torch.tensor([0.5])) and torch.allclose(v_f_v, torch.tensor([0.25]))


def test_score_direction_stats_matches_dense():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g)
    target = torch.randint(0, 7, (6,), generator=g)
    v_sq, v_f_v = score_direction_stats(logits, target)
    pi = logits.softmax(-1).double()
    for n in range(6):
        v = torch.nn.functional.one_hot(target[n], 7).double() - pi[n]
        fisher = torch.diag(pi[n]) - torch.outer(pi[n], pi[n])
        assert v_sq[n].item() == pytest.approx(float(v @ v), abs=1e-6)
        assert v_f_v[n].item() == pytest.approx(float(v @ fisher @ v), abs=1e-6)


def test_predicted_shifts_spec_toy():
    # V = 2, D = 1, h = 1, pi = [.5, .5], a = 0, A = 1, SGD model, eta = 0.01:
    # <g, U> = |g|^2 = 0.5 -> dJ = 0.01 * 0.5 + 0.5e-4 * A (v^T u)^2 - u^T F u) = 0.005 + 0.5e-4 (0.25 - 0.25) = 0.005
    # dKL = 0.5 * 1e-4 * 0.5^2 = 1.25e-5 -> kept (tau_H = 0.01, tau_F = 1e-4)
    one = torch.ones(1)
    delta_j, delta_kl = predicted_shifts(one, one, 0.5 * one, 0.25 * one, lr=0.01)
    assert delta_j.item() == pytest.approx(0.005) and delta_kl.item() == pytest.approx(1.25e-5)
    hess_ok, fisher_ok = curvature_keep_mask(delta_j, delta_kl, 0.01, 1e-4)
    assert bool(hess_ok & fisher_ok)
    # eta = 0.1: dKL = 0.5 * 0.01 * 0.25 = 1.25e-3 > 1e-4 -> masked
    delta_j, delta_kl = predicted_shifts(one, one, 0.5 * one, 0.25 * one, lr=0.1)
    assert delta_kl.item() == pytest.approx(1.25e-3)
    _, fisher_ok = curvature_keep_mask(delta_j, delta_kl, 0.01, 1e-4)
    assert not bool(fisher_ok)


def test_predicted_shifts_match_dense_last_layer_model():
    # Build g = A v h^T (V x D), U = g, u = U h, F = diag(pi) - pi pi^T and evaluate the spec formulas directly.
    g = torch.Generator().manual_seed(1)
    V, D, lr = 5, 3, 0.3
    for advantage in (1.3, -0.7):
        logits, h = torch.randn(V, generator=g).double(), torch.randn(D, generator=g).double()
        pi = logits.softmax(-1)
        v = torch.nn.functional.one_hot(torch.tensor(2), V).double() - pi
        grad = advantage * torch.outer(v, h)
        u = grad @ h
        fisher = torch.diag(pi) - torch.outer(pi, pi)
        dense_j = lr * (grad * grad).sum() + 0.5 * lr ** 2 * advantage * ((v @ u) ** 2 - u @ fisher @ u)
        dense_kl = 0.5 * lr ** 2 * (v @ u) ** 2
        v_sq, v_f_v = score_direction_stats(logits[None].float(), torch.tensor([2]))
        delta_j, delta_kl = predicted_shifts(torch.tensor([advantage]).double(), (h @ h)[None], v_sq.double(),
                                             v_f_v.double(), lr)
        assert delta_j.item() == pytest.approx(float(dense_j), rel=1e-5)
        assert delta_kl.item() == pytest.approx(float(dense_kl), rel=1e-5)


def test_keep_mask_symmetric_one_sided_and_disabled():
    delta_j = torch.tensor([-0.5, -0.001, 0.001, 0.5])
    delta_kl = torch.tensor([0.0, 0.0, 1.0, 0.0])
    hess, fisher = curvature_keep_mask(delta_j, delta_kl, 0.01, 0.1, symmetric=True)
    assert hess.tolist() == [False, True, True, False] and fisher.tolist() == [True, True, False, True]
    hess, _ = curvature_keep_mask(delta_j, delta_kl, 0.01, 0.1, symmetric=False)
    assert hess.tolist() == [False, False, True, False]
    hess, fisher = curvature_keep_mask(delta_j, delta_kl, 0.0, 0.0)
    assert hess.all() and fisher.all()


def _toy_batch(advantages):
    b = Batch(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3, dtype=torch.long),
              response_mask=torch.tensor([[0.0, 1, 1], [0, 1, 0]]), rewards=torch.zeros(2),
              group_ids=torch.zeros(2, dtype=torch.long))
    b.advantages = advantages * b.response_mask
    b.extras[V_SQ_KEY] = torch.tensor([[0.0, 0.5, 1.5], [0.0, 0.5, 0.0]])
    b.extras[V_FISHER_V_KEY] = torch.tensor([[0.0, 0.25, 0.3], [0.0, 0.25, 0.0]])
    return b


def test_apply_mask_rejects_large_shift_tokens_and_reports_fraction():
    batch = _toy_batch(torch.ones(2, 3))
    h_sq = batch.response_mask.clone()
    # token (0,1) and (1,1): the toy, dKL = 1.25e-5 at eta 0.01 -> kept; token (0,2): |v|^2 = 1.5, v^T u = 1.5,
    # dKL = 0.5e-4 * 2.25 = 1.125e-4 > 1e-4 -> rejected. 1 of 3 loss tokens.
    metrics = apply_capo_mask(batch, h_sq, lr=0.01, tau_hessian=0.01, tau_fisher=1e-4)
    assert batch.token_weights.tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    assert metrics["capo_rejected_frac"] == pytest.approx(1 / 3)
    assert metrics["capo_rejected_fisher_frac"] == pytest.approx(1 / 3)
    assert metrics["capo_rejected_pos_adv_frac"] == 1.0  # the one masked token has A = 1 > 0


def test_zero_advantage_rejects_nothing():
    batch = _toy_batch(torch.zeros(2, 3))
    metrics = apply_capo_mask(batch, batch.response_mask * 100.0, lr=1.0, tau_hessian=1e-6, tau_fisher=1e-6)
    assert torch.equal(batch.token_weights, batch.response_mask) and metrics["capo_rejected_frac"] == 0.0


@pytest.fixture(scope="module")
def tiny_model():
    model = models.tiny(seed=0)[0]
    model.eval()
    return model


def _tiny_batch(model):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, model.config.vocab_size, (6, 7), generator=g)
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # left padding
    attention[3, -1] = 0  # right padding
    response = torch.zeros(6, 7)
    response[:, 4:] = 1.0
    response = response * attention
    return Batch(input_ids=ids, attention_mask=attention, response_mask=response, rewards=torch.zeros(6),
                 group_ids=torch.arange(6) // 3)


def test_hidden_norms_match_model_hidden_states(tiny_model):
    batch = _tiny_batch(tiny_model)
    h_sq = lm_head_input_sq_norms(tiny_model, batch, micro_batch_size=4, temperature=2.0)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                            output_hidden_states=True).hidden_states[-1]
    for b, t in batch.response_mask.nonzero().tolist():
        assert h_sq[b, t].item() == pytest.approx(hidden[b, t - 1].pow(2).sum().item() / 4.0, rel=1e-4)
    assert (h_sq[batch.response_mask == 0] == 0).all()


def test_shaping_on_tiny_model_is_independent_of_micro_batch(tiny_model):
    results = []
    for micro in (2, 6):
        batch = _tiny_batch(tiny_model)
        shaper = Bound("shaping", "capo_mask", {"tau_hessian": 0.05, "tau_fisher": 5e-4})
        old_fns = merged_token_fns([shaper], "old_token_fns")
        batch.old_logprobs, batch.old_entropy, extras = score_tokens(tiny_model, batch, temperature=1.0,
                                                                     micro_batch_size=micro, chunk_size=5,
                                                                     token_fns=old_fns)
        batch.extras.update(extras)
        batch.advantages = torch.tensor([1.0, -1.0, 0.5, 2.0, -2.0, 0.0])[:, None] * batch.response_mask
        recipe = SimpleNamespace(optimizer=SimpleNamespace(lr=1e-3), rollout=SimpleNamespace(temperature=1.0),
                                 train=SimpleNamespace(micro_batch_size=micro))
        metrics = shaper(batch, step_ctx=SimpleNamespace(model=tiny_model, recipe=recipe))
        assert set(metrics) >= {"capo_rejected_frac", "capo_delta_kl_mean"}
        assert (batch.token_weights[5] == batch.response_mask[5]).all()  # A = 0 row untouched
        results.append((batch.token_weights.clone(), metrics["capo_rejected_frac"]))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert 0.0 < results[0][1] < 1.0  # thresholds chosen so that the toy rejects some, not all
