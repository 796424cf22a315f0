"""IGPO (Information Gain-based Policy Optimization, arXiv 2510.14967) and its multihop_lookup environment."""

import math

import pytest
import torch

from entropo import registry
from entropo.algorithms.igpo import (
    IGPO,
    broadcast_turns,
    discounted,
    info_gains,
    normalize_turn_rewards,
    probe_batch,
    turn_advantages,
)
from entropo.batch import Batch
from entropo.envs.lookup import MultihopLookup, all_names
from entropo.types import Example

SPEC_IG = [[0.20, -0.05], [0.10]]
SPEC_OUTCOME = [1.0, 0.0]


def rounded(rows, digits=3):
    return [[round(v, digits) for v in row] for row in rows]


# ---- hand values (spec A1 (f)) ---------------------------------------------------------------------------------------

def test_joint_normalization_and_advantages_by_hand():
    normalized, adv = turn_advantages(SPEC_IG, SPEC_OUTCOME, [7, 7], mode="joint", gamma=1.0)
    assert rounded(normalized) == [[-0.130, -0.780, 1.950], [-0.390, -0.650]]
    assert rounded(adv) == [[1.040, 1.170, 1.950], [-1.040, -0.650]]


def test_separate_normalization_by_hand():
    normalized, adv = turn_advantages(SPEC_IG, SPEC_OUTCOME, [0, 0], mode="separate", gamma=1.0)
    # IG z-scores [1.136, -1.298, 0.162] (pooled over both rows), outcome z-scores [1.0, -1.0]
    assert rounded(normalized) == [[1.136, -1.298, 1.0], [0.162, -1.0]]
    assert rounded(adv) == [[0.838, -0.298, 1.0], [-0.838, -1.0]]


def test_discount_and_groups_are_independent():
    assert discounted([1.0, 2.0, 4.0], 0.5) == [1.0 + 0.5 * 2.0 + 0.25 * 4.0, 2.0 + 0.5 * 4.0, 4.0]
    # two groups: each normalized with its own statistics; a group of one has std 1 and mean = its value
    normalized = normalize_turn_rewards([[0.2], [0.4], []], [1.0, 0.0, 3.0], [0, 0, 1], mode="joint")
    pool = [0.2, 1.0, 0.4, 0.0]
    mean = sum(pool) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in pool) / 4 + 1e-8)
    assert normalized[0] == pytest.approx([(0.2 - mean) / (std + 1e-6), (1.0 - mean) / (std + 1e-6)])
    assert normalized[2] == [0.0]


def test_info_gain_kinds():
    m = [math.log(0.1), math.log(0.4), math.log(0.2)]
    assert info_gains(m, "log_prob_diff") == pytest.approx([math.log(4), math.log(0.5)])
    assert info_gains(m, "prob_diff") == pytest.approx([0.3, -0.2])
    with pytest.raises(ValueError, match="ig_type"):
        info_gains(m, "ratio")


# ---- properties ---------------------------------------------------------------------------------------------------------

def test_a_zero_information_gain_turn_keeps_its_own_advantage():
    # row 0: IG exactly 0 on turn 0. The official code would skip that position (no turn end, merged into turn 1);
    # here it is a turn of its own, normalized with the group's IG rewards.
    normalized, adv = turn_advantages([[0.0, 0.3], [0.2]], [1.0, 0.0], [0, 0], mode="separate")
    ig_pool = [0.0, 0.3, 0.2]
    mean = sum(ig_pool) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in ig_pool) / 3 + 1e-8)
    assert normalized[0][0] == pytest.approx((0.0 - mean) / (std + 1e-6))
    assert len(adv[0]) == 3 and adv[0][0] != pytest.approx(adv[0][1])
    assert adv[0][0] == pytest.approx(normalized[0][0] + adv[0][1])


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_no_advantage_collapse_when_outcomes_are_equal(mode):
    _, adv = turn_advantages([[0.1, 0.0], [0.3]], [1.0, 1.0], [0, 0], mode=mode)
    assert all(abs(v) > 1e-3 for row in adv for v in row[:-1]), adv
    # the collapse comes back only when nothing differs: every reward of the group equal
    _, flat = turn_advantages([[1.0], [1.0]], [1.0, 1.0], [0, 0], mode=mode)
    assert all(abs(v) < 1e-6 for row in flat for v in row)


def hand_batch():
    """Two rows: [pad | prompt(3) | act0(2) obs0(2) | act1(2)] and [prompt(3) | act0(3) obs0(1) act1(1) obs1(2) act2(2)]."""
    ids = torch.tensor([[0, 0, 5, 6, 7, 10, 11, 20, 21, 12, 13, 0],
                        [5, 6, 7, 10, 11, 12, 20, 13, 21, 22, 14, 15]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
                         [1] * 12])
    resp = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0],
                         [0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1]], dtype=torch.float32)
    turns = torch.tensor([[-1, -1, -1, -1, -1, 0, 0, 0, 0, 1, 1, -1],
                          [-1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 2, 2]])
    return Batch(input_ids=ids, attention_mask=attn, response_mask=resp, rewards=torch.tensor([1.0, 0.0]),
                 group_ids=torch.tensor([0, 0]), turn_ids=turns, info={"answer": ["ab", "ab"]})


def test_broadcast_puts_each_turn_on_its_policy_tokens_and_zero_on_observations():
    batch = hand_batch()
    adv = broadcast_turns(batch, [[0.5, -1.0], [2.0, 3.0, 4.0]])
    assert adv[0].tolist() == [0, 0, 0, 0, 0, 0.5, 0.5, 0, 0, -1.0, -1.0, 0]
    assert adv[1].tolist() == [0, 0, 0, 2.0, 2.0, 2.0, 0, 3.0, 0, 0, 4.0, 4.0]
    observation = (batch.turn_ids >= 0) & (batch.response_mask == 0)
    assert bool((adv[observation] == 0).all())


# ---- the probe --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    from entropo.models import tiny

    model, tokenizer = tiny(seed=3)
    model.eval()
    return model, tokenizer


def direct_mean_logprob(model, ids, answer_len):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    positions = range(len(ids) - answer_len, len(ids))
    return sum(float(logp[p - 1, ids[p]]) for p in positions) / answer_len


def test_probe_equals_a_direct_teacher_forced_computation(tiny_model):
    model, tok = tiny_model
    batch = hand_batch()
    probes = probe_batch(model, tok, batch, answer_template="<answer>{answer}</answer>", batch_size=3)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    tail = enc("<answer>") + enc("ab")
    rows = batch.input_ids.tolist()
    expected = [
        [direct_mean_logprob(model, rows[0][2:5] + tail, 2), direct_mean_logprob(model, rows[0][2:9] + tail, 2)],
        [direct_mean_logprob(model, rows[1][0:3] + tail, 2), direct_mean_logprob(model, rows[1][0:7] + tail, 2),
         direct_mean_logprob(model, rows[1][0:10] + tail, 2)],
    ]
    assert len(probes[0]) == 2 and len(probes[1]) == 3  # question + every non-final turn
    for got, want in zip(probes, expected):
        assert got == pytest.approx(want, abs=1e-5)


def test_estimator_end_to_end_on_a_hand_batch(tiny_model):
    from types import SimpleNamespace

    model, tok = tiny_model
    batch = hand_batch()
    est = IGPO(norm="joint")
    adv, metrics = est(batch, step_ctx=SimpleNamespace(model=model, tokenizer=tok, recipe=None, step=0))
    probes = probe_batch(model, tok, batch)
    ig = [info_gains(p) for p in probes]
    _, turns = turn_advantages(ig, [1.0, 0.0], [0, 0], mode="joint")
    assert torch.allclose(adv, broadcast_turns(batch, turns))
    assert metrics["ig_turns_mean"] == 1.5 and math.isfinite(metrics["ig_mean"])
    assert metrics["zero_adv_group_frac"] == 0.0
    with pytest.raises(ValueError, match="step_ctx"):
        est(batch)
    batch.info["answer"] = ["ab", None]
    with pytest.raises(ValueError, match="gold answer"):
        est(batch, step_ctx=SimpleNamespace(model=model, tokenizer=tok, recipe=None, step=0))


def test_bad_params_name_the_field():
    with pytest.raises(ValueError, match="advantage.params.norm"):
        IGPO(norm="both")
    with pytest.raises(ValueError, match="answer_template"):
        IGPO(answer_template="<answer></answer>")


def test_curriculum_weights_move_linearly():
    from types import SimpleNamespace

    est = IGPO(curriculum=True)
    ctx = SimpleNamespace(recipe=SimpleNamespace(train=SimpleNamespace(steps=10)), step=5)
    assert est.weights(ctx) == pytest.approx((0.75, 0.75))
    assert IGPO().weights(ctx) == (1.0, 1.0)


# ---- the environment and its task ---------------------------------------------------------------------------------------

def make_task(seed=0, eval_size=16, **params):
    return registry.get("task", "multihop_lookup")(seed=seed, eval_size=eval_size, **params)


def test_task_is_deterministic_in_the_seed():
    a, b, c = make_task(0), make_task(0), make_task(1)
    assert [a.train_example(i).prompt for i in range(20)] == [b.train_example(i).prompt for i in range(20)]
    assert [e.meta["facts"] for e in a.eval_examples()] == [e.meta["facts"] for e in b.eval_examples()]
    assert [a.train_example(i).prompt for i in range(20)] != [c.train_example(i).prompt for i in range(20)]
    hops = {a.train_example(i).meta["hops"] for i in range(50)}
    assert hops == {2, 3}


def test_held_out_entities_never_appear_in_training():
    task = make_task(0, eval_size=64)
    assert not set(task.pools["train"]) & set(task.pools["eval"])
    assert len(task.pools["train"]) + len(task.pools["eval"]) == len(all_names())
    eval_entities = {n for e in task.eval_examples() for n in e.meta["entities"]}
    train_entities = {n for i in range(2000) for n in task.train_example(i).meta["entities"]}
    assert eval_entities and not eval_entities & train_entities


def play(env, example, actions):
    env.reset(example, seed=0)
    return [env.step(a) for a in actions]


def test_environment_answers_searches_and_judges_answers():
    task = make_task(0)
    ex = next(task.train_example(i) for i in range(50) if task.train_example(i).meta["hops"] == 3)
    env = MultihopLookup()
    demo = env.demonstration(ex)
    actions = [m["content"] for m in demo if m["role"] == "assistant"]
    results = play(env, ex, actions)
    assert len(actions) == 4  # three searches, then the answer
    assert [r.observation for r in results[:-1]] == [m["content"] for m in demo if m["role"] == "tool"]
    assert all(r.tool_call and not r.done for r in results[:-1])
    assert results[-1].done and results[-1].correct is True
    # aliases and case are accepted; a wrong entity is not
    assert play(env, ex, [f"<answer>republic of {ex.answer.lower()}</answer>"])[0].correct is True
    assert play(env, ex, ["<answer>Nobody</answer>"])[0].correct is False
    assert task.correct(f"<answer>{ex.answer}</answer>", ex) and task.score("<answer>Republic</answer>", ex) == 0.5


def test_malformed_and_unknown_actions_get_a_clear_observation():
    task = make_task(0)
    ex = task.train_example(0)
    env = MultihopLookup()
    garbled, empty, unknown, lower = play(env, ex, ["hello", "<search> </search>", "<search>Qqqq</search>",
                                                   f"<search>{ex.meta['chain'][0].lower()}</search>"])
    assert not garbled.done and "write <search>name</search> or <answer>name</answer>" in garbled.observation
    assert garbled.info == {"malformed_actions": 1}
    assert "empty search" in empty.observation and not empty.done
    assert unknown.observation == "no entry for Qqqq"
    assert lower.observation == ex.meta["facts"][ex.meta["chain"][0]]
    with pytest.raises(ValueError, match="meta\\['facts'\\]"):
        env.reset(Example(prompt="q", answer="a"), seed=0)


def test_relation_keys_follow_links_from_the_questions_person():
    task = make_task(0, names="letters", held_out_frac=0.3)
    ex = next(task.train_example(i) for i in range(50) if task.train_example(i).meta["hops"] == 3)
    env = MultihopLookup(keys="relation", search_tag="s", answer_tag="a")
    demo = env.demonstration(ex)
    assert [m["content"] for m in demo] == ["<s>employer</s>", ex.meta["chain"][1], "<s>city</s>",
                                            ex.meta["chain"][2], "<s>country</s>", ex.meta["chain"][3],
                                            f"<a>{ex.answer}</a>"]
    results = play(env, ex, [m["content"] for m in demo if m["role"] == "assistant"])
    assert [r.observation for r in results[:-1]] == ex.meta["chain"][1:]
    assert results[-1].correct is True
    person = ex.meta["chain"][0]
    assert play(env, ex, ["<s>country</s>"])[0].observation == f"{person} has no country"
    assert all(len(n) == 1 for n in ex.meta["entities"])
    with pytest.raises(ValueError, match="environment.params.keys"):
        MultihopLookup(keys="fuzzy")


def test_task_params_are_checked():
    with pytest.raises(ValueError, match="unknown paths"):
        make_task(paths=["boss.city"])
    with pytest.raises(TypeError, match="allowed parameters"):
        make_task(depth=2)
    with pytest.raises(ValueError, match="fewer than 6 names"):
        make_task(names="letters", held_out_frac=0.1)


# ---- a short end-to-end run ---------------------------------------------------------------------------------------------

def test_short_igpo_training_run(tmp_path, monkeypatch):
    from entropo import trainer
    from entropo.config import load_recipe

    captured = []
    original = trainer.assign_advantages

    def capture(advantage, batch, step_ctx):
        out = original(advantage, batch, step_ctx)
        captured.append(batch)
        return out

    monkeypatch.setattr(trainer, "assign_advantages", capture)
    recipe = load_recipe("entropo/recipes/igpo.yaml", [
        "warmup.steps=3", "warmup.batch_size=4", "task.eval_size=4", "rollout.prompts_per_step=2", "rollout.n=4",
        "rollout.max_new_tokens=16", "rollout.max_episode_tokens=96", "train.steps=2", "eval.every=0",
        "checkpoint.every=0", "logging.progress=false", "logging.plots=false", "logging.tensorboard=false"])
    summary = trainer.train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)
    assert summary["steps"] == 2 and len(captured) == 2
    import json

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "advantage/ig_mean" in r]
    assert len(steps) == 2
    for r in steps:
        for key in ("advantage/ig_mean", "advantage/probe_p0_mean", "advantage/zero_adv_group_frac"):
            assert math.isfinite(r[key])
        assert r["advantage/ig_turns_mean"] > 0  # the episodes are multi-turn: some turns have an info gain
    for batch in captured:
        observation = (batch.turn_ids >= 0) & (batch.response_mask == 0) & (batch.attention_mask > 0)
        assert bool(observation.any()) and bool((batch.advantages[observation] == 0).all())
        assert bool((batch.advantages[batch.response_mask == 0] == 0).all())
        assert bool((batch.advantages[batch.response_mask > 0] != 0).any())
