"""token_logprobs_and_entropy: equal to the naive full-vocabulary computation (values and gradients), honours
padding/compute_mask/temperature, and uses far less memory on a 49k-vocabulary model."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from entropo.models import tiny, token_logprobs_and_entropy


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny()


class _WrappedHead(torch.nn.Module):
    """A non-Linear head module, to exercise the generic checkpointed path."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.inner = linear

    def forward(self, hidden):
        return self.inner(hidden)


def _padded_batch(vocab_size: int):
    """Token ids [4, 14] with left padding, right padding, both, and none."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, vocab_size, (4, 14), generator=generator)
    attention_mask = torch.ones(4, 14, dtype=torch.long)
    attention_mask[0, :4] = 0  # left-padded prompt
    attention_mask[1, -5:] = 0  # right padding after a short response
    attention_mask[2, :2] = 0
    attention_mask[2, -3:] = 0  # both
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


def _naive(model, input_ids, attention_mask, temperature):
    """Full logits -> log_softmax; returns (logprobs, entropy, scored) all [B, L]."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    scored = torch.zeros_like(attention_mask, dtype=torch.bool)
    scored[:, 1:] = (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()
    logprobs = torch.zeros(input_ids.shape)
    entropy = torch.zeros(input_ids.shape)
    logprobs[:, 1:] = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy[:, 1:] = -(log_probs.exp() * log_probs).sum(-1)
    return logprobs * scored, entropy * scored, scored


@pytest.mark.parametrize("head", ["fused", "checkpointed"])
@pytest.mark.parametrize("chunk_size", [5, 1024])
def test_matches_naive_values_and_gradients(tiny_pair, head, chunk_size):
    model, tokenizer = tiny_pair
    model = copy.deepcopy(model).train()
    if head == "checkpointed":
        model.lm_head = _WrappedHead(model.lm_head)
    input_ids, attention_mask = _padded_batch(len(tokenizer))
    temperature = 0.7
    generator = torch.Generator().manual_seed(1)
    logprob_weights, entropy_weights = torch.randn(2, *input_ids.shape, generator=generator)

    logprobs, entropy = token_logprobs_and_entropy(model, input_ids, attention_mask, chunk_size=chunk_size,
                                                   temperature=temperature)
    (logprobs * logprob_weights + entropy * entropy_weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    naive_logprobs, naive_entropy, scored = _naive(model, input_ids, attention_mask, temperature)
    (naive_logprobs * logprob_weights + naive_entropy * entropy_weights).sum().backward()

    assert logprobs.dtype == torch.float32 and logprobs.shape == input_ids.shape
    torch.testing.assert_close(logprobs, naive_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, naive_entropy, atol=1e-5, rtol=0)
    assert (logprobs[~scored] == 0).all() and (entropy[~scored] == 0).all()
    assert (logprobs[:, 0] == 0).all()
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


def test_compute_mask_and_options(tiny_pair):
    model, tokenizer = tiny_pair
    input_ids, attention_mask = _padded_batch(len(tokenizer))
    compute_mask = torch.zeros(input_ids.shape)
    compute_mask[:, 8:11] = 1.0  # e.g. the response
    with torch.no_grad():
        full_logprobs, full_entropy = token_logprobs_and_entropy(model, input_ids, attention_mask)
        logprobs, entropy = token_logprobs_and_entropy(model, input_ids, attention_mask, compute_mask=compute_mask,
                                                       chunk_size=2)
        no_entropy_logprobs, zero_entropy = token_logprobs_and_entropy(model, input_ids, attention_mask,
                                                                      with_entropy=False)
    selected = compute_mask.bool()
    torch.testing.assert_close(logprobs[selected], full_logprobs[selected], atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy[selected], full_entropy[selected], atol=1e-5, rtol=0)
    assert (logprobs[~selected] == 0).all() and (entropy[~selected] == 0).all()
    assert (logprobs[selected & attention_mask.bool()] < 0).all()
    torch.testing.assert_close(no_entropy_logprobs, full_logprobs, atol=1e-5, rtol=0)
    assert (zero_entropy == 0).all()
    empty, _ = token_logprobs_and_entropy(model, input_ids, attention_mask, compute_mask=torch.zeros(input_ids.shape))
    assert (empty == 0).all()
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(model, input_ids, attention_mask, temperature=0.0)


def test_bf16_model_computes_softmax_in_fp32(tiny_pair):
    model, tokenizer = tiny_pair
    input_ids, attention_mask = _padded_batch(len(tokenizer))
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    logprobs, entropy = token_logprobs_and_entropy(bf16_model, input_ids, attention_mask)
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    reference, reference_entropy = token_logprobs_and_entropy(model, input_ids, attention_mask)
    torch.testing.assert_close(logprobs, reference.detach(), atol=0.05, rtol=0)
    logprobs.sum().backward()
    assert bf16_model.lm_head.weight.grad is not None and bf16_model.lm_head.weight.grad.dtype == torch.bfloat16


def _load_memory_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "logprob_memory.py"
    spec = importlib.util.spec_from_file_location("logprob_memory_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_memory_far_below_naive_on_49k_vocab():
    bench = _load_memory_benchmark()
    if not bench.peak_memory_supported():
        pytest.skip("peak-RSS measurement needs Linux /proc/self/clear_refs")
    results = bench.compare(batch=4, length=256, chunk_sizes=(256,))
    chunked_mb, naive_mb = results["chunked/256"][0], results["naive"][0]
    # naive holds several float32 [4, 256, 49152] tensors (200 MB each); chunked at most a few [256, 49152].
    assert naive_mb > 400, results
    assert chunked_mb < 0.3 * naive_mb, results


def test_token_fns_hook_matches_full_logits_and_is_differentiable():
    """The per-token functional hook sees each position's full (temperature-scaled) logits, chunk by chunk."""
    import torch

    from entropo.models import tiny
    from entropo.models.logprobs import token_logprobs_and_entropy

    model, _ = tiny(seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (3, 9), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :2] = 0
    T = 0.7

    def top1_prob(logits, target):  # any functional of the distribution
        return torch.softmax(logits, -1).max(-1).values

    lp, ent, extras = token_logprobs_and_entropy(model, ids, attn, temperature=T, chunk_size=5,
                                                 token_fns={"top1": top1_prob})
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    full = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float() / T
    expected = torch.softmax(full[:, :-1], -1).max(-1).values
    scored = (attn[:, 1:] * attn[:, :-1]).bool()
    torch.testing.assert_close(extras["top1"][:, 1:][scored], expected[scored], rtol=1e-5, atol=1e-6)
    assert torch.all(extras["top1"][:, 0] == 0) and torch.all(extras["top1"][0, :2] == 0)
    lp2, ent2 = token_logprobs_and_entropy(model, ids, attn, temperature=T)
    torch.testing.assert_close(lp, lp2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent, ent2, rtol=1e-5, atol=1e-6)
    extras["top1"].sum().backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
