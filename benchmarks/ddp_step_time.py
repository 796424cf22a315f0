"""Data-parallel (replicated ``ddp`` and sharded ``fsdp``) vs one process on this CPU: RL step time and peak memory
at an equal global batch, in one invocation.

Every side trains the same recipe for the same steps with ``rollout.shards=2`` (so they sample exactly the same rows):
one process with ``train.threads`` threads, and ``torchrun --nproc-per-node 2`` with gloo for each mode in
``--modes``, each process with ``threads / 2`` threads (the same cores in all). Reported: median ``time/step_s`` after
the first step, per phase (rollout, score, update), the ratio 2-process / 1-process, rank 0's peak RSS
(``peak_mem_mb``), and whether the final weights agree (max |Δ|). On a 2-core machine expect a time ratio near or
above 1: the point of the check is equivalence and the overhead of the gathers, not a speed-up; fsdp's point is the
per-process memory of weights + gradients + AdamW moments (16 bytes per parameter, divided by the processes).

    python benchmarks/ddp_step_time.py [--steps 4] [--threads 2] [--recipe demo] [--modes ddp fsdp]
                                       [--set k=v ...] [--out benchmarks/results/ddp.json]
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


def run_side(procs: int, recipe: str, overrides: list[str], work: Path, threads: int, mode: str = "none") -> dict:
    run_dir = work / f"p{procs}-{mode}"
    spec = work / f"p{procs}-{mode}.json"
    overrides = overrides + [f"train.distributed={mode}"]
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
    return {"run_dir": str(run_dir), **med, "peak_mem_mb": max(r["peak_mem_mb"] for r in rows),
            "train_state_mb": rows[-1]["memory/train_state_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--modes", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    ap.add_argument("--set", dest="sets", nargs="*", default=[], help="extra recipe overrides for every side")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    overrides = [f"train.steps={args.steps}", "rollout.shards=2", "eval.max_prompts=8",
                 "checkpoint.every=0", "logging.progress=false", "logging.plots=false",
                 "logging.tensorboard=false"] + args.sets
    sys.path.insert(0, str(ROOT))
    from entropo import checkpoint

    with tempfile.TemporaryDirectory(prefix="entropo-ddp-bench-") as tmp:
        work = Path(tmp)
        sides = {"one_process": run_side(1, args.recipe, overrides, work, args.threads)}
        for mode in args.modes:
            sides[f"two_processes_{mode}"] = run_side(2, args.recipe, overrides, work, args.threads, mode)
        base = checkpoint.load(checkpoint.latest(sides["one_process"]["run_dir"]))["model"]
        for side in sides.values():
            w = checkpoint.load(checkpoint.latest(side.pop("run_dir")))["model"]
            side["weights_max_abs_diff"] = max(float((base[k] - w[k]).abs().max()) for k in base)
    one = sides["one_process"]
    result = {"recipe": args.recipe, "steps": args.steps, "threads_total": args.threads, "overrides": args.sets,
              "load_average": os.getloadavg(), **sides,
              **{f"ratio_step_time_{m}": sides[f"two_processes_{m}"]["time/step_s"] / one["time/step_s"]
                 for m in args.modes},
              **{f"ratio_peak_mem_{m}": sides[f"two_processes_{m}"]["peak_mem_mb"] / one["peak_mem_mb"]
                 for m in args.modes}}
    names = list(sides)
    print(f"{'':<16}" + "".join(f"{n.replace('two_processes_', '2 proc '):>16}" for n in names))
    for k in ("time/step_s", "time/rollout_s", "time/score_s", "time/update_s", "peak_mem_mb", "train_state_mb",
              "weights_max_abs_diff"):
        print(f"{k:<16}" + "".join(f"{sides[n][k]:>16.4g}" for n in names))
    for m in args.modes:
        print(f"{m}: step time {result[f'ratio_step_time_{m}']:.2f}x, rank-0 peak RSS {result[f'ratio_peak_mem_{m}']:.2f}x"
              f", weights + AdamW state per process "
              f"{sides[f'two_processes_{m}']['train_state_mb'] / one['train_state_mb']:.2f}x of one process")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
