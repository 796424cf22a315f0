"""Where entropo's peak RSS comes from, phase by phase, on the cells of ``trl_vs_entropo.py``.

    PYTHONPATH=$PWD python benchmarks/memory_profile.py --config smollm2 --cells 1:off [--set train.x=y ...]

Runs one entropo trial in this process (the same recipe as the side-by-side benchmark's entropo side) while a thread
samples the resident set size (``/proc/self/statm``) every 2 ms, and records the largest RSS seen inside each phase
(set-up, rollout, score, update: forward+backward, optimizer step) and the RSS at each phase's start and end. It prints
the phases and a breakdown of the fixed state: weights, gradients, AdamW moments (bytes of the tensors themselves)
and a frozen reference model when the cell has one. ``tracemalloc`` does not see torch's allocations; RSS does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class RssSampler(threading.Thread):
    """Samples RSS every ``interval`` s; ``phase(name)`` opens a phase whose peak is tracked until the next one."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval = interval
        self.current = "start"
        self.peaks: dict[str, float] = {}
        self.marks: list[tuple[str, float, float]] = []  # (phase, t, rss at start)
        self.t0 = time.perf_counter()
        self._halt = threading.Event()

    def phase(self, name: str) -> None:
        value = rss_mb()
        self.marks.append((name, time.perf_counter() - self.t0, value))
        print(f"  {self.marks[-1][1]:7.2f} s  {value:7.0f} MB  start of {name} (peak of {self.current}: "
              f"{self.peaks.get(self.current, 0.0):.0f} MB)", flush=True)
        self.current = name
        self.peaks[name] = max(self.peaks.get(name, 0.0), value)

    def run(self) -> None:
        while not self._halt.is_set():
            value = rss_mb()
            name = self.current
            self.peaks[name] = max(self.peaks.get(name, 0.0), value)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def instrument(sampler: RssSampler, state: dict):
    """Wrap the trainer's phases (module attributes looked up at call time) so each marks its start and end."""
    from entropo import trainer

    def wrap(name: str, fn):
        def wrapped(*args, **kwargs):
            step = state["step"]
            sampler.phase(f"{step}:{name}")
            try:
                return fn(*args, **kwargs)
            finally:
                sampler.phase(f"{step}:after_{name}")
        return wrapped

    for name in ("rollout_phase", "score_phase", "advantage_phase"):
        setattr(trainer, name, wrap(name, getattr(trainer, name)))
    original_update = trainer.update_phase

    def update_phase(run, batch, ctx):
        state["run"] = run
        opt = run.optimizer
        if not getattr(opt, "_profiled", False):
            step_fn = opt.step

            def step(*a, **k):
                sampler.phase(f"{state['step']}:optimizer_step")
                out = step_fn(*a, **k)
                sampler.phase(f"{state['step']}:after_optimizer_step")
                return out
            opt.step = step
            opt._profiled = True
        sampler.phase(f"{state['step']}:update_fwd_bwd")
        try:
            return original_update(run, batch, ctx)
        finally:
            sampler.phase(f"{state['step']}:after_update")
            state["step"] += 1
    trainer.update_phase = update_phase


def tensor_mb(tensors) -> float:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total / 2**20


def main() -> int:
    import trl_vs_entropo as bench
    from _entropo_side import entropo_recipe, total_steps

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smollm2", choices=sorted(bench.CONFIGS))
    p.add_argument("--cells", default="1:off")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE (yaml value)")
    p.add_argument("--out", default=None, help="append a JSON line with the result to this file")
    args = p.parse_args()
    import torch
    import yaml

    torch.set_num_threads(args.threads)
    cfg = bench.CONFIGS[args.config]
    epochs, kl_on = bench.parse_cells(args.cells)[0]
    ns = argparse.Namespace(warmup=args.warmup, steps=args.steps, threads=args.threads, entropo_old_logprobs="auto",
                            entropo_activation_checkpointing=False, entropo_activation_memory_mb=None,
                            entropo_reference_resident=True, trl_gradient_checkpointing=True)
    with tempfile.TemporaryDirectory(prefix="memprof-") as tmp:
        model_path = bench.prepare_model(cfg, Path(tmp))
        spec = bench.make_spec(cfg, model_path, epochs, kl_on, ns)
        recipe = entropo_recipe(spec, tmp)
        data = recipe.model_dump(mode="json")
        for item in args.set:
            key, value = item.split("=", 1)
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = yaml.safe_load(value)
        recipe = type(recipe).model_validate(data)
        from entropo.trainer import train

        sampler = RssSampler()
        state = {"step": 0}
        instrument(sampler, state)
        sampler.phase("setup")
        sampler.start()
        t0 = time.perf_counter()
        train(recipe, stop_after=total_steps(spec), console=lambda _m: None)
        wall = time.perf_counter() - t0
        sampler.stop()
        run = state["run"]
        params = [q for q in run.model.parameters()]
        fixed = {
            "weights_mb": tensor_mb(params),
            "grads_mb": tensor_mb([q.grad for q in params]),
            "adamw_moments_mb": tensor_mb([v for s in run.optimizer.state.values() for v in s.values()
                                          if torch.is_tensor(v) and v.dim() > 0]),
            "reference_mb": tensor_mb(list(run.ref_model.parameters()))
            if run.ref_model is not None and run.ref_model is not run.model else 0.0,
        }
    peaks = {k: round(v) for k, v in sampler.peaks.items()}
    result = {"cell": args.cells, "set": args.set, "wall_s": round(wall, 1), "fixed": {k: round(v) for k, v in fixed.items()},
              "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "phase_peaks_mb": peaks,
              "marks": [(n, round(t, 2), round(v)) for n, t, v in sampler.marks]}
    print(json.dumps({k: v for k, v in result.items() if k != "marks"}, indent=1))
    for n, t, v in result["marks"]:
        print(f"  {t:7.2f} s  {v:7.0f} MB  {n}")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
