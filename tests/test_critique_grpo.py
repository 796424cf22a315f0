"""Critique-GRPO: the shaping function f(p) = p/(p+γ) (hand values), the mixed-group advantages, critics and
refinement prompts, the objective (normal rows = ppo_clip, refined rows = −A·f(π)), and one real refinement pass on
the tiny model (rows returned by the producer into the right groups, trained under the original prompt, scored by the
trainer's normal pass, deterministic)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_step_world

from entropo import registry
from entropo.algorithms.critique_grpo import (
    CritiqueRefine,
    binary_critique,
    choose_refinements,
    critique_grpo,
    ground_truth_critique,
    refinement_candidates,
    refinement_prompt,
    resolve_critic,
    shaping_value,
)
from entropo.algorithms.objectives import ppo_clip
from entropo.batch import Batch
from entropo.components import Bound, Produced
from entropo.trainer import add_produced_rows, rollout_batch, score_phase, score_tokens
from entropo.types import Example, Sample


def test_registered():
    assert registry.get("producer", "critique_refine") is CritiqueRefine
    assert registry.get("objective", "critique_grpo") is critique_grpo


def test_hand_values_shaping_function_and_gradient():
    # f(p) = p/(p+0.1); df/dlogp = p * f'(p) = 0.1 p / (p+0.1)^2
    # p=0.01: 0.01/0.11 = 0.090909, 0.001/0.0121 = 0.082645; p=0.1: 0.5, 0.01/0.04 = 0.25
    # p=0.5: 0.5/0.6 = 0.833333, 0.05/0.36 = 0.138889; p=0.9: 0.9/1.0 = 0.9, 0.09/1.0 = 0.09
    p = torch.tensor([0.01, 0.1, 0.5, 0.9])
    logp = p.log().requires_grad_()
    f = shaping_value(logp.exp(), 0.1)
    f.sum().backward()
    assert torch.allclose(f.detach(), torch.tensor([0.090909, 0.5, 0.833333, 0.9]), atol=1e-5)
    assert torch.allclose(logp.grad, torch.tensor([0.082645, 0.25, 0.138889, 0.09]), atol=1e-5)


def test_hand_values_mixed_group_advantage():
    # 7 initial rewards [0,0,0,0,0,0,1] + a correct refinement in the same group: mean = 2/8 = 0.25
    # r - mean: refinement 1 - 0.25 = 0.75, wrong initials -0.25, the correct initial 0.75
    rewards = torch.tensor([0.0] * 6 + [1.0, 1.0])
    batch = Batch(input_ids=torch.ones(8, 2, dtype=torch.long), attention_mask=torch.ones(8, 2),
                  response_mask=torch.tensor([[0.0, 1.0]] * 8), rewards=rewards, group_ids=torch.zeros(8).long())
    adv = Bound("advantage", "dr_grpo")(batch)[:, 1]
    assert torch.allclose(adv, torch.tensor([-0.25] * 6 + [0.75, 0.75]))


def _tokens(rows: int, cols: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    logprobs = (torch.rand(rows, cols, generator=g) * -3).requires_grad_()
    old = logprobs.detach() + 0.3 * torch.randn(rows, cols, generator=g)
    adv = torch.randn(rows, 1, generator=g).expand(rows, cols).clone()
    return logprobs, old, adv, torch.ones(rows, cols)


def _rows(off_policy) -> Batch:
    """A micro-batch carrying only the per-row marker the objective reads."""
    off_policy = torch.as_tensor(off_policy, dtype=torch.bool)
    rows = off_policy.numel()
    return Batch(input_ids=torch.zeros(rows, 1, dtype=torch.long), attention_mask=torch.ones(rows, 1),
                 response_mask=torch.ones(rows, 1), rewards=torch.zeros(rows), group_ids=torch.arange(rows),
                 off_policy=off_policy)


def test_objective_normal_rows_equal_ppo_clip_and_refined_rows_are_shaped():
    logprobs, old, adv, mask = _tokens(4, 5, 0)
    loss, m = critique_grpo(logprobs, old, adv, mask, clip_low=0.2, clip_high=0.28, gamma=0.1,
                            micro_batch=_rows([False, True, False, True]))
    loss.sum().backward()
    grad = logprobs.grad.clone()
    lp2 = logprobs.detach().clone().requires_grad_()
    ref_loss, _ = ppo_clip(lp2, old, adv, mask, clip_low=0.2, clip_high=0.28)
    ref_loss.sum().backward()
    normal = [0, 2]
    assert torch.allclose(loss[normal], ref_loss[normal]) and torch.allclose(grad[normal], lp2.grad[normal])
    # refined rows: loss -A p/(p+0.1), gradient -A * 0.1 p/(p+0.1)^2 (no ratio, no clip, old log-probs unused)
    p = logprobs.detach().exp()[[1, 3]]
    a = adv[[1, 3]]
    assert torch.allclose(loss[[1, 3]].detach(), -a * p / (p + 0.1))
    assert torch.allclose(grad[[1, 3]], -a * 0.1 * p / (p + 0.1) ** 2)
    assert m["refined_token_frac"] == pytest.approx(0.5)


def test_objective_without_marker_is_ppo_clip_and_zero_advantage_gives_zero_gradient():
    logprobs, old, adv, mask = _tokens(3, 4, 1)
    loss, _ = critique_grpo(logprobs, old, adv, mask)
    assert torch.allclose(loss, ppo_clip(logprobs, old, adv, mask)[0])
    loss, _ = critique_grpo(logprobs, old, adv, mask, micro_batch=_rows([False] * 3))
    assert torch.allclose(loss, ppo_clip(logprobs, old, adv, mask)[0])
    loss, _ = critique_grpo(logprobs, old, torch.zeros_like(adv), mask, micro_batch=_rows([True] * 3))
    loss.sum().backward()
    assert torch.count_nonzero(logprobs.grad) == 0
    # remove_clip: -A * rho on normal rows
    loss, _ = critique_grpo(logprobs.detach(), old, adv, mask, remove_clip=True)
    assert torch.allclose(loss, -adv * (logprobs.detach() - old).exp())


def _sample(completion: str, answer: str = "16", prompt="3+5+8=") -> Sample:
    return Sample(completion=completion, example=Example(prompt=prompt, answer=answer), task=None)


def test_critics_and_refinement_prompts():
    s = _sample("12")
    assert binary_critique(s, False) == "The answer 12 is incorrect."
    assert ground_truth_critique(s, False) == "The answer 12 is incorrect. The correct answer is 16."
    assert resolve_critic("binary") is binary_critique
    assert resolve_critic("entropo.algorithms.critique_grpo:ground_truth_critique") is ground_truth_critique
    with pytest.raises(ValueError):
        resolve_critic("oracle")
    text = refinement_prompt(s.example, "12", "The answer 12 is incorrect.")
    assert text == "3+5+8=12\nThe answer 12 is incorrect.\n3+5+8="
    chat = refinement_prompt(Example(prompt=[{"role": "user", "content": "3+5+8?"}], answer="16"), "12", "Wrong.")
    assert chat[0] == {"role": "user", "content": "3+5+8?"} and chat[1] == {"role": "assistant", "content": "12"}
    assert chat[2]["role"] == "user" and chat[2]["content"].startswith("Wrong.\n")


def test_candidates_and_choice():
    batch = Batch(input_ids=torch.ones(6, 2, dtype=torch.long), attention_mask=torch.ones(6, 2),
                  response_mask=torch.ones(6, 2), rewards=torch.zeros(6),
                  group_ids=torch.tensor([3, 3, 3, 4, 4, 4]),
                  correct=torch.tensor([False, True, False, False, False, False]))
    assert refinement_candidates(batch, None) == [0, 2, 3, 4, 5]
    assert refinement_candidates(batch, 1) == [0, 3]
    # group 5: first correct (index 1) beats a higher-reward wrong one; group 7: highest reward, first on ties
    assert choose_refinements([5, 5, 7, 7, 7], [2.0, 1.0, 0.2, 0.5, 0.5], [False, True, False, False, False],
                              "best") == [1, 3]
    assert choose_refinements([5, 7], [0.0, 0.0], [False, False], "all") == [0, 1]
    with pytest.raises(ValueError):
        CritiqueRefine(keep="first")


@pytest.fixture(scope="module")
def setup():
    world = tiny_step_world(["rollout.prompts_per_step=2", "rollout.n=3", "rollout.max_new_tokens=3"])
    recipe, model, task, engine, rewards = world.recipe, world.model, world.task, world.engine, world.rewards

    def run(seed: int):
        gen = torch.Generator().manual_seed(seed)
        ctx = world.rollout_context(gen)
        examples = [task.train_example(i) for i in range(2)]
        batch, _ = rollout_batch(engine, task, rewards, recipe, examples, 3, 1.0, gen, 10, torch.device("cpu"))
        # force known correctness: row 1 of group 10 is "correct", every other row wrong
        batch.correct = torch.tensor([False, True, False, False, False, False])
        batch.rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
        main = batch.select(list(range(batch.size)))
        producer = Bound("producer", "critique_refine", {"critique": "ground_truth", "refine_per_group": 2,
                                                         "keep": "best"})
        run = world.trainer_run([producer])
        mixed, metrics = add_produced_rows(run, batch, ctx)  # what the trainer does with a producer's rows
        score_phase(run, mixed)
        return main, mixed, metrics, model, engine, examples

    return run


def test_producer_returns_rows_without_touching_the_batch(setup):
    world = tiny_step_world(["rollout.prompts_per_step=2", "rollout.n=3", "rollout.max_new_tokens=3"])
    gen = torch.Generator().manual_seed(0)
    examples = [world.task.train_example(i) for i in range(2)]
    batch, _ = rollout_batch(world.engine, world.task, world.rewards, world.recipe, examples, 3, 1.0, gen, 10,
                             torch.device("cpu"))
    before = batch.select(list(range(batch.size)))
    out = CritiqueRefine(refine_per_group=1)(batch, world.rollout_context(gen))
    assert isinstance(out, Produced) and out.displaced == []
    assert torch.equal(batch.input_ids, before.input_ids) and batch.extras.keys() == before.extras.keys()
    assert out.rows is not None and out.rows.size == out.metrics["refined_rows"] > 0
    assert out.rows.off_policy.all() and out.rows.estimated.all()  # off-policy, advantages from the estimator


def test_refinements_join_their_groups_under_the_original_prompt(setup):
    main, batch, metrics, model, engine, examples = setup(0)
    # candidates: group 10 rows 0, 2; group 11 rows 3, 4 -> one best refinement per group is added
    assert metrics["producer/critique_refine/candidates"] == 4
    assert metrics["producer/critique_refine/refined_rows"] == 2
    assert batch.size == 8
    assert batch.group_ids.tolist() == [10, 10, 10, 11, 11, 11, 10, 11]
    assert batch.off_policy.tolist() == [False] * 6 + [True, True]
    width = main.input_ids.shape[1]
    assert torch.equal(batch.input_ids[:6, :width], main.input_ids)  # main rows untouched
    for row, example in zip([6, 7], examples):
        ids = batch.input_ids[row]
        prompt = engine.encode_prompt(example.prompt)
        first = int(batch.response_mask[row].nonzero()[0])
        # trained under the ORIGINAL question: the tokens just before the response are the original prompt
        assert ids[first - len(prompt):first].tolist() == prompt
        assert batch.info["sample"][row].example is example
        assert batch.info["completion"][row] == engine.tokenizer.decode(ids[batch.response_mask[row] > 0],
                                                                         skip_special_tokens=True)
    refined = batch.select([6, 7])
    # the trainer's normal scoring pass scored them under the original prompt
    lp, ent, _ = score_tokens(model, refined, temperature=1.0, micro_batch_size=8, chunk_size=64)
    assert torch.allclose(refined.old_logprobs, lp, atol=1e-5) and torch.allclose(refined.old_entropy, ent, atol=1e-5)
    # the documented advantage: r - mean over the mixed group (refinement included)
    adv = Bound("advantage", "dr_grpo")(batch)
    for row in (6, 7):
        group = batch.group_ids == batch.group_ids[row]
        expected = batch.rewards[row] - batch.rewards[group].mean()
        assert torch.allclose(adv[row][batch.response_mask[row] > 0], expected.expand(int(batch.response_lengths[row])))


def test_deterministic(setup):
    _, a, ma, *_ = setup(3)
    _, b, mb, *_ = setup(3)
    assert ma == mb and torch.equal(a.input_ids, b.input_ids) and a.info["completion"] == b.info["completion"]
