"""vLLM (CPU build) vs the embedded HF engine: rollout tokens/s on the same prompts and weights, in one invocation,
plus the engine-vs-trainer log-prob gap and the weight-push time.

Runs in the vLLM environment (``make test-vllm`` builds ``.venv-vllm``):

    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py [--model tiny|smollm2-135m-instruct] [--prompts 32] [--n 4]
        [--max-new-tokens 64] [--trials 2] [--threads 2] [--out benchmarks/results/vllm.json]

Both engines sample ``n`` completions of every prompt at temperature 1 with ``ignore_eos``-free decoding; the token
count is what each actually generated. Sides alternate over ``--trials``; medians are reported with the ratio
vLLM / HF. The tiny model is built with head size 64 (vLLM's CPU attention kernels do not take 16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from entropo import models
    from entropo.rollout.hf import HFEngine
    from entropo.rollout.vllm_engine import VLLMEngine
    from entropo import registry
    from entropo.trainer import score_tokens
    from entropo.batch import Batch

    if args.model == "tiny":
        model, tok = models.tiny(seed=0, hidden_size=128, num_heads=2, num_layers=2, intermediate_size=256)
        task = registry.get("task", "arithmetic")(seed=0, eval_size=8, digits=2, chat=False, template="{expr}=")
    else:
        model, tok = models.load(args.model, dtype="float32")
        task = registry.get("task", "arithmetic")(seed=0, eval_size=8, digits=2, chat=True)
    prompts = [task.train_example(i) for i in range(args.prompts)]
    hf = HFEngine(model, tok, max_batch_size=args.prompts * args.n)
    t0 = time.perf_counter()
    vl = VLLMEngine(model, tok, dtype="float32", max_batch_size=args.prompts * args.n, seed=0)
    startup = time.perf_counter() - t0
    times: dict[str, list[float]] = {"hf": [], "vllm": []}
    tokens: dict[str, list[float]] = {"hf": [], "vllm": []}
    gap = None
    for trial in range(args.trials):
        for name, engine in (("hf", hf), ("vllm", vl)):
            gen = torch.Generator().manual_seed(trial)
            t0 = time.perf_counter()
            out = engine.generate(prompts, args.n, temperature=1.0, max_new_tokens=args.max_new_tokens,
                                  generator=gen)
            times[name].append(time.perf_counter() - t0)
            tokens[name].append(float(out.response_mask.sum()))
            if name == "vllm" and gap is None:
                b = Batch(input_ids=out.input_ids, attention_mask=out.attention_mask,
                          response_mask=out.response_mask.float(), rewards=torch.zeros(len(out.completions)),
                          group_ids=out.prompt_index)
                lp, _, _ = score_tokens(model, b, temperature=1.0, micro_batch_size=64, chunk_size=1024)
                mask = out.response_mask > 0
                gap = float((out.behaviour_logprobs[mask] - lp[mask]).abs().max())
    t0 = time.perf_counter()
    vl.after_update(model)
    push = time.perf_counter() - t0
    tps = {k: statistics.median(t / s for t, s in zip(tokens[k], times[k])) for k in times}
    result = {"model": args.model, "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
              "threads": args.threads, "tokens_per_s": tps, "ratio_vllm_over_hf": tps["vllm"] / tps["hf"],
              "seconds": {k: statistics.median(v) for k, v in times.items()}, "vllm_startup_s": startup,
              "weight_push_s": push, "max_abs_logprob_gap": gap}
    print(f"tokens/s  hf {tps['hf']:.0f}  vllm {tps['vllm']:.0f}  ratio vllm/hf {result['ratio_vllm_over_hf']:.2f}")
    print(f"vLLM start-up {startup:.1f} s, weight push {push:.2f} s, max |log-prob gap| {gap:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
