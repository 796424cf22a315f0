"""``notebook``: evidence that arrives one piece per round, more rounds than a small context window holds.

The task (registered ``("task", "notebook")``): K digits d_1..d_K (K drawn per example from ``[min_count, max_count]``)
are revealed one per round; the answer needs every one of them: ``op="collect"`` (default) the digits in order
(``"43387"``), ``op="sum"`` their sum mod ``modulus`` (harder: the tiny model does not learn the addition table from a
short warm-up, while copying into the memo it learns). The environment (registered
``("environment", "notebook")``) plays it in one of two context modes:

- ``context="rebuild"`` (IterResearch's Markov workspace, "IterResearch: Rethinking Long-Horizon Agents via
  Markovian State Reconstruction", arXiv 2511.07327): every round starts from a rebuilt workspace, the question, the
  report (memo) the policy wrote last round and only the last action and observation::

      collect 5 digits
      memo:43
      did:next got:3 left:2

  returned as ``StepResult.context``, so the episode loop encodes it as a fresh prompt and each round is its own row.
- ``context="append"``: the usual growing history (question + first digit, then per round the action and the reply
  ``got:3 left:2``); the rollout's ``max_episode_tokens`` (the context window) cuts long episodes off.

An action is ``m=<memo> next`` (keep the memo, reveal the next digit) or ``m=<memo> ans=<n>`` (answer; the episode
ends with the environment's verdict). ``left:0`` marks the last digit; after it ``next`` reveals ``got:- left:0``. Anything else is a
malformed action: the observation says so and shows the expected form; the digit counter does not move. The memo is
free text (at most ``memo_chars`` characters are kept); writing the digits so far (or the running sum) there is what
solves the task.

Demonstrations for the SFT warm-up (``demonstration_rows``): one worked row per round in ``rebuild`` mode (each round's
workspace and the correct action), one whole conversation in ``append`` mode; ``demo_extra_rounds`` > 0 inserts up to
that many idle ``next`` rounds after the last digit (drawn per example), a policy that does not yet stop on time.
"""

from __future__ import annotations

import random
import re
from typing import Any

from entropo.envs.base import Environment, Message, Observation, StepResult
from entropo.registry import register
from entropo.tasks.base import GeneratedTask, stable_seed, strict_params
from entropo.types import Example

_ACTION = re.compile(r"^\s*m=(\S*)\s+(?:(next)|ans=(-?\d+))\s*$")
_ANSWER = re.compile(r"ans=(-?\d+)")
FORMAT_HINT = "use m=<memo> next or m=<memo> ans=<n>"


def question_text(count: int, op: str, modulus: int) -> str:
    return f"collect {count} digits" if op == "collect" else f"add {count} digits mod {modulus}"


def solution(digits: list[int], op: str, modulus: int) -> str:
    return "".join(map(str, digits)) if op == "collect" else str(sum(digits) % modulus)


class NotebookTask(GeneratedTask):
    """Digit-sum problems revealed one digit per round; eval problems are held out by construction (GeneratedTask)."""

    def __init__(self, seed: int, eval_size: int, min_count: int, max_count: int, op: str, modulus: int,
                 train_size: int):
        if not 1 <= min_count <= max_count:
            raise ValueError(f"notebook: need 1 <= min_count <= max_count, got min_count={min_count}, "
                             f"max_count={max_count}")
        if op not in ("collect", "sum"):
            raise ValueError(f"notebook: op must be 'collect' or 'sum', got {op!r}")
        if modulus < 2:
            raise ValueError(f"notebook: modulus must be >= 2, got {modulus}")
        if eval_size < 0:
            raise ValueError(f"notebook: eval_size must be >= 0, got {eval_size}")
        self.name, self.seed = "notebook", seed
        self.min_count, self.max_count, self.op, self.modulus = min_count, max_count, op, modulus
        self._train_size = train_size
        self._draw_eval(eval_size)

    def _draw(self, rng: random.Random) -> tuple[int, ...]:
        return tuple(rng.randint(0, 9) for _ in range(rng.randint(self.min_count, self.max_count)))

    def _key(self, problem: tuple[int, ...]) -> tuple[int, ...]:
        return problem

    def _example(self, problem: tuple[int, ...], split: str, index: int) -> Example:
        answer = solution(list(problem), self.op, self.modulus)
        question = question_text(len(problem), self.op, self.modulus)
        return Example(prompt=[{"role": "user", "content": question}], answer=answer,
                       meta={"task": self.name, "digits": list(problem), "op": self.op, "modulus": self.modulus,
                             "difficulty": len(problem), "split": split, "index": index})

    def correct(self, completion: str, example: Example) -> bool:
        """The final action answers ``ans=<n>`` with the right number."""
        found = _ANSWER.findall(completion or "")
        return bool(found) and found[-1] == example.answer


@register("task", "notebook", paper="IterResearch (Markov workspace), arXiv 2511.07327")
@strict_params("notebook")
def notebook_task(seed: int, eval_size: int = 64, *, min_count: int = 3, max_count: int = 8, op: str = "collect",
                  modulus: int = 10, train_size: int = 100_000) -> NotebookTask:
    """``collect K digits`` (or ``add K digits mod m``) problems, K in [min_count, max_count], for ``notebook``."""
    return NotebookTask(seed, eval_size, min_count, max_count, op, modulus, train_size)


@register("environment", "notebook", paper="IterResearch (Markov workspace), arXiv 2511.07327")
class Notebook(Environment):
    """Digits revealed one per round; ``context="rebuild"`` rebuilds a Markov workspace each round (see module).

    Params: ``context`` (``"rebuild"`` or ``"append"``), ``max_turns`` (default 12; ``rollout.max_turns``
    overrides), ``memo_chars`` (longest memo kept), ``demo_extra_rounds`` (idle rounds in demonstrations).
    """

    observation_role = "user"

    def __init__(self, context: str = "rebuild", max_turns: int = 12, memo_chars: int = 10,
                 demo_extra_rounds: int = 0):
        if context not in ("rebuild", "append"):
            raise ValueError(f"notebook: context must be 'rebuild' or 'append', got {context!r}")
        if memo_chars < 1 or demo_extra_rounds < 0 or max_turns < 1:
            raise ValueError("notebook: memo_chars and max_turns must be >= 1, demo_extra_rounds >= 0")
        self.context, self.max_turns = context, int(max_turns)
        self.memo_chars, self.demo_extra_rounds = int(memo_chars), int(demo_extra_rounds)

    # ---- episode -------------------------------------------------------------------------------------------------
    def reset(self, example: Example, seed: int) -> Observation:
        digits = (example.meta or {}).get("digits")
        if not digits:
            raise ValueError("notebook: the example has no meta['digits']; use the 'notebook' task")
        self.example, self.digits = example, [int(d) for d in digits]
        self.op, self.modulus = str(example.meta.get("op", "collect")), int(example.meta.get("modulus", 10))
        self.question = question_text(len(self.digits), self.op, self.modulus)
        self.shown, self.memo = 1, ""  # the first digit comes with the question
        return self._first()

    def step(self, action: str) -> StepResult:
        match = _ACTION.match(action or "")
        if match is None:
            return self._reply("did:? got:bad action, " + FORMAT_HINT, info={"malformed": 1})
        self.memo = match.group(1)[: self.memo_chars]
        if match.group(2) is None:  # an answer
            ok = match.group(3) == self.example.answer
            return StepResult(done=True, correct=ok, info={"malformed": 0})
        if self.shown < len(self.digits):
            self.shown += 1
            return self._reply("did:next " + self._got(self.shown))
        return self._reply("did:next " + self._got(None))

    # ---- rendering -----------------------------------------------------------------------------------------------
    def _got(self, index: int | None) -> str:
        digit = str(self.digits[index - 1]) if index is not None else "-"
        return f"got:{digit} left:{len(self.digits) - self.shown}"

    def _first(self) -> list[Message]:
        if self.context == "rebuild":
            return self.workspace("start " + self._got(1))
        return [{"role": "user", "content": f"{self.question}\n{self._got(1)}"}]

    def workspace(self, last: str) -> list[Message]:
        """The Markov state s_t: question, the current memo (report), the last action and observation."""
        return [{"role": "user", "content": f"{self.question}\nmemo:{self.memo}\n{last}"}]

    def _reply(self, last: str, info: dict[str, Any] | None = None) -> StepResult:
        info = info or {"malformed": 0}
        if self.context == "rebuild":
            return StepResult(context=self.workspace(last), info=info)
        return StepResult(observation=last.split(" ", 1)[1], info=info)  # the history already shows the action

    # ---- demonstrations ------------------------------------------------------------------------------------------
    def demonstration_rows(self, example: Example) -> list[tuple[Observation, list[Message]]]:
        """Worked rows for the SFT warm-up: the correct action of every round from its own context (``rebuild``:
        one row per round) or the whole conversation (``append``: one row)."""
        first = self.reset(example, 0)
        rng = random.Random(stable_seed("notebook-demo", example.meta.get("split"), example.meta.get("index"),
                                        tuple(self.digits)))
        idle = rng.randint(0, self.demo_extra_rounds) if self.demo_extra_rounds else 0
        actions = []
        for k in range(1, len(self.digits) + 1):
            total = solution(self.digits[:k], self.op, self.modulus)
            actions.append(f"m={total} next")
        actions += [f"m={total} next"] * idle
        actions[-1] = f"m={total} ans={total}"
        rows: list[tuple[Observation, list[Message]]] = []
        context: Observation = first
        conversation: list[Message] = []
        for action in actions:
            if self.context == "rebuild":
                rows.append((context, [{"role": "assistant", "content": action}]))
            else:
                conversation.append({"role": "assistant", "content": action})
            result = self.step(action)
            if result.done:
                break
            if self.context == "rebuild":
                context = result.context
            else:
                conversation.append({"role": self.observation_role, "content": result.observation})
        return rows if self.context == "rebuild" else [(first, conversation)]
