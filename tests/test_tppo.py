"""T-PPO (arXiv 2506.15050): Extended GAE, the value critic of ``gae`` (an auxiliary the trainer fits and
checkpoints), the ``hf_window`` engine and its carry-over."""

import json
import math

import pytest
import torch
from conftest import tiny_step_world

from entropo import checkpoint
from entropo.algorithms.tppo import (GAE, ValueCritic, discounted_returns, generalized_advantages,
                                     outcome_token_rewards, state_values_at_tokens)
from entropo.components import Auxiliary, Bound
from entropo.batch import Batch
from entropo.config import load_recipe
from entropo.logging import read_metrics
from entropo.rollout import HFEngine
from entropo.rollout.window import HFWindowEngine
from entropo.trainer import rollout_batch, train
from entropo.types import Example


# ---- Extended GAE: hand-computed values ----------------------------------------------------------------------------

def test_extended_gae_matches_hand_values_at_truncation():
    # 3 generated tokens, V = [0.5, 0.6, 0.7], V(s_3) = 0.8, no rewards, gamma = 1:
    # delta = [0.6-0.5, 0.7-0.6, 0.8-0.7] = [0.1, 0.1, 0.1]
    # lam = 0.95: A_2 = 0.1, A_1 = 0.1 + 0.95*0.1 = 0.195, A_0 = 0.1 + 0.95*0.195 = 0.28525
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    adv, ret = generalized_advantages(torch.zeros(1, 3), values, torch.tensor([0.8]), mask, gamma=1.0, lam=0.95)
    assert torch.allclose(adv, torch.tensor([[0.28525, 0.195, 0.1]]), atol=1e-6)
    assert torch.allclose(ret, adv + values)
    # lam = 1: A_t = V(s_3) - V(s_t) = [0.3, 0.2, 0.1]
    adv1, _ = generalized_advantages(torch.zeros(1, 3), values, torch.tensor([0.8]), mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv1, torch.tensor([[0.3, 0.2, 0.1]]), atol=1e-6)


def test_gae_finished_row_and_discount_by_hand():
    # finished row, outcome 1 on the last token, gamma = 0.5, lam = 0.5, V = [0.2, 0.4]:
    # delta_1 = 1 + 0.5*0 - 0.4 = 0.6; delta_0 = 0 + 0.5*0.4 - 0.2 = 0.0
    # A_1 = 0.6; A_0 = 0.0 + 0.25*0.6 = 0.15
    adv, _ = generalized_advantages(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.4]]), torch.zeros(1),
                                    torch.ones(1, 2), gamma=0.5, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.15, 0.6]]))
    # Monte-Carlo returns with gamma = 0.5 of rewards [1, 0, 2]: G = [1 + 0 + 0.25*2, 0 + 0.5*2, 2] = [1.5, 1, 2]
    g = discounted_returns(torch.tensor([[1.0, 0.0, 2.0]]), torch.ones(1, 3), gamma=0.5)
    assert torch.allclose(g, torch.tensor([[1.5, 1.0, 2.0]]))


def test_gae_honours_mask_and_padding():
    # the same response laid out with prompt columns before and padding after gives the same advantages on it
    values = torch.tensor([[0.3, 0.1, 0.5]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    bare, _ = generalized_advantages(rewards, values, torch.zeros(1), torch.ones(1, 3), 1.0, 0.9)
    padded_values = torch.tensor([[9.0, 0.3, 0.1, 0.5, 7.0, 7.0]])
    padded_rewards = torch.tensor([[5.0, 0.0, 0.0, 1.0, 3.0, 3.0]])
    mask = torch.tensor([[0.0, 1, 1, 1, 0, 0]])
    padded, ret = generalized_advantages(padded_rewards, padded_values, torch.zeros(1), mask, 1.0, 0.9)
    assert torch.allclose(padded[:, 1:4], bare) and padded[:, [0, 4, 5]].abs().sum() == 0
    assert ret[:, [0, 4, 5]].abs().sum() == 0


def test_outcome_rewards_land_on_last_token_plus_dense_rewards():
    mask = torch.tensor([[0.0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    batch = Batch(input_ids=torch.zeros(3, 4, dtype=torch.long), attention_mask=torch.ones(3, 4),
                  response_mask=mask, rewards=torch.tensor([2.0, 3.0, 4.0]), group_ids=torch.arange(3),
                  token_rewards=torch.full((3, 4), 0.1))
    r = outcome_token_rewards(batch, mask)
    expected = torch.tensor([[0.0, 0.1, 2.1, 0.0], [0.1, 0.1, 0.1, 3.1], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(r, expected)


def test_values_are_read_from_the_previous_position():
    head = torch.nn.Linear(1, 1, bias=False)
    head.weight.data.fill_(1.0)
    hidden = torch.tensor([[[1.0], [2.0], [3.0]]])  # V after position t = t + 1
    before, after = state_values_at_tokens(head, hidden)
    assert torch.equal(after, torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.equal(before, torch.tensor([[0.0, 1.0, 2.0]]))  # state before token t = after token t - 1


# ---- the gae component with its value head ---------------------------------------------------------------------------

def _world_batch(world, n=4, seed=0, window=None, max_new_tokens=4):
    engine = world.engine if window is None else HFWindowEngine(world.model, world.tokenizer, window=window)
    examples = [world.task.train_example(i) for i in range(3)]
    gen = torch.Generator().manual_seed(seed)
    batch, _ = rollout_batch(engine, world.task, world.rewards, world.recipe, examples, n, 1.0, gen, 0,
                             torch.device("cpu"))
    return batch, engine


def test_gae_first_call_with_zero_head_is_discounted_reward_to_go():
    world = tiny_step_world(["rollout.max_new_tokens=4"])
    batch, _ = _world_batch(world)
    batch.rewards = torch.tensor([1.0, 0.0] * (batch.size // 2))
    gae = GAE(gamma=1.0, lam=0.9, whiten=False, value_epochs=0)
    adv, metrics = gae(batch, step_ctx=world.context(torch.Generator()))
    # V = 0 everywhere: delta_t = r_t, so A_t = 0.9^(T-1-t) * R on each row's T response tokens
    for b in range(batch.size):
        idx = batch.response_mask[b].nonzero().flatten()
        T = len(idx)
        expected = torch.tensor([0.9 ** (T - 1 - k) for k in range(T)]) * batch.rewards[b]
        assert torch.allclose(adv[b, idx], expected, atol=1e-6)
        assert adv[b][batch.response_mask[b] == 0].abs().sum() == 0
    assert metrics["value_mean"] == 0.0 and metrics["bootstrapped_frac"] == 0.0
    assert "value_loss" not in metrics  # the estimator only reads the critic


def test_gae_critic_is_an_auxiliary_the_advantage_call_never_fits():
    world = tiny_step_world(["rollout.max_new_tokens=4"])
    batch, _ = _world_batch(world)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0] * (batch.size // 3))
    ctx = world.context(torch.Generator())
    bound = Bound("advantage", "gae", {"value_hidden": 8, "value_epochs": 5})
    (critic,) = bound.auxiliaries()
    assert isinstance(critic, Auxiliary) and critic is bound.instance.critic and critic.name == "critic"
    bound(batch, step_ctx=ctx)
    before = [p.detach().clone() for p in critic.head.parameters()]
    a1, _ = bound(batch, step_ctx=ctx)
    assert all(torch.equal(p, q) for p, q in zip(before, critic.head.parameters()))
    assert not critic.optimizer.state  # no optimizer step happened in the advantage calls
    assert bound.state_dict() is None  # the estimator itself holds no state: the critic is checkpointed as auxiliary
    metrics = critic.fit(batch, ctx)
    assert math.isfinite(metrics["value_loss"]) and critic.optimizer.state
    assert not all(torch.equal(p, q) for p, q in zip(before, critic.head.parameters()))
    a2, _ = bound(batch, step_ctx=ctx)
    assert not torch.equal(a1, a2)  # the fitted critic gives other values


def test_gae_value_head_learns_and_round_trips():
    world = tiny_step_world(["rollout.max_new_tokens=4"])
    batch, _ = _world_batch(world)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0] * (batch.size // 3))
    ctx = world.context(torch.Generator())
    gae = GAE(value_lr=5e-2, value_epochs=20, whiten=False)
    losses = []
    for _ in range(3):
        gae(batch, step_ctx=ctx)
        losses.append(gae.critic.fit(batch, ctx)["value_loss"])
    assert losses[2] < losses[0]  # fitting the same targets again lowers the loss
    saved = gae.critic.state_dict()
    assert saved["optimizer"]["state"]  # Adam's moments travel with the weights
    fresh = GAE(value_lr=5e-2, value_epochs=20, whiten=False)
    fresh.critic.load_state_dict(saved)  # before the head exists: applied lazily on the first call
    a1, m1 = gae(batch, step_ctx=ctx)
    a2, m2 = fresh(batch, step_ctx=ctx)
    assert torch.equal(a1, a2) and m1 == m2
    assert gae.critic.fit(batch, ctx) == fresh.critic.fit(batch, ctx)  # same optimizer state: same next steps


def test_gae_fits_value_on_finished_rows_only_and_bootstraps_partial_rows():
    world = tiny_step_world(["rollout.max_new_tokens=4"])
    batch, _ = _world_batch(world, window=1)  # every row that did not end on its first token is partial
    partial = [f == "partial" for f in batch.info["finish_reason"]]
    assert any(partial)
    only_partial = batch.select([i for i, p in enumerate(partial) if p])
    ctx = world.context(torch.Generator())
    gae = GAE(value_hidden=8, value_epochs=5, whiten=False)
    _, metrics = gae(only_partial, step_ctx=ctx)
    assert metrics["bootstrapped_frac"] == 1.0
    before = [p.detach().clone() for p in gae.critic.head.parameters()]
    assert math.isnan(gae.critic.fit(only_partial, ctx)["value_loss"])
    for p, q in zip(before, gae.critic.head.parameters()):
        assert torch.equal(p, q)  # no finished response -> the critic is not fitted (T-PPO's value filtering)
    # with fit_on="all" the same batch does move the critic
    gae_all = GAE(value_hidden=8, value_epochs=5, whiten=False, fit_on="all")
    gae_all(only_partial, step_ctx=ctx)
    snap = [p.detach().clone() for p in gae_all.critic.head.parameters()]
    gae_all.critic.fit(only_partial, ctx)
    assert any(not torch.equal(p, q) for p, q in zip(snap, gae_all.critic.head.parameters()))


def test_gae_rejects_bad_params():
    with pytest.raises(ValueError, match="fit_on"):
        GAE(fit_on="sometimes")
    with pytest.raises(ValueError, match="gamma"):
        GAE(gamma=1.5)


# ---- the hf_window engine ---------------------------------------------------------------------------------------------

def test_window_engine_equals_hf_when_the_window_covers_the_budget():
    world = tiny_step_world()
    examples = [world.task.train_example(i) for i in range(3)]
    a = HFEngine(world.model, world.tokenizer).rollout(examples, 4, max_new_tokens=5,
                                                       generator=torch.Generator().manual_seed(3))
    b = HFWindowEngine(world.model, world.tokenizer, window=5).rollout(examples, 4, max_new_tokens=5,
                                                                       generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)
    assert a.completions == b.completions and a.finish_reasons == b.finish_reasons
    assert torch.equal(b.extras["generated_mask"], b.response_mask)


def test_window_engine_carries_unfinished_rows_until_they_end():
    world = tiny_step_world()
    engine = HFWindowEngine(world.model, world.tokenizer, window=2)
    examples = [Example(prompt="1+2+3=", answer="6"), Example(prompt="4+4=", answer="8")]
    gen = torch.Generator().manual_seed(0)
    out = engine.rollout(examples, 3, max_new_tokens=5, temperature=1.0, generator=gen)
    assert out.response_mask.sum(-1).max() <= 2 and out.payloads == examples
    first_partial = [i for i, f in enumerate(out.finish_reasons) if f == "partial"]
    assert len(engine.carried) == len(first_partial) > 0
    carried_prefixes = sorted(out.input_ids[i][out.response_mask[i] > 0].tolist() for i in first_partial)
    assert sorted(r.generated_ids for r in engine.carried) == carried_prefixes
    totals = []
    calls = 0
    while engine.carried:  # 2 + 2 + 1 tokens at most: everything ends within two more calls
        calls += 1
        nxt = engine.rollout([], 3, max_new_tokens=5, temperature=1.0, generator=gen)
        for r in range(nxt.input_ids.shape[0]):
            gen_ids = nxt.input_ids[r][nxt.extras["generated_mask"][r] > 0].tolist()
            new_ids = nxt.input_ids[r][nxt.response_mask[r] > 0].tolist()
            assert gen_ids[-len(new_ids):] == new_ids and len(new_ids) <= 2
            assert nxt.num_tokens[r] == len(gen_ids) <= 5
            if nxt.finish_reasons[r] != "partial":
                totals.append(len(gen_ids))
        # carried rows keep their example (the caller's payload) and are grouped by their original prompt
        assert all(p in examples for p in nxt.payloads)
    assert calls <= 2 and len(totals) == len(first_partial)


def test_window_engine_state_round_trip_continues_identically():
    world = tiny_step_world()
    a = HFWindowEngine(world.model, world.tokenizer, window=1)
    examples = [world.task.train_example(i) for i in range(2)]
    a.rollout(examples, 2, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    b = HFWindowEngine(world.model, world.tokenizer, window=1)
    b.load_state_dict(a.state_dict())
    oa = a.rollout(examples, 2, max_new_tokens=4, generator=torch.Generator().manual_seed(1))
    ob = b.rollout(examples, 2, max_new_tokens=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(oa.input_ids, ob.input_ids) and oa.finish_reasons == ob.finish_reasons


def test_partial_rows_are_not_scored(monkeypatch):
    world = tiny_step_world(["rollout.max_new_tokens=4"])
    seen = []
    original = world.rewards.score

    def spy(samples):
        seen.extend(s.completion for s in samples)
        return original(samples)

    monkeypatch.setattr(world.rewards, "score", spy)
    batch, _ = _world_batch(world, window=1)
    partial = (~batch.finished).tolist()
    assert partial == [f == "partial" for f in batch.info["finish_reason"]]
    assert len(seen) == partial.count(False)
    assert all(batch.rewards[i] == 0 and not batch.correct[i] for i, p in enumerate(partial) if p)


# ---- the recipe end to end: carry-over state survives a resume exactly --------------------------------------------------

def test_tppo_resume_is_exact(tmp_path, tiny_recipe_overrides):
    ov = tiny_recipe_overrides + ["rollout.engine=hf_window", "rollout.engine_params={window: 1}",
                                  "advantage={name: gae, params: {value_epochs: 2}}", "train.steps=4",
                                  "logging.tensorboard=false"]
    train(load_recipe(None, ov), run_dir=tmp_path / "a", console=lambda *_: None)
    train(load_recipe(None, ov), run_dir=tmp_path / "b", stop_after=2, console=lambda *_: None)
    # the critic is checkpointed in the auxiliary slot: weights and Adam state, which restore exactly
    saved = checkpoint.load(checkpoint.latest(tmp_path / "b"))
    (critic_state,) = saved["auxiliaries"]
    assert critic_state["optimizer"]["state"] and set(critic_state) == {"head", "optimizer"}
    critic = ValueCritic(1.0, 0.95, 1e-3, 2, 0, "finished", 0)
    critic.load_state_dict(critic_state)
    critic._build(critic_state["head"]["weight"].shape[1], torch.device("cpu"))  # applies the loaded state
    restored = critic.state_dict()
    assert all(torch.equal(restored["head"][k], v) for k, v in critic_state["head"].items())
    for key, moments in critic_state["optimizer"]["state"].items():
        assert all(torch.equal(restored["optimizer"]["state"][key][m], t) for m, t in moments.items())
    train(load_recipe(None, ov), run_dir=tmp_path / "b", resume=True, console=lambda *_: None)

    def strip(rows):
        return [json.dumps({k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s", "peak_mem"))},
                           sort_keys=True) for r in rows]

    rows = read_metrics(tmp_path / "a")
    assert strip(rows) == strip(read_metrics(tmp_path / "b"))
    steps = [r for r in rows if not r.get("final")]
    assert any(r["response/partial_frac"] > 0 for r in steps)  # rows really were carried across steps
    assert all("aux/critic/value_loss" in r for r in steps if r["actor/optimizer_steps"])
