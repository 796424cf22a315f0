"""entropo.perf (parameter counts, FLOP estimates, GEMM rate), the engine's min_new_tokens, and a 1-step smoke run of
the benchmark's entropo trial (benchmarks/_entropo_side.py) on the tiny model. The TRL side needs trl, which CI does
not install: it is exercised by running the benchmark itself."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from entropo.models import tiny
from entropo.perf import count_params, gemm_shape, measure_gemm_flops, transformer_flops
from entropo.rollout import HFEngine

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny()


# ---- parameter counts and FLOPs --------------------------------------------------------------------------------------

class TinyLM(nn.Module):
    """Embedding 10x4 (40) -> Linear 4->4 with bias (20) -> head Linear 4->10 without bias (40)."""

    def __init__(self, tied: bool):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def get_output_embeddings(self):
        return self.head


def test_count_params_untied_and_tied_by_hand():
    untied = TinyLM(tied=False)
    assert count_params(untied, include_embeddings=True) == 40 + 20 + 40
    assert count_params(untied, include_embeddings=False) == 20 + 40  # the lookup table does no matmul
    tied = TinyLM(tied=True)
    # the shared matrix is counted once, and kept without embeddings: it is the LM head's matmul weight
    assert count_params(tied, include_embeddings=True) == 40 + 20
    assert count_params(tied, include_embeddings=False) == 40 + 20


def test_count_params_plain_module_without_head_drops_every_embedding():
    model = nn.Sequential(nn.Embedding(7, 3), nn.Linear(3, 5), nn.Embedding(2, 3))
    assert count_params(model, include_embeddings=True) == 21 + 20 + 6
    assert count_params(model, include_embeddings=False) == 20


def test_count_params_tiny_llama_by_hand(tiny_pair):
    model, tokenizer = tiny_pair
    d, inter, layers, vocab = 64, 256, 2, len(tokenizer)
    per_layer = 4 * d * d + 3 * d * inter + 2 * d  # q, k, v, o (no bias); gate, up, down; two RMSNorm weights
    expected = layers * per_layer + d + vocab * d  # + final norm + tied embedding / LM head (counted once)
    assert count_params(model, include_embeddings=True) == expected
    assert count_params(model, include_embeddings=False) == expected  # tied: the head matmul keeps the matrix


def test_transformer_flops_by_hand():
    assert transformer_flops(1000, 30, backward=True) == 6 * 1000 * 30
    assert transformer_flops(1000, 30, backward=False) == 2 * 1000 * 30
    assert transformer_flops(0, 30, backward=True) == 0
    with pytest.raises(ValueError):
        transformer_flops(-1, 3, backward=False)


def test_measure_gemm_flops_small_is_positive_finite_and_restores_threads():
    before = torch.get_num_threads()
    rate = measure_gemm_flops(32, threads=1, repeats=2, min_time_s=0.001)
    assert math.isfinite(rate) and rate > 0
    assert torch.get_num_threads() == before
    assert gemm_shape(8) == (8, 8, 8) and gemm_shape((2, 3, 4)) == (2, 3, 4)
    with pytest.raises(ValueError):
        measure_gemm_flops((0, 2, 2))


# ---- min_new_tokens -------------------------------------------------------------------------------------------------

def _eos_bias_hook(model, eos_id: int, bias: float):
    logit_bias = torch.zeros(model.config.vocab_size)
    logit_bias[eos_id] = bias
    return model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + logit_bias)


def _response_ids(out, r):
    return out.input_ids[r][out.response_mask[r].bool()].tolist()


def test_min_new_tokens_holds_rows_open_until_reached(tiny_pair):
    model, tokenizer = tiny_pair
    eos = tokenizer.eos_token_id
    engine = HFEngine(model, tokenizer, min_new_tokens=5)
    hook = _eos_bias_hook(model, eos, 100.0)  # EOS is all but certain whenever it is allowed
    try:
        out = engine.generate(["1+2=", "abc"], 3, max_new_tokens=12, generator=torch.Generator().manual_seed(0))
        forced_full = HFEngine(model, tokenizer, min_new_tokens=12).generate(
            ["1+2="], 4, max_new_tokens=12, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    # EOS forbidden for 5 tokens, then taken at once: every row is 5 tokens + the EOS
    assert out.num_tokens == [6] * 6 and out.finish_reasons == ["eos"] * 6
    for r in range(6):
        ids = _response_ids(out, r)
        assert eos not in ids[:5] and ids[5] == eos
    assert out.behaviour_logprobs[out.response_mask.bool()].isfinite().all()
    # min = max: every row runs to the budget
    assert forced_full.num_tokens == [12] * 4 and forced_full.finish_reasons == ["length"] * 4


def test_min_new_tokens_rows_never_end_early_with_likely_eos(tiny_pair):
    model, tokenizer = tiny_pair
    eos = tokenizer.eos_token_id
    hook = _eos_bias_hook(model, eos, 3.0)  # EOS ~20% per step: without the floor many rows end before 4 tokens
    try:
        free = HFEngine(model, tokenizer).generate(["1+2="], 16, max_new_tokens=10,
                                                   generator=torch.Generator().manual_seed(1))
        held = HFEngine(model, tokenizer, min_new_tokens=4).generate(["1+2="], 16, max_new_tokens=10,
                                                                     generator=torch.Generator().manual_seed(1))
    finally:
        hook.remove()
    assert min(free.num_tokens) < 4  # the floor below is not vacuous
    assert min(held.num_tokens) >= 4
    assert "eos" in held.finish_reasons  # rows still end on EOS once the floor is passed


def test_min_new_tokens_defers_stop_strings(tiny_pair):
    model, tokenizer = tiny_pair
    ref = HFEngine(model, tokenizer, min_new_tokens=6).generate(["1+2="], 1, max_new_tokens=12,
                                                                generator=torch.Generator().manual_seed(3))
    first = tokenizer.decode(_response_ids(ref, 0)[:1])
    cut = HFEngine(model, tokenizer, min_new_tokens=6).generate(["1+2="], 1, max_new_tokens=12, stop=[first],
                                                                generator=torch.Generator().manual_seed(3))
    # the stop string completed at token 1, but the row is only checked once it has 6 tokens
    assert cut.num_tokens == [6] and cut.finish_reasons == ["stop"]
    assert _response_ids(cut, 0) == _response_ids(ref, 0)[:6]


def test_min_new_tokens_zero_leaves_sampling_unchanged(tiny_pair):
    model, tokenizer = tiny_pair
    kwargs = {"max_new_tokens": 12, "stop": ["7"]}
    plain = HFEngine(model, tokenizer).generate(["1+2=", "abc"], 4, generator=torch.Generator().manual_seed(5),
                                                **kwargs)
    zero = HFEngine(model, tokenizer, min_new_tokens=0).generate(["1+2=", "abc"], 4,
                                                                 generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(plain.input_ids, zero.input_ids)
    assert torch.equal(plain.behaviour_logprobs, zero.behaviour_logprobs)
    assert plain.finish_reasons == zero.finish_reasons
    with pytest.raises(ValueError):
        HFEngine(model, tokenizer, min_new_tokens=-1)


# ---- the benchmark's entropo trial ---------------------------------------------------------------------------------

def _load_bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entropo_trial_one_step_on_tiny(tmp_path):
    side = _load_bench_module("_entropo_side")
    tiny(path=tmp_path / "model")
    P, G, L, epochs = 2, 2, 4, 2
    spec = {
        "model_path": str(tmp_path / "model"),
        "task": {"name": "arithmetic", "params": {"digits": 1, "num_terms": 3, "chat": False, "template": "{expr}="}},
        "seed": 0, "prompts_per_step": P, "group_size": G, "max_new_tokens": L, "temperature": 1.0,
        "ppo_epochs": epochs, "kl_coef": 0.04, "lr": 1e-5, "clip_low": 0.2, "clip_high": 0.28,
        "micro_batch_size": 4, "warmup_steps": 0, "timed_steps": 1, "threads": 2,
        "entropo": {"old_logprobs": "recompute", "logprob_chunk_size": 1024}, "trl": {"gradient_checkpointing": True},
    }
    result = side.run_trial(spec, work_dir=tmp_path)
    (step,) = result["steps"]
    prompt_tokens = len("3 + 5 + 8=")  # every 3-term single-digit prompt: 10 characters, one token each
    assert step["gen_tokens"] == pytest.approx(P * G * L)
    assert step["response_length_mean"] == L
    assert step["update_tokens"] == pytest.approx(P * G * (prompt_tokens + L) * epochs)
    # recompute: an old-policy pass and a reference pass (KL on), each over every prompt + response token
    assert step["score_passes"] == 2
    assert step["score_tokens"] == pytest.approx(2 * P * G * (prompt_tokens + L))
    assert step["optimizer_steps"] == epochs
    assert step["step_s"] >= step["rollout_s"] + step["score_s"] + step["update_s"] > 0
    assert result["peak_rss_mb"] > 0 and result["threads"] == 2
    assert "ignore_eos: true" in result["config"] and "kl" in result["config"]
    # the TRL side trains on exactly these prompts, in this order
    schedule, _task = side.prompt_schedule(spec)
    assert len(schedule) == 1 and len(schedule[0]) == P
