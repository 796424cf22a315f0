"""Rollout time with and without shared prompt prefill (``HFEngine(share_prompt_prefill=...)``), one process.

A group of n samples of one prompt needs the prompt's KV cache once; sharing prefills each distinct prompt once and
copies the cache to its n rows. Same model, prompts (the built-in arithmetic task as chat messages), n, and number
of new tokens (``min_new_tokens`` = ``max_new_tokens``, so both sides decode the same tokens); the two settings are
interleaved over repeats and medians reported. Needs the cached SmolLM2 model (``entropo models pull
smollm2-135m-instruct``); ``--model tiny`` runs anywhere.

    python benchmarks/prefill_sharing.py [--model smollm2-135m-instruct] [--prompts 8] [--n 8] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from entropo.models import load
    from entropo.models.pull import KNOWN_MODELS, is_cached
    from entropo.registry import get
    from entropo.rollout.hf import HFEngine

    if args.model in KNOWN_MODELS and not is_cached(args.model):
        print(f"SKIP: {args.model} is not cached; run `entropo models pull {args.model}` first")
        return 0
    model, tokenizer = load(args.model)
    model.eval()
    task = get("task", "arithmetic")(seed=0, eval_size=8, digits=1, chat=args.model != "tiny")
    prompts = [task.train_example(i).prompt for i in range(args.prompts)]
    engines = {share: HFEngine(model, tokenizer, share_prompt_prefill=share, min_new_tokens=args.new_tokens)
               for share in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    engines[True].generate(prompts[:1], 1, max_new_tokens=2)  # warm-up
    for _ in range(args.repeats):
        for share in (False, True):
            t0 = time.perf_counter()
            out = engines[share].generate(prompts, args.n, max_new_tokens=args.new_tokens,
                                          generator=torch.Generator().manual_seed(0))
            times[share].append(time.perf_counter() - t0)
            assert sum(out.num_tokens) == args.prompts * args.n * args.new_tokens
    prompt_tokens = sum(len(engines[True].encode_prompt(p)) for p in prompts) / len(prompts)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.model}: {args.prompts} prompts x n={args.n}, ~{prompt_tokens:.0f} prompt tokens, "
          f"{args.new_tokens} new tokens, {args.repeats} interleaved repeats (median)")
    print(f"| prefill | rollout s | tokens/s |\n|---|---|---|")
    for name, t in (("per row", off), ("shared per prompt", on)):
        print(f"| {name} | {t:.2f} | {args.prompts * args.n * args.new_tokens / t:.0f} |")
    print(f"speed-up (per row / shared): {off / on:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
