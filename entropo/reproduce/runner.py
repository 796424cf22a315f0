"""Run the reproduction suite: every (arm, seed) once, in-process and sequentially, then measure, check and report.

Layout of the output directory::

    OUT/report.md, OUT/summary.json, OUT/plots/*.png   the report (entropo.reproduce.report)
    OUT/runs/<arm>/seed<k>/                            one ordinary run directory per arm and seed
    OUT/warmup/threads<n>/<key>/final/                 the SFT warm-up, once per (model, task, warm-up, seed)

Arms shared by several experiments (the GRPO baselines) run once. A finished run (its metrics end with the
end-of-run row) is reused when the suite is run again into the same directory; an unfinished one is started over.
So the suite is resumable arm by arm: after an interruption the same command reruns only the (arm, seed) that was
cut off and those not yet started. ``SuiteConfig.budget_s`` bounds one invocation: once the time spent plus the
longest run of this invocation would exceed it, no further run starts and the invocation ends without a report
(``run_suite`` returns ``{"incomplete": True, "remaining": [...]}``); the same command continues where it stopped
(e.g. 10-minute calls on a machine that allows no longer commands).

The warm-up cache: the trainer seeds everything, builds the model (the tiny model's init leaves the global RNG
alone), then warms it up with its own generator, so a run that starts from the saved warmed-up model with
``warmup.steps=0`` is identical to one that warms up itself (tests/test_reproduce.py checks the metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from entropo import checkpoint as ckpt
from entropo.config import Recipe, load_recipe
from entropo.logging import read_metrics
from entropo.reproduce.aggregate import Rows, final_row
from entropo.reproduce.experiments import ARMS, CustomResult, Experiment, select

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class SuiteConfig:
    """Scale of one suite run: ``quick`` is the ≤ 5-minute setting, the default the full one."""

    seeds: int = 3
    steps: int = 300
    eval_size: int = 128
    eval_n: int = 8
    overrides: list[str] = field(default_factory=list)  # the user's --set, applied to every arm last
    cache_warmup: bool = True
    # torch intra-op threads during the suite. The tiny model gains nothing from a second thread, and on a shared
    # machine OpenMP threads spin-wait for each other: a 20-step demo run took 247 s with 2 threads and 20 s with 1
    # at load average 8 on 2 cores. None leaves torch's setting alone (e.g. for a real model on an idle machine).
    threads: int | None = 1
    fixed_steps: bool = False  # the user chose the step count (--steps): it wins over an experiment's own
    budget_s: float | None = None  # start no new run once elapsed + the longest run so far would exceed this
    # > 0: each run checkpoints every this many steps; a run cut off (by budget_s or a kill) resumes from its newest
    # checkpoint on the next call, exactly as the trainer's --resume (0: a cut-off run starts over)
    checkpoint_every: int = 0
    eval_every: int | None = None  # held-out eval every this many steps (None: steps // 4; 0: at start and end only)

    @classmethod
    def quick(cls, **kw) -> SuiteConfig:
        return cls(**{"seeds": 2, "steps": 100, "eval_size": 64, **kw})

    def common_overrides(self, seed: int) -> list[str]:
        """Overrides every arm gets before its own: scale, evaluation, and no per-run extras."""
        every = max(1, self.steps // 4) if self.eval_every is None else self.eval_every
        # eval.max_prompts, not task.eval_size: the task's split (and so the warm-up) stays the shipped recipe's
        return [f"seed={seed}", f"train.steps={self.steps}", f"eval.max_prompts={self.eval_size}",
                f"eval.n={self.eval_n}", f"eval.k={sorted({1, self.eval_n})}", "eval.temperature=1.0",
                f"eval.every={every}", "logging.progress=false", "logging.tensorboard=false", "logging.plots=false",
                f"checkpoint.every={self.checkpoint_every}", "checkpoint.keep=1"]


def arm_recipe(arm_name: str, seed: int, cfg: SuiteConfig) -> Recipe:
    """The recipe of one arm at one seed: shipped recipe <- suite overrides <- arm overrides <- user overrides."""
    arm = ARMS[arm_name]
    own = [o.replace("{steps}", str(cfg.steps)) for o in arm.overrides]
    recipe = load_recipe(RECIPES_DIR / f"{arm.recipe}.yaml", cfg.common_overrides(seed) + own + cfg.overrides)
    recipe.name = f"{arm_name}_seed{seed}"
    return recipe


def warmup_key(recipe: Recipe) -> str:
    """Everything the warm-up's result depends on: model, warm-up settings, task (and its split), seed, prompt
    encoding, environment (a multi-turn environment's demonstrations are what the warm-up trains on)."""
    parts = {"model": recipe.model.model_dump(mode="json"), "warmup": recipe.warmup.model_dump(mode="json"),
             "task": recipe.task.model_dump(mode="json"), "seed": recipe.seed, "engine": recipe.rollout.engine,
             "environment": recipe.environment.model_dump(mode="json"),  # its demonstrations are the warm-up's data
             "chat_template": recipe.rollout.chat_template, "engine_params": recipe.rollout.engine_params}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def is_finished(run_dir: Path) -> bool:
    return bool(final_row(read_metrics(run_dir)))


# settings that cannot change a run's numbers (where memory comes from; the memory-mapped reference gives bit-identical
# log-probs, tested), left out so that adding such a setting keeps every finished (arm, seed) valid
NOT_FINGERPRINTED = (("train", "malloc_mmap_threshold"), ("model", "reference_resident"))


def recipe_fingerprint(recipe: Recipe, threads: int | None) -> str:
    """The arm's recipe and the thread count (float reductions, hence the numbers, depend on it)."""
    data = recipe.model_dump(mode="json")
    for section, key in NOT_FINGERPRINTED:
        data[section].pop(key, None)
    text = yaml.safe_dump(data, sort_keys=False)  # the layout dump_recipe writes
    return hashlib.sha256(f"{text}\nthreads={threads}".encode()).hexdigest()[:16]


def warmed_up_model(recipe: Recipe, cache_dir: Path, train_fn: Callable, console: Callable[[str], None]) -> Path:
    """Path of the model after ``recipe``'s warm-up, computed once per warm-up key: a 0-RL-step run of the recipe
    (so the warm-up is exactly the trainer's), with a cheap greedy evaluation."""
    where = cache_dir / warmup_key(recipe)
    final = where / "final"
    if is_finished(where) and final.is_dir():
        return final
    if where.exists():
        shutil.rmtree(where)
    warm = recipe.model_copy(deep=True)
    warm.train.steps = 0
    warm.eval.k = [1]  # before n: every k must stay <= n
    warm.eval.n, warm.eval.temperature = 1, 0.0
    train_fn(warm, run_dir=where, console=lambda *_: None)
    console(f"  warm-up cached: {where}")
    return final


def from_warm_model(recipe: Recipe, model_path: Path) -> Recipe:
    """The same recipe starting from an already warmed-up model: no warm-up of its own."""
    out = recipe.model_copy(deep=True)
    out.model.name_or_path = str(model_path)
    out.warmup.steps = 0
    return out


def is_reusable(arm_name: str, seed: int, cfg: SuiteConfig, out_dir: Path) -> bool:
    """Whether (arm, seed) already finished in ``out_dir`` with exactly this recipe (and thread count)."""
    run_dir = out_dir / "runs" / arm_name / f"seed{seed}"
    key_file = run_dir / "repro_recipe.sha"  # the arm's recipe before the warm-up swap: reuse only an equal run
    return (is_finished(run_dir) and key_file.exists()
            and key_file.read_text() == recipe_fingerprint(arm_recipe(arm_name, seed, cfg), cfg.threads))


def run_arm(arm_name: str, seed: int, cfg: SuiteConfig, out_dir: Path, console: Callable[[str], None],
            train_fn: Callable | None = None, deadline: float | None = None) -> Path | None:
    """Run (or reuse, or resume) one arm at one seed; returns its run directory, or None when ``deadline`` (a
    ``time.time()`` value; needs checkpoints: ``cfg.checkpoint_every`` or the arm's ``checkpoint.every``) stopped it
    at a checkpoint before its last step."""
    if train_fn is None:
        from entropo.trainer import train as train_fn
    run_dir = out_dir / "runs" / arm_name / f"seed{seed}"
    recipe = arm_recipe(arm_name, seed, cfg)
    key_file = run_dir / "repro_recipe.sha"
    started_file = run_dir / "repro_recipe.started"  # the fingerprint of the run in progress (resumable if equal)
    if is_reusable(arm_name, seed, cfg, out_dir):
        console(f"  {arm_name} seed {seed}: reusing {run_dir}")
        return run_dir
    fingerprint = recipe_fingerprint(recipe, cfg.threads)
    # the arm's own recipe decides (an arm may checkpoint when the suite does not, e.g. a long SmolLM2 arm): a
    # killed call then goes on from the newest checkpoint instead of starting the run over
    checkpoints = recipe.checkpoint.every > 0
    resume = (checkpoints and started_file.exists() and started_file.read_text() == fingerprint
              and ckpt.latest(run_dir) is not None)
    if run_dir.exists() and not resume:
        if started_file.exists() and started_file.read_text() != fingerprint and ckpt.latest(run_dir) is not None:
            console(f"  {arm_name} seed {seed}: the checkpointed run in {run_dir} was started with another recipe or "
                    f"thread count (--threads {cfg.threads}, --set ...); starting it over")
        shutil.rmtree(run_dir)
    if cfg.cache_warmup and recipe.warmup.steps > 0:
        cache = out_dir / "warmup" / f"threads{cfg.threads or 'default'}"  # the numbers depend on the thread count
        recipe = from_warm_model(recipe, warmed_up_model(recipe, cache, train_fn, console))
    run_dir.mkdir(parents=True, exist_ok=True)
    started_file.write_text(fingerprint)
    t0 = time.perf_counter()
    kw = {"deadline": deadline} if deadline is not None and checkpoints else {}
    summary = train_fn(recipe, run_dir=run_dir, console=lambda *_: None, resume=resume, **kw)
    verb = "resumed and ran" if resume else "ran"
    if not is_finished(run_dir):
        console(f"  {arm_name} seed {seed}: {verb} to step {(summary or {}).get('steps', '?')} of {cfg.steps} in "
                f"{time.perf_counter() - t0:.1f} s (stopped at a checkpoint: the next call resumes it)")
        return None
    key_file.write_text(fingerprint)
    # a finished (arm, seed) is reused, never resumed: its checkpoints (weights and optimizer state, ~1.6 GB for
    # SmolLM2-135M) only served a resume; a 26-run profile kept them all and filled the disk
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    console(f"  {arm_name} seed {seed}: {verb} {cfg.steps} steps in {time.perf_counter() - t0:.1f} s")
    return run_dir


def experiment_config(exp: Experiment, cfg: SuiteConfig) -> SuiteConfig:
    """The suite's scale for one experiment: its own step count unless the user fixed one."""
    return replace(cfg, steps=exp.steps) if exp.steps and not cfg.fixed_steps else cfg


def run_suite(out_dir: str | Path, cfg: SuiteConfig, only: list[str] | None = None,
              console: Callable[[str], None] = print, command: str = "", suite: str = "entropy") -> dict[str, Any]:
    """Run the selected experiments (their arms for every seed, or their own ``run`` for custom ones), then write
    OUT/report.md; returns the summary dict."""
    from entropo.reproduce.report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    experiments: list[Experiment] = select(only, suite)
    configs = {e.name: experiment_config(e, cfg) for e in experiments}
    for e in experiments:  # fail on a bad override before any run starts
        for arm in e.arms:
            arm_recipe(arm, 0, configs[e.name])
    arms = [a for e in experiments for a in e.arms]
    if arms and not any(e.steps for e in experiments):  # a user's --set train.steps=N wins: take it as the scale
        steps = arm_recipe(arms[0], 0, cfg).train.steps
        cfg = replace(cfg, steps=steps) if steps != cfg.steps else cfg
        configs = {e.name: experiment_config(e, cfg) for e in experiments}
    load_start = os.getloadavg()[0]  # the machine may be shared: timings are read against its load
    t0 = time.perf_counter()
    runs: dict[str, list[Rows]] = {}
    custom: dict[str, CustomResult] = {}
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    longest = 0.0  # the longest new run of this invocation (0 until one ran: at least one run starts per call)
    remaining: list[str] = []
    try:
        for e in experiments:
            if e.kind == "custom":
                console(f"  {e.name}: running")
                custom[e.name] = e.run(configs[e.name], out_dir / "custom" / e.name, console)
                continue
            for arm in e.arms:
                if arm in runs:
                    continue
                done = []
                for seed in range(cfg.seeds):
                    exp_cfg = configs[e.name]
                    new = not is_reusable(arm, seed, exp_cfg, out_dir)
                    elapsed = time.perf_counter() - t0
                    # with checkpoints a run may start whenever time is left (the deadline stops it at a checkpoint);
                    # without, only if a run as long as the longest so far still fits
                    needed = 0.0 if cfg.checkpoint_every > 0 else longest
                    if new and cfg.budget_s is not None and longest > 0 and elapsed + needed >= cfg.budget_s:
                        remaining.append(f"{arm} seed {seed}")
                        continue
                    t_run = time.perf_counter()
                    deadline = time.time() + cfg.budget_s - (time.perf_counter() - t0) if cfg.budget_s else None
                    run_dir = run_arm(arm, seed, exp_cfg, out_dir, console, deadline=deadline)
                    if new:  # a reused run takes no time: only new runs size the budget
                        longest = max(longest, time.perf_counter() - t_run)
                    if run_dir is None:  # stopped at a checkpoint by the budget
                        remaining.append(f"{arm} seed {seed}")
                        continue
                    done.append(read_metrics(run_dir))
                if len(done) == cfg.seeds:
                    runs[arm] = done
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - t0
    if remaining:
        console(f"  time budget reached: {len(remaining)} run(s) left ({', '.join(remaining)}); run the same "
                "command again to continue")
        return {"incomplete": True, "remaining": remaining, "wall_s": wall}
    return write_report(out_dir, experiments, runs, cfg, wall_s=wall, command=command,
                        load=(load_start, os.getloadavg()[0]), custom=custom, configs=configs)
