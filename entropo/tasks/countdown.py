"""``countdown``: the Countdown numbers game as used by TinyZero (Pan et al. 2025, github.com/Jiayi-Pan/TinyZero,
``examples/data_preprocess/countdown.py`` and ``verl/utils/reward_score/countdown.py``).

Given 3–4 numbers and a target, write an arithmetic expression with ``+ - * /`` and parentheses that equals the
target, using each number exactly once (``exact_use=True``, TinyZero's rule) or at most once (``exact_use=False``).

Instances are solvable by construction: draw the numbers, combine them in a random order with random operators into
an expression tree (subtraction kept non-negative, division only when exact), and use its value as the target;
redraw until the target lies in ``[1, max_target]``. The generating expression is kept in ``meta["solution"]`` and
used for the gold completion ``target`` (``<think>...</think>\\n<answer>expr</answer>``). ``Example.answer`` is the
target value as a string (any correct expression is accepted by the verifier).

Verifier (no ``eval``): take the content of the last ``<answer>...</answer>`` if present, else the last line that
looks like an arithmetic expression; if it contains ``=``, keep the side with the most numbers; parse it with
:func:`entropo.tasks.base.safe_arith_eval` (``ast`` whitelist: integer literals, ``+ - * /``, unary minus,
parentheses); check the multiset of numbers used and ``|value − target| < 1e-6``.

Split: train example ``i`` comes from generator ``stable_seed(seed, "train", i)``, eval example ``j`` from
``stable_seed(seed, "eval", j)``; train draws whose (sorted numbers, target) equal an eval instance are redrawn, so the
splits are disjoint.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction

from entropo.registry import register
from entropo.tasks.base import (
    GeneratedTask,
    UnsafeExpression,
    extract_answer_tag,
    make_prompt,
    safe_arith_eval,
    strict_params,
)
from entropo.types import Example

DEFAULT_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic operations "
    "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the "
    "final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
DEFAULT_TEMPLATE_AT_MOST = DEFAULT_TEMPLATE.replace("each number can only be used once", "each number can be used at most once")

_EXPR_LINE = re.compile(r"^[\d\s+\-*/().=×÷−]*\d[\d\s+\-*/().=×÷−]*$")


def extract_expression(completion: str) -> str | None:
    """The candidate expression of a completion (see the module docstring), or None."""
    cand = extract_answer_tag(completion)
    if cand is None:
        for line in reversed(completion.strip().splitlines()):
            line = line.strip().rstrip(".")
            if line and _EXPR_LINE.match(line) and re.search(r"[+\-*/×÷−]", line):
                cand = line
                break
    if cand is None:
        return None
    if "=" in cand:
        sides = [s.strip() for s in cand.split("=") if s.strip()]
        if not sides:
            return None
        cand = max(sides, key=lambda s: len(re.findall(r"\d+", s)))
    return cand


def check_countdown(completion: str, numbers: list[int], target: int, exact_use: bool = True) -> bool:
    """True iff the completion's expression uses the numbers legally and evaluates to ``target``."""
    expr = extract_expression(completion)
    if expr is None:
        return False
    try:
        value, used = safe_arith_eval(expr)
    except UnsafeExpression:
        return False
    have, want = Counter(used), Counter(numbers)
    if exact_use:
        if have != want:
            return False
    elif have - want:  # some number used more often than available
        return False
    return abs(float(value) - target) < 1e-6


def _build(rng: random.Random, numbers: list[int]) -> tuple[Fraction, str]:
    """Combine all numbers into one random expression; returns (value, expression string)."""
    items: list[tuple[Fraction, str, bool]] = [(Fraction(n), str(n), True) for n in numbers]  # (value, text, atomic)
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (a, ta, aa), (b, tb, ba) = items[i], items[j]
        choices = ["+", "*"]
        if a - b >= 0:
            choices.append("-")
        if b != 0 and a % b == 0 and b != 1:
            choices.append("/")
        op = rng.choice(choices)
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else a}[op]
        ta = ta if aa else f"({ta})"
        tb = tb if ba else f"({tb})"
        merged = (value, f"{ta} {op} {tb}", False)
        items = [it for k, it in enumerate(items) if k not in (i, j)] + [merged]
    value, text, _ = items[0]
    return value, text


class CountdownTask(GeneratedTask):
    """Countdown with a safe verifier. Build it with the registered factory ``countdown``."""

    def __init__(self, seed, eval_size, num_numbers, min_number, max_number, max_target, exact_use, template, chat,
                 train_size, system_prompt):
        self.name = "countdown"
        self.seed = seed
        self.num_numbers = num_numbers
        self.min_number = min_number
        self.max_number = max_number
        self.max_target = max_target
        self.exact_use = exact_use
        self.template = template
        self.chat = chat
        self.system_prompt = system_prompt
        self._train_size = train_size
        self._draw_eval(eval_size)

    @staticmethod
    def _key(p):
        return (tuple(sorted(p[0])), p[1])

    def _draw(self, rng: random.Random) -> tuple[list[int], int, str]:
        for _ in range(1000):
            numbers = [rng.randint(self.min_number, self.max_number) for _ in range(self.num_numbers)]
            value, expr = _build(rng, numbers)
            if value.denominator == 1 and 1 <= value <= self.max_target:
                return numbers, int(value), expr
        raise ValueError(
            f"countdown: no target in [1, {self.max_target}] found for numbers in [{self.min_number}, {self.max_number}]"
        )

    def _example(self, p: tuple[list[int], int, str], split: str, index: int) -> Example:
        numbers, target, expr = p
        text = self.template.format(numbers=numbers, target=target, numbers_csv=", ".join(map(str, numbers)))
        return Example(
            prompt=make_prompt(text, self.chat, self.system_prompt),
            answer=str(target),
            target=f"<think>{expr} = {target}</think>\n<answer>{expr}</answer>",
            meta={
                "task": self.name,
                "numbers": list(numbers),
                "target": target,
                "solution": expr,
                "difficulty": self.num_numbers,
                "exact_use": self.exact_use,
                "split": split,
                "index": index,
            },
        )

    def correct(self, completion: str, example: Example) -> bool:
        m = example.meta
        return check_countdown(completion, m["numbers"], m["target"], m.get("exact_use", self.exact_use))


@register("task", "countdown", description="Countdown numbers game (TinyZero): reach the target with + - * /")
@strict_params("countdown")
def countdown(
    seed: int,
    eval_size: int = 64,
    *,
    num_numbers: int = 3,
    min_number: int = 1,
    max_number: int = 20,
    max_target: int = 100,
    exact_use: bool = True,
    template: str | None = None,
    chat: bool = True,
    train_size: int = 100_000,
    system_prompt: str | None = None,
) -> CountdownTask:
    """Countdown factory. ``num_numbers`` 3 or 4, numbers in ``[min_number, max_number]``, targets in
    ``[1, max_target]``, ``exact_use`` (each number exactly once vs at most once), ``template`` (placeholders
    ``{numbers}`` — a list like ``[3, 7, 12]`` —, ``{numbers_csv}``, ``{target}``), ``chat``, ``train_size``,
    ``system_prompt``."""
    if num_numbers not in (3, 4):
        raise ValueError(f"countdown: num_numbers must be 3 or 4, got {num_numbers!r}")
    if not (isinstance(min_number, int) and isinstance(max_number, int) and 1 <= min_number <= max_number):
        raise ValueError(f"countdown: need integers 1 <= min_number <= max_number, got {min_number!r}, {max_number!r}")
    if not isinstance(max_target, int) or max_target < 1:
        raise ValueError(f"countdown: max_target must be a positive integer, got {max_target!r}")
    if template is None:
        template = DEFAULT_TEMPLATE if exact_use else DEFAULT_TEMPLATE_AT_MOST
    try:
        template.format(numbers=[1, 2, 3], target=6, numbers_csv="1, 2, 3")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"countdown: bad template ({e!r}); placeholders are {{numbers}}, {{numbers_csv}} and {{target}}"
        ) from None
    return CountdownTask(seed, eval_size, num_numbers, min_number, max_number, max_target, exact_use, template, chat,
                         train_size, system_prompt)
