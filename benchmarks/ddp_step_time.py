"""Data-parallel vs one process on this CPU: RL step time at an equal global batch, in one invocation.

Both sides train the same recipe for the same steps with ``rollout.shards=2`` (so they sample exactly the same rows):
one process with ``train.threads`` threads, and ``torchrun --nproc-per-node 2`` with gloo, each process with
``threads / 2`` threads (the same cores in all). Reported: median ``time/step_s`` after the first step, per phase
(rollout, score, update), the ratio 2-process / 1-process, and whether the final weights agree (max |Δ|). On a
2-core machine expect a ratio near or above 1: the point of the check is equivalence and the overhead of the
gathers and the gradient all-reduce, not a speed-up.

    python benchmarks/ddp_step_time.py [--steps 4] [--threads 2] [--recipe demo] [--out benchmarks/results/ddp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"


def run_side(procs: int, recipe: str, overrides: list[str], work: Path, threads: int) -> dict:
    run_dir = work / f"p{procs}"
    spec = work / f"p{procs}.json"
    spec.write_text(json.dumps({"recipe": recipe, "overrides": overrides + [f"train.threads={max(1, threads // procs)}"],
                                "run_dir": str(run_dir)}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, threads // procs))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = ([sys.executable, str(WORKER), str(spec)] if procs == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
            str(WORKER), str(spec)])
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{procs}-process run failed:\n{proc.stderr[-3000:]}")
    from entropo.logging import read_metrics

    rows = [r for r in read_metrics(run_dir) if "time/step_s" in r][1:]  # the first step warms caches up
    med = {k: statistics.median(r[k] for r in rows) for k in ("time/step_s", "time/rollout_s", "time/score_s",
                                                              "time/update_s")}
    return {"run_dir": str(run_dir), **med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    overrides = [f"train.steps={args.steps}", "train.distributed=ddp", "rollout.shards=2", "eval.max_prompts=8",
                 "checkpoint.every=0", "logging.progress=false", "logging.plots=false", "logging.tensorboard=false"]
    sys.path.insert(0, str(ROOT))
    from entropo import checkpoint

    with tempfile.TemporaryDirectory(prefix="entropo-ddp-bench-") as tmp:
        work = Path(tmp)
        one = run_side(1, args.recipe, overrides, work, args.threads)
        two = run_side(2, args.recipe, overrides, work, args.threads)
        wa = checkpoint.load(checkpoint.latest(one["run_dir"]))["model"]
        wb = checkpoint.load(checkpoint.latest(two["run_dir"]))["model"]
        max_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    result = {"recipe": args.recipe, "steps": args.steps, "threads_total": args.threads, "one_process": one,
              "two_processes": two, "weights_max_abs_diff": max_diff,
              "ratio_step_time": two["time/step_s"] / one["time/step_s"]}
    for side in ("one_process", "two_processes"):
        result[side].pop("run_dir")
    print(f"{'phase':<16}{'1 process':>12}{'2 processes':>14}{'ratio':>8}")
    for k in ("time/step_s", "time/rollout_s", "time/score_s", "time/update_s"):
        a, b = one[k], two[k]
        print(f"{k:<16}{a:>12.3f}{b:>14.3f}{(b / a if a else float('nan')):>8.2f}")
    print(f"final weights max |diff| = {max_diff:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
