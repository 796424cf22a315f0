"""``object_store``: a stateful API environment (registry kind ``environment``) and its goal generator (registry kind
``task``), the multi-turn toy of LOOP ("Reinforcement Learning for Long-Horizon Interactive LLM Agents", Chen et al.,
arXiv 2502.01600): like an AppWorld scenario, the agent changes the state of an API-backed world through function
calls, and success is judged on the **final state**, not on any text it writes.

The world is a small key-value store of integer objects (``a3=5 b7=2 d1=8``). The agent calls four typed tools, one
call per turn:

    ls()                    the object names, space-separated ("a3 b7 d1")
    read(key)               an object's value ("5")
    write(key, value)       create or overwrite an object ("ok")
    done()                  end the episode

Goals (``goals`` param), each needing 4 calls with ``done()``:
  ``copy``:  "copy b* to r" — find the object whose name starts with ``b`` (``ls``), ``read`` it, ``write`` its value
             into ``r``, ``done``;
  ``add``:   "add b7 to a3" — ``read`` both, ``write`` the sum into ``a3``, ``done``.
The verdict (``StepResult.correct``, on every step, so an episode cut by the turn limit is judged on the state it
left) is True iff the store equals the goal's expected final state exactly: the target holds the right value and
nothing else changed.

Calls are checked by ``ToolEnv``'s machinery (typed Python functions, argument checking against the type hints, one
thread per call with a time limit): an unknown tool, a missing or ill-typed argument, a missing object, a turn that is
not a call, all come back as an ``error: ...`` observation and the episode goes on; only ``done()`` or the turn limit
ends it. Two call syntaxes: ``compact`` (default; ``read(b7)``, ``write(r,5)`` — short, for the character-level tiny
model; the prompt is the goal alone, or with a one-line tool list when ``show_tools``) and ``json`` (the Hermes
``<tool_call>{"name": "read", "arguments": {"key": "b7"}}</tool_call>`` of ``ToolEnv``, with the JSON-schema tool list
in the system message, for real chat models).

The task ``object_store`` draws stores and goals from ``stable_seed`` streams; the held-out goals (``eval_size``)
are disjoint from every training goal by construction (``GeneratedTask``). ``demonstration(example)`` is the worked
episode used by the SFT warm-up (recipe ``loop``). The task's own text verifier always says False: only the
environment can judge an episode (its verdict is what the ``correct`` reward and the held-out accuracy read).
"""

from __future__ import annotations

import inspect
import json
import random
import re
from typing import Any, Sequence

from entropo.envs.base import Message, StepResult
from entropo.envs.tools import CALL_RE, ToolEnv
from entropo.registry import register
from entropo.tasks.base import GeneratedTask, make_prompt, strict_params
from entropo.types import Example

GOALS = ("copy", "add")
LETTERS = "abcdefgh"
COMPACT_CALL_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)


def expected_store(store: dict[str, int], goal: dict[str, Any]) -> dict[str, int]:
    """The final state the goal asks for."""
    out = dict(store)
    if goal["kind"] == "copy":
        source = next(k for k in store if k.startswith(goal["prefix"]))
        out[goal["target"]] = store[source]
    elif goal["kind"] == "add":
        out[goal["target"]] = store[goal["target"]] + store[goal["source"]]
    else:
        raise ValueError(f"object_store: unknown goal kind {goal['kind']!r}; kinds are {list(GOALS)}")
    return out


def goal_text(goal: dict[str, Any]) -> str:
    if goal["kind"] == "copy":
        return f"copy {goal['prefix']}* to {goal['target']}"
    return f"add {goal['source']} to {goal['target']}"


def solution_calls(store: dict[str, int], goal: dict[str, Any]) -> list[tuple[str, list[Any], str]]:
    """The shortest correct episode as (tool, positional args, observation) triples."""
    names = " ".join(store)
    if goal["kind"] == "copy":
        source = next(k for k in store if k.startswith(goal["prefix"]))
        value = store[source]
        return [("ls", [], names), ("read", [source], str(value)), ("write", [goal["target"], value], "ok"),
                ("done", [], "")]
    a, b = goal["target"], goal["source"]
    total = store[a] + store[b]
    return [("read", [a], str(store[a])), ("read", [b], str(store[b])), ("write", [a, total], "ok"),
            ("done", [], "")]


def parse_compact_args(text: str) -> list[Any]:
    """``'r, 5'`` -> ``['r', 5]``: integers become ints, quoted or bare words strings; ``''`` -> ``[]``."""
    text = text.strip()
    if not text:
        return []
    out: list[Any] = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"-?\d+", part):
            out.append(int(part))
        elif len(part) >= 2 and part[0] == part[-1] and part[0] in "'\"":
            out.append(part[1:-1])
        else:
            out.append(part)
    return out


@register("environment", "object_store", paper="LOOP, Long-Horizon Interactive LLM Agents, arXiv 2502.01600")
class ObjectStore(ToolEnv):
    """A key-value store of integer objects changed through typed tool calls; the goal is checked on the final state.

    Params: ``syntax`` (``"compact"`` or ``"json"``), ``max_turns`` (default 6; ``rollout.max_turns`` overrides),
    ``show_tools`` (compact syntax: put a one-line tool list before the goal), ``max_objects`` (a write that would
    exceed it is an error), ``timeout_s`` (per call). The example's ``meta`` holds ``store`` (initial objects),
    ``goal`` and ``expected`` (the final state that counts as success), as drawn by the task ``object_store``."""

    max_turns = 6

    def __init__(self, syntax: str = "compact", max_turns: int = 6, show_tools: bool = False, max_objects: int = 8,
                 timeout_s: float = 2.0):
        if syntax not in ("compact", "json"):
            raise ValueError(f"object_store: syntax must be 'compact' or 'json', got {syntax!r}")
        super().__init__(tools=[self.ls, self.read, self.write, self.done], max_turns=max_turns, timeout_s=timeout_s)
        self.syntax, self.show_tools, self.max_objects = syntax, bool(show_tools), int(max_objects)
        self.store: dict[str, int] = {}
        self.finished = False

    # ---- the tools (bound methods: each episode has its own store) ------------------------------------------------
    def ls(self) -> str:
        """List the names of all objects in the store, separated by spaces."""
        return " ".join(self.store)

    def read(self, key: str) -> str:
        """Read the value of one object.

        Args:
            key: the object's name, as listed by ls
        """
        if key not in self.store:
            raise ValueError(f"no object {key}")
        return str(self.store[key])

    def write(self, key: str, value: int) -> str:
        """Create an object or overwrite its value.

        Args:
            key: the object's name
            value: the integer to store
        """
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", key):
            raise ValueError(f"bad object name {key!r}: use 1-8 lowercase letters/digits starting with a letter")
        if key not in self.store and len(self.store) >= self.max_objects:
            raise ValueError(f"the store is full ({self.max_objects} objects)")
        self.store[key] = value
        return "ok"

    def done(self) -> str:
        """End the episode once the goal is reached."""
        self.finished = True
        return ""

    # ---- the episode ----------------------------------------------------------------------------------------------
    def reset(self, example: Example, seed: int) -> Any:
        del seed  # the world is the example's: the same example always starts from the same state
        meta = example.meta or {}
        if "store" not in meta or "expected" not in meta:
            raise ValueError("object_store: the example needs meta['store'] and meta['expected'] (use task "
                             "'object_store')")
        self.example = example
        self.store = {str(k): int(v) for k, v in meta["store"].items()}
        self.expected = {str(k): int(v) for k, v in meta["expected"].items()}
        self.finished = False
        if self.syntax == "json":
            return super().reset(example, 0)
        if not self.show_tools:
            return example.prompt
        tools = "tools: ls() read(key) write(key,value) done()"
        prompt = example.prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return [{"role": "system", "content": tools}, *messages]

    def success(self) -> bool:
        return self.store == self.expected

    def step(self, action: str) -> StepResult:
        request = self._request(action)
        if request is None:
            hint = ("write one call like read(b7)" if self.syntax == "compact"
                    else "write <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>")
            return StepResult(observation=f"error: no tool call; {hint}", correct=self.success(),
                              info={"tool_errors": 1})
        observation = self.call(request) if request.startswith("{") else request
        error = observation.startswith("error:")
        return StepResult(observation=observation, done=self.finished and not error, correct=self.success(),
                          tool_call=True, info={"tool_errors": int(error)})

    def _request(self, action: str) -> str | None:
        """The turn's call as ToolEnv's JSON request (one call per turn: the first), an ``error: ...`` observation
        for a compact call with too many arguments, or None when the turn holds no call."""
        if self.syntax == "json":
            calls = CALL_RE.findall(action)
            return calls[0] if calls else None
        lines = action.strip().splitlines()
        m = COMPACT_CALL_RE.match(lines[0]) if lines else None
        if m is None:
            return None
        name, args = m.group(1), parse_compact_args(m.group(2))
        fn = self.functions.get(name)
        if fn is None:
            return json.dumps({"name": name, "arguments": {}})  # ToolEnv's answer names the unknown tool
        params = list(inspect.signature(fn).parameters)
        if len(args) > len(params):
            return f"error: {name}: takes {len(params)} argument(s) ({', '.join(params) or 'none'}), got {len(args)}"
        return json.dumps({"name": name, "arguments": dict(zip(params, args))})

    def demonstration(self, example: Example) -> list[Message] | None:
        """The shortest correct episode for the SFT warm-up, in this environment's syntax."""
        meta = example.meta or {}
        if "store" not in meta or "goal" not in meta:
            return None
        messages: list[Message] = []
        for tool, args, observation in solution_calls(meta["store"], meta["goal"]):
            if self.syntax == "compact":
                text = f"{tool}({','.join(str(a) for a in args)})"
            else:
                params = list(self.schemas[[s['name'] for s in self.schemas].index(tool)]["parameters"]["properties"])
                text = f"<tool_call>{json.dumps({'name': tool, 'arguments': dict(zip(params, args))})}</tool_call>"
            messages.append({"role": "assistant", "content": text})
            if tool != "done":
                messages.append({"role": self.observation_role, "content": observation})
        return messages


class ObjectStoreTask(GeneratedTask):
    """Stores and goals for ``object_store``; build it with the registered factory ``object_store``."""

    def __init__(self, seed: int, eval_size: int, goals: Sequence[str], num_objects: int, max_value: int,
                 train_size: int, chat: bool):
        self.name, self.seed = "object_store", seed
        self.goals, self.num_objects, self.max_value = list(goals), num_objects, max_value
        self.chat, self._train_size = chat, train_size
        self._draw_eval(eval_size)

    @staticmethod
    def _key(problem: tuple[dict[str, int], dict[str, Any]]) -> Any:
        store, goal = problem
        return tuple(store.items()), tuple(sorted(goal.items()))

    def _draw(self, rng: random.Random) -> tuple[dict[str, int], dict[str, Any]]:
        letters = rng.sample(LETTERS, self.num_objects)
        store = {f"{c}{rng.randint(0, 9)}": rng.randint(0, self.max_value) for c in letters}
        kind = rng.choice(self.goals)
        names = list(store)
        if kind == "copy":
            goal = {"kind": "copy", "prefix": rng.choice(names)[0], "target": "r"}
        else:
            target, source = rng.sample(names, 2)
            goal = {"kind": "add", "target": target, "source": source}
        return store, goal

    def _example(self, problem: tuple[dict[str, int], dict[str, Any]], split: str, index: int) -> Example:
        store, goal = problem
        expected = expected_store(store, goal)
        return Example(prompt=make_prompt(goal_text(goal), self.chat), answer=json.dumps(expected, sort_keys=True),
                       meta={"task": self.name, "store": dict(store), "goal": dict(goal), "expected": expected,
                             "split": split, "index": index})

    def correct(self, completion: str, example: Example) -> bool:
        """Always False: the outcome is the final state of the store, which only the environment sees."""
        del completion, example
        return False


@register("task", "object_store", description="goals on a key-value store, done through tool calls (object_store env)")
@strict_params("object_store")
def object_store(seed: int, eval_size: int = 64, *, goals: Sequence[str] = GOALS, num_objects: int = 3,
                 max_value: int = 9, train_size: int = 100_000, chat: bool = True) -> ObjectStoreTask:
    """Goals for the ``object_store`` environment. ``goals``: any of ``copy``, ``add``; ``num_objects`` (2-8) objects
    named letter+digit with values in ``[0, max_value]``; ``train_size``; ``chat`` (prompts as chat messages)."""
    goals = list(goals)
    bad = [g for g in goals if g not in GOALS]
    if not goals or bad:
        raise ValueError(f"object_store: goals must be a non-empty list of {list(GOALS)}, got {goals!r}")
    if not 2 <= int(num_objects) <= len(LETTERS):
        raise ValueError(f"object_store: num_objects must be in [2, {len(LETTERS)}], got {num_objects!r}")
    if int(max_value) < 0:
        raise ValueError(f"object_store: max_value must be >= 0, got {max_value!r}")
    return ObjectStoreTask(seed, eval_size, goals, int(num_objects), int(max_value), int(train_size), bool(chat))
