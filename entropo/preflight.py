"""Checks run once the model is loaded and before any work: problems the data would otherwise hit mid-run."""

from __future__ import annotations

from typing import Any

from entropo.config import ConfigError

# Training prompts scanned up front (all eval prompts are); the engine still checks every batch it samples.
MAX_TRAIN_PROMPTS = 1024


def _positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _where(task: Any, example: Any, split: str, index: int) -> str:
    meta = getattr(example, "meta", None) or {}
    path = getattr(task, "path", None)
    if path is not None and isinstance(meta.get("row"), int):
        from entropo.tasks.dataset import row_location

        return f"{path}, {row_location(path, meta['row'])} ({split} split)"
    return f"{getattr(task, 'name', 'task')} {split} example {index}"


def check_prompt_lengths(engine: Any, task: Any, eval_examples: list, max_new_tokens: int,
                         max_train: int = MAX_TRAIN_PROMPTS) -> None:
    """ConfigError naming the first prompt (file and line for a dataset) whose tokens plus ``max_new_tokens`` exceed
    the model's positions: all eval prompts and the first ``max_train`` training prompts."""
    positions = _positions(getattr(engine, "model", None))
    encode = getattr(engine, "encode_prompt", None)
    if positions is None or encode is None:
        return
    limit = positions - max_new_tokens
    todo = [("eval", i, e) for i, e in enumerate(eval_examples)]
    todo += [("train", i, task.train_example(i)) for i in range(min(max_train, task.train_size()))]
    for split, i, example in todo:
        n = len(encode(example.prompt))
        if n > limit:
            raise ConfigError(
                f"{_where(task, example, split, i)}: the prompt is {n} tokens, and with rollout.max_new_tokens="
                f"{max_new_tokens} that exceeds the model's {positions} positions. Shorten or drop that prompt, lower "
                f"rollout.max_new_tokens (to at most {positions - n}), or use a model with a longer context")
