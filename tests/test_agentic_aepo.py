"""Agentic AEPO (Agentic Entropy-Balanced Policy Optimization, arXiv 2510.14545): the entropy-balanced rollout
(budget split from pre-monitored entropies, branching after tool calls from the exact token prefix, the
consecutive-branch penalty) and the entropy-balanced update (stop-gradient clipping, entropy-aware advantage), by hand.
"""

import math
from pathlib import Path

import pytest
import torch

from entropo.algorithms.agentic_aepo import (
    ENTROPY_KEY,
    agentic_aepo_objective,
    entropy_balanced_advantages,
    stop_gradient_clipped_surrogate,
)
from entropo.algorithms.objectives import ppo_clip
from entropo.config import load_recipe
from entropo.envs.base import EnvFactory, Environment, StepResult
from entropo.logging import read_metrics
from entropo.models import tiny
from entropo.rollout.agentic_aepo import (
    AgenticAEPOEngine,
    BranchPlanner,
    branch_probability,
    fork_environment,
    global_sample_count,
    segment_entropy,
)
from entropo.rollout.episodes import EpisodeLimits, _Episode
from entropo.trainer import train
from entropo.types import Example

RECIPE = Path(__file__).resolve().parents[1] / "entropo" / "recipes" / "agentic_aepo.yaml"
LN_V = math.log(101)  # the tiny character tokenizer's vocabulary


# ---- rollout rules by hand -------------------------------------------------------------------------------------------

def test_global_sample_count_by_hand():
    assert global_sample_count(12, 1.0, 2.0) == 5  # sigmoid(-0.5) = 0.37754 -> floor(4.53) + 1 (spec toy)
    assert global_sample_count(8, 1.0, 1.0) == 5  # equal entropies: floor(4) + 1
    assert global_sample_count(8, 100.0, 0.0) == 8  # floor(8) + 1 = 9, clipped to the budget
    assert global_sample_count(8, 0.0, 100.0) == 1  # all budget left for branching but one global sample
    with pytest.raises(ValueError, match="budget"):
        global_sample_count(0, 0.0, 0.0)


def test_segment_entropy_sums_the_first_tokens_over_ln_v():
    h = torch.tensor([0.5, 1.0, 1.5])
    assert segment_entropy(h, 101, tokens=2) == pytest.approx(1.5 / LN_V)
    assert segment_entropy(h, 101, tokens=2, reduce="mean") == pytest.approx(0.75 / LN_V)
    assert segment_entropy(torch.zeros(0), 101) == 0.0


def test_branch_probability_and_consecutive_penalty_by_hand():
    assert branch_probability(0.4, 2.0, 1.0, 0.2, 2) == pytest.approx(0.54)  # 0.6 * 0.9 >= 0.5: branch (spec toy)
    assert branch_probability(0.4, 2.0, 1.0, 0.2, 4) == pytest.approx(0.48)  # 0.6 * 0.8 < 0.5: penalised, no branch
    assert branch_probability(0.4, 2.0, 1.0, 0.2, 0) == pytest.approx(0.6)
    assert branch_probability(0.9, 10.0, 0.0, 0.2, 0) == 1.0  # clamped
    assert branch_probability(0.9, 10.0, 0.0, 0.2, 25) == 0.0  # factor max(0, 1 - 1.25) = 0
    assert branch_probability(0.1, 0.0, 5.0, 0.2, 0) == 0.0  # lower entropy than at the start: clamped at 0


def _episode(action_entropy: list[float], turn_entropy: list[float], running=True):
    """An episode after two actions (turn 0 and turn 1), the second a tool call, with a reply in between."""
    ep = _Episode(env=None, example=Example(prompt="q"), prompt_ids=[5, 6], templated=False, max_turns=4, messages=[])
    ep.add([10] * len(action_entropy), True, 0, torch.zeros(len(action_entropy)), torch.tensor(action_entropy))
    ep.add([40, 41], False, 0)
    ep.add([11] * len(turn_entropy), True, 1, torch.zeros(len(turn_entropy)), torch.tensor(turn_entropy))
    ep.add([42], False, 1)
    ep.actions = ["a0", "a1"]
    ep.info.tool_call_turns = [0, 1]
    ep.running = running
    return ep


def test_planner_penalises_consecutive_branching_and_resets():
    # Entropy jumps by 2 ln V -> H_now - H_init = 2 per token-sum unit; w = 0.5 -> p = U + 1 >= 1 before the penalty.
    eps = [_episode([0.0], [2 * LN_V]) for _ in range(2)]
    planner = BranchPlanner([0, 0], {0: 2}, budget=8, vocab_size=101, generator=torch.Generator().manual_seed(0),
                            beam_size=2, branch_threshold=0.5, entropy_weight=0.5, consecutive={0: 20})
    assert planner(eps, 1) == []  # factor max(0, 1 - 0.05 * 20) = 0: no branch
    assert planner.consecutive[0] == 0  # a round without a branch resets the count
    assert [d["p"] for d in planner.decisions] == [0.0, 0.0]
    forks = planner(eps, 1)
    assert len(forks) == 2 and planner.consecutive[0] == 1 and planner.counts[0] == 4  # beam 2: one per trajectory
    assert planner.groups == [0, 0, 0, 0] and planner.parents == [None, None, 0, 1]
    # a trajectory that did not call a tool this turn, or has ended, never branches
    quiet = _episode([0.0], [2 * LN_V])
    quiet.info.tool_call_turns = [0]
    done = _episode([0.0], [2 * LN_V], running=False)
    p2 = BranchPlanner([0, 0], {0: 2}, budget=8, vocab_size=101, generator=torch.Generator().manual_seed(0),
                       entropy_weight=0.5)
    assert p2([quiet, done], 1) == [] and p2.decisions == []


def test_planner_never_exceeds_the_budget_or_beam():
    eps = [_episode([0.0], [2 * LN_V]) for _ in range(4)]
    planner = BranchPlanner([0, 0, 0, 0], {0: 4}, budget=6, vocab_size=101, generator=torch.Generator().manual_seed(0),
                            beam_size=3, branch_threshold=0.0, entropy_weight=0.5)
    forks = planner(eps, 1)
    assert len(forks) == 2 and planner.counts[0] == 6  # beam 3 would allow 2 per trajectory; the budget leaves 2
    assert planner.parents[4:] == [0, 0]


def test_fork_copies_the_exact_prefix_ids_and_records():
    parent = _episode([0.3, 0.7], [1.1])
    child = parent.fork(env=None)
    assert child.ids == parent.ids and child.policy == parent.policy and child.turn_of == parent.turn_of
    assert torch.equal(torch.cat(child.logprobs), torch.cat(parent.logprobs))
    assert torch.equal(torch.cat(child.entropies), torch.cat(parent.entropies))
    child.add([99], True, 2, torch.zeros(1), torch.zeros(1))  # the branch goes on; the parent is untouched
    child.info.tool_call_turns.append(2)
    assert 99 not in parent.ids and parent.info.tool_call_turns == [0, 1] and len(parent.entropies) == 4


def test_forking_an_environment_copies_its_state_and_refuses_proxies():
    env = ToolThenAnswer()
    env.reset(Example(prompt="q"), 0)
    env.step("a")
    copy = fork_environment(env)
    assert copy is not env and copy.turn == 1
    copy.step("b")
    assert env.turn == 1  # the parent's environment is untouched

    class Proxy:  # e.g. a handle to an environment in another process: a copy would share its state
        def step(self, action):
            return StepResult(done=True)

    with pytest.raises(TypeError, match="fork"):
        fork_environment(Proxy())
    ep = _episode([0.0], [2 * LN_V])
    ep.env = Proxy()
    planner = BranchPlanner([0], {0: 1}, budget=8, vocab_size=101, generator=torch.Generator().manual_seed(0),
                            branch_threshold=0.0, entropy_weight=0.5)
    assert planner([ep], 1) == [] and planner.counts[0] == 1  # the branch is skipped, the run goes on


# ---- the engine on a scripted sampler -------------------------------------------------------------------------------

class ToolThenAnswer(Environment):
    """Turn 0 is a tool call answered with "7"; turn 1 ends the episode."""

    observation_role = "tool"
    max_turns = 2

    def reset(self, example, seed):
        self.turn = 0
        return example.prompt

    def step(self, action):
        self.turn += 1
        return StepResult(observation="7", tool_call=True) if self.turn == 1 else StepResult(done=True)


@pytest.fixture(scope="module")
def tiny_world():
    model, tokenizer = tiny()
    return model.eval(), tokenizer


def scripted_engine(model, tokenizer, root_entropy, tool_entropy, **params):
    """The engine with a scripted turn sampler: 4 tokens per action, every token of a first action has entropy
    ``root_entropy`` and of a later one ``tool_entropy``. First actions contain token id 1, a special token that a
    decode -> encode round trip would drop; later actions get a fresh token per call (branches diverge)."""
    engine = AgenticAEPOEngine(model, tokenizer, **params)
    prompt_lengths: set[int] = set()
    counter = iter(range(10_000))

    def sampler(temperature, top_p, generator, device):
        def sample_turn(contexts, budget, stops):
            out = []
            for ctx in contexts:
                first = len(ctx) in prompt_lengths
                ids = [20, 1, 21, 22] if first else [30 + next(counter) % 50] * 4
                h = root_entropy if first else tool_entropy
                out.append((ids, torch.full((4,), -h), torch.full((4,), h), "stop"))
            return out
        return sample_turn

    engine.turn_sampler = sampler
    engine.prompt_lengths = prompt_lengths
    return engine


def _roll(engine, prompts, n, seed=0):
    engine.prompt_lengths.update(len(engine.encode_prompt(p)) for p in prompts)
    return engine.rollout([Example(prompt=p) for p in prompts], n, max_new_tokens=4,
                          generator=torch.Generator().manual_seed(seed), environment=EnvFactory(ToolThenAnswer),
                          limits=EpisodeLimits())


def test_budget_split_follows_the_pre_monitored_entropies(tiny_world):
    # H_root = 4 * 0.5 / ln 101 = 0.43336; H_tool = mean(0.43336, 4 * 3 / ln 101 = 2.60015) = 1.51675;
    # sigmoid(0.5 * (-1.08339)) = 0.36779 -> floor(8 * 0.36779) + 1 = 3 global samples, 5 left for branches.
    engine = scripted_engine(*tiny_world, root_entropy=0.5, tool_entropy=3.0, branch_threshold=2.0)  # never branch
    out = _roll(engine, ["12*3=", "4*5="], 8)
    assert engine.last_split == [3, 3]
    assert engine.last_stats["h_root"] == pytest.approx(0.43336, abs=1e-5)
    assert engine.last_stats["h_tool"] == pytest.approx(1.51675, abs=1e-5)
    # no branch ever fires, so the 5 left are filled by one new global sample per pass: 1 + 5 passes
    assert engine.last_stats["passes"] == 6 and engine.last_stats["branches"] == 0
    assert out.prompt_index.tolist() == [0] * 8 + [1] * 8  # equal trajectories to plain sampling, grouped
    # the reverse (uncertain start, confident tool steps): floor(8 * 0.63221) + 1 = 6 global samples
    engine = scripted_engine(*tiny_world, root_entropy=3.0, tool_entropy=0.5, branch_threshold=2.0)
    _roll(engine, ["12*3="], 8)
    assert engine.last_split == [6]
    # the pre-monitor's tokens are counted apart: 2 actions x 4 tokens per question
    assert engine.last_stats["premonitor_tokens"] == 8


def test_budget_statistics_of_two_shards_merge_as_sums(tiny_world):
    # shard A: 2 questions with H_root 0.43336 and 3 global samples each; shard B: 1 question with H_root
    # 4 * 3 / ln 101 = 2.60015 and 6 global samples (the numbers of the test above). Merged: counts add, means are
    # over the 3 questions — what one process sampling both shards logs, and every process of a data-parallel run.
    a = scripted_engine(*tiny_world, root_entropy=0.5, tool_entropy=3.0, branch_threshold=2.0)
    b = scripted_engine(*tiny_world, root_entropy=3.0, tool_entropy=0.5, branch_threshold=2.0)
    _roll(a, ["12*3=", "4*5="], 8)
    _roll(b, ["12*3="], 8)
    sums_a, sums_b = a.pop_stat_sums(), b.pop_stat_sums()
    assert a.pop_stats() == {} and sums_a["monitored_questions"] == 2
    a.add_stat_sums(sums_a)
    a.add_stat_sums(sums_b)
    stats = a.pop_stats()
    assert stats["trajectories"] == 24 and stats["branches"] == 0  # never branches: the rest are new samples
    assert stats["premonitor_tokens"] == 3 * 8  # 2 actions x 4 tokens per question
    assert stats["h_root"] == pytest.approx((2 * 0.43336 + 2.60015) / 3, abs=1e-5)
    assert stats["global_samples_per_question"] == pytest.approx(4.0)
    assert "monitored_questions" not in stats and not any(k.endswith("_sum") for k in stats)


def test_static_split_uses_initial_rollouts(tiny_world):
    engine = scripted_engine(*tiny_world, 0.5, 3.0, dynamic=False, initial_rollouts=5, branch_threshold=2.0)
    out = _roll(engine, ["12*3="], 8)
    assert engine.last_split == [5] and engine.last_stats["premonitor_tokens"] == 0 and out.input_ids.shape[0] == 8


def test_branches_continue_from_the_parents_exact_prefix_ids(tiny_world):
    model, tokenizer = tiny_world
    engine = scripted_engine(model, tokenizer, 0.5, 3.0, branch_threshold=0.0)  # every draw branches
    prompt = "12*3="
    out = _roll(engine, [prompt, "4*5="], 8)
    stats = engine.last_stats
    # 3 global samples each fork once after their tool call (3 branches: 6 rows); one new sample, which forks: 8
    assert stats["global_samples"] == 2 * 4 and stats["branches"] == 2 * 4 and stats["passes"] == 2
    assert out.prompt_index.tolist() == [0] * 8 + [1] * 8
    prompt_width = max(len(engine.encode_prompt(p)) for p in (prompt, "4*5="))
    prefix = prompt_width + 4 + len(engine.chat.reply_ids([22], "7", False, "tool"))  # prompt, action 0, reply
    branches = [(r, p) for r, p in enumerate(engine.last_parents) if p is not None]
    assert len(branches) == 8 and all(out.prompt_index[r] == out.prompt_index[p] for r, p in branches)
    for r, p in branches:
        row, parent = out.input_ids[r], out.input_ids[p]
        assert torch.equal(row[:prefix], parent[:prefix])  # same prompt, action and tool-reply ids
        assert 1 in row[:prefix].tolist()  # the special id that a decode -> encode round trip would have dropped
        assert torch.equal(out.behaviour_entropy[r, :prefix], out.behaviour_entropy[p, :prefix])
        assert torch.equal(out.behaviour_logprobs[r, :prefix], out.behaviour_logprobs[p, :prefix])
        assert torch.equal(out.response_mask[r], out.response_mask[p])
        assert not torch.equal(row[prefix:], parent[prefix:])  # then each samples its own continuation
    # tokens: each branch inherited its 4-token first action
    assert stats["copied_tokens"] == 8 * 4
    assert stats["sampled_tokens"] == stats["trained_tokens"] - 32 + stats["premonitor_tokens"]
    assert stats["trained_tokens"] == 16 * 8


# ---- entropy-balanced update by hand ---------------------------------------------------------------------------------

def _grad(loss_fn, rho, adv, **kw):
    logp = torch.tensor([[math.log(rho)]], requires_grad=True)
    loss, _ = loss_fn(logp, torch.zeros(1, 1), torch.tensor([[adv]]), torch.ones(1, 1), **kw)
    loss.sum().backward()
    return float(loss.detach()), float(logp.grad)


@pytest.mark.parametrize("rho, adv, loss, grad, ppo_grad", [
    (1.5, 1.0, -1.2, -1.2, 0.0),  # clipped above, A > 0: PPO's value, gradient kept at (1 + eps_hi) A (spec toy)
    (2.0, 0.5, -0.6, -0.6, 0.0),
    (1.1, 1.0, -1.1, -1.1, -1.1),  # inside the trust region: PPO
    (0.5, -1.0, 0.8, 0.0, 0.0),  # below the lower bound, A < 0: clipped as PPO (no gradient)
    (1.5, -1.0, 1.5, 1.5, 1.5),  # A < 0 above the bound: the unclipped branch, as PPO
    (5.0, -1.0, 3.0, 0.0, 0.0),  # dual clip: capped at clip_c |A|
])
def test_stop_gradient_clipping_loss_and_gradient_by_hand(rho, adv, loss, grad, ppo_grad):
    kw = dict(clip_low=0.2, clip_high=0.2, balanced_advantage=False)
    value, g = _grad(agentic_aepo_objective, rho, adv, **kw)
    assert value == pytest.approx(loss, abs=1e-6) and g == pytest.approx(grad, abs=1e-6)
    value_plain, g_plain = _grad(agentic_aepo_objective, rho, adv, balanced_clipping=False, **kw)
    assert value_plain == pytest.approx(loss, abs=1e-6) and g_plain == pytest.approx(ppo_grad, abs=1e-6)
    if rho < 5:  # no dual clip in ppo_clip
        assert _grad(ppo_clip, rho, adv, clip_low=0.2, clip_high=0.2) == pytest.approx((loss, ppo_grad), abs=1e-6)


def test_stop_gradient_bound_value_is_ppo_everywhere():
    ratio = torch.linspace(0.3, 3.0, 50)[:, None].expand(50, 2).clone()
    adv = torch.tensor([1.0, -0.7]).expand(50, 2)
    plain = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
    assert torch.allclose(stop_gradient_clipped_surrogate(ratio, adv, 0.2, 0.28), plain)


def test_entropy_aware_advantage_by_hand():
    adv = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    h = torch.tensor([[0.1, 0.5, 2.0, 0.2, 100.0]])  # the last token is outside the mask: no effect on the stats
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    out = entropy_balanced_advantages(adv, h, mask)
    assert out[0, :4].tolist() == pytest.approx([0.86413, 0.95471, 1.29439, 0.88677], abs=1e-5)
    assert out[0, 4] == 1.0
    neg = entropy_balanced_advantages(-adv, h, mask)  # the factor scales negative advantages the same way
    assert neg[0, :4].tolist() == pytest.approx([-0.86413, -0.95471, -1.29439, -0.88677], abs=1e-5)
    flat = entropy_balanced_advantages(adv, torch.full((1, 5), 0.3), mask)  # std 0 -> 1: unchanged
    assert torch.equal(flat, adv)


def test_objective_micro_scope_uses_the_current_entropy_from_extras():
    h = torch.tensor([[0.1, 0.5, 2.0, 0.2]])
    logp = torch.zeros(1, 4, requires_grad=True)
    loss, metrics = agentic_aepo_objective(logp, torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4),
                                           extras={ENTROPY_KEY: h}, scope="micro")
    assert loss[0].tolist() == pytest.approx([-0.86413, -0.95471, -1.29439, -0.88677], abs=1e-5)  # rho = 1: -A'
    loss.sum().backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.86413, -0.95471, -1.29439, -0.88677], abs=1e-5)
    with pytest.raises(ValueError, match="token_fns"):
        agentic_aepo_objective(logp, torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4), extras={},
                               scope="micro")
    with pytest.raises(ValueError, match="prepare"):
        agentic_aepo_objective(logp, torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4), extras={})
    with pytest.raises(ValueError, match="scope"):
        agentic_aepo_objective(logp, torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4), scope="row")
    with pytest.raises(ValueError, match="clip_c"):
        agentic_aepo_objective(logp, torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4), clip_c=1.0,
                               balanced_advantage=False)


def test_batch_scope_uses_whole_batch_old_entropy_and_ignores_the_split():
    from types import SimpleNamespace

    from entropo.algorithms.agentic_aepo import BALANCED_KEY, agentic_aepo_prepare

    # two rows of two response tokens; old entropies as in the hand example: A' = [0.86413, 0.95471 | 1.29439, 0.88677]
    batch = SimpleNamespace(advantages=torch.ones(2, 2), old_entropy=torch.tensor([[0.1, 0.5], [2.0, 0.2]]),
                            response_mask=torch.ones(2, 2))
    balanced = agentic_aepo_prepare(batch)[BALANCED_KEY]
    assert balanced.flatten().tolist() == pytest.approx([0.86413, 0.95471, 1.29439, 0.88677], abs=1e-5)
    assert agentic_aepo_prepare(batch, scope="micro") == {}
    assert agentic_aepo_prepare(batch, balanced_advantage=False) == {}
    full, _ = agentic_aepo_objective(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), torch.ones(2, 2),
                                     extras={BALANCED_KEY: balanced})
    rows = [agentic_aepo_objective(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2),
                                   extras={BALANCED_KEY: balanced[i:i + 1]})[0] for i in range(2)]
    assert torch.equal(full, torch.cat(rows))  # one row per micro-batch: the same per-token losses
    # per micro-batch (the released rule) each row would be standardised on its own 2 tokens instead
    micro = entropy_balanced_advantages(torch.ones(1, 2), batch.old_entropy[:1], torch.ones(1, 2))
    assert not torch.allclose(micro, balanced[:1])


def test_engine_rejects_bad_params(tiny_world):
    with pytest.raises(ValueError, match="segment_reduce"):
        AgenticAEPOEngine(*tiny_world, segment_reduce="max")
    with pytest.raises(ValueError, match="beam_size"):
        AgenticAEPOEngine(*tiny_world, beam_size=0)


# ---- end to end ------------------------------------------------------------------------------------------------------

def test_few_step_training_run(tmp_path, tiny_recipe_overrides):
    ov = tiny_recipe_overrides + [
        "environment={name: 'test_agentic_aepo:ToolThenAnswer'}", "task.params={digits: 1, chat: false}",
        "train.steps=2", "warmup.steps=0", "checkpoint.every=0", "eval.max_prompts=2", "logging.tensorboard=false",
        "rollout.engine=agentic_aepo", "rollout.engine_params={branch_threshold: 0.0}", "objective={name: agentic_aepo}",
        "producers=[{name: agentic_aepo_stats}]", "train.mini_batches=2", "eval.every=0",
        "rollout.shards=2"]  # each shard's statistics are carried with its rows and added once
    recipe = load_recipe(RECIPE, ov)
    summary = train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)
    rows = [r for r in read_metrics(tmp_path / "run") if "producer/agentic_aepo_stats/trajectories" in r]
    assert len(rows) == 2
    for r in rows:
        assert r["producer/agentic_aepo_stats/trajectories"] == 4 * 4  # prompts_per_step x n, both shards, once
        assert r["producer/agentic_aepo_stats/branches"] > 0  # every tool call may branch at threshold 0
        assert math.isfinite(r["actor/loss"]) and "actor/sg_clip_frac" in r and "actor/adv_scale_mean" in r
        assert r["episode/tool_calls_mean"] == 1.0
    assert "eval_end" in summary
