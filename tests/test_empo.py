"""EMPO (arXiv 2504.05812): unsupervised reward = frequency of the response's answer cluster in its group."""

from types import SimpleNamespace

import torch

from entropo import registry
from entropo.algorithms.advantages import grpo
from entropo.algorithms.empo import empo, empo_group_rewards
from entropo.batch import Batch
from entropo.types import Sample

TASK = SimpleNamespace()  # no extract_answer: answers.final_answer falls back to the last number


class SealedExample:
    """An example whose ground truth must never be read."""

    prompt = "q"
    meta = None  # never used by EMPO

    @property
    def answer(self):
        raise AssertionError("EMPO read the ground-truth answer")


class NoAnswerInfo(dict):
    def __getitem__(self, key):
        assert key != "answer", "EMPO read batch.info['answer']"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "answer", "EMPO read batch.info['answer']"
        return super().get(key, default)


def make_batch(groups, L=4, example=None, info_cls=dict):
    completions, gids = [], []
    for g, answers in enumerate(groups):
        completions += [f"so {a}" if a is not None else "no idea" for a in answers]
        gids += [g] * len(answers)
    B = len(completions)
    response_mask = torch.zeros(B, L)
    response_mask[:, 1:] = 1
    example = example if example is not None else SimpleNamespace(prompt="q", answer="7", meta={})
    info = info_cls(sample=[Sample(completion=c, example=example, task=TASK) for c in completions])
    correct = torch.tensor([c == "so 7" for c in completions])
    return Batch(input_ids=torch.ones(B, L, dtype=torch.long), attention_mask=torch.ones(B, L, dtype=torch.long),
                 response_mask=response_mask, rewards=correct.float(), correct=correct,
                 group_ids=torch.tensor(gids), info=info)


SIZES_521 = ["7"] * 5 + ["3"] * 2 + ["9"]


def test_registered():
    assert registry.get("shaping", "empo") is empo
    assert registry.meta("shaping", "empo")["stage"] == "reward"


def test_spec_toy_rewards_and_grpo_advantages():
    # rlvr.md §15 (f): cluster sizes (5, 2, 1) of G = 8 -> r = [.625]*5 + [.25]*2 + [.125]
    batch = make_batch([SIZES_521])
    metrics = empo(batch)
    expected = torch.tensor([0.625] * 5 + [0.25] * 2 + [0.125])
    torch.testing.assert_close(batch.rewards, expected)
    # GRPO: mean = (3.125 + .5 + .125)/8 = .46875; unbiased std = sqrt((5*.15625^2 + 2*.21875^2 + .34375^2)/7)
    # = sqrt(.335938/7) = .21907 -> A = .15625/.21907 = .71324, -.21875/.21907 = -.99854, -.34375/.21907 = -1.56914
    adv = grpo(batch)[:, 1]
    torch.testing.assert_close(adv, torch.tensor([0.71324] * 5 + [-0.99854] * 2 + [-1.56914]), atol=1e-4, rtol=0)
    assert abs(metrics["empo_reward_mean"] - 0.46875) < 1e-6


def test_all_distinct_gives_zero_and_unextractable_gets_zero():
    rewards, entropy = empo_group_rewards([str(i) for i in range(8)])
    assert rewards == [0.0] * 8 and abs(entropy - torch.log(torch.tensor(8.0)).item()) < 1e-6
    # two "4", two unextractable (singletons): p("4") = .5, others get 0
    rewards, _ = empo_group_rewards(["4", "4", None, None])
    assert rewards == [0.5, 0.5, 0.0, 0.0]
    # optional lower threshold: a unanimous group (SE = 0) is skipped when min_entropy = 0
    assert empo_group_rewards(["4"] * 4, min_entropy=0.0)[0] == [0.0] * 4
    assert empo_group_rewards(["4"] * 4)[0] == [1.0] * 4
    # earlier official variant: log-probability
    assert abs(empo_group_rewards(["4", "4", "5", "6"], value="log_prob")[0][0] - torch.log(torch.tensor(.5)).item()) < 1e-6


def test_ground_truth_is_never_read():
    reference = make_batch([SIZES_521, ["1", "2", "2", "8"]])
    empo(reference)
    # garbage ground truth: identical rewards
    garbage = make_batch([SIZES_521, ["1", "2", "2", "8"]], example=SimpleNamespace(prompt="q", answer="garbage"))
    empo(garbage)
    torch.testing.assert_close(garbage.rewards, reference.rewards)
    # an example whose .answer raises, and an info dict that refuses "answer": still identical
    sealed = make_batch([SIZES_521, ["1", "2", "2", "8"]], example=SealedExample(), info_cls=NoAnswerInfo)
    empo(sealed)
    torch.testing.assert_close(sealed.rewards, reference.rewards)


def test_correctness_info_is_left_for_accuracy_metrics():
    batch = make_batch([SIZES_521])
    info_before = batch.correct.clone()
    empo(batch)
    assert torch.equal(batch.correct, info_before)  # the trainer's accuracy comes from here (true verifier)
    assert not torch.equal(batch.rewards, info_before.float())
