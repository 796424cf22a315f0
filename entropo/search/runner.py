"""``entropo search``: compare search strategies on a task's held-out set — accuracy vs generated tokens.

For every strategy and budget, each held-out example is searched once (seeded per (strategy, budget, example), so a
run is reproducible and strategies do not share random streams); accuracy is the task's verifier on the answer the
strategy returns, cost is the mean number of tokens generated per problem (policy samples plus scorer rollouts).
Writes ``OUT/results.json`` (per point: accuracy, tokens, and per-example rows) and ``OUT/accuracy_vs_tokens.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from entropo.search.scorers import make_scorer
from entropo.search.steps import StepSampler
from entropo.search.strategies import STRATEGIES, budget_params
from entropo.tasks.base import stable_seed


def make_sampler(engine: Any, seed: int, **params: Any) -> StepSampler:
    device = next(engine.model.parameters()).device
    return StepSampler(engine, torch.Generator(device=device).manual_seed(seed), **params)


def search_one(strategy: str, example: Any, engine: Any, task: Any, *, seed: int, scorer: str = "outcome",
               scorer_params: dict | None = None, sampler_params: dict | None = None,
               params: dict | None = None) -> dict[str, Any]:
    """Search one example; returns its row: correct, tokens, text, the partial, and the strategy's info."""
    sampler = make_sampler(engine, seed, **(sampler_params or {}))
    scoring = make_scorer(scorer, task=task, tokenizer=engine.tokenizer, sampler=sampler, **(scorer_params or {}))
    extra = {"tokenizer": engine.tokenizer} if strategy == "mcts" else {}
    prompt_ids = engine.encode_prompt(example.prompt)
    before = sampler.tokens
    final, info = STRATEGIES[strategy](example, prompt_ids, sampler, scoring, **(params or {}), **extra)
    text = final.text(engine.tokenizer)
    return {"correct": bool(task.correct(text, example)), "tokens": sampler.tokens - before, "text": text,
            "partial": final, "info": info}


def compare(engine: Any, task: Any, examples: list, strategies: list[str], budgets: list[int], *, seed: int = 0,
            scorer: str = "outcome", scorer_params: dict | None = None, sampler_params: dict | None = None,
            strategy_params: dict[str, dict] | None = None,
            console: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One point per (strategy, budget) (greedy: one point): accuracy and mean tokens over ``examples``."""
    points = []
    for name in strategies:
        for budget in ([1] if name == "greedy" else budgets):
            params = {**(strategy_params or {}).get(name, {}), **budget_params(name, budget)}
            t0 = time.perf_counter()
            rows = [search_one(name, ex, engine, task, seed=stable_seed(seed, name, budget, i), scorer=scorer,
                               scorer_params=scorer_params, sampler_params=sampler_params, params=params)
                    for i, ex in enumerate(examples)]
            acc = sum(r["correct"] for r in rows) / max(1, len(rows))
            tokens = sum(r["tokens"] for r in rows) / max(1, len(rows))
            points.append({"strategy": name, "budget": budget, "params": params, "accuracy": acc, "tokens": tokens,
                           "seconds": time.perf_counter() - t0,
                           "rows": [{"correct": r["correct"], "tokens": r["tokens"], "text": r["text"]} for r in rows]})
            console(f"  {name:9s} budget {budget:3d}: accuracy {acc:.3f}  tokens/problem {tokens:7.1f}")
    return points


def plot_points(points: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Accuracy vs mean generated tokens per problem, one line per strategy (log x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(p["strategy"] for p in points):
        pts = sorted((p for p in points if p["strategy"] == name), key=lambda p: p["tokens"])
        ax.plot([p["tokens"] for p in pts], [p["accuracy"] for p in pts], marker="o", label=name)
        for p in pts:
            if name != "greedy":
                ax.annotate(str(p["budget"]), (p["tokens"], p["accuracy"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (policy + scorer)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy vs generated tokens")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_target(target: str, *, task: str | None, task_params: dict | None, eval_size: int, overrides: list[str],
                seed: int, warmup: bool = True, console: Callable[[str], None] = print):
    """(engine, task) from a training recipe (its model, task and SFT warm-up) or a model name/path + ``task``."""
    from entropo import models, registry
    from entropo.rollout.hf import HFEngine

    from entropo.api import _recipe_file, load_recipe
    from entropo.config import ConfigError

    here = Path(target)
    try:
        if here.exists() and not (here.is_file() and here.suffix in (".yaml", ".yml")):
            raise ConfigError("a model folder or file")
        recipe_path = _recipe_file(target)
    except ConfigError:  # not a recipe: a model name or path
        recipe_path = None
        if overrides:
            raise ValueError(f"--set needs a recipe target; {target!r} is not a recipe file or shipped "
                             "recipe") from None
    recipe = load_recipe(recipe_path, overrides) if recipe_path is not None else None
    if recipe is not None:
        torch.manual_seed(recipe.seed)
        model, tokenizer = models.load(recipe.model.name_or_path, dtype=recipe.model.dtype,
                                       gguf_file=recipe.model.gguf_file, tiny_kwargs=recipe.model.tiny)
        spec_name, spec_params = (task, task_params or {}) if task else (recipe.task.name, recipe.task.params)
        the_task = registry.get("task", spec_name)(seed=recipe.seed, eval_size=eval_size, **spec_params)
        engine = HFEngine(model, tokenizer, chat_template=recipe.rollout.chat_template)
        if warmup and recipe.warmup.steps > 0:
            from entropo.sft import warmup as sft_warmup

            console(f"warm-up: {recipe.warmup.steps} SFT steps on {spec_name}")
            sft_warmup(model, tokenizer, engine, the_task, recipe.warmup, recipe.seed)
        return engine, the_task
    if not task:
        raise ValueError(f"{target!r} is a model, not a recipe: name the task with --task (e.g. --task arith_chain)")
    model, tokenizer = models.load(target)
    the_task = registry.get("task", task)(seed=seed, eval_size=eval_size, **(task_params or {}))
    return HFEngine(model, tokenizer), the_task


def run_search(target: str, out_dir: str | Path, *, task: str | None = None, task_params: dict | None = None,
               strategies: list[str] = ("greedy", "best_of_n", "beam", "mcts"), budgets: list[int] = (1, 2, 4),
               scorer: str = "outcome", scorer_params: dict | None = None, eval_size: int = 32, seed: int = 0,
               max_step_tokens: int = 16, max_steps: int = 8, max_tokens: int = 64, temperature: float = 1.0,
               overrides: list[str] = (), console: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``entropo search`` command: load, compare, write results.json and the plot; returns the results."""
    for s in strategies:
        budget_params(s, 1)  # fail on an unknown strategy before loading anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine, the_task = load_target(target, task=task, task_params=task_params, eval_size=eval_size,
                                   overrides=list(overrides), seed=seed, console=console)
    examples = the_task.eval_examples()[:eval_size]
    sampler_params = {"temperature": temperature, "max_step_tokens": max_step_tokens, "max_steps": max_steps,
                      "max_tokens": max_tokens}
    t0 = time.perf_counter()
    points = compare(engine, the_task, examples, list(strategies), list(budgets), seed=seed, scorer=scorer,
                     scorer_params=scorer_params, sampler_params=sampler_params, console=console)
    results = {"target": target, "task": getattr(the_task, "name", task), "scorer": scorer,
               "eval_size": len(examples), "seed": seed, "sampler": sampler_params, "points": points,
               "wall_s": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot = plot_points(points, out / "accuracy_vs_tokens.png",
                       f"{results['task']}, scorer {scorer}, {len(examples)} held-out problems")
    results["plot"] = str(plot)
    return results
