"""The hf rollout engine on the tiny model: layout and masks, determinism, EOS/stop/length endings, greedy and top-p,
and behaviour log-probs that match a re-scoring of the output."""

from __future__ import annotations

import pytest
import torch

from entropo import registry
from entropo.models import tiny, token_logprobs_and_entropy
from entropo.rollout import HFEngine

PROMPTS = ["1+2=", [{"role": "user", "content": "What is 3+4?"}], "abc def"]


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny()


@pytest.fixture(scope="module")
def engine(tiny_pair):
    return HFEngine(*tiny_pair)


def _gen(engine, seed=0, **kwargs):
    kwargs.setdefault("max_new_tokens", 16)
    return engine.generate(PROMPTS, kwargs.pop("n", 3), generator=torch.Generator().manual_seed(seed), **kwargs)


def _response_ids(out, r):
    return out.input_ids[r][out.response_mask[r].bool()].tolist()


def test_registered():
    assert registry.get("engine", "hf") is HFEngine


def test_layout_and_masks(engine, tiny_pair):
    _, tokenizer = tiny_pair
    out = _gen(engine, temperature=1.0)
    rows = len(PROMPTS) * 3
    assert out.input_ids.shape == out.attention_mask.shape == out.response_mask.shape == out.behaviour_logprobs.shape
    assert out.input_ids.shape[0] == rows
    assert out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(out.completions) == len(out.num_tokens) == len(out.finish_reasons) == rows
    prompt_texts = ["1+2=", "What is 3+4?\n", "abc def"]  # the tiny chat template appends "\n" to a user turn
    prompt_width = max(len(t) for t in prompt_texts)
    # Width is trimmed to the longest row.
    assert out.input_ids.shape[1] == prompt_width + max(out.num_tokens)
    for r in range(rows):
        text = prompt_texts[int(out.prompt_index[r])]
        attention = out.attention_mask[r]
        response = out.response_mask[r]
        # left padding | prompt | response | right padding
        assert tokenizer.decode(out.input_ids[r, prompt_width - len(text):prompt_width]) == text
        assert attention[: prompt_width - len(text)].sum() == 0 and (attention[prompt_width - len(text):prompt_width] == 1).all()
        assert response[:prompt_width].sum() == 0
        n_tokens = out.num_tokens[r]
        assert (response[prompt_width:prompt_width + n_tokens] == 1).all() and response[prompt_width + n_tokens:].sum() == 0
        assert (attention[prompt_width:] == response[prompt_width:].long()).all()
        assert (out.behaviour_logprobs[r][response == 0] == 0).all() and (out.behaviour_entropy[r][response == 0] == 0).all()
        assert (out.behaviour_logprobs[r][response == 1] < 0).all() and (out.behaviour_entropy[r][response == 1] > 0).all()
        assert (out.input_ids[r][attention == 0] == tokenizer.pad_token_id).all()
        ids = _response_ids(out, r)
        assert out.completions[r] == tokenizer.decode(ids, skip_special_tokens=True)
        if out.finish_reasons[r] == "length":
            assert n_tokens == 16 and tokenizer.eos_token_id not in ids
        else:
            assert out.finish_reasons[r] == "eos" and ids[-1] == tokenizer.eos_token_id
            assert tokenizer.eos_token_id not in ids[:-1]


def test_determinism_and_seed_dependence(engine):
    first, again, other = _gen(engine, seed=0), _gen(engine, seed=0), _gen(engine, seed=1)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.behaviour_logprobs, again.behaviour_logprobs)
    assert first.completions != other.completions
    # Samples of the same prompt differ from each other.
    assert len(set(first.completions[:3])) > 1
    # Without a generator, the global torch seed makes it reproducible.
    torch.manual_seed(5)
    a = engine.generate(["1+2="], 2, max_new_tokens=8)
    torch.manual_seed(5)
    b = engine.generate(["1+2="], 2, max_new_tokens=8)
    assert a.completions == b.completions


def test_behaviour_logprobs_match_rescoring(engine, tiny_pair):
    model, _ = tiny_pair
    for temperature in (1.0, 0.7):
        out = _gen(engine, temperature=temperature)
        with torch.no_grad():
            logprobs, entropy = token_logprobs_and_entropy(model, out.input_ids, out.attention_mask,
                                                           temperature=temperature, compute_mask=out.response_mask)
        torch.testing.assert_close(out.behaviour_logprobs, logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.behaviour_entropy, entropy, atol=1e-4, rtol=0)


def test_greedy_is_argmax_and_tiny_top_p_is_greedy(engine, tiny_pair):
    model, _ = tiny_pair
    greedy = _gen(engine, temperature=0.0, n=2)
    assert greedy.completions[0] == greedy.completions[1]
    assert (greedy.behaviour_logprobs == 0).all() and (greedy.behaviour_entropy == 0).all()
    with torch.no_grad():
        position_ids = (greedy.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=greedy.input_ids, attention_mask=greedy.attention_mask, position_ids=position_ids).logits
    predicted = logits[:, :-1].argmax(-1)
    response = greedy.response_mask[:, 1:].bool()
    assert torch.equal(predicted[response], greedy.input_ids[:, 1:][response])
    nucleus = _gen(engine, temperature=1.0, top_p=1e-6, n=2, seed=3)
    assert torch.equal(nucleus.input_ids, greedy.input_ids)
    assert (nucleus.behaviour_logprobs == 0).all() and (nucleus.behaviour_entropy.abs() < 1e-6).all()
    # A moderate top-p samples from a smaller support: the sampling entropy drops below the full one.
    full, partial = _gen(engine, top_p=1.0), _gen(engine, top_p=0.5)
    mean = lambda o: (o.behaviour_entropy.sum() / o.response_mask.sum()).item()  # noqa: E731
    assert mean(partial) < mean(full)


def test_micro_batching_keeps_order(tiny_pair):
    big = HFEngine(*tiny_pair, max_batch_size=64)
    small = HFEngine(*tiny_pair, max_batch_size=2)
    a, b = _gen(big, temperature=0.0), _gen(small, temperature=0.0)
    assert torch.equal(a.input_ids, b.input_ids) and a.completions == b.completions
    assert b.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_stop_strings_cut_after_completing_token(engine, tiny_pair):
    _, tokenizer = tiny_pair
    full = engine.generate(["1+2="], 1, max_new_tokens=24, generator=torch.Generator().manual_seed(11))
    tokens = _response_ids(full, 0)
    assert len(tokens) >= 8, "pick another seed: the reference sample ended early"
    stop = tokenizer.decode(tokens[4:6])
    expected_len = next(k for k in range(1, len(tokens) + 1) if stop in tokenizer.decode(tokens[:k]))
    cut = engine.generate(["1+2="], 1, max_new_tokens=24, stop=["@@never@@", stop],
                          generator=torch.Generator().manual_seed(11))
    assert cut.finish_reasons == ["stop"]
    assert _response_ids(cut, 0) == tokens[:expected_len]
    assert cut.num_tokens == [expected_len] and cut.completions[0].endswith(stop)
    assert cut.input_ids.shape[1] == len("1+2=") + expected_len


def _with_eos_bias(model, eos_id, bias):
    logit_bias = torch.zeros(model.config.vocab_size)
    logit_bias[eos_id] = bias
    return model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + logit_bias)


def test_forced_eos_ends_rows(engine, tiny_pair):
    model, tokenizer = tiny_pair
    eos = tokenizer.eos_token_id
    hook = _with_eos_bias(model, eos, 100.0)
    try:
        out = _gen(engine)
    finally:
        hook.remove()
    assert out.finish_reasons == ["eos"] * 9 and out.num_tokens == [1] * 9 and out.completions == [""] * 9
    assert (out.input_ids[:, -1] == eos).all() and (out.response_mask[:, -1] == 1).all()
    assert out.behaviour_logprobs[:, -1].abs().max() < 1e-4

    hook = _with_eos_bias(model, eos, 3.0)  # EOS now ~20% per step: rows end at different lengths
    try:
        mixed = _gen(engine, n=4, max_new_tokens=12)
    finally:
        hook.remove()
    assert {"eos", "length"} <= set(mixed.finish_reasons)
    assert len(set(mixed.num_tokens)) > 2
    for r, reason in enumerate(mixed.finish_reasons):
        ids = _response_ids(mixed, r)
        assert (ids[-1] == eos) == (reason == "eos") and eos not in ids[:-1]


def test_chat_template_modes(tiny_pair):
    model, tokenizer = tiny_pair
    auto = HFEngine(model, tokenizer)
    assert auto.format_prompt("3+4=") == "3+4="
    assert auto.format_prompt([{"role": "user", "content": "3+4="}]) == "3+4=\n"
    assert HFEngine(model, tokenizer, chat_template=True).format_prompt("3+4=") == "3+4=\n"
    with pytest.raises(ValueError, match="messages"):
        HFEngine(model, tokenizer, chat_template=False).format_prompt([{"role": "user", "content": "x"}])


def test_prompt_too_long_and_bad_arguments(engine):
    with pytest.raises(ValueError, match="positions"):
        engine.generate(["x" * 500], 1, max_new_tokens=64)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(["x"], 1, top_p=0.0)
    with pytest.raises(ValueError, match="n must"):
        engine.generate(["x"], 0)
