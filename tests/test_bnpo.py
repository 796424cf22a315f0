"""BNPO (arXiv 2506.02864): Beta-normalised advantage (hand values), fallbacks, running moments, advantage
decomposition over the batch's reward terms (no re-scoring), state_dict round trip."""

import pytest
import torch

from entropo.algorithms.bnpo import BNPO, beta_parameters
from entropo.batch import Batch
from entropo.components import Bound


def make_batch(rewards, groups, length=3) -> Batch:
    rows = len(rewards)
    mask = torch.ones(rows, length)
    mask[0, -1] = 0.0  # one padded token: advantages must be 0 there
    return Batch(input_ids=torch.zeros(rows, length, dtype=torch.long),
                 attention_mask=torch.ones(rows, length, dtype=torch.long), response_mask=mask,
                 rewards=torch.tensor(rewards, dtype=torch.float32), group_ids=torch.tensor(groups),
                 info={"sample": list(range(rows))})


TOY = ([1, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1])


def test_hand_values():
    # p = 1/3, 2/3 -> mu = 0.5, var = 0.055556 -> mu(1-mu)/var - 1 = 3.5 -> a = b = 1.75 -> alpha = beta = 1.583333
    # Beta(1.58333, 1.58333) pdf at 1/3 = 1.226398 -> 1/pdf = 0.815396; A = (r - p) * 0.815396
    comp = Bound("advantage", "bnpo")
    adv = comp(make_batch(*TOY))
    expected = torch.tensor([0.54360, -0.27180, -0.27180, 0.27180, 0.27180, -0.54360])
    assert torch.allclose(adv[:, 0], expected, atol=1e-5)
    assert comp.instance.last_alpha["total"] == pytest.approx(1.583333, abs=1e-5)
    assert adv[0, -1] == 0.0  # masked token


def test_wide_spread_falls_back_to_dr_grpo():
    # p = [0, 1, 0.5]: mu = 0.5, var = 0.25 -> mu(1-mu)/var - 1 = 0 -> alpha = beta = 1 (uniform pdf) -> A = r - p
    assert beta_parameters(0.5, 0.25) == (1.0, 1.0)
    assert beta_parameters(0.5, 0.5) == (1.0, 1.0)  # a, b < 0 are clamped to 1
    adv = BNPO()(make_batch([0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 2, 2]))
    assert torch.allclose(adv[:, 1], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, -0.5]))


def test_reward_range_rescaling():
    # r in {-1, +1} with r_min = -1 maps to {0, 1}: same advantages as the toy
    rewards = [2 * r - 1 for r in TOY[0]]
    adv = BNPO(r_min=-1.0, r_max=1.0)(make_batch(rewards, TOY[1]))
    assert torch.allclose(adv, BNPO()(make_batch(*TOY)))


def test_singleton_group_and_all_same_rate():
    # single prompt in the batch: mu = 0, var = 1 (official) -> spread = -1, a = 0, b = -1 -> alpha = beta = 1 -> A = r - p
    adv = BNPO()(make_batch([1, 0, 0, 0], [5, 5, 5, 5]))
    assert torch.allclose(adv[:, 1], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # every prompt at p = 0.5 (var 0): finite, huge normaliser parameters; no nan
    adv = BNPO()(make_batch([1, 0, 1, 0], [0, 0, 1, 1]))
    assert torch.isfinite(adv).all()


def test_running_moments_and_state_round_trip():
    # momentum 0.5: step 1 (toy) stores mu = 0.5, var = 0.055556; step 2 batch has p = [0, 1, 0.5] (mu .5, var .25)
    # -> var = 0.5 * 0.055556 + 0.5 * 0.25 = 0.152778 -> spread = 0.25 / 0.152778 - 1 = 0.636364
    # -> a = b = 0.318182 -> alpha = beta = 1 + 0.318182 / 3 = 1.106061
    comp = BNPO(momentum=0.5)
    comp(make_batch(*TOY))
    state = comp.state_dict()
    second = make_batch([0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 2, 2])
    adv = comp(second)
    assert comp.last_alpha["total"] == pytest.approx(1.106061, abs=1e-5)
    density = torch.distributions.Beta(torch.tensor(1.106061), torch.tensor(1.106061)).log_prob(torch.tensor(0.5)).exp()
    assert adv[4, 0] == pytest.approx(0.5 / float(density), abs=1e-5)
    restored = BNPO(momentum=0.5)
    restored.load_state_dict(state)
    assert torch.allclose(restored(second), adv)
    assert torch.allclose(BNPO()(second)[:, 1], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, -0.5]))  # no memory


def test_advantage_decomposition_averages_terms():
    # two reward terms: "correct" = toy rewards, "format" = all 1 (p = 1 -> A = 0); composite = correct + format in
    # [1, 2] mapped with r_min = 1, r_max = 2 -> the toy again. The released code (RayBNPOTrainer.fit) averages
    # only the keys containing "reward_tensor" (acc_reward_tensor, format_reward_tensor), not the combined reward:
    # (A_toy + 0) / 2. The terms come from batch.reward_terms (filled by the trainer), not a re-scoring.
    correct = [float(r) for r in TOY[0]]
    batch = make_batch([r + 1 for r in correct], TOY[1])
    batch.reward_terms = {"correct": torch.tensor(correct), "format": torch.ones(len(correct))}
    comp = Bound("advantage", "bnpo", {"decompose": True, "r_min": 1.0, "r_max": 2.0})
    adv = comp(batch)
    toy = BNPO()(make_batch(*TOY))
    assert torch.allclose(adv, toy / 2, atol=1e-6)
    # the hand values: (1/2) * [0.54360, -0.27180, -0.27180, 0.27180, 0.27180, -0.54360]
    expected = torch.tensor([0.27180, -0.13590, -0.13590, 0.13590, 0.13590, -0.27180])
    assert torch.allclose(adv[:, 0], expected, atol=1e-5)
    assert set(comp.instance.last_alpha) == {"term/correct", "term/format"}  # no "total" fit by default
    # opt-in extension (not in the released code): the composite as a third term, (A_toy + A_toy + 0) / 3
    with_total = BNPO(decompose=True, include_total=True, r_min=1.0, r_max=2.0)
    adv = with_total(batch)
    assert torch.allclose(adv, 2 * toy / 3, atol=1e-6)
    assert set(with_total.last_alpha) == {"total", "term/correct", "term/format"}
    with pytest.raises(ValueError, match="reward_terms"):
        BNPO(decompose=True)(make_batch(*TOY))


def reference_decomposed_advantage(terms: dict, group_ids: list[int]) -> torch.Tensor:
    """Independent re-statement of the released loop: per reward term (in [0, 1]) the BNPO outcome advantage with
    its own Beta fit (group mean p, singleton -> 0; mean / unbiased variance of the per-prompt p; alpha, beta =
    max(1 + a / 3, 1), ...; A = clamp(1 / pdf(p), 0, 1e6) (r - p)), then the plain average over the terms."""
    out = []
    for scores in terms.values():
        groups: dict[int, list[float]] = {}
        for g, r in zip(group_ids, scores):
            groups.setdefault(g, []).append(float(r))
        means = {g: (0.0 if len(v) == 1 else sum(v) / len(v)) for g, v in groups.items()}
        ps = torch.tensor(list(means.values()), dtype=torch.float64)
        mu, var = float(ps.mean()), float(ps.var())
        a = (mu * (1 - mu) / var - 1) * mu
        b = (mu * (1 - mu) / var - 1) * (1 - mu)
        dist = torch.distributions.Beta(torch.tensor(max(1 + a / 3, 1.0), dtype=torch.float64),
                                        torch.tensor(max(1 + b / 3, 1.0), dtype=torch.float64))
        adv = [float((1 / dist.log_prob(torch.tensor(means[g], dtype=torch.float64)).exp()).clamp(0, 1e6))
               * (float(r) - means[g]) for g, r in zip(group_ids, scores)]
        out.append(torch.tensor(adv))
    return torch.stack(out).mean(0)


def test_decomposition_matches_released_loop_on_two_terms():
    # accuracy and format both vary, so both terms have non-trivial Beta fits
    acc = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    fmt = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    batch = make_batch([a + f for a, f in zip(acc, fmt)], groups)
    batch.reward_terms = {"accuracy": torch.tensor(acc), "format": torch.tensor(fmt)}
    adv = BNPO(decompose=True)(batch)[:, 0]
    expected = reference_decomposed_advantage({"acc": acc, "format": fmt}, groups)
    assert torch.allclose(adv, expected.float(), atol=1e-5)


def test_decomposition_reads_the_terms_the_rollout_recorded():
    # a real scored rollout: the runner's per-reward values land in batch.reward_terms, and BNPO uses exactly those
    # (unfinished rows carry 0, as the runner never saw them); BNPO no longer takes a step context
    import inspect

    from conftest import tiny_step_world

    from entropo.trainer import rollout_batch

    world = tiny_step_world(["rollout.max_new_tokens=3"])
    examples = [world.task.train_example(i) for i in range(3)]
    batch, _ = rollout_batch(world.engine, world.task, world.rewards, world.recipe, examples, 4, 1.0,
                             torch.Generator().manual_seed(0), 0, torch.device("cpu"))
    assert set(batch.reward_terms) == {"correct"}
    assert torch.equal(batch.reward_terms["correct"], batch.rewards)  # one unit-weight term: the composite
    adv = BNPO(decompose=True, include_total=False)(batch)
    assert torch.allclose(adv, BNPO()(batch), atol=1e-6)
    assert "step_ctx" not in inspect.signature(BNPO.__call__).parameters
