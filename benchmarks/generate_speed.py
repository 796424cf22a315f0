"""Generation throughput of entropo's HF rollout engine vs ``model.generate`` on SmolLM2-135M-Instruct (CPU, fp32).

Same process, same model, same prompts, same number of new tokens (EOS is suppressed on both sides so every row
generates exactly ``--new-tokens`` tokens). Prints tokens/s for both and the ratio engine / generate.
Needs the cached model (``entropo models pull smollm2-135m-instruct``); skips with a message otherwise.

    python benchmarks/generate_speed.py [--batch-sizes 8 32] [--new-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from entropo.models import load
    from entropo.models.pull import KNOWN_MODELS, is_cached
    from entropo.rollout.hf import HFEngine

    if args.model in KNOWN_MODELS and not is_cached(args.model):
        print(f"SKIP: {args.model} is not cached; run `entropo models pull {args.model}` first")
        return 0
    t0 = time.perf_counter()
    model, tokenizer = load(args.model)
    print(f"load {args.model}: {time.perf_counter() - t0:.2f} s, {sum(p.numel() for p in model.parameters()):,} params")

    engine = HFEngine(model, tokenizer)
    eos_ids = engine.eos_token_ids
    # Keep EOS from ending rows early on either side, so both generate the same number of tokens.
    eos_bias = torch.zeros(model.config.vocab_size)
    eos_bias[eos_ids] = float("-inf")
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + eos_bias)

    question = [{"role": "user", "content": "What is 7 + 5? Answer with just the number."}]
    prompt_text = engine.format_prompt(question)
    try:
        for batch_size in args.batch_sizes:
            # Engine: 1 prompt x batch_size samples.
            def run_engine():
                generator = torch.Generator().manual_seed(0)
                out = engine.generate([question], batch_size, temperature=1.0, max_new_tokens=args.new_tokens,
                                      generator=generator)
                return sum(out.num_tokens)

            encoded = tokenizer([prompt_text] * batch_size, return_tensors="pt", add_special_tokens=False)

            def run_hf_generate():
                torch.manual_seed(0)
                out = model.generate(**encoded, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
                return (out.shape[1] - encoded["input_ids"].shape[1]) * batch_size

            results = {}
            for name, fn in (("entropo", run_engine), ("generate", run_hf_generate)):
                fn()  # warm-up
                best = float("inf")
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    tokens = fn()
                    best = min(best, time.perf_counter() - t)
                results[name] = tokens / best
                print(f"batch {batch_size:3d} {name:9s}: {tokens} tokens in {best:.2f} s = {tokens / best:7.1f} tok/s")
            print(f"batch {batch_size:3d} ratio entropo/generate: {results['entropo'] / results['generate']:.2f}x")
    finally:
        hook.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
