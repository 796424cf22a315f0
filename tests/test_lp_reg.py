"""Lp-Reg objective (arXiv 2510.03222): min-p proxy, whole-batch selection, KL-to-proxy on selected tokens."""

import math

import pytest
import torch

from entropo import registry
from entropo.algorithms import lp_reg
from entropo.algorithms.objectives import clipped_surrogate
from entropo.batch import Batch
from entropo.components import Bound


def test_registered_with_hooks():
    assert registry.get("objective", "lp_reg") is lp_reg.lp_reg
    meta = registry.meta("objective", "lp_reg")
    assert meta["prepare"] is lp_reg.select_tokens and meta["old_token_fns"] is lp_reg.proxy_token_fns
    bound = Bound("objective", "lp_reg", {"min_p": 0.1, "neg_fraction": 0.5, "clip_high": 0.3})
    assert set(bound.token_fns("old_token_fns")) == {lp_reg.PROXY_KEY}
    assert bound.token_fns() == {}


def test_proxy_spec_toy():
    # pi_old = [0.6, 0.3, 0.09, 0.01], min_p = 0.02 -> threshold 0.02 * 0.6 = 0.012 -> token 3 filtered;
    # kept mass 0.99 -> pi_proxy = [0.60606, 0.30303, 0.09091, 0]
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.09, 0.01]])).expand(4, 4)
    got = lp_reg.proxy_logprob(logits, torch.arange(4), min_p=0.02)
    torch.testing.assert_close(got[:3].exp(), torch.tensor([0.60606, 0.30303, 0.09091]), atol=1e-5, rtol=0)
    assert got[3].item() == lp_reg.FILTERED_LOGPROB
    # "fixed": keep pi_old >= 0.1 -> {0.6, 0.3} -> [2/3, 1/3, filtered, filtered]
    fixed = lp_reg.proxy_logprob(logits, torch.arange(4), min_p=0.1, proxy="fixed")
    torch.testing.assert_close(fixed[:2].exp(), torch.tensor([2 / 3, 1 / 3]))
    assert (fixed[2:] == lp_reg.FILTERED_LOGPROB).all()


def objective(logprobs, old, adv, proxy, selected, **kw):
    extras = {lp_reg.PROXY_KEY: proxy, lp_reg.SELECTED_KEY: selected}
    return lp_reg.lp_reg(logprobs, old, adv, torch.ones_like(logprobs), extras=extras, **kw)


def test_kl_term_spec_toy_and_gradient():
    # sampled token 2: current p = 0.09, proxy 0.09091; x = log(0.09091 / 0.09) = log(1 / 0.99) = 0.01005
    # k3 = e^x - x - 1 = 1/0.99 - 0.0100503 - 1 = 5.07e-5; loss = -rho A + k3 with rho = 1, A = -1
    p_proxy = 0.09 / 0.99
    logprobs = torch.tensor([[math.log(0.09)]], requires_grad=True)
    loss, metrics = objective(logprobs, logprobs.detach(), torch.tensor([[-1.0]]),
                              torch.tensor([[math.log(p_proxy)]]), torch.ones(1, 1))
    x = math.log(p_proxy / 0.09)
    assert x == pytest.approx(0.01005, abs=1e-5)
    assert loss.item() - 1.0 == pytest.approx(5.07e-5, rel=2e-3)
    assert metrics["reg_frac"].item() == 1.0 and metrics["proxy_kl"].item() == pytest.approx(5.07e-5, rel=2e-3)
    loss.sum().backward()
    # d/dl [-rho A] = -A rho = 1; d/dl k3 = 1 - e^x = -0.0101: the KL part pushes l up (toward the proxy)
    assert logprobs.grad.item() == pytest.approx(1.0 + 1.0 - math.exp(x), rel=1e-5)


def test_filtered_or_already_high_tokens_get_the_clipped_loss():
    logprobs = torch.tensor([[math.log(0.01), math.log(0.2), math.log(0.3)]])
    old = logprobs - torch.tensor([[0.0, 0.5, 0.0]])  # token 1 off-policy so its clipping is visible
    adv = -torch.ones(1, 3)
    proxy = torch.tensor([[lp_reg.FILTERED_LOGPROB, math.log(0.5), math.log(0.25)]])  # token 2: l > log proxy
    selected = torch.ones(1, 3)
    loss, metrics = objective(logprobs, old, adv, proxy, selected)
    ratio = torch.exp(logprobs - old)
    clipped = clipped_surrogate(ratio, adv, 0.2, 0.28)
    assert loss[0, 0].item() == pytest.approx(clipped[0, 0].item())  # filtered by min-p: never regularized
    assert loss[0, 2].item() == pytest.approx(clipped[0, 2].item())  # already above the proxy: not regularized
    # token 1 is regularized: unclipped -rho A (rho = e^0.5) plus k3 toward log 0.5
    x = math.log(0.5) - math.log(0.2)
    assert loss[0, 1].item() == pytest.approx(math.exp(0.5) + math.exp(x) - x - 1, rel=1e-5)
    assert metrics["reg_frac"].item() == pytest.approx(1 / 3)


def make_batch(old_logprobs, advantages, token_weights=None):
    B, L = old_logprobs.shape
    b = Batch(input_ids=torch.zeros(B, L, dtype=torch.long), attention_mask=torch.ones(B, L, dtype=torch.long),
              response_mask=torch.ones(B, L), rewards=torch.zeros(B), group_ids=torch.arange(B))
    b.old_logprobs, b.advantages = old_logprobs, advantages
    if token_weights is not None:
        b.token_weights = token_weights
    return b


def test_selection_rule_k_and_whole_batch():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(10, 30, generator=g) * 5
    adv = torch.ones(10, 30)
    adv[:5] = -1.0  # 150 negative tokens
    # k = max(1, floor(0.01 * 150)) = 1 -> the code's "k > 1" rule selects nothing
    assert lp_reg.select_tokens(make_batch(old, adv), neg_fraction=0.01)[lp_reg.SELECTED_KEY].sum() == 0
    # k = floor(0.02 * 150) = 3: the three lowest old log-probs among negative tokens, wherever they are
    sel = lp_reg.select_tokens(make_batch(old, adv), neg_fraction=0.02)[lp_reg.SELECTED_KEY] > 0
    assert sel.sum() == 3 and (adv[sel] < 0).all()
    assert torch.equal(torch.sort(old[sel]).values, torch.sort(old[:5].flatten()).values[:3])
    # positive selection with pos_fraction, de-weighted tokens excluded
    weights = torch.ones(10, 30)
    weights[5:, :] = 0
    weights[5, 0] = 1
    sel = lp_reg.select_tokens(make_batch(old, adv, weights), neg_fraction=0.0,
                               pos_fraction=1.0)[lp_reg.SELECTED_KEY] > 0
    assert sel.sum() == 0  # one positive candidate -> k = 1 -> none
    # zero advantage: never selected
    assert lp_reg.select_tokens(make_batch(old, torch.zeros(10, 30)), neg_fraction=1.0)[lp_reg.SELECTED_KEY].sum() == 0


def test_selection_independent_of_micro_batch_split():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(8, 12, generator=g) * 6
    adv = torch.randn(8, 1, generator=g).expand(8, 12).contiguous()
    batch = make_batch(old, adv)
    batch.extras.update(lp_reg.select_tokens(batch, neg_fraction=0.1))
    batch.extras[lp_reg.PROXY_KEY] = old + 0.3  # every token below its proxy (kept by the filter)
    logprobs = old + 0.05 * torch.randn(8, 12, generator=g)

    def loss_of(mb, lp):
        loss, _ = lp_reg.lp_reg(lp, mb.old_logprobs, mb.advantages, mb.token_weights, extras=mb.extras)
        return loss

    full = loss_of(batch, logprobs)
    for size in (1, 3, 8):
        parts = [loss_of(mb, logprobs[i * size:(i + 1) * size]) for i, mb in enumerate(batch.split(size))]
        torch.testing.assert_close(torch.cat(parts), full)
    assert (batch.extras[lp_reg.SELECTED_KEY] > 0).sum() == int((adv < 0).sum() * 0.1)


def test_zero_advantage_zero_gradient_on_policy():
    logprobs = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).requires_grad_()
    loss, _ = objective(logprobs, logprobs.detach(), torch.zeros(1, 3), logprobs.detach() + 0.5, torch.zeros(1, 3))
    loss.sum().backward()
    assert logprobs.grad.abs().sum() == 0


def test_missing_extras_is_a_clear_error():
    with pytest.raises(ValueError, match="extras"):
        lp_reg.lp_reg(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), extras={})


def test_proxy_hook_in_chunked_scoring_pass():
    from entropo import models
    from entropo.models.logprobs import token_logprobs_and_entropy

    model, _ = models.tiny(seed=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (2, 7), generator=g)
    attn = torch.ones_like(ids)
    fns = lp_reg.proxy_token_fns(min_p=0.05)
    with torch.no_grad():
        _, _, extras = token_logprobs_and_entropy(model, ids, attn, chunk_size=4, token_fns=fns)
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
    expected = lp_reg.proxy_logprob(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), 0.05)
    torch.testing.assert_close(extras[lp_reg.PROXY_KEY][:, 1:].reshape(-1), expected)
