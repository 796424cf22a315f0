"""``twenty_questions``: guess a hidden class by asking yes/no attribute questions (registry kinds ``environment`` and
``task``), the closed-query-bank 20 Questions game of "Conformal Information Pursuit for Interactively Guiding Large
Language Models" (C-IP; Chan, Ge, Dobriban, Hassani, Vidal, NeurIPS 2025), with a generated attribute table standing
in for the paper's Animals-with-Attributes-2 table.

The world (all seeded, deterministic):

- ``AttributeTable``: K classes x A binary attributes; ``p_yes[c, a]`` is the probability that the answer to
  attribute question ``a`` is "yes" for class ``c``. Most cells are near-deterministic (noise drawn in
  [``noise_low``, ``noise_high``]), a fraction ``ambiguous`` of them are coin-flip-like (p in [0.3, 0.7]): answers are
  noisy, as AwA2's per-image attribute answers are.
- A game: a hidden label drawn uniformly and one realized answer per question (drawn once, so asking twice gives the
  same answer). ``games(split, n)`` draws the games of one split (``train``: to fit a predictor, ``calibration``: the
  conformal thresholds, ``test``: held out) from its own seed stream, named ``<split>-<i>``: the splits never share a
  game.

The environment lets any policy (a querier, or a language model) play: actions ``ASK <question number>`` (answered
"Yes"/"No"), ``GUESS <class name>`` (ends the game; correct or not). A malformed action, an unknown question or class
gets an observation saying the format; asking past ``max_questions`` ends the game as lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from entropo.envs.base import Environment, StepResult
from entropo.registry import register
from entropo.types import Example

CLASS_NAMES = ("antelope", "badger", "beaver", "camel", "cheetah", "dolphin", "eagle", "elephant", "falcon",
               "giraffe", "gorilla", "hamster", "koala", "leopard", "lobster", "otter", "panda", "penguin", "rabbit",
               "walrus")
ATTRIBUTES = ("furry", "striped", "spotted", "big", "small", "fast", "slow", "strong", "aquatic", "arctic", "nocturnal",
              "herbivorous", "carnivorous", "domestic", "hooved", "long-necked", "tusked", "flying", "grey", "black",
              "white", "brown", "solitary", "social")
SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True)
class AttributeTable:
    """The generated world: ``p_yes[K, A]``, class names and the query bank (one question per attribute)."""

    p_yes: np.ndarray
    class_names: tuple[str, ...]
    questions: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return self.p_yes.shape[0]

    @property
    def num_attributes(self) -> int:
        return self.p_yes.shape[1]


@dataclass(frozen=True)
class Game:
    """One game: its id (``<split>-<i>``), hidden label and the realized answer (1 = yes) to every question."""

    game_id: str
    label: int
    answers: tuple[int, ...]


def _check(name: str, value: Any, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"twenty_questions: {name}={value!r} is out of range; use a value in [{low}, {high}]")


@lru_cache(maxsize=32)
def make_table(num_classes: int = 12, num_attributes: int = 16, seed: int = 0, noise_low: float = 0.02,
               noise_high: float = 0.2, ambiguous: float = 0.15) -> AttributeTable:
    """The seeded attribute table. Classes must be told apart by their yes-probability rows: resampled (at most 100
    times) until every pair of classes differs in at least two near-deterministic attributes."""
    _check("num_classes", num_classes, 2, len(CLASS_NAMES))
    _check("num_attributes", num_attributes, 2, len(ATTRIBUTES))
    _check("noise_low", noise_low, 0.0, 0.5)
    _check("noise_high", noise_high, noise_low, 0.5)
    _check("ambiguous", ambiguous, 0.0, 1.0)
    rng = np.random.default_rng([seed, 20])
    for _ in range(100):
        bits = rng.random((num_classes, num_attributes)) < 0.5
        noise = rng.uniform(noise_low, noise_high, size=bits.shape)
        p = np.where(bits, 1.0 - noise, noise)
        amb = rng.random(bits.shape) < ambiguous
        p = np.where(amb, rng.uniform(0.3, 0.7, size=bits.shape), p)
        clear = np.where(amb, -1, bits.astype(int))
        diff = ((clear[:, None, :] != clear[None, :, :]) & (clear[:, None, :] >= 0) & (clear[None, :, :] >= 0)).sum(-1)
        np.fill_diagonal(diff, 99)
        if diff.min() >= 2:
            break
    names = tuple(CLASS_NAMES[:num_classes])
    questions = tuple(f"Is it {a}?" for a in ATTRIBUTES[:num_attributes])
    return AttributeTable(p_yes=p, class_names=names, questions=questions)


def games(table: AttributeTable, split: str, n: int, seed: int = 0) -> list[Game]:
    """``n`` games of ``split`` (train / calibration / test), each split from its own seed stream."""
    if split not in SPLITS:
        raise ValueError(f"twenty_questions: split={split!r} is unknown; use one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, 21, SPLITS.index(split)])
    labels = rng.integers(0, table.num_classes, size=n)
    u = rng.random((n, table.num_attributes))
    answers = (u < table.p_yes[labels]).astype(int)
    return [Game(f"{split}-{i}", int(labels[i]), tuple(int(x) for x in answers[i])) for i in range(n)]


def game_prompt(table: AttributeTable, max_questions: int) -> str:
    qs = "\n".join(f"{i}. {q}" for i, q in enumerate(table.questions))
    return (f"I am thinking of one of these animals: {', '.join(table.class_names)}.\n"
            f"You may ask up to {max_questions} of these yes/no questions (answers can be noisy):\n{qs}\n"
            "Reply with exactly one line: 'ASK <question number>' to ask, or 'GUESS <animal>' to answer.")


_ASK = re.compile(r"^\s*ASK\s+(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
_GUESS = re.compile(r"^\s*GUESS\s+([A-Za-z\- ]+?)\s*$", re.IGNORECASE | re.MULTILINE)


@register("environment", "twenty_questions",
          paper="Conformal Information Pursuit (C-IP), NeurIPS 2025 - 20 Questions game")
class TwentyQuestions(Environment):
    """Params: ``num_classes`` (2-20), ``num_attributes`` (2-24), ``table_seed``, ``noise_low``/``noise_high``,
    ``ambiguous`` (the table), ``max_questions`` (default 10), ``split`` (games drawn when an example carries none).

    ``reset`` plays ``example.meta["game"]`` (a ``Game`` or its dict) when present, else a game of ``split`` drawn
    from ``seed``. Actions: ``ASK <n>`` / ``GUESS <name>``; rewards: 1 for a correct guess, else 0."""

    observation_role = "user"

    def __init__(self, num_classes: int = 12, num_attributes: int = 16, table_seed: int = 0, noise_low: float = 0.02,
                 noise_high: float = 0.2, ambiguous: float = 0.15, max_questions: int = 10, split: str = "test"):
        self.table = make_table(num_classes, num_attributes, table_seed, noise_low, noise_high, ambiguous)
        self.table_seed = table_seed
        _check("max_questions", max_questions, 0, 10_000)
        if split not in SPLITS:
            raise ValueError(f"twenty_questions: split={split!r} is unknown; use one of {', '.join(SPLITS)}")
        self.max_questions, self.split = int(max_questions), split
        self.max_turns = self.max_questions + 1

    def reset(self, example: Example, seed: int) -> str:
        self.example = example
        game = (example.meta or {}).get("game")
        if game is None:
            game = games(self.table, self.split, 1, seed=seed)[0]
        elif isinstance(game, dict):
            game = Game(game["game_id"], int(game["label"]), tuple(game["answers"]))
        if not 0 <= game.label < self.table.num_classes or len(game.answers) != self.table.num_attributes:
            raise ValueError(f"twenty_questions: example.meta['game'] {game.game_id!r} does not fit the table "
                             f"({self.table.num_classes} classes, {self.table.num_attributes} attributes)")
        self.game, self.asked = game, []
        return example.prompt if example.prompt else game_prompt(self.table, self.max_questions)

    def step(self, action: str) -> StepResult:
        guess = _GUESS.search(action)
        if guess:
            name = guess.group(1).strip().lower()
            if name not in self.table.class_names:
                return StepResult(observation=f"Unknown animal {name!r}; guess one of: "
                                              f"{', '.join(self.table.class_names)}.", info={"malformed": 1})
            ok = self.table.class_names.index(name) == self.game.label
            return StepResult(reward=float(ok), done=True, correct=ok,
                              info={"questions": len(self.asked), "malformed": 0})
        ask = _ASK.search(action)
        if not ask:
            return StepResult(observation="Please reply with 'ASK <question number>' or 'GUESS <animal>'.",
                              info={"malformed": 1})
        q = int(ask.group(1))
        if q >= self.table.num_attributes:
            return StepResult(observation=f"There is no question {q}; questions are numbered 0-"
                                          f"{self.table.num_attributes - 1}.", info={"malformed": 1})
        if len(self.asked) >= self.max_questions:
            return StepResult(observation="No questions left.", done=True, correct=False,
                              info={"questions": len(self.asked), "malformed": 0})
        self.asked.append(q)
        return StepResult(observation="Yes" if self.game.answers[q] else "No", tool_call=True)


class TwentyQuestionsTask:
    """Games as examples: train games for training, test games held out (calibration games are for C-IP only)."""

    name = "twenty_questions"

    def __init__(self, seed: int, eval_size: int, num_classes: int, num_attributes: int, table_seed: int,
                 max_questions: int, train_size: int):
        self.table = make_table(num_classes, num_attributes, table_seed)
        self.seed, self.max_questions = seed, max_questions
        self._train = games(self.table, "train", train_size, seed=seed)
        self._eval = games(self.table, "test", eval_size, seed=seed)

    def _example(self, g: Game) -> Example:
        return Example(prompt=game_prompt(self.table, self.max_questions), answer=self.table.class_names[g.label],
                       meta={"task": self.name, "game": {"game_id": g.game_id, "label": g.label,
                                                         "answers": list(g.answers)}})

    def train_size(self) -> int:
        return len(self._train)

    def train_example(self, i: int) -> Example:
        return self._example(self._train[i % len(self._train)])

    def eval_examples(self) -> list[Example]:
        return [self._example(g) for g in self._eval]

    def correct(self, completion: str, example: Example) -> bool:
        m = _GUESS.search(completion)
        return bool(m) and m.group(1).strip().lower() == (example.answer or "").lower()


@register("task", "twenty_questions", description="20 Questions over a generated attribute table (C-IP's game)")
def twenty_questions_task(seed: int, eval_size: int = 64, *, num_classes: int = 12, num_attributes: int = 16,
                          table_seed: int = 0, max_questions: int = 10, train_size: int = 2000) -> TwentyQuestionsTask:
    """Pair with ``environment: {name: twenty_questions, params: {<same table params>}}``."""
    return TwentyQuestionsTask(seed, eval_size, num_classes, num_attributes, table_seed, max_questions, train_size)
