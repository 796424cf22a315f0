"""D³S (arXiv 2509.22115): spec section 13 toy (f) for both levels, exact max-variance subset vs brute force, the
schedule, whole-batch token selection and the rescaled token-mean."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from entropo import ops
from entropo.algorithms.d3s import (
    down_sample,
    intra_group_extremes,
    max_variance_subset,
    scheduled,
    top_token_mask,
)
from entropo.batch import Batch
from entropo.components import Bound

TOY_A = torch.tensor([1.2, 0.8, 0.1, -0.3, -0.9, -0.9])


def test_intra_group_spec_toy():
    # N_pos = N_neg = 2 out of G = 6 (frac = 4/6): keep the two largest positive and two most negative -> {0,1,4,5}
    keep = intra_group_extremes(TOY_A, torch.zeros(6, dtype=torch.long), frac=4 / 6)
    assert keep.nonzero().squeeze(-1).tolist() == [0, 1, 4, 5]
    # kept mean = 0.05; deviations 1.15, 0.75, -0.95, -0.95 -> (1.3225 + 0.5625 + 0.9025 * 2) / 4 = 0.9225
    assert TOY_A[keep].var(unbiased=False).item() == pytest.approx(0.9225, abs=1e-5)
    assert TOY_A.var(unbiased=False).item() == pytest.approx(0.633333, abs=1e-5)


def test_cross_group_toy_picks_same_extremes():
    # k = 2 (two largest + two smallest) gives 0.9225; k = 1 gives 0.737, k = 3 gives 0.635
    keep = max_variance_subset(TOY_A, 4)
    assert keep.nonzero().squeeze(-1).tolist() == [0, 1, 4, 5]


def test_max_variance_subset_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        values = torch.randn(7, generator=g).round(decimals=1)  # rounding creates ties
        for n in range(1, 8):
            best = max(values[list(c)].double().var(unbiased=False).item()
                       for c in itertools.combinations(range(7), n))
            keep = max_variance_subset(values, n)
            assert int(keep.sum()) == n
            assert values[keep].double().var(unbiased=False).item() == pytest.approx(best, abs=1e-9)


def test_token_top_k_spec_toy():
    # |A| * H = [0.1, 2.0, 0.6, 1.5, 0.1, 0.5]; K = 50% of 6 -> 3 tokens: {1, 3, 2}
    adv = torch.tensor([[1.0, 1, 1, -0.5, -0.5, -0.5]])
    entropy = torch.tensor([[0.1, 2.0, 0.6, 3.0, 0.2, 1.0]])
    keep = top_token_mask(adv.abs() * entropy, torch.ones(1, 6, dtype=torch.bool), 0.5)
    assert keep.nonzero()[:, 1].tolist() == [1, 2, 3]


def test_schedule_interpolates():
    assert scheduled(0.5, 1.0, 0.0) == 0.5 and scheduled(0.5, 1.0, 0.5) == 0.75 and scheduled(0.5, 1.0, 2.0) == 1.0


def _batch(adv_per_row, entropy, lengths):
    rows, width = len(adv_per_row), max(lengths)
    response = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    b = Batch(input_ids=torch.zeros(rows, width, dtype=torch.long),
              attention_mask=torch.ones(rows, width, dtype=torch.long), response_mask=response,
              rewards=torch.zeros(rows), group_ids=torch.zeros(rows, dtype=torch.long))
    b.advantages = ops.broadcast_to_tokens(torch.tensor(adv_per_row), response)
    b.old_entropy = entropy * response
    return b


def test_token_selection_is_over_the_whole_batch_and_rescaled():
    # row 0: high entropy, row 1: low entropy, same |A|: K = 50% of the 6 tokens keeps all 3 of row 0.
    b = _batch([1.0, -1.0], torch.tensor([[2.0, 3.0, 4.0], [0.1, 0.2, 0.3]]), [3, 3])
    adv_before = b.advantages.clone()
    metrics = down_sample(b, sample_frac=1.0, token_frac=0.5, rescale=True)
    # rescale = 6 response tokens / 3 kept = 2
    assert b.token_weights.tolist() == [[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]
    assert metrics["d3s_kept_tokens_frac"] == pytest.approx(0.5)
    assert torch.equal(b.advantages, adv_before)  # advantages are never re-normalized
    # token-mean with the trainer's denominator (all response tokens) = mean loss over the kept tokens
    loss = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0]])
    assert ops.aggregate(loss, b.token_weights, "token-mean", response_mask=b.response_mask).item() == 2.0


def test_sample_level_drops_rows_and_keeps_advantages():
    ent = torch.ones(6, 2)
    b = _batch(TOY_A.tolist(), ent, [2] * 6)
    metrics = down_sample(b, sample_frac=4 / 6, token_frac=1.0, rescale=False)
    kept_rows = (b.token_weights.sum(-1) > 0).nonzero().squeeze(-1).tolist()
    assert kept_rows == [0, 1, 4, 5]
    assert metrics["d3s_adv_var_kept"] == pytest.approx(0.9225, abs=1e-5)
    assert metrics["d3s_adv_var_all"] == pytest.approx(0.633333, abs=1e-5)
    assert metrics["d3s_kept_samples_frac"] == pytest.approx(4 / 6)


def test_registered_shaping_follows_the_schedule():
    shaper = Bound("shaping", "d3s", {"sample_frac_init": 0.5, "sample_frac_final": 1.0, "token_frac_init": 0.5,
                                      "token_frac_final": 1.0, "total_steps": 11})
    recipe = SimpleNamespace(train=SimpleNamespace(steps=11))
    ent = torch.arange(12.0).view(6, 2) + 1.0
    first = _batch(TOY_A.tolist(), ent, [2] * 6)
    m0 = shaper(first, step_ctx=SimpleNamespace(step=0, recipe=recipe))
    assert m0["d3s_sample_frac"] == 0.5 and m0["d3s_progress"] == 0.0
    assert m0["d3s_kept_samples_frac"] == 0.5  # round(0.5 * 6) = 3 responses
    assert int((first.token_weights > 0).sum()) == 3  # ceil(0.5 * their 6 tokens), anywhere among the 3 rows
    last = _batch(TOY_A.tolist(), ent, [2] * 6)
    m1 = shaper(last, step_ctx=SimpleNamespace(step=10, recipe=recipe))
    assert m1["d3s_progress"] == 1.0 and m1["d3s_token_frac"] == 1.0
    assert torch.equal(last.token_weights, last.response_mask)  # fully relaxed: everything kept, scale 1


def test_rows_without_tokens_are_not_candidates():
    b = _batch([1.0, -1.0, 5.0], torch.ones(3, 2), [2, 2, 2])
    b.token_weights[2] = 0.0  # masked earlier (e.g. by another shaping): not a candidate for selection
    down_sample(b, sample_frac=1.0, token_frac=1.0, rescale=False)
    assert b.token_weights[:2].sum() == 4 and b.token_weights[2].sum() == 0
