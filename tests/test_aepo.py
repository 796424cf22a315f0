"""AEPO: the temperature controller and REINFORCE-row count (hand values), state round trip, H_cur from the step's
metrics, and the producer on a real tiny-model rollout context: it returns rows with a fixed advantage 1 that the
trainer stacks under the batch, scores with its normal pass and keeps out of the estimator."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_step_world

from entropo import ops, registry
from entropo.algorithms.aepo import AEPO, choose_temperature, first_prompts, reinforce_count
from entropo.components import Bound, Produced
from entropo.trainer import add_produced_rows, assign_advantages, rollout_batch, score_phase, score_tokens


def test_registered_as_stateful_producer():
    assert registry.get("producer", "aepo") is AEPO
    assert "aepo" not in registry.names("shaping")


def test_hand_values_controller():
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


def test_h_cur_is_read_from_the_step_metrics():
    a = AEPO()
    a.update({"entropy/mean": 0.7, "entropy/neg_logprob_mean": 0.9})
    assert a.h_cur == 0.7
    a.update({"accuracy": 0.5})  # a step with no trained batch leaves H_cur as it was
    assert a.h_cur == 0.7
    b = AEPO(entropy_source="neg_logprob")
    b.update({"entropy/mean": 0.7, "entropy/neg_logprob_mean": 0.9})
    assert b.h_cur == 0.9


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
        next_id[0] += stats["groups"]
        # make every group mixed so successes exist on a random tiny model: reward alternates 1, 0, ...
        batch.rewards = torch.tensor([float(i % 2 == 0) for i in range(batch.size)])
        batch.correct = torch.tensor([bool(i % 2 == 0) for i in range(batch.size)])
        return batch

    return world, world.rollout_context(gen, sample), sample, temperatures


def _main_batch(world, sample):
    return sample([world.task.train_example(i) for i in range(4)], 4, 1.0)


@pytest.mark.parametrize("mix", ["add", "replace"])
def test_returned_rows_get_unit_advantage_and_the_normal_scoring_pass(step_setup, mix):
    world, ctx, sample, temperatures = step_setup
    batch = _main_batch(world, sample)
    main = batch.select(list(range(batch.size)))
    producer = Bound("producer", "aepo", {"target_entropy": 100.0, "max_samples": 60, "prompt_fraction": 0.25,
                                          "mix": mix})  # far above the target: T_high
    producer.instance.h_cur = 1.0
    out = producer.instance(batch, ctx)
    assert isinstance(out, Produced) and torch.equal(batch.input_ids, main.input_ids)  # the batch is not touched
    assert temperatures[-1] == 1.2 and out.metrics["temperature"] == 1.2 and out.metrics["h_cur"] == 1.0
    # 1 prompt (floor(4 * 0.25)) x 4 samples with rewards [1, 0, 1, 0]: GRPO advantages [+, -, +, -] -> 2 successes
    assert out.metrics["successes"] == 2 and out.metrics["rows"] == 2 and out.rows.size == 2
    assert out.rows.fixed_advantage.tolist() == [1.0, 1.0] and not out.rows.off_policy.any()
    assert out.displaced == ([0, 1] if mix == "replace" else [])

    # what the trainer does with a producer: stack, score every row once, advantages
    producer.instance.h_cur = 1.0
    run = world.trainer_run([producer])
    mixed, metrics = add_produced_rows(run, batch, ctx)
    assert metrics["producer/aepo/rows"] == 2.0
    assert mixed.size == (16 + 2 if mix == "add" else 16)
    score_phase(run, mixed)
    assign_advantages(Bound("advantage", "grpo"), mixed, ctx)
    added = mixed.select([mixed.size - 2, mixed.size - 1])
    assert torch.equal(added.advantages, added.response_mask)  # 1 on every response token, 0 elsewhere
    # the produced rows are scored exactly like the trainer's old-policy pass (they were sampled at T = 1.2)
    lp, ent, _ = score_tokens(world.model, added, temperature=1.0, micro_batch_size=8, chunk_size=64)
    assert torch.allclose(added.old_logprobs, lp, atol=1e-5) and torch.allclose(added.old_entropy, ent, atol=1e-5)
    width = main.input_ids.shape[1]
    kept_main = mixed.select(list(range(mixed.size - 2)))
    expected_main = main if mix == "add" else main.select(list(range(2, main.size)))
    assert torch.equal(kept_main.input_ids[:, :width], expected_main.input_ids)
    assert len(mixed.info["sample"]) == mixed.size
    # the estimator saw only the main rows: their advantages are GRPO's on them alone
    assert torch.allclose(kept_main.advantages[:, :width], Bound("advantage", "grpo")(expected_main))
    # main rows sampled at the training temperature keep the engine's exact records
    assert torch.equal(kept_main.old_logprobs[:, :width], expected_main.behaviour_logprobs)


def test_above_target_uses_low_temperature_and_halves(step_setup):
    world, ctx, sample, temperatures = step_setup
    batch = _main_batch(world, sample)
    aepo = AEPO(target_entropy=0.0)
    aepo.h_cur = 1.0
    out = aepo(batch, ctx)
    # 2 successes above the target -> floor(2 / 2) = 1 row at T_low
    assert temperatures[-1] == 0.8 and out.metrics["rows"] == 1 and out.rows.size == 1


def test_first_step_uses_the_main_rows_behaviour_entropy(step_setup):
    world, ctx, sample, _ = step_setup
    batch = _main_batch(world, sample)
    out = AEPO(target_entropy=0.0)(batch, ctx)
    expected = float(ops.masked_mean(batch.behaviour_entropy, batch.response_mask))
    assert out.metrics["h_cur"] == pytest.approx(expected)


def test_first_prompts_fraction_at_least_one(step_setup):
    world, ctx, sample, _ = step_setup
    batch = _main_batch(world, sample)
    assert len(first_prompts(batch, 0.25)) == 1 and len(first_prompts(batch, 0.1)) == 1
    assert len(first_prompts(batch, 1.0)) == 4
    assert first_prompts(batch, 0.5)[0] is batch.info["sample"][0].example
