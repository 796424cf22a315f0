"""TaTToo reduced (arXiv 2510.06217): the table tool, the table_qa task, tool vs no-tool step verifiers, best-of-N."""

import random

import pytest

from entropo import registry
from entropo.search.steps import Partial, Step, root
from entropo.search.tattoo import (ERRORS, TableStepScorer, best_of_n_accuracy, gold_labels, label_accuracy, perturb,
                                   predicted_labels, solution_score, tattoo_program, verdict)
from entropo.tasks.table_qa import ToolError, evaluate, parse_step
from entropo.types import Example

ROWS = [
    {"item": "apple", "category": "fruit", "price": 3, "quantity": 4},
    {"item": "pear", "category": "fruit", "price": 5, "quantity": 1},
    {"item": "kale", "category": "veg", "price": 2, "quantity": 6},
    {"item": "leek", "category": "veg", "price": 7, "quantity": 2},
    {"item": "bun", "category": "bread", "price": 1, "quantity": 9},
    {"item": "roll", "category": "bread", "price": 4, "quantity": 3},
]
Q = "What is the total quantity of fruit items minus the total quantity of veg items?"
GOLD = ["sum(quantity where category=fruit)=5", "sum(quantity where category=veg)=8", "5-8=-3"]
EX = Example(prompt="t", answer="-3", target="\n".join(GOLD), meta={"rows": ROWS, "question": Q, "steps": GOLD})


def test_table_tool_by_hand():
    assert evaluate("sum(price where category=fruit)=0", ROWS) == 8
    assert evaluate("count(where category=veg and price>2)=0", ROWS) == 1
    assert evaluate("count(where price<3)=0", ROWS) == 2
    assert evaluate("max(price where category=bread)=0", ROWS) == 4
    assert evaluate("min(quantity where category=veg)=0", ROWS) == 2
    assert evaluate("lookup(price where item=leek)=0", ROWS) == 7
    assert evaluate("sum(price where category=dairy)=0", ROWS) == 0  # empty sum
    assert evaluate("7//2=0") == 3 and evaluate("max(4,9)=0") == 9 and evaluate("3*-2=0") == -6
    assert evaluate("5-8=0") == -3
    step = parse_step("sum(quantity where category=fruit)=5")
    assert step["kind"] == "table" and step["op"] == "sum" and step["claimed"] == 5
    assert step["conds"] == [("category", "=", "fruit")]


@pytest.mark.parametrize("line,match", [
    ("sum price fruit", "has no"),
    ("sum(price where category=fruit)=abc", "not an integer"),
    ("sum(price where category=fruit=5", "not a table operation"),
    ("avg(price where category=fruit)=5", "not a table operation"),
    ("sum(price where category~fruit)=5", "condition"),
    ("3^4=81", "not a table operation"),
])
def test_parser_rejects_malformed(line, match):
    with pytest.raises(ToolError, match=match):
        parse_step(line)


@pytest.mark.parametrize("line,match", [
    ("sum(colour where category=fruit)=1", "numeric column"),
    ("sum(price where colour=red)=1", "unknown column"),
    ("sum(price where category>3)=1", "only '='"),
    ("lookup(price where category=fruit)=1", "exactly one"),
    ("max(price where category=dairy)=1", "no row"),
    ("4//0=1", "division by zero"),
])
def test_tool_errors_are_clear(line, match):
    with pytest.raises(ToolError, match=match):
        evaluate(line, ROWS)


def test_verifier_labels_by_hand():
    tool = lambda ln: verdict(ln, EX, True)  # noqa: E731
    blind = lambda ln: verdict(ln, EX, False)  # noqa: E731
    assert [tool(ln) for ln in GOLD] == [1, 1, 1] and [blind(ln) for ln in GOLD] == [1, 1, 1]
    wrong_value = "sum(quantity where category=fruit)=6"  # retrieval slip: only the tool sees it
    assert tool(wrong_value) == -1 and blind(wrong_value) == 1
    wrong_filter = "sum(quantity where category=bread)=12"  # bread is not in the question: both see it
    assert tool(wrong_filter) == -1 and blind(wrong_filter) == -1
    assert tool("5-8=-2") == -1 and blind("5-8=-2") == -1  # arithmetic slip
    assert tool("sum quantity fruit") == 0 and blind("sum quantity fruit") == 0  # cannot check
    assert blind("sum(quantity where category=fruit)=-1") == -1  # implausible count of units
    # prefix labels: after an error every later step is wrong
    bad = ["sum(quantity where category=fruit)=6", "sum(quantity where category=veg)=8", "6-8=-2"]
    assert gold_labels(bad, GOLD) == [False, False, False]
    assert gold_labels(GOLD, GOLD) == [True, True, True]
    assert predicted_labels("\n".join(bad), EX, True) == [False, False, False]
    assert predicted_labels("\n".join(bad), EX, False) == [True, True, True]
    assert solution_score("\n".join(GOLD), EX, True) == 1.0 and solution_score("\n".join(bad), EX, True) == -1.0
    assert solution_score("", EX, True) == -1.0 and solution_score("", EX, True, finished=False) == 0.0
    with pytest.raises(ValueError, match="table_qa"):
        verdict("1+1=2", Example(prompt="x"), True)


def test_scorer_on_partials_and_best_of_n_pick():
    from entropo.models.tiny import tiny_tokenizer
    from entropo.search.strategies import argmax_first

    tok = tiny_tokenizer()

    def partial(text, finished=True):
        ids = tuple(tok.encode(text, add_special_tokens=False))
        return Partial(EX, (1,), (Step(ids, (0.0,) * len(ids), "eos"),), finished)

    bad = "sum(quantity where category=fruit)=6\nsum(quantity where category=veg)=8\n6-8=-2"
    cands = [partial(bad), partial("\n".join(GOLD)), partial("sum(quantity where category=fruit)=5\n5-8=-2")]
    tool, blind = TableStepScorer(tok, True), TableStepScorer(tok, False)
    assert tool.score(cands) == [-1.0, 1.0, -1.0]
    assert blind.score(cands) == [1.0, 1.0, -1.0]
    assert argmax_first(tool.score(cands)) == 1  # the gold solution
    assert argmax_first(blind.score(cands)) == 0  # ties → first: the wrong-value solution
    # an unfinished partial's open last line is not judged yet
    assert tool.score([partial("sum(quantity where category=fruit)=5\n5-8=-", finished=False)]) == [1.0]
    assert tool.score([root(EX, [1])]) == [0.0]


def test_task_determinism_split_and_gold():
    make = registry.get("task", "table_qa")
    a, b = make(seed=3, eval_size=20), make(seed=3, eval_size=20)
    assert [e.prompt for e in a.eval_examples()] == [e.prompt for e in b.eval_examples()]
    assert a.train_example(5).prompt == b.train_example(5).prompt
    assert [e.prompt for e in make(seed=4, eval_size=20).eval_examples()] != [e.prompt for e in a.eval_examples()]
    held = {e.prompt for e in a.eval_examples()}
    assert all(a.train_example(i).prompt not in held for i in range(300))
    for ex in a.eval_examples():
        rows = ex.meta["rows"]
        assert 6 <= len(rows) <= 8 and len(ex.meta["steps"]) == 3
        assert a.correct(ex.target, ex) and not a.correct(ex.target + "\n999", ex)
        assert all(verdict(ln, ex, True) == 1 for ln in ex.meta["steps"])  # gold steps check out with the tool
    assert not a.correct("", a.eval_examples()[0])
    with pytest.raises(ValueError, match="kinds"):
        make(seed=0, kinds="median")
    with pytest.raises(TypeError):
        make(seed=0, colour=1)


def test_perturbations_are_errors_with_propagation():
    rng = random.Random(0)
    task = registry.get("task", "table_qa")(seed=1, eval_size=30)
    seen = set()
    for ex in task.eval_examples():
        for e in ERRORS:
            got = perturb(ex, e, rng)
            if got is None:
                continue
            lines, k = got
            seen.add(e)
            labels = gold_labels(lines, ex.meta["steps"])
            assert labels == [i < k for i in range(len(lines))]  # the first error is step k
            assert predicted_labels("\n".join(lines), ex, True)[k] is False
            if e != "arith_slip" and k < len(lines) - 1:  # later arithmetic recomputed from the wrong value
                assert verdict(lines[-1], ex, True) in (1, 0)
    assert seen == set(ERRORS)


def test_measurement_small(tmp_path):
    task = registry.get("task", "table_qa")(seed=0, eval_size=24)
    held = task.eval_examples()
    lab = label_accuracy(held, 0)
    assert lab["tool"]["step_label_accuracy"] == 1.0  # exact on these error types, by construction
    assert lab["no_tool"]["per_error_first_error_recall"]["wrong_value"] == 0.0
    assert lab["no_tool"]["per_error_first_error_recall"]["arith_slip"] == 1.0
    bon = best_of_n_accuracy(task, held, [1, 4], 0.25, 0)
    assert bon[1]["tool"] == bon[1]["no_tool"] == bon[1]["first"]  # N = 1: no choice
    assert bon[4]["first"] <= bon[4]["tool"] <= bon[4]["oracle"]
    res = tattoo_program(tmp_path, 0, lambda *_: None, n_eval=8, ns=[1, 2])
    assert (tmp_path / "tattoo.json").exists() and set(res["best_of_n"]) == {1, 2}
    with pytest.raises(ValueError, match="p_gold"):
        tattoo_program(tmp_path, 0, lambda *_: None, p_gold=2.0)


def test_reproduce_experiments_are_collected():
    from entropo.reproduce.experiments import EXPERIMENTS

    mine = {e.name: e for e in EXPERIMENTS if e.name.startswith("tattoo_")}
    assert set(mine) == {"tattoo_tool_verify", "tattoo_model_bon"}
    assert all(e.kind == "custom" and e.suite == "preferences" and e.run is not None for e in mine.values())


def test_scorers_by_import_path():
    from entropo.search.scorers import make_scorer

    for path, name in [("entropo.search.tattoo:tool_scorer", "tattoo_tool"),
                       ("entropo.search.tattoo:no_tool_scorer", "tattoo_no_tool")]:
        assert make_scorer(path, task=None, tokenizer=None, sampler=None).name == name
