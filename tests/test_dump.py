"""DUMP curriculum (arXiv 2504.09710) and the mixture task it samples from."""

import pytest
import torch

from entropo import registry
from entropo.algorithms.dump import DUMPSampler, softmax_weights, ucb_scores
from entropo.batch import Batch
from entropo.types import Sample


def _mixture(seed=0):
    return registry.get("task", "mixture")(seed=seed, eval_size=4, tasks=[
        {"name": "arithmetic", "label": "easy", "params": {"digits": 1, "chat": False, "template": "{expr}="}},
        {"name": "arithmetic", "params": {"digits": 2, "chat": False, "template": "{expr}="}},
    ])


def test_ucb_and_softmax_by_hand():
    # spec toy: mu = [0.8, 0.3], n = [100, 300], N = 400:
    # UCB = mu + sqrt(2 ln 401 / (n + 1)) = [0.8 + sqrt(11.9883/101), 0.3 + sqrt(11.9883/301)] = [1.14452, 0.49957]
    scores = ucb_scores([0.8, 0.3], [100, 300])
    assert scores == pytest.approx([1.14452, 0.49957], abs=1e-5)
    # softmax(UCB / 0.1): exp(6.4495) : 1 -> [0.99842, 0.00158]
    assert softmax_weights(scores, 0.1) == pytest.approx([0.99842, 0.00158], abs=1e-5)


def test_mixture_task_ranges_tags_and_verifier():
    task = _mixture()
    r0, r1 = task.distribution_ranges()
    assert r0.start == 0 and r1.start == r0.stop and task.train_size() == len(r0) + len(r1)
    ex0, ex1 = task.train_example(r0.start), task.train_example(r1.start + 3)
    assert ex0.meta["distribution"] == 0 and ex0.meta["distribution_name"] == "easy"
    assert ex1.meta["distribution"] == 1 and ex1.meta["distribution_name"] == "arithmetic#1"
    assert task.correct(ex1.answer, ex1) and not task.correct("-1", ex1)
    evals = task.eval_examples()
    assert len(evals) == 8 and [e.meta["distribution"] for e in evals] == [0] * 4 + [1] * 4
    with pytest.raises(ValueError, match="tasks"):
        registry.get("task", "mixture")(seed=0, eval_size=4, tasks=[])


def _batch_for(task, dists_and_adv):
    rows = len(dists_and_adv)
    mask = torch.zeros(rows, 4)
    mask[:, 1:3] = 1
    adv = torch.tensor([a for _, a in dists_and_adv]).unsqueeze(1) * mask
    samples = []
    for j, _ in dists_and_adv:
        idx = task.distribution_ranges()[j].start
        samples.append(Sample(completion="", example=task.train_example(idx), task=task))
    b = Batch(input_ids=torch.zeros(rows, 4, dtype=torch.long), attention_mask=torch.ones(rows, 4, dtype=torch.long),
              response_mask=mask, rewards=torch.zeros(rows), group_ids=torch.arange(rows), info={"sample": samples})
    b.advantages = adv
    return b


def test_update_window_counts_and_probabilities():
    task = _mixture()
    s = DUMPSampler(task, seed=0, window=2, tau=0.1)
    assert s.weights() == pytest.approx([0.5, 0.5])  # unseen arms are symmetric
    metrics = s.update(_batch_for(task, [(0, 1.0), (0, -0.5), (0, 0.25), (1, 0.0)]))
    assert s.recent == [[0.5, 0.25], [0.0]] and s.counts == [3, 1]  # window keeps the last 2 |A| of arm 0
    expected = softmax_weights(ucb_scores([0.375, 0.0], [3, 1]), 0.1)
    assert [metrics["p_0"], metrics["p_1"]] == pytest.approx(expected)
    # by hand: UCB_0 = 0.375 + sqrt(2 ln 5 / 4) = 1.27206, UCB_1 = 0 + sqrt(2 ln 5 / 2) = 1.26864;
    # p_0 = 1 / (1 + exp(-(1.27206 - 1.26864) / 0.1)) = 0.50856
    assert metrics["p_0"] == pytest.approx(0.50856, abs=1e-5)


def test_next_follows_weights_is_seeded_and_resumes():
    task = _mixture()
    s = DUMPSampler(task, seed=3)
    s.recent, s.counts = [[0.9] * 10, [0.0] * 10], [10, 10]  # arm 0 far more learnable
    picks = s.next(200)
    in_easy = sum(i in task.distribution_ranges()[0] for i in picks)
    assert in_easy > 190  # w_0 = softmax([0.9, 0] / 0.1)_0 = 0.99988
    state = s.state_dict()
    a = s.next(20)
    s2 = DUMPSampler(task, seed=99)
    s2.load_state_dict(state)
    assert s2.next(20) == a


def test_dump_needs_a_mixture():
    with pytest.raises(ValueError, match="mixture"):
        DUMPSampler(registry.get("task", "arithmetic")(seed=0, eval_size=4), seed=0)


def test_recipe_logs_per_distribution_probabilities(tmp_path):
    from entropo.cli import RECIPES_DIR
    from entropo.config import load_recipe
    from entropo.logging import read_metrics
    from entropo.trainer import train

    rec = load_recipe(RECIPES_DIR / "dump.yaml", ["warmup.steps=3", "train.steps=3", "rollout.prompts_per_step=4",
                                                  "rollout.n=4", "task.eval_size=2", "logging.progress=false",
                                                  "logging.tensorboard=false", "logging.plots=false",
                                                  "checkpoint.every=0"])
    train(rec, run_dir=tmp_path / "dump", console=lambda *_: None)
    rows = [r for r in read_metrics(tmp_path / "dump") if not r.get("final")]
    assert len(rows) == 3
    for r in rows:
        if r["actor/optimizer_steps"]:
            probs = [r[f"sampler/p_{j}"] for j in range(3)]
            assert sum(probs) == pytest.approx(1.0)
