"""``reex_sql``: the composite reward of ReEx-SQL (ReEx-SQL: Reasoning with Execution-Aware Reinforcement Learning
for Text-to-SQL, arXiv 2505.12768), for episodes of the ``text_to_sql`` environment.

    R = R_format + R_exec + R_explore

* R_format = ``format_value`` when every turn is well formed — each turn before the last ends with exactly one
  ``<intermediate_sql>...</intermediate_sql>`` (any free text, e.g. ``<think>...</think>`` reasoning, before it;
  ``<think>`` tags balanced), the last turn ends with exactly one non-empty ``<final_sql>...</final_sql>`` and has
  no intermediate query — else 0.
* R_exec = ``exec_value`` when the final query's result set equals the gold query's (the environment's verdict,
  ``EpisodeInfo.env_correct``; the task verifier when there is none), else 0.
* R_explore = ``explore_value`` · (1 − 2^(−k)), k = the number of intermediate queries that executed without error
  (``EpisodeInfo.info["sql_ok"]``), granted **only when the final query is correct**: 0, ½, ¾, ⅞, ... of
  ``explore_value`` for k = 0, 1, 2, 3 — saturating, so spamming queries earns almost nothing more.

The paper gives the three-part structure and the rule "exploration bonus only for correct answers, saturating in the
number of executions"; its constants were not recovered (no official code found). The values here are our choice:
``format_value=0.1``, ``exec_value=1.0``, ``explore_value=0.2`` and the halving saturation.
"""

from __future__ import annotations

import re

from entropo.registry import register
from entropo.types import Sample

PAPER = "ReEx-SQL: Reasoning with Execution-Aware Reinforcement Learning for Text-to-SQL, arXiv 2505.12768"


def _one_block_at_end(text: str, tag: str) -> bool:
    text = text.rstrip()
    open_, close = f"<{tag}>", f"</{tag}>"
    if text.count(open_) != 1 or text.count(close) != 1 or not text.endswith(close):
        return False
    return bool(text[text.index(open_) + len(open_): -len(close)].strip())


def _think_ok(text: str) -> bool:
    """``<think>`` blocks balanced and closed before the first SQL tag."""
    opens = [m.start() for m in re.finditer("<think>", text)]
    closes = [m.start() for m in re.finditer("</think>", text)]
    if len(opens) != len(closes) or any(c < o for o, c in zip(opens, closes)):
        return False
    first_sql = min([i for i in (text.find("<intermediate_sql>"), text.find("<final_sql>")) if i >= 0], default=-1)
    return not closes or first_sql < 0 or closes[-1] < first_sql


def well_formed(actions: list[str], intermediate_tag: str = "intermediate_sql", final_tag: str = "final_sql") -> bool:
    """The format rule of R_format (module docstring) over an episode's turns."""
    if not actions:
        return False
    *middle, last = actions
    for turn in middle:
        if f"<{final_tag}>" in turn or not _one_block_at_end(turn, intermediate_tag) or not _think_ok(turn):
            return False
    return (f"<{intermediate_tag}>" not in last and _one_block_at_end(last, final_tag) and _think_ok(last))


def explore_bonus(successful_queries: int, explore_value: float = 0.2) -> float:
    """explore_value · (1 − 2^(−k)): 0 at k = 0, saturating at ``explore_value``."""
    return float(explore_value) * (1.0 - 2.0 ** (-max(0, int(successful_queries))))


@register("reward", "reex_sql", paper=PAPER)
def reex_sql(sample: Sample, format_value: float = 0.1, exec_value: float = 1.0, explore_value: float = 0.2,
             intermediate_tag: str = "intermediate_sql", final_tag: str = "final_sql") -> float:
    """R_format + R_exec + R_explore of one episode (see the module docstring for the rules and constants)."""
    episode = sample.episode
    actions = list(episode.actions) if episode is not None and episode.actions else [sample.completion]
    verdict = episode.env_correct if episode is not None else None
    if verdict is None:
        if sample.task is None:
            raise ValueError("reex_sql needs the environment's verdict or sample.task (its verifier)")
        verdict = bool(sample.task.correct(sample.completion, sample.example))
    reward = float(format_value) if well_formed(actions, intermediate_tag, final_tag) else 0.0
    if verdict:
        k = int(episode.info.get("sql_ok", 0)) if episode is not None else 0
        reward += float(exec_value) + explore_bonus(k, explore_value)
    return reward
