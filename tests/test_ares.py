"""ARES (arXiv 2510.08457): HWE counting, the bucketed entropy reward with adaptive alpha, and the per-bucket
adaptive KL regularizer."""

import math

import pytest
import torch

from entropo import registry
from entropo.algorithms.ares import (
    AresEntropyReward,
    AresKL,
    difficulty_buckets,
    entropy_reward,
    hwe_counts,
    trigger_positions,
)
from entropo.batch import Batch
from entropo.types import TokenContext


class WordTokenizer:
    def __init__(self, vocab):
        self.vocab = list(vocab)

    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.vocab[i[0]] for i in ids]


def test_registered():
    assert registry.get("shaping", "ares") is AresEntropyReward
    assert registry.meta("shaping", "ares")["stage"] == "reward"
    assert registry.get("regularizer", "ares_kl") is AresKL
    assert registry.meta("regularizer", "ares_kl")["needs_ref"] is True


@pytest.mark.parametrize("correct,bucket,count,target,expected", [
    # easy & correct: delta 6, m = max(1, .15*4) = 1, over 5 > kappa 2 -> Huber 5 - 1 = 4; 4/(1+2)*.5 = .667 -> cap .5
    (True, 0, 10, 4, -0.5),
    # easy & correct: delta 1 <= m -> no penalty
    (True, 0, 5, 4, 0.0),
    # easy & wrong: sigmoid(0) * cap .5 * .6 = .15
    (False, 0, 4, 4, 0.15),
    # medium & correct: |delta| 4 - m 2 = 2 <= kappa 3 -> 4/6 = .6667; .6667/(2+3)*.5 = .06667
    (True, 1, 4, 8, -0.06667),
    # hard & correct: delta 6, m = 1.4 -> sigmoid(7.4/3) * .6 = .921772 * .6 = .553063
    # (the spec prints .55311: a rounding slip of 5e-5; the formula is the official aepo.py one)
    (True, 2, 10, 4, 0.553063),
    # hard & wrong: over = 6 - 1.4 = 4.6 -> sigmoid(4.6/3) * .6 = .822493 * .6 = .493496 (spec prints .49345)
    (False, 2, 10, 4, 0.493496),
    # hard & correct, far below: delta -9 < -m (3.5) -> Huber(5.5; 4) = 3.5; .5 * 3.5/7.5 * .6 = .14
    (True, 2, 1, 10, -0.14),
])
def test_spec_toy_rewards(correct, bucket, count, target, expected):
    assert abs(entropy_reward(correct, bucket, count, target, 0.5) - expected) < 1e-5


def test_hwe_counts_by_hand():
    # response = positions 1..6 of row 0; window 2, tau 1.5; triggers at response positions 0, 2, 3 (and 4, whose
    # window would run past the end, so it is skipped)
    entropy = torch.tensor([[9.0, 0.1, 2.0, 1.0, 2.0, 3.0, 0.5]])
    mask = torch.tensor([[0.0, 1, 1, 1, 1, 1, 1]])
    trig = torch.tensor([[True, True, False, True, True, True, False]])  # position 0 is the prompt: ignored
    counts, costs = hwe_counts(entropy, mask, trig, window=2, tau=1.5)
    # response entropies h = [.1, 2, 1, 2, 3, .5]; windows (next 2): i=0 -> (2+1)/2 = 1.5 (>= tau, cost 0);
    # i=2 -> (2+3)/2 = 2.5 (cost 1.0); i=3 -> (3+.5)/2 = 1.75 (cost .25); i=4: only 1 token left -> skipped
    assert counts.tolist() == [3.0] and abs(costs.item() - 1.25) < 1e-6
    short, _ = hwe_counts(entropy[:, :3], mask[:, :3], trig[:, :3], window=2, tau=0.0)
    assert short.tolist() == [0.0]  # 2 response tokens: no full window


def test_trigger_words_match_normalised_tokens():
    tok = WordTokenizer(["▁Wait", "Ġbut", " x", "HMM ", "waiting"])
    ids = torch.tensor([[2, 0, 1, 2, 3, 4]])
    mask = torch.tensor([[0.0, 1, 1, 1, 1, 1]])
    hits = trigger_positions(ids, mask, tok, ["wait", "but", "hmm"])
    assert hits.tolist() == [[False, True, True, False, True, False]]
    assert trigger_positions(ids, mask, tok, "all").tolist() == [[False] + [True] * 5]


def test_difficulty_buckets():
    correct = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    # accuracies .75 (easy), .25 (hard), 0 (hard); 2/3 exactly would be easy, 1/3 medium
    assert difficulty_buckets(correct, groups).tolist() == [0] * 4 + [2] * 8
    assert difficulty_buckets(torch.tensor([1, 0, 0]), torch.tensor([0, 0, 0])).tolist() == [1] * 3


def shaping_batch():
    # 4 response tokens per row (positions 1..4); window 1, tau 1, every position a trigger:
    # count = #{t in 1..3 : h[t] >= 1}
    ent = [[0, 2, 2, 0], [0, 2, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0],  # group 0: counts 2, 1, 1, 0
           [0, 2, 2, 2], [0, 2, 2, 2], [0, 2, 2, 0], [0, 0, 2, 2]]  # group 1: counts 3, 3, 2, 2
    B = 8
    entropy = torch.cat([torch.zeros(B, 1), torch.tensor(ent, dtype=torch.float32)], dim=1)
    mask = torch.cat([torch.zeros(B, 1), torch.ones(B, 4)], dim=1)
    correct = [True, True, True, False, False, False, False, False]
    return Batch(input_ids=torch.ones(B, 5, dtype=torch.long), attention_mask=torch.ones(B, 5, dtype=torch.long),
                 response_mask=mask, rewards=torch.tensor([float(c) for c in correct]),
                 group_ids=torch.tensor([0] * 4 + [1] * 4), old_entropy=entropy,
                 correct=torch.tensor(correct))


def test_shaping_alpha_targets_and_rewards_by_hand():
    shaper = AresEntropyReward(window=1, tau=1.0, triggers="all")
    batch = shaping_batch()
    metrics = shaper(batch)
    # group 0: acc .75 -> easy; mean count 1.0 -> target 1; alpha += .05 * (1 - 1) = .5
    # group 1: acc 0 -> hard; mean count 2.5 -> target round(2.5) = 2; alpha += .05 * (2 - 2.5) -> .475
    assert shaper.target == [1.0, 1.0, 2.0] and shaper.alpha[0] == 0.5 and abs(shaper.alpha[2] - 0.475) < 1e-9
    # easy & correct, counts 2/1/1 vs target 1 (m = 1): no penalty -> reward 1; easy & wrong count 0: .5 * .5 * .6
    # hard & wrong, counts 3/3/2/2 vs target 2 (m = max(1, .7) = 1): over = 0 -> sigmoid(0) * .475 * 1.2 = .285
    expected = torch.tensor([1.0, 1.0, 1.0, 0.15, 0.285, 0.285, 0.285, 0.285])
    torch.testing.assert_close(batch.rewards, expected)
    assert batch.extras["ares_bucket"].tolist() == [0] * 4 + [2] * 4
    # soft costs: sum of (h - 1)+ over windows -> 2, 1, 1, 0, 3, 3, 2, 2
    assert batch.extras["ares_soft_cost"].tolist() == [2, 1, 1, 0, 3, 3, 2, 2]
    assert metrics["ares_alpha_hard"] == pytest.approx(0.475)
    clone = AresEntropyReward()
    clone.load_state_dict(shaper.state_dict())
    assert clone.state_dict() == shaper.state_dict()


def kl_ctx(logprobs, ref, bucket, relax=None):
    B, L = logprobs.shape
    mask = torch.ones(B, L)
    batch = Batch(input_ids=torch.ones(B, L, dtype=torch.long), attention_mask=torch.ones(B, L, dtype=torch.long),
                  response_mask=mask, rewards=torch.zeros(B), group_ids=torch.arange(B))
    extras = {"ares_kl_bucket": torch.tensor(bucket),
              "ares_kl_relax": torch.ones(B) if relax is None else torch.tensor(relax)}
    return TokenContext(logprobs=logprobs, entropy=torch.zeros(B, L), old_logprobs=logprobs.detach(),
                        ref_logprobs=ref, advantages=torch.zeros(B, L), mask=mask, batch=batch, extras=extras)


def test_kl_loss_is_beta_times_relax_times_k3():
    reg = AresKL(update_interval=1)
    reg.beta = [2.0, 1.0, 0.5]
    lp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    ref = torch.full((2, 2), -1.5)
    loss, metrics = reg(kl_ctx(lp, ref, [0, 2], relax=[0.67, 1.0]))
    k3 = math.exp(-0.5) + 0.5 - 1  # 0.106531 (rlvr.md §25.6)
    torch.testing.assert_close(loss.detach(), torch.tensor([[2 * 0.67 * k3] * 2, [0.5 * k3] * 2]))
    loss.sum().backward()  # differentiable through the current log-probs
    assert lp.grad is not None and metrics["beta_easy"] == 2.0


def test_kl_controller_update_by_hand_and_state_round_trip():
    reg = AresKL(target=0.01, ema_decay=0.97, lr=0.05, error_clip=0.2, deadzone=0.02, update_interval=1)
    x = math.log(1.2)  # choose ref so that the easy row's per-token k3 is exactly 0.02: solve e^x - x - 1 = 0.02
    for _ in range(50):
        x -= (math.exp(x) - x - 1 - 0.02) / (math.exp(x) - 1)
    lp = torch.zeros(1, 3)
    reg(kl_ctx(lp, torch.full((1, 3), x), [0]))
    reg.update({})
    # step 1: kl_ema = .02 (first value); e = .02/.01 - 1 = 1; e_ema = .03 * 1 = .03; log beta = .05 * .03 = .0015
    assert reg.kl_ema[0] == pytest.approx(0.02, abs=1e-7)
    assert reg.beta[0] == pytest.approx(math.exp(0.0015), rel=1e-6)
    assert reg.beta[1] == 1.0 and reg.beta[2] == 1.0  # buckets without samples are untouched
    # step 2 with KL .01: kl_ema = .03*.01 + .97*.02 = .0197; e = .97; e_ema = .03*.97 + .97*.03 = .0582;
    # log beta = .0015 + .05 * .0582 = .00441
    y = x
    for _ in range(50):
        y -= (math.exp(y) - y - 1 - 0.01) / (math.exp(y) - 1)
    reg(kl_ctx(lp, torch.full((1, 3), y), [0]))
    reg.update({})
    assert reg.kl_ema[0] == pytest.approx(0.0197, abs=1e-7)
    assert reg.beta[0] == pytest.approx(math.exp(0.00441), rel=1e-5)
    clone = AresKL()
    clone.load_state_dict(reg.state_dict())
    assert clone.state_dict() == reg.state_dict()


def test_kl_controller_deadzone_interval_and_clip():
    reg = AresKL(target=0.01, update_interval=2, deadzone=0.02)
    lp = torch.zeros(1, 2)
    reg(kl_ctx(lp, lp.clone(), [1]))  # KL 0 -> e = -1, but update 1 is not a multiple of the interval 2
    reg.update({})
    assert reg.beta[1] == 1.0 and reg.e_ema[1] == 0.0
    reg(kl_ctx(lp, lp.clone(), [1]))
    reg.update({})  # update 2: e_ema = .03 * -1 = -.03 -> log beta = -.0015
    assert reg.beta[1] == pytest.approx(math.exp(-0.0015))
    reg.update({})  # nothing pooled since the last update: no-op
    assert reg.updates == 2


def test_kl_pooling_is_independent_of_the_micro_batch_split():
    torch.manual_seed(0)
    lp, ref = -torch.rand(4, 3), -torch.rand(4, 3)
    buckets = [0, 0, 2, 2]
    whole, split = AresKL(update_interval=1), AresKL(update_interval=1)
    whole(kl_ctx(lp, ref, buckets))
    split(kl_ctx(lp[:1], ref[:1], buckets[:1]))
    split(kl_ctx(lp[1:], ref[1:], buckets[1:]))
    whole.update({})
    split.update({})
    assert whole.beta == pytest.approx(split.beta) and whole.kl_ema == pytest.approx(split.kl_ema)


def test_prepare_buckets_and_second_chance():
    reg = AresKL(second_chance_min_cost=0.5, second_chance_scale=0.67)
    batch = shaping_batch()
    batch.extras["ares_soft_cost"] = torch.tensor([0.0, 0, 0, 0.9, 1, 1, 1, 1])
    out = reg.prepare(batch, None)
    assert out["ares_kl_bucket"].tolist() == [0] * 4 + [2] * 4
    # only the easy & wrong sample with cost >= .5 is relaxed (hard wrong samples are not)
    assert out["ares_kl_relax"].tolist() == pytest.approx([1, 1, 1, 0.67, 1, 1, 1, 1])
    del batch.extras["ares_soft_cost"]
    assert reg.prepare(batch, None)["ares_kl_relax"].tolist() == [1.0] * 8


def test_greedy_trigger_tokens_come_from_the_old_pass_hook():
    from types import SimpleNamespace

    tok = WordTokenizer(["x", "wait", "y"])
    shaper = AresEntropyReward(window=1, tau=1.0, triggers=["wait"], trigger_token="greedy")
    fns = shaper.old_token_fns()
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert fns["ares_greedy_id"](logits, torch.zeros(2, dtype=torch.long)).tolist() == [1.0, 0.0]
    batch = shaping_batch()
    batch.input_ids = torch.zeros(8, 5, dtype=torch.long)  # sampled tokens: never a trigger
    greedy = torch.zeros(8, 5)
    greedy[:, 2] = 1.0  # the argmax token at response position 1 is "wait"
    batch.extras["ares_greedy_id"] = greedy
    shaper(batch, step_ctx=SimpleNamespace(tokenizer=tok))
    # only the window after response position 1 counts: h at position 2 (>= 1 for rows 0, 4, 5, 6, 7)
    assert shaper.target == [0.0, 1.0, 1.0]  # easy mean .25 -> round 0; hard mean 1.0 -> 1
    sampled = AresEntropyReward(window=1, tau=1.0, triggers=["wait"], trigger_token="sampled")
    assert sampled.old_token_fns() == {}
    batch = shaping_batch()
    batch.input_ids = torch.zeros(8, 5, dtype=torch.long)
    sampled(batch, step_ctx=SimpleNamespace(tokenizer=tok))
    assert float(batch.extras["ares_soft_cost"].sum()) == 0.0
