"""The HF engine's fast decode path (issue 19, rollout): a preallocated KV cache, a leaner sampling step, and prefix
K/V reuse across turns and tree branches must sample exactly what the reference loop samples for the same generator
(same ids, same finish reasons; log-probs and entropies within 1e-5), on ragged prompts, early EOS, stop strings,
top-p, min_new_tokens, and multi-turn episodes (K/V reuse vs re-prefilling the whole history)."""

import pytest
import torch

from entropo.envs.base import EnvFactory, Environment, StepResult
from entropo.models import tiny
from entropo.rollout import HFEngine
from entropo.rollout.episodes import EpisodeLimits
from entropo.rollout.hf import _sample_step, _sample_step_fast
from entropo.rollout.kv import PrefixKV, preallocated_cache
from entropo.rollout.tree import HFTreeEngine
from entropo.types import Example

REFERENCE = {"static_kv_cache": False}
STATIC_ONLY = {"reuse_prefix_kv": False}
FAST = {}


@pytest.fixture(scope="module")
def world():
    model, tokenizer = tiny()
    model.eval()
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # make EOS likely enough that rows end early, at different steps
        model.get_output_embeddings().weight[eos] += 0.35 * model.get_output_embeddings().weight[eos].norm()
    return model, tokenizer


def _same(a, b, tol=1e-5):
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.response_mask, b.response_mask)
    assert a.finish_reasons == b.finish_reasons and a.completions == b.completions
    assert torch.allclose(a.behaviour_logprobs, b.behaviour_logprobs, atol=tol)
    assert torch.allclose(a.behaviour_entropy, b.behaviour_entropy, atol=tol)


RAGGED = ["1+2=", "345+6789=", "1+2=", "9=", "12*(3+4)-5="]  # different lengths; a prompt repeated across groups


@pytest.mark.parametrize("sampling,engine_kw", [
    (dict(temperature=1.0), {}),
    (dict(temperature=0.7, stop=["+", "9"]), {}),
    (dict(temperature=1.3, top_p=0.8), {"share_prompt_prefill": False}),
    (dict(temperature=0.0), {}),
    (dict(temperature=1.0), {"min_new_tokens": 3}),
    (dict(temperature=1.0), {"ignore_eos": True}),
])
def test_static_decode_samples_exactly_what_the_reference_loop_does(world, sampling, engine_kw):
    model, tok = world
    outs = [HFEngine(model, tok, max_batch_size=7, **engine_kw, **path).generate(
        RAGGED, 3, max_new_tokens=9, generator=torch.Generator().manual_seed(11), **sampling)
        for path in (REFERENCE, STATIC_ONLY, FAST)]
    for out in outs[1:]:
        _same(outs[0], out)
    reasons = set(outs[0].finish_reasons)
    if "ignore_eos" not in engine_kw and sampling["temperature"] > 0:
        assert "eos" in reasons and "length" in reasons  # the case really has rows ending early
    if "stop" in sampling:
        assert "stop" in reasons


def test_fast_sampling_step_draws_the_same_tokens_and_values():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    logits[1, :10] = float("-inf")  # masked tokens (e.g. EOS under min_new_tokens): probability 0, no NaN entropy
    for temperature in (1.0, 0.6):
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        ref = _sample_step(logits.clone(), temperature, 1.0, g1)
        fast = _sample_step_fast(logits.clone(), temperature, 1.0, g2)
        assert torch.equal(ref[0], fast[0]) and torch.equal(g1.get_state(), g2.get_state())
        assert torch.allclose(ref[1], fast[1], atol=1e-6) and torch.allclose(ref[2], fast[2], atol=1e-6)
        assert torch.isfinite(fast[2]).all()
    # by hand: uniform over the 40 unmasked tokens of row 1 at temperature 1 -> entropy log 40
    flat = torch.zeros(1, 50)
    flat[0, :10] = float("-inf")
    _, lp, ent = _sample_step_fast(flat, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(ent, torch.tensor([torch.log(torch.tensor(40.0))])) and torch.allclose(lp, -ent)


def test_preallocated_cache_writes_in_place_and_never_grows(world):
    model, _ = world
    cache = preallocated_cache(model, capacity=12)
    layer = cache.layers[0]
    k = torch.randn(2, 4, 5, 16)
    keys, _ = layer.update(k, k + 1)
    ptr = layer.buf_k.data_ptr()
    for step in range(7):
        k1 = torch.full((2, 4, 1, 16), float(step))
        keys, values = layer.update(k1, k1 + 1)
        assert layer.buf_k.data_ptr() == ptr and keys.data_ptr() == ptr  # a view of the same buffer
    assert keys.shape == (2, 4, 12, 16) and layer.get_seq_length() == 12
    assert torch.equal(keys[:, :, :5], k) and torch.equal(values[:, :, 5:], torch.arange(7.0).view(1, 1, 7, 1)
                                                             .expand(2, 4, 7, 16) + 1)
    with pytest.raises(RuntimeError, match="overflowed"):
        layer.update(k1, k1)


def test_models_without_a_plain_cache_take_the_reference_loop(world):
    from transformers import MistralConfig, MistralForCausalLM

    _, tok = world
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MistralForCausalLM(config).float().eval()
    assert preallocated_cache(model, 8) is None  # sliding-window layers: not preallocated
    outs = [HFEngine(model, tok, **path).generate(["1+2=", "30+4="], 2, max_new_tokens=6,
                                                  generator=torch.Generator().manual_seed(0))
            for path in (REFERENCE, FAST)]
    _same(*outs, tol=0.0)


# ---- prefix K/V reuse ------------------------------------------------------------------------------------------------

class Tool(Environment):
    """Three turns; each reply has a different length (so later turns are ragged too)."""

    observation_role = "tool"
    max_turns = 3

    def reset(self, example, seed):
        self.turn, self.seed = 0, seed
        return example.prompt

    def step(self, action):
        self.turn += 1
        return StepResult(observation="ok " * (1 + (self.seed + self.turn) % 3), reward=0.0,
                          done=self.turn >= 3)


def _episodes(model, tok, path, **kw):
    engine = HFEngine(model, tok, max_batch_size=5, **path, **kw)
    out = engine.generate([Example(prompt=[{"role": "user", "content": "1+2="}]), Example(prompt="77+8=")], 4,
                          generator=torch.Generator().manual_seed(3), environment=EnvFactory(Tool),
                          limits=EpisodeLimits(), max_new_tokens=8)
    return engine, out


def test_multi_turn_kv_reuse_gives_the_ids_and_logprobs_of_re_prefilling(world):
    model, tok = world
    (_, ref), (plain, static), (fast, reused) = [_episodes(model, tok, p) for p in (REFERENCE, STATIC_ONLY, FAST)]
    _same(ref, static)
    _same(ref, reused)
    assert max(e.num_turns for e in reused.episodes) == 3
    # what was prefilled, by hand. Turn 1, micro-batches of 5 rows [a a a a b] [b b b]: the first prefills both
    # prompts; the second finds prompt b in the K/V kept from the first (a row of b decoded there) and runs only its
    # last token. A later turn of an episode reuses all of its history but the last sampled token, and prefills
    # that token plus the reply (the observation ids).
    a, b = [len(HFEngine(model, tok).encode_prompt(p)) for p in ([{"role": "user", "content": "1+2="}], "77+8=")]
    prompts = [a, b, 1]
    later = 0
    for r in range(reused.input_ids.shape[0]):
        live = reused.attention_mask[r].bool()
        turns, policy = reused.turn_ids[r][live].tolist(), reused.response_mask[r][live].tolist()
        for k in range(1, reused.episodes[r].num_turns):
            reply = sum(1 for t, p in zip(turns, policy) if t == k - 1 and p == 0)
            later += reply + 1
    assert fast.kv_stats["prefilled_tokens"] == sum(prompts) + later
    assert plain.kv_stats["reused_tokens"] == 0 and fast.kv_stats["reused_tokens"] > 0
    total = fast.kv_stats["prefilled_tokens"] + fast.kv_stats["reused_tokens"]
    assert total == plain.kv_stats["prefilled_tokens"]  # the same contexts; only where their K/V come from differs


def test_kv_reuse_respects_its_memory_bound_and_never_serves_stale_weights(world):
    model, tok = world
    _, ref = _episodes(model, tok, REFERENCE)
    tight, out = _episodes(model, tok, FAST, prefix_kv_mb=1e-3)  # ~1 KB: no row fits
    _same(ref, out)
    assert tight.kv_stats["reused_tokens"] == 0
    # a store sees an in-place weight change (an optimizer step) and drops everything it holds
    store = PrefixKV(2**20)
    store.check_weights(model)
    store.put([1, 2, 3], [(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2))])
    assert store.lookup([1, 2, 3, 4]) [1] == 3
    with torch.no_grad():
        next(model.parameters()).add_(0.0)
    store.check_weights(model)
    assert store.entries == [] and store.lookup([1, 2, 3, 4]) == (None, 0)


def test_prefix_lookup_takes_the_longest_shared_prefix_and_keeps_the_last_token_to_run():
    store = PrefixKV(2**20)
    kv = [(torch.zeros(1, 6, 2), torch.zeros(1, 6, 2))]
    store.put([5, 6, 7, 8, 9, 10], kv)
    store.put([5, 6, 1, 1, 1, 1], kv)
    entry, n = store.lookup([5, 6, 7, 8, 2])  # shares 4 tokens with the first
    assert n == 4 and entry.key.tolist()[:4] == [5, 6, 7, 8]
    assert store.lookup([5, 6, 7])[1] == 2  # a prefix of a key: all but its last token
    assert store.lookup([5, 6, 7, 8, 9, 10, 11, 12])[1] == 6  # an extension: the whole key
    assert store.lookup([4, 6, 7]) == (None, 0) and store.lookup([5]) == (None, 0)
    assert not store.fits(2**20) and store.bytes == 2 * 2 * 6 * 2 * 4


def test_tree_branches_reuse_their_roots_kv(world):
    model, tok = world
    runs = []
    for path in (REFERENCE, STATIC_ONLY, FAST):
        engine = HFTreeEngine(model, tok, max_batch_size=5, n_fork_points=2, branches=2, **path)
        runs.append((engine, engine.generate(["1+2=", "31+4="], 7, max_new_tokens=10,
                                             generator=torch.Generator().manual_seed(0))))
    (_, ref), (plain, static), (fast, reused) = runs
    _same(ref, static)
    _same(ref, reused)
    # by hand: the 4 roots (2 trees x 2 prompts, one micro-batch) prefill the 2 distinct prompts; then each distinct
    # branch context (prompt + root prefix) of a micro-batch of 5 branch rows is prefilled in full without reuse,
    # and only its last token with reuse (the rest is its root's K/V)
    prompts = [fast.encode_prompt(p) for p in ("1+2=", "31+4=")]
    roots = {leaf.root_row: reused.input_ids[i][reused.response_mask[i] > 0].tolist()
             for i, leaf in enumerate(fast.last_leaves) if leaf.fork_position is None}
    contexts = [tuple(prompts[leaf.prompt] + roots[leaf.root_row][:leaf.fork_position])
                for leaf in fast.last_leaves if leaf.fork_position is not None]
    chunks = [set(contexts[i:i + 5]) for i in range(0, len(contexts), 5)]
    root_prefill = sum(len(p) for p in prompts)
    assert plain.kv_stats["prefilled_tokens"] == root_prefill + sum(len(c) for chunk in chunks for c in chunk)
    assert fast.kv_stats["prefilled_tokens"] == root_prefill + sum(len(chunk) for chunk in chunks)


@pytest.mark.parametrize("engine_kw", [REFERENCE, STATIC_ONLY, FAST])
def test_turn_sampler_called_directly_builds_no_autograd_graph(world, engine_kw):
    """Tree decoding and search call ``turn_sampler`` outside ``generate`` (grad mode on): the log-probs and
    entropies it returns must not hold the decode's autograd graph (it kept every step's activations alive: ~0.1 GB
    per SmolLM2 row until the episode records were freed, an OOM for a 288-row tree level)."""
    model, tok = world
    assert torch.is_grad_enabled()
    engine = HFEngine(model, tok, max_batch_size=2, **engine_kw)
    sampler = engine.turn_sampler(1.0, 1.0, torch.Generator().manual_seed(3))
    contexts = [tok.encode(p, add_special_tokens=False) for p in RAGGED]
    out = sampler(contexts, 5, [])
    assert len(out) == len(RAGGED)
    for ids, logprobs, entropies, _ in out:
        assert len(ids) == len(logprobs) == len(entropies) >= 1
        assert logprobs.grad_fn is None and not logprobs.requires_grad
        assert entropies.grad_fn is None and not entropies.requires_grad
    assert torch.is_grad_enabled()  # the caller's grad mode is left as it was
