"""Tasks: determinism under seed, train/eval disjointness, verifiers, parameter errors, adapters."""

from __future__ import annotations

import json

import pytest

from entropo.registry import get, names
from entropo.tasks.base import extract_last_number, safe_arith_eval, stable_seed, UnsafeExpression
from entropo.tasks.countdown import check_countdown, extract_expression


def _key(ex):
    return json.dumps(ex.prompt, sort_keys=True)


def test_all_tasks_registered():
    assert {"arithmetic", "countdown", "reasoning_gym", "dataset"} <= set(names("task"))


def test_stable_seed_is_process_independent():
    # a fixed value: Python's salted hash() would differ between processes
    assert stable_seed(0, "train", 1) == stable_seed(0, "train", 1)
    assert stable_seed(0, "train", 1) != stable_seed(1, "train", 1)
    assert stable_seed(1, "x") == int.from_bytes(__import__("hashlib").sha256(b"(1, 'x')").digest()[:8], "big") >> 1


def test_last_number_extraction():
    assert extract_last_number("9 + 8 = 17.") == "17"
    assert extract_last_number("5-3=-2") == "-2"
    assert extract_last_number("It is 1,234 apples") == "1234"
    assert extract_last_number("no digits") is None


# ------------------------------------------------------------------------------------------------ arithmetic


def test_arithmetic_one_digit_partition():
    f = get("task", "arithmetic")
    t = f(seed=0, eval_size=16)
    assert t.train_size() == 81 - 16  # 9*9 problems, partitioned
    train = {t.train_example(i).meta["expr"] for i in range(t.train_size())}
    ev = {e.meta["expr"] for e in t.eval_examples()}
    assert len(train) == 65 and len(ev) == 16 and not (train & ev)
    assert len(train | ev) == 81
    e = t.train_example(0)
    assert e.prompt[0]["role"] == "user" and e.prompt[0]["content"].startswith("What is ")
    a, b = map(int, e.meta["expr"].split(" + "))
    assert e.answer == str(a + b) and e.target == e.answer and e.meta["difficulty"] == 1
    # verifier: the LAST number counts
    assert t.correct(f"{a} + {b} = {a + b}", e)
    assert not t.correct(f"{a + b} is wrong, it is {a + b + 1}", e)
    assert t.correct(f"The answer is {a + b}.", e)
    assert not t.correct("I don't know", e)


def test_arithmetic_deterministic_and_seed_dependent():
    f = get("task", "arithmetic")
    t1, t2, t3 = f(seed=3, eval_size=8), f(seed=3, eval_size=8), f(seed=4, eval_size=8)
    assert [_key(e) for e in t1.eval_examples()] == [_key(e) for e in t2.eval_examples()]
    assert [_key(t1.train_example(i)) for i in range(20)] == [_key(t2.train_example(i)) for i in range(20)]
    assert [_key(e) for e in t1.eval_examples()] != [_key(e) for e in t3.eval_examples()]


def test_arithmetic_large_space_disjoint_and_plain_template():
    f = get("task", "arithmetic")
    t = f(seed=1, eval_size=32, digits=3, ops="+-*", num_terms=3, chat=False, template="{expr_compact}=",
          train_size=500)
    assert t.train_size() == 500
    ev = {e.meta["expr"] for e in t.eval_examples()}
    train = {t.train_example(i).meta["expr"] for i in range(500)}
    assert len(ev) == 32 and not (train & ev)
    e = t.train_example(7)
    assert isinstance(e.prompt, str) and e.prompt.endswith("=") and " " not in e.prompt
    value, _ = safe_arith_eval(e.meta["expr"])
    assert e.answer == str(int(value))
    assert all(100 <= int(x) <= 999 for x in e.prompt[:-1].replace("-", "+").replace("*", "+").split("+"))
    assert t.correct(e.answer, e)
    assert f(seed=1, train_size=10, digits=2).train_size() == 10


def test_arithmetic_subtraction_negative_answers():
    t = get("task", "arithmetic")(seed=0, eval_size=4, ops="-")
    negs = [t.train_example(i) for i in range(t.train_size()) if t.train_example(i).answer.startswith("-")]
    assert negs
    e = negs[0]
    assert t.correct(f"{e.meta['expr']} = {e.answer}", e)


def test_arithmetic_param_errors():
    f = get("task", "arithmetic")
    with pytest.raises(TypeError) as ei:
        f(seed=0, digit=2)
    msg = str(ei.value)
    assert "'digit'" in msg and "digits" in msg and "num_terms" in msg
    with pytest.raises(ValueError, match="digits"):
        f(seed=0, digits=7)
    with pytest.raises(ValueError, match="ops"):
        f(seed=0, ops="/")
    with pytest.raises(ValueError, match="eval_size"):
        f(seed=0, eval_size=81)


# ------------------------------------------------------------------------------------------------ countdown


def test_countdown_verifier_hand_cases():
    nums, target = [3, 5, 2], 16
    assert check_countdown("<think>ok</think>\n<answer>(3 + 5) * 2</answer>", nums, target)
    assert check_countdown("<answer> 2 * (5 + 3) </answer>", nums, target)
    assert check_countdown("(3 + 5) × 2", nums, target)  # last line, unicode times
    assert check_countdown("so\n(3+5)*2 = 16", nums, target)  # '=' part dropped
    assert not check_countdown("<answer>(3 + 5) * 2 + 0</answer>", nums, target)  # 0 is not given
    assert not check_countdown("<answer>(5 + 5) + 3 * 2</answer>", nums, target)  # 5 reused, 2 used... wrong multiset
    assert not check_countdown("<answer>3 * 5</answer>", nums, 15)  # exact_use: 2 unused
    assert check_countdown("<answer>3 * 5</answer>", nums, 15, exact_use=False)
    assert not check_countdown("<answer>5 * 5 - 3 * 2</answer>", nums, 19, exact_use=False)  # 5 used twice
    assert not check_countdown("<answer>(3 + 5) * 2</answer>", nums, 17)  # wrong value
    assert check_countdown("<answer>(3 + 5) / 2 * 4</answer>", [3, 5, 2, 4], 16)  # exact division
    assert not check_countdown("<answer>3 / 0 + 5 + 2</answer>", [3, 0, 5, 2], 10)  # division by zero
    assert not check_countdown("<answer>3.0 * 5 + 2</answer>", nums, 17)  # floats rejected
    assert not check_countdown("no expression here", nums, target)
    # the last <answer> wins
    assert check_countdown("<answer>3 * 5</answer> wait <answer>(3 + 5) * 2</answer>", nums, target)


def test_countdown_malicious_input_never_executes(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = [
        "<answer>__import__('os').system('touch " + str(marker) + "')</answer>",
        "<answer>().__class__.__bases__[0].__subclasses__()</answer>",
        "<answer>open('/etc/passwd').read()</answer>",
        "<answer>9**9**9**9</answer>",
        "<answer>" + "(" * 500 + "1" + ")" * 500 + "</answer>",
        "<answer>lambda: 3</answer>",
    ]
    for e in evil:
        assert not check_countdown(e, [3, 5, 2], 16)
    assert not marker.exists()
    with pytest.raises(UnsafeExpression):
        safe_arith_eval("__import__('os')")
    with pytest.raises(UnsafeExpression):
        safe_arith_eval("2 ** 3")
    assert extract_expression("<answer>1 + 2 = 3</answer>") == "1 + 2"


def test_countdown_generation_solvable_deterministic_disjoint():
    f = get("task", "countdown")
    t = f(seed=0, eval_size=32, num_numbers=4)
    t2 = f(seed=0, eval_size=32, num_numbers=4)
    for i in range(50):
        e = t.train_example(i)
        assert _key(e) == _key(t2.train_example(i))
        assert len(e.meta["numbers"]) == 4 and 1 <= e.meta["target"] <= 100
        assert all(1 <= n <= 20 for n in e.meta["numbers"])
        assert t.correct(e.target, e)  # the gold completion solves it
        assert e.answer == str(e.meta["target"])
    ev = {(tuple(sorted(e.meta["numbers"])), e.meta["target"]) for e in t.eval_examples()}
    tr = {(tuple(sorted(t.train_example(i).meta["numbers"])), t.train_example(i).meta["target"]) for i in range(300)}
    assert len(ev) == 32 and not (ev & tr)
    e = t.eval_examples()[0]
    assert "<answer>" in e.prompt[0]["content"] and str(e.meta["target"]) in e.prompt[0]["content"]
    with pytest.raises(TypeError, match="max_number"):
        f(seed=0, max_num=5)


# ------------------------------------------------------------------------------------------------ reasoning-gym


def test_reasoning_gym_adapter_leg_counting():
    f = get("task", "reasoning_gym")
    t = f(seed=0, eval_size=8, dataset="leg_counting", size=50)
    assert t.name == "reasoning_gym/leg_counting" and t.train_size() == 50
    e = t.train_example(0)
    entry = e.meta["entry"]
    assert entry["answer"] == e.answer and entry["question"] in e.prompt[0]["content"]
    assert t.score(e.answer, e) == 1.0 and t.correct(e.answer, e)
    assert t.score(f"<think>count</think><answer>{e.answer}</answer>", e) == 1.0
    assert t.score(f"Let me count.\n{e.answer}", e) == 1.0  # last line
    wrong = str(int(e.answer) + 1)
    assert t.score(wrong, e) < 1.0 and not t.correct(wrong, e)
    # determinism and exact-duplicate exclusion
    t2 = f(seed=0, eval_size=8, dataset="leg_counting", size=50)
    assert [_key(t.train_example(i)) for i in range(10)] == [_key(t2.train_example(i)) for i in range(10)]
    evq = {x.meta["entry"]["question"] for x in t.eval_examples()}
    assert not evq & {t.train_example(i).meta["entry"]["question"] for i in range(50)}
    ev_e = t.eval_examples()[0]
    assert t.correct(ev_e.answer, ev_e)


def test_reasoning_gym_config_and_errors():
    f = get("task", "reasoning_gym")
    t = f(seed=1, eval_size=2, dataset="basic_arithmetic", size=10, config={"min_terms": 2, "max_terms": 2},
          system_prompt="direct")
    e = t.train_example(3)
    assert e.prompt[0]["role"] == "system" and "<answer>" in e.prompt[0]["content"]
    assert e.target == f"<answer>{e.answer}</answer>"
    assert t.correct(e.target, e)
    with pytest.raises(ValueError, match="unknown dataset 'leg_count'.*leg_counting"):
        f(seed=0, dataset="leg_count")
    with pytest.raises(ValueError, match="no config field.*max_animals"):
        f(seed=0, dataset="leg_counting", config={"max_animalz": 3})


# ------------------------------------------------------------------------------------------------ dataset


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_dataset_task_split_and_verifiers(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "solution": str(i + 1), "gold": f"It is {i + 1}."} for i in range(30)]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    f = get("task", "dataset")
    kw = dict(path=path, prompt_column="question", answer_column="solution", target_column="gold",
              cache_dir=str(tmp_path / "cache"))
    t = f(seed=0, eval_size=64, **kw)  # eval = min(64, ceil(0.1 * 30)) = 3
    assert t.train_size() == 27 and len(t.eval_examples()) == 3
    tr = {t.train_example(i).prompt[0]["content"] for i in range(27)}
    ev = {e.prompt[0]["content"] for e in t.eval_examples()}
    assert not tr & ev and len(tr | ev) == 30
    t_same = f(seed=0, eval_size=64, **kw)
    assert [e.prompt for e in t_same.eval_examples()] == [e.prompt for e in t.eval_examples()]
    t_other = f(seed=5, eval_size=64, **kw)
    assert [e.prompt for e in t_other.eval_examples()] != [e.prompt for e in t.eval_examples()]
    e = t.train_example(0)
    assert e.target.startswith("It is ") and e.answer == e.target[6:-1]
    assert t.correct(f"The answer is $\\boxed{{{e.answer}}}$", e)  # math-verify
    assert not t.correct("The answer is $\\boxed{1000}$", e)
    t_exact = f(seed=0, eval_size=4, eval_fraction=None, verifier="exact", chat=False, system_prompt="Be brief.", **kw)
    assert len(t_exact.eval_examples()) == 4
    e = t_exact.train_example(0)
    assert isinstance(e.prompt, str) and e.prompt.startswith("Be brief.\n\n")
    assert t_exact.correct(f"thinking\n{e.answer}.", e) and not t_exact.correct(f"{e.answer} apples", e)
    t_num = f(seed=0, verifier="last_number", **kw)
    e = t_num.train_example(0)
    assert t_num.correct(f"{e.answer} apples", e)


def test_dataset_missing_column_message(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}, {"question": "r", "answer": "2"}])
    with pytest.raises(ValueError) as ei:
        get("task", "dataset")(seed=0, path=path, cache_dir=str(tmp_path / "cache"))
    msg = str(ei.value)
    assert "'prompt'" in msg and path in msg and "question, answer" in msg and "task.params.prompt_column" in msg


def test_dataset_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("prompt,answer\n" + "".join(f"q{i},{i}\n" for i in range(10)))
    t = get("task", "dataset")(seed=0, eval_size=2, path=str(tmp_path / "d.csv"), verifier="exact",
                                cache_dir=str(tmp_path / "cache"))
    assert t.train_size() == 9 and len(t.eval_examples()) == 1
    e = t.train_example(0)
    assert t.correct(e.answer, e)
    msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    pq.write_table(pa.table({"prompt": msgs, "answer": ["1", "2", "3", "4"]}), tmp_path / "d.parquet")
    t = get("task", "dataset")(seed=0, path=str(tmp_path / "d.parquet"), cache_dir=str(tmp_path / "cache"))
    e = t.train_example(0)
    assert e.prompt[0]["role"] == "user" and e.prompt[0]["content"].startswith("q")
    with pytest.raises(TypeError, match="prompt_column"):
        get("task", "dataset")(seed=0, path="x.jsonl", prompt_col="q")
