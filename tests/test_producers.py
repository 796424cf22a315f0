"""The typed contract between the loop and components that add rows or learn beside the policy: the step context
has no back doors, producers return rows the trainer stacks, scores and advantages like every other row (a fixed
advantage keeps a row out of the estimator), objectives see typed per-row markers, and a run with producers resumes
exactly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import tiny_step_world

from entropo import checkpoint
from entropo.batch import Batch
from entropo.components import Bound, Produced, RolloutContext, StepContext
from entropo.config import load_recipe
from entropo.logging import read_metrics
from entropo.registry import register
from entropo.trainer import add_produced_rows, assign_advantages, rollout_batch, score_phase, score_tokens, train


def test_step_context_has_no_sample_or_score_back_doors():
    names = {f.name for f in dataclasses.fields(StepContext)}
    assert names == {"model", "tokenizer", "engine", "task", "rewards", "recipe", "step", "rollout_generator",
                     "device"}
    # only a producer's rollout context can make rows, and only by the loop's own sampling
    assert {f.name for f in dataclasses.fields(RolloutContext)} - names == {"sample"}


def _hand_batch(fixed):
    # groups 0: rewards [1, 0, 0], 1: [1, 1, 0]; a seventh row in group 0 with reward 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    response = torch.tensor([[0.0, 1.0, 1.0]] * 7)
    response[2, 2] = 0.0
    return Batch(input_ids=torch.zeros(7, 3, dtype=torch.long), attention_mask=torch.ones(7, 3),
                 response_mask=response, rewards=rewards, group_ids=torch.tensor([0, 0, 0, 1, 1, 1, 0]),
                 fixed_advantage=torch.tensor(fixed))


def test_fixed_advantage_rows_skip_the_estimator():
    nan = float("nan")
    batch = _hand_batch([nan] * 6 + [1.0])
    assign_advantages(Bound("advantage", "dr_grpo"), batch, None)
    # dr_grpo on the six estimated rows only: group 0 mean 1/3 -> [2/3, -1/3, -1/3]; group 1 mean 2/3 -> [1/3, 1/3,
    # -2/3]; the fixed row would have pulled group 0's mean to 1/4 had the estimator seen it
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, -2 / 3, 1.0])[:, None] * batch.response_mask
    assert torch.allclose(batch.advantages, expected)
    assert batch.estimated.tolist() == [True] * 6 + [False]

    def never(_batch):
        raise AssertionError("the estimator must not run when every row has a fixed advantage")

    everything_fixed = _hand_batch([0.5] * 7)
    bound = Bound("advantage", "dr_grpo")
    bound.fn, bound.takes_step_ctx = never, False
    assign_advantages(bound, everything_fixed, None)
    assert torch.equal(everything_fixed.advantages, 0.5 * everything_fixed.response_mask)


@register("producer", "test_contract_echo")
class Echo:
    """Test producer: returns a copy of the first row in a new group (99) with a fixed advantage 0.5, displacing
    row 1, and counts the rows it saw (state)."""

    def __init__(self, displace: bool = True):
        self.displace, self.seen = displace, 0

    def __call__(self, batch: Batch, ctx: RolloutContext) -> Produced:
        self.seen += batch.size
        rows = batch.select([0])
        rows.group_ids = torch.tensor([99])
        rows.fixed_advantage = torch.tensor([0.5])
        rows.info["behaviour_temperature"] = [None]  # as if sampled under another context: must be re-scored
        return Produced(rows=rows, displaced=[1] if self.displace else [], metrics={"seen": float(batch.size)})


def test_producer_rows_are_stacked_and_scored_by_the_normal_pass():
    world = tiny_step_world(["rollout.max_new_tokens=3"])
    examples = [world.task.train_example(i) for i in range(2)]
    gen = torch.Generator().manual_seed(0)
    batch, _ = rollout_batch(world.engine, world.task, world.rewards, world.recipe, examples, 3, 1.0, gen, 0,
                             torch.device("cpu"))
    producers = [Bound("producer", "test_contract_echo"), Bound("producer", "test_contract_echo",
                                                                {"displace": False})]
    run = world.trainer_run(producers)
    mixed, metrics = add_produced_rows(run, batch, world.rollout_context(gen))
    # first producer: 6 rows -> drop row 1, add a copy of row 0 (6 rows); the second sees those 6 and adds one more
    assert metrics == {"producer/test_contract_echo/seen": 6.0}  # same name: the later value is logged
    assert [p.instance.seen for p in producers] == [6, 6]
    assert mixed.size == 7
    assert mixed.group_ids.tolist() == batch.group_ids[[0, 2, 3, 4, 5]].tolist() + [99, 99]
    assert torch.equal(mixed.input_ids[[0, 5, 6]], batch.input_ids[[0, 0, 0]])
    score_phase(run, mixed)
    lp, ent, _ = score_tokens(world.model, mixed, temperature=1.0, micro_batch_size=8, chunk_size=64)
    # every row scored once by the trainer's pass: rollout rows reuse the engine's exact records, produced rows are
    # recomputed; both agree with a fresh forward
    assert torch.equal(mixed.old_logprobs[:5], mixed.behaviour_logprobs[:5])
    assert torch.allclose(mixed.old_logprobs, lp, atol=1e-5) and torch.allclose(mixed.old_entropy, ent, atol=1e-5)
    assign_advantages(Bound("advantage", "grpo"), mixed, None)
    assert torch.equal(mixed.advantages[5:], 0.5 * mixed.response_mask[5:])


def test_objectives_receive_the_micro_batch_for_typed_row_markers():
    seen = []

    def objective(logprobs, old_logprobs, advantages, mask, *, micro_batch=None):
        seen.append(micro_batch)
        return torch.zeros_like(logprobs), {}

    bound = Bound("objective", "ppo_clip")
    bound.fn, bound.takes_micro_batch, bound.params = objective, True, {}
    batch = _hand_batch([float("nan")] * 7)
    bound(torch.zeros(7, 3), torch.zeros(7, 3), torch.zeros(7, 3), batch.response_mask, micro_batch=batch)
    assert seen == [batch]


def _strip(rows):
    return [json.dumps({k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s", "peak_mem"))},
                       sort_keys=True) for r in rows]


def test_run_with_producers_resumes_exactly(tmp_path, tiny_recipe_overrides):
    ov = tiny_recipe_overrides + [
        "producers=[{name: critique_refine, params: {refine_per_group: 1}}, "
        "{name: aepo, params: {target_entropy: 5.0, threshold: -1.0, max_samples: 3}}]",
        "advantage={name: dr_grpo}", "objective={name: critique_grpo}", "train.steps=3", "logging.tensorboard=false"]
    train(load_recipe(None, ov), run_dir=tmp_path / "a", console=lambda *_: None)
    train(load_recipe(None, ov), run_dir=tmp_path / "b", stop_after=2, console=lambda *_: None)
    train(load_recipe(None, ov), run_dir=tmp_path / "b", resume=True, console=lambda *_: None)
    rows = read_metrics(tmp_path / "a")
    assert _strip(rows) == _strip(read_metrics(tmp_path / "b"))
    steps = [r for r in rows if not r.get("final")]
    # threshold -1: every resampled row counts as a success; 3 rows per step, at T_high (entropy below 5)
    assert all(r["producer/aepo/rows"] == 3.0 and r["producer/aepo/temperature"] == 1.2 for r in steps)
    assert any(r["producer/critique_refine/refined_rows"] > 0 for r in steps)
    assert any(r["actor/refined_token_frac"] > 0 for r in steps)  # the objective saw the off-policy marker
    # H_cur carried in the checkpoint is the last step's mixed-batch entropy
    saved = checkpoint.load(checkpoint.latest(tmp_path / "a"))
    aepo_state = [c for c in saved["components"] if c and "h_cur" in c][0]
    assert aepo_state["h_cur"] == pytest.approx(steps[-1]["entropy/mean"])
