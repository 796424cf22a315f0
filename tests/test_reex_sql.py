"""ReEx-SQL (arXiv 2505.12768): the shipped databases, the text_to_sql environment and task, the reex_sql reward,
execution-tree decoding with a result vote, and a few-step end-to-end run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from entropo import registry
from entropo.envs import sql_data
from entropo.envs.base import EnvFactory
from entropo.envs.text_to_sql import QueryResult, TextToSQL, execute, render_result, same_result, vote_key
from entropo.rewards.reex_sql import explore_bonus, reex_sql, well_formed
from entropo.rollout.exec_tree import VoteResult, sample_vote_decode, summarize, tree_vote_decode, vote
from entropo.sandbox import SQLiteSandbox
from entropo.types import EpisodeInfo, Example, Sample


@pytest.fixture(scope="module", autouse=True)
def sql_dir(tmp_path_factory):
    import os

    old = os.environ.get("ENTROPO_SQL_DIR")
    path = tmp_path_factory.mktemp("sqldb")
    os.environ["ENTROPO_SQL_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ENTROPO_SQL_DIR", None)
    else:
        os.environ["ENTROPO_SQL_DIR"] = old


def task(eval_size=64, **params):
    return registry.get("task", "text_to_sql")(seed=0, eval_size=eval_size, **params)


def company_example() -> Example:
    q = next(q for q in sql_data.questions("company_0") if q["template"] == "emp_in_city")
    return task()._example(q)


# ---- result-set comparison ---------------------------------------------------------------------------------------

def R(rows, cols=1, ok=True, truncated=False):
    return QueryResult(ok, [f"c{i}" for i in range(cols)], [tuple(r) for r in rows], truncated=truncated)


def test_result_sets_compare_as_multisets_unless_ordered():
    a, b = R([("x",), ("y",)]), R([("y",), ("x",)])
    assert same_result(a, b) and not same_result(a, b, ordered=True)
    assert same_result(a, R([("x",), ("y",)]), ordered=True)
    # duplicates count: {x, x, y} != {x, y, y} and != {x, y}
    assert not same_result(R([("x",), ("x",), ("y",)]), R([("x",), ("y",), ("y",)]))
    assert not same_result(R([("x",), ("x",)]), R([("x",)]))
    # NULL is its own value: not the string 'NULL', not 0; NULL equals NULL
    assert same_result(R([(None,)]), R([(None,)]))
    assert not same_result(R([(None,)]), R([("NULL",)])) and not same_result(R([(None,)]), R([(0,)]))
    # numbers by value, column names ignored, column count matters, failures and truncation never match
    assert same_result(R([(2, 1.5)], 2), R([(2.0, 1.5000000001)], 2))
    assert not same_result(R([(1, 2)], 2), R([(1,)], 1))
    assert not same_result(R([], ok=False), R([], ok=False))
    assert not same_result(R([("x",)], truncated=True), R([("x",)], truncated=True))
    assert vote_key(a) == vote_key(b) != vote_key(a, ordered=True) and vote_key(R([], ok=False)) == ""


def test_gold_order_by_detection_ignores_string_literals():
    assert sql_data.has_order_by("SELECT name FROM emp ORDER BY salary DESC LIMIT 2")
    assert not sql_data.has_order_by("SELECT name FROM emp WHERE city = 'order by'")


def test_sandbox_json_output_is_typed(sql_dir):
    db = sql_data.database_path("company_0")
    out = SQLiteSandbox(db, output="json").run("SELECT 1, 2.5, NULL, 'a|b'")
    assert out.ok and '"rows": [[1, 2.5, null, "a|b"]]' in out.stdout
    with pytest.raises(ValueError, match="output must be"):
        SQLiteSandbox(db, output="csv")


def test_execution_matches_real_queries_and_errors_come_back_as_text():
    db = sql_data.database_path("company_0")
    gold = "SELECT name FROM emp ORDER BY salary DESC LIMIT 3"
    assert same_result(execute(db, "select name from emp order by salary desc limit 3"), execute(db, gold), True)
    assert not same_result(execute(db, "SELECT name FROM emp ORDER BY salary LIMIT 3"), execute(db, gold), True)
    bad = execute(db, "SELECT nope FROM emp")
    assert not bad.ok and bad.error == "no such column: nope"
    assert render_result(bad) == "Error: no such column: nope"
    shown = render_result(execute(db, "SELECT id, name FROM emp ORDER BY id"))
    lines = shown.splitlines()
    assert lines[0] == "id | name" and len(lines) == 5 and lines[-1] == "(12 rows)"  # header, 3 rows, count


@pytest.mark.parametrize("sql, needle", [
    ("DROP TABLE emp", "DROP statement is not allowed"),
    ("DELETE FROM emp", "DELETE statement is not allowed"),
    ("ATTACH DATABASE '/tmp/x.db' AS x", "not allowed"),
    ("PRAGMA table_info(emp)", "not allowed"),
    ("SELECT 1; DROP TABLE emp", "one SQL statement"),
])
def test_writes_attach_pragma_are_refused(sql, needle):
    db = sql_data.database_path("company_0")
    result = execute(db, sql)
    assert not result.ok and needle in result.error
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM emp").fetchone() == (12,)  # still there


def test_long_and_long_running_queries_are_refused_or_timed_out():
    db = sql_data.database_path("company_0")
    long = execute(db, "SELECT " + " + ".join(["1"] * 400), max_sql_chars=1000)
    assert not long.ok and "longer than 1000 characters" in long.error
    slow = execute(db, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c",
                   timeout_s=0.5)
    # the in-query time limit, or the wall-clock kill 0.5 s later when a loaded machine is slower than that
    assert not slow.ok and slow.timed_out and ("time limit" in slow.error or "timeout" in slow.error)


# ---- data: deterministic, split by database --------------------------------------------------------------------

def test_generator_is_deterministic_and_split_by_database(tmp_path):
    a = sql_data.build_database("shop_2", tmp_path / "a.sqlite")
    b = sql_data.build_database("shop_2", tmp_path / "b.sqlite")
    dump = lambda p: list(sqlite3.connect(p).iterdump())  # noqa: E731
    assert dump(a) == dump(b)
    sql_data.tables.cache_clear()
    sql_data.questions.cache_clear()
    again = sql_data.all_questions()
    assert again == sql_data.all_questions() and len(again) >= 300
    train_dbs, eval_dbs = set(sql_data.database_ids("train")), set(sql_data.database_ids("eval"))
    assert train_dbs and eval_dbs and not train_dbs & eval_dbs
    assert {d.rpartition("_")[0] for d in eval_dbs} == set(sql_data.FAMILIES)
    t = task(eval_size=1000)
    train_ids = {t.train_example(i).meta["db_id"] for i in range(t.train_size())}
    assert train_ids == train_dbs
    assert {e.meta["db_id"] for e in t.eval_examples()} == eval_dbs
    train_q = {t.train_example(i).meta["qid"] for i in range(t.train_size())}
    assert not train_q & {e.meta["qid"] for e in t.eval_examples()}
    assert [e.prompt for e in task().eval_examples()] == [e.prompt for e in task().eval_examples()]
    with pytest.raises(ValueError, match="unknown database 'shop_9'"):
        sql_data.database_path("shop_9")


def test_every_gold_query_has_a_nonempty_answer():
    for db_id in sql_data.database_ids():
        conn = sqlite3.connect(sql_data.database_path(db_id))
        for q in sql_data.questions(db_id):
            assert conn.execute(q["sql"]).fetchall(), q


# ---- environment suite -----------------------------------------------------------------------------------------

def test_env_episode_intermediate_result_then_final_verdict():
    ex = company_example()
    env = TextToSQL()
    assert env.reset(ex, 0) == env.reset(ex, 7) == ex.prompt  # no randomness in the episode
    assert "emp(id, name, dept_id, salary, city)" in ex.prompt[0]["content"]
    step = env.step("look first <intermediate_sql>SELECT name, city FROM emp</intermediate_sql>")
    assert step.tool_call and not step.done and step.observation.startswith("<result>name | city\n")
    assert step.observation.endswith("(12 rows)</result>") and step.info["branch"] == "ok"
    err = env.step("<intermediate_sql>SELECT * FROM nope</intermediate_sql>")
    assert err.observation == "<result>Error: no such table: nope</result>" and err.info["tool_errors"] == 1
    assert err.info["sql_calls"] == 2 and err.info["sql_ok"] == 1
    final = env.step(f"<final_sql>{ex.meta['sql']}</final_sql>")
    assert final.done and final.correct is True and final.info["vote_key"]
    env.reset(ex, 0)
    wrong = env.step("<final_sql>SELECT name FROM emp</final_sql>")
    assert wrong.done and wrong.correct is False


@pytest.mark.parametrize("action", ["", "no tags at all", "<final_sql>SELECT 1", "<intermediate_sql>SELECT",
                                    "<final_sql></final_sql>", "<final_sql>DROP TABLE emp</final_sql>"])
def test_env_malformed_or_illegal_actions_end_wrong_without_crashing(action):
    env = TextToSQL()
    env.reset(company_example(), 0)
    step = env.step(action)
    assert step.done and step.correct is False


def test_env_needs_a_database_and_clear_param_errors():
    with pytest.raises(ValueError, match=r"meta\['db_id'\]"):
        TextToSQL().reset(Example(prompt="q"), 0)
    with pytest.raises(ValueError, match="final_tag must be a tag name"):
        TextToSQL(final_tag="<bad>")
    with pytest.raises(TypeError, match="unknown parameter 'tables'"):
        task(tables=3)


def test_demonstration_runs_the_gold_query_and_trains_only_assistant_tokens():
    from entropo.models.tiny import tiny_tokenizer
    from entropo.rollout.chat import ChatFormat
    from entropo.sft import demonstration_ids

    ex = company_example()
    demo = TextToSQL(demo_explore=1.0).demonstration(ex)
    gold = ex.meta["sql"]
    assert [m["role"] for m in demo] == ["assistant", "tool", "assistant"]
    assert demo[0]["content"] == f"<intermediate_sql>{gold}</intermediate_sql>"
    assert demo[1]["content"] == f"<result>{render_result(execute(sql_data.database_path('company_0'), gold))}</result>"
    assert TextToSQL(demo_explore=0.0).demonstration(ex) == demo[2:]
    tok = tiny_tokenizer()
    ids, mask = demonstration_ids(ChatFormat(tok), ex.prompt, demo, "tool", tok.eos_token_id)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == demo[0]["content"] + "<eos>" + demo[2]["content"] + "<eos>"


# ---- reward ------------------------------------------------------------------------------------------------------

def sample(actions, correct, ok_queries):
    ep = EpisodeInfo(num_turns=len(actions), actions=list(actions), env_correct=correct,
                     info={"sql_ok": ok_queries, "sql_calls": ok_queries})
    return Sample(completion=actions[-1], example=Example(prompt="q"), task=None, episode=ep)


GOOD = ["<intermediate_sql>SELECT 1</intermediate_sql>", "<final_sql>SELECT 1</final_sql>"]


def test_reex_reward_by_hand():
    # R = 0.1 (format) + 1.0 (exec) + 0.2 * (1 - 2^-k) (explore, correct only)
    assert reex_sql(sample(GOOD[1:], True, 0)) == pytest.approx(1.1)
    assert reex_sql(sample(GOOD, True, 1)) == pytest.approx(1.2)
    assert reex_sql(sample(GOOD, True, 2)) == pytest.approx(1.25)
    assert reex_sql(sample(GOOD, True, 3)) == pytest.approx(1.275)
    assert reex_sql(sample(GOOD, False, 3)) == pytest.approx(0.1)  # wrong: no exploration bonus, format only
    assert reex_sql(sample(["SELECT 1"], False, 0)) == 0.0
    assert reex_sql(sample(["<final_sql>SELECT 1</final_sql> trailing"], True, 0)) == pytest.approx(1.0)


def test_explore_bonus_is_zero_when_wrong_and_saturates():
    values = [explore_bonus(k) for k in range(12)]
    assert values[0] == 0.0 and all(b > a for a, b in zip(values, values[1:])) and values[-1] < 0.2
    gains = [b - a for a, b in zip(values, values[1:])]
    assert all(g2 == pytest.approx(g1 / 2) for g1, g2 in zip(gains, gains[1:]))  # each extra query earns half
    for k in range(6):
        assert reex_sql(sample(GOOD, False, k)) == reex_sql(sample(GOOD, False, 0))


def test_format_rule():
    assert well_formed(GOOD) and well_formed(["<think>plan</think><final_sql>SELECT 1</final_sql>"])
    assert not well_formed(["<final_sql>SELECT 1</final_sql>", "<final_sql>SELECT 1</final_sql>"])
    assert not well_formed(["<intermediate_sql>SELECT 1</intermediate_sql><final_sql>SELECT 1</final_sql>"])
    assert not well_formed(["<think>x<final_sql>SELECT 1</final_sql>"])
    assert not well_formed(["<final_sql> </final_sql>"]) and not well_formed([])


# ---- vote and tree decoding --------------------------------------------------------------------------------------

def test_vote_picks_the_majority_execution_result():
    leaves = [("a", False, "A"), ("b", True, "B1"), ("", False, "E"), ("b", True, "B2"), ("c", False, "C")]
    index, counts = vote(leaves)
    assert index == 1 and counts == {"a": 1, "b": 2, "c": 1}
    assert vote([("a", 0, ""), ("b", 0, ""), ("b", 0, ""), ("a", 0, "")])[0] == 0  # tie: earliest leaf
    assert vote([("", False, "E1"), ("", False, "E2")])[0] == 0 and vote([]) == (-1, {})


class _Engine:
    """Just what tree decoding needs from an engine when a turn sampler is given."""

    def __init__(self):
        from entropo.models.tiny import tiny_tokenizer
        from entropo.rollout.chat import ChatFormat

        self.tok = tiny_tokenizer()
        self.chat = ChatFormat(self.tok, eos_token_ids=[self.tok.eos_token_id])
        self.env_workers = 2


def scripted(tok, by_depth):
    """A turn sampler answering the k-th request at depth d (counted by '<result>' in the context) with
    by_depth[d][k % len]."""
    counters = {}

    def sample_turn(contexts, budget, stops):
        out = []
        for c in contexts:
            d = tok.decode(c).count("<result>")
            k = counters.get(d, 0)
            counters[d] = k + 1
            ids = tok(by_depth[d][k % len(by_depth[d])], add_special_tokens=False)["input_ids"]
            out.append((ids, torch.zeros(len(ids)), torch.zeros(len(ids)), "stop"))
        return out

    return sample_turn


def test_tree_prunes_failed_queries_and_votes_on_results():
    engine = _Engine()
    ex = company_example()
    gold = ex.meta["sql"]
    wrong = "SELECT name FROM emp"
    depth0 = ["<intermediate_sql>SELECT nope</intermediate_sql>", "<intermediate_sql>SELECT 1</intermediate_sql>",
              "<intermediate_sql>SELECT 2</intermediate_sql>"]
    # second level: 2 live nodes x 3 children; finals in request order: gold, wrong, gold | wrong, gold, bad query
    depth1 = [f"<final_sql>{gold}</final_sql>", f"<final_sql>{wrong}</final_sql>",
              f"<final_sql>{gold}</final_sql>", f"<final_sql>{wrong}</final_sql>",
              f"<final_sql>{gold.replace('city', 'town')}</final_sql>"]
    sampler = scripted(engine.tok, {0: depth0, 1: depth1})
    [res] = tree_vote_decode(engine, [ex], EnvFactory(TextToSQL, {"max_turns": 2}), branches=3,
                             sample_turn=sampler)
    assert res.pruned == 1 and res.leaves == 6  # the failing query's branch is cut; 2 nodes x 3 answers
    assert res.correct and gold in res.answer
    assert sorted(res.votes.values()) == [2, 3]  # gold x3, wrong x2; the failing final does not vote
    spent = sum(len(a) for a in depth0) + sum(len(a) for a in (depth1 * 2)[:6])
    assert res.tokens == spent  # replayed turns are not counted again


def test_tree_keeps_one_branch_when_all_fail_and_replays_exact_ids():
    engine = _Engine()
    ex = company_example()
    depth0 = ["<intermediate_sql>SELECT nope</intermediate_sql>"]
    depth1 = [f"<final_sql>{ex.meta['sql']}</final_sql>"]
    [res] = tree_vote_decode(engine, [ex], EnvFactory(TextToSQL, {"max_turns": 2}), branches=2,
                             sample_turn=scripted(engine.tok, {0: depth0, 1: depth1}))
    assert res.pruned == 1 and res.leaves == 2 and res.correct


def test_summarize_and_budget_matched_sampling_on_the_tiny_model():
    from entropo.models import tiny
    from entropo.rollout.episodes import EpisodeLimits
    from entropo.rollout.hf import HFEngine

    model, tok = tiny(max_position_embeddings=768)
    engine = HFEngine(model, tok)
    ex = company_example()
    limits = EpisodeLimits(max_turns=2, max_new_tokens=12, max_episode_tokens=40)
    env = EnvFactory(TextToSQL, {"max_turns": 2})
    tree = tree_vote_decode(engine, [ex], env, branches=2, limits=limits, generator=torch.Generator().manual_seed(1))
    paths = sample_vote_decode(engine, [ex], env, paths=4, token_budgets=[t.tokens for t in tree], limits=limits,
                               generator=torch.Generator().manual_seed(1))
    assert 1 <= paths[0].tokens <= max(tree[0].tokens, 12)  # at least one path, never over the tree's budget
    assert summarize([VoteResult("", True, 10, 2), VoteResult("", False, 20, 0)]) == {
        "accuracy": 0.5, "tokens_mean": 15.0, "leaves_mean": 1.0}


# ---- end to end --------------------------------------------------------------------------------------------------

def test_recipe_few_steps_end_to_end(tmp_path):
    from entropo.api import load_recipe
    from entropo.logging import read_metrics
    from entropo.trainer import train

    recipe = load_recipe(Path(__file__).parent.parent / "entropo" / "recipes" / "reex_sql.yaml", [
        "warmup.steps=5", "warmup.batch_size=4", "train.steps=2", "rollout.prompts_per_step=2", "rollout.n=4",
        "rollout.max_new_tokens=32", "rollout.max_episode_tokens=96", "task.eval_size=2", "eval.every=0",
        "checkpoint.every=0", "logging.progress=false", "logging.plots=false", "logging.tensorboard=false",
        "task.params={chat: true, families: [company]}"])
    summary = train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)
    rows = [r for r in read_metrics(tmp_path / "run") if not r.get("final")]
    assert summary["steps"] == 2 and len(rows) == 2 and "tool_calls_mean" in summary["eval_end"]
    for r in rows:  # R = format (0 or 0.1) + exec (accuracy) + explore (<= 0.2, only when correct)
        assert r["episode/env_errors"] == 0 and r["reward/term/reex_sql"] == pytest.approx(r["reward/mean"])
        assert r["accuracy"] <= r["reward/mean"] + 1e-6 <= 1.2 * r["accuracy"] + 0.1 + 2e-6


def test_episode_ids_match_the_chat_template_and_results_are_never_trained():
    from entropo.rollout.episodes import EpisodeLimits, run_episodes

    engine = _Engine()
    ex = company_example()
    turns = {0: ["<intermediate_sql>SELECT city FROM emp</intermediate_sql>"],
             1: [f"<final_sql>{ex.meta['sql']}</final_sql>"]}
    [ep] = run_episodes([TextToSQL()], [ex], [0], engine.chat, scripted(engine.tok, turns),
                        EpisodeLimits(max_turns=3, max_new_tokens=200))
    assert ep.info.template_mismatch == 0 and ep.info.env_correct is True and ep.info.tool_calls == 1
    trained = engine.tok.decode([i for i, p in zip(ep.ids, ep.policy) if p])
    assert trained == turns[0][0] + turns[1][0] and "<result>" not in trained
    assert "<result>city\n" in engine.tok.decode(ep.ids)
