"""AEPO: the temperature controller and REINFORCE-row count (spec §4 (f) toy), state round trip, and one call on a
real tiny-model step context: rows are added with advantage 1, scored like the trainer, and mixed in place."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_step_world

from entropo import registry
from entropo.algorithms.aepo import AEPO, choose_temperature, first_prompts, reinforce_count
from entropo.components import Bound
from entropo.trainer import rollout_batch, score_tokens


def test_registered_as_stateful_advantage_stage_shaping():
    assert registry.get("shaping", "aepo") is AEPO
    assert registry.meta("shaping", "aepo")["stage"] == "advantage"


def test_spec_toy_controller():
    # H_cur = 0.42 <= H* = 0.5 -> T_high = 1.2; 27 successes, N_R = 60 -> s = min(60, 27) = 27
    assert choose_temperature(0.42, 0.5, 1.2, 0.8) == 1.2
    assert reinforce_count(27, 60, below_target=True) == 27
    # H_cur = 0.60 > 0.5 -> T_low = 0.8 and s = floor(27 / 2) = 13
    assert choose_temperature(0.60, 0.5, 1.2, 0.8) == 0.8
    assert reinforce_count(27, 60, below_target=False) == 13
    # at the target exactly: "<=" -> T_high; N_R caps the count
    assert choose_temperature(0.5, 0.5, 1.2, 0.8) == 1.2
    assert reinforce_count(100, 60, True) == 60 and reinforce_count(100, 60, False) == 30


def test_state_round_trip():
    a = AEPO(target_entropy=0.3)
    a.h_cur = 0.4217
    b = AEPO(target_entropy=0.3)
    b.load_state_dict(a.state_dict())
    assert b.h_cur == 0.4217 and b.state_dict() == {"h_cur": 0.4217}


def test_bad_params():
    with pytest.raises(ValueError):
        AEPO(mix="swap")
    with pytest.raises(ValueError):
        AEPO(entropy_source="logits")


@pytest.fixture(scope="module")
def step_setup():
    world = tiny_step_world(["rollout.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=4"])
    gen = torch.Generator().manual_seed(0)
    next_id = [0]
    temperatures = []

    def sample(examples, n, temperature):
        temperatures.append(temperature)
        batch, stats = rollout_batch(world.engine, world.task, world.rewards, world.recipe, examples, n, temperature,
                                     gen, next_id[0], torch.device("cpu"))
        next_id[0] += len(examples)
        # make every group mixed so successes exist on a random tiny model: reward alternates 1, 0, ...
        batch.rewards = torch.tensor([float(i % 2 == 0) for i in range(batch.size)])
        batch.correct = torch.tensor([bool(i % 2 == 0) for i in range(batch.size)])
        return batch, stats

    return world.recipe, world.model, world.context(gen, sample), sample, temperatures


def _main_batch(recipe, model, ctx, sample):
    examples = [ctx.task.train_example(i) for i in range(4)]
    batch, _ = sample(examples, 4, 1.0)
    batch.old_logprobs, batch.old_entropy, _ = score_tokens(model, batch, temperature=1.0, micro_batch_size=8,
                                                            chunk_size=64)
    batch.advantages = Bound("advantage", "grpo")(batch)
    return batch


@pytest.mark.parametrize("mix", ["add", "replace"])
def test_call_adds_scored_rows_with_unit_advantage(step_setup, mix):
    recipe, model, ctx, sample, temperatures = step_setup
    batch = _main_batch(recipe, model, ctx, sample)
    main_ids = batch.input_ids.clone()
    aepo = AEPO(target_entropy=100.0, max_samples=60, prompt_fraction=0.25, mix=mix)  # far above: T_high
    aepo.h_cur = 1.0
    m = aepo(batch, step_ctx=ctx)
    assert temperatures[-1] == 1.2 and m["aepo_temperature"] == 1.2 and m["aepo_h_cur"] == 1.0
    # 1 prompt (floor(4 * 0.25)) x 4 samples with rewards [1, 0, 1, 0]: GRPO advantages [+, -, +, -] -> 2 successes
    assert m["aepo_successes"] == 2 and m["aepo_rows"] == 2
    assert batch.size == (16 + 2 if mix == "add" else 16)
    added = batch.select([0, 1])
    # advantage 1 on every response token of the added rows, 0 elsewhere
    assert torch.equal(added.advantages, added.response_mask)
    # added rows are scored exactly like the trainer's old-policy pass
    lp, ent, _ = score_tokens(model, added, temperature=1.0, micro_batch_size=8, chunk_size=64)
    assert torch.allclose(added.old_logprobs, lp) and torch.allclose(added.old_entropy, ent)
    width = main_ids.shape[1]
    kept_main = batch.input_ids[2:, :width] if batch.input_ids.shape[1] >= width else None
    expected_main = main_ids if mix == "add" else main_ids[2:]
    assert kept_main is not None and torch.equal(kept_main, expected_main)
    assert len(batch.info["sample"]) == batch.size
    # H_cur for the next step is this mixed batch's mean token entropy
    assert aepo.h_cur == pytest.approx(float((batch.old_entropy * batch.response_mask).sum() /
                                             batch.response_mask.sum()), rel=1e-5)


def test_above_target_uses_low_temperature_and_halves(step_setup):
    recipe, model, ctx, sample, temperatures = step_setup
    batch = _main_batch(recipe, model, ctx, sample)
    aepo = AEPO(target_entropy=0.0)
    aepo.h_cur = 1.0
    m = aepo(batch, step_ctx=ctx)
    # 2 successes above the target -> floor(2 / 2) = 1 row at T_low
    assert temperatures[-1] == 0.8 and m["aepo_rows"] == 1 and batch.size == 17


def test_first_prompts_fraction_at_least_one(step_setup):
    recipe, model, ctx, sample, _ = step_setup
    batch = _main_batch(recipe, model, ctx, sample)
    assert len(first_prompts(batch, 0.25)) == 1 and len(first_prompts(batch, 0.1)) == 1
    assert len(first_prompts(batch, 1.0)) == 4
    assert first_prompts(batch, 0.5)[0] is batch.info["sample"][0].example


