"""``reseek_judge``: the reward of ReSeek ("ReSeek: A Self-Correcting Framework for Search Agents with Instructive
Rewards", arXiv 2510.00568) — outcome exact match plus a process reward for every JUDGE verdict.

    R = R_ans + Σ_pairs r(verdict, oracle, answer correct)     (the sum only when an answer was produced)

R_ans = ``answer_score`` (1) if the answer exactly matches a gold alias (SQuAD normalization), divided by
``spam_divisor`` (4) when the agent wrote more than ``spam_tags`` (10) ``<answer>`` or ``</answer>`` tags;
``format_score`` (0) otherwise; 0 without an answer.

Per (information, judge) pair, ``variant="regex"`` (no model; oracle useful ⇔ a gold alias, lower-cased, is a
substring of the lower-cased information):

===========  ===============  ==============  =========================================
verdict      oracle useful    answer correct  r
===========  ===============  ==============  =========================================
Yes          any              yes             correct_judge + boost = 0.3 + 0.1
Yes          yes              no              correct_judge = 0.3
Yes          no               no              wrong_yes = -0.6
No           no               yes             correct_judge + boost = 0.4
No           no               no              correct_judge = 0.3
No           yes              any             wrong_no = -0.3
===========  ===============  ==============  =========================================

``variant="reranker"`` (oracle useful ⇔ scorer(gold, information) >= ``threshold``; the paper uses
bge-reranker-v2-m3 with threshold 0.5; the scorer is only called where the table needs it):

===========  ==============  ==========  =================================
verdict      answer correct  similar     r (pos = 0.1, neg = -0.05)
===========  ==============  ==========  =================================
Yes          yes             any         pos = 0.1
Yes          no              yes         neg · 0.5 = -0.025
Yes          no              no          neg = -0.05
No           any             yes         neg = -0.05
No           any             no          pos · 0.2 = 0.02
===========  ==============  ==========  =================================

No reranker ships with entropo (none is available offline): ``scorer`` is an import path ``"pkg.module:function"``
to ``function(gold: str, information: str) -> float`` (e.g. a cross-encoder's sigmoid score); the variant raises a
clear error without one.

Checked against the official code (TencentBAC/ReSeek at commit d5a83308, ``verl/utils/reward_score/reseek_regex.py``
and ``reseek_rerank.py``): the constants above are the defaults of their ``compute_score`` (regex: boost 0.1, correct
judge 0.3, wrong Yes -0.6, wrong No -0.3; reranker: threshold 0.5, positive 0.1, negative -0.05 — the inner function's
own defaults 0.4 / -0.2 are overridden by ``compute_score``); "Yes and answer correct" is rewarded without consulting
the oracle in both; pairs with empty information are skipped; the process reward is 0 when the extracted answer is
empty; the anti-spam division applies only to a correct answer and counts opening *or* closing tags (> 10); the
reranker scores the first gold answer against the information. Differences here: pairs come from the environment's
record (``search_corpus`` stores each retrieved information with the verdict that judged it, so a verdict is never
paired with an earlier, unjudged information as the official nearest-following-judge regex can do); the answer is the
one the environment accepted (an answer refused by the judge-then-research rule is no answer); answer tags are counted
in the agent's actions, not in the prompt. Without an environment record (e.g. a single-turn transcript), pairs and the
answer are parsed from the transcript with the official rule.

Caution (measured, see the ``reseek_judge`` reproduce experiment): the process reward is gated on producing an
answer, and every per-pair value for a wrong answer is <= 0.3 while a wrong Yes costs 0.6, so a policy whose answers
are almost never right earns more by not answering at all (0) than by answering with a Yes. On the tiny model (exact
match ~0 after its warm-up) GRPO with this reward abandoned the search/answer format within 3 steps; the paper's
3B/7B models start with a substantial exact match, where answering pays.

``reseek_judge_agree`` (verdicts agreeing with the regex oracle) and ``reseek_judge_count`` (verdicts) are metrics:
with weight 0 in a recipe they are logged as ``reward/term/reseek_judge_agree`` and ``reward/term/reseek_judge_count``,
and a step's judge accuracy is their ratio (mean agree / mean count).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from entropo.envs.search import ANSWER_RE, INFO_RE, JUDGE_RE, alias_in, exact_match
from entropo.registry import register
from entropo.types import Sample


def _aliases(sample: Sample) -> list[str]:
    meta = sample.example.meta or {}
    aliases = meta.get("aliases") or ([sample.example.answer] if sample.example.answer is not None else [])
    if not aliases:
        raise ValueError("reseek_judge needs the gold answer: example.answer or example.meta['aliases']")
    return [str(a) for a in aliases]


def parse_pairs(transcript: str) -> list[dict[str, Any]]:
    """(information, verdict) pairs from a transcript: each ``<information>`` with the first ``<judge>`` after it
    (the official rule)."""
    pairs = []
    for info in INFO_RE.finditer(transcript):
        judge = JUDGE_RE.search(transcript, info.end())
        if judge is not None:
            pairs.append({"information": info.group(1).strip(), "verdict": judge.group(1).capitalize()})
    return pairs


def episode_record(sample: Sample) -> tuple[list[dict[str, Any]], str | None, str]:
    """(judge pairs, accepted answer or None, the agent's own text) — from the environment's record when there is
    one, else parsed from the transcript."""
    episode = getattr(sample, "episode", None)
    record = episode.info if episode is not None else {}
    if "judge_pairs" in record:
        return list(record["judge_pairs"]), record.get("answer"), "".join(episode.actions)
    text = sample.transcript or sample.completion
    answers = ANSWER_RE.findall(text)
    agent_text = "".join(episode.actions) if episode is not None and episode.actions else text
    return parse_pairs(text), (answers[-1].strip() if answers else None), agent_text


@functools.lru_cache(maxsize=8)
def load_scorer(path: str) -> Callable[[str, str], float]:
    from entropo.registry import import_callable

    return import_callable("reseek_judge scorer", path)


def regex_pair_reward(verdict: str, useful: bool, answer_correct: bool, boost: float = 0.1,
                      correct_judge: float = 0.3, wrong_yes: float = -0.6, wrong_no: float = -0.3) -> float:
    """One pair of the regex variant (table in the module docstring)."""
    yes = verdict.lower() == "yes"
    if yes and answer_correct:
        return correct_judge + boost
    if yes == useful:
        return correct_judge + (boost if answer_correct else 0.0)
    return wrong_yes if yes else wrong_no


def reranker_pair_reward(verdict: str, similarity: Callable[[], float], answer_correct: bool, threshold: float = 0.5,
                         pos: float = 0.1, neg: float = -0.05) -> float:
    """One pair of the reranker variant; ``similarity()`` is only evaluated when the table needs it."""
    if verdict.lower() == "yes":
        if answer_correct:
            return pos
        return neg * 0.5 if similarity() >= threshold else neg
    return neg if similarity() >= threshold else pos * 0.2


@register("reward", "reseek_judge", paper="ReSeek: self-correcting search agents with a JUDGE action, arXiv 2510.00568")
def reseek_judge(sample: Sample, variant: str = "regex", answer_score: float = 1.0, format_score: float = 0.0,
                 spam_tags: int = 10, spam_divisor: float = 4.0, process: bool = True, boost: float = 0.1,
                 correct_judge: float = 0.3, wrong_yes: float = -0.6, wrong_no: float = -0.3, threshold: float = 0.5,
                 pos: float = 0.1, neg: float = -0.05, scorer: str | None = None) -> float:
    """R_ans + Σ per-pair process rewards (module docstring). ``process=False`` gives the outcome term alone (the
    EM-only baseline with the same anti-spam rule)."""
    if variant not in ("regex", "reranker"):
        raise ValueError(f"reseek_judge: variant must be 'regex' or 'reranker', got {variant!r}")
    if variant == "reranker" and process and not scorer:
        raise ValueError("reseek_judge: variant 'reranker' needs params.scorer, an import path 'pkg.module:function' "
                         "to function(gold, information) -> score (no reranker ships with entropo); or use "
                         "variant 'regex'")
    aliases = _aliases(sample)
    pairs, answer, agent_text = episode_record(sample)
    if answer is None:
        return 0.0
    correct = exact_match(answer, aliases)
    if correct:
        spam = agent_text.count("<answer>") > spam_tags or agent_text.count("</answer>") > spam_tags
        outcome = answer_score / spam_divisor if spam else answer_score
    else:
        outcome = format_score
    if not process or not answer.strip():
        return float(outcome)
    total = 0.0
    score_fn = load_scorer(scorer) if variant == "reranker" else None
    for pair in pairs:
        info = str(pair.get("information") or "").strip()
        if not info:
            continue
        verdict = str(pair["verdict"])
        if score_fn is None:
            total += regex_pair_reward(verdict, alias_in(info, aliases), correct, boost, correct_judge, wrong_yes,
                                       wrong_no)
        else:
            total += reranker_pair_reward(verdict, lambda: float(score_fn(aliases[0], info)), correct, threshold, pos,
                                          neg)
    return float(outcome + total)


def judge_agreement(sample: Sample) -> tuple[int, int]:
    """(verdicts agreeing with the regex oracle, verdicts) of one episode (pairs with empty information skipped)."""
    aliases = _aliases(sample)
    pairs, _, _ = episode_record(sample)
    pairs = [p for p in pairs if str(p.get("information") or "").strip()]
    agree = sum((str(p["verdict"]).lower() == "yes") == alias_in(str(p["information"]), aliases) for p in pairs)
    return agree, len(pairs)


@register("reward", "reseek_judge_agree",
          description="ReSeek judge verdicts agreeing with the regex oracle (a count; log it with weight 0)")
def reseek_judge_agree(sample: Sample) -> float:
    """Verdicts of the episode that agree with ReSeek's regex oracle (a metric: give it weight 0)."""
    return float(judge_agreement(sample)[0])


@register("reward", "reseek_judge_count", description="ReSeek judge verdicts in the episode (log it with weight 0)")
def reseek_judge_count(sample: Sample) -> float:
    """Verdicts the episode gave on non-empty information (a metric: give it weight 0)."""
    return float(judge_agreement(sample)[1])
