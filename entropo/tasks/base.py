"""Shared helpers for tasks and verifiers: stable seeding, strict parameter checking, prompt building, answer
extraction (last number, ``<answer>`` tag, last line), normalization, and a math-verify wrapper.

Everything here is pure Python and cheap to import; heavy libraries (math-verify, datasets, reasoning-gym) are
imported lazily by the functions that need them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
import random
import re
from fractions import Fraction
from typing import Any, Callable

from entropo.types import Example


# ----------------------------------------------------------------------------------------------- seeding


def stable_seed(*parts: Any) -> int:
    """A 63-bit integer derived from ``repr(parts)`` with SHA-256.

    Python's ``hash()`` of strings is salted per process (PYTHONHASHSEED), so it must never be used to seed
    examples; this function gives the same value in every process and on every machine.
    """
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ----------------------------------------------------------------------------------------------- params


def strict_params(task_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a task factory ``fn(seed, eval_size=64, *, p1=..., p2=...)``.

    Unknown keyword arguments raise ``TypeError`` naming the parameter and listing the allowed ones (the config layer
    shows this message as is). The wrapped function keeps its signature, so ``inspect.signature`` still documents the
    parameters and their defaults.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        allowed = [n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        allowed_params = [n for n in allowed if n not in ("seed", "eval_size")]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            unknown = [k for k in kwargs if k not in allowed]
            if unknown:
                plural = "s" if len(unknown) > 1 else ""
                raise TypeError(
                    f"task {task_name!r} got unknown parameter{plural} {', '.join(map(repr, unknown))}; "
                    f"allowed parameters are: {', '.join(allowed_params)}"
                )
            return fn(*args, **kwargs)

        return wrapper

    return deco


# ----------------------------------------------------------------------------------------------- prompts


def make_prompt(text: str, chat: bool = True, system_prompt: str | None = None) -> str | list[dict[str, str]]:
    """Chat messages ``[{"role": "user", "content": text}]`` (with an optional system message first), or the plain
    text (system prompt prepended with a blank line) when ``chat`` is False."""
    if chat:
        msgs = []
        if system_prompt:
            msgs.append({"role": "system", "content": system_prompt})
        msgs.append({"role": "user", "content": text})
        return msgs
    if system_prompt:
        return f"{system_prompt}\n\n{text}"
    return text


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """The text of a prompt (all message contents joined), e.g. for de-duplication."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)


# ----------------------------------------------------------------------------------------------- extraction

# An optional sign, digits with optional thousands separators, optional decimals. A "-" glued to a preceding digit
# ("10-3") is read as a minus operator, not as a sign.
_NUMBER_RE = re.compile(r"(?<![\d.])(?:(?<!\d)-)?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?:(?<!\d)-)?\d+(?:\.\d+)?")


def extract_numbers(text: str) -> list[str]:
    """All numbers in ``text`` as strings (thousands separators removed)."""
    return [m.replace(",", "") for m in _NUMBER_RE.findall(text)]


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` (``"9 + 8 = 17."`` → ``"17"``), or None.

    Parsing the *last* number matters: a small model often restates the operands first (see feasibility.md).
    """
    nums = extract_numbers(text)
    return nums[-1] if nums else None


def numbers_equal(a: str | None, b: str | None, tol: float = 1e-9) -> bool:
    """Numeric equality of two number strings (``"12"`` == ``"12.0"``); False if either does not parse."""
    if a is None or b is None:
        return False
    try:
        x, y = float(str(a).replace(",", "")), float(str(b).replace(",", ""))
    except ValueError:
        return False
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    return abs(x - y) <= tol * max(1.0, abs(y))


def extract_answer_tag(text: str, tag: str = "answer") -> str | None:
    """Content of the last ``<tag>...</tag>`` (stripped), or None (same rule as reasoning-gym's extract_answer)."""
    matches = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL)
    return matches[-1].strip() if matches else None


def extract_last_line(text: str) -> str:
    """The last non-empty line of ``text`` (stripped), or ``""``."""
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


def extract(text: str, mode: str = "last_line") -> str | None:
    """Extract the answer part of a completion. Modes: ``last_line``, ``answer_tag``, ``last_number``, ``none``
    (the whole stripped completion)."""
    if mode == "last_line":
        return extract_last_line(text)
    if mode == "answer_tag":
        return extract_answer_tag(text)
    if mode == "last_number":
        return extract_last_number(text)
    if mode == "none":
        return text.strip()
    raise ValueError(f"unknown extract mode {mode!r}; choose one of: last_line, answer_tag, last_number, none")


def normalize_answer(text: str | None, lowercase: bool = True, strip_period: bool = True) -> str:
    """Strip, collapse inner whitespace, optionally lowercase and drop trailing periods."""
    if text is None:
        return ""
    s = " ".join(str(text).split())
    if strip_period:
        s = s.rstrip(".").rstrip()
    if lowercase:
        s = s.lower()
    return s


# ----------------------------------------------------------------------------------------------- math-verify


class _DropTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in str(record.msg)


_MV_READY = False


def _math_verify():
    """Import math-verify once and silence its "timeout disabled" warning (the RewardRunner owns timeouts)."""
    global _MV_READY
    import math_verify

    if not _MV_READY:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutWarning())
        _MV_READY = True
    return math_verify


def parse_gold(gold: str) -> list[Any]:
    """Parse a gold answer with math-verify. A bare LaTeX/plain answer (``\\frac{1}{2}``, ``x^2+1``, ``12``) is wrapped
    in ``$...$`` first, because math-verify's LaTeX extractor only looks inside math environments; answers that
    already contain ``$``, ``\\boxed`` or ``\\[`` are parsed as they are."""
    mv = _math_verify()
    gold = str(gold).strip()
    candidates = [gold] if any(t in gold for t in ("$", "\\boxed", "\\[", "\\(")) else [f"${gold}$", gold]
    for c in candidates:
        parsed = mv.parse(c, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def math_equal(completion: str, gold: str) -> bool:
    """math-verify equivalence of the completion's final answer (``\\boxed{}``, ``$...$`` or plain) and ``gold``.

    math-verify's own signal-based timeouts are disabled (``parsing_timeout=None``, ``timeout_seconds=None``): its
    ``signal.alarm`` would cancel the RewardRunner's ``ITIMER_REAL`` timer (both use the same timer) and it refuses to
    run off the main thread. The runner enforces the time limit instead.
    """
    mv = _math_verify()
    g = parse_gold(gold)
    if not g:
        return False
    pred = mv.parse(completion, parsing_timeout=None)
    if not pred:
        return False
    return bool(mv.verify(g, pred, timeout_seconds=None))


# ----------------------------------------------------------------------------------------------- safe arithmetic


class UnsafeExpression(ValueError):
    """The text is not a plain arithmetic expression (numbers, + - * /, parentheses)."""


_MAX_EXPR_CHARS = 256
_MAX_EXPR_NODES = 200


def safe_arith_eval(expr: str, allow_unary: bool = True) -> tuple[Fraction, list[int]]:
    """Parse and evaluate a plain arithmetic expression WITHOUT ``eval``.

    ``ast.parse(mode="eval")`` then a whitelist walk: non-negative integer literals, binary ``+ - * /``, optional
    unary ``-``/``+``, parentheses (implicit in the AST). Anything else — names, calls, attributes, ``**``, floats,
    strings, subscripts — raises :class:`UnsafeExpression`, so ``__import__('os')`` never runs. ``×``/``÷``/``−`` are
    accepted as ``*``/``/``/``-``. Division is exact (``fractions.Fraction``); division by zero raises
    :class:`UnsafeExpression`. Returns ``(value, integer literals in order)``.
    """
    import ast
    if not isinstance(expr, str):
        raise UnsafeExpression("expression must be a string")
    text = expr.replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-").replace("\\times", "*")
    text = text.replace("\\div", "/").replace("\\cdot", "*").strip()
    if not text:
        raise UnsafeExpression("empty expression")
    if len(text) > _MAX_EXPR_CHARS:
        raise UnsafeExpression(f"expression longer than {_MAX_EXPR_CHARS} characters")
    if not re.fullmatch(r"[0-9+\-*/().\s]+", text):
        raise UnsafeExpression(f"characters other than digits, + - * / and parentheses in {text!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise UnsafeExpression(f"not an arithmetic expression: {text!r}") from e
    if sum(1 for _ in ast.walk(tree)) > _MAX_EXPR_NODES:
        raise UnsafeExpression("expression too large")
    numbers: list[int] = []
    binops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div):
                if right == 0:
                    raise UnsafeExpression("division by zero")
                return left / right
            fn = binops.get(type(node.op))
            if fn is not None:
                return fn(left, right)
        if allow_unary and isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        raise UnsafeExpression(f"disallowed syntax {type(node).__name__} in {text!r}")

    return ev(tree), numbers


# ----------------------------------------------------------------------------------------------- verifiers

VERIFIERS = ("math", "exact", "last_number")


def verify_answer(completion: str, answer: str, verifier: str) -> bool:
    """Shared verifier switch used by tasks: ``math`` (math-verify), ``exact`` (normalized exact match of the
    ``<answer>`` tag if present, else the last line), ``last_number`` (numeric equality of the last number)."""
    if verifier == "math":
        return math_equal(completion, answer)
    if verifier == "exact":
        got = extract_answer_tag(completion)
        if got is None:
            got = extract_last_line(completion)
        return normalize_answer(got) == normalize_answer(answer)
    if verifier == "last_number":
        return numbers_equal(extract_last_number(completion), answer)
    raise ValueError(f"unknown verifier {verifier!r}; choose one of: {', '.join(VERIFIERS)}")


class GeneratedTask:
    """Shared split logic of generated tasks: eval problems come from their own seed stream (distinct, drawn once);
    train example ``i`` is drawn from ``stable_seed(seed, "train", i)`` and redrawn while it hits an eval problem, so
    the splits are disjoint by construction. Subclasses define ``_draw(rng)``, ``_key(problem)`` (hashable identity)
    and ``_example(problem, split, index)``."""

    name: str
    seed: int
    _train_size: int

    def _draw_eval(self, eval_size: int) -> None:
        problems: list[Any] = []
        seen: set[Any] = set()
        j = 0
        while len(problems) < eval_size:
            p = self._draw(random.Random(stable_seed(self.seed, "eval", j)))
            j += 1
            if self._key(p) not in seen:
                seen.add(self._key(p))
                problems.append(p)
            if j > 100 * eval_size + 1000:
                raise ValueError(f"{self.name}: could not draw {eval_size} distinct eval problems; lower eval_size "
                                 f"or widen the problem space")
        self._eval_keys = seen
        self._eval = [self._example(p, "eval", k) for k, p in enumerate(problems)]

    def train_size(self) -> int:
        return self._train_size

    def train_example(self, i: int) -> Example:
        if not 0 <= i < self._train_size:
            raise IndexError(f"train index {i} out of range [0, {self._train_size})")
        rng = random.Random(stable_seed(self.seed, "train", i))
        while True:
            p = self._draw(rng)
            if self._key(p) not in self._eval_keys:
                return self._example(p, "train", i)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def _draw(self, rng: random.Random) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _key(self, problem: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _example(self, problem: Any, split: str, index: int) -> Example:  # pragma: no cover - abstract
        raise NotImplementedError
