"""LoRA vs full fine-tuning on SmolLM2-135M: peak memory and step time of the same RL steps, in one invocation.

Both sides run the same recipe (``smollm2_addition`` with a KL-to-reference term, as most RLHF/RLVR recipes have one)
for the same steps, each in its own subprocess so that its memory is its own: the kernel's ``VmHWM`` at exit (the
whole process, loading the GGUF model included) and the peak of ``VmRSS`` sampled every 20 ms once the first RL step
is logged (the training steady state: model, reference, optimizer state, activations). Full fine-tuning keeps AdamW moments and
gradients for every weight plus a frozen reference copy; LoRA keeps them for the adapters only, and its reference is
the base with the adapters off. Sides are interleaved over ``--trials``; medians are reported with ratios.

    python benchmarks/lora_vs_full.py [--steps 3] [--trials 1] [--threads 2] [--out benchmarks/results/lora.json]

Needs ``entropo models pull smollm2-135m-instruct`` and PEFT (``make setup`` installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = {
    "full": [],
    "lora": ["model.lora={r: 16, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, up_proj, down_proj, "
             "gate_proj]}", "optimizer.lr=2e-4"],
}

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from entropo.config import load_recipe
from entropo.logging import read_metrics
from entropo.trainer import train

ov, run_dir, threads = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
import threading
status = Path("/proc/self/status")
def rss_mb():
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
steady = {"peak": 0.0}
done = threading.Event()
def watch():  # peak RSS once step 1 is logged: the training steady state, without model loading
    metrics = Path(run_dir) / "metrics.jsonl"
    while not done.is_set():
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            steady["peak"] = max(steady["peak"], rss_mb())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
recipe = load_recipe(Path(sys.argv[4]), ov)
train(recipe, run_dir=run_dir, console=lambda *_: None)
done.set()
rows = [r for r in read_metrics(run_dir) if not r.get("final")]
def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
trainable = None
print(json.dumps({"step_s": [r["time/step_s"] for r in rows], "update_s": [r.get("time/update_s") for r in rows],
                  "peak_rss_mb": hwm(), "steady_rss_mb": steady["peak"], "reward": [r["reward/mean"] for r in rows]}))
"""


def run_side(side: str, steps: int, threads: int, recipe: Path) -> dict:
    ov = [f"train.steps={steps}", "regularizers=[{name: kl, coef: 0.04, params: {kind: k3}}]", "eval.max_prompts=4",
          "eval.n=1", "eval.k=[1]", "eval.every=0", "checkpoint.every=0", "logging.progress=false",
          "logging.tensorboard=false", "logging.plots=false", *SIDES[side]]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(ov), str(Path(tmp) / "run"), str(threads),
                              str(recipe)], capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default=str(Path(__file__).resolve().parent.parent / "recipes" / "smollm2_addition.yaml"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    res: dict[str, list[dict]] = {s: [] for s in SIDES}
    for _ in range(args.trials):
        for side in SIDES:
            res[side].append(run_side(side, args.steps, args.threads, Path(args.recipe)))
    summary = {}
    for side, trials in res.items():
        steps = [s for t in trials for s in t["step_s"][1:]]  # the first step warms caches
        summary[side] = {"peak_rss_mb": statistics.median(t["peak_rss_mb"] for t in trials),
                         "steps_rss_mb": statistics.median(t["steady_rss_mb"] for t in trials),
                         "step_s": statistics.median(steps),
                         "update_s": statistics.median(u for t in trials for u in t["update_s"][1:] if u is not None)}
    ratio = {k: summary["lora"][k] / summary["full"][k] for k in summary["full"]}
    print(f"{'':10} {'peak RSS MB':>12} {'steps 2+ MB':>12} {'step s':>8} {'update s':>9}")
    for side, s in summary.items():
        print(f"{side:10} {s['peak_rss_mb']:12.0f} {s['steps_rss_mb']:12.0f} {s['step_s']:8.2f} {s['update_s']:9.2f}")
    print(f"{'lora/full':10} {ratio['peak_rss_mb']:12.2f} {ratio['steps_rss_mb']:12.2f} {ratio['step_s']:8.2f} "
          f"{ratio['update_s']:9.2f}")
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {args.threads} threads, "
          f"{args.steps} steps x {args.trials} trial(s)")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "ratio": ratio, "raw": res, "args": vars(args),
                                              "load": [load0, os.getloadavg()[0]],
                                              "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))


if __name__ == "__main__":
    main()
