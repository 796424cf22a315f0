"""Tool environments: schemas from typed functions, tool-call parsing and errors, the sandboxed Python tool, and the
SFT demonstration laid out exactly as a sampled episode."""

import time
from collections.abc import Sequence
from typing import Literal, Optional

import pytest
import torch

from entropo.envs.base import EnvFactory
from entropo.envs.python_tool import PythonTool, last_code_block, print_last_expression
from entropo.envs.tools import ToolEnv, tool_schema
from entropo.models import tiny
from entropo.rollout import HFEngine
from entropo.rollout.episodes import EpisodeLimits
from entropo.sft import demonstration_ids
from entropo.types import Example


def lookup(city: str, year: int = 2020, unit: Literal["k", "m"] = "k") -> dict:
    """Population of a city in a year.

    Args:
        city: Name of the city.
        year: Census year; later years
            are estimates.
        unit: Thousands or millions.
    """
    return {"city": city, "year": year, "population": 1234 if unit == "k" else 1.2}


def scale(values: list[float], factor: Optional[float] = None) -> list:
    """Multiply values by a factor."""
    return [v * (factor or 1.0) for v in values]


def slow(seconds: float) -> str:
    """Sleep."""
    time.sleep(seconds)
    return "done"


def broken() -> str:
    """Always fails."""
    raise KeyError("no such record")


def test_tool_schema_from_type_hints_and_docstring():
    assert tool_schema(lookup) == {
        "name": "lookup",
        "description": "Population of a city in a year.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": "Name of the city."},
            "year": {"type": "integer", "description": "Census year; later years are estimates."},
            "unit": {"type": "string", "enum": ["k", "m"], "description": "Thousands or millions."},
        }},
    }
    assert tool_schema(scale)["parameters"]["properties"] == {
        "values": {"type": "array", "items": {"type": "number"}}, "factor": {"type": "number"}}
    with pytest.raises(ValueError, match="needs a docstring"):
        tool_schema(lambda x: x)

    def pick(ids: Sequence[int], limit: int | None = None) -> list:
        """Pick ids."""
        return list(ids)[:limit]

    assert tool_schema(pick)["parameters"]["properties"] == {
        "ids": {"type": "array", "items": {"type": "integer"}}, "limit": {"type": "integer"}}
    assert ToolEnv(tools=[pick]).call('{"name": "pick", "arguments": {"ids": [3, 4, 5], "limit": 2}}') == "[3, 4]"


def test_tool_calls_results_and_every_error_as_an_observation():
    env = ToolEnv(tools=[lookup, scale, slow, broken], timeout_s=0.5)
    first = env.reset(Example(prompt="How many people live in Oslo?"), 0)
    assert first[0]["role"] == "system" and '"name": "lookup"' in first[0]["content"]
    assert first[1] == {"role": "user", "content": "How many people live in Oslo?"}
    ok = env.step('I will look. <tool_call>{"name": "lookup", "arguments": {"city": "Oslo"}}</tool_call>')
    assert ok.tool_call and not ok.done and '"population": 1234' in ok.observation
    assert env.call('{"name": "scale", "arguments": {"values": [1, 2], "factor": 3}}') == "[3.0, 6.0]"
    assert env.call('{"name": "nope", "arguments": {}}').startswith("error: unknown tool 'nope'")
    assert "argument 'year' must be integer, got str" in env.call('{"name": "lookup", "arguments": {"city": "a", '
                                                                  '"year": "x"}}')
    assert "missing argument(s) ['city']" in env.call('{"name": "lookup", "arguments": {}}')
    assert "bad tool call" in env.call("{not json")
    assert env.call('{"name": "broken"}') == "error: broken raised KeyError: 'no such record'"
    t0 = time.perf_counter()
    assert env.call('{"name": "slow", "arguments": {"seconds": 3}}') == "error: slow timed out after 0.5 s"
    assert time.perf_counter() - t0 < 2
    assert env.step("The answer is 1234.").done


def test_tools_by_import_path_and_bad_path(tmp_path, monkeypatch):
    (tmp_path / "my_tools.py").write_text('def add(a: int, b: int) -> int:\n    """Add two integers."""\n'
                                          '    return a + b\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    env = EnvFactory(ToolEnv, {"tools": ["my_tools:add"]})()
    assert env.call('{"name": "add", "arguments": {"a": 2, "b": 3}}') == "5"
    with pytest.raises(TypeError, match="parameter 'obj' needs a type hint"):
        ToolEnv(tools=["json:dumps"])
    with pytest.raises(ValueError, match="no module named .no_such_module_xyz."):
        ToolEnv(tools=["no_such_module_xyz:fn"])


def test_code_block_parsing_and_repl_printing():
    text = "First\n```python\nx = 1\n```\nthen\n```python\ny = 2\ny * 3\n```"
    assert last_code_block(text, "```python\n", "```") == "y = 2\ny * 3"
    assert last_code_block("no code", "```python\n", "```") is None
    assert print_last_expression("y = 2\ny * 3") == "y = 2\nprint(y * 3)"
    assert print_last_expression("print(4)") == "print(4)"
    assert print_last_expression("x = 5") == "x = 5"
    assert print_last_expression("def f(:") == "def f(:"


def test_python_tool_runs_code_sandboxed_and_returns_errors_as_observations():
    env = PythonTool(timeout_s=2.0)
    env.reset(Example(prompt="q"), 0)
    out = env.step("Let me compute.\n```python\n12 * 34\n```")
    assert out.tool_call and not out.done and out.observation == "```output\n408\n```"
    err = env.step("```python\n1/0\n```")
    assert err.tool_call and "ZeroDivisionError" in err.observation and err.info["tool_errors"] == 1
    t0 = time.perf_counter()
    hang = env.step("```python\nwhile True: pass\n```")
    assert "timeout" in hang.observation.lower() and time.perf_counter() - t0 < 5
    assert env.step("The answer is 408.").done


def test_demonstration_is_laid_out_like_a_sampled_episode():
    """SFT on a worked tool episode trains the same ids the rollout produces when the policy writes that episode."""
    model, tok = tiny()
    engine = HFEngine(model, tok)
    env = PythonTool(code_start="<py>", code_end="</py>", output_template="{output}")
    example = Example(prompt=[{"role": "user", "content": "12*34="}], answer="408", meta={"expr": "12 * 34"})
    demo = env.demonstration(example)
    assert demo == [{"role": "assistant", "content": "<py>12*34</py>"}, {"role": "tool", "content": "408"},
                    {"role": "assistant", "content": "408"}]
    ids, mask = demonstration_ids(engine.chat, example.prompt, demo, "tool", tok.eos_token_id)
    text = tok.decode(ids)
    assert text == "12*34=\n<py>12*34</py><eos>408\n408<eos>"
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "<py>12*34</py><eos>408<eos>"
    # the same episode replayed through the rollout (a policy forced to write the demo's actions)
    actions = iter([tok("<py>12*34</py>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                    tok("408", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])

    def forced(contexts, temperature, top_p, budget, stops, generator, device):
        ids_ = next(actions)
        return [ids_], [torch.zeros(len(ids_))], [torch.zeros(len(ids_))], ["eos"]

    engine._generate_micro_batch = forced
    out = engine.generate([example], 1, environment=EnvFactory(PythonTool, {"code_start": "<py>", "code_end": "</py>",
                                                                            "output_template": "{output}"}),
                          limits=EpisodeLimits(), max_new_tokens=16)
    live = out.attention_mask[0].bool()
    assert out.input_ids[0][live].tolist() == ids
    assert out.response_mask[0][live].tolist() == mask
    assert out.episodes[0].tool_calls == 1 and out.completions == ["408"]


def test_sql_tool_reads_and_refuses_writes(tmp_path):
    import sqlite3

    from entropo.envs.sql_tool import SQLTool

    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE items (name TEXT, price INTEGER)")
        con.executemany("INSERT INTO items VALUES (?, ?)", [("pen", 2), ("book", 12)])
    before = db.read_bytes()
    env = SQLTool(database=str(tmp_path / "{db}.sqlite"), timeout_s=2.0)
    env.reset(Example(prompt="Most expensive item?", meta={"db": "shop"}), 0)
    rows = env.step("```sql\nSELECT name FROM items ORDER BY price DESC LIMIT 1\n```")
    assert rows.tool_call and "book" in rows.observation and "pen" not in rows.observation
    refused = env.step("```sql\nDROP TABLE items\n```")
    assert refused.tool_call and "not allowed" in refused.observation and refused.info["tool_errors"] == 1
    assert env.step("The answer is book.").done
    assert db.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="environment.params.database"):
        env.reset(Example(prompt="q", meta={"db": "missing"}), 0)
