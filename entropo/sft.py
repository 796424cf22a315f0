"""Supervised warm-up on a task's gold completions, run before RL when ``warmup.steps > 0``.

A randomly initialised model earns zero reward on every task, so group-relative RL has nothing to learn from; a few
seconds of SFT on the task's ``Example.target`` gives the tiny demo model a policy that is right some of the time,
and RL takes it from there. Prompts are tokenized exactly as the rollout engine tokenizes them.

In a multi-turn environment with a ``demonstration(example)`` method (e.g. ``python_tool``), the warm-up trains on
that worked episode instead: its ids are built exactly as the episode rollout builds a trajectory (prompt, each
assistant turn's ids plus the end-of-turn token the policy samples, then the template's reply ids), and only the
assistant turns carry loss. An environment with ``demonstration_rows(example)`` gives several such rows per example,
each ``(first observation, messages)``: e.g. one per round of an episode whose context is rebuilt every round
(``notebook``, IterResearch arXiv 2511.07327), laid out as the rollout lays out those rounds.
"""

from __future__ import annotations

import time

import torch

from entropo import ops


def demonstration_ids(chat, first_observation, messages, role: str, eos_id: int) -> tuple[list[int], list[float]]:
    """(ids, loss mask) of a worked episode laid out as the episode rollout lays out a sampled one."""
    templated = chat.uses_template(first_observation)
    ids = chat.prompt_ids(first_observation)
    mask = [0.0] * len(ids)
    end_of_turn = chat.close_ids[0] if templated and chat.close_ids else eos_id
    for message in messages:
        if message["role"] == "assistant":
            action = chat.encode(message["content"]) + [end_of_turn]
            ids, mask = ids + action, mask + [1.0] * len(action)
        else:
            reply = chat.reply_ids(ids[-1:], message, templated, role)
            ids, mask = ids + reply, mask + [0.0] * len(reply)
    return ids, mask


def _sft_batch(engine, tokenizer, examples, device, environment=None):
    rows, masks = [], []
    for ex in examples:
        env = environment() if environment is not None else None
        demo_rows = env.demonstration_rows(ex) if env is not None and hasattr(env, "demonstration_rows") else None
        if demo_rows:
            for first, messages in demo_rows:
                ids, mask = demonstration_ids(engine.chat, first, messages, env.observation_role,
                                              tokenizer.eos_token_id)
                rows.append(ids)
                masks.append(mask)
            continue
        demo = env.demonstration(ex) if env is not None and hasattr(env, "demonstration") else None
        if demo is not None:
            first = env.reset(ex, 0)
            ids, mask = demonstration_ids(engine.chat, first, demo, env.observation_role, tokenizer.eos_token_id)
            rows.append(ids)
            masks.append(mask)
            continue
        if ex.target is None:
            raise ValueError(f"warm-up needs Example.target (a gold completion); task example {ex.prompt!r} has none")
        p = engine.encode_prompt(ex.prompt)
        t = tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + t)
        masks.append([0.0] * len(p) + [1.0] * len(t))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    # left padding, as in rollouts, so positions line up with what the policy sees when sampling
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    target_mask = torch.tensor([[0.0] * (width - len(m)) + m for m in masks], device=device)
    return input_ids, attention, target_mask


def warmup(model, tokenizer, engine, task, cfg, seed: int, environment=None) -> dict[str, float]:
    """``cfg.steps`` AdamW steps of next-token cross-entropy on gold completions; returns final loss and time."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 10_007)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    model.train()
    loss_value = float("nan")
    for _ in range(cfg.steps):
        idx = torch.randint(task.train_size(), (cfg.batch_size,), generator=gen).tolist()
        input_ids, attention, target_mask = _sft_batch(engine, tokenizer, [task.train_example(i) for i in idx],
                                                       device, environment)
        logprobs, _ = ops.token_logprobs_and_entropy(model, input_ids, attention, compute_mask=target_mask,
                                                     with_entropy=False)
        loss = -(logprobs * target_mask).sum() / target_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    model.eval()
    return {"loss": loss_value, "time": time.perf_counter() - t0}
