"""The hf_tree engine (ETTRL entropy-fork tree rollout) on the tiny model: leaf counts, layout and masks, prefix
sharing with the parent root, fork points at the root's highest-entropy positions, determinism, behaviour
log-probs that match a re-scoring, and fewer generated tokens than independent sampling."""

from __future__ import annotations

import pytest
import torch

from entropo import registry
from entropo.models import tiny, token_logprobs_and_entropy
from entropo.rollout import HFEngine
from entropo.rollout.tree import HFTreeEngine, fork_positions, plan_leaves, trees_per_prompt

PROMPTS = ["1+2=", "abc def", "7*8="]


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny()


@pytest.fixture(scope="module")
def engine(tiny_pair):
    return HFTreeEngine(*tiny_pair, n_fork_points=3, branches=2)


def _gen(engine, n=8, seed=0, **kw):
    kw.setdefault("max_new_tokens", 8)
    return engine.generate(PROMPTS, n, generator=torch.Generator().manual_seed(seed), **kw)


def _response(out, r):
    return out.input_ids[r][out.response_mask[r].bool()].tolist()


def test_registered():
    assert registry.get("engine", "hf_tree") is HFTreeEngine


def test_leaf_counts_spec_toy():
    # spec §16 (f): M = 4 trees, N = 3 forks, B = 2 branches -> 4 * (1 + 2 * 3) = 28 leaves
    assert len(plan_leaves(1, 28, n_fork_points=3, branches=2)) == 28
    assert trees_per_prompt(28, 3, 2) == 4
    assert trees_per_prompt(8, 3, 2) == 2  # ceil(8 / 7)
    assert trees_per_prompt(7, 3, 2) == 1 and trees_per_prompt(1, 3, 2) == 1
    # trimmed: 8 leaves = tree 0 (root + 6 branches) + tree 1's root
    leaves = plan_leaves(2, 8, 3, 2)
    assert len(leaves) == 16 and [lf.prompt for lf in leaves] == [0] * 8 + [1] * 8
    assert [(lf.tree, lf.fork_position) for lf in leaves[:8]] == [(0, None), (0, 0), (0, 0), (0, 1), (0, 1), (0, 2),
                                                                 (0, 2), (1, None)]


def test_fork_positions_top_entropy_ties_and_short():
    h = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2])
    assert fork_positions(h, 3) == [1, 3, 2]  # highest first, tie 0.9 -> earlier position first
    assert fork_positions(torch.tensor([0.3, 0.7]), 3) == [1, 0, 1]  # shorter than N: reuse in entropy order


@pytest.mark.parametrize("n", [1, 8])
def test_shapes_and_masks(engine, n):
    out = _gen(engine, n=n)
    rows = len(PROMPTS) * n
    assert out.input_ids.shape[0] == rows == len(out.completions) == len(out.finish_reasons)
    assert out.prompt_index.tolist() == [p for p in range(len(PROMPTS)) for _ in range(n)]
    for name in ("attention_mask", "response_mask", "behaviour_logprobs", "behaviour_entropy"):
        assert getattr(out, name).shape == out.input_ids.shape
    for r in range(rows):
        k = out.num_tokens[r]
        assert 1 <= k <= 8 and out.response_mask[r].sum() == k
        assert (out.attention_mask[r][out.response_mask[r].bool()] == 1).all()
        # nothing outside the response carries behaviour statistics
        off = ~out.response_mask[r].bool()
        assert out.behaviour_logprobs[r][off].abs().sum() == 0 and out.behaviour_entropy[r][off].abs().sum() == 0


def test_branches_share_the_exact_prefix_of_their_root(engine):
    out = _gen(engine, n=8)
    leaves = engine.last_leaves
    root_row_of = {}  # root index -> output row
    for r, leaf in enumerate(leaves):
        if leaf.fork_position is None:
            root_row_of[leaf.root_row] = r
    checked = 0
    for r, leaf in enumerate(leaves):
        if leaf.fork_position is None:
            continue
        root = root_row_of[leaf.root_row]
        t = leaf.fork_position
        assert _response(out, r)[:t] == _response(out, root)[:t]
        # the copied prefix carries the root's behaviour statistics
        rr, br = out.response_mask[root].bool(), out.response_mask[r].bool()
        assert torch.equal(out.behaviour_logprobs[r][br][:t], out.behaviour_logprobs[root][rr][:t])
        checked += 1
    assert checked == 3 * 6  # 3 prompts x 6 branches of the first tree


def test_forks_are_the_roots_highest_entropy_positions(engine):
    out = _gen(engine, n=7)
    leaves = engine.last_leaves
    for p in range(len(PROMPTS)):
        root = p * 7
        h = out.behaviour_entropy[root][out.response_mask[root].bool()]
        expected = fork_positions(h, 3)
        got = [leaves[root + 1 + 2 * k].fork_position for k in range(3)]
        assert got == expected


def test_deterministic_under_generator(engine):
    a, b = _gen(engine, seed=3), _gen(engine, seed=3)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.behaviour_logprobs, b.behaviour_logprobs)
    assert a.completions == b.completions
    c = _gen(engine, seed=4)
    assert c.completions != a.completions


def test_behaviour_logprobs_match_rescoring(engine, tiny_pair):
    model, _ = tiny_pair
    out = _gen(engine, n=8, temperature=0.7)
    lp, ent = token_logprobs_and_entropy(model, out.input_ids, out.attention_mask, chunk_size=64, temperature=0.7)
    mask = out.response_mask.bool()
    assert torch.allclose(lp[mask], out.behaviour_logprobs[mask], atol=1e-4)
    assert torch.allclose(ent[mask], out.behaviour_entropy[mask], atol=1e-4)


def test_generated_tokens_fewer_than_leaf_tokens(engine):
    _gen(engine, n=7, max_new_tokens=8)
    s = engine.last_stats
    assert s["generated_tokens"] < s["leaf_tokens"]


def test_one_leaf_per_prompt_equals_hf_engine(engine, tiny_pair):
    # n = 1 is a single root per prompt: the same draws as HFEngine with the same generator
    ref = HFEngine(*tiny_pair).generate(PROMPTS, 1, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    out = engine.generate(PROMPTS, 1, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    assert out.completions == ref.completions
