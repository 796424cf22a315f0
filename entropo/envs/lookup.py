"""``multihop_lookup``: multi-hop questions about invented entities, answered by looking facts up in a small table
(registry kinds ``task`` and ``environment``, both named ``multihop_lookup``; the task makes the questions, the
environment answers the searches — pair them in a recipe as ``arithmetic`` is paired with ``python_tool``).

Every question has its own small world of invented entities (syllable names such as ``Kavo``, ``Tumex``): a person
with an employer (a company) and a home (a city), the company's city, and each city's country. The table rows are

    Kavo: employer=Tumex, home=Rilo        Tumex: city=Bopa        Bopa: country=Zuna        Rilo: country=Fesa

and a question follows a relation path from the person, e.g. ``What is the city of the employer of Kavo?`` (2 hops:
Kavo -> Tumex -> Bopa) or ``What is the country of the city of the employer of Kavo?`` (3 hops). The policy acts by
writing ``<search>key</search>`` (exact, case-insensitive lookup of one table row, returned as a ``tool`` message)
and ends with ``<answer>name</answer>``, judged against the gold answer and its aliases (``Bopa City`` for a city,
``Republic of Zuna`` for a country). A turn with neither tag, an empty key or an unknown key gets an observation that
says so; the episode ends at the answer or at ``max_turns``.

Variants for small models (params): task ``names: short`` (``Ka``) or ``letters`` (``K``, one token each for a
character-level tokenizer) instead of ``syllables``; environment ``keys: relation``, where the policy names the
relation to follow (``<search>employer</search>`` -> ``Tumex``) from the question's person instead of copying entity
names into its searches — the tiny demo model (recipe ``igpo``) cannot learn to copy names in a short warm-up.

Splits: names are drawn from two disjoint pools (a fifth of all names by default, chosen by a seeded shuffle, are held out),
so every entity of a held-out question is unseen in training. Generation is deterministic in (seed, split, index).
``demonstration(example)`` gives the worked episode (one search per hop, then the answer) for the SFT warm-up.

Built as the synthetic lookup environment of IGPO's CPU demo (Information Gain-based Policy Optimization, arXiv
2510.14967): the answer becomes likely only once the right rows are in the context, so each useful search has a
measurable information gain. (ReSeek's BM25 corpus is a separate environment; this one is exact-key lookup.)
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

from entropo.envs.base import Environment, Message, StepResult
from entropo.registry import register
from entropo.tasks.base import normalize_answer, stable_seed, strict_params
from entropo.types import Example

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
# relation path -> (question text, hops). The path is read from the person outwards.
PATHS = {
    "employer.city": ("the city of the employer", 2),
    "home.country": ("the country of the home", 2),
    "employer.city.country": ("the country of the city of the employer", 3),
}
DEFAULT_TEMPLATE = "What is {relation} of {entity}?"


NAME_KINDS = ("syllables", "short", "letters")


def all_names(kind: str = "syllables") -> list[str]:
    """Every name of a kind, in a fixed order: ``syllables`` are CVCV names (``Kavo``; 14·5·14·5 = 4,900),
    ``short`` CV names (``Ka``; 70),
    ``letters`` single capital letters (``K``; 26 names, one token each for a character-level tokenizer)."""
    if kind == "letters":
        return list(string.ascii_uppercase)
    if kind == "short":
        return [(a + b).capitalize() for a in CONSONANTS for b in VOWELS]
    return [(a + b + c + d).capitalize() for a in CONSONANTS for b in VOWELS for c in CONSONANTS for d in VOWELS]


def answer_aliases(name: str, kind: str) -> list[str]:
    """The accepted answers for an entity of ``kind`` (``city`` or ``country``)."""
    return [name, f"{name} City"] if kind == "city" else [name, f"Republic of {name}"] if kind == "country" else [name]


class MultihopLookupTask:
    """Multi-hop questions with gold answers (``Example.answer``), aliases (``meta["aliases"]``) and the question's
    table (``meta["facts"]``: key -> row text) for the ``multihop_lookup`` environment. Build it with the registered
    factory ``multihop_lookup``."""

    def __init__(self, seed: int, eval_size: int, paths: list[str], template: str, chat: bool, train_size: int,
                 held_out_frac: float, names: str = "syllables"):
        self.name = "multihop_lookup"
        self.seed, self.paths, self.template, self.chat = seed, list(paths), template, chat
        self._train_size = train_size
        names = all_names(names)
        shuffled = list(names)
        random.Random(stable_seed(seed, "lookup-pool")).shuffle(shuffled)
        held = set(shuffled[: round(held_out_frac * len(names))])
        self.pools = {"train": [n for n in names if n not in held], "eval": [n for n in names if n in held]}
        if min(len(p) for p in self.pools.values()) < 6:
            raise ValueError(f"multihop_lookup: a split has fewer than 6 names ({len(self.pools['eval'])} held out "
                             f"of {len(names)}); change held_out_frac or names")
        self._eval = [self._example("eval", j) for j in range(eval_size)]

    def _example(self, split: str, index: int) -> Example:
        rng = random.Random(stable_seed(self.seed, "lookup", split, index))
        person, company, home, city, home_country, city_country = rng.sample(self.pools[split], 6)
        facts = {
            person: f"{person}: employer={company}, home={home}",
            company: f"{company}: city={city}",
            home: f"{home}: country={home_country}",
            city: f"{city}: country={city_country}",
        }
        path = self.paths[rng.randrange(len(self.paths))]
        relation, hops = PATHS[path]
        chain = [person]
        for rel in path.split("."):
            chain.append(re.search(rf"\b{rel}=(\w+)", facts[chain[-1]]).group(1))
        answer = chain[-1]
        kind = path.split(".")[-1] if path.split(".")[-1] in ("city", "country") else "entity"
        text = self.template.format(relation=relation, entity=person)
        prompt: Any = [{"role": "user", "content": text}] if self.chat else text + "\n"
        return Example(prompt=prompt, answer=answer, target=None,
                       meta={"task": self.name, "split": split, "index": index, "path": path, "hops": hops,
                             "chain": chain, "facts": facts, "aliases": answer_aliases(answer, kind),
                             "entities": sorted(facts) + [home_country, city_country], "difficulty": hops})

    # -- Task protocol
    def train_size(self) -> int:
        return self._train_size

    def train_example(self, i: int) -> Example:
        if not 0 <= i < self._train_size:
            raise IndexError(f"train index {i} out of range [0, {self._train_size})")
        return self._example("train", i)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, completion: str, example: Example) -> bool:
        """The last ``<answer>`` of the completion equals the gold answer or an alias (case and spaces ignored)."""
        return answer_correct(completion, example)

    def score(self, completion: str, example: Example) -> float:
        """Token F1 of the extracted answer against the best alias (IGPO's outcome reward; ``task_score``)."""
        got = extract_answer(completion)
        if got is None:
            return 0.0
        return max(token_f1(got, alias) for alias in gold_answers(example))


def gold_answers(example: Example) -> list[str]:
    return list((example.meta or {}).get("aliases") or [example.answer])


def extract_answer(text: str) -> str | None:
    found = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


def answer_correct(text: str, example: Example) -> bool:
    got = extract_answer(text)
    return got is not None and normalize_answer(got) in {normalize_answer(a) for a in gold_answers(example)}


def token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


@register("task", "multihop_lookup", paper="IGPO's synthetic lookup demo, arXiv 2510.14967",
          description="multi-hop questions about invented entities (pair with environment multihop_lookup)")
@strict_params("multihop_lookup")
def multihop_lookup(seed: int, eval_size: int = 64, *, paths: list[str] | None = None,
                    template: str = DEFAULT_TEMPLATE, chat: bool = True, train_size: int = 100_000,
                    held_out_frac: float = 0.2, names: str = "syllables") -> MultihopLookupTask:
    """Task factory. ``paths``: relation paths to ask (default all: ``employer.city``, ``home.country`` (2 hops),
    ``employer.city.country`` (3 hops)); ``template`` with ``{relation}`` and ``{entity}``; ``chat`` (messages vs
    plain text); ``train_size``; ``held_out_frac``: share of names reserved for the held-out split; ``names``:
    ``syllables`` (``Kavo``), ``short`` (``Ka``) or ``letters`` (``K``: single characters, which the tiny character-level model can
    copy after a short warm-up)."""
    if names not in NAME_KINDS:
        raise ValueError(f"multihop_lookup: unknown names {names!r}; allowed: {', '.join(NAME_KINDS)}")
    paths = list(paths) if paths is not None else list(PATHS)
    unknown = [p for p in paths if p not in PATHS]
    if not paths or unknown:
        raise ValueError(f"multihop_lookup: unknown paths {unknown}; allowed: {', '.join(PATHS)}")
    if not 0.0 < held_out_frac < 1.0:
        raise ValueError(f"multihop_lookup: held_out_frac must be in (0, 1), got {held_out_frac!r}")
    try:
        template.format(relation="the city of the employer", entity="Kavo")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"multihop_lookup: bad template {template!r} ({e!r}); placeholders: {{relation}}, "
                         f"{{entity}}") from None
    if not isinstance(train_size, int) or train_size < 1:
        raise ValueError(f"multihop_lookup: train_size must be a positive integer, got {train_size!r}")
    return MultihopLookupTask(seed, eval_size, paths, template, chat, train_size, held_out_frac, names)


@register("environment", "multihop_lookup", paper="IGPO's synthetic lookup demo, arXiv 2510.14967")
class MultihopLookup(Environment):
    """Exact-key lookup in the question's table (``example.meta["facts"]``, from the ``multihop_lookup`` task).

    Params: ``max_turns`` (default 4; ``rollout.max_turns`` overrides), ``search_tag`` / ``answer_tag`` (tag names,
    default ``search`` / ``answer``), ``not_found`` (the reply to an unknown key; ``{key}`` replaced), ``keys``:
    ``entity`` (default: the key is an entity name and the reply is its row) or ``relation`` (the key is a relation
    such as ``employer``, followed from the current entity, which starts at the question's person; the reply is the
    entity reached — a navigation variant whose actions need no copying of names, for very small models)."""

    observation_role = "tool"

    def __init__(self, max_turns: int = 4, search_tag: str = "search", answer_tag: str = "answer",
                 not_found: str = "no entry for {key}", keys: str = "entity"):
        if not search_tag or not answer_tag or search_tag == answer_tag:
            raise ValueError("multihop_lookup: search_tag and answer_tag must be two different non-empty names")
        if keys not in ("entity", "relation"):
            raise ValueError(f"multihop_lookup: keys must be 'entity' or 'relation', got {keys!r} "
                             f"(environment.params.keys)")
        self.keys = keys
        self.max_turns = int(max_turns)
        self.search_tag, self.answer_tag, self.not_found = search_tag, answer_tag, not_found
        self.stop = (f"</{search_tag}>", f"</{answer_tag}>")

    def reset(self, example: Example, seed: int) -> Any:
        del seed
        facts = (example.meta or {}).get("facts")
        if not isinstance(facts, dict):
            raise ValueError("multihop_lookup environment: example.meta['facts'] is missing; use task "
                             "multihop_lookup (or give each example a {key: row} table)")
        self.example = example
        self.table = {k.lower(): v for k, v in facts.items()}
        self.links = {k: dict(re.findall(r"(\w+)=(\w+)", v)) for k, v in facts.items()}
        chain = (example.meta or {}).get("chain") or [None]
        self.cursor = chain[0]
        return example.prompt

    def _tag(self, name: str, text: str) -> str | None:
        found = re.findall(rf"<{re.escape(name)}>(.*?)</{re.escape(name)}>", text, flags=re.DOTALL)
        return found[-1].strip() if found else None

    def step(self, action: str) -> StepResult:
        answer = self._tag(self.answer_tag, action)
        if answer is not None:
            got = normalize_answer(answer)
            ok = got in {normalize_answer(a) for a in gold_answers(self.example)}
            return StepResult(done=True, correct=ok, info={"answered": 1})
        key = self._tag(self.search_tag, action)
        if key is None:
            return StepResult(observation=f"error: write <{self.search_tag}>name</{self.search_tag}> or "
                                          f"<{self.answer_tag}>name</{self.answer_tag}>",
                              info={"malformed_actions": 1})
        if not key:
            return StepResult(observation="error: empty search", tool_call=True, info={"malformed_actions": 1})
        if self.keys == "relation":
            reached = self.links.get(self.cursor, {}).get(key.lower())
            if reached is None:
                return StepResult(observation=f"{self.cursor} has no {key}", tool_call=True)
            self.cursor = reached
            return StepResult(observation=reached, tool_call=True)
        row = self.table.get(" ".join(key.split()).lower())
        return StepResult(observation=row if row is not None else self.not_found.format(key=key), tool_call=True)

    def demonstration(self, example: Example) -> list[Message] | None:
        """The worked episode for SFT warm-ups: search each entity of the chain but the last, then answer."""
        meta = example.meta or {}
        chain, facts = meta.get("chain"), meta.get("facts")
        if not chain or not facts:
            return None
        messages: list[Message] = []
        relations = str(meta.get("path", "")).split(".")
        for hop, entity in enumerate(chain[:-1]):
            key = relations[hop] if self.keys == "relation" else entity
            reply = chain[hop + 1] if self.keys == "relation" else facts[entity]
            messages.append({"role": "assistant", "content": f"<{self.search_tag}>{key}</{self.search_tag}>"})
            messages.append({"role": self.observation_role, "content": reply})
        messages.append({"role": "assistant", "content": f"<{self.answer_tag}>{chain[-1]}</{self.answer_tag}>"})
        return messages
