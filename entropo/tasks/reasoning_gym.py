"""``reasoning_gym``: adapter for any reasoning-gym procedural dataset (Stojanovski et al. 2025, "REASONING GYM:
Reasoning Environments for Reinforcement Learning with Verifiable Rewards", arXiv 2505.24760).

``dataset`` names a registered reasoning-gym dataset (``basic_arithmetic``, ``leg_counting``, ``chain_sum``, ...);
``config`` is passed through to its config dataclass (``create_dataset(name, seed=..., size=..., **config)``).

Split: train entries come from ``create_dataset(dataset, seed=train_seed, size=size)`` and eval entries from a second
dataset with ``seed=eval_seed``. Most reasoning-gym generators build entry ``idx`` from ``Random(seed + idx)``, so the
two seeds are chosen with non-overlapping ranges ``[train_seed, train_seed + size)`` and
``[eval_seed, eval_seed + eval_size)`` (both derived from ``seed`` with a stable hash). Two different generator seeds can
still produce the same question by chance, so disjointness is **probabilistic** in general; exact-duplicate questions
are excluded cheaply: a train entry whose question text equals an eval question is replaced by an entry of a third
"spare" dataset (tried deterministically, up to 16 candidates).

Reward: the dataset's own ``score_answer(answer=extracted, entry=entry)`` in [0, 1], exposed as
``task.score(completion, example)`` (the ``task_score`` reward uses it); ``correct`` is ``score >= 1.0``.
Extraction: the last ``<answer>...</answer>`` (reasoning-gym's ``extract_answer``) if present, else the fallback
``extract`` mode: ``"last_line"`` (default; the last non-empty line), ``"completion"`` (the whole stripped completion),
or ``"last_number"``.

``system_prompt`` may be a literal string or the name of one of reasoning-gym's ``SYSTEM_PROMPTS`` (``"default"``,
``"DeepSeekZero"``, ``"simple"``, ``"direct"``). When the prompt mentions ``<answer>`` tags, the gold completion
``target`` is ``<answer>{answer}</answer>``, else the bare answer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from entropo.registry import register
from entropo.tasks.base import extract_answer_tag, extract_last_line, extract_last_number, make_prompt, stable_seed, strict_params
from entropo.types import Example

EXTRACT_MODES = ("last_line", "completion", "last_number")


def _available() -> dict[str, Any]:
    from reasoning_gym.factory import DATASETS

    return DATASETS


class ReasoningGymTask:
    """Wraps two (three) reasoning-gym datasets. Build it with the registered factory ``reasoning_gym``."""

    def __init__(self, seed: int, eval_size: int, dataset: str, config: dict, size: int, template: str, chat: bool,
                 system_prompt: str | None, extract: str):
        import reasoning_gym

        self.name = f"reasoning_gym/{dataset}"
        self.dataset = dataset
        self.config = dict(config)
        self.template = template
        self.chat = chat
        self.system_prompt = system_prompt
        self.extract_mode = extract
        self._size = size
        self.train_seed = stable_seed(seed, "rg-train", dataset) % 2**30
        self.eval_seed = self.train_seed + size + 1 + stable_seed(seed, "rg-eval", dataset) % 2**28
        self.spare_seed = self.eval_seed + max(eval_size, 1) + 1 + stable_seed(seed, "rg-spare", dataset) % 2**28
        self._train_ds = reasoning_gym.create_dataset(dataset, seed=self.train_seed, size=size, **self.config)
        self._spare_ds = None
        if eval_size > 0:
            self._eval_ds = reasoning_gym.create_dataset(dataset, seed=self.eval_seed, size=eval_size, **self.config)
            self._eval_entries = [self._eval_ds[j] for j in range(eval_size)]
        else:
            self._eval_ds, self._eval_entries = None, []
        self._eval_questions = {e["question"] for e in self._eval_entries}
        self._eval = [self._example(e, "eval", j) for j, e in enumerate(self._eval_entries)]

    def _example(self, entry: dict, split: str, index: int) -> Example:
        answer = entry.get("answer")
        answer = None if answer is None else str(answer)
        text = self.template.format(question=entry["question"])
        prompt = make_prompt(text, self.chat, self.system_prompt)
        tagged = "<answer>" in text or "<answer>" in (self.system_prompt or "")
        target = None if answer is None else (f"<answer>{answer}</answer>" if tagged else answer)
        meta = entry.get("metadata", {}) or {}
        return Example(
            prompt=prompt,
            answer=answer,
            target=target,
            meta={
                "task": self.name,
                "dataset": self.dataset,
                "difficulty": meta.get("difficulty"),
                "entry": entry,
                "split": split,
                "index": index,
            },
        )

    def train_size(self) -> int:
        return self._size

    def train_example(self, i: int) -> Example:
        if not 0 <= i < self._size:
            raise IndexError(f"train index {i} out of range [0, {self._size})")
        entry = self._train_ds[i]
        if entry["question"] in self._eval_questions:
            import reasoning_gym

            if self._spare_ds is None:
                self._spare_ds = reasoning_gym.create_dataset(
                    self.dataset, seed=self.spare_seed, size=self._size, **self.config
                )
            for k in range(16):
                cand = self._spare_ds[(i + k * 7919) % self._size]
                if cand["question"] not in self._eval_questions:
                    entry = cand
                    break
        return self._example(entry, "train", i)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def extract_answer(self, completion: str) -> str | None:
        """The answer string handed to ``score_answer`` (see module docstring)."""
        tagged = extract_answer_tag(completion)
        if tagged is not None:
            return tagged
        if self.extract_mode == "last_line":
            return extract_last_line(completion)
        if self.extract_mode == "last_number":
            return extract_last_number(completion)
        return completion.strip()

    def score(self, completion: str, example: Example) -> float:
        """The dataset's own graded score in [0, 1]."""
        entry = example.meta["entry"]
        ds = self._eval_ds if example.meta.get("split") == "eval" and self._eval_ds is not None else self._train_ds
        return float(ds.score_answer(answer=self.extract_answer(completion), entry=entry))

    def correct(self, completion: str, example: Example) -> bool:
        return self.score(completion, example) >= 1.0


@register("task", "reasoning_gym", description="any reasoning-gym dataset by name, graded by its own score_answer")
@strict_params("reasoning_gym")
def reasoning_gym_task(
    seed: int,
    eval_size: int = 64,
    *,
    dataset: str = "basic_arithmetic",
    config: dict | None = None,
    size: int = 10_000,
    template: str = "{question}",
    chat: bool = True,
    system_prompt: str | None = None,
    extract: str = "last_line",
) -> ReasoningGymTask:
    """reasoning-gym adapter factory: ``dataset`` (name), ``config`` (dict for the dataset's config dataclass),
    ``size`` (train entries), ``template`` (``{question}`` placeholder), ``chat``, ``system_prompt`` (string or a
    reasoning-gym SYSTEM_PROMPTS key), ``extract`` (fallback when there is no ``<answer>`` tag: last_line,
    completion, last_number)."""
    available = _available()
    if dataset not in available:
        names = sorted(available)
        close = [n for n in names if dataset.lower() in n or n in dataset.lower()]
        hint = f" (did you mean {', '.join(close[:5])}?)" if close else ""
        raise ValueError(
            f"reasoning_gym: unknown dataset {dataset!r}{hint}; {len(names)} datasets are available, e.g.: "
            f"{', '.join(names[:40])}, ... (full list: reasoning_gym.factory.DATASETS)"
        )
    config = dict(config or {})
    _, config_cls = available[dataset]
    fields = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]
    bad = [k for k in config if k not in fields]
    if bad:
        raise ValueError(
            f"reasoning_gym: dataset {dataset!r} has no config field(s) {', '.join(map(repr, bad))}; its fields are: "
            f"{', '.join(fields)} (seed and size are set by entropo: use task seed and the size param)"
        )
    if extract not in EXTRACT_MODES:
        raise ValueError(f"reasoning_gym: extract must be one of {', '.join(EXTRACT_MODES)}, got {extract!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"reasoning_gym: size must be a positive integer, got {size!r}")
    if system_prompt is not None:
        from reasoning_gym.utils import SYSTEM_PROMPTS

        system_prompt = SYSTEM_PROMPTS.get(system_prompt, system_prompt)
    try:
        template.format(question="q")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"reasoning_gym: bad template ({e!r}); the only placeholder is {{question}}") from None
    return ReasoningGymTask(seed, eval_size, dataset, config, size, template, chat, system_prompt, extract)
