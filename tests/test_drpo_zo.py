"""DR-PO dataset resets (engine ``dataset_reset``, arXiv 2404.08495) and ZO-RankSGD (arXiv 2303.03751)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entropo import registry
from entropo.classic.zo_ranksgd import (ZORankSGD, RankRandomSearch, pair_count, quadratic, rank_gradient,
                                        rank_weights, ranking_by_value, run_toy)
from entropo.envs.base import EnvFactory, Environment, StepResult
from entropo.models import tiny
from entropo.rollout import HFEngine
from entropo.rollout.dataset_reset import DatasetResetEngine, generator_seed, prefix_bounds
from entropo.types import Example


@pytest.fixture(scope="module")
def model_tok():
    model, tok = tiny()
    return model.eval(), tok


EXAMPLES = [Example(prompt="12+34=", answer="46", target="46 is the sum"),
            Example(prompt="7+8=", answer="15", target="15"),
            Example(prompt="1+1=", answer="2", target="2")]  # L = 1: never reset


def _rollout(engine, seed=0, n=3, max_new_tokens=8, **kw):
    return engine.rollout(EXAMPLES, n, generator=torch.Generator().manual_seed(seed), temperature=1.0,
                          max_new_tokens=max_new_tokens, **kw)


# ---- DR-PO ----------------------------------------------------------------------------------------------------------

def test_prefix_bounds_hand_values():
    assert prefix_bounds(5, 0.0, 1.0, 64) == (1, 4)  # the paper: h uniform on {1, ..., L-1}
    assert prefix_bounds(1, 0.0, 1.0, 64) is None  # L < 2: no reset
    assert prefix_bounds(10, 0.25, 0.5, 64) == (3, 5)
    assert prefix_bounds(10, 0.0, 1.0, 4) == (1, 3)  # at least one sampled token within the budget
    assert prefix_bounds(10, 0.95, 1.0, 64) is None  # ceil(9.5) = 10 > L - 1


def test_forced_tokens_are_demonstration_ids_with_mask_zero(model_tok):
    model, tok = model_tok
    engine = DatasetResetEngine(model, tok, reset_prob=1.0, per_sample=True, chat_template=False)
    out = _rollout(engine)
    demos = [engine.demonstration_ids(e) for e in EXAMPLES]
    prompt_width = max(len(engine.encode_prompt(e.prompt)) for e in EXAMPLES)
    for r, info in enumerate(out.episodes):
        p = int(out.prompt_index[r])
        h = info.info["reset_prefix_tokens"]
        assert (1 <= h <= len(demos[p]) - 1) if len(demos[p]) >= 2 else h == 0
        forced = out.input_ids[r, prompt_width:prompt_width + h].tolist()
        assert forced == demos[p][:h]  # the demonstration's own token ids
        assert out.response_mask[r, prompt_width:prompt_width + h].sum() == 0  # context, never trained on
        assert out.behaviour_logprobs[r, prompt_width:prompt_width + h].abs().sum() == 0
        n_sampled = int(out.response_mask[r].sum())
        assert n_sampled >= 1 and out.num_tokens[r] == n_sampled
        assert torch.all(out.response_mask[r, prompt_width + h:prompt_width + h + n_sampled] == 1)
        assert h + n_sampled <= 8  # the budget covers forced + sampled tokens
        # the reward (completion) and the transcript see the whole response: prefix + continuation
        whole = out.input_ids[r, prompt_width:prompt_width + h + n_sampled].tolist()
        assert out.completions[r] == tok.decode(whole, skip_special_tokens=True)
        assert out.completions[r].startswith(EXAMPLES[p].target[:h])
    assert any(i.info["reset_prefix_tokens"] > 0 for i in out.episodes)


class _Recorder(Environment):
    actions: list[str] = []

    def step(self, action):
        _Recorder.actions.append(action)
        return StepResult(done=True)


def test_environment_and_reward_see_prefix_plus_continuation(model_tok):
    model, tok = model_tok
    engine = DatasetResetEngine(model, tok, reset_prob=1.0, chat_template=False)
    _Recorder.actions = []
    out = _rollout(engine, environment=EnvFactory(_Recorder))
    assert sorted(_Recorder.actions) == sorted(out.completions)
    reset_rows = [r for r, i in enumerate(out.episodes) if i.info["reset_prefix_tokens"] > 0]
    assert reset_rows
    for r in reset_rows:
        ex = EXAMPLES[int(out.prompt_index[r])]
        assert out.completions[r].startswith(ex.target[:out.episodes[r].info["reset_prefix_tokens"]])


def test_reset_prob_zero_rows_equal_the_plain_engine(model_tok):
    model, tok = model_tok
    plain = _rollout(HFEngine(model, tok, chat_template=False), seed=5)
    reset0 = _rollout(DatasetResetEngine(model, tok, reset_prob=0.0, chat_template=False), seed=5)
    for name in ("input_ids", "attention_mask", "response_mask", "behaviour_logprobs", "prompt_index"):
        assert torch.equal(getattr(plain, name), getattr(reset0, name)), name
    assert plain.completions == reset0.completions


def test_evaluation_never_resets(model_tok):
    model, tok = model_tok
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = HFEngine(model, tok, chat_template=False).generate(EXAMPLES, 2, max_new_tokens=5, generator=g1)
    b = DatasetResetEngine(model, tok, reset_prob=1.0, chat_template=False).generate(EXAMPLES, 2, max_new_tokens=5,
                                                                                     generator=g2)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)


def test_prefix_lengths_uniform_and_deterministic_by_seed(model_tok):
    model, tok = model_tok
    engine = DatasetResetEngine(model, tok, reset_prob=1.0, per_sample=True, chat_template=False)
    demo = Example(prompt="x=", target="abcdef")  # L = 6: h uniform on {1..5}
    g = torch.Generator().manual_seed(0)
    state = g.get_state().clone()
    plan = engine.reset_plan([demo], 5000, g, max_new_tokens=64)
    assert torch.equal(g.get_state(), state)  # the sampling generator is read, never advanced
    counts = np.bincount([len(p) for p in plan], minlength=6)
    assert counts[0] == 0 and counts[1:].sum() == 5000
    chi2 = float((((counts[1:] - 1000) ** 2) / 1000).sum())
    assert chi2 < 18.47  # chi-square, 4 dof, p = 0.001
    assert plan == engine.reset_plan([demo], 5000, torch.Generator().manual_seed(0), max_new_tokens=64)
    assert plan != engine.reset_plan([demo], 5000, torch.Generator().manual_seed(1), max_new_tokens=64)
    # group mode: the n rows of a prompt share one reset point; reset_prob 0.5 resets about half the groups
    half = DatasetResetEngine(model, tok, reset_prob=0.5, chat_template=False)
    groups = half.reset_plan([demo] * 400, 4, torch.Generator().manual_seed(2), max_new_tokens=64)
    per_group = [groups[4 * i:4 * i + 4] for i in range(400)]
    assert all(all(r == g[0] for r in g) for g in per_group)
    frac = np.mean([len(g[0]) > 0 for g in per_group])
    assert 0.4 < frac < 0.6
    assert generator_seed(torch.Generator().manual_seed(0), 0) != generator_seed(torch.Generator().manual_seed(0), 1)


def test_bad_params_and_registration(model_tok):
    model, tok = model_tok
    assert registry.get("engine", "dataset_reset") is DatasetResetEngine
    with pytest.raises(ValueError, match="reset_prob"):
        DatasetResetEngine(model, tok, reset_prob=1.5)
    with pytest.raises(ValueError, match="min_frac"):
        DatasetResetEngine(model, tok, min_frac=0.8, max_frac=0.2)
    with pytest.raises(ValueError, match="field"):
        DatasetResetEngine(model, tok, field="prompt")
    meta = DatasetResetEngine(model, tok, field="meta.demo", chat_template=False)
    assert meta.demonstration_ids(Example(prompt="a", meta={"demo": "xyz"})) == tok("xyz", add_special_tokens=False)[
        "input_ids"]
    assert meta.demonstration_ids(Example(prompt="a")) == []


# ---- ZO-RankSGD -----------------------------------------------------------------------------------------------------

def test_rank_weights_hand_values():
    assert pair_count(5, 5) == 10 and pair_count(5, 2) == 7
    assert rank_weights(5, [0, 1, 2, 3, 4]).tolist() == [4, 2, 0, -2, -4]
    assert rank_weights(5, [3, 1]).tolist() == [-2, 2, -2, 4, -2]  # ranked [4, 2], unranked -2 each
    assert rank_weights(5, [3, 1]).sum() == 0 and rank_weights(5, [4, 0, 2, 1, 3]).sum() == 0
    with pytest.raises(ValueError, match="distinct"):
        rank_weights(3, [0, 0])


def test_rank_gradient_on_2d_toy_with_scripted_ranking():
    xis = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # ranking 0 > 1 > 2: pairs (0,1), (0,2), (1,2) -> [(1,-1) + (2,0) + (1,1)] / 3 = (4/3, 0)
    assert np.allclose(rank_gradient(xis, [0, 1, 2]), [4 / 3, 0.0])
    # top-1 only: 1 beats 0 and 2 -> [(-1,1) + (1,1)] / 2 = (0, 1)
    assert np.allclose(rank_gradient(xis, [1]), [0.0, 1.0])
    # the same as the explicit pair sum
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert np.allclose(rank_gradient(xis, [0, 1, 2]), sum(xis[i] - xis[j] for i, j in pairs) / 3)


def test_estimator_direction_on_linear_function():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(10)
    est = np.zeros(10)
    for _ in range(2000):
        xis = rng.standard_normal((5, 10))
        est += rank_gradient(xis, ranking_by_value(xis @ w))  # better = lower w.x
    cos = est @ -w / np.linalg.norm(est) / np.linalg.norm(w)
    assert cos > 0.95


def test_toy_beats_random_search_at_equal_queries_and_loss_decreases():
    zo = [run_toy("quadratic", "zo_ranksgd", queries=600, seed=s) for s in range(2)]
    rs = [run_toy("quadratic", "random_search", queries=600, seed=s) for s in range(2)]
    for z, r in zip(zo, rs):
        assert z["curve"][-1][0] == r["curve"][-1][0] == 600  # equal oracle points
        assert z["final_loss"] < r["final_loss"] < z["initial_loss"]
        losses = [v for _, v in z["curve"]]
        assert all(b <= a for a, b in zip(losses, losses[1:]))  # line search never accepts a worse point
    plain = ZORankSGD(np.ones(10), m=5, mu=0.01, eta=0.3, decay_steps=20, seed=0)
    start = quadratic(plain.x)
    for _ in range(200):
        plain.step(lambda pts: ranking_by_value([quadratic(p) for p in pts]))
    assert quadratic(plain.x) < 0.2 * start


def test_optimizer_state_roundtrip_resumes_identically():
    oracle = lambda pts: ranking_by_value([quadratic(p) for p in pts])  # noqa: E731
    a = ZORankSGD(np.ones(4), m=5, seed=3, line_search=True)
    for _ in range(7):
        a.step(oracle)
    b = ZORankSGD(np.zeros(4), m=5, seed=99, line_search=True)
    b.load_state_dict(a.state_dict())
    for _ in range(9):
        a.step(oracle)
        b.step(oracle)
    assert np.array_equal(a.x, b.x) and a.queries == b.queries
    with pytest.raises(RuntimeError, match="ask"):
        ZORankSGD(np.ones(2)).tell([0])
    assert RankRandomSearch(np.ones(2), m=4).m == 4


def test_recipes_load_and_program_runs(tmp_path):
    from entropo.config import load_recipe
    from entropo.logging import read_metrics
    from entropo.programs import load_program, resolve, run_program
    from entropo.reproduce.runner import RECIPES_DIR

    recipe = load_recipe(RECIPES_DIR / "drpo.yaml", [])
    assert recipe.rollout.engine == "dataset_reset" and recipe.rollout.engine_params["reset_prob"] == 1.0
    prog = load_program(RECIPES_DIR / "zo_ranksgd.yaml", ["params.lm=false", "params.queries=100",
                                                          "params.functions=[quadratic]"])
    resolve(prog)
    out = run_program(prog, tmp_path, console=lambda *_: None)
    assert out["quadratic/zo_ranksgd_final_loss"] < 27.5 and "quadratic/random_search_final_loss" in out
    rows = read_metrics(tmp_path)
    assert any("quadratic/zo_ranksgd_loss" in r for r in rows)
