"""The ``word_arith`` task (two-step arithmetic word problems for the Python tool): hand values of every story,
the gold expression against an independent computation, the split, determinism, parameter errors, and one episode
through the real Python-tool sandbox."""

import random

import pytest

from entropo import registry
from entropo.envs.python_tool import PythonTool
from entropo.tasks.word_arith import DISTRACTORS, TEMPLATES, WordArithTask, gold_value, word_arith

# (template, (a, b, c), question fragment, expression, answer) worked by hand
HAND = [
    ("crates", (37, 24, 158), "A crate holds 37 bottles. A shop receives 24 crates and sells 158 bottles.",
     "37*24-158", 730),  # 888 - 158
    ("reading", (12, 5, 9), "reads 12 pages every day for 5 days, then 9 more pages.", "12*5+9", 69),
    ("bus", (40, 13, 7), "leaves with 40 passengers. At the first stop 13 passengers get off and 7 get on.",
     "40-13+7", 34),
    ("change", (56, 7, 424), "A ticket costs 56 dollars.", "424-56*7", 32),  # 424 - 392
    ("teams", (1482, 39, 75), "1482 students are split equally into 39 teams", "1482//39+75", 113),  # 38 + 75
    ("orchard", (50, 26, 35), "plants 50 rows of 26 trees, and later 35 more rows", "(50+35)*26", 2210),  # 85 * 26
    ("tank", (500, 40, 9), "holds 500 liters of water. It leaks 40 liters every hour for 9 hours.", "500-40*9",
     140),
    ("pens", (50, 20, 25), "Each box holds 50 pens. 20 boxes of pens are shared equally among 25 classes.",
     "50*20//25", 40),  # 1000 / 25
]


@pytest.fixture(scope="module")
def task() -> WordArithTask:
    return word_arith(seed=3, eval_size=64)


@pytest.mark.parametrize("name,numbers,fragment,expr,answer", HAND)
def test_every_story_has_its_hand_computed_expression_and_answer(task, name, numbers, fragment, expr, answer):
    ex = task._example((name, numbers, 0, 41), "eval", 0)
    question = ex.prompt[-1]["content"]
    assert fragment in question and question.endswith("?")
    assert ex.meta["expr"] == expr and ex.answer == str(answer) and gold_value(name, *numbers) == answer
    assert ex.meta["template"] == name and ex.meta["numbers"] == list(numbers)
    assert task.correct(f"<py>{expr}</py>\n{answer}", ex) and not task.correct(str(answer + 1), ex)


def test_drawn_problems_are_integer_non_negative_and_their_expression_computes_the_answer(task):
    seen = set()
    for i in range(600):
        ex = task.train_example(i)
        value = eval(ex.meta["expr"], {"__builtins__": {}})  # the task's own expression (digits and operators only)
        assert value == int(ex.answer) == gold_value(ex.meta["template"], *ex.meta["numbers"]) >= 0
        a, b, c = ex.meta["numbers"]
        if ex.meta["template"] == "teams":
            assert a % b == 0  # the split is exact
        if ex.meta["template"] == "pens":
            assert (a * b) % c == 0
        if ex.meta["template"] in ("crates", "reading", "bus", "orchard"):
            assert all(10 <= x <= 99 for x in (a, b, c))  # digits=2
        seen.add(ex.meta["template"])
    assert seen == set(TEMPLATES)  # every story is drawn


def test_split_is_disjoint_and_reset_by_seed_is_deterministic(task):
    eval_keys = {(e.meta["template"], tuple(e.meta["numbers"])) for e in task.eval_examples()}
    assert len(eval_keys) == 64
    train_keys = {(e.meta["template"], tuple(e.meta["numbers"])) for e in (task.train_example(i) for i in range(2000))}
    assert not eval_keys & train_keys
    again = word_arith(seed=3, eval_size=64)
    assert [e.prompt for e in again.eval_examples()] == [e.prompt for e in task.eval_examples()]
    assert again.train_example(17).prompt == task.train_example(17).prompt
    other = word_arith(seed=4, eval_size=64)
    assert [e.prompt for e in other.eval_examples()] != [e.prompt for e in task.eval_examples()]


def test_templates_digits_and_prompt_template_are_honoured():
    t = word_arith(seed=0, eval_size=16, digits=1, templates=["tank", "bus"], template="Q: {question} Use Python.",
                   chat=False)
    for e in t.eval_examples():
        assert e.meta["template"] in ("tank", "bus")
        assert e.prompt.startswith("Q: ") and e.prompt.endswith(" Use Python.")
        assert ("liters" in e.prompt) == (e.meta["template"] == "tank")
        assert ("passengers" in e.prompt) == (e.meta["template"] == "bus")
        if e.meta["template"] == "bus":
            assert all(2 <= x <= 9 for x in e.meta["numbers"])  # digits=1 (never below 2)
    assert {e.meta["template"] for e in t.eval_examples()} == {"tank", "bus"}


@pytest.mark.parametrize("params,field", [({"digits": 0}, "digits"), ({"digits": 5}, "digits"),
                                          ({"templates": ["crates", "ferries"]}, "ferries"),
                                          ({"templates": []}, "templates"), ({"template": "no slot"}, "{question}")])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ValueError, match="word_arith") as err:
        word_arith(seed=0, eval_size=4, **params)
    assert field in str(err.value)


def test_registered_and_rejects_unknown_params():
    factory = registry.get("task", "word_arith")
    assert factory(seed=1, eval_size=4).eval_examples()[0].meta["task"] == "word_arith"
    with pytest.raises(TypeError, match="digit"):
        factory(seed=1, eval_size=4, digit=2)


def test_python_tool_demonstration_computes_the_expression_in_the_sandbox(task):
    """The SFT demonstration's tool call, run through the real sandbox, prints the answer the demo then gives."""
    env = PythonTool(code_start="<py>", code_end="</py>", output_template="{output}", timeout_s=10.0)
    for ex in random.Random(0).sample(task.eval_examples(), 3):
        demo = env.demonstration(ex)
        assert demo[0]["content"] == f"<py>{ex.meta['expr']}</py>"
        env.reset(ex, 0)
        step = env.step(demo[0]["content"])
        assert step.tool_call and step.observation == ex.answer == demo[1]["content"]
        assert task.correct(demo[2]["content"], ex)


def test_distractors_add_one_unused_number_and_keep_the_problem():
    plain, noisy = word_arith(seed=5, eval_size=32), word_arith(seed=5, eval_size=32, distractors=True)
    for p, n in zip(plain.eval_examples(), noisy.eval_examples()):
        assert (p.meta["expr"], p.answer) == (n.meta["expr"], n.answer)  # the same problems, the same answers
        q_plain, q_noisy = p.prompt[-1]["content"], n.prompt[-1]["content"]
        d = n.meta["distractor"]
        assert p.meta["distractor"] is None and 10 <= d <= 99
        first, rest = q_plain.split(". ", 1)
        assert q_noisy == f"{first}. {DISTRACTORS[n.meta['template']].format(d=d)} {rest}"
    ex = noisy._example(("crates", (37, 24, 158), 0, 41), "eval", 0)
    assert ex.prompt[-1]["content"] == ("A crate holds 37 bottles. Each bottle costs 41 cents. A shop receives 24 "
                                        "crates and sells 158 bottles. How many bottles does the shop have left?")
    assert ex.answer == "730"
