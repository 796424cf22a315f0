"""This machine's attainable fp32 GEMM rate (FLOP/s) for a few shapes: the ceiling against which the RL phases'
achieved FLOP/s are read (benchmarks/trl_vs_entropo.py reports the update and scoring phases as a fraction of it).

    python benchmarks/gemm.py [--threads 2] [--repeats 5]

Shapes are [m, k] x [k, n] products typical of SmolLM2-135M (d = 576, MLP 1536, vocab 49152) on m tokens, plus a
square one. The median over repeats is printed.
"""

from __future__ import annotations

import argparse

import torch

from entropo.perf import measure_gemm_flops

SHAPES = {
    "square 1024": (1024, 1024, 1024),
    "MLP up   [2048,576]x[576,1536]": (2048, 576, 1536),
    "MLP down [2048,1536]x[1536,576]": (2048, 1536, 576),
    "attn qkv [2048,576]x[576,576]": (2048, 576, 576),
    "LM head  [512,576]x[576,49152]": (512, 576, 49152),
    "tiny MLP [2048,64]x[64,256]": (2048, 64, 256),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, median of {args.repeats}")
    for name, shape in SHAPES.items():
        rate = measure_gemm_flops(shape, threads=args.threads, repeats=args.repeats)
        print(f"{name:34s} {rate / 1e9:8.1f} GFLOP/s")


if __name__ == "__main__":
    main()
