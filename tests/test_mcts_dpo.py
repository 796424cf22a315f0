"""MCTS-DPO's iterative driver (entropo.search.mcts_dpo, arXiv 2405.00451): pairs → linked Batch rows on the exact
ids, the per-pair label smoothing reaching the ``dpo`` loss (hand values), step-level and instance-level pairs of a
scripted tree, the token-id path of the preference replay engine, and the whole loop deterministic by seed."""

import json
import math

import pytest
import torch

from entropo.algorithms.preferences import dpo
from entropo.search.mcts import MCTS, tree_pairs
from entropo.search.mcts_dpo import (IdPair, common_prefix, dpo_on_pairs, instance_pairs, iteration_pairs, mcts_dpo,
                                     pairs_to_batch)
from entropo.types import Example

EX = Example(prompt="q", answer="1")
PAD = 99


from search_toys import TREE, VALUES, ScriptedSampler, TableScorer  # noqa: E402


def scripted_tree():
    search = MCTS(ScriptedSampler(TREE), TableScorer(VALUES), n_iters=1, n_actions=2, w_exp=1.0, gamma=1.0)
    return search.search(EX, [0])


# ---- pairs -> batch --------------------------------------------------------------------------------------------------

PAIRS = [IdPair([5, 6, 7], [10, 11, 12, 2], [10, 13, 2], 1 / 6), IdPair([5], [20, 2], [21, 22, 23, 24, 2], 0.5)]


def test_pairs_to_batch_keeps_ids_exactly_and_links_pairs():
    b = pairs_to_batch(PAIRS, PAD)
    assert b.size == 4
    assert b.pair_ids.tolist() == [0, 0, 1, 1] and b.pair_rank.tolist() == [0, 1, 0, 1]
    assert [u.tolist() for u in b.units()] == [[0, 1], [2, 3]] and b.num_comparisons() == 2
    for r, (p, side) in enumerate((p, s) for p in PAIRS for s in ("chosen_ids", "rejected_ids")):
        row = b.input_ids[r][b.attention_mask[r] > 0].tolist()
        assert row == p.prompt_ids + getattr(p, side)  # prompt then response, the very ids
        assert b.input_ids[r][b.response_mask[r] > 0].tolist() == getattr(p, side)
        assert (b.input_ids[r][b.attention_mask[r] == 0] == PAD).all()  # left padding only
    # the loss starts at the first differing token: pair 0 shares its first response token (10)
    assert b.input_ids[0][b.token_weights[0] > 0].tolist() == [11, 12, 2]
    assert b.input_ids[1][b.token_weights[1] > 0].tolist() == [13, 2]
    assert b.input_ids[2][b.token_weights[2] > 0].tolist() == [20, 2]  # no common prefix in pair 1
    assert b.extras["label_smoothing"].tolist() == pytest.approx([1 / 6, 1 / 6, 0.5, 0.5])
    assert b.correct.tolist() == [True, False, True, False]
    assert (pairs_to_batch(PAIRS, PAD, divergent_suffix=False).token_weights == b.response_mask).all()
    assert common_prefix([1, 2, 3], [1, 2]) == 2 and common_prefix([4], [5]) == 0
    # shuffled micro-batches keep pairs and their smoothing together
    sub = b.select([2, 3])
    assert sub.pair_ids.tolist() == [1, 1] and sub.extras["label_smoothing"].tolist() == [0.5, 0.5]


def test_pairs_to_batch_rejects_bad_pairs():
    with pytest.raises(ValueError, match="no pairs"):
        pairs_to_batch([], PAD)
    with pytest.raises(ValueError, match="label_smoothing"):
        pairs_to_batch([IdPair([1], [2], [3], 0.7)], PAD)
    with pytest.raises(ValueError, match="empty"):
        pairs_to_batch([IdPair([1], [], [3], 0.1)], PAD)


# ---- per-pair label smoothing reaches the loss -----------------------------------------------------------------------

def _toy_logprobs(batch, seq_logp, ref_logp):
    """Per-token log-probs putting each row's whole sequence log-prob on its last loss token."""
    lp, ref = torch.zeros(batch.input_ids.shape), torch.zeros(batch.input_ids.shape)
    lp[:, -1], ref[:, -1] = torch.tensor(seq_logp), torch.tensor(ref_logp)
    return lp, ref


def test_per_pair_label_smoothing_reaches_the_dpo_loss_by_hand():
    b = pairs_to_batch(PAIRS, PAD)
    # pair 0: r_w = -1 - (-2) = 1, r_l = -3 - (-2) = -1, Delta = 2; pair 1: r_w = 0.5, r_l = 0.5 + ... Delta = -1
    lp, ref = _toy_logprobs(b, [-1.0, -3.0, -2.0, -1.0], [-2.0, -2.0, -2.0, -2.0])
    b.ref_logprobs = ref
    per_row, metrics = dpo(lp, lp, torch.zeros_like(lp), b.token_weights, micro_batch=b, beta=0.5)
    # beta*Delta = 1 with eps 1/6: -(5/6) log sig(1) - (1/6) log sig(-1) = 5/6*0.3132617 + 1/6*1.3132617
    assert per_row[0].item() == pytest.approx(5 / 6 * 0.3132617 + 1 / 6 * 1.3132617, abs=1e-6)
    assert per_row[0].item() == pytest.approx(0.4799284, abs=1e-6)
    # beta*Delta = 0.5*(0 - 1) = -0.5 with eps 0.5: 0.5*(-log sig(-0.5) - log sig(0.5)) = 0.5*(0.9740770+0.4740770)
    assert per_row[2].item() == pytest.approx(0.7240770, abs=1e-6)
    assert per_row[1].item() == 0.0 and per_row[3].item() == 0.0  # the loss sits on the chosen rows
    # without the per-pair field, the objective's scalar is used (0 here: plain DPO)
    plain = pairs_to_batch(PAIRS, PAD)
    plain.extras = {}
    plain.ref_logprobs = ref
    per_row0, _ = dpo(lp, lp, torch.zeros_like(lp), plain.token_weights, micro_batch=plain, beta=0.5)
    assert per_row0[0].item() == pytest.approx(0.3132617, abs=1e-6)
    # an engine's [B, L] per-row tensor (constant along the row) reads the same
    b.extras["label_smoothing"] = b.extras["label_smoothing"][:, None].expand_as(lp).contiguous()
    per_row2, _ = dpo(lp, lp, torch.zeros_like(lp), b.token_weights, micro_batch=b, beta=0.5)
    assert torch.allclose(per_row2, per_row)
    b.extras["label_smoothing"] = torch.tensor([0.9, 0.9, 0.1, 0.1])
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(lp, lp, torch.zeros_like(lp), b.token_weights, micro_batch=b, beta=0.5)


# ---- an iteration on a scripted tree ---------------------------------------------------------------------------------

def test_scripted_tree_gives_expected_step_and_instance_pairs():
    final, tree, path = scripted_tree()
    steps = tree_pairs(path)
    # root: A (N 6, Q .6) vs B (N 2, Q -1.0): eps = 1 - 1/(1 + 2/6) = 0.25; A: A1 (N 4) vs A2 (N 0): eps = 0
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in steps] == [([0], [1], [2]), ([0, 1], [3], [4])]
    assert [p.label_smoothing for p in steps] == pytest.approx([0.25, 0.0])
    got = iteration_pairs("step", [(tree, steps)])
    assert got == steps
    # instance level: whole finished responses under the bare prompt, best vs worst, at most as many as step pairs
    inst = iteration_pairs("instance", [(tree, steps)])
    # leaves [1,3] (v 1), [1,4], [2,5], [2,6] (v -1): the correct one against each wrong one, the last wrong first
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids, p.label_smoothing) for p in inst] == [
        ([0], [1, 3], [2, 6], 0.0), ([0], [1, 3], [2, 5], 0.0)]  # capped at the 2 step-level pairs
    assert [p.rejected_ids for p in instance_pairs(tree, 10)] == [[2, 6], [2, 5], [1, 4]]  # equal values: no pair
    assert instance_pairs(tree, 0) == []
    assert iteration_pairs("none", [(tree, steps)]) == []
    with pytest.raises(ValueError, match="level"):
        iteration_pairs("token", [(tree, steps)])
    b = pairs_to_batch(got, PAD)
    assert b.input_ids[2][b.attention_mask[2] > 0].tolist() == [0, 1, 3]  # prompt + chosen path + chosen step
    assert b.extras["label_smoothing"].tolist() == pytest.approx([0.25, 0.25, 0.0, 0.0])


# ---- training on the pairs, the loop ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    from entropo import registry
    from entropo.models import tiny
    from entropo.rollout.hf import HFEngine

    model, tok = tiny()
    model.eval()
    task = registry.get("task", "arith_chain")(seed=0, eval_size=4)
    return HFEngine(model, tok, chat_template=False), task


def test_dpo_on_pairs_raises_the_margin_and_keeps_the_reference(world):
    import copy

    engine, _ = world
    model = copy.deepcopy(engine.model)
    ref = copy.deepcopy(model).eval()
    before = [p.detach().clone() for p in ref.parameters()]
    b = pairs_to_batch(PAIRS, engine.pad_token_id)
    out = dpo_on_pairs(model, ref, b, steps=4, pairs_per_step=2, lr=2e-2, beta=0.1, seed=0)
    assert math.isfinite(out["dpo_loss"]) and out["last_batch_pairs"] == 2
    from entropo.search.mcts_dpo import _logprobs

    with torch.no_grad():
        r = ((_logprobs(model, b) - _logprobs(ref, b)) * b.token_weights).sum(-1)
    delta = r[0::2] - r[1::2]
    # pair 0 (eps 1/6) is learned; pair 1 (eps 0.5: no preference, its loss is minimal at Delta = 0) moves less
    assert delta[0] > 0 and abs(delta[1]) < delta[0]
    assert all(torch.equal(a, p) for a, p in zip(before, ref.parameters()))


def test_loop_deterministic_by_seed_and_writes_pairs(world, tmp_path):
    import copy

    engine, task = world
    kw = dict(iterations=1, prompts_per_iter=1, level="step", mcts_params={"n_iters": 1, "depth_limit": 2},
              sampler_params={"max_tokens": 8, "max_step_tokens": 4}, dpo_epochs=1.0, pairs_per_step=4,
              eval_examples=task.eval_examples()[:1], console=lambda s: None)
    runs = []
    for k in range(2):
        e = copy.copy(engine)
        e.model = copy.deepcopy(engine.model)
        runs.append((mcts_dpo(e, task, seed=3, out_dir=tmp_path / str(k), **kw), e.model))
    (h0, m0), (h1, m1) = runs
    drop = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
    assert drop(h0) == drop(h1)
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters()))
    assert h0[0]["iteration"] == 0 and h0[1]["pairs"] == h0[1]["step_pairs_available"]
    if h0[1]["pairs"]:
        recs = [json.loads(x) for x in (tmp_path / "0" / "pairs_iter1.jsonl").read_text().splitlines()]
        assert len(recs) == h0[1]["pairs"]
        assert all({"prompt_ids", "chosen_ids", "rejected_ids", "label_smoothing"} <= set(r) for r in recs)
    with pytest.raises(ValueError, match="reference"):
        mcts_dpo(engine, task, reference="ema", **kw)


# ---- the replay engine's token-id path -------------------------------------------------------------------------------

def test_replay_engine_replays_token_ids_and_per_pair_smoothing(tmp_path):
    from entropo import models
    from entropo.rollout.replay import PreferenceReplayEngine
    from entropo.tasks.preferences import preferences

    model, tok = models.tiny(seed=0)
    engine = PreferenceReplayEngine(model, tok, chat_template=False)
    eos = engine.eos_token_ids[0]
    rows = [{"prompt": f"p{i}", "chosen": "x", "rejected": "y", "prompt_ids": [7, 8, i + 1],
             "chosen_ids": [30 + i, 31, eos], "rejected_ids": [40 + i, eos], "label_smoothing": 0.1 * i}
            for i in range(4)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = preferences(seed=0, eval_size=1, path=str(path), eval_fraction=0.25)
    examples = [task.train_example(i) for i in range(task.train_size())]
    out = engine.rollout(examples, 2, max_new_tokens=8)
    for k, ex in enumerate(examples):
        src = rows[ex.meta["row"]]
        for side, r in (("chosen_ids", 2 * k), ("rejected_ids", 2 * k + 1)):
            assert out.input_ids[r][out.attention_mask[r] > 0].tolist() == src["prompt_ids"] + src[side]
            assert out.input_ids[r][out.response_mask[r] > 0].tolist() == src[side]
            assert out.finish_reasons[r] == "eos"
            assert out.extras["label_smoothing"][r, 0].item() == pytest.approx(src["label_smoothing"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "x", "rejected": "y", "chosen_ids": [1]}) + "\n" +
                   json.dumps({"prompt": "q", "chosen": "x", "rejected": "y"}) + "\n")
    with pytest.raises(ValueError, match="token-id columns"):
        t = preferences(seed=0, eval_size=1, path=str(bad))
        [t.train_example(i) for i in range(t.train_size())]
