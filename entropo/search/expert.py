"""Expert iteration: search → keep the best (verified) answers → SFT on them → repeat.

The o1 roadmap survey ("Scaling of Search and Learning: A Roadmap to Reproduce o1 from Reinforcement Learning
Perspective", arXiv 2412.14135) names behaviour cloning on search outputs (expert iteration / ReST) as the simplest
"learning" half of search-then-learn: each iteration searches training prompts with the current policy, keeps the
answer the search returns when the task's verifier accepts it (training prompts have answers), and fine-tunes the
policy on the kept (prompt ids, response ids) with next-token cross-entropy on the response — the same loss as the
SFT warm-up (``entropo.sft``), on the sampled ids themselves (nothing is decoded and re-encoded).

Also a program recipe: ``entropo run expert_iteration`` (``expert_iteration_program``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from entropo import ops
from entropo.registry import register
from entropo.tasks.base import stable_seed


def sft_on_ids(model, rows: list[tuple[list[int], list[int]]], *, steps: int, batch_size: int, lr: float, seed: int,
               pad_id: int) -> dict[str, float]:
    """``steps`` AdamW steps of cross-entropy on the response ids of ``rows`` = [(prompt ids, response ids)]
    (left-padded as in rollouts; the prompt carries no loss). Returns the last loss and the time."""
    if not rows:
        return {"loss": float("nan"), "time": 0.0}
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss_value = float("nan")
    for _ in range(steps):
        idx = torch.randint(len(rows), (batch_size,), generator=gen).tolist()
        seqs = [rows[i][0] + rows[i][1] for i in idx]
        masks = [[0.0] * len(rows[i][0]) + [1.0] * len(rows[i][1]) for i in idx]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], device=device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        target = torch.tensor([[0.0] * (width - len(m)) + m for m in masks], device=device)
        logprobs, _ = ops.token_logprobs_and_entropy(model, input_ids, attention, compute_mask=target,
                                                     with_entropy=False)
        loss = -(logprobs * target).sum() / target.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    return {"loss": loss_value, "time": time.perf_counter() - t0}


def greedy_accuracy(engine, task, examples, max_tokens: int = 64) -> float:
    """Held-out accuracy of greedy decoding (one batched call)."""
    out = engine.generate([e for e in examples], 1, temperature=0.0, max_new_tokens=max_tokens)
    return sum(task.correct(t, e) for t, e in zip(out.completions, examples)) / max(1, len(examples))


def expert_iteration(engine, task, *, iterations: int = 2, prompts_per_iter: int = 64, strategy: str = "best_of_n",
                     strategy_params: dict | None = None, scorer: str = "outcome", sft_steps: int = 60,
                     sft_batch_size: int = 32, sft_lr: float = 1e-3, sft_epochs: float | None = None,
                     eval_examples: list | None = None,
                     sampler_params: dict | None = None, seed: int = 0,
                     console: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the loop on ``engine.model`` in place; one row per iteration (iteration 0 = before any update) with the
    held-out greedy accuracy, the search's train accuracy, kept examples and tokens spent searching.

    SFT length: ``sft_steps`` steps of ``sft_batch_size`` rows, or, with ``sft_epochs``, as many steps as make that
    many passes over the kept rows (``ceil(sft_epochs · kept / sft_batch_size)``)."""
    from entropo.search.runner import search_one

    max_tokens = (sampler_params or {}).get("max_tokens", 64)
    eval_examples = eval_examples if eval_examples is not None else task.eval_examples()
    history = [{"iteration": 0, "eval_greedy": greedy_accuracy(engine, task, eval_examples, max_tokens)}]
    console(f"  expert iteration 0: held-out greedy accuracy {history[0]['eval_greedy']:.3f}")
    for it in range(1, iterations + 1):
        start = (it - 1) * prompts_per_iter
        examples = [task.train_example((start + j) % task.train_size()) for j in range(prompts_per_iter)]
        kept, tokens, found = [], 0, 0
        for j, ex in enumerate(examples):
            row = search_one(strategy, ex, engine, task, seed=stable_seed(seed, "expert", it, j), scorer=scorer,
                             sampler_params=sampler_params, params=strategy_params)
            tokens += row["tokens"]
            if row["correct"]:
                found += 1
                kept.append((list(row["partial"].prompt_ids), row["partial"].response_ids))
        steps = sft_steps if sft_epochs is None else math.ceil(sft_epochs * len(kept) / sft_batch_size)
        fit = sft_on_ids(engine.model, kept, steps=steps if kept else 0, batch_size=sft_batch_size, lr=sft_lr,
                         seed=stable_seed(seed, "expert-sft", it), pad_id=engine.pad_token_id)
        acc = greedy_accuracy(engine, task, eval_examples, max_tokens)
        history.append({"iteration": it, "eval_greedy": acc, "search_train_accuracy": found / len(examples),
                        "kept": len(kept), "search_tokens": tokens, "sft_steps": steps if kept else 0,
                        "sft_loss": fit["loss"]})
        console(f"  expert iteration {it}: search found {found}/{len(examples)}, SFT loss {fit['loss']:.3f}, "
                f"held-out greedy accuracy {acc:.3f}")
    return history


@register("program", "expert_iteration", paper="o1 roadmap survey (expert iteration), arXiv 2412.14135")
def expert_iteration_program(out_dir: Path, seed: int, console: Callable[[str], None], recipe: str = "search_tiny",
                             iterations: int = 2, prompts_per_iter: int = 64, strategy: str = "best_of_n",
                             budget: int = 4, scorer: str = "outcome", sft_steps: int = 60, sft_lr: float = 1e-3,
                             sft_epochs: float | None = None, eval_size: int = 64,
                             max_tokens: int = 40) -> dict[str, Any]:
    """``entropo run expert_iteration``: warm up the ``recipe``'s model, then expert iteration; returns per-iteration
    rows (also plotted to OUT/expert_iteration.png)."""
    from entropo.search.runner import load_target
    from entropo.search.strategies import budget_params

    engine, task = load_target(recipe, task=None, task_params=None, eval_size=eval_size, overrides=[f"seed={seed}"],
                               seed=seed, console=console)
    history = expert_iteration(engine, task, iterations=iterations, prompts_per_iter=prompts_per_iter,
                               strategy=strategy, strategy_params=budget_params(strategy, budget), scorer=scorer,
                               sft_steps=sft_steps, sft_lr=sft_lr, sft_epochs=sft_epochs,
                               eval_examples=task.eval_examples()[:eval_size],
                               sampler_params={"max_tokens": max_tokens}, seed=seed, console=console)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "history.json").write_text(json.dumps(history, indent=1))
    return {"history": history, "gain": history[-1]["eval_greedy"] - history[0]["eval_greedy"]}
