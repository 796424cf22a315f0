"""``python_tool``: tool-integrated reasoning with a sandboxed Python interpreter (registry kind ``environment``).

The policy may end a turn with a code block (between ``code_start`` and ``code_end``, by default a ```` ```python ````
fence); the environment runs the last block of the turn in ``entropo.sandbox.PythonSandbox`` (separate process,
CPU/memory/file/process limits, wall-clock kill of the process group, a throwaway directory, no network) and answers
with its output (``output_template``, role ``tool``). A turn without a code block is the final answer: the episode
ends and the task's verifier judges that turn. Like a REPL, a block whose last statement is an expression prints its
value. Sandbox errors (a traceback, a timeout, the memory limit) come back to the model as the observation; the run
never sees them as exceptions.

Method: tool-integrated reasoning as studied in "Understanding Tool-Integrated Reasoning" (Lin & Xu, arXiv
2508.19201), whose ASPO shaping (``entropo.algorithms.aspo``) acts on the tool-calling rows this produces; OTC's
tool-call count (arXiv 2504.14870) reads ``Batch.tool_calls``.
"""

from __future__ import annotations

import ast
import re

from entropo.envs.base import Environment, Message, StepResult
from entropo.registry import register
from entropo.sandbox import PythonSandbox, SandboxLimits
from entropo.types import Example


def last_code_block(text: str, start: str, end: str) -> str | None:
    """The content of the last complete ``start ... end`` block in ``text``, or None."""
    blocks = re.findall(re.escape(start) + r"(.*?)" + re.escape(end), text, flags=re.DOTALL)
    return blocks[-1].strip("\n") if blocks else None


def print_last_expression(code: str) -> str:
    """``code`` with its last statement wrapped in ``print(...)`` when it is a bare expression (REPL behaviour);
    unchanged when it is not, or when the code does not parse (the sandbox then reports the SyntaxError)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    if isinstance(last.value, ast.Call) and getattr(last.value.func, "id", None) == "print":
        return code
    lines = code.splitlines()
    head = "\n".join(lines[: last.lineno - 1])
    expr = ast.get_source_segment(code, last)
    return (head + "\n" if head else "") + f"print({expr})"


@register("environment", "python_tool", paper="Understanding Tool-Integrated Reasoning, arXiv 2508.19201")
class PythonTool(Environment):
    """A sandboxed Python interpreter the policy calls by writing a code block.

    Params: ``max_turns`` (default 4; ``rollout.max_turns`` overrides), ``code_start``/``code_end`` (block
    delimiters), ``output_template`` (how output is shown; ``{output}`` is replaced), ``output_chars`` (longest
    output shown), ``timeout_s``/``memory_mb`` (sandbox limits per call), ``stop`` (extra stop strings ending a turn,
    e.g. ``[code_end]`` when it differs from anything in ``code_start``), ``demo_template`` (the final-answer turn of
    ``demonstration``, ``{answer}`` replaced).
    """

    observation_role = "tool"

    def __init__(self, max_turns: int = 4, code_start: str = "```python\n", code_end: str = "```",
                 output_template: str = "```output\n{output}\n```", output_chars: int = 512, timeout_s: float = 5.0,
                 memory_mb: int = 1024, stop: list[str] | None = None, demo_template: str = "{answer}"):
        if not code_start or not code_end:
            raise ValueError("python_tool: code_start and code_end must be non-empty")
        self.max_turns = int(max_turns)
        self.code_start, self.code_end = code_start, code_end
        self.output_template, self.output_chars = output_template, int(output_chars)
        self.stop = tuple(stop or ())
        self.demo_template = demo_template
        self.sandbox = PythonSandbox(SandboxLimits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s) + 1),
                                                   memory_mb=int(memory_mb)))

    def step(self, action: str) -> StepResult:
        code = last_code_block(action, self.code_start, self.code_end)
        if code is None:
            return StepResult(done=True)  # no tool call: this turn is the answer
        result = self.sandbox.run(print_last_expression(code))
        output = result.observation(max_chars=self.output_chars).rstrip("\n")
        return StepResult(observation=self.output_template.format(output=output), tool_call=True,
                          info={"tool_errors": 0 if result.ok else 1})

    def demonstration(self, example: Example) -> list[Message] | None:
        """A worked episode for SFT warm-ups: compute ``example.meta["expr"]`` with the tool, then answer."""
        expr = example.meta.get("expr") if example.meta else None
        if expr is None or example.answer is None:
            return None
        code = expr.replace(" ", "") + ("\n" if self.code_start.endswith("\n") else "")  # fences on their own lines
        return [
            {"role": "assistant", "content": f"{self.code_start}{code}{self.code_end}"},
            {"role": self.observation_role, "content": self.output_template.format(output=example.answer)},
            {"role": "assistant", "content": self.demo_template.format(answer=example.answer)},
        ]
