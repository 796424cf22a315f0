"""The one held-out evaluator of ``time_to_accuracy.py``: the same code scores the entropo and the TRL snapshots.

It uses neither library's training code: prompts go through the tokenizer's own chat template (what both trainers
feed; the driver checks entropo's and TRL's prompt ids against it), completions are GREEDY ``model.generate`` (the
lowest-variance accuracy; no sampling noise between snapshots), and a completion is right when the task's verifier
says so (arithmetic: the last number equals the answer).

    prompt_ids(tokenizer, prompt)                       -> list[int]
    greedy_completions(model, tokenizer, examples, ...) -> list[str]
    accuracy(task, examples, completions)               -> (fraction correct, per-example 0/1 list)
    evaluate_weights(model, tokenizer, task, examples, ...) -> dict
"""

from __future__ import annotations

from typing import Any, Sequence


def prompt_ids(tokenizer, prompt: Any) -> list[int]:
    """Token ids of a prompt as a chat model sees it: chat messages through the tokenizer's chat template with the
    generation prompt appended; plain text encoded as is (no special tokens added)."""
    if isinstance(prompt, list):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizer versions return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def _pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def greedy_completions(model, tokenizer, examples: Sequence[Any], max_new_tokens: int,
                       batch_size: int = 64) -> list[str]:
    """Greedy completions (argmax every token, up to ``max_new_tokens`` or EOS) of ``examples``' prompts, left-padded
    batches through ``model.generate``; returned as text without special tokens."""
    import torch

    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    out: list[str] = []
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = [prompt_ids(tokenizer, ex.prompt) for ex in examples[start:start + batch_size]]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk])
        with torch.no_grad():
            gen = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                 temperature=None, top_p=None, top_k=None)
        for row in gen[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out


def accuracy(task, examples: Sequence[Any], completions: Sequence[str]) -> tuple[float, list[int]]:
    """Fraction of completions the task's verifier accepts (a verifier error counts as wrong), and the 0/1 list."""
    if len(examples) != len(completions):
        raise ValueError(f"accuracy: {len(examples)} examples but {len(completions)} completions")
    marks = []
    for ex, text in zip(examples, completions):
        try:
            marks.append(int(bool(task.correct(text, ex))))
        except Exception:  # a verifier crash marks the sample wrong, never kills the evaluation
            marks.append(0)
    return (sum(marks) / len(marks) if marks else 0.0), marks


def evaluate_weights(model, tokenizer, task, examples: Sequence[Any], max_new_tokens: int,
                     batch_size: int = 64) -> dict[str, Any]:
    """Held-out greedy accuracy of ``model`` as it is now."""
    import time

    t0 = time.perf_counter()
    completions = greedy_completions(model, tokenizer, examples, max_new_tokens, batch_size)
    acc, marks = accuracy(task, examples, completions)
    return {"accuracy": acc, "correct": marks, "n": len(marks), "eval_s": time.perf_counter() - t0,
            "samples": completions[:4]}
