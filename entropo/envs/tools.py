"""``tools``: typed Python functions as tools the policy calls (registry kind ``environment``).

Write plain functions with type hints and a docstring (the first paragraph describes the tool; an ``Args:`` section
describes each parameter); ``tool_schema`` turns each into a JSON-schema description, and ``ToolEnv`` lists them in a
system message and answers calls written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the
Hermes / Qwen convention). Arguments are checked against the type hints before the call; a bad call, an unknown tool,
an exception or a call over ``timeout_s`` comes back to the model as an error observation, never as a run failure.
A turn without a tool call is the final answer. Name the tools in a recipe by import path:

    environment: {name: tools, params: {tools: ["my_pkg.tools:lookup", "my_pkg.tools:add"], max_turns: 4}}

or subclass ``ToolEnv`` in your own module with ``tools = [lookup, add]`` and name that class. Tool functions are
your code and run in the trainer's process (each call on its own thread, abandoned at the time limit); code the *model*
writes runs in ``python_tool``'s sandbox instead.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import re
import threading
import types
import typing
from typing import Any, Callable, Sequence

from entropo.envs.base import Environment, StepResult
from entropo.registry import register
from entropo.types import Example

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
_SEQUENCES = (list, collections.abc.Sequence)  # typing.get_origin of list[X] and Sequence[X]
_UNIONS = (typing.Union, types.UnionType)  # Optional[X] / Union[X, Y] and X | Y
CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _json_type(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in _SEQUENCES:
        (item,) = typing.get_args(annotation) or (Any,)
        return {"type": "array", "items": _json_type(item)} if item is not Any else {"type": "array"}
    if origin is typing.Literal:
        values = list(typing.get_args(annotation))
        return {"type": _JSON_TYPES.get(type(values[0]), "string"), "enum": values}
    if origin in _UNIONS:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _json_type(args[0]) if len(args) == 1 else {"anyOf": [_json_type(a) for a in args]}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    raise TypeError(f"unsupported tool parameter type {annotation!r}; use str, int, float, bool, list, dict, "
                    f"Literal or Optional of those")


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-style docstring."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("Args:")
    params: dict[str, str] = {}
    for line in rest.splitlines():
        m = re.match(r"\s*(\w+)\s*(\([^)]*\))?:\s*(.*)", line)
        if m:
            params[m.group(1)] = m.group(3).strip()
        elif params and line.strip() and not re.match(r"\s*(Returns|Raises|Yields):", line):
            last = list(params)[-1]
            params[last] += " " + line.strip()
        elif re.match(r"\s*(Returns|Raises|Yields):", line):
            break
    return " ".join(head.strip().split()), params


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON-schema description of a typed function: name, description, parameters (required = no default)."""
    hints = typing.get_type_hints(fn)
    description, param_docs = _docstring_parts(fn.__doc__ or "")
    if not description:
        raise ValueError(f"tool {fn.__name__!r} needs a docstring: its first paragraph tells the model what it does")
    properties, required = {}, []
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__!r}: *args/**kwargs cannot be described to the model")
        if name not in hints:
            raise TypeError(f"tool {fn.__name__!r}: parameter {name!r} needs a type hint")
        prop = _json_type(hints[name])
        if name in param_docs:
            prop["description"] = param_docs[name]
        properties[name] = prop
        if p.default is p.empty:
            required.append(name)
    return {"name": fn.__name__, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


def _check_value(value: Any, annotation: Any) -> Any:
    """``value`` converted to the annotation's type where JSON loses it (int for float), or TypeError."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise TypeError(f"must be one of {list(typing.get_args(annotation))}")
        return value
    if origin in _UNIONS:
        for arg in typing.get_args(annotation):
            try:
                return None if (arg is type(None) and value is None) else _check_value(value, arg)
            except TypeError:
                continue
        raise TypeError(f"does not match {annotation}")
    if origin in _SEQUENCES:
        if not isinstance(value, list):
            raise TypeError("must be a list")
        (item,) = typing.get_args(annotation) or (Any,)
        return [_check_value(v, item) for v in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is type(None) and value is None:
        return None
    if isinstance(annotation, type) and not (isinstance(value, annotation) and
                                             not (annotation is int and isinstance(value, bool))):
        raise TypeError(f"must be {_JSON_TYPES.get(annotation, annotation.__name__)}, got {type(value).__name__}")
    return value


def resolve_tool(ref: Any) -> Callable[..., Any]:
    """A function, or an import path ``"pkg.module:function"``."""
    if callable(ref):
        return ref
    from entropo.registry import import_callable

    return import_callable("tool", ref)


def call_with_limit(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> tuple[bool, Any]:
    """(finished, result or exception) of ``fn(**kwargs)`` on its own daemon thread, waiting at most ``timeout_s``.
    A call still running at the limit is abandoned (a Python thread cannot be killed); it holds no shared worker, so
    it never delays other calls, and a daemon thread does not keep the process alive."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(**kwargs)
        except Exception as e:  # the tool's own failure is the model's observation
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name=f"entropo-tool-{getattr(fn, '__name__', 'fn')}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    return True, box["error"] if "error" in box else box.get("result")


@register("environment", "tools", paper="typed Python functions as tools (Hermes-style <tool_call> JSON)")
class ToolEnv(Environment):
    """Tools from typed Python functions. Params: ``tools`` (functions or import paths; a subclass may set the class
    attribute instead), ``max_turns`` (default 4), ``timeout_s`` per call, ``output_chars`` (longest result shown),
    ``system_prompt`` (text before the tool list)."""

    observation_role = "tool"
    tools: Sequence[Any] = ()
    system_prompt = ("You can call these tools. To call one, write <tool_call>{\"name\": ..., \"arguments\": {...}}"
                     "</tool_call> and wait for its result. When you know the answer, reply without a tool call.")

    def __init__(self, tools: Sequence[Any] | None = None, max_turns: int = 4, timeout_s: float = 5.0,
                 output_chars: int = 1000, system_prompt: str | None = None):
        self.functions = {f.__name__: f for f in map(resolve_tool, tools if tools is not None else self.tools)}
        if not self.functions:
            raise ValueError("tools: give at least one tool (params.tools: ['pkg.module:function', ...])")
        self.schemas = [tool_schema(f) for f in self.functions.values()]
        self.max_turns, self.timeout_s, self.output_chars = int(max_turns), float(timeout_s), int(output_chars)
        if system_prompt is not None:
            self.system_prompt = system_prompt

    def reset(self, example: Example, seed: int) -> Any:
        del seed
        self.example = example
        tools_text = "\n".join(json.dumps(s) for s in self.schemas)
        system = {"role": "system", "content": f"{self.system_prompt}\n\nTools:\n{tools_text}"}
        prompt = example.prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if messages and messages[0].get("role") == "system":
            system = {"role": "system", "content": messages[0]["content"] + "\n\n" + system["content"]}
            messages = messages[1:]
        return [system, *messages]

    def step(self, action: str) -> StepResult:
        calls = CALL_RE.findall(action)
        if not calls:
            return StepResult(done=True)
        outputs = [self.call(raw) for raw in calls]
        return StepResult(observation="\n".join(outputs), tool_call=True)

    def call(self, raw: str) -> str:
        """Run one call; the result (or the error) as text for the model."""
        try:
            request = json.loads(raw)
            name, arguments = request["name"], request.get("arguments", {})
            if not isinstance(arguments, dict):
                raise TypeError("arguments must be a JSON object")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            return f"error: bad tool call ({e}); write <tool_call>{{\"name\": ..., \"arguments\": {{...}}}}</tool_call>"
        fn = self.functions.get(name)
        if fn is None:
            return f"error: unknown tool {name!r}; tools are: {', '.join(self.functions)}"
        hints = typing.get_type_hints(fn)
        params = inspect.signature(fn).parameters
        try:
            unknown = [k for k in arguments if k not in params]
            if unknown:
                raise TypeError(f"unknown argument(s) {unknown}")
            missing = [k for k, p in params.items() if p.default is p.empty and k not in arguments]
            if missing:
                raise TypeError(f"missing argument(s) {missing}")
            checked = {}
            for k, v in arguments.items():
                try:
                    checked[k] = _check_value(v, hints[k])
                except TypeError as e:
                    raise TypeError(f"argument {k!r} {e}") from None
        except TypeError as e:
            return f"error: {name}: {e}"
        finished, result = call_with_limit(fn, checked, self.timeout_s)
        if not finished:
            return f"error: {name} timed out after {self.timeout_s:g} s"
        if isinstance(result, Exception):
            return f"error: {name} raised {type(result).__name__}: {result}"
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        return text[: self.output_chars]
