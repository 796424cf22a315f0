"""Final answers of sampled responses and their grouping into semantic clusters.

Several methods need to know which responses of one prompt *mean* the same thing without (or besides) a ground
truth: SEED-GRPO (semantic entropy of a prompt's answers, arXiv 2505.12346), EMPO (reward = probability of the
response's semantic cluster, arXiv 2504.05812) and TTRL/ETTRL (majority-vote pseudo-labels, arXiv 2504.16084 /
2508.11356). For verifiable tasks the meaning of a response is its final answer, so clusters are classes of
equivalent final answers.
"""

from __future__ import annotations

import re
from typing import Callable

from entropo.tasks.base import extract_answer_tag, extract_last_number, normalize_answer
from entropo.types import Sample

_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def final_answer(sample: Sample) -> str | None:
    """The response's final answer: the task's own ``extract_answer`` if it has one, else the last ``\\boxed{}``,
    else the last ``<answer>`` tag, else the last number; None when nothing can be extracted."""
    extract = getattr(sample.task, "extract_answer", None)
    if callable(extract):
        return extract(sample.completion)
    text = sample.completion
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    tag = extract_answer_tag(text)
    if tag is not None:
        return tag
    return extract_last_number(text)


def same_answer(a: str, b: str) -> bool:
    """Numeric equality when both parse as numbers, else normalized string equality."""
    try:
        return abs(float(a.replace(",", "")) - float(b.replace(",", ""))) < 1e-9
    except ValueError:
        return normalize_answer(a) == normalize_answer(b)


def cluster_ids(answers: list[str | None], same: Callable[[str, str], bool] = same_answer) -> list[int]:
    """Greedy clustering: each answer joins the first earlier cluster whose representative it equals.

    Returns a cluster id per answer (0, 1, ... in order of first appearance); an unextractable answer (None) gets
    its own singleton cluster, so it never agrees with anything.
    """
    reps: list[str | None] = []
    ids: list[int] = []
    for a in answers:
        found = -1
        if a is not None:
            for k, r in enumerate(reps):
                if r is not None and same(a, r):
                    found = k
                    break
        if found < 0:
            reps.append(a)
            found = len(reps) - 1
        ids.append(found)
    return ids
