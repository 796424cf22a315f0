"""IterResearch + EAPO (arXiv 2511.07327): rebuilt-context rounds as rows, the round reward gamma^(T-t)·R, group
pooling over rounds, downsampling to a multiple of N, the ``notebook`` environment and task, the recipe."""

import re

import pytest
import torch

from entropo.algorithms.advantages import grpo
from entropo.algorithms.eapo import geometric_round_discount, round_discounts, row_rounds
from entropo.algorithms.selection import downsample_to_multiple
from entropo.batch import Batch
from entropo.config import load_recipe
from entropo.envs.base import EnvFactory, Environment, StepResult
from entropo.envs.notebook import Notebook, notebook_task
from entropo.models import tiny
from entropo.rollout.chat import ChatFormat
from entropo.rollout.episodes import EpisodeLimits, assemble, run_episodes
from entropo.sft import _sft_batch
from entropo.trainer import build_batch
from entropo.types import Example


@pytest.fixture(scope="module")
def tok():
    return tiny()[1]


# ---- hand values ----------------------------------------------------------------------------------------------------

def test_round_discount_hand_values():
    assert [round(x, 2) for x in round_discounts(3, 0.9)] == [0.81, 0.90, 1.00]
    assert [round(x, 2) for x in round_discounts(6, 0.9)] == [0.59, 0.66, 0.73, 0.81, 0.90, 1.00]
    assert round_discounts(4, 1.0) == [1.0] * 4


def _round_batch(trajectories, gamma_rows=None):
    """Rows of per-round trajectories [(T, R)], one row per round: response token k of round t has turn id t."""
    rows = [(t, T, R) for T, R in trajectories for t in range(T)]
    B = len(rows)
    response_mask = torch.zeros(B, 4)
    response_mask[:, 2:] = 1
    turn_ids = torch.full((B, 4), -1, dtype=torch.long)
    for b, (t, _, _) in enumerate(rows):
        turn_ids[b, 2:] = t
    return Batch(input_ids=torch.ones(B, 4, dtype=torch.long), attention_mask=torch.ones(B, 4, dtype=torch.long),
                 response_mask=response_mask, rewards=torch.tensor([float(R) for _, _, R in rows]),
                 group_ids=torch.zeros(B, dtype=torch.long), turn_ids=turn_ids,
                 num_turns=torch.tensor([T for _, T, _ in rows]))


def test_geometric_round_discount_on_rows_and_group_pooling():
    batch = _round_batch([(3, 1.0), (6, 1.0), (4, 0.0)])
    assert row_rounds(batch).tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    metrics = geometric_round_discount(batch, gamma=0.9)
    r = batch.rewards.tolist()
    assert [round(x, 2) for x in r[:3]] == [0.81, 0.90, 1.00]
    assert [round(x, 2) for x in r[3:9]] == [0.59, 0.66, 0.73, 0.81, 0.90, 1.00]
    assert r[9:] == [0.0] * 4
    assert metrics["rounds_mean"] == pytest.approx((3 * 3 + 6 * 6 + 4 * 4) / 13)
    # grpo z-scores over the whole pool C_q: all 13 rows share the group, rows != trajectories
    adv = grpo(batch)[:, 2]
    pool = torch.tensor(r)
    assert torch.allclose(adv, (pool - pool.mean()) / (pool.std() + 1e-6), atol=1e-5)
    # the shorter successful path's early rounds get larger advantages than the longer one's
    assert adv[0] > adv[3] and adv[1] > adv[4]
    assert (adv[9:] < 0).all()


def test_gamma_one_is_plain_per_round_rewards_and_gamma_is_checked():
    batch = _round_batch([(3, 1.0), (2, 0.0)])
    geometric_round_discount(batch, gamma=1.0)
    assert batch.rewards.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="gamma"):
        geometric_round_discount(batch, gamma=1.5)


def test_downsample_to_multiple():
    batch = _round_batch([(1, 0.0)] * 137)
    keep = downsample_to_multiple(batch, multiple=8, step_ctx=None)
    assert int(keep.sum()) == 136
    assert torch.equal(keep, downsample_to_multiple(batch, multiple=8))  # reproducible (a fixed generator here)
    assert int(downsample_to_multiple(batch, multiple=1).sum()) == 137
    assert int(downsample_to_multiple(_round_batch([(1, 0.0)] * 5), multiple=8).sum()) == 0
    with pytest.raises(ValueError, match="multiple must be"):
        downsample_to_multiple(batch, multiple=0)


# ---- rollout: one row per round, ids exact ----------------------------------------------------------------------------

def _oracle_sampler(tok, log):
    """Plays ``notebook`` right: reads the memo and the new digit from the context (test-side decode only)."""
    def sample_turn(contexts, budget, stops):
        out = []
        for ctx in contexts:
            log.append(list(ctx))
            text = tok.decode(ctx, skip_special_tokens=False)
            memo = re.findall(r"memo:(\d*)", text)
            gots = re.findall(r"got:(\d) left:(\d)", text)
            if memo:  # rebuilt workspace: memo + this round's digit
                total, left = memo[-1] + gots[-1][0], gots[-1][1]
            else:  # append-all history: every digit so far is in the context
                total, left = "".join(g for g, _ in gots), gots[-1][1]
            action = f"m={total} " + (f"ans={total}" if left == "0" else "next")
            ids = tok(action, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out.append((ids, torch.full((len(ids),), -0.5), torch.full((len(ids),), 0.25), "eos"))
        return out
    return sample_turn


def _play(tok, context, examples, n=2, **limits):
    chat = ChatFormat(tok, "auto", [tok.eos_token_id])
    log = []
    envs = [Notebook(context=context) for _ in range(len(examples) * n)]
    rows = [e for e in examples for _ in range(n)]
    eps = run_episodes(envs, rows, list(range(len(rows))), chat, _oracle_sampler(tok, log),
                       EpisodeLimits(max_new_tokens=24, **limits))
    index = [i for i in range(len(examples)) for _ in range(n)]
    decode = lambda r: tok.batch_decode(r, skip_special_tokens=True)  # noqa: E731
    return chat, log, eps, assemble(eps, index, tok.pad_token_id, decode, rounds=True), \
        assemble(eps, index, tok.pad_token_id, decode, rounds=False)


def _rows(out):
    """Per row: (prompt ids, response ids, response-mask of the response part) from the left/right-padded layout."""
    res = []
    for r in range(out.input_ids.shape[0]):
        real = out.attention_mask[r].bool()
        ids, mask = out.input_ids[r][real].tolist(), out.response_mask[r][real].tolist()
        first = mask.index(1.0)
        res.append((ids[:first], ids[first:], mask[first:]))
    return res


def test_rebuilt_workspace_gives_one_row_per_round_with_exact_ids(tok):
    task = notebook_task(0, 4, min_count=3, max_count=4)
    examples = [task.train_example(0), task.train_example(1)]
    chat, log, eps, out, last = _play(tok, "rebuild", examples, n=2)
    counts = [len(e.meta["digits"]) for e in examples for _ in range(2)]
    assert [e.info.num_turns for e in eps] == counts and all(e.info.env_correct for e in eps)
    assert out.input_ids.shape[0] == sum(counts) == len(log)  # one row per round, one sampled context per round
    assert out.prompt_index.tolist() == [i for i, c in zip([0, 0, 1, 1], counts) for _ in range(c)]
    rows = _rows(out)
    r = 0
    for e, ep in enumerate(eps):
        env = Notebook()
        context = env.reset(examples[e // 2], 0)
        for t, action in enumerate(ep.info.actions):
            prompt, response, mask = rows[r]
            # the prompt is the chat template's encoding of the workspace messages, nothing carried over
            reference = tok(tok.apply_chat_template(context, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"]
            assert prompt == reference and prompt in log  # what the policy sampled from
            # the response is exactly the sampled ids (action + EOS), all trained, no observation ids in the row
            assert response == tok(action, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert mask == [1.0] * len(response)
            real = out.attention_mask[r].bool()
            assert set(out.turn_ids[r][real][len(prompt):].tolist()) == {t}  # the round index
            assert out.episodes[r] is ep.info and out.completions[r] == ep.info.final_action
            step = env.step(action)
            context = step.context
            r += 1
        assert ep.info.template_mismatch == 0
    # behaviour log-probs are the sampler's, on the action tokens only
    assert torch.allclose(out.behaviour_logprobs[out.response_mask > 0], torch.tensor(-0.5))
    # evaluation layout: one row per episode (its last round) with the episode's outcome
    assert last.input_ids.shape[0] == 4 and last.prompt_index.tolist() == [0, 0, 1, 1]
    assert [e.env_correct for e in last.episodes] == [True] * 4


def test_append_all_keeps_one_row_and_masks_observations_and_hits_the_window(tok):
    task = notebook_task(0, 4, min_count=3, max_count=3)
    ex3 = task.train_example(0)
    chat, _, eps, out, last = _play(tok, "append", [ex3], n=1, max_episode_tokens=64)
    assert out.input_ids.shape[0] == 1 and eps[0].info.env_correct  # 3 digits fit a 64-token window
    ((prompt, response, mask),) = _rows(out)
    assert prompt == chat.prompt_ids(Notebook(context="append").reset(ex3, 0))
    obs = [i for i, m in zip(response, mask) if m == 0]
    assert tok.decode(obs) == "got:{} left:1\ngot:{} left:0\n".format(*ex3.meta["digits"][1:])
    assert torch.equal(out.input_ids, last.input_ids)  # no rebuild: rounds=True changes nothing
    long = notebook_task(0, 4, min_count=8, max_count=8).train_example(0)
    _, _, eps, out, _ = _play(tok, "append", [long], n=1, max_episode_tokens=64)
    assert eps[0].reason == "budget" and not eps[0].info.env_correct
    _, _, eps, out, _ = _play(tok, "rebuild", [long], n=1, max_episode_tokens=64)
    assert eps[0].info.env_correct and out.input_ids.shape[0] == 8  # the window bounds each round, not the episode


def test_smollm2_window_ceiling(smollm2_tokenizer):
    """The SmolLM2 experiments' 96-token window (eapo_*_smollm2), with SmolLM2's real chat template: a perfect policy
    solves every problem in the rebuilt workspace, and with append-all exactly those of at most 4 digits."""
    tok = smollm2_tokenizer
    chat = ChatFormat(tok, "auto", [tok.eos_token_id])
    examples = notebook_task(0, 24, min_count=3, max_count=8).eval_examples()
    solved = {}
    for context in ("rebuild", "append"):
        envs = [Notebook(context=context) for _ in examples]
        eps = run_episodes(envs, examples, list(range(len(examples))), chat, _oracle_sampler(tok, []),
                           EpisodeLimits(max_new_tokens=24, max_episode_tokens=96))
        solved[context] = [bool(e.info.env_correct) for e in eps]
    counts = [len(e.meta["digits"]) for e in examples]
    assert solved["rebuild"] == [True] * len(examples)
    assert solved["append"] == [c <= 4 for c in counts] and 0 < sum(solved["append"]) < len(examples)


class _Mixed(Environment):
    """Appends a reply after action 1, rebuilds the context after action 2, ends after action 3."""

    max_turns = 3

    def reset(self, example, seed):
        self.k = 0
        return [{"role": "user", "content": "go"}]

    def step(self, action):
        self.k += 1
        if self.k == 1:
            return StepResult(observation="obs", reward=0.5)
        if self.k == 2:
            return StepResult(context=[{"role": "user", "content": "fresh"}])
        return StepResult(done=True, correct=True)


def test_a_rebuild_closes_the_round_and_replies_before_it_stay_untrained(tok):
    chat = ChatFormat(tok, "auto", [tok.eos_token_id])
    acts = [tok("ab", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]] * 3
    calls = iter(acts)
    sample = lambda ctxs, b, s: [(next(calls), torch.zeros(3), torch.zeros(3), "eos") for _ in ctxs]  # noqa: E731
    eps = run_episodes([_Mixed()], [Example(prompt="x")], [0], chat, sample, EpisodeLimits())
    out = assemble(eps, [0], tok.pad_token_id, lambda r: tok.batch_decode(r), rounds=True)
    (p0, r0, m0), (p1, r1, m1) = _rows(out)
    assert p0 == chat.prompt_ids([{"role": "user", "content": "go"}])
    assert r0 == acts[0] + tok("obs\n", add_special_tokens=False)["input_ids"] + acts[1]
    assert m0 == [1.0] * 3 + [0.0] * 4 + [1.0] * 3  # the reply is never trained
    assert p1 == chat.prompt_ids([{"role": "user", "content": "fresh"}]) and r1 == acts[2] and m1 == [1.0] * 3
    assert out.token_rewards[0].sum() == 0.5 and out.token_rewards[1].sum() == 0  # turn reward stays in its round
    assert eps[0].info.template_mismatch == 0


def test_trainer_batch_pools_all_rounds_of_a_question_in_one_group(tok):
    task = notebook_task(0, 4, min_count=3, max_count=5)
    examples = [task.train_example(0), task.train_example(1)]
    _, _, eps, out, _ = _play(tok, "rebuild", examples, n=2)
    rows = out.input_ids.shape[0]
    batch = build_batch(out, examples, [None] * rows, [1.0] * rows, [True] * rows, 10, torch.device("cpu"))
    counts = [len(e.meta["digits"]) for e in examples]
    assert batch.group_ids.tolist() == [10] * (2 * counts[0]) + [11] * (2 * counts[1])
    assert batch.num_turns.tolist() == [c for c in counts for _ in range(2) for _ in range(c)]
    assert row_rounds(batch).tolist() == [t for c in counts for _ in range(2) for t in range(c)]


# ---- the notebook environment suite ----------------------------------------------------------------------------------

def test_task_is_seeded_and_the_eval_split_is_held_out():
    a, b = notebook_task(3, 32), notebook_task(3, 32)
    assert [e.meta["digits"] for e in a.eval_examples()] == [e.meta["digits"] for e in b.eval_examples()]
    assert a.train_example(5) == b.train_example(5)
    held = {tuple(e.meta["digits"]) for e in a.eval_examples()}
    assert all(tuple(a.train_example(i).meta["digits"]) not in held for i in range(2000))
    assert notebook_task(4, 32).eval_examples() != a.eval_examples()
    ex = a.train_example(0)
    assert ex.answer == "".join(map(str, ex.meta["digits"]))
    assert a.correct(f"m=1 ans={ex.answer}", ex) and not a.correct("m=1 next", ex)
    s = notebook_task(3, 8, op="sum", modulus=10).train_example(0)
    assert s.answer == str(sum(s.meta["digits"]) % 10)
    with pytest.raises(TypeError, match="allowed parameters"):
        notebook_task(0, 8, digits=3)
    with pytest.raises(ValueError, match="min_count"):
        notebook_task(0, 8, min_count=5, max_count=2)


def test_env_reset_step_malformed_and_late_actions():
    ex = Example(prompt="", answer="472", meta={"digits": [4, 7, 2]})
    env = Notebook()
    first = env.reset(ex, 0)
    assert first == Notebook().reset(ex, 99) == [{"role": "user", "content": "collect 3 digits\nmemo:\nstart got:4 left:2"}]
    bad = env.step("hello")
    assert not bad.done and "bad action" in bad.context[0]["content"] and "m=<memo> next" in bad.context[0]["content"]
    assert env.step("m=4 next").context[0]["content"] == "collect 3 digits\nmemo:4\ndid:next got:7 left:1"
    assert env.step("m=47 next").context[0]["content"].endswith("got:2 left:0")
    late = env.step("m=472 next")
    assert late.context[0]["content"] == "collect 3 digits\nmemo:472\ndid:next got:- left:0"
    assert env.step("m=472 ans=472") == StepResult(done=True, correct=True, info={"malformed": 0})
    env.reset(ex, 0)
    assert env.step("m=4 ans=4").correct is False  # an early answer is judged and wrong
    app = Notebook(context="append")
    assert app.reset(ex, 0) == [{"role": "user", "content": "collect 3 digits\ngot:4 left:2"}]
    reply = app.step("m=4 next")
    assert reply.context is None and reply.observation == "got:7 left:1"
    assert "bad action" in app.step("???").observation
    with pytest.raises(ValueError, match="meta"):
        Notebook().reset(Example(prompt="q"), 0)
    with pytest.raises(ValueError, match="context"):
        Notebook(context="window")


@pytest.mark.parametrize("context", ["rebuild", "append"])
def test_demonstrations_replay_to_a_correct_answer_and_sft_rows_follow_the_layout(tok, context):
    task = notebook_task(0, 4, min_count=3, max_count=5)
    ex = task.train_example(2)
    k = len(ex.meta["digits"])
    env = Notebook(context=context, demo_extra_rounds=2)
    rows = env.demonstration_rows(ex)
    assert k <= len(rows) <= k + 2 if context == "rebuild" else len(rows) == 1
    play = Notebook(context=context)
    obs = play.reset(ex, 0)
    for first, messages in rows:
        if context == "rebuild":
            assert first == obs
        for m in messages:
            if m["role"] == "assistant":
                res = play.step(m["content"])
                obs = res.context
    assert res.done and res.correct
    from types import SimpleNamespace
    engine = SimpleNamespace(chat=ChatFormat(tok, "auto", [tok.eos_token_id]))
    ids, _, mask = _sft_batch(engine, tok, [ex], "cpu", EnvFactory(Notebook, {"context": context}))
    assert ids.shape[0] == (k if context == "rebuild" else 1)  # demo_extra_rounds defaults to 0
    trained = tok.decode(ids[0][mask[0] > 0].tolist())
    assert trained.startswith("m=" + str(ex.meta["digits"][0]))


# ---- recipe and a few training steps ----------------------------------------------------------------------------------

def test_eapo_recipe_trains_a_few_steps(tmp_path):
    from entropo.logging import read_metrics
    from entropo.trainer import train

    overrides = ["warmup.steps=3", "warmup.batch_size=2", "train.steps=2", "rollout.prompts_per_step=2",
                 "rollout.n=2", "task.eval_size=2", "task.params.max_count=4", "environment.params.max_turns=5",
                 "selection.0.params.multiple=4", "eval.every=0", "checkpoint.every=0", "logging.progress=false",
                 "logging.plots=false", "logging.tensorboard=false", "train.micro_batch_size=16"]
    recipe = load_recipe("entropo/recipes/eapo.yaml", overrides)
    assert recipe.objective.name == "gspo" and recipe.shaping[0].name == "geometric_round_discount"
    train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)
    rows = [m for m in read_metrics(tmp_path / "run") if "shaping/rounds_mean" in m]
    assert len(rows) == 2
    for m in rows:
        assert 1.0 <= m["shaping/rounds_mean"] <= 5.0
        assert 0.0 < m["shaping/discount_mean"] <= 1.0
        assert m["actor/optimizer_steps"] == 2


def test_episode_metrics_count_an_episode_once_across_its_round_rows():
    from entropo.trainer import episode_metrics
    from entropo.types import EpisodeInfo

    long, short = EpisodeInfo(num_turns=3, tool_calls=3), EpisodeInfo(num_turns=1, tool_calls=0)
    rows = [long, long, long, short]  # the 3-round episode has 3 rows that share its info
    m = episode_metrics(rows)
    assert m["episode/turns_mean"] == 2.0 and m["episode/tool_calls_mean"] == 1.5  # not (3*3+1)/4 = 2.5
