"""STEER (arXiv 2510.10150): Omega, the exp / linear weight mappings (spec section 2 toy (f)), whole-batch weights."""

import math

import pytest
import torch

from entropo.algorithms.objectives import dual_clip
from entropo.algorithms.steer import (
    SQUARED_TERM_KEY,
    WEIGHT_KEY,
    Steer,
    exp_weights,
    linear_weights,
    omega_code,
    omega_exact,
    sum_p2_logp_plus_h,
)
from entropo.batch import Batch
from entropo.components import Bound

P = torch.tensor([[0.9, 0.5, 0.1]])
H_OLD = torch.tensor([[0.4, 1.0, 2.0]])
A = torch.ones(1, 3)


def toy_batch() -> Batch:
    b = Batch(input_ids=torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.long),
              response_mask=torch.ones(1, 3), rewards=torch.ones(1), group_ids=torch.zeros(1, dtype=torch.long))
    b.old_logprobs, b.old_entropy, b.advantages = P.log(), H_OLD.clone(), A.clone()
    return b


def test_omega_spec_toy():
    # p (1 - p)(log p + H): 0.9 * 0.1 * (ln .9 + .4) = 0.09 * 0.29464 = 0.02652; 0.25 * (ln .5 + 1) = 0.07671;
    # 0.09 * (ln .1 + 2) = 0.09 * -0.30259 = -0.02723. Divided by p_old: |Omega| = [0.02946, 0.15343, 0.27233]
    omega = omega_code(A, P.log(), P.log(), H_OLD)
    assert torch.allclose(omega, torch.tensor([[0.029465, 0.153426, 0.272329]]), atol=1e-5)


def test_exp_mapping_spec_toy():
    # k = -ln 0.8 / max(0.27233, 0.02) = 0.223144 / 0.27233 = 0.81940; lambda = exp(-k |Omega|) clipped to [0.8, 1]
    lam = Steer(mapping="exp").prepare(toy_batch())[WEIGHT_KEY]
    assert torch.allclose(lam, torch.tensor([[0.97615, 0.88186, 0.80000]]), atol=1e-5)


def test_linear_mapping_spec_toy():
    # lambda = 1.2 - (|Omega| - 0.02946) * 0.4 / (0.27233 - 0.02946): [1.2, 1.2 - 0.12395 * 1.64698 = 0.99583, 0.8]
    lam = Steer(mapping="linear").prepare(toy_batch())[WEIGHT_KEY]
    assert torch.allclose(lam, torch.tensor([[1.2, 0.99583, 0.8]]), atol=1e-5)


def test_mapping_edge_cases():
    valid = torch.ones(1, 3, dtype=torch.bool)
    # all |Omega| equal -> linear gives the midpoint; masked tokens get weight 0
    flat = torch.full((1, 3), 0.1)
    assert torch.allclose(linear_weights(flat, valid, 0.8, 1.2), torch.full((1, 3), 1.0))
    part = torch.tensor([[True, True, False]])
    assert linear_weights(torch.tensor([[0.1, 0.3, 9.0]]), part, 0.8, 1.2)[0].tolist() == pytest.approx([1.2, 0.8, 0])
    # tiny |Omega| everywhere: k uses the 0.02 floor, so weights stay near 1 (exp(-ln(1.25)/0.02 * 0.001) = 0.98890)
    lam = exp_weights(torch.full((1, 3), 1e-3), valid, 0.8)
    assert torch.allclose(lam, torch.full((1, 3), math.exp(-math.log(1.25) / 0.02 * 1e-3)))
    # zero advantage -> Omega = 0 -> weight 1 (exp) and the loss is 0 anyway
    assert torch.allclose(omega_code(torch.zeros(1, 3), P.log(), P.log(), H_OLD), torch.zeros(1, 3))
    # non-finite Omega -> 0
    assert omega_code(torch.tensor([[float("inf")]]), P.log()[:, :1], P.log()[:, :1], H_OLD[:, :1]).item() == 0.0
    with pytest.raises(ValueError):
        Steer(mapping="cubic")


def test_loss_is_dual_clip_times_detached_weights():
    b = toy_batch()
    obj = Steer(mapping="exp")
    extras = obj.prepare(b)
    logprobs = (b.old_logprobs + torch.tensor([[0.5, -0.1, 0.0]])).requires_grad_(True)
    loss, metrics = obj(logprobs, b.old_logprobs, b.advantages, b.token_weights, extras=extras)
    base, _ = dual_clip(logprobs, b.old_logprobs, b.advantages, b.token_weights, clip_low=0.2, clip_high=0.28,
                        clip_c=10.0)
    assert torch.allclose(loss, base * extras[WEIGHT_KEY])
    loss.sum().backward()
    # token 0 clipped (rho = e^0.5 > 1.28, A > 0): zero gradient; token 1: -A rho lambda = -e^-0.1 * 0.88186
    assert logprobs.grad[0, 0] == 0.0
    assert logprobs.grad[0, 1].item() == pytest.approx(-math.exp(-0.1) * 0.88186, abs=1e-5)
    assert float(metrics["steer_weight_min"]) == pytest.approx(0.8) and "clip_frac_dual" in metrics


def test_weights_are_whole_batch_and_split_independent():
    g = torch.Generator().manual_seed(0)
    rows, length = 6, 4
    mask = (torch.rand(rows, length, generator=g) > 0.25).float()
    b = Batch(input_ids=torch.zeros(rows, length, dtype=torch.long),
              attention_mask=torch.ones(rows, length, dtype=torch.long), response_mask=mask, rewards=torch.zeros(rows),
              group_ids=torch.arange(rows) // 3)
    b.old_logprobs = -torch.rand(rows, length, generator=g) * 3
    b.old_entropy = torch.rand(rows, length, generator=g) * 2
    b.advantages = torch.randn(rows, 1, generator=g).expand(rows, length) * mask
    obj = Bound("objective", "steer", {"mapping": "linear"})
    b.extras.update(obj.prepare(b, torch.Generator()))
    weights = b.extras[WEIGHT_KEY]
    # the batch-wide min/max map exactly to lambda_max / lambda_min; masked tokens have weight 0
    assert weights[mask > 0].max() == pytest.approx(1.2) and weights[mask > 0].min() == pytest.approx(0.8)
    assert torch.all(weights[mask == 0] == 0)
    full, _ = obj(b.old_logprobs, b.old_logprobs, b.advantages, b.token_weights, extras=b.extras)
    parts = [obj(m.old_logprobs, m.old_logprobs, m.advantages, m.token_weights, extras=m.extras)[0]
             for m in b.split(2)]
    assert torch.equal(torch.cat(parts), full)


def test_exact_omega_matches_softmax_first_order_entropy_change():
    # logits [2, 1, 0], sampled token 0, A = 1, eta = 0.01: logits move by eta A (e_0 - pi);
    # spec (g): exact first-order change -1.42e-3 (the code's p(1-p)(log p + H) gives -0.95e-3)
    logits = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    pi = torch.softmax(logits, -1)
    entropy = -(pi * pi.log()).sum(-1)
    s = sum_p2_logp_plus_h(logits, torch.zeros(1, dtype=torch.long)).double()
    omega = omega_exact(torch.ones(1), pi[:, 0].log(), entropy, s)
    eta = 0.01
    step = logits + eta * (torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64) - pi)
    p2 = torch.softmax(step, -1)
    exact = float(-(p2 * p2.log()).sum() - entropy)
    assert exact == pytest.approx(-1.42e-3, abs=1e-5)
    assert -eta * float(omega) == pytest.approx(exact, rel=2e-2)  # |Omega| is the magnitude; the change is negative
    approx = float(pi[0, 0] * (1 - pi[0, 0]) * (pi[0, 0].log() + entropy))
    assert eta * approx == pytest.approx(0.95e-3, abs=1e-5)


def test_exact_omega_uses_old_token_fn_output():
    b = toy_batch()
    obj = Steer(omega="exact")
    assert SQUARED_TERM_KEY in obj.old_token_fns() and not Steer().old_token_fns()
    with pytest.raises(ValueError, match="old_token_fns"):
        obj.prepare(b)
    b.extras[SQUARED_TERM_KEY] = torch.tensor([[0.05, -0.02, 0.1]])
    lam = obj.prepare(b)[WEIGHT_KEY]
    # |Omega| = |p (log p + H) - s| = [|0.9*0.29464 - 0.05|, |0.5*0.30685 + 0.02|, |0.1*-0.30259 - 0.1|]
    #         = [0.21518, 0.17343, 0.13026]; k = ln 1.25 / 0.21518 -> token 0 gets 0.8
    omega = torch.tensor([0.215178, 0.173426, 0.130259])
    expected = torch.exp(-math.log(1.25) / 0.215178 * omega).clamp(0.8, 1.0)
    assert torch.allclose(lam[0], expected, atol=1e-5)
