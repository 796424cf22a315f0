"""Multi-turn throughput of the Python-tool recipe: tokens/s and episodes/s of the `hf` engine playing `tir_tiny`'s
episodes (sandboxed interpreter calls), and the share of wall time the loop spends waiting on the tool.

One invocation warms the tiny model up on worked tool episodes (the recipe's SFT, so it calls the tool), then plays the
same held-out prompts with the same seed under each environment backend:

- ``thread x1``: environment steps one at a time (``env_workers=1``), the serial baseline;
- ``thread x8``: the default pool, steps of different episodes concurrently;
- ``ray x2``: each episode's environment in one of 2 Ray actors (``rollout.env_backend=ray``; skipped without Ray).

The sampled ids are checked identical across backends (the tool is deterministic), so the backends do the same work;
ratios are against ``thread x1``.

    python benchmarks/multiturn_throughput.py [--prompts 32] [--n 8] [--threads 1] [--out results.json]

A real model (SmolLM2-135M-Instruct, the ``tir_smollm2`` recipe: 3-digit multiplication with the sandboxed Python
tool, 48 tokens per turn, <= 3 turns), a few episodes so it stays within a few CPU-minutes:

    python benchmarks/multiturn_throughput.py --recipe tir_smollm2 --prompts 4 --n 4 --backends thread \
        --set warmup.steps=4 --out benchmarks/results/<date>-multiturn-smollm2.json

``--set`` overrides the recipe (e.g. fewer SFT warm-up steps); ``--backends thread`` skips Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from entropo.cli import RECIPES_DIR
from entropo.config import load_recipe
from entropo.envs.base import EnvFactory
from entropo.trainer import episode_limits, setup


def play(run, examples, n: int, environment, workers: int) -> dict:
    engine = run.engine
    engine.env_workers = workers
    gen = torch.Generator().manual_seed(1234)
    t0 = time.perf_counter()
    out = engine.generate(examples, n, temperature=1.0, max_new_tokens=run.recipe.rollout.max_new_tokens,
                          generator=gen, environment=environment, env_seed=99, limits=episode_limits(run.recipe))
    wall = time.perf_counter() - t0
    timing = dict(engine.last_timing)
    episodes = len(out.episodes)
    tokens = int(out.response_mask.sum())
    calls = sum(e.tool_calls for e in out.episodes)
    return {"wall_s": wall, "episodes_per_s": episodes / wall, "policy_tokens_per_s": tokens / wall,
            "tool_calls_per_episode": calls / episodes, "turns_per_episode": sum(e.num_turns for e in out.episodes)
            / episodes, "env_wait_share": timing["env_s"] / wall, "sample_share": timing["sample_s"] / wall,
            "timing": timing, "ids": out.input_ids.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    ap.add_argument("--recipe", default="tir_tiny", help="a multi-turn tool recipe (default tir_tiny)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    ap.add_argument("--backends", default="thread,ray", help="comma-separated: thread (x1 and x8), ray (x2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backends = {b.strip() for b in args.backends.split(",")}
    recipe = load_recipe(RECIPES_DIR / f"{args.recipe}.yaml",
                         ["logging.progress=false", "logging.tensorboard=false", "logging.plots=false",
                          "checkpoint.every=0", "eval.max_prompts=1", "eval.n=1", "eval.k=[1]", *args.set])
    with tempfile.TemporaryDirectory() as tmp:
        t_setup = time.perf_counter()
        run = setup(recipe, Path(tmp) / "run", resume=False, console=lambda *_: None)  # includes the SFT warm-up
        setup_s = time.perf_counter() - t_setup
        examples = run.task.eval_examples()[: args.prompts]
        local = EnvFactory(run.environment.cls, run.environment.params)
        sides = {"thread x1": (local, 1), "thread x8": (local, 8)}
        try:
            if "ray" in backends:
                from entropo.envs.ray_pool import RayEnvFactory

                sides["ray x2"] = (RayEnvFactory(local.cls, local.params, workers=2, num_cpus=2), 8)
        except ImportError:
            pass
        load0 = os.getloadavg()[0]
        res = {name: play(run, examples, args.n, env, workers) for name, (env, workers) in sides.items()}
        run.rewards.close()
    base = res["thread x1"]
    same = {name: r.pop("ids") == base["ids"] for name, r in res.items() if name != "thread x1"}
    base.pop("ids")
    print(f"{args.prompts} prompts x {args.n} episodes of {args.recipe} (sandboxed Python tool; model "
          f"{recipe.model.name_or_path}, set-up incl. SFT warm-up {setup_s:.0f} s), torch threads "
          f"{args.threads}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'backend':10} {'wall s':>7} {'episodes/s':>11} {'tokens/s':>9} {'calls/ep':>9} {'turns/ep':>9} "
          f"{'env wait':>9} {'sampling':>9} {'speed-up':>9}")
    for name, r in res.items():
        print(f"{name:10} {r['wall_s']:7.1f} {r['episodes_per_s']:11.2f} {r['policy_tokens_per_s']:9.1f} "
              f"{r['tool_calls_per_episode']:9.2f} {r['turns_per_episode']:9.2f} {r['env_wait_share']:9.0%} "
              f"{r['sample_share']:9.0%} {base['wall_s'] / r['wall_s']:8.2f}x")
    print("same samples as thread x1: " + ", ".join(f"{k}: {v}" for k, v in same.items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"results": res, "same_samples": same, "args": vars(args),
                                              "recipe": args.recipe, "model": recipe.model.name_or_path,
                                              "setup_s": setup_s,
                                              "load": [load0, os.getloadavg()[0]],
                                              "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))


if __name__ == "__main__":
    main()
