"""Time to accuracy: entropo's recipe vs TRL's GRPOTrainer with its defaults, same task, equal wall time.

    PYTHONPATH=$PWD /work/venv-trl/bin/python benchmarks/time_to_accuracy.py --quick          # smoke, tiny model, ~2-4 min
    PYTHONPATH=$PWD /work/venv-trl/bin/python benchmarks/time_to_accuracy.py --minutes 20 --marks 4   # SmolLM2-135M
    ... --keep, then --from-dir /tmp/tta-XXXX   # evaluate/report a kept work dir again (finished evaluations reused)

(one interpreter with both entropo and trl: see benchmarks/README.md for the separate venv.)

Both sides train AT THE SAME TIME, each in its own subprocess with one torch thread (``torch.set_num_threads(1)``,
``OMP_NUM_THREADS=1``), for the same training-clock budget, so that both see the same contention on a shared machine
(the 1-minute load average is sampled every 30 s and stored). Each side's training clock starts when its training loop
starts (after model loading) and stops while it writes a snapshot; after the first step that ends past each of the
``--marks`` equally spaced clock marks the side saves its policy weights (``state_dict``), and it stops after the step
that crosses the budget. No evaluation runs during training: afterwards ONE evaluator (``benchmarks/_tta_eval.py``:
greedy ``model.generate`` on the task's held-out split through the tokenizer's chat template, the task's verifier)
scores the base model (t = 0, shared) and every snapshot of both sides (each set of weights in its own subprocess,
``--eval-procs`` at a time; a finished one is kept as eval-<i>.json in the work dir and reused by ``--from-dir``),
and the script plots held-out accuracy against
training seconds (``--plot``, PNG) and writes everything to ``--out`` (JSON).

The work (smollm2 config):
- task ``arithmetic``, 2-digit 2-term addition ("What is 47 + 38? Answer with just the number."), chat template,
  last-number verifier; 64 held-out problems (split by seed, never trained on). The base model is at ~0.06: it
  explains instead of answering, and the 16 completion tokens run out first.
- entropo: its SmolLM2 recipe ``smollm2_addition`` unchanged except the task (2 digits instead of 1), i.e. 8 prompts
  x 4 samples per step, T = 0.7, 16 new tokens, GRPO advantages, PPO clip 0.2 / 0.28, token-mean, AdamW lr 1e-5
  constant, micro-batch 16, fp32.
- TRL: ``GRPOConfig`` defaults except what the task or the machine forces: ``num_generations`` = 4 (the group size),
  ``max_completion_length`` = 16, ``temperature`` = 0.7, the same prompts (entropo's sampler order, so
  ``shuffle_dataset=False``), fp32 (``bf16=False``, model loaded in float32: bf16 is emulated on this CPU), CPU,
  ``max_steps`` large (the clock stops the run; the default linear LR decay then stays within 1 % of its start),
  no saving/reporting. Kept defaults include lr 1e-6, beta 0 (no KL), loss_type "dapo", 8 rows per optimizer step
  (per_device_train_batch_size 8 -> 2 prompts x 4), num_iterations 1, epsilon 0.2, gradient checkpointing on.

Target (issue 19): entropo reaches TRL's final held-out accuracy in <= 0.5x TRL's time. entropo's time to that
accuracy is the training clock of its first snapshot (base model included) whose accuracy is >= TRL's final one; the
resolution is the mark spacing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trl_vs_entropo import prepare_model  # noqa: E402  (the same model folder both benchmarks load)

SMOLLM2_DIR = Path.home() / ".cache" / "entropo" / "models" / "smollm2-135m-instruct"

CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2": {
        "model": str(SMOLLM2_DIR),
        "entropo_recipe": "smollm2_addition",
        "task": {"name": "arithmetic", "params": {"digits": 2, "num_terms": 2, "ops": "+", "chat": True}},
        "group_size": 4, "max_new_tokens": 16, "temperature": 0.7,
        "eval_size": 64, "minutes": 25.0, "marks": 6,
    },
    # smoke check: the tiny character-level model (random weights: accuracy stays ~0), bare prompts
    "quick": {
        "model": "tiny",
        "entropo_recipe": "smollm2_addition",
        "task": {"name": "arithmetic", "params": {"digits": 1, "num_terms": 2, "ops": "+", "chat": False,
                                                  "template": "{expr_compact}="}},
        "group_size": 4, "max_new_tokens": 4, "temperature": 0.7,
        "eval_size": 16, "minutes": 0.5, "marks": 2,
    },
}


# ---- shared helpers -------------------------------------------------------------------------------------------------

def make_task(spec: dict[str, Any]):
    from entropo import registry

    return registry.get("task", spec["task"]["name"])(seed=spec["seed"], eval_size=spec["eval_size"],
                                                      **spec["task"]["params"])


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


class Clock:
    """Training clock: wall seconds since ``start()`` minus the seconds spent inside ``paused()`` (snapshot writes)."""

    def __init__(self):
        self.t0 = None
        self.excluded = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return 0.0 if self.t0 is None else time.perf_counter() - self.t0 - self.excluded

    def pause_for(self, fn) -> float:
        t = time.perf_counter()
        fn()
        dt_s = time.perf_counter() - t
        self.excluded += dt_s
        return dt_s


class Snapshotter:
    """Saves the policy's weights after the first step that ends past each mark; says when the budget is spent."""

    def __init__(self, out_dir: Path, budget_s: float, marks: int, clock: Clock):
        self.out_dir, self.budget_s, self.clock = out_dir, budget_s, clock
        self.marks = [budget_s * (k + 1) / marks for k in range(marks)]
        self.next_mark = 0
        self.saved: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        out_dir.mkdir(parents=True, exist_ok=True)

    def after_step(self, model, info: dict[str, Any]) -> bool:
        """Record the step, save a snapshot if a mark was crossed; True when the budget is spent (stop training)."""
        import torch

        t = self.clock.now()
        self.steps.append({"t": t, **info})
        crossed = False
        while self.next_mark < len(self.marks) and t >= self.marks[self.next_mark]:
            self.next_mark += 1
            crossed = True
        if crossed:
            path = self.out_dir / f"snap{len(self.saved)}.pt"
            save_s = self.clock.pause_for(lambda: torch.save(model.state_dict(), path))  # tied weights stored once
            self.saved.append({"path": str(path), "t": t, "step": len(self.steps), "save_s": save_s,
                               "mark": self.marks[self.next_mark - 1]})
        return self.next_mark >= len(self.marks)


# ---- the entropo side -----------------------------------------------------------------------------------------------

def entropo_recipe(spec: dict[str, Any], run_root: Path):
    """entropo's recommended SmolLM2 recipe with the task and model of the spec; no eval/checkpoints in the loop."""
    import yaml

    from entropo.cli import RECIPES_DIR
    from entropo.config import Recipe, check_components

    data = yaml.safe_load((RECIPES_DIR / f"{spec['entropo_recipe']}.yaml").read_text())
    data["model"]["name_or_path"] = spec["model_path"]
    data["task"] = {"name": spec["task"]["name"], "params": spec["task"]["params"], "eval_size": spec["eval_size"]}
    # the task's forced settings (for smollm2 they equal the recipe's own: n 4, 16 tokens, T 0.7)
    data["rollout"].update(n=spec["group_size"], max_new_tokens=spec["max_new_tokens"],
                           temperature=spec["temperature"])
    data["seed"] = spec["seed"]
    data["train"]["steps"] = 100_000  # the clock stops the run (the recipe's LR schedule is constant)
    data["eval"] = {"every": 0, "max_prompts": 1, "n": 1, "k": [1]}  # the start-of-run eval: outside the clock, short
    data["checkpoint"] = {"every": 0}
    data["logging"] = {"output_dir": str(run_root), "run_name": "run", "progress": False, "plots": False}
    recipe = Recipe.model_validate(data)
    check_components(recipe)
    return recipe


def entropo_worker(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    import torch

    from entropo import trainer as T
    from entropo.config import dump_recipe

    set_threads(spec["threads"])
    recipe = entropo_recipe(spec, out_dir / "run-root")
    run = T.setup(recipe, None, False, lambda _m: None)
    torch.set_num_threads(spec["threads"])
    first = run.task.train_example(0)  # prompt ids checked against the evaluator's
    clock = Clock()
    snaps = Snapshotter(out_dir / "snapshots", spec["budget_s"], spec["marks"], clock)
    clock.start()
    for step in range(recipe.train.steps):  # the body of entropo.trainer.train's loop
        t_step = time.perf_counter()
        run.model.eval()
        ctx = run.step_ctx(step)
        batch, metrics = T.rollout_phase(run, ctx)
        if batch is not None:
            metrics["time/score_s"] = T.timed(T.score_phase, run, batch)
            metrics.update(T.advantage_phase(run, batch, ctx))
            metrics.update(T.update_phase(run, batch, ctx))
            metrics.update(T.batch_diagnostics(run, batch))
        T.finish_step(run, step, metrics, t_step)
        info = {"rows": int(batch.input_ids.shape[0]) if batch is not None else 0,
                "optimizer_steps": int(metrics.get("actor/optimizer_steps", 0)),
                "train_accuracy": float(metrics.get("accuracy", float("nan"))),
                "reward_mean": float(metrics.get("reward/mean", float("nan")))}
        if snaps.after_step(run.model, info):
            break
    run.rewards.close()
    return {"side": "entropo", "steps": snaps.steps, "snapshots": snaps.saved, "clock_s": clock.now(),
            "threads": torch.get_num_threads(), "config": dump_recipe(recipe),
            "prompt_ids_first": [int(i) for i in run.engine.encode_prompt(first.prompt)]}


# ---- the TRL side ---------------------------------------------------------------------------------------------------

def trl_config(spec: dict[str, Any], output_dir: str):
    """GRPOConfig defaults except what the task (group size, completion length, temperature, the same prompts) and the
    machine (CPU, fp32) force; the clock, not max_steps, ends the run."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        num_generations=spec["group_size"],
        max_completion_length=spec["max_new_tokens"],
        temperature=spec["temperature"],
        shuffle_dataset=False,  # the same prompts in the same order as entropo's sampler draws them
        use_cpu=True, bf16=False, fp16=False, model_init_kwargs={"dtype": "float32"},
        max_steps=100_000,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=spec["seed"], dataloader_num_workers=0,
    )


def trl_worker(spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from entropo import registry

    set_threads(spec["threads"])
    task = make_task(spec)
    sampler = registry.get("sampler", "uniform")(task, spec["seed"])
    examples = [task.train_example(i) for _ in range(spec["schedule_steps"]) for i in sampler.next(8)]
    dataset = Dataset.from_list([{"prompt": ex.prompt, "example_id": i} for i, ex in enumerate(examples)])

    def correct(completions, example_id, **_kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.correct(t, examples[i])) for t, i in zip(texts, example_id)]

    clock = Clock()
    snaps = Snapshotter(out_dir / "snapshots", spec["budget_s"], spec["marks"], clock)
    rewards: list[float] = []

    class ClockCallback(TrainerCallback):
        trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            acc = rewards[-args.generation_batch_size:] if rewards else []
            info = {"rows": args.per_device_train_batch_size * args.gradient_accumulation_steps,
                    "optimizer_steps": 1, "train_accuracy": sum(acc) / len(acc) if acc else float("nan")}
            if snaps.after_step(self.trainer.model, info):
                control.should_training_stop = True

    def recorded_correct(completions, example_id, **kwargs):
        out = correct(completions, example_id, **kwargs)
        rewards.extend(out)
        return out

    recorded_correct.__name__ = "correct"
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    args = trl_config(spec, str(out_dir / "trl-out"))
    callback = ClockCallback()
    trainer = GRPOTrainer(model=spec["model_path"], reward_funcs=recorded_correct, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[callback])
    callback.trainer = trainer
    first_ids = trainer._tokenize_prompts([task.train_example(0).prompt])[0][0]  # checked against the evaluator
    torch.set_num_threads(spec["threads"])
    trainer.train()
    return {"side": "trl", "steps": snaps.steps, "snapshots": snaps.saved, "clock_s": clock.now(),
            "threads": torch.get_num_threads(), "config": json.dumps(args.to_dict(), indent=1, default=str),
            "prompt_ids_first": [int(i) for i in first_ids]}


def worker_main(side: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out_dir = Path(spec["work_dir"]) / side
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = (entropo_worker if side == "entropo" else trl_worker)(spec, out_dir)
    result["process_wall_s"] = time.perf_counter() - t0
    (out_dir / "result.json").write_text(json.dumps(result, default=str))


# ---- the driver -----------------------------------------------------------------------------------------------------

def run_sides(spec: dict[str, Any], spec_path: Path, sides: list[str], timeout_s: float) -> tuple[dict, list]:
    """Start every side's worker at once; sample the load average while they run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    procs = {}
    for side in sides:
        log = open(Path(spec["work_dir"]) / f"{side}.log", "w")
        procs[side] = (subprocess.Popen([sys.executable, __file__, "--worker", side, str(spec_path)], stdout=log,
                                        stderr=subprocess.STDOUT, env=env), log)
    loads: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample_load():
        t0 = time.perf_counter()
        while not stop.is_set():
            loads.append({"t": time.perf_counter() - t0, "loadavg": os.getloadavg()})
            stop.wait(30)

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    results = {}
    deadline = time.time() + timeout_s
    for side, (proc, log) in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        res_path = Path(spec["work_dir"]) / side / "result.json"
        if proc.returncode == 0 and res_path.exists():
            results[side] = json.loads(res_path.read_text())
        else:
            tail = (Path(spec["work_dir"]) / f"{side}.log").read_text()[-3000:]
            results[side] = {"error": f"exit {proc.returncode}: {tail}"}
    stop.set()
    return results, loads


def eval_worker(spec_path: str, snapshot: str, out_path: str, threads: int) -> None:
    """Score one set of weights (``base`` = the model as loaded) with the shared evaluator; writes a JSON file."""
    import torch

    from _tta_eval import evaluate_weights, prompt_ids
    from entropo.models import load

    set_threads(threads)
    spec = json.loads(Path(spec_path).read_text())
    task = make_task(spec)
    model, tokenizer = load(spec["model_path"])
    if snapshot != "base":
        missing, unexpected = model.load_state_dict(torch.load(snapshot, map_location="cpu"), strict=False)
        if unexpected or [k for k in missing if not k.startswith("lm_head")]:
            raise RuntimeError(f"{snapshot}: keys differ from the model's: missing {missing}, unexpected {unexpected}")
    res = evaluate_weights(model, tokenizer, task, task.eval_examples(), spec["max_new_tokens"])
    res["prompt_ids_train0"] = prompt_ids(tokenizer, task.train_example(0).prompt)
    res["held_out_size"] = len(task.eval_examples())
    Path(out_path).write_text(json.dumps(res))


def evaluate_all(spec: dict[str, Any], results: dict[str, Any], threads: int, procs: int, console) -> dict[str, Any]:
    """Base model + every snapshot of every side, scored by the one evaluator: each set of weights in its own
    subprocess (``threads`` torch threads), ``procs`` at a time (evaluation is not part of any side's clock)."""
    work = Path(spec["work_dir"])
    jobs = [("base", "base", None)] + [(side, snap["path"], snap) for side, res in results.items()
                                       for snap in res.get("snapshots", [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    outs, running, pending = {}, [], []
    for i, job in enumerate(jobs):  # --from-dir: an evaluation a previous call finished is reused
        done = work / f"eval-{i}.json"
        if done.exists():
            outs[i] = json.loads(done.read_text())
        else:
            pending.append((i, job))
    while pending or running:
        while pending and len(running) < procs:
            i, (side, path, _snap) = pending.pop(0)
            out = work / f"eval-{i}.json"
            log = open(work / f"eval-{i}.log", "w")
            running.append((i, subprocess.Popen([sys.executable, __file__, "--eval-worker", str(work / "spec.json"),
                                                 path, str(out), str(threads)], stdout=log,
                                                stderr=subprocess.STDOUT, env=env), log, out))
        time.sleep(2)
        for item in list(running):
            i, proc, log, out = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"evaluation of {jobs[i][1]} failed: "
                                   + (work / f"eval-{i}.log").read_text()[-2000:])
            outs[i] = json.loads(out.read_text())
            snap = jobs[i][2]
            where = "base model" if snap is None else f"{jobs[i][0]} at {snap['t']:.0f} s (step {snap['step']})"
            console(f"  {where}: held-out accuracy {outs[i]['accuracy']:.3f} ({outs[i]['eval_s']:.0f} s)")
    base = outs[0]
    checks = {f"{side}_prompt_ids_equal_evaluator": res.get("prompt_ids_first") == base["prompt_ids_train0"]
              for side, res in results.items()}
    curves = {side: [{"t": 0.0, "step": 0, "accuracy": base["accuracy"], "correct": base["correct"]}]
              for side in results}
    for i, (side, _path, snap) in enumerate(jobs):
        if snap is not None:
            curves[side].append({"t": snap["t"], "step": snap["step"], "mark": snap["mark"],
                                 "accuracy": outs[i]["accuracy"], "correct": outs[i]["correct"],
                                 "samples": outs[i]["samples"], "eval_s": outs[i]["eval_s"]})
    return {"base": {k: base[k] for k in ("accuracy", "correct", "samples")}, "curves": curves, "checks": checks,
            "held_out_size": base["held_out_size"]}


def verdict(curves: dict[str, list[dict[str, Any]]], base_acc: float) -> dict[str, Any]:
    """entropo's time to TRL's final held-out accuracy as a fraction of TRL's training time (target <= 0.5)."""
    trl, ent = curves.get("trl", []), curves.get("entropo", [])
    if len(trl) < 2 or len(ent) < 2:
        return {"status": "incomplete"}
    trl_final, trl_time = trl[-1]["accuracy"], trl[-1]["t"]
    reach = next((p for p in ent if p["accuracy"] >= trl_final), None)
    out = {"trl_final_accuracy": trl_final, "trl_time_s": trl_time, "entropo_final_accuracy": ent[-1]["accuracy"],
           "entropo_time_s": ent[-1]["t"], "base_accuracy": base_acc,
           "trl_improved_over_base": trl_final > base_acc}
    if reach is None:
        out.update(entropo_time_to_trl_final_s=None, ratio=None, met=False,
                   note="entropo never reached TRL's final held-out accuracy")
    else:
        ratio = reach["t"] / trl_time if trl_time > 0 else float("nan")
        out.update(entropo_time_to_trl_final_s=reach["t"], ratio=ratio, met=ratio <= 0.5,
                   note="ratio resolution = the mark spacing; " + (
                       "TRL's final accuracy is not above the base model's, so the target is met trivially"
                       if not out["trl_improved_over_base"] else "first entropo snapshot at or above TRL's final"))
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"entropo": "tab:blue", "trl": "tab:orange"}
    labels = {"entropo": f"entropo ({report['spec']['entropo_recipe']})", "trl": "TRL GRPOTrainer (defaults)"}
    for side, pts in report["eval"]["curves"].items():
        ax.plot([p["t"] for p in pts], [p["accuracy"] for p in pts], "o-", color=colors[side], label=labels[side])
    v = report["verdict"]
    if v.get("trl_final_accuracy") is not None:
        ax.axhline(v["trl_final_accuracy"], color="tab:orange", ls=":", lw=1)
        ax.axvline(0.5 * v["trl_time_s"], color="gray", ls="--", lw=1, label="0.5 x TRL's time")
    ax.set_xlabel("training seconds (each side 1 torch thread, run concurrently)")
    ax.set_ylabel(f"held-out accuracy (greedy, {report['eval']['held_out_size']} problems)")
    ax.set_title(f"{report['config_name']}: {report['task_label']}", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) == 6 and sys.argv[1] == "--eval-worker":
        eval_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke check: tiny model, 30 s per side (~2-4 min in all)")
    ap.add_argument("--minutes", type=float, default=None, help="training-clock budget per side (default 25)")
    ap.add_argument("--marks", type=int, default=None, help="snapshots per side, equally spaced (default 6)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side (default 1)")
    ap.add_argument("--eval-threads", type=int, default=1, help="torch threads per evaluation process (not timed)")
    ap.add_argument("--eval-procs", type=int, default=4, help="evaluation processes at a time (~1.3 GB each)")
    ap.add_argument("--from-dir", default=None,
                    help="evaluate and report a kept work dir (--keep) again without training")
    ap.add_argument("--sides", default="entropo,trl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/<date>-time-to-accuracy[-quick].json)")
    ap.add_argument("--plot", default=None, help="PNG (default: the --out path with .png)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (snapshots: ~0.5 GB each for SmolLM2)")
    args = ap.parse_args()

    name = "quick" if args.quick else "smollm2"
    cfg = CONFIGS[name]
    minutes = args.minutes if args.minutes is not None else cfg["minutes"]
    marks = args.marks if args.marks is not None else cfg["marks"]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    stem = f"{dt.date.today().isoformat()}-time-to-accuracy{'-quick' if args.quick else ''}"
    out = Path(args.out) if args.out else HERE / "results" / f"{stem}.json"
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)

    def console(msg: str) -> None:
        print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)

    keep = args.keep or args.from_dir is not None
    work = Path(args.from_dir) if args.from_dir else Path(tempfile.mkdtemp(prefix="tta-"))
    try:
        if args.from_dir:  # a kept work dir: its spec, its sides' results and the training phase's record
            spec = json.loads((work / "spec.json").read_text())
            train = json.loads((work / "train.json").read_text())
            results = {side: json.loads((work / side / "result.json").read_text())
                       for side in sides if (work / side / "result.json").exists()}
            minutes, marks = spec["budget_s"] / 60.0, spec["marks"]
        else:
            model_path = prepare_model(cfg, work)
            spec = {"model_path": model_path, "task": cfg["task"], "seed": args.seed, "eval_size": cfg["eval_size"],
                    "group_size": cfg["group_size"], "max_new_tokens": cfg["max_new_tokens"],
                    "temperature": cfg["temperature"], "entropo_recipe": cfg["entropo_recipe"],
                    "budget_s": 60.0 * minutes, "marks": marks, "threads": args.threads, "work_dir": str(work),
                    "schedule_steps": 2000}
            spec_path = work / "spec.json"
            spec_path.write_text(json.dumps(spec))
        p = spec["task"]["params"]
        task_label = (f"arithmetic {p['digits']}-digit {p.get('num_terms', 2)}-term '{p.get('ops', '+')}', "
                      f"G={spec['group_size']}, {spec['max_new_tokens']} tokens, T={spec['temperature']}")
        if not args.from_dir:
            console(f"{name}: {task_label}; {minutes:g} min per side, {marks} snapshots, sides {sides} run "
                    f"concurrently with {args.threads} torch thread(s) each; load {os.getloadavg()}")
            t0 = time.perf_counter()
            load_start = os.getloadavg()
            results, loads = run_sides(spec, spec_path, sides, timeout_s=60.0 * minutes * 3 + 900)
            train = {"train_wall_s": time.perf_counter() - t0, "loadavg_start": load_start, "loadavg_samples": loads,
                     "loadavg_end_of_training": os.getloadavg()}
            (work / "train.json").write_text(json.dumps(train))
        train_wall = train["train_wall_s"]
        for side, res in results.items():
            if "error" in res:
                console(f"{side} FAILED: {res['error']}")
            else:
                console(f"{side}: {len(res['steps'])} steps ({sum(s['rows'] for s in res['steps'])} rows sampled, "
                        f"{sum(s['optimizer_steps'] for s in res['steps'])} optimizer steps) in {res['clock_s']:.0f} "
                        f"s of training clock; {len(res['snapshots'])} snapshots")
        console(f"training: {train_wall:.0f} s wall; evaluating (one evaluator, {args.eval_procs} processes x "
                f"{args.eval_threads} thread(s))")
        t1 = time.perf_counter()
        ok = {s: r for s, r in results.items() if "error" not in r}
        ev = evaluate_all(spec, ok, args.eval_threads, args.eval_procs, console)
        eval_wall = time.perf_counter() - t1
        report = {
            "config_name": "quick" if spec["model_path"].endswith("tiny-model") else "smollm2",
            "task_label": task_label, "spec": spec, "minutes": minutes,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), **{k: v for k, v in train.items() if k != "train_wall_s"},
                        "loadavg_end": os.getloadavg(),
                        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()},
            "versions": versions(),
            "train_wall_s": train_wall, "eval_wall_s": eval_wall,
            "sides": {s: {k: v for k, v in r.items() if k != "config"} for s, r in results.items()},
            "configs": {s: r.get("config") for s, r in results.items()},
            "eval": ev,
        }
        report["verdict"] = verdict(ev["curves"], ev["base"]["accuracy"])
        out.write_text(json.dumps(report, indent=1, default=str))
        plot(report, png)
        print_summary(report, console)
        console(f"wrote {out} and {png}")
        return 0 if all("error" not in r for r in results.values()) else 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            console(f"kept {work}")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "trl", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def print_summary(report: dict[str, Any], console) -> None:
    loads = [s["loadavg"][0] for s in report["machine"]["loadavg_samples"]]
    if loads:
        console(f"1-min load average during training: min {min(loads):.1f}, max {max(loads):.1f}, "
                f"mean {sum(loads) / len(loads):.1f}")
    for side, pts in report["eval"]["curves"].items():
        console(f"{side}: " + ", ".join(f"{p['t']:.0f}s->{p['accuracy']:.3f}" for p in pts))
    v = report["verdict"]
    if v.get("status") == "incomplete":
        console("verdict: incomplete (a side failed or saved no snapshot)")
        return
    if v["ratio"] is None:
        console(f"verdict: NOT MET: TRL final {v['trl_final_accuracy']:.3f} at {v['trl_time_s']:.0f} s; entropo "
                f"never reached it (its final {v['entropo_final_accuracy']:.3f})")
    else:
        met = ("MET" if v["trl_improved_over_base"] else "MET TRIVIALLY") if v["met"] else "NOT MET"
        console(f"verdict: {met}: entropo reached TRL's final accuracy "
                f"{v['trl_final_accuracy']:.3f} at {v['entropo_time_to_trl_final_s']:.0f} s = {v['ratio']:.2f}x "
                f"TRL's {v['trl_time_s']:.0f} s (target <= 0.5x); {v['note']}")
    for k, val in report["eval"]["checks"].items():
        console(f"check {k}: {val}")


if __name__ == "__main__":
    sys.exit(main())
