"""``arithmetic``: generated integer arithmetic problems (``What is 3 + 5? Answer with just the number.``).

Difficulty level = ``digits`` (operand length, 1..6): 1 → operands 1–9, 2 → 10–99, 3 → 100–999, ...
``num_terms`` operands (2..4) are joined by operators drawn from ``ops`` (a subset of ``"+-*"``) and evaluated with
the usual precedence (``*`` before ``+``/``-``); answers may be negative when ``-`` is allowed.

Train/eval split — disjoint by construction:

* **Small problem spaces** (at most 200,000 distinct problems, e.g. 1-digit addition has only 9·9 = 81): the whole
  space is enumerated as integers 0..N−1, shuffled once with a generator seeded by ``seed``; the first ``eval_size``
  problems are the eval split, the rest (up to ``train_size``) the train split. ``train_example(i)`` is position
  ``eval_size + i`` of that permutation.
* **Large spaces**: eval problems are drawn from their own seed stream (``stable_seed(seed, "eval", j)``, duplicates
  skipped); train example ``i`` is drawn from ``stable_seed(seed, "train", i)`` and redrawn (from the same generator)
  whenever it hits an eval problem. Train examples may repeat among themselves, never with eval.

Verifier: the LAST number in the completion equals the answer — small models restate the operands first
(``"9 + 8 = 17"``), and parsing the first number then gives ~0 reward (see /work/shared/feasibility.md).

With ``chat=False`` and e.g. ``template="{expr_compact}="`` the prompt is the bare ``"3+5="`` a tiny character-level
model can learn by SFT in seconds. Template placeholders: ``{expr}`` (``"3 + 5"``) and ``{expr_compact}`` (``"3+5"``).
"""

from __future__ import annotations

import random

from entropo.registry import register
from entropo.tasks.base import (
    GeneratedTask,
    extract_last_number,
    make_prompt,
    numbers_equal,
    safe_arith_eval,
    stable_seed,
    strict_params,
)
from entropo.types import Example

ENUMERATE_MAX = 200_000  # problem spaces up to this size are enumerated and partitioned exactly
DEFAULT_TEMPLATE = "What is {expr}? Answer with just the number."


class ArithmeticTask(GeneratedTask):
    """Integer arithmetic with a last-number verifier. Build it with the registered factory ``arithmetic``."""

    def __init__(
        self,
        seed: int,
        eval_size: int,
        digits: int,
        ops: str,
        num_terms: int,
        template: str,
        chat: bool,
        train_size: int,
        system_prompt: str | None,
    ):
        self.name = "arithmetic"
        self.seed = seed
        self.digits = digits
        self.ops = ops
        self.num_terms = num_terms
        self.template = template
        self.chat = chat
        self.system_prompt = system_prompt
        self.lo = 1 if digits == 1 else 10 ** (digits - 1)
        self.hi = 10**digits - 1
        n_operands = self.hi - self.lo + 1
        self.space = n_operands**num_terms * len(ops) ** (num_terms - 1)
        self.enumerated = self.space <= ENUMERATE_MAX
        if eval_size < 0:
            raise ValueError(f"eval_size must be >= 0, got {eval_size}")
        if self.enumerated:
            if eval_size >= self.space:
                raise ValueError(
                    f"arithmetic: eval_size={eval_size} leaves no training problems: the problem space has only "
                    f"{self.space} problems (digits={digits}, ops={ops!r}, num_terms={num_terms}); lower eval_size"
                )
            perm = list(range(self.space))
            random.Random(stable_seed(seed, "arithmetic-partition")).shuffle(perm)
            self._eval_codes = perm[:eval_size]
            self._train_codes = perm[eval_size : eval_size + train_size]
            self._train_size = len(self._train_codes)
            self._eval = [self._example(self._decode(c), "eval", j) for j, c in enumerate(self._eval_codes)]
        else:
            self._train_size = train_size
            self._draw_eval(eval_size)

    # -- problem construction
    def _decode(self, code: int) -> tuple[list[int], list[str]]:
        n = self.hi - self.lo + 1
        operands, ops = [], []
        for _ in range(self.num_terms):
            code, r = divmod(code, n)
            operands.append(self.lo + r)
        for _ in range(self.num_terms - 1):
            code, r = divmod(code, len(self.ops))
            ops.append(self.ops[r])
        return operands, ops

    def _draw(self, rng: random.Random) -> tuple[list[int], list[str]]:
        operands = [rng.randint(self.lo, self.hi) for _ in range(self.num_terms)]
        ops = [rng.choice(self.ops) for _ in range(self.num_terms - 1)]
        return operands, ops

    def _example(self, problem: tuple[list[int], list[str]], split: str, index: int) -> Example:
        operands, ops = problem
        parts = [str(operands[0])]
        for op, x in zip(ops, operands[1:]):
            parts += [op, str(x)]
        expr = " ".join(parts)
        value, _ = safe_arith_eval(expr)
        answer = str(int(value))
        text = self.template.format(expr=expr, expr_compact=expr.replace(" ", ""))
        return Example(
            prompt=make_prompt(text, self.chat, self.system_prompt),
            answer=answer,
            target=answer,
            meta={
                "task": self.name,
                "difficulty": self.digits,
                "digits": self.digits,
                "num_terms": self.num_terms,
                "ops": self.ops,
                "expr": expr,
                "split": split,
                "index": index,
            },
        )

    @staticmethod
    def _key(problem: tuple[list[int], list[str]]) -> tuple:
        return tuple(problem[0]), tuple(problem[1])

    # -- Task protocol (train_size/eval_examples and the large-space train_example come from GeneratedTask)
    def train_example(self, i: int) -> Example:
        if self.enumerated and 0 <= i < self._train_size:
            return self._example(self._decode(self._train_codes[i]), "train", i)
        return super().train_example(i)

    def correct(self, completion: str, example: Example) -> bool:
        return numbers_equal(extract_last_number(completion), example.answer)


@register("task", "arithmetic", description="integer arithmetic problems (difficulty = operand digits), last-number verifier")
@strict_params("arithmetic")
def arithmetic(
    seed: int,
    eval_size: int = 64,
    *,
    digits: int = 1,
    ops: str = "+",
    num_terms: int = 2,
    template: str = DEFAULT_TEMPLATE,
    chat: bool = True,
    train_size: int = 100_000,
    system_prompt: str | None = None,
) -> ArithmeticTask:
    """Arithmetic task factory. ``digits`` 1..6 (the difficulty level), ``ops`` ⊆ ``"+-*"``, ``num_terms`` 2..4,
    ``template`` with ``{expr}``/``{expr_compact}``, ``chat`` (chat messages vs plain text), ``train_size`` (capped by
    the problem space), ``system_prompt`` (optional)."""
    if not isinstance(digits, int) or not 1 <= digits <= 6:
        raise ValueError(f"arithmetic: digits must be an integer in 1..6, got {digits!r}")
    if not isinstance(num_terms, int) or not 2 <= num_terms <= 4:
        raise ValueError(f"arithmetic: num_terms must be an integer in 2..4, got {num_terms!r}")
    if isinstance(ops, (list, tuple)):
        ops = "".join(ops)
    if not ops or any(o not in "+-*" for o in ops):
        raise ValueError(f"arithmetic: ops must be a non-empty subset of '+-*', got {ops!r}")
    ops = "".join(dict.fromkeys(ops))  # de-duplicate, keep order
    if not isinstance(train_size, int) or train_size < 1:
        raise ValueError(f"arithmetic: train_size must be a positive integer, got {train_size!r}")
    try:
        template.format(expr="1 + 2", expr_compact="1+2")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"arithmetic: bad template {template!r} ({e!r}); the placeholders are {{expr}} and {{expr_compact}}"
        ) from None
    if "{expr" not in template:
        raise ValueError(f"arithmetic: template {template!r} must contain {{expr}} or {{expr_compact}}")
    return ArithmeticTask(seed, eval_size, digits, ops, num_terms, template, chat, train_size, system_prompt)
