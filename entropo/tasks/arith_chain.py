"""``arith_chain``: multi-step arithmetic written one step per line, for step-level search (best-of-N, beam, MCTS).

The prompt is an expression such as ``"3+5+8+2="`` (plain text, no chat template by default); the gold completion
works it left to right, one partial result per line::

    3+5=8
    8+8=16
    16+2=18

so a response of ``num_terms - 1`` lines is a chain of *steps* (the newline ends a step; EOS ends the response).
The verifier is the arithmetic task's: the last number of the completion equals the answer. Problems, the
train/eval split and the seeding are those of ``arithmetic`` (``ops`` ⊆ ``"+-"``: left-to-right evaluation is then
the usual one). ``Example.meta["operands"]``/``["ops"]`` let a process checker (``entropo.search.scorers``)
recompute each step.

Used by the search/search-then-learn methods of the o1 roadmap survey ("Scaling of Search and Learning: A Roadmap to
Reproduce o1 from Reinforcement Learning Perspective", arXiv 2412.14135) and MCTS-DPO (arXiv 2405.00451), whose demo
is "3-step arithmetic chains".
"""

from __future__ import annotations

from entropo.registry import register
from entropo.tasks.arithmetic import ArithmeticTask
from entropo.tasks.base import make_prompt, strict_params
from entropo.types import Example


def chain_lines(operands: list[int], ops: list[str]) -> list[str]:
    """The worked steps ``["3+5=8", "8+8=16", ...]`` of a left-to-right evaluation."""
    lines, acc = [], operands[0]
    for op, x in zip(ops, operands[1:]):
        new = acc + x if op == "+" else acc - x
        lines.append(f"{acc}{op}{x}={new}")
        acc = new
    return lines


class ArithChainTask(ArithmeticTask):
    """Arithmetic chains with one worked step per line (see the module docstring)."""

    def _example(self, problem, split: str, index: int) -> Example:
        operands, ops = problem
        lines = chain_lines(operands, ops)
        answer = lines[-1].rsplit("=", 1)[1]
        compact = str(operands[0]) + "".join(f"{op}{x}" for op, x in zip(ops, operands[1:]))
        text = self.template.format(expr=compact.replace("+", " + ").replace("-", " - "), expr_compact=compact)
        return Example(prompt=make_prompt(text, self.chat, self.system_prompt), answer=answer,
                       target="\n".join(lines),
                       meta={"task": "arith_chain", "difficulty": self.digits, "operands": list(operands),
                             "ops": list(ops), "expr": compact, "split": split, "index": index})


@register("task", "arith_chain", description="arithmetic chains worked one step per line (for step-level search)")
@strict_params("arith_chain")
def arith_chain(seed: int, eval_size: int = 64, *, digits: int = 1, ops: str = "+", num_terms: int = 4,
                template: str = "{expr_compact}=", chat: bool = False, train_size: int = 100_000,
                system_prompt: str | None = None) -> ArithChainTask:
    """``digits`` 1..6, ``ops`` ⊆ ``"+-"``, ``num_terms`` 2..4 (steps = num_terms - 1), ``template`` with
    ``{expr}``/``{expr_compact}``, ``chat``, ``train_size``, ``system_prompt``."""
    if isinstance(ops, (list, tuple)):
        ops = "".join(ops)
    if not ops or any(o not in "+-" for o in ops):
        raise ValueError(f"arith_chain: ops must be a non-empty subset of '+-' (steps are evaluated left to right), "
                         f"got {ops!r}")
    if not isinstance(digits, int) or not 1 <= digits <= 6:
        raise ValueError(f"arith_chain: digits must be an integer in 1..6, got {digits!r}")
    if not isinstance(num_terms, int) or not 2 <= num_terms <= 4:
        raise ValueError(f"arith_chain: num_terms must be an integer in 2..4, got {num_terms!r}")
    if "{expr" not in template:
        raise ValueError(f"arith_chain: template {template!r} must contain {{expr}} or {{expr_compact}}")
    ops = "".join(dict.fromkeys(ops))
    task = ArithChainTask(seed, eval_size, digits, ops, num_terms, template, chat, train_size, system_prompt)
    task.name = "arith_chain"
    return task
