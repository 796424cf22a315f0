"""LOOP (Leave-One-Out PPO, "Reinforcement Learning for Long-Horizon Interactive LLM Agents", arXiv 2502.01600):
hand values of its pieces (rloo, reciprocal clip, |A| filter and trimming, KL early stop), the object_store
environment suite, and a few-step end-to-end run of the recipe."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from entropo.algorithms.advantages import rloo
from entropo.algorithms.controllers import KLEarlyStop
from entropo.algorithms.objectives import lower_clip_margin, ppo_clip
from entropo.algorithms.selection import (downsample_to_multiple, min_abs_advantage, round_up_to_multiple,
                                          trim_to_multiple)
from entropo.batch import Batch
from entropo.config import ConfigError, load_recipe
from entropo.envs.object_store import ObjectStore, object_store
from entropo.registry import register


def _batch(returns, groups, length=3):
    b = len(returns)
    return Batch(input_ids=torch.ones(b, length, dtype=torch.long), attention_mask=torch.ones(b, length),
                 response_mask=torch.ones(b, length), rewards=torch.tensor(returns, dtype=torch.float32),
                 group_ids=torch.tensor(groups))


# ---- advantage ------------------------------------------------------------------------------------------------------

def test_rloo_hand_values_and_std_option():
    a = rloo(_batch([1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0]))[:, 0]
    assert a.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], abs=1e-6)  # spec: [0.667, -0.667, ...]
    # ablation: divided by the population std of the returns (0.5)
    s = rloo(_batch([1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0]), scale_std=True)[:, 0]
    assert s.tolist() == pytest.approx([4 / 3, -4 / 3, -4 / 3, 4 / 3], abs=1e-5)
    assert rloo(_batch([1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0]), scale_std=True).abs().max() == 0  # eps guard, no NaN


def test_rloo_group_advantages_sum_to_zero():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        groups = torch.randint(0, 4, (24,), generator=g)
        groups = torch.cat([groups, torch.arange(4), torch.arange(4)])  # every group has >= 2 rows
        returns = torch.rand(groups.numel(), generator=g)
        a = rloo(_batch(returns.tolist(), groups.tolist()))[:, 0]
        for k in range(4):
            assert float(a[groups == k].sum()) == pytest.approx(0.0, abs=1e-5)


# ---- objective ------------------------------------------------------------------------------------------------------

def test_reciprocal_bounds_by_hand():
    assert 1 - lower_clip_margin(0.1, "reciprocal") == pytest.approx(0.909091, abs=1e-6)  # [1/1.1, 1.1]
    assert 1 - lower_clip_margin(0.1, "additive") == pytest.approx(0.9)
    with pytest.raises(ValueError, match="clip_bounds"):
        lower_clip_margin(0.1, "symmetric")


def test_reciprocal_clip_loss_and_gradient_by_hand():
    # ratios and advantages; loss = max(-rho A, -clip(rho, 1/1.1, 1.1) A), d loss / d logprob = -rho A when the
    # unclipped branch is the max, else 0
    ratios = torch.tensor([[0.85, 0.905, 1.05, 1.2, 0.85, 0.905, 1.05, 1.2]])
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]])
    old = torch.zeros_like(ratios)
    logprobs = ratios.log().requires_grad_(True)
    loss, metrics = ppo_clip(logprobs, old, adv, torch.ones_like(adv), clip_low=0.1, clip_high=0.1,
                             clip_bounds="reciprocal")
    lo = 1 / 1.1
    expected = [-0.85, -0.905, -1.05, -1.1,  # A > 0: min(rho, clip(rho)) -> the 1.2 is capped at 1.1
                lo, lo, 1.05, 1.2]  # A < 0: max(rho, clip(rho)) -> 0.85 and 0.905 both lifted to 1/1.1
    assert loss[0].tolist() == pytest.approx(expected, abs=1e-5)
    loss.sum().backward()
    grad = [-0.85, -0.905, -1.05, 0.0, 0.0, 0.0, 1.05, 1.2]
    assert logprobs.grad[0].tolist() == pytest.approx(grad, abs=1e-5)
    assert float(metrics["clip_frac_low"]) == pytest.approx(2 / 8)  # A < 0 and rho under 1/1.1
    # additive bounds differ exactly at rho = 0.905 with A < 0: 0.905 > 0.9 stays unclipped (gradient flows)
    lp2 = ratios.log().requires_grad_(True)
    loss2, _ = ppo_clip(lp2, old, adv, torch.ones_like(adv), clip_low=0.1, clip_high=0.1)
    assert float(loss2.detach()[0, 5]) == pytest.approx(0.905, abs=1e-6)
    loss2.sum().backward()
    assert float(lp2.grad[0, 5]) == pytest.approx(0.905, abs=1e-5)


# ---- selection ------------------------------------------------------------------------------------------------------

def _four_groups():
    returns = [1, 0, 0, 1] + [1, 1, 1, 1] + [0, 0, 0, 0] + [1, 0, 0, 0]
    return _batch([float(r) for r in returns], [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)


def test_min_abs_advantage_drops_uniform_groups():
    keep = min_abs_advantage(_four_groups(), threshold=0.01)
    assert keep.tolist() == [True] * 4 + [False] * 8 + [True] * 4  # [1,1,1,1] and [0,0,0,0] dropped whole
    # with 0/1 returns the estimator on the kept rows gives the advantages the filter saw
    batch = _four_groups()
    full = rloo(batch)[:, 0]
    kept = rloo(batch.where(keep))[:, 0]
    assert kept.tolist() == pytest.approx(full[keep].tolist(), abs=1e-6)
    # a threshold above 1/3 also drops the -1/3 rows of the [1,0,0,0] group
    assert min_abs_advantage(batch, threshold=0.5).tolist() == [True] * 4 + [False] * 8 + [True] + [False] * 3


def test_min_abs_advantage_rounding_to_a_multiple():
    batch = _four_groups()
    up = min_abs_advantage(batch, threshold=0.01, multiple_of=3)  # 8 kept -> 9: the first dropped row comes back
    assert int(up.sum()) == 9 and up[4] and not up[5:12].any()
    down = min_abs_advantage(batch, threshold=0.01, multiple_of=3, rounding="down")  # 8 -> 6: two |A| = 1/3 go
    assert down.tolist() == [True] * 4 + [False] * 8 + [True, True, False, False]
    with pytest.raises(ValueError, match="rounding"):
        min_abs_advantage(batch, rounding="sideways")


def test_trim_to_multiple_and_downsample():
    keep = torch.tensor([True, True, True, False, True])
    assert trim_to_multiple(keep, 3, priority=torch.tensor([5.0, 1.0, 3.0, 9.0, 4.0])).tolist() == \
        [True, False, True, False, True]
    g = torch.Generator().manual_seed(0)
    out = trim_to_multiple(torch.ones(137, dtype=torch.bool), 8, generator=g)
    assert int(out.sum()) == 136  # EAPO: 137 rows, N = 8 -> 136
    again = trim_to_multiple(torch.ones(137, dtype=torch.bool), 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded
    assert torch.equal(trim_to_multiple(keep, 2), keep)  # already a multiple
    ctx = SimpleNamespace(rollout_generator=torch.Generator().manual_seed(1))
    assert int(downsample_to_multiple(_batch([0.0] * 13, list(range(13))), multiple=4, step_ctx=ctx).sum()) == 12
    assert int(round_up_to_multiple(torch.zeros(5, dtype=torch.bool), 4, torch.zeros(5)).sum()) == 4  # >= 1 multiple


# ---- KL early stop --------------------------------------------------------------------------------------------------

def test_kl_early_stop_rule():
    stop = KLEarlyStop(threshold=20.0)
    assert not stop.stop_update({"actor/kl_old_seq_k1": 19.9})
    assert stop.stop_update({"actor/kl_old_seq_k1": -20.5})  # |KL| as the official abs(kl) > threshold
    assert stop.events == 1
    with pytest.raises(ValueError, match="actor/kl_old_seq_k1"):
        stop.stop_update({"actor/loss": 1.0})
    restored = KLEarlyStop()
    restored.load_state_dict(stop.state_dict())
    assert restored.events == 1 and restored.coef == 20.0


class _StopAt:
    """An early stop that says stop on its k-th call (1-based)."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    def stop_update(self, metrics):
        self.calls += 1
        return self.calls >= self.k


def _policy_update_with(early_stop, monkeypatch, epochs=2, mini_batches=3):
    import entropo.trainer as trainer

    model = torch.nn.Linear(2, 1)
    seen = []

    def fake_accumulate(model_, mini, recipe, objective, regs, **_kw):  # whole=, dist= (data-parallel)
        seen.append(mini.size)
        for p in model_.parameters():
            p.grad = torch.ones_like(p)
        return {"actor/loss": 1.0, "actor/kl_old_seq_k1": 0.0}

    monkeypatch.setattr(trainer, "accumulate_gradients", fake_accumulate)
    recipe = load_recipe(None, ["model.name_or_path=tiny", f"train.ppo_epochs={epochs}",
                                f"train.mini_batches={mini_batches}", "train.grad_clip=null"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = model.weight.detach().clone()
    out = trainer.policy_update(model, opt, sched, _batch([0.0] * 6, [0] * 6), recipe, None, [],
                                torch.Generator().manual_seed(0), early_stop=early_stop)
    moved = float((before - model.weight.detach()).abs().max())
    return out, seen, moved


def test_early_stop_skips_the_crossing_minibatch_and_the_rest_of_the_step(monkeypatch):
    out, seen, _ = _policy_update_with(_StopAt(1_000), monkeypatch)  # never stops: 2 epochs x 3 mini-batches
    assert out["actor/optimizer_steps"] == 6 and len(seen) == 6 and out["actor/early_stopped"] == 0.0
    stop = _StopAt(2)  # the 2nd mini-batch crosses: its step is not taken, nothing after it runs
    out, seen, moved = _policy_update_with(stop, monkeypatch)
    assert out["actor/optimizer_steps"] == 1 and len(seen) == 2 and stop.calls == 2
    assert out["actor/early_stopped"] == 1.0
    assert moved == pytest.approx(0.1)  # exactly one SGD step of lr 0.1 on gradient 1
    out, seen, moved = _policy_update_with(_StopAt(1), monkeypatch)  # stops at once: no step at all
    assert out["actor/optimizer_steps"] == 0 and len(seen) == 1 and moved == 0.0
    out, _, _ = _policy_update_with(None, monkeypatch)  # no early stop configured: no metric
    assert "actor/early_stopped" not in out and out["actor/optimizer_steps"] == 6


def test_early_stop_config_errors():
    with pytest.raises(ConfigError, match="stop_update"):
        from entropo.config import check_components

        check_components(load_recipe(None, ["model.name_or_path=tiny", "train.early_stop={name: adaptive_kl}"],
                                     check=False))


# ---- the environment ------------------------------------------------------------------------------------------------

def _replay(env, example, actions):
    env.reset(example, 0)
    return [env.step(a) for a in actions]


def test_task_is_seeded_and_held_out_is_disjoint():
    a, b = object_store(seed=3, eval_size=16), object_store(seed=3, eval_size=16)
    assert [a.train_example(i).meta for i in range(20)] == [b.train_example(i).meta for i in range(20)]
    assert [e.meta for e in a.eval_examples()] == [e.meta for e in b.eval_examples()]
    assert a.train_example(0).meta != object_store(seed=4, eval_size=16).train_example(0).meta
    held_out = {json.dumps([e.meta["store"], e.meta["goal"]], sort_keys=True) for e in a.eval_examples()}
    train = {json.dumps([a.train_example(i).meta["store"], a.train_example(i).meta["goal"]], sort_keys=True)
             for i in range(3000)}
    assert len(held_out) == 16 and not held_out & train
    with pytest.raises(ValueError, match="goals"):
        object_store(seed=0, goals=["delete"])
    with pytest.raises(TypeError, match="allowed parameters"):
        object_store(seed=0, colour="red")


def test_reset_is_deterministic_and_demonstrations_solve_every_goal():
    task = object_store(seed=0, eval_size=8)
    for i in range(40):
        ex = task.train_example(i)
        env1, env2 = ObjectStore(), ObjectStore()
        assert env1.reset(ex, 1) == env2.reset(ex, 1)
        demo = env1.demonstration(ex)
        actions = [m["content"] for m in demo if m["role"] == "assistant"]
        observations = [m["content"] for m in demo if m["role"] == "tool"]
        results = _replay(env2, ex, actions)
        assert [r.observation for r in results[:-1]] == observations  # the demo shows what the env answers
        assert results[-1].done and results[-1].correct
        assert len(actions) == 4  # 3 calls + done
    ex = task.train_example(0)  # the json syntax replays too
    env = ObjectStore(syntax="json")
    actions = [m["content"] for m in env.demonstration(ex) if m["role"] == "assistant"]
    assert actions[0].startswith("<tool_call>") and _replay(env, ex, actions)[-1].correct


def test_bad_calls_are_observations_and_the_episode_goes_on():
    ex = object_store(seed=0, eval_size=4).train_example(0)
    env = ObjectStore()
    env.reset(ex, 0)
    cases = {
        "hello": "no tool call",
        "foo()": "unknown tool 'foo'",
        "read(zz)": "no object zz",
        "read(5)": "argument 'key' must be string",
        "write(r)": "missing argument(s) ['value']",
        "write(r,x)": "argument 'value' must be integer",
        "write(R,1)": "bad object name",
        "write(r,1,2)": "takes 2 argument(s) (key, value), got 3",
        "ls(a)": "takes 0 argument(s) (none), got 1",
        "": "no tool call",
    }
    for action, message in cases.items():
        result = env.step(action)
        assert result.observation.startswith("error:") and message in result.observation, (action, result)
        assert not result.done and result.info["tool_errors"] == 1
    assert env.store == ex.meta["store"]  # no bad call changed the world


def test_goal_is_checked_on_the_final_state():
    task = object_store(seed=1, eval_size=4, goals=["copy"])
    ex = task.train_example(0)
    store, goal = ex.meta["store"], ex.meta["goal"]
    source = next(k for k in store if k.startswith(goal["prefix"]))
    value = store[source]
    env = ObjectStore()
    # right value, but another object was changed too: not the goal's final state
    other = next(k for k in store if k != source)
    results = _replay(env, ex, [f"write(r,{value})", f"write({other},{store[other] + 1})", "done()"])
    assert results[0].correct and not results[-1].correct and results[-1].done
    # a wrong value written, then corrected: success is read from the final state
    results = _replay(env, ex, [f"write(r,{value + 1})", f"write(r,{value})", "done()"])
    assert not results[0].correct and results[-1].correct
    # done() at once: nothing changed, no success; saying "done" in text is not a call
    assert not _replay(env, ex, ["done()"])[-1].correct
    # the turn limit cuts an episode that never called done(): the verdict is on the state it left
    results = _replay(env, ex, ["ls()", f"write(r,{value})"])
    assert results[-1].correct and not results[-1].done
    add = object_store(seed=1, eval_size=4, goals=["add"]).train_example(0)
    g, s = add.meta["goal"], add.meta["store"]
    assert add.meta["expected"][g["target"]] == s[g["target"]] + s[g["source"]]
    assert object_store(seed=1, eval_size=4).correct("done()", ex) is False  # only the environment judges


# ---- end to end -----------------------------------------------------------------------------------------------------

@register("reward", "_loop_test_even_length")
def _even_length(sample):
    """1 when the episode's policy wrote an even number of tokens: a 0/1 outcome an untrained model hits about half
    the time, so groups are mixed and the update runs without a slow warm-up (the goal itself is never reached by
    an untrained model; the environment's own verdict is tested above)."""
    return float(sample.num_tokens % 2 == 0)


def test_loop_recipe_few_steps_end_to_end(tmp_path):
    from entropo.trainer import train

    recipe = load_recipe("entropo/recipes/loop.yaml", [
        "warmup.steps=0", "rollout.prompts_per_step=4", "rollout.n=4", "train.steps=2", "task.eval_size=2",
        "rollout.max_turns=2", "rollout.max_new_tokens=6", "rewards=[{name: _loop_test_even_length}]",
        "train.old_logprobs=recompute", "train.early_stop={name: kl_early_stop, params: {threshold: 1.0e-3}}",
        "eval.every=0", "logging.progress=false", "logging.plots=false", "logging.tensorboard=false",
        "checkpoint.every=0", "optimizer.lr=1e-3",
    ])
    summary = train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 2 and summary["steps"] == 2
    updated = 0
    for r in steps:
        # 0/1 rewards: the |A| filter drops exactly the rows of groups whose rewards are all equal
        assert r["selection/dropped_frac"] == pytest.approx(r["selection/zero_variance_group_frac"])
        assert r["episode/tool_calls_mean"] <= r["episode/turns_mean"] <= 2  # the turn limit holds
        if r["selection/dropped_frac"] < 1.0:
            updated += 1
            # the first mini-batch is on-policy (KL ~ 0 < 1e-3) and steps; the second sees the moved policy and stops
            assert r["actor/optimizer_steps"] == 1 and r["actor/early_stopped"] == 1.0
            assert math.isfinite(r["actor/loss"])
    assert updated >= 1
