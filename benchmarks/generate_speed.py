"""Decode throughput of entropo's HF rollout engine vs ``model.generate``, and where a decode step's time goes.

One process, one model (SmolLM2-135M-Instruct, fp32, ``--threads`` torch threads), the same prompt, the same number of
new tokens on every side (EOS is suppressed on all sides by a bias hook on the LM head, so every row generates
exactly ``--new-tokens`` tokens). Sides, interleaved over ``--repeats`` (median reported):

- ``generate``: ``model.generate(do_sample=True, temperature=1, top_k=0, top_p=1, min_new_tokens=max_new_tokens)``
  on ``batch`` copies of the prompt;
- ``engine-ref``: ``HFEngine(static_kv_cache=False)``: the reference loop (a growing ``DynamicCache``);
- ``engine``: ``HFEngine()`` (defaults): the static-cache path (preallocated KV, lean sampling step).

Both engine sides get the same generator seed and must return the same ids (checked, printed) with log-probs within
1e-5. Then a multi-turn case (episodes against a tool that replies with a fixed observation; every later turn either
re-prefills the whole history or reuses its K/V: ``reuse_prefix_kv``) and a tree case (``hf_tree`` branches
re-prefilling prompt + prefix or reusing the root's K/V).

The per-token cost is read against this machine's limits, measured here: memory bandwidth (reading and copying a
256 MB tensor) and fp32 GEMM rate (``entropo.perf.measure_gemm_flops`` on model-shaped products), and a profile of
one decode step at ``--profile-batch`` (GEMMs / attention / cache ops / other ops / Python and framework overhead,
plus the sampling step). Results (machine facts, load averages before/after, every timing) go to ``--out``.

    python benchmarks/generate_speed.py [--batch-sizes 16 32] [--new-tokens 64] [--threads 2] [--repeats 3]
        [--out benchmarks/results/2026-11-29-decode.json] [--skip-multiturn] [--model tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _bandwidth(mb: int = 256, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` GB/s of reading (a sum) and copying (read + write counted) an ``mb``-MB fp32 tensor."""
    a = torch.ones(mb * 2**20 // 4)
    b = torch.empty_like(a)
    read, copy = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        read.append(time.perf_counter() - t)
        t = time.perf_counter()
        b.copy_(a)
        copy.append(time.perf_counter() - t)
    nbytes = a.numel() * 4
    return {"read_GBps": nbytes / min(read) / 1e9, "copy_GBps": 2 * nbytes / min(copy) / 1e9}


def _gemm(model, threads: int, batch_sizes: list[int]) -> dict[str, float]:
    from entropo.perf import measure_gemm_flops

    d = model.config.hidden_size
    mlp = model.config.intermediate_size
    vocab = model.config.vocab_size
    shapes = {"large [2048,d]x[d,mlp] (compute ceiling)": (2048, d, mlp)}
    for b in batch_sizes:
        shapes[f"decode [{b},d]x[d,mlp]"] = (b, d, mlp)
        shapes[f"decode LM head [{b},d]x[d,V]"] = (b, d, vocab)
    return {name: measure_gemm_flops(shape, threads=threads, repeats=5) / 1e9 for name, shape in shapes.items()}


def _profile_step(engine, model, prompt_ids: list[int], batch: int, context: int, static: bool) -> dict[str, float]:
    """Wall ms of one decode step at ``batch`` rows and ``context`` cached tokens, split by op category (torch
    profiler self time on the calling thread) and the remainder (Python, module dispatch, framework overhead)."""
    from torch.profiler import ProfilerActivity, profile

    from entropo.rollout.hf import _sample_step, _sample_step_fast
    from entropo.rollout.kv import preallocated_cache
    from transformers import DynamicCache

    steps = 6
    vocab = model.config.vocab_size
    ids = torch.tensor([prompt_ids] * batch)
    width = ids.shape[1]
    cache = preallocated_cache(model, context + steps + 2) if static else DynamicCache(config=model.config)
    filler = torch.randint(4, min(1000, vocab), (batch, context - width), generator=torch.Generator().manual_seed(0))
    full = torch.cat([ids, filler], 1)
    with torch.no_grad():
        model(input_ids=full, past_key_values=cache, use_cache=True, logits_to_keep=1)
        attention = torch.ones(batch, context + steps + 2, dtype=torch.long)
        token = torch.randint(4, min(1000, vocab), (batch, 1), generator=torch.Generator().manual_seed(1))

        def step(i):
            return model(input_ids=token, attention_mask=attention[:, :context + i + 1],
                         position_ids=torch.full((batch, 1), context + i), past_key_values=cache, use_cache=True)

        out = step(0)  # warm-up
        walls = []
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(1, steps):
                t = time.perf_counter()
                out = step(i)
                walls.append(time.perf_counter() - t)
        sample = _sample_step_fast if static else _sample_step
        logits = out.logits[:, -1, :]
        generator = torch.Generator().manual_seed(0)
        sample_times = []
        for _ in range(5):
            x = logits.clone()
            t = time.perf_counter()
            sample(x, 1.0, 1.0, generator)
            sample_times.append(time.perf_counter() - t)
    n = len(walls)
    categories = {"gemm": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
                  "attention": ("scaled_dot_product", "flash_attention"),
                  "cache": ("aten::cat", "aten::copy_", "aten::index", "aten::slice")}
    split = {k: 0.0 for k in (*categories, "other_ops")}
    for ev in prof.key_averages():
        us = ev.self_cpu_time_total
        for cat, names in categories.items():
            if any(name in ev.key for name in names):
                split[cat] += us
                break
        else:
            split["other_ops"] += us
    wall_ms = statistics.median(walls) * 1e3
    result = {k: v / n / 1e3 for k, v in split.items()}  # ms per step
    result["python_and_framework"] = max(0.0, wall_ms - sum(result.values()))
    result["forward_wall"] = wall_ms
    result["sampling_step"] = statistics.median(sample_times) * 1e3
    return result


def _timed(fn, repeats_out: list[float]):
    t = time.perf_counter()
    value = fn()
    repeats_out.append(time.perf_counter() - t)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side and setting; median reported")
    parser.add_argument("--profile-batch", type=int, default=16)
    parser.add_argument("--skip-multiturn", action="store_true")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--observation-words", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results/2026-11-29-decode.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from entropo.envs.base import EnvFactory, Environment, StepResult
    from entropo.models import load
    from entropo.models.pull import KNOWN_MODELS, is_cached
    from entropo.rollout.episodes import EpisodeLimits
    from entropo.rollout.hf import HFEngine
    from entropo.rollout.tree import HFTreeEngine
    from entropo.types import Example

    if args.model in KNOWN_MODELS and not is_cached(args.model):
        print(f"SKIP: {args.model} is not cached; run `entropo models pull {args.model}` first")
        return 0
    results: dict = {"script": "benchmarks/generate_speed.py", "args": vars(args), "load_before": _load(),
                     "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                 "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "threads": args.threads}}
    print(f"load average before: {results['load_before']}")
    t0 = time.perf_counter()
    model, tokenizer = load(args.model)
    model.eval()
    import transformers
    results["machine"]["transformers"] = transformers.__version__
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"load {args.model}: {time.perf_counter() - t0:.2f} s, {n_params:,} params ({weight_bytes / 1e6:.0f} MB)")

    # ---- machine limits --------------------------------------------------------------------------------------------
    bw = _bandwidth()
    gemm = _gemm(model, args.threads, args.batch_sizes)
    results["limits"] = {"bandwidth": bw, "gemm_GFLOPs": gemm, "params": n_params, "weight_bytes": weight_bytes}
    print(f"memory bandwidth: read {bw['read_GBps']:.1f} GB/s, copy {bw['copy_GBps']:.1f} GB/s (read + write)")
    for name, rate in gemm.items():
        print(f"GEMM {name:40s} {rate:7.1f} GFLOP/s")

    engine_ref = HFEngine(model, tokenizer, static_kv_cache=False)
    engine = HFEngine(model, tokenizer)
    eos_ids = engine.eos_token_ids
    eos_bias = torch.zeros(model.config.vocab_size)
    eos_bias[eos_ids] = float("-inf")
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + eos_bias)

    chat = not args.model == "tiny"
    question = ([{"role": "user", "content": "What is 7 + 5? Answer with just the number."}] if chat
                else "7+5=")
    prompt_ids = engine.encode_prompt(question)
    prompt_text = engine.format_prompt(question)
    try:
        # ---- where one decode step's time goes ---------------------------------------------------------------------
        context = len(prompt_ids) + args.new_tokens // 2
        profile = {name: _profile_step(engine, model, prompt_ids, args.profile_batch, context, static)
                   for name, static in (("reference (DynamicCache)", False), ("static", True))}
        results["profile_step_ms"] = {"batch": args.profile_batch, "context": context, **profile}
        print(f"\none decode step, batch {args.profile_batch}, {context} cached tokens (ms):")
        keys = list(next(iter(profile.values())))
        print("| path | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for name, row in profile.items():
            print(f"| {name} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")

        # ---- throughput: generate vs engine (reference and static) -------------------------------------------------
        results["throughput"] = {}
        for batch in args.batch_sizes:
            encoded = tokenizer([prompt_text] * batch, return_tensors="pt", add_special_tokens=not chat)

            def run_generate():
                torch.manual_seed(0)
                out = model.generate(**encoded, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
                return (out.shape[1] - encoded["input_ids"].shape[1]) * batch, None

            def run_engine(e):
                def fn():
                    out = e.generate([question], batch, temperature=1.0, max_new_tokens=args.new_tokens,
                                     generator=torch.Generator().manual_seed(0))
                    return sum(out.num_tokens), out
                return fn

            sides = {"generate": run_generate, "engine-ref": run_engine(engine_ref), "engine": run_engine(engine)}
            times = {name: [] for name in sides}
            outs = {}
            for name, fn in sides.items():
                fn()  # warm-up
            for _ in range(args.repeats):
                for name, fn in sides.items():
                    tokens, outs[name] = _timed(fn, times[name])
            row = {"tokens": tokens}
            for name in sides:
                med = statistics.median(times[name])
                row[name] = {"s": med, "tok_per_s": tokens / med, "runs_s": times[name]}
            a, b = outs["engine-ref"], outs["engine"]
            same_ids = torch.equal(a.input_ids, b.input_ids)
            max_dlp = float((a.behaviour_logprobs - b.behaviour_logprobs).abs().max())
            row["ratio_engine_vs_generate"] = row["engine"]["tok_per_s"] / row["generate"]["tok_per_s"]
            row["ratio_engine_ref_vs_generate"] = row["engine-ref"]["tok_per_s"] / row["generate"]["tok_per_s"]
            row["ratio_engine_vs_engine_ref"] = row["engine"]["tok_per_s"] / row["engine-ref"]["tok_per_s"]
            row["same_ids_as_reference"] = same_ids
            row["max_abs_logprob_diff_vs_reference"] = max_dlp
            step_s = row["engine"]["s"] / args.new_tokens
            row["engine_ms_per_step"] = step_s * 1e3
            row["floor_ms_per_step_bandwidth"] = weight_bytes / (bw["read_GBps"] * 1e9) * 1e3
            row["floor_ms_per_step_gemm"] = 2 * n_params * batch / (max(gemm.values()) * 1e9) * 1e3
            results["throughput"][str(batch)] = row
            print(f"\nbatch {batch}: {tokens} new tokens, prompt {len(prompt_ids)} tokens, median of {args.repeats}")
            for name in sides:
                print(f"  {name:10s} {row[name]['s']:6.2f} s  {row[name]['tok_per_s']:7.1f} tok/s")
            print(f"  engine / generate {row['ratio_engine_vs_generate']:.2f}x, engine-ref / generate "
                  f"{row['ratio_engine_ref_vs_generate']:.2f}x, engine / engine-ref "
                  f"{row['ratio_engine_vs_engine_ref']:.2f}x; same ids as reference: {same_ids}, "
                  f"max |d logprob| {max_dlp:.1e}")
            print(f"  engine {row['engine_ms_per_step']:.1f} ms/step vs floors: weights/bandwidth "
                  f"{row['floor_ms_per_step_bandwidth']:.1f} ms, FLOPs/GEMM-ceiling {row['floor_ms_per_step_gemm']:.1f}"
                  f" ms")

        # ---- multi-turn and tree: re-prefill vs K/V reuse ----------------------------------------------------------
        if not args.skip_multiturn:
            observation = " ".join(["value"] * args.observation_words)

            class Tool(Environment):
                observation_role = "tool"
                max_turns = args.turns

                def reset(self, example, seed):
                    self.turn = 0
                    return example.prompt

                def step(self, action):
                    self.turn += 1
                    return StepResult(observation=observation, reward=0.0, done=self.turn >= args.turns)

            prompts = [Example(prompt=question),
                       Example(prompt=([{"role": "user", "content": "What is 12 * 3? Think step by step."}] if chat
                                       else "12*3="))]
            per_prompt = args.batch_sizes[0] // 2
            cases = {
                "multi-turn": dict(
                    engines={"re-prefill (reference loop)": HFEngine(model, tokenizer, static_kv_cache=False),
                             "re-prefill (static)": HFEngine(model, tokenizer, reuse_prefix_kv=False),
                             "kv reuse": HFEngine(model, tokenizer)},
                    call=lambda e: e.generate(prompts, per_prompt, max_new_tokens=args.new_tokens // 2,
                                              generator=torch.Generator().manual_seed(0),
                                              environment=EnvFactory(Tool), limits=EpisodeLimits())),
                "tree": dict(
                    engines={"re-prefill (reference loop)": HFTreeEngine(model, tokenizer, static_kv_cache=False),
                             "re-prefill (static)": HFTreeEngine(model, tokenizer, reuse_prefix_kv=False),
                             "kv reuse": HFTreeEngine(model, tokenizer)},
                    call=lambda e: e.generate([p.prompt for p in prompts], per_prompt,
                                              max_new_tokens=args.new_tokens,
                                              generator=torch.Generator().manual_seed(0))),
            }
            results["reuse"] = {}
            for case, spec in cases.items():
                times = {name: [] for name in spec["engines"]}
                outs = {}
                for _ in range(max(1, args.repeats - 1)):
                    for name, e in spec["engines"].items():
                        outs[name] = _timed(lambda: spec["call"](e), times[name])
                ref = outs["re-prefill (reference loop)"]
                rows = {}
                for name, e in spec["engines"].items():
                    out = outs[name]
                    med = statistics.median(times[name])
                    rows[name] = {"s": med, "runs_s": times[name], "policy_tokens": sum(out.num_tokens),
                                  "policy_tok_per_s": sum(out.num_tokens) / med, "kv_stats": dict(e.kv_stats),
                                  "same_ids_as_reference": torch.equal(ref.input_ids, out.input_ids),
                                  "max_abs_logprob_diff_vs_reference":
                                      float((ref.behaviour_logprobs - out.behaviour_logprobs).abs().max())}
                base = rows["re-prefill (reference loop)"]["s"]
                for row in rows.values():
                    row["speedup_vs_reference"] = base / row["s"]
                results["reuse"][case] = rows
                print(f"\n{case}: {len(prompts)} prompts x {per_prompt}"
                      + (f", {args.turns} turns, {args.new_tokens // 2} tokens per action, "
                         f"{args.observation_words}-word observations" if case == "multi-turn" else
                         f", {args.new_tokens} tokens, hf_tree defaults (N=3 forks, B=2 branches)"))
                print("| path | s | policy tok/s | speed-up | prefilled ctx tokens | reused ctx tokens | same ids |")
                print("|---|---|---|---|---|---|---|")
                for name, row in rows.items():
                    print(f"| {name} | {row['s']:.2f} | {row['policy_tok_per_s']:.1f} | "
                          f"{row['speedup_vs_reference']:.2f}x | {row['kv_stats']['prefilled_tokens']} | "
                          f"{row['kv_stats']['reused_tokens']} | {row['same_ids_as_reference']} "
                          f"({row['max_abs_logprob_diff_vs_reference']:.0e}) |")
    finally:
        hook.remove()
    results["load_after"] = _load()
    print(f"\nload average after: {results['load_after']}")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
