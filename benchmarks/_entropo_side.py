"""One entropo trial of the side-by-side benchmark (benchmarks/trl_vs_entropo.py runs it as a subprocess).

    python benchmarks/_entropo_side.py SPEC.json      # prints one JSON line (the trial result)

A spec (a JSON dict, built by the driver) describes one cell of the benchmark matrix; ``entropo_recipe(spec)`` turns
it into an entropo Recipe and ``run_trial(spec)`` runs W warm-up + S timed RL steps through ``entropo.trainer.train``
and reads the per-step ``time/*`` keys back from metrics.jsonl. Running in its own process makes the peak RSS
(``ru_maxrss``) this side's alone.

``prompt_schedule(spec)`` is the list of training examples entropo's uniform sampler hands out, step by step; the
TRL side builds its dataset from it, so both sides train on the same prompts in the same order.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Spec keys (all required; the driver fills them):
#   model_path, task {name, params}, seed, prompts_per_step, group_size, max_new_tokens, temperature, ppo_epochs,
#   kl_coef, lr, clip_low, clip_high, micro_batch_size, warmup_steps, timed_steps, threads,
#   entropo {old_logprobs, logprob_chunk_size, activation_checkpointing, activation_memory_mb, reference_resident},
#   trl {gradient_checkpointing}


RESULT_PREFIX = "BENCH_RESULT "


def set_threads(n: int) -> None:
    """Pin torch's intra-op threads (the driver also sets OMP/MKL_NUM_THREADS in the child's environment)."""
    import torch

    torch.set_num_threads(n)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def total_steps(spec: dict[str, Any]) -> int:
    return int(spec["warmup_steps"]) + int(spec["timed_steps"])


def entropo_recipe(spec: dict[str, Any], run_root: str | Path):
    """The entropo Recipe of a spec: GRPO advantages, PPO clip, token-mean aggregation, KL (k3) only when kl_coef > 0,
    every row exactly max_new_tokens long (engine ignore_eos: decoding goes on past EOS without changing the sampling
    distribution, so the recorded log-probs stay the policy's), no eval/checkpoint inside the timed steps."""
    from entropo.config import Recipe, check_components

    L = int(spec["max_new_tokens"])
    ent = spec["entropo"]
    data = {
        "name": "bench",
        "seed": spec["seed"],
        "model": {"name_or_path": spec["model_path"], "dtype": "float32",
                  "reference_resident": ent.get("reference_resident", True)},
        "task": {"name": spec["task"]["name"], "params": spec["task"]["params"], "eval_size": 8},
        "rollout": {"prompts_per_step": spec["prompts_per_step"], "n": spec["group_size"],
                    "temperature": spec["temperature"], "top_p": 1.0, "max_new_tokens": L,
                    "max_batch_size": spec["prompts_per_step"] * spec["group_size"],
                    "engine_params": {"ignore_eos": True}},
        "rewards": [{"name": "correct"}],
        "advantage": {"name": "grpo"},
        "objective": {"name": "ppo_clip", "params": {"clip_low": spec["clip_low"], "clip_high": spec["clip_high"]}},
        "regularizers": ([{"name": "kl", "coef": spec["kl_coef"], "params": {"kind": "k3"}}]
                         if spec["kl_coef"] > 0 else []),
        "aggregation": {"mode": "token-mean"},
        # one more step than we run: the loop is stopped by stop_after, so no final eval/save/plots are done
        "train": {"steps": total_steps(spec) + 1, "ppo_epochs": spec["ppo_epochs"], "mini_batches": 1,
                  "micro_batch_size": ent.get("micro_batch_size", spec["micro_batch_size"]), "grad_clip": 1.0,
                  "logprob_chunk_size": ent["logprob_chunk_size"], "old_logprobs": ent["old_logprobs"],
                  "activation_checkpointing": ent.get("activation_checkpointing", False),
                  **({"activation_memory_mb": ent["activation_memory_mb"]}
                     if ent.get("activation_memory_mb") is not None else {})},
        "optimizer": {"lr": spec["lr"], "schedule": "constant"},
        "eval": {"every": 0, "max_prompts": 1},  # the start-of-run eval is outside the timed steps; keep it short
        "logging": {"output_dir": str(run_root), "run_name": "run", "progress": False, "plots": False},
        "checkpoint": {"every": 0},
    }
    recipe = Recipe.model_validate(data)
    check_components(recipe)
    return recipe


def prompt_schedule(spec: dict[str, Any]) -> tuple[list[list[Any]], Any]:
    """Training examples per RL step as entropo's sampler draws them (``[step][prompt] -> Example``), and the task."""
    from entropo import registry

    task = registry.get("task", spec["task"]["name"])(seed=spec["seed"], eval_size=8, **spec["task"]["params"])
    sampler = registry.get("sampler", "uniform")(task, spec["seed"])
    return [[task.train_example(i) for i in sampler.next(spec["prompts_per_step"])]
            for _ in range(total_steps(spec))], task


class ScoredTokenCounter:
    """Wraps ``entropo.trainer.score_tokens`` (the grad-free pass the trainer runs for old-policy and reference
    log-probs) to count the tokens it scores: whether the old-policy pass runs is the trainer's decision (it reuses
    the engine's sampling log-probs only when they are exactly the policy's), so it is observed, not assumed."""

    def __init__(self):
        self.tokens = 0.0

    def __enter__(self):
        from entropo import trainer

        self._module, self._original = trainer, trainer.score_tokens

        def counted(model, batch, **kwargs):
            self.tokens += float(batch.attention_mask.sum())
            return self._original(model, batch, **kwargs)

        trainer.score_tokens = counted
        return self

    def __exit__(self, *exc):
        self._module.score_tokens = self._original


def step_rows(rows: list[dict[str, Any]], spec: dict[str, Any], scored_tokens: float) -> list[dict[str, float]]:
    """Per-step phase times and token counts from metrics.jsonl rows (one per RL step); ``scored_tokens`` (all steps)
    gives the number of scoring passes per step."""
    rows = [m for m in rows if "time/step_s" in m]  # e.g. a final eval row has no step timings
    batch_tokens = [m["time/update_tokens_per_s"] * m["time/update_s"] / spec["ppo_epochs"] for m in rows]
    passes = round(scored_tokens / sum(batch_tokens)) if sum(batch_tokens) else 0
    out = []
    for m, tokens in zip(rows, batch_tokens):
        out.append({
            "rollout_s": m["time/rollout_s"], "reward_s": m["time/reward_s"], "score_s": m["time/score_s"],
            "update_s": m["time/update_s"], "step_s": m["time/step_s"],
            "gen_tokens": m["tokens_per_s"] * m["time/rollout_s"],
            "update_tokens": tokens * spec["ppo_epochs"],  # prompt + response tokens x PPO epochs
            "score_tokens": tokens * passes,
            "score_passes": passes,
            "response_length_mean": m["response/length_mean"],
            "optimizer_steps": m["actor/optimizer_steps"],
        })
    return out


def run_trial(spec: dict[str, Any], work_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one entropo trial in this process; returns the result dict (per-step rows, config, peak RSS)."""
    import torch

    from entropo.config import dump_recipe
    from entropo.logging import read_metrics
    from entropo.trainer import train

    set_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="entropo-bench-", dir=work_dir) as tmp:
        recipe = entropo_recipe(spec, tmp)
        t0 = time.perf_counter()
        with ScoredTokenCounter() as scored:
            summary = train(recipe, stop_after=total_steps(spec), console=lambda _msg: None)
        wall = time.perf_counter() - t0
        steps = step_rows(read_metrics(summary["run_dir"]), spec, scored.tokens)
        config = dump_recipe(recipe)
    return {
        "side": "entropo",
        "steps": steps,
        "warmup_steps": spec["warmup_steps"],
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "config": config,
        "notes": {"phases": "time/* keys of metrics.jsonl; score = old-policy pass (unless the trainer reuses the "
                            "engine's sampling log-probs) + reference pass (KL on); passes counted per step"},
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = run_trial(spec, work_dir=os.environ.get("BENCH_TMP"))
    print(RESULT_PREFIX + json.dumps(result))  # libraries print to stdout too: the driver looks for this prefix


if __name__ == "__main__":
    main()
