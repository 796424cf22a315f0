"""Search over steps (entropo.search): PUCT and MCTS-DPO backup by hand on a 2-level tree, beam top-k, best-of-N
argmax and exact token counts, MCTS-DPO pairs and visit-count label smoothing, determinism, the arith_chain task."""

import json
import math

import pytest
import torch

from entropo.search.mcts import (MCTS, Node, backup, label_smoothing, make_child, pair_records, preference_confidence,
                                 puct, select_child, step_prior, tree_pairs, write_pairs_jsonl)
from entropo.search.scorers import ArithStepScorer, LogprobScorer, OutcomeScorer
from entropo.search.steps import Partial, Step, StepSampler, root
from entropo.search.strategies import argmax_first, beam_search, best_of_n, budget_params, greedy
from entropo.types import Example

EX = Example(prompt="q", answer="1")


from search_toys import TREE, VALUES, ScriptedSampler, TableScorer  # noqa: E402

# ---- MCTS by hand ---------------------------------------------------------------------------------------------------


def two_level():
    sampler = ScriptedSampler(TREE)
    search = MCTS(sampler, TableScorer(VALUES), n_iters=1, n_actions=2, w_exp=1.0, gamma=1.0)
    return search, Node(root(EX, [0]))


def test_prior_and_puct_by_hand():
    assert step_prior([math.log(0.6)]) == pytest.approx(0.6)
    assert step_prior([-1.0, -1.0]) == pytest.approx(math.exp(-2.0 / 2 ** 1.25))
    assert step_prior([]) == 1.0
    parent = Node(root(EX, [0]), N=4)
    child = Node(root(EX, [0]), parent, prior=0.5, N=1, Q=0.3)
    assert puct(child, 2.0) == pytest.approx(0.3 + 2.0 * 0.5 * 2 / 2)


def test_mcts_iterations_by_hand():
    search, tree = two_level()
    search.iterate(tree)  # expands root, PUCT picks B (0.5 + .4 = .9 > .2 + .6), expands B, descends to B1 (-.8 > -1.2)
    a, b = tree.children
    assert (a.Q, a.N) == (pytest.approx(0.2), 0)
    assert (b.N, b.Q, b.V) == (2, pytest.approx(-1.0), pytest.approx(-1.5))
    assert [c.N for c in b.children] == [1, 0] and b.children[0].Q == pytest.approx(-1.5)
    assert (tree.N, tree.V) == (3, pytest.approx((0.2 - 2.0) / 3))
    search.iterate(tree)  # root N 4: PUCT A = .2 + .6·2 = 1.4 vs B = -1 + .4·2/3: expands A, descends to A1
    a1, a2 = a.children
    assert (a1.Q, a1.N, a2.Q, a2.N) == (pytest.approx(0.8), 1, pytest.approx(-1.2), 0)
    assert (a.N, a.Q, a.V) == (2, pytest.approx(0.0), pytest.approx(-0.2))
    assert (tree.N, tree.V) == (6, pytest.approx(-0.5))
    assert select_child(tree, 1.0) is a  # .0 + .6·sqrt(6)/3 > -1 + .4·sqrt(6)/3
    assert search.sampler.tokens == 6  # root, B and A expanded, two one-token steps each; terminals never expanded


def test_backup_visit_weighted():
    parent = Node(root(EX, [0]), value=0.0, N=3)
    kids = [Node(root(EX, [0]), parent, value=v, Q=q, N=n) for v, q, n in ((0.0, 1.0, 0), (0.0, -1.0, 3))]
    parent.children = kids
    leaf = make_child(kids[1], Partial(EX, (0,), (Step((9,), (0.0,), "eos"),), True), value=2.0)
    kids[1].children = [leaf]
    kids[1].V = 0.0
    backup([parent, kids[1], leaf])
    assert leaf.Q == pytest.approx(2.0) and leaf.N == 1  # r = 2 - 0, V = 0
    assert kids[1].V == pytest.approx(2.0) and kids[1].Q == pytest.approx(0.0 + 2.0) and kids[1].N == 4
    assert parent.V == pytest.approx((1 * 1.0 + 4 * 2.0) / 5) and parent.N == 4  # max(1, N) weights: 1 and 4


def test_mcts_search_moves_to_most_visited_and_pairs():
    search, _ = two_level()
    final, tree, path = search.search(EX, [0])
    assert final.finished and path[0] is tree and path[-1].partial is final
    first = path[1]
    assert first.N == max(c.N for c in tree.children)
    pairs = tree_pairs(path)
    assert pairs, "a 2-level tree with distinct sibling Q gives pairs"
    top = pairs[0]
    best = max(tree.children, key=lambda c: c.Q)
    worst = min(tree.children, key=lambda c: c.Q)
    assert top.chosen_ids[0] == best.partial.steps[-1].ids[0] and top.rejected_ids[0] == worst.partial.steps[-1].ids[0]
    assert top.label_smoothing == pytest.approx(label_smoothing(best.N, worst.N))
    assert top.prompt_ids == [0]


def test_pairs_and_label_smoothing_by_hand():
    assert label_smoothing(10, 2) == pytest.approx(1 - 1 / (1 + 2 / 10)) == pytest.approx(0.16667, abs=1e-4)
    assert label_smoothing(3, 3) == pytest.approx(0.5)
    assert label_smoothing(1, 5) == pytest.approx(0.5)  # capped
    assert preference_confidence(0, 2) == pytest.approx(1 / 3)  # max(1, N_chosen)
    # hand-built tree: root -> x (Q .9, N 10), y (Q -.3, N 2), z (Q .1, N 1); y has a single child (a chain)
    r = Node(root(EX, [7]))

    def kid(parent, tok, q, n):
        node = Node(Partial(EX, (7,), parent.partial.steps + (Step((tok,), (0.0,), "stop"),)), parent, Q=q, N=n)
        return node

    x, y, z = kid(r, 1, 0.9, 10), kid(r, 2, -0.3, 2), kid(r, 3, 0.1, 1)
    r.children = [x, y, z]
    y.children = [kid(y, 4, 0.0, 1)]
    x.children = [kid(x, 5, 0.5, 3), kid(x, 6, 0.5, 3)]  # equal Q: no pair
    pairs = tree_pairs([r, x])
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.chosen_ids, p.rejected_ids) == ([1], [2, 4])  # rejected runs on through y's single-child chain
    assert (p.n_chosen, p.n_rejected, p.q_chosen, p.q_rejected) == (10, 2, 0.9, -0.3)
    assert p.weight == pytest.approx(1 / 1.2) and p.label_smoothing == pytest.approx(1 - 1 / 1.2)
    # the official code also pairs equal-Q siblings, ordered by (Q, pi, r, v, N): pi = 1 on the moved-to child
    tied = tree_pairs([r, x], skip_ties=False)[1]
    assert (tied.chosen_ids, tied.rejected_ids, tied.label_smoothing) == ([5], [6], pytest.approx(0.5))


def test_pair_records_jsonl(tmp_path):
    from entropo.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    r = Node(root(EX, ids("1+2+3=")))
    good = Node(Partial(EX, r.partial.prompt_ids, (Step(tuple(ids("1+2=3\n")), (0.0,) * 6, "stop"),)), r, Q=1, N=3)
    bad = Node(Partial(EX, r.partial.prompt_ids, (Step(tuple(ids("1+2=4\n")), (0.0,) * 6, "stop"),)), r, Q=-1, N=1)
    r.children = [bad, good]
    recs = pair_records(tree_pairs([r]), tok, EX)
    path = write_pairs_jsonl(tmp_path / "pairs.jsonl", recs)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["prompt"] == "1+2+3=" and rows[0]["chosen"] == "1+2=3\n" and rows[0]["rejected"] == "1+2=4\n"
    assert rows[0]["label_smoothing"] == pytest.approx(1 - 1 / (1 + 1 / 3)) and rows[0]["chosen_ids"] == ids("1+2=3\n")


# ---- beam / best-of-N -----------------------------------------------------------------------------------------------

def test_beam_keeps_top_k_and_finished_beams_compete():
    # root -> c1 (finished, .7), c2 (.4); c2 -> d1 (.9), d2 (.2)  => final pool [d1 .9, c1 .7]
    script = {(): [(1, 0.5, True), (2, 0.5, False)], (2,): [(3, 0.5, True), (4, 0.5, True)]}
    sampler = ScriptedSampler(script)
    final, info = beam_search(EX, [0], sampler, TableScorer({1: 0.7, 2: 0.4, 3: 0.9, 4: 0.2}), width=2, expand=2)
    assert final.response_ids == [2, 3]
    assert info["scores"] == [[0.7, 0.4], [0.9, 0.7]]
    assert sampler.tokens == 4 and sampler.calls == 2  # the finished beam c1 is not expanded
    # width 1 keeps only the argmax at every depth: c1 (.7) beats c2 (.4) and is finished
    final, _ = beam_search(EX, [0], ScriptedSampler(script), TableScorer({1: 0.7, 2: 0.4, 3: 0.9, 4: 0.2}), width=1)
    assert final.response_ids == [1]


class FixedCompleter:
    """complete() returning given responses; counts their tokens."""

    def __init__(self, responses):
        self.responses, self.tokens = responses, 0

    def complete(self, partials, n, temperature=None):
        out = [Partial(EX, partials[0].prompt_ids, (Step(tuple(r), (0.0,) * len(r), "eos"),), True)
               for r in self.responses[:n]]
        self.tokens += sum(len(r) for r in self.responses[:n])
        return [out]


def test_best_of_n_argmax_first_on_ties():
    assert argmax_first([0.0, 1.0, 1.0, 0.5]) == 1
    sampler = FixedCompleter([[1], [2, 2], [3, 3, 3], [4]])
    final, info = best_of_n(EX, [0], sampler, TableScorer({1: 0.0, 2: 1.0, 3: 1.0, 4: 0.5}), n=4)
    assert final.response_ids == [2, 2] and info["chosen"] == 1 and sampler.tokens == 1 + 2 + 3 + 1
    with pytest.raises(ValueError, match="n must be"):
        best_of_n(EX, [0], sampler, TableScorer({}), n=0)
    assert budget_params("beam", 3) == {"width": 3} and budget_params("mcts", 2) == {"n_iters": 2}
    with pytest.raises(ValueError, match="unknown strategy"):
        budget_params("dfs", 1)


# ---- real sampler on the tiny model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    from entropo import registry
    from entropo.models import tiny
    from entropo.rollout.hf import HFEngine

    model, tok = tiny()
    model.eval()
    task = registry.get("task", "arith_chain")(seed=0, eval_size=4)
    return HFEngine(model, tok, chat_template=False), task


def sampler_for(engine, seed, **kw):
    return StepSampler(engine, torch.Generator().manual_seed(seed), **{"max_tokens": 12, "max_step_tokens": 6, **kw})


def test_sampler_token_accounting_and_prefix_ids(world):
    engine, task = world
    ex = task.eval_examples()[0]
    s = sampler_for(engine, 0)
    start = root(ex, engine.encode_prompt(ex.prompt))
    kids = s.next_steps([start], 3)[0]
    assert s.tokens == sum(k.num_tokens for k in kids)
    for k in kids:
        assert k.ids[:len(start.ids)] == start.ids and len(k.steps) == 1
        assert k.num_tokens <= 6
        assert k.steps[0].finish != "stop" or engine.tokenizer.decode(k.steps[0].ids)[-1] == "\n"
    before = s.tokens
    parent = next(k for k in kids if not k.finished) if any(not k.finished for k in kids) else None
    grand = s.next_steps([parent], 2)[0] if parent is not None else []
    assert s.tokens - before == sum(g.num_tokens - parent.num_tokens for g in grand)  # only the new steps count
    for g in grand:
        assert all(len(st.ids) == len(st.logprobs) for st in g.steps)
    before = s.tokens
    done = s.complete([start], 3)[0]
    assert s.tokens - before == sum(d.num_tokens for d in done)  # no max_steps cut here: every token is kept
    for d in done:
        assert d.finished and d.response_ids == [t for st in d.steps for t in st.ids]
        for st in d.steps[:-1]:  # every step but the last ends at the delimiter or the step budget
            assert st.finish in ("stop", "length")
            assert st.finish != "stop" or "\n" in engine.tokenizer.decode([st.ids[-1]])


def test_greedy_and_best_of_n_on_the_model(world):
    engine, task = world
    ex = task.eval_examples()[1]
    pid = engine.encode_prompt(ex.prompt)
    s = sampler_for(engine, 1)
    g, _ = greedy(ex, pid, s, None)
    g2, _ = greedy(ex, pid, sampler_for(engine, 99), None)
    assert g.response_ids == g2.response_ids and s.tokens == g.num_tokens  # greedy ignores the seed
    s = sampler_for(engine, 2)
    shown = []
    real_complete = s.complete
    s.complete = lambda parts, n, temperature=None: shown.append(real_complete(parts, n, temperature)) or shown[-1]
    final, info = best_of_n(ex, pid, s, LogprobScorer(), n=3)
    assert s.tokens == sum(c.num_tokens for c in shown[0][0])  # exactly the tokens of the 3 samples
    assert info["scores"][info["chosen"]] == max(info["scores"])
    assert final.logprobs() and sum(final.logprobs()) / len(final.logprobs()) == pytest.approx(max(info["scores"]))


def test_search_deterministic_by_seed(world):
    from entropo.search.runner import search_one

    engine, task = world
    ex = task.eval_examples()[2]
    kw = dict(scorer="outcome", sampler_params={"max_tokens": 12, "max_step_tokens": 6, "max_steps": 2},
              params={"n_iters": 1})
    a = search_one("mcts", ex, engine, task, seed=5, **kw)
    b = search_one("mcts", ex, engine, task, seed=5, **kw)
    assert (a["text"], a["tokens"]) == (b["text"], b["tokens"])
    assert [p.chosen_ids for p in a["info"]["pairs"]] == [p.chosen_ids for p in b["info"]["pairs"]]
    five, six = (search_one("best_of_n", ex, engine, task, seed=sd, params={"n": 3}, **{k: v for k, v in kw.items()
                                                                                    if k != "params"}) for sd in (5, 6))
    assert [five["text"], five["tokens"]] != [six["text"], six["tokens"]]  # another seed, other samples
    beam = search_one("beam", ex, engine, task, seed=5, scorer="rollout", scorer_params={"n": 2},
                      sampler_params={"max_tokens": 12, "max_step_tokens": 6, "max_steps": 2}, params={"width": 2})
    assert beam["tokens"] > beam["partial"].num_tokens  # rollouts of the scorer count in the cost


# ---- the task and the process checker -------------------------------------------------------------------------------

def test_arith_chain_task_and_step_checker():
    from entropo import registry
    from entropo.tasks.arith_chain import chain_lines

    task = registry.get("task", "arith_chain")(seed=0, eval_size=16)
    ex = task.eval_examples()[0]
    assert task.correct(ex.target, ex) and len(ex.target.split("\n")) == 3
    assert chain_lines([3, 5, 8, 2], ["+", "+", "+"]) == ["3+5=8", "8+8=16", "16+2=18"]
    assert chain_lines([9, 4, 1], ["-", "+"]) == ["9-4=5", "5+1=6"]
    held = {e.meta["expr"] for e in task.eval_examples()}
    assert all(task.train_example(i).meta["expr"] not in held for i in range(300))
    check = ArithStepScorer.check
    ops = ["+", "+", "+"]
    assert check("3+5=8\n8+8=16\n16+2=18", [3, 5, 8, 2], ops, True) == 1.0
    assert check("3+5=8\n8+8=1", [3, 5, 8, 2], ops, False) == 0.0  # the open last line is not judged yet
    assert check("3+5=9\n", [3, 5, 8, 2], ops, False) == -1.0
    assert check("3+5=8\n8+8=16", [3, 5, 8, 2], ops, True) == -1.0  # finished one step short
    with pytest.raises(ValueError, match="arith_steps"):
        ArithStepScorer(None).score([root(Example(prompt="x"), [1])])
    with pytest.raises(ValueError, match="ops must be"):
        registry.get("task", "arith_chain")(seed=0, ops="*")


def test_outcome_scorer_values():
    from entropo.models.tiny import tiny_tokenizer
    from entropo import registry

    tok = tiny_tokenizer()
    task = registry.get("task", "arith_chain")(seed=0, eval_size=2)
    ex = task.eval_examples()[0]
    ids = lambda s: tuple(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    right = Partial(ex, (1,), (Step(ids(ex.target), (0.0,) * len(ex.target), "eos"),), True)
    wrong = Partial(ex, (1,), (Step(ids("1+1=3"), (0.0,) * 5, "eos"),), True)
    open_ = Partial(ex, (1,), (Step(ids("1+1=2\n"), (0.0,) * 6, "stop"),), False)
    assert OutcomeScorer(task, tok).score([right, wrong, open_]) == [1.0, -1.0, 0.0]


def test_sft_on_ids_trains_the_response_only(world):
    import copy

    from entropo import ops
    from entropo.search.expert import sft_on_ids

    model = copy.deepcopy(world[0].model)  # the module's model stays untouched
    rows = [([5, 6, 7], [8, 9, 2]), ([5, 6], [10, 2])]

    def nll():
        ids = torch.tensor([rows[0][0] + rows[0][1]])
        lp, _ = ops.token_logprobs_and_entropy(model, ids, torch.ones_like(ids), with_entropy=False)
        return -lp[0, -3:].sum().item(), -lp[0, 1:3].sum().item()  # response tokens; prompt tokens 6, 7

    resp0, _ = nll()
    # lr 0, one row: the loss is exactly the mean NLL of the 3 response tokens (the prompt carries no loss)
    zero = sft_on_ids(model, rows[:1], steps=1, batch_size=1, lr=0.0, seed=0, pad_id=0)
    assert zero["loss"] == pytest.approx(resp0 / 3, rel=1e-4)
    out = sft_on_ids(model, rows, steps=12, batch_size=2, lr=3e-2, seed=0, pad_id=0)
    resp1, _ = nll()
    assert resp1 < 0.3 * resp0 and out["loss"] < zero["loss"]
    assert sft_on_ids(model, [], steps=5, batch_size=2, lr=1e-2, seed=0, pad_id=0)["time"] == 0.0


def test_run_search_writes_consistent_results(tmp_path, world, monkeypatch):
    from typer.testing import CliRunner

    from entropo import registry
    from entropo.cli import app
    from entropo.search import runner
    from entropo.search.runner import run_search

    monkeypatch.setattr(runner, "load_target", lambda *a, **k: world)  # the module's tiny model (no second build)
    res = run_search("tiny", tmp_path, task="arith_chain", strategies=["greedy", "best_of_n"], budgets=[2],
                     eval_size=2, max_tokens=8, console=lambda *_: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 0
    task = registry.get("task", "arith_chain")(seed=0, eval_size=2)
    for point in saved["points"]:
        rows = point["rows"]
        assert point["tokens"] == pytest.approx(sum(r["tokens"] for r in rows) / 2)
        assert point["accuracy"] == sum(task.correct(r["text"], e) for r, e in zip(rows, task.eval_examples())) / 2
        assert all(r["tokens"] <= 8 * point["params"].get("n", 1) for r in rows)  # the response budget bounds cost
    assert [p["strategy"] for p in res["points"]] == ["greedy", "best_of_n"]
    out = CliRunner().invoke(app, ["search", "tiny", "--task", "arith_chain", "--budget", "1,x", "--out",
                                   str(tmp_path / "bad")])
    assert out.exit_code == 2 and "--budget" in out.output
    with pytest.raises(ValueError, match="unknown strategy"):
        run_search("tiny", tmp_path / "x", task="arith_chain", strategies=["dfs"], console=lambda *_: None)
