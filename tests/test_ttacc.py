"""The shared held-out evaluator of benchmarks/time_to_accuracy.py (benchmarks/_tta_eval.py) and the script's
bookkeeping (snapshot marks, the target verdict), on hand-checkable cases with the tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _tta_eval as E  # noqa: E402
import time_to_accuracy as TTA  # noqa: E402

from entropo import registry  # noqa: E402
from entropo.models import load  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load("tiny")


def arith_task(eval_size=8):
    return registry.get("task", "arithmetic")(seed=0, eval_size=eval_size, digits=1, num_terms=2, ops="+",
                                              chat=False, template="{expr_compact}=")


def test_accuracy_of_known_completions():
    task = arith_task()
    ex = task.eval_examples()[:4]
    answers = [e.answer for e in ex]
    completions = [answers[0], f"{ex[1].meta['expr']} = {answers[1]}", "no number", str(int(answers[3]) + 1)]
    acc, marks = E.accuracy(task, ex, completions)
    assert marks == [1, 1, 0, 0]  # the last number counts: a restated sum is right, a wrong/absent number is not
    assert acc == 0.5
    with pytest.raises(ValueError, match="3 completions"):
        E.accuracy(task, ex, completions[:3])


class ScriptedModel(torch.nn.Module):
    """A stand-in whose greedy ``generate`` appends fixed text (then EOS and padding) to every prompt row."""

    def __init__(self, tokenizer, replies):
        super().__init__()
        self.tok, self.replies, self.calls = tokenizer, replies, []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        assert kw["do_sample"] is False
        self.calls.append((input_ids.clone(), attention_mask.clone()))
        start = sum(len(c[0]) for c in self.calls[:-1])
        rows = []
        for i in range(input_ids.shape[0]):
            ids = self.tok(self.replies[start + i], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            ids = (ids + [self.tok.pad_token_id] * max_new_tokens)[:max_new_tokens]
            rows.append(input_ids[i].tolist() + ids)
        return torch.tensor(rows)


def test_evaluator_on_scripted_completions(tiny):
    _, tok = tiny
    task = arith_task()
    ex = task.eval_examples()[:5]
    replies = [ex[0].answer, "9", ex[2].answer + "5", ex[3].answer, ex[4].answer]  # right, ?, wrong, right, right
    expected = [1, int(ex[1].answer == "9"), 0, 1, 1]
    model = ScriptedModel(tok, replies)
    res = E.evaluate_weights(model, tok, task, ex, max_new_tokens=6, batch_size=2)
    assert res["correct"] == expected and res["accuracy"] == pytest.approx(sum(expected) / 5)
    # left padding: every batch's rows end with their prompt; the mask marks exactly the prompt tokens
    for ids, mask in model.calls:
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            assert mask[r, -n:].all() and not mask[r, :-n].any()
    assert [c.shape[0] for c, _ in model.calls] == [2, 2, 1]
    # the text after EOS (padding) is cut, so the completions are exactly the replies
    assert E.greedy_completions(ScriptedModel(tok, replies), tok, ex, 6, batch_size=5) == replies


def test_greedy_on_tiny_is_deterministic_and_batch_independent(tiny):
    model, tok = tiny
    task = arith_task()
    ex = task.eval_examples()[:3]
    a = E.greedy_completions(model, tok, ex, max_new_tokens=3, batch_size=3)
    b = E.greedy_completions(model, tok, ex, max_new_tokens=3, batch_size=1)  # no padding at all
    assert a == b
    res = E.evaluate_weights(model, tok, task, ex, max_new_tokens=3)
    assert res["accuracy"] == E.accuracy(task, ex, a)[0]


def test_prompt_ids_plain_text_has_no_special_tokens(tiny):
    _, tok = tiny
    assert E.prompt_ids(tok, "3+5=") == tok("3+5=", add_special_tokens=False)["input_ids"]


def test_snapshot_marks_and_clock(tmp_path):
    class FakeClock(TTA.Clock):
        def __init__(self):
            super().__init__()
            self.t = 0.0

        def now(self):
            return self.t - self.excluded

    clock = FakeClock()
    snaps = TTA.Snapshotter(tmp_path, budget_s=30.0, marks=3, clock=clock)  # marks at 10, 20, 30 s
    model = torch.nn.Linear(2, 2)
    stops = []
    for t in (4, 9, 12, 13, 25, 31):  # one step ends at each of these clock times
        clock.t = t + clock.excluded  # the fake clock's wall time keeps excluded seconds out
        stops.append(snaps.after_step(model, {"rows": 1, "optimizer_steps": 1}))
    assert [s["mark"] for s in snaps.saved] == [10.0, 20.0, 30.0]
    assert [s["t"] for s in snaps.saved] == [12, 25, 31]  # the first step ending past each mark
    assert [s["step"] for s in snaps.saved] == [3, 5, 6]
    assert stops == [False, False, False, False, False, True]
    assert torch.load(snaps.saved[0]["path"])["weight"].equal(model.weight)


def test_verdict_hand_cases():
    def curve(*pts):
        return [{"t": t, "accuracy": a} for t, a in pts]

    trl = curve((0, 0.1), (100, 0.2), (200, 0.4))
    v = TTA.verdict({"trl": trl, "entropo": curve((0, 0.1), (50, 0.3), (100, 0.45), (200, 0.6))}, 0.1)
    assert v["entropo_time_to_trl_final_s"] == 100 and v["ratio"] == 0.5 and v["met"] is True
    v = TTA.verdict({"trl": trl, "entropo": curve((0, 0.1), (60, 0.2), (120, 0.4), (200, 0.5))}, 0.1)
    assert v["ratio"] == 0.6 and v["met"] is False
    v = TTA.verdict({"trl": trl, "entropo": curve((0, 0.1), (200, 0.3))}, 0.1)
    assert v["ratio"] is None and v["met"] is False
    v = TTA.verdict({"trl": curve((0, 0.1), (200, 0.1)), "entropo": curve((0, 0.1), (200, 0.0))}, 0.1)
    assert v["ratio"] == 0 and v["trl_improved_over_base"] is False  # met only trivially: flagged
