"""ReSeek (arXiv 2510.00568): the reseek_judge reward tables (regex and reranker variants), the anti-spam rule, the
search_corpus environment (seeded world, BM25 retrieval, the judge-then-research rule, malformed actions, the
held-out split by entity), an episode played through the real loop and a few-step end-to-end run."""

import json
import sys
import types

import pytest
import torch

from entropo.envs.base import EnvFactory
from entropo.envs.search import (
    BAD_JUDGE,
    EMPTY_QUERY,
    JUDGE_FIRST,
    NO_ACTION,
    NOTHING_TO_JUDGE,
    SEARCH_AGAIN,
    SearchCorpus,
    alias_in,
    exact_match,
    search_world,
)
from entropo.rewards.reseek import reseek_judge, reseek_judge_agree, reseek_judge_count
from entropo.tasks.search_qa import search_qa
from entropo.types import EpisodeInfo, Example, Sample

SMALL = dict(persons=20, places=8, rivers=4)
GOLD = ["Dranmoor", "Dranmoor City"]
USEFUL = "Quorvel was born in Dranmoor."
USELESS = "Quorvel lives in Tarnwick."


def sample_of(pairs, answer, actions=None, transcript=""):
    """A Sample whose episode record holds ``pairs`` [(information, verdict)] and the accepted ``answer``."""
    info = {"judge_pairs": [{"information": i, "verdict": v} for i, v in pairs], "answer": answer}
    episode = EpisodeInfo(num_turns=2, actions=actions or ["<search>q</search>", f"<answer>{answer}</answer>"],
                          info=info)
    example = Example(prompt="Where was Quorvel born?", answer=GOLD[0], meta={"aliases": GOLD})
    return Sample(completion=(actions or [""])[-1], example=example, task=None, episode=episode, transcript=transcript)


# ---- the regex variant: 8 cases (verdict x oracle x answer correct) ---------------------------------------------------

@pytest.mark.parametrize("verdict,useful,correct,expected", [
    ("Yes", True, True, 1.0 + 0.4),    # Yes and correct: +(0.3 + 0.1), oracle not consulted
    ("Yes", False, True, 1.0 + 0.4),
    ("Yes", True, False, 0.0 + 0.3),   # agrees with the oracle
    ("Yes", False, False, 0.0 - 0.6),  # wrong Yes
    ("No", False, True, 1.0 + 0.4),    # agrees (+0.3) and correct (+0.1)
    ("No", False, False, 0.0 + 0.3),
    ("No", True, True, 1.0 - 0.3),     # wrong No
    ("No", True, False, 0.0 - 0.3),
])
def test_regex_table(verdict, useful, correct, expected):
    s = sample_of([(USEFUL if useful else USELESS, verdict)], "Dranmoor" if correct else "Tarnwick")
    assert reseek_judge(s) == pytest.approx(expected)
    assert reseek_judge(s, process=False) == pytest.approx(1.0 if correct else 0.0)  # the EM-only baseline


def test_regex_pairs_are_summed_and_aliases_count():
    # a No on the wrong fact, then a Yes on the right one, answered with an alias: 1 + 0.4 + 0.4
    s = sample_of([(USELESS, "No"), (USEFUL, "Yes")], "dranmoor city.")
    assert reseek_judge(s) == pytest.approx(1.8)
    assert (reseek_judge_agree(s), reseek_judge_count(s)) == (2.0, 2.0)
    # a Yes on the wrong fact and a wrong answer: -0.6, then a No on the right fact: -0.3
    s = sample_of([(USELESS, "Yes"), (USEFUL, "No")], "Tarnwick")
    assert reseek_judge(s) == pytest.approx(-0.9)
    assert (reseek_judge_agree(s), reseek_judge_count(s)) == (0.0, 2.0)
    # custom constants are used
    assert reseek_judge(s, wrong_yes=-1.0, wrong_no=-0.5) == pytest.approx(-1.5)
    # pairs with empty information are skipped (as in the official code)
    assert reseek_judge(sample_of([("", "Yes"), (USEFUL, "Yes")], "Dranmoor")) == pytest.approx(1.4)


def test_no_answer_gets_no_process_reward():
    pairs = [(USELESS, "No"), (USEFUL, "Yes")]  # would earn +0.3 +0.3 with an answer
    assert reseek_judge(sample_of(pairs, None)) == 0.0
    assert reseek_judge(sample_of(pairs, "")) == 0.0  # an empty answer is no answer for the process reward
    assert reseek_judge(sample_of([(USELESS, "Yes")], None)) == 0.0  # nor a penalty


def test_anti_spam_divides_a_correct_answer_by_four():
    spam = ["<answer>x</answer>" * 10, "<search>q</search>", "<answer>Dranmoor</answer>"]  # 11 opening tags
    assert reseek_judge(sample_of([], "Dranmoor", actions=spam)) == pytest.approx(0.25)
    assert reseek_judge(sample_of([(USEFUL, "Yes")], "Dranmoor", actions=spam)) == pytest.approx(0.25 + 0.4)
    closing = ["</answer>" * 11, "<answer>Dranmoor</answer>"]  # closing tags count too
    assert reseek_judge(sample_of([], "Dranmoor", actions=closing)) == pytest.approx(0.25)
    ten = ["<answer>x</answer>" * 9, "<answer>Dranmoor</answer>"]  # exactly 10: no division
    assert reseek_judge(sample_of([], "Dranmoor", actions=ten)) == pytest.approx(1.0)
    assert reseek_judge(sample_of([], "Tarnwick", actions=spam)) == 0.0  # a wrong answer earns format_score


def test_transcript_fallback_uses_the_official_pairing():
    text = ("<search>Quorvel</search><information>Quorvel lives in Tarnwick.</information>"
            "<judge>No</judge><search>Quorvel born</search><information>Quorvel was born in Dranmoor.</information>"
            "<judge>Yes</judge><answer>Dranmoor</answer>")
    example = Example(prompt="Where was Quorvel born?", answer="Dranmoor", meta={"aliases": GOLD})
    s = Sample(completion="<judge>Yes</judge><answer>Dranmoor</answer>", example=example, task=None, transcript=text)
    assert reseek_judge(s) == pytest.approx(1.8)


# ---- the reranker variant, with a fake scorer --------------------------------------------------------------------------

@pytest.fixture
def fake_scorer(monkeypatch):
    calls = []

    def score(gold, information):
        calls.append((gold, information))
        return 0.9 if "SIMILAR" in information else 0.1

    module = types.ModuleType("reseek_fake_scorer")
    module.score = score
    monkeypatch.setitem(sys.modules, "reseek_fake_scorer", module)
    from entropo.rewards.reseek import load_scorer
    load_scorer.cache_clear()
    yield calls
    load_scorer.cache_clear()


@pytest.mark.parametrize("verdict,similar,correct,expected", [
    ("Yes", True, True, 1.0 + 0.1),     # Yes and correct: pos, the scorer is not called
    ("Yes", False, True, 1.0 + 0.1),
    ("Yes", True, False, -0.025),       # neg * 0.5
    ("Yes", False, False, -0.05),       # neg
    ("No", True, True, 1.0 - 0.05),     # neg
    ("No", True, False, -0.05),
    ("No", False, True, 1.0 + 0.02),    # pos * 0.2
    ("No", False, False, 0.02),
])
def test_reranker_table(fake_scorer, verdict, similar, correct, expected):
    info = "SIMILAR text" if similar else "other text"
    s = sample_of([(info, verdict)], "Dranmoor" if correct else "Tarnwick")
    assert reseek_judge(s, variant="reranker", scorer="reseek_fake_scorer:score") == pytest.approx(expected)
    assert fake_scorer == ([] if verdict == "Yes" and correct else [("Dranmoor", info)])  # first gold vs information


def test_reranker_threshold_and_missing_scorer(fake_scorer):
    s = sample_of([("SIMILAR text", "No")], "Tarnwick")
    assert reseek_judge(s, variant="reranker", scorer="reseek_fake_scorer:score", threshold=0.95) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="needs params.scorer"):
        reseek_judge(s, variant="reranker")
    with pytest.raises(ValueError, match="no module named .no_such_module_xyz."):
        reseek_judge(s, variant="reranker", scorer="no_such_module_xyz:score")
    with pytest.raises(ValueError, match="variant must be"):
        reseek_judge(s, variant="embedding")


# ---- the world, the index and the task ---------------------------------------------------------------------------------

def test_world_is_deterministic_and_names_never_nest():
    a, b = search_world(corpus_seed=3, **SMALL), search_world(corpus_seed=3, **SMALL)
    assert a.documents == b.documents
    assert search_world(corpus_seed=4, **SMALL).documents != a.documents
    names = sorted(a.entities["train"] | a.entities["eval"])
    assert not [(x, y) for x in names for y in names if x != y and x.lower() in y.lower()]
    t1, t2 = search_qa(seed=1, eval_size=8, **SMALL), search_qa(seed=1, eval_size=8, **SMALL)
    assert [e.prompt for e in t1.eval_examples()] == [e.prompt for e in t2.eval_examples()]
    assert [t1.train_example(i).prompt for i in range(10)] == [t2.train_example(i).prompt for i in range(10)]


def test_bm25_retrieves_the_document_of_the_queried_entity_and_fact():
    world = search_world(**SMALL)
    for q in world.train_questions + world.eval_questions:
        top = world.retrieve(q.queries[-1], 1)
        assert len(top) == 1 and alias_in(top[0], q.aliases), (q.queries, top)
        assert q.queries[-1].split()[0] in top[0]  # about the queried entity
    person = next(q.subject for q in world.train_questions if q.kind == "born")
    assert all(person in doc for doc in world.retrieve(person, 2))  # a bare name finds that person's facts
    assert world.retrieve("the of and", 3) == [] and world.retrieve("zzzqqq", 3) == []


def test_held_out_split_is_disjoint_by_entity():
    task = search_qa(seed=0, eval_size=14, **SMALL)
    env = SearchCorpus(top_k=1)
    held_out = task.world.entities["eval"]
    assert held_out and not held_out & task.world.entities["train"]
    assert {e.meta["subject"] for e in task.eval_examples()} <= held_out
    for i in range(task.train_size()):
        ex = task.train_example(i)
        text = json.dumps([ex.prompt, ex.answer, ex.meta["aliases"], env.demonstration(ex)])
        assert not [name for name in held_out if name in text], ex.prompt
    with pytest.raises(ValueError, match="eval_size"):
        search_qa(seed=0, eval_size=999, **SMALL)
    with pytest.raises(TypeError, match="unknown parameter"):
        search_qa(seed=0, persns=3)


def test_task_verifier_uses_the_aliases():
    task = search_qa(seed=0, eval_size=4, **SMALL)
    ex = next(task.train_example(i) for i in range(task.train_size()) if task.train_example(i).meta["kind"] == "born")
    assert task.correct(f"<judge>Yes</judge><answer>{ex.answer} City</answer>", ex)
    assert not task.correct(ex.answer, ex)  # no answer tag
    assert exact_match(f" the {ex.answer.upper()}! ", [ex.answer]) and not exact_match(None, [ex.answer])


# ---- the environment ---------------------------------------------------------------------------------------------------

def _born_question(task):
    return next(task.train_example(i) for i in range(task.train_size()) if task.train_example(i).meta["kind"] == "born")


def test_judge_then_research_rule():
    task = search_qa(seed=0, eval_size=4, **SMALL)
    ex = _born_question(task)
    person, place = ex.meta["subject"], ex.answer
    env = SearchCorpus(top_k=1)
    assert env.reset(ex, seed=0) == ex.prompt
    r = env.step(f"<search>{person} lives</search>")
    assert r.tool_call and not r.done and r.observation.startswith("<information>") and place not in r.observation
    r = env.step(f"<answer>{place}</answer>")  # no judge: refused
    assert r.observation == JUDGE_FIRST and not r.done and r.correct is False
    r = env.step(f"<judge>No</judge><answer>{place}</answer>")  # judged No, then answered: refused
    assert r.observation == SEARCH_AGAIN and not r.done
    assert [p["verdict"] for p in r.info["judge_pairs"]] == ["No"]
    r = env.step(f"<answer>{place}</answer>")  # still has to search first
    assert r.observation == SEARCH_AGAIN and not r.done
    r = env.step(f"<search>{person} born</search>")
    assert place in r.observation
    r = env.step(f"<judge>Yes</judge><answer>{place}</answer>")
    assert r.done and r.correct is True
    pairs = r.info["judge_pairs"]
    assert [(p["verdict"], p["turn"], p["search_turn"]) for p in pairs] == [("No", 2, 0), ("Yes", 5, 4)]
    assert place in pairs[1]["information"] and place not in pairs[0]["information"]
    assert r.info["answer"] == place and r.info["searches"] == 2 and r.info["format_errors"] == 3
    # the reward reads the record: No on useless (+0.4), Yes with a correct answer (+0.4), EM 1
    s = Sample(completion="", example=ex, task=task, episode=EpisodeInfo(info=r.info, actions=[]))
    assert reseek_judge(s) == pytest.approx(1.8)


def test_judge_only_turn_and_optional_judging():
    task = search_qa(seed=0, eval_size=4, **SMALL)
    ex = _born_question(task)
    env = SearchCorpus(top_k=1)
    env.reset(ex, 0)
    env.step(f"<search>{ex.meta['subject']} born</search>")
    r = env.step("<judge>Yes</judge>")
    assert not r.done and "<search>" in r.observation and r.info["judge_pairs"][0]["verdict"] == "Yes"
    assert env.step(f"<answer>{ex.answer}</answer>").correct is True
    free = SearchCorpus(top_k=1, require_judge=False)
    free.reset(ex, 0)
    free.step(f"<search>{ex.meta['subject']} lives</search>")
    r = free.step("<answer>nowhere</answer>")
    assert r.done and r.correct is False and r.info["judge_pairs"] == []


@pytest.mark.parametrize("actions,observation", [
    (["hello"], NO_ACTION),
    (["<search>   </search>"], EMPTY_QUERY),
    (["<judge>Yes</judge><search>x</search>"], NOTHING_TO_JUDGE),
    (["<search>x born</search>", "<judge>maybe</judge><search>y</search>"], BAD_JUDGE),
    (["<search>x born</search>", "<search>y</search><judge>No</judge>"], JUDGE_FIRST),  # the judge must come first
    (["<search>x born</search>", "<judge>Yes</judge>blah"], "Now <search>query</search> or <answer>text</answer>."),
])
def test_malformed_actions_get_a_clear_observation(actions, observation):
    task = search_qa(seed=0, eval_size=4, **SMALL)
    env = SearchCorpus(top_k=1)
    env.reset(_born_question(task), 0)
    for action in actions:
        r = env.step(action)
    assert r.observation == observation and not r.done and r.correct is False


def test_reset_is_deterministic_and_bad_params_are_clear():
    task = search_qa(seed=0, eval_size=4, **SMALL)
    ex = _born_question(task)
    runs = []
    for seed in (0, 0, 7):
        env = SearchCorpus(top_k=2)
        runs.append([env.reset(ex, seed), env.step(f"<search>{ex.meta['subject']}</search>").observation])
    assert runs[0] == runs[1] == runs[2]
    with pytest.raises(ValueError, match="top_k"):
        SearchCorpus(top_k=0)
    with pytest.raises(ValueError, match="meta\\['corpus'\\]"):
        SearchCorpus().reset(Example(prompt="q?"), 0)


def test_demonstrations_answer_every_question_and_judge_like_the_oracle():
    task = search_qa(seed=0, eval_size=4, **SMALL)
    env = SearchCorpus(top_k=1, demo_detour=0.5)
    verdicts = []
    for i in range(task.train_size()):
        ex = task.train_example(i)
        demo = env.demonstration(ex)
        assert demo is not None and demo[-1]["content"].endswith(f"<answer>{ex.answer}</answer>")
        env.reset(ex, 0)  # replaying the demonstration in the environment reproduces its observations
        for action, reply in zip(demo[0::2], demo[1::2] + [None]):
            r = env.step(action["content"])
            assert (r.observation == reply["content"]) if reply else (r.done and r.correct)
        verdicts += [p["verdict"] for p in r.info["judge_pairs"]]
        s = Sample(completion="", example=ex, task=task, episode=EpisodeInfo(info=r.info, actions=[]))
        assert reseek_judge_agree(s) == reseek_judge_count(s)  # the demonstration's verdicts are the oracle's
    assert verdicts.count("No") > 0 and verdicts.count("Yes") == task.train_size()


# ---- through the episode loop and the trainer --------------------------------------------------------------------------

def test_scripted_episode_through_the_loop_masks_information_and_feeds_the_reward():
    from entropo.models import tiny
    from entropo.rollout import HFEngine

    task = search_qa(seed=0, eval_size=4, **SMALL)
    ex = _born_question(task)
    model, tok = tiny()
    engine = HFEngine(model, tok)
    script = [f"<search>{ex.meta['subject']} lives</search>", f"<judge>No</judge><search>{ex.meta['subject']} born"
              f"</search>", f"<judge>Yes</judge><answer>{ex.answer}</answer>"]
    turn = {"i": 0}

    def forced(contexts, temperature, top_p, budget, stops, generator, device):
        ids = tok(script[turn["i"]], add_special_tokens=False)["input_ids"]
        turn["i"] += 1
        zeros = [torch.zeros(len(ids))] * len(contexts)
        return [ids] * len(contexts), zeros, zeros, ["stop"] * len(contexts)

    engine._generate_micro_batch = forced
    out = engine.generate([ex], 1, max_new_tokens=64, environment=EnvFactory(SearchCorpus, {"top_k": 1}))
    episode = out.episodes[0]
    assert episode.num_turns == 3 and episode.tool_calls == 2 and episode.env_correct is True
    assert [p["verdict"] for p in episode.info["judge_pairs"]] == ["No", "Yes"]
    # the information text is in the trajectory but never a policy token
    ids, mask = out.input_ids[0].tolist(), out.response_mask[0].tolist()
    info_ids = tok("<information>", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(ids)) if ids[i:i + len(info_ids)] == info_ids]
    assert len(starts) == 2 and all(mask[i] == 0 for s in starts for i in range(s, s + len(info_ids)))
    s = Sample(completion=out.completions[0], example=ex, task=task, episode=episode, transcript=out.transcripts[0])
    assert reseek_judge(s) == pytest.approx(1.0 + 0.4 + 0.4)


def test_few_step_end_to_end_train(tmp_path):
    from entropo.config import load_recipe
    from entropo.trainer import train

    recipe = load_recipe("entropo/recipes/reseek.yaml", [
        "warmup.steps=2", "warmup.batch_size=4", "train.steps=2", "rollout.prompts_per_step=2", "rollout.n=2",
        "rollout.max_new_tokens=24", "rollout.max_episode_tokens=120", "task.eval_size=2", "eval.every=0",
        "checkpoint.every=0", "logging.progress=false", "logging.plots=false", "logging.tensorboard=false",
        "task.params={persons: 20, places: 8, rivers: 4}", f"logging.output_dir={tmp_path}",
        "train.micro_batch_size=4"])
    train(recipe, console=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "reseek" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if not r.get("final")]
    assert len(steps) == 2 and rows[-1].get("final")
    for r in steps:  # the composite reward is reseek_judge alone (the judge counters have weight 0)
        assert r["reward/mean"] == pytest.approx(r["reward/term/reseek_judge"], abs=1e-6)
        assert r["reward/term/reseek_judge_agree"] <= r["reward/term/reseek_judge_count"]
        assert r["episode/env_errors"] == 0 and r["reward/failures"] == 0
