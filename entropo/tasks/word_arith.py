"""``word_arith``: two-step arithmetic word problems whose expression the model has to write itself.

A tool task in which the Python tool does the arithmetic but not the reading: the question is a short story ("A
crate holds 37 bottles. A shop receives 24 crates and sells 158 bottles. How many bottles does the shop have
left?") and the policy must turn it into the expression (``37*24-158``) before the tool can help. In ``arithmetic``
the prompt *is* the expression, so a model that copies it into the tool is always right (SmolLM2-135M solved 32 of
32 held-out problems after 16 SFT steps, leaving GRPO-style methods no reward difference to learn from).

Eight story templates, each with its own shape of expression (``a*b-c``, ``a*b+c``, ``a-b+c``, ``c-a*b``,
``a//b+c``, ``(a+c)*b``, ``a-b*c``, ``a*b//c``); numbers have ``digits`` digits (2: 10..99, never below 2; the
tickets bought and the hours of leaking are counts of 2..10**(digits-1)-1), and every answer is a non-negative
integer (subtractions stay non-negative, divisions are exact by construction).
``Example.meta["expr"]`` holds the gold expression (the Python tool environment's SFT demonstration computes it with
the tool, then answers), ``meta["template"]`` the story's name. Verifier: the last number of the completion equals the
answer (that of ``arithmetic``).

Split: that of every generated task (:class:`entropo.tasks.base.GeneratedTask`): eval problems from their own seed
stream, train draws that equal an eval problem (same template and numbers) redrawn, so the splits are disjoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from entropo.registry import register
from entropo.tasks.base import (
    GeneratedTask,
    extract_last_number,
    make_prompt,
    numbers_equal,
    strict_params,
)
from entropo.types import Example

NAMES = ("Ava", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena")

# A problem: (template name, numbers (a, b, c), name index). Each template: its story, its gold expression (a Python
# expression over the numbers) and a draw of numbers that keeps the answer a non-negative integer.
Draw = Callable[[random.Random, int, int], tuple[int, int, int] | None]


def _free(rng: random.Random, lo: int, hi: int) -> tuple[int, int, int]:
    return rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi)


def _c_below_ab(rng, lo, hi):  # a*b - c >= 0
    a, b, c = _free(rng, lo, hi)
    return (a, b, c) if c <= a * b else None


def _b_at_most_a(rng, lo, hi):  # a - b + c >= 0
    a, b, c = _free(rng, lo, hi)
    return (a, b, c) if b <= a else None


def _change(rng, lo, hi):  # c - a*b >= 0: the payment c is the price plus some change
    a, b = rng.randint(lo, hi), rng.randint(2, max(2, hi // 10))
    return a, b, a * b + rng.randint(lo, hi)


def _teams(rng, lo, hi):  # a = b * k: the split is exact
    b, k, c = _free(rng, lo, hi)
    return b * k, b, c


def _leak(rng, lo, hi):  # a - b*c >= 0: the tank holds more than leaks out
    b, c = rng.randint(lo, hi), rng.randint(2, max(2, hi // 10))
    return b * c + rng.randint(lo, hi), b, c


def _share(rng, lo, hi):  # c divides a*b
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    divisors = [c for c in range(max(2, lo), hi + 1) if (a * b) % c == 0]
    return (a, b, rng.choice(divisors)) if divisors else None


TEMPLATES: dict[str, tuple[str, str, Draw]] = {
    "crates": (("A crate holds {a} bottles. A shop receives {b} crates and sells {c} bottles. How many bottles does "
                "the shop have left?"), "{a}*{b}-{c}", _c_below_ab),
    "reading": (("{name} reads {a} pages every day for {b} days, then {c} more pages. How many pages has {name} read "
                 "in total?"), "{a}*{b}+{c}", lambda rng, lo, hi: _free(rng, lo, hi)),
    "bus": (("A bus leaves with {a} passengers. At the first stop {b} passengers get off and {c} get on. How many "
             "passengers are on the bus now?"), "{a}-{b}+{c}", _b_at_most_a),
    "change": (("A ticket costs {a} dollars. {name} buys {b} tickets and pays with {c} dollars. How many dollars of "
                "change does {name} get?"), "{c}-{a}*{b}", _change),
    "teams": (("{a} students are split equally into {b} teams, and then each team gets {c} new members. How many "
               "students are in each team now?"), "{a}//{b}+{c}", _teams),
    "orchard": (("A farmer plants {a} rows of {b} trees, and later {c} more rows of the same size. How many trees "
                 "has the farmer planted?"), "({a}+{c})*{b}", lambda rng, lo, hi: _free(rng, lo, hi)),
    "tank": (("A tank holds {a} liters of water. It leaks {b} liters every hour for {c} hours. How many liters are "
              "left in the tank?"), "{a}-{b}*{c}", _leak),
    "pens": (("Each box holds {a} pens. {b} boxes of pens are shared equally among {c} classes. How many pens does "
              "each class get?"), "{a}*{b}//{c}", _share),
}

# With ``distractors``: one sentence with a number the answer does not use, after the story's first sentence (the
# model must choose which numbers to compute with, as in GSM-style problems).
DISTRACTORS = {"crates": "Each bottle costs {d} cents.", "reading": "The book has {d} chapters.",
               "bus": "The bus is {d} minutes late.", "change": "The show lasts {d} minutes.",
               "teams": "The school has {d} teachers.", "orchard": "Each tree is {d} years old.",
               "tank": "The tank is {d} years old.", "pens": "Each pen costs {d} cents."}

DEFAULT_TEMPLATE = "{question}"


def gold_value(template: str, a: int, b: int, c: int) -> int:
    """The answer of a problem, computed from its story's arithmetic (independently of the expression string)."""
    values = {"crates": a * b - c, "reading": a * b + c, "bus": a - b + c, "change": c - a * b, "teams": a // b + c,
              "orchard": (a + c) * b, "tank": a - b * c, "pens": a * b // c}
    return values[template]


class WordArithTask(GeneratedTask):
    """Two-step arithmetic word problems. Build it with the registered factory ``word_arith``."""

    def __init__(self, seed: int, eval_size: int, digits: int, templates: list[str], template: str, chat: bool,
                 train_size: int, system_prompt: str | None, distractors: bool = False):
        self.name = "word_arith"
        self.seed = seed
        self.digits = digits
        self.templates = list(templates)
        self.template = template
        self.chat = chat
        self.system_prompt = system_prompt
        self.distractors = bool(distractors)
        self._train_size = train_size
        self._lo, self._hi = max(2, 10 ** (digits - 1)), 10 ** digits - 1
        self._draw_eval(eval_size)

    @staticmethod
    def _key(p):
        return p[0], p[1]

    def _draw(self, rng: random.Random) -> tuple[str, tuple[int, int, int], int, int]:
        name = rng.choice(self.templates)
        draw = TEMPLATES[name][2]
        for _ in range(1000):
            numbers = draw(rng, self._lo, self._hi)
            if numbers is not None:
                return name, numbers, rng.randrange(len(NAMES)), rng.randint(self._lo, self._hi)
        raise ValueError(f"word_arith: no valid numbers found for template {name!r} at digits={self.digits}")

    def _example(self, p, split: str, index: int) -> Example:
        name, (a, b, c), who, d = p
        story, expr, _ = TEMPLATES[name]
        if self.distractors:  # after the first sentence
            first, rest = story.split(". ", 1)
            story = f"{first}. {DISTRACTORS[name]} {rest}"
        question = story.format(a=a, b=b, c=c, d=d, name=NAMES[who])
        expr = expr.format(a=a, b=b, c=c)
        answer = str(gold_value(name, a, b, c))
        return Example(prompt=make_prompt(self.template.format(question=question), self.chat, self.system_prompt),
                       answer=answer, target=f"{expr}={answer}",
                       meta={"task": self.name, "template": name, "numbers": [a, b, c], "expr": expr,
                             "distractor": d if self.distractors else None,
                             "difficulty": self.digits, "split": split, "index": index})

    def correct(self, completion: str, example: Example) -> bool:
        return numbers_equal(extract_last_number(completion), example.answer)


@register("task", "word_arith", description="two-step arithmetic word problems (the model writes the expression)")
@strict_params("word_arith")
def word_arith(seed: int, eval_size: int = 64, *, digits: int = 2, templates: list[str] | None = None,
               template: str = DEFAULT_TEMPLATE, chat: bool = True, train_size: int = 100_000,
               system_prompt: str | None = None, distractors: bool = False) -> WordArithTask:
    """``digits`` 1..4 (the size of every number in the story), ``templates`` (a subset of the story names:
    crates, reading, bus, change, teams, orchard, tank, pens; default all), ``template`` (the prompt, with
    ``{question}``), ``chat``, ``train_size``, ``system_prompt``, ``distractors`` (add a sentence with a number
    the answer does not use)."""
    if not isinstance(digits, int) or not 1 <= digits <= 4:
        raise ValueError(f"word_arith: digits must be an integer in 1..4, got {digits!r}")
    templates = list(TEMPLATES) if templates is None else list(templates)
    unknown = [t for t in templates if t not in TEMPLATES]
    if not templates or unknown:
        raise ValueError(f"word_arith: templates must be a non-empty subset of {', '.join(TEMPLATES)}; "
                         f"got unknown {unknown or 'none (empty list)'}")
    if "{question}" not in template:
        raise ValueError(f"word_arith: template must contain {{question}}, got {template!r}")
    return WordArithTask(seed, eval_size, digits, templates, template, chat, train_size, system_prompt, distractors)
