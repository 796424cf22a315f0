"""LoRA vs full fine-tuning on SmolLM2-135M: peak memory and step time of the same RL steps, in one invocation.

Every side runs the same recipe (``smollm2_addition`` with a KL-to-reference term, as most RLHF/RLVR recipes have one)
for the same steps, each in its own subprocess so that its memory is its own: the kernel's ``VmHWM`` at exit (the
whole process, loading the model included), the peak of ``VmRSS`` sampled every 20 ms once the first RL step is
logged, and per trainer phase (set-up, evaluation, rollout, scoring, update) the resident memory at entry and its
peak inside. Full fine-tuning keeps AdamW moments and gradients for every weight plus a frozen reference copy; LoRA
keeps them for the adapters only, and its reference is the base with the adapters off. Sides:

- ``full``, ``lora``: the same work (same micro-batches, no recomputation);
- ``lora_ckpt``, ``full_ckpt``: with ``train.activation_checkpointing=true`` (per-layer recomputation);
- ``full_glibc``, ``lora_glibc``: with ``ENTROPO_MMAP_THRESHOLD=0``, i.e. glibc's default allocator behaviour, which
  keeps freed activation memory in the process (entropo/heap.py).

Sides are interleaved over ``--trials``; medians are reported with ratios to the first full side.

    python benchmarks/lora_vs_full.py [--steps 3] [--trials 1] [--threads 2] [--sides full,lora,lora_ckpt,lora_glibc]
                                      [--out benchmarks/results/lora.json]

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

LORA = ["model.lora={r: 16, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj, up_proj, down_proj, "
        "gate_proj]}", "optimizer.lr=2e-4"]
CKPT = ["train.activation_checkpointing=true"]
GLIBC = {"ENTROPO_MMAP_THRESHOLD": "0"}  # glibc's default allocator behaviour (entropo/heap.py switched off)
# side: (recipe overrides, environment)
SIDES = {
    "full": ([], {}),
    "lora": (LORA, {}),
    "lora_ckpt": (LORA + CKPT, {}),
    "full_ckpt": (CKPT, {}),
    "full_glibc": ([], GLIBC),
    "lora_glibc": (LORA, GLIBC),
}
DEFAULT_SIDES = "full,lora,lora_ckpt,lora_glibc"

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
import torch
from entropo import trainer
from entropo.config import load_recipe
from entropo.logging import read_metrics

ov, run_dir, threads = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
status = Path("/proc/self/status")
def rss_mb(field="VmRSS:"):
    for line in status.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
steady = {"peak": 0.0}
phase = {"now": "setup"}
phases = {}  # phase -> {"before": RSS at entry (max over calls), "peak": peak RSS inside}
done = threading.Event()
def watch():  # peak RSS per phase, and once step 1 is logged (the training steady state, without model loading)
    metrics = Path(run_dir) / "metrics.jsonl"
    while not done.is_set():
        rss = rss_mb()
        p = phases.setdefault(phase["now"], {"before": rss, "peak": 0.0})
        p["peak"] = max(p["peak"], rss)
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            steady["peak"] = max(steady["peak"], rss)
        time.sleep(0.02)
def tracked(name, fn):
    def wrapper(*a, **k):
        outer = phase["now"]
        p = phases.setdefault(name, {"before": 0.0, "peak": 0.0})
        p["before"] = max(p["before"], rss_mb())
        phase["now"] = name
        try:
            return fn(*a, **k)
        finally:
            phase["now"] = outer
    return wrapper
for name in ("load_model", "evaluate", "rollout_phase", "score_phase", "update_phase", "finish_run"):
    setattr(trainer, name, tracked(name, getattr(trainer, name)))
threading.Thread(target=watch, daemon=True).start()
recipe = load_recipe(Path(sys.argv[4]), ov)
trainer.train(recipe, run_dir=run_dir, console=lambda *_: None)
done.set()
rows = [r for r in read_metrics(run_dir) if not r.get("final")]
print(json.dumps({"step_s": [r["time/step_s"] for r in rows], "update_s": [r.get("time/update_s") for r in rows],
                  "peak_rss_mb": rss_mb("VmHWM:"), "steady_rss_mb": steady["peak"],
                  "phases_mb": {k: {kk: round(vv) for kk, vv in v.items()} for k, v in phases.items()},
                  "reward": [r["reward/mean"] for r in rows]}))
"""


def run_side(side: str, steps: int, threads: int, recipe: Path) -> dict:
    extra, env = SIDES[side]
    ov = [f"train.steps={steps}", "regularizers=[{name: kl, coef: 0.04, params: {kind: k3}}]", "eval.max_prompts=4",
          "eval.n=1", "eval.k=[1]", "eval.every=0", "checkpoint.every=0", "logging.progress=false",
          "logging.tensorboard=false", "logging.plots=false", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(ov), str(Path(tmp) / "run"), str(threads),
                              str(recipe)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
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
    ap.add_argument("--sides", default=DEFAULT_SIDES, help=f"comma-separated, from {', '.join(SIDES)}; the first "
                    f"full-fine-tuning side is the denominator of the ratios")
    args = ap.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown or not any(s.startswith("full") for s in sides):
        raise SystemExit(f"--sides: {unknown or 'no full side'}; choose from {', '.join(SIDES)} with one full side")
    base = next(s for s in sides if s.startswith("full"))
    load0 = os.getloadavg()[0]
    res: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(args.trials):
        for side in sides:
            res[side].append(run_side(side, args.steps, args.threads, Path(args.recipe)))
    summary = {}
    for side, trials in res.items():
        steps = [s for t in trials for s in t["step_s"][1:]]  # the first step warms caches
        summary[side] = {"peak_rss_mb": statistics.median(t["peak_rss_mb"] for t in trials),
                         "steps_rss_mb": statistics.median(t["steady_rss_mb"] for t in trials),
                         "step_s": statistics.median(steps),
                         "update_s": statistics.median(u for t in trials for u in t["update_s"][1:] if u is not None)}
    ratio = {side: {k: summary[side][k] / summary[base][k] for k in summary[base]} for side in sides}
    print(f"{'':12} {'peak RSS MB':>12} {'steps 2+ MB':>12} {'step s':>8} {'update s':>9}   ratios to {base}")
    for side, s in summary.items():
        r = ratio[side]
        print(f"{side:12} {s['peak_rss_mb']:12.0f} {s['steps_rss_mb']:12.0f} {s['step_s']:8.2f} {s['update_s']:9.2f}"
              f"   peak {r['peak_rss_mb']:.2f}  step {r['step_s']:.2f}  update {r['update_s']:.2f}")
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {args.threads} threads, "
          f"{args.steps} steps x {args.trials} trial(s)")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "ratio": ratio, "raw": res, "args": vars(args),
                                              "load": [load0, os.getloadavg()[0]],
                                              "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))


if __name__ == "__main__":
    main()
