"""MCTS-DPO's iterative driver: search → step-level pairs → DPO → repeat, and its instance-level DPO baseline.

Paper: "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning" (MCTS-DPO), Xie et al.,
arXiv 2405.00451. Each iteration searches fresh training prompts with the current policy (``entropo.search.mcts``:
PUCT, visit-weighted backup, move to the most visited child), turns every node of the chosen path with two or more
children into a step-level pair (``tree_pairs``: the highest-Q sibling vs the lowest-Q one, each continued through
single-child chains, after the prompt and the steps chosen so far), and trains DPO on them:

- the loss is ``dpo`` (``entropo.algorithms.preferences``, sigmoid, β) with the pair's own conservative label
  smoothing ``ε = min(1 - c, 0.5)``, ``c = 1 / (1 + N_rejected / max(1, N_chosen))`` from the two children's visit
  counts, carried per row in ``Batch.extras["label_smoothing"]`` (the objective reads it per comparison);
- log-probs are summed from the first token where chosen and rejected differ (``token_weights`` are 0 on their
  common prefix; the paper's "divergent suffix" — for DPO's Δ the shared tokens cancel exactly, so this changes
  only the logged log-ratios);
- training is on the token ids the search sampled (``Partial`` steps): nothing is decoded and re-encoded;
- the reference: ``reference="sft"`` (default) keeps the policy the loop started from (the SFT warm-up model)
  frozen for every iteration, as the official code does (YuxiXie/MCTS-DPO ``mcts_rl/trainers/tsrl_trainer.py``:
  ``actor_reference_model`` is loaded once from ``actor_ref_model_name_or_path`` as an eval engine and never
  refreshed; ``trainer.py``'s ``tsrl_step`` scores every pair against it, and the search uses the training
  policy, ``actor_model``, unless ``offline``); ``reference="iteration"`` uses each iteration's starting policy
  (iterative-DPO style) instead;
- differences from the official loop: it searches one prompt per device and at once takes DPO steps on that
  tree's pairs (gradients accumulated over 64 of them, so the search policy trails the trained one by at most one
  accumulated update); here each iteration searches a block of prompts,
  then makes ``dpo_epochs`` passes over the block's pairs with a fresh AdamW (constant lr, no warm-up/decay);
- evaluation: held-out greedy accuracy after every iteration (iteration 0 = before any update).

The comparison arm ``level="instance"`` is the paper's instance-level DPO: from the same search trees, whole
responses (the finished leaves' sampled ids under the bare prompt) with different values, the higher chosen — at
most as many pairs per prompt as the step-level rule gives on that tree (equal numbers of pairs where the tree has
enough distinct correct/wrong responses; the counts are logged), no label smoothing. ``level="none"`` trains
nothing (evaluation only).

Also a program recipe: ``entropo run mcts_dpo`` (``mcts_dpo_program``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register
from entropo.search.mcts import Node, StepPair, pair_records, write_pairs_jsonl
from entropo.tasks.base import stable_seed

LEVELS = ("step", "instance", "none")
REFERENCES = ("sft", "iteration")


@dataclass
class IdPair:
    """A preference on token ids: after ``prompt_ids``, ``chosen_ids`` ≻ ``rejected_ids``, smoothed by ``eps``."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    label_smoothing: float = 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pairs_to_batch(pairs: Sequence[Any], pad_id: int, divergent_suffix: bool = True,
                   device: torch.device | str = "cpu") -> Batch:
    """Linked Batch rows from pairs (anything with ``prompt_ids``/``chosen_ids``/``rejected_ids``/
    ``label_smoothing``): pair k is rows 2k (chosen, ``pair_rank`` 0) and 2k+1 (rejected, rank 1) with
    ``pair_ids`` k; each row is its prompt ids then its response ids exactly, left-padded; ``response_mask`` marks
    the response; ``token_weights`` also zero the common prefix of the two responses when ``divergent_suffix``;
    ``extras["label_smoothing"]`` is the pair's ε on both rows; ``rewards``/``correct`` 1 on chosen rows."""
    if not pairs:
        raise ValueError("pairs_to_batch: no pairs (the search found no sibling with a different value)")
    seqs, resp_lens, skips, eps = [], [], [], []
    for k, p in enumerate(pairs):
        chosen, rejected = [int(t) for t in p.chosen_ids], [int(t) for t in p.rejected_ids]
        if not chosen or not rejected:
            raise ValueError(f"pairs_to_batch: pair {k} has an empty chosen or rejected response")
        e = float(p.label_smoothing)
        if not 0.0 <= e <= 0.5:
            raise ValueError(f"pairs_to_batch: pair {k} has label_smoothing {e}; it must be in [0, 0.5]")
        shared = common_prefix(chosen, rejected) if divergent_suffix else 0
        for resp in (chosen, rejected):
            seqs.append([int(t) for t in p.prompt_ids] + resp)
            resp_lens.append(len(resp))
            skips.append(shared)
            eps += [e]
    width = max(len(s) for s in seqs)
    rows = len(seqs)
    input_ids = torch.full((rows, width), int(pad_id), dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    response = torch.zeros(rows, width)
    weights = torch.zeros(rows, width)
    for i, (s, n, skip) in enumerate(zip(seqs, resp_lens, skips)):
        input_ids[i, width - len(s):] = torch.tensor(s)
        attention[i, width - len(s):] = 1
        response[i, width - n:] = 1.0
        weights[i, width - n + skip:] = 1.0
    chosen_row = torch.tensor([1.0, 0.0] * len(pairs))
    batch = Batch(input_ids=input_ids, attention_mask=attention, response_mask=response, rewards=chosen_row,
                  group_ids=torch.arange(len(pairs)).repeat_interleave(2), token_weights=weights,
                  correct=chosen_row.bool(), pair_ids=torch.arange(len(pairs)).repeat_interleave(2),
                  pair_rank=torch.tensor([0, 1] * len(pairs)),
                  extras={"label_smoothing": torch.tensor(eps)})
    return batch.to(device)


def _logprobs(model, batch: Batch) -> torch.Tensor:
    lp, _ = ops.token_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask,
                                           compute_mask=batch.response_mask, with_entropy=False)
    return lp


def dpo_on_pairs(model, reference, batch: Batch, *, steps: int, pairs_per_step: int, lr: float, beta: float,
                 seed: int) -> dict[str, float]:
    """``steps`` AdamW steps of the ``dpo`` objective (per-pair label smoothing from the batch) on random mini-batches
    of ``pairs_per_step`` pairs; the reference's log-probs are computed once. Returns the last step's loss and
    objective metrics (``last_batch_*``: margins, accuracy, ... of that mini-batch before its update) and the time."""
    from entropo.algorithms.preferences import dpo

    t0 = time.perf_counter()
    with torch.no_grad():
        batch.ref_logprobs = _logprobs(reference, batch)
    n_pairs = batch.size // 2
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    last: dict[str, float] = {}
    for _ in range(steps):
        pick = torch.randperm(n_pairs, generator=gen)[:pairs_per_step]
        rows = torch.stack([2 * pick, 2 * pick + 1], 1).flatten()
        mb = batch.select(rows)
        lp = _logprobs(model, mb)
        per_row, metrics = dpo(lp, lp.detach(), torch.zeros_like(lp), mb.token_weights, micro_batch=mb, beta=beta)
        loss = per_row.sum() / max(1, mb.num_comparisons())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = {"dpo_loss": float(loss.detach()), **{f"last_batch_{k}": float(v) for k, v in metrics.items()}}
    model.eval()
    return {**last, "time": time.perf_counter() - t0}


def finished_leaves(root: Node) -> list[Node]:
    """The tree's finished nodes (complete responses), depth-first in child order."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.terminal and node.parent is not None:
            out.append(node)
        stack.extend(reversed(node.children or []))
    return out


def instance_pairs(root: Node, limit: int) -> list[IdPair]:
    """Instance-level pairs from one tree: every two distinct finished responses (sampled ids) whose values differ
    (the higher one chosen), the largest value gap first, then the better response's rank and the worse one's
    rank from the bottom (ranks by value, ties in tree order); at most ``limit`` pairs; ε = 0. A response may serve
    in several pairs (a tree seldom holds as many disjoint correct/wrong pairs as the step-level rule gives)."""
    seen, leaves = set(), []
    for leaf in finished_leaves(root):
        ids = tuple(leaf.partial.response_ids)
        if ids and ids not in seen:
            seen.add(ids)
            leaves.append(leaf)
    order = sorted(leaves, key=lambda n: -n.value)  # stable: ties keep tree order
    n = len(order)
    cands = [(i, j) for i in range(n) for j in range(n) if order[i].value > order[j].value]
    cands.sort(key=lambda ij: (-(order[ij[0]].value - order[ij[1]].value), ij[0], -ij[1]))
    prompt = list(root.partial.prompt_ids)
    return [IdPair(prompt, order[i].partial.response_ids, order[j].partial.response_ids, 0.0)
            for i, j in cands[:max(0, limit)]]


def iteration_pairs(level: str, trees: Sequence[tuple[Node, list[StepPair]]]) -> list[Any]:
    """The pairs one iteration trains on, from each searched prompt's (root, step pairs of its chosen path)."""
    if level not in LEVELS:
        raise ValueError(f"mcts_dpo: level must be one of {list(LEVELS)}, got {level!r}")
    out: list[Any] = []
    for root, steps in trees:
        if level == "step":
            out += steps
        elif level == "instance":
            out += instance_pairs(root, len(steps))
    return out


def mcts_dpo(engine, task, *, iterations: int = 3, prompts_per_iter: int = 32, level: str = "step",
             reference: str = "sft", mcts_params: dict | None = None, scorer: str = "outcome",
             sampler_params: dict | None = None, dpo_epochs: float = 4.0, pairs_per_step: int = 16, lr: float = 1e-3,
             beta: float = 0.1, eval_examples: list | None = None, seed: int = 0, out_dir: str | Path | None = None,
             logger: Any = None, console: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the loop on ``engine.model`` in place; one row per iteration (0 = before any update): held-out greedy
    accuracy, the search's train accuracy, pairs, mean ε, DPO metrics. With ``out_dir``, each iteration's pairs go
    to ``OUT/pairs_iter<k>.jsonl`` (texts and token ids)."""
    from entropo.search.expert import greedy_accuracy
    from entropo.search.runner import search_one

    if level not in LEVELS:
        raise ValueError(f"mcts_dpo: level must be one of {list(LEVELS)}, got {level!r}")
    if reference not in REFERENCES:
        raise ValueError(f"mcts_dpo: reference must be one of {list(REFERENCES)}, got {reference!r}")
    model = engine.model
    max_tokens = (sampler_params or {}).get("max_tokens", 64)
    eval_examples = eval_examples if eval_examples is not None else task.eval_examples()
    history = [{"iteration": 0, "eval_greedy": greedy_accuracy(engine, task, eval_examples, max_tokens)}]
    console(f"  mcts_dpo ({level}) iteration 0: held-out greedy accuracy {history[0]['eval_greedy']:.3f}")
    if logger is not None:
        logger.log(0, history[0])
    ref_model = copy.deepcopy(model).eval() if reference == "sft" and level != "none" else None
    for it in range(1, iterations + 1):
        if level == "none":
            history.append({**history[0], "iteration": it, "pairs": 0})
            continue
        if reference == "iteration":
            ref_model = copy.deepcopy(model).eval()
        start = (it - 1) * prompts_per_iter
        examples = [task.train_example((start + j) % task.train_size()) for j in range(prompts_per_iter)]
        trees, found, tokens, records = [], 0, 0, []
        for j, ex in enumerate(examples):
            row = search_one("mcts", ex, engine, task, seed=stable_seed(seed, "mcts_dpo", it, j), scorer=scorer,
                             sampler_params=sampler_params, params=mcts_params)
            found += int(row["correct"])
            tokens += row["tokens"]
            trees.append((row["info"]["root"], row["info"]["pairs"]))
        pairs = iteration_pairs(level, trees)
        step_count = sum(len(s) for _, s in trees)
        if out_dir is not None and pairs:
            for (root, _), ex in zip(trees, examples):
                records += pair_records(iteration_pairs(level, [(root, _)]), engine.tokenizer, ex)
            write_pairs_jsonl(Path(out_dir) / f"pairs_iter{it}.jsonl", records)
        fit: dict[str, float] = {}
        if pairs:
            batch = pairs_to_batch(pairs, engine.pad_token_id, device=next(model.parameters()).device)
            steps = math.ceil(dpo_epochs * len(pairs) / pairs_per_step)
            fit = dpo_on_pairs(model, ref_model, batch, steps=steps, pairs_per_step=pairs_per_step, lr=lr, beta=beta,
                               seed=stable_seed(seed, "mcts_dpo-train", it))
            fit["dpo_steps"] = steps
        acc = greedy_accuracy(engine, task, eval_examples, max_tokens)
        row = {"iteration": it, "eval_greedy": acc, "search_train_accuracy": found / len(examples),
               "pairs": len(pairs), "step_pairs_available": step_count, "search_tokens": tokens,
               "mean_label_smoothing": (sum(float(p.label_smoothing) for p in pairs) / len(pairs)) if pairs else 0.0,
               **fit}
        history.append(row)
        if logger is not None:
            logger.log(it, row)
        console(f"  mcts_dpo ({level}) iteration {it}: search {found}/{len(examples)} correct, {len(pairs)} pairs "
                f"(step-level available {step_count}), DPO loss {fit.get('dpo_loss', float('nan')):.3f}, "
                f"held-out greedy accuracy {acc:.3f}")
    return history


@register("program", "mcts_dpo", paper="MCTS-DPO, Monte Carlo Tree Search Boosts Reasoning via Iterative "
          "Preference Learning, arXiv 2405.00451")
def mcts_dpo_program(out_dir: Path, seed: int, console: Callable[[str], None], recipe: str = "search_tiny",
                     iterations: int = 3, prompts_per_iter: int = 32, level: str = "step", reference: str = "sft",
                     n_iters: int = 4, n_actions: int = 2, depth_limit: int = 3, scorer: str = "outcome",
                     dpo_epochs: float = 4.0, pairs_per_step: int = 16, lr: float = 1e-3, beta: float = 0.1,
                     eval_size: int = 64, max_tokens: int = 40, max_step_tokens: int = 16) -> dict[str, Any]:
    """``entropo run mcts_dpo``: warm up the ``recipe``'s model (SFT), then ``iterations`` of search → pairs → DPO;
    per-iteration rows in OUT/history.json and OUT/metrics.jsonl, each iteration's pairs in OUT/pairs_iter<k>.jsonl.
    ``level``: ``step`` (MCTS-DPO), ``instance`` (whole-response DPO on the same trees, equal pair counts) or
    ``none``."""
    from entropo.logging import MetricsLogger
    from entropo.search.runner import load_target

    if level not in LEVELS or reference not in REFERENCES:
        raise ValueError(f"mcts_dpo: level must be one of {list(LEVELS)} and reference one of {list(REFERENCES)} "
                         f"(got {level!r}, {reference!r})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine, task = load_target(recipe, task=None, task_params=None, eval_size=eval_size, overrides=[f"seed={seed}"],
                               seed=seed, console=console)
    logger = MetricsLogger(out, tensorboard=False)
    history = mcts_dpo(engine, task, iterations=iterations, prompts_per_iter=prompts_per_iter, level=level,
                       reference=reference,
                       mcts_params={"n_iters": n_iters, "n_actions": n_actions, "depth_limit": depth_limit},
                       scorer=scorer, sampler_params={"max_tokens": max_tokens, "max_step_tokens": max_step_tokens},
                       dpo_epochs=dpo_epochs, pairs_per_step=pairs_per_step, lr=lr, beta=beta,
                       eval_examples=task.eval_examples()[:eval_size], seed=seed, out_dir=out, logger=logger,
                       console=console)
    logger.close()
    (out / "history.json").write_text(json.dumps(history, indent=1, default=float))
    return {"history": history, "level": level, "reference": reference,
            "gain": history[-1]["eval_greedy"] - history[0]["eval_greedy"]}
