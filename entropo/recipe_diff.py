"""``--resume`` with a changed recipe: refuse what would change the run, accept and record the rest.

The checkpoint holds the recipe it was trained with. On resume the new recipe is compared with it field by field:

* **refused** (``ConfigError`` listing each change): the model (shapes, weights), the seed, task, sampler and warm-up
  (data split and order, the starting point), the held-out evaluation settings (``eval_start`` was measured with
  them), and everything that defines the algorithm (rollout, rewards, advantage, shaping, selection, objective,
  regularizers, aggregation, optimizer, update schedule);
* **accepted** (:data:`ACCEPTED`): how long to run (``train.steps``), logging, checkpoint and eval cadence, and
  settings that change speed or memory but not the result (micro-batch size, chunk sizes, threads, fused AdamW,
  engine batch size) or the run's safety limits. Each accepted change is printed and appended to
  ``RUN/recipe_changes.jsonl``.

``recipe.yaml`` is then written atomically, after the check (a refused resume leaves it untouched).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Callable

from entropo.checkpoint import atomic_write_bytes
from entropo.config import ConfigError, Recipe, dump_recipe

# Dotted field paths (fnmatch patterns) a resume may change.
ACCEPTED = (
    "name", "paper", "description",
    "train.steps", "train.micro_batch_size", "train.activation_memory_mb", "train.logprob_chunk_size",
    "train.activation_checkpointing", "train.threads", "train.max_nonfinite_steps", "train.malloc_mmap_threshold",
    "logging.*", "checkpoint.*", "eval.every",
    "rollout.max_batch_size", "optimizer.fused", "model.reference_resident",
    "reward_timeout_s", "reward_isolation", "reward_budget_s", "rewards.*.isolation",
)

_WHY = {
    "model": "the model (weight shapes)", "seed": "the data split and every random stream",
    "task": "the data split", "sampler": "the order of the training prompts", "warmup": "the run's starting point",
    "eval": "the held-out evaluation (eval_start was measured with the old settings)",
}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': [1, 2]}} -> {'a.b.0': 1, 'a.b.1': 2}; empty containers stay as values."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d:
        out = {}
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


_ABSENT = "(absent)"


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) !=
            b.get(k, _ABSENT)}


def accepted(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in ACCEPTED)


def _normalized(saved: dict[str, Any]) -> dict[str, Any]:
    try:  # fills fields added since the checkpoint was written with their defaults
        return Recipe.model_validate(saved).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - compare the raw dict then
        return saved


def check_resume(saved: dict[str, Any], recipe: Recipe, checkpoint: Path, step: int) -> dict[str, tuple[Any, Any]]:
    """The accepted changes from the checkpoint's recipe ``saved`` to ``recipe``; ConfigError for any other."""
    changes = diff(_normalized(saved), recipe.model_dump(mode="json"))
    refused = {k: v for k, v in changes.items() if not accepted(k)}
    if refused:
        lines = [f"--resume: the recipe differs from the one {checkpoint} was trained with, in ways that would change "
                 f"the run:"]
        for k, (a, b) in refused.items():
            lines.append(f"  {k}: {a!r} -> {b!r}   ({_WHY.get(k.split('.')[0], 'the algorithm')})")
        lines.append("Resume with the run's own recipe (its recipe.yaml), or start a new run (another --run-dir, or "
                     "--overwrite). Only these may change on resume: " + ", ".join(ACCEPTED))
        raise ConfigError("\n".join(lines))
    return changes


def check_and_write(out_dir: Path, recipe: Recipe, saved: dict[str, Any] | None, checkpoint: Path | None,
                    console: Callable[[str], None] = print) -> None:
    """On resume, :func:`check_resume` and record the accepted changes; then write ``recipe.yaml`` atomically."""
    if saved is not None and checkpoint is not None:
        step = int(saved.get("run_state", {}).get("step", 0))
        changes = check_resume(saved.get("recipe") or {}, recipe, checkpoint, step)
        if changes:
            console("recipe changes accepted on resume: " +
                    ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
            line = json.dumps({"step": step, "checkpoint": checkpoint.name,
                               "changes": {k: [a, b] for k, (a, b) in changes.items()}}) + "\n"
            with open(out_dir / "recipe_changes.jsonl", "a") as f:
                f.write(line)
    atomic_write_bytes(out_dir / "recipe.yaml", dump_recipe(recipe).encode())
