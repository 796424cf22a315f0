"""Episodes (core v2): token-in/token-out multi-turn rollouts, masks, turn rewards, limits, exactness, resume.

Exactness runs with the tiny character tokenizer and with SmolLM2's real BPE tokenizer and ChatML template (shipped
in tests/data/smollm2_tokenizer, so no download is needed) on a small random Llama of its vocabulary.
"""

import textwrap
from pathlib import Path

import pytest
import torch

from entropo import checkpoint, ops
from entropo.algorithms.advantages import grpo, turn_returns
from entropo.batch import Batch
from entropo.config import load_recipe
from entropo.envs.base import EnvFactory, Environment, StepResult
from entropo.logging import read_metrics
from entropo.models import tiny
from entropo.rollout import HFEngine
from entropo.rollout.chat import ChatFormat
from entropo.rollout.episodes import EpisodeLimits
from entropo.trainer import build_batch, score_tokens, train
from entropo.types import Example


class Scripted(Environment):
    """Three turns; turn k is answered with a fixed reply and earns rewards[k]."""

    observation_role = "tool"
    max_turns = 3

    def __init__(self, rewards=(0.5, -1.0, 2.0), reply="result: 42", done_after=3, fail_on_turn=None):
        self.rewards, self.reply, self.done_after, self.fail_on_turn = rewards, reply, done_after, fail_on_turn

    def reset(self, example, seed):
        self.turn, self.seed = 0, seed
        return example.prompt

    def step(self, action):
        if self.fail_on_turn == self.turn:
            raise RuntimeError("tool crashed")
        reward = self.rewards[self.turn]
        self.turn += 1
        return StepResult(observation=f"{self.reply} #{self.turn}", reward=reward, done=self.turn >= self.done_after,
                          tool_call=True)


def _random_llama(vocab_size, eos_id, pad_id, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=pad_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float().eval()
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    return model


@pytest.fixture(scope="module")
def tiny_world():
    model, tokenizer = tiny()
    model.eval()
    return model, tokenizer


def _play(model, tokenizer, env_factory, prompts, n=2, seed=0, **kw):
    engine = HFEngine(model, tokenizer)
    limits = EpisodeLimits(**{k: kw.pop(k) for k in list(kw) if k in EpisodeLimits.__dataclass_fields__})
    out = engine.generate([Example(prompt=p) for p in prompts], n, generator=torch.Generator().manual_seed(seed),
                          environment=env_factory, limits=limits, max_new_tokens=kw.pop("max_new_tokens", 6), **kw)
    return engine, out


# ---- chat-template deltas -------------------------------------------------------------------------------------------

def test_smollm2_reply_ids_follow_the_template_and_keep_the_sampled_end_of_turn(smollm2_tokenizer):
    tok = smollm2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    chat = ChatFormat(tok, "auto", [im_end])
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert chat.close_ids == [im_end] + newline  # "<|im_end|>\n" after an assistant message
    action = tok("Let me compute.", add_special_tokens=False)["input_ids"] + [im_end]  # ended by the policy
    reply = chat.reply_ids(action, "408", templated=True, role="tool")
    expected = tok("\n<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert reply == expected  # the "\n" after <|im_end|> is not dropped (verl #3720), the EOS is not doubled
    cut = tok("print(1", add_special_tokens=False)["input_ids"]  # a truncated action: the whole close is appended
    assert chat.reply_ids(cut, "408", templated=True, role="tool")[:2] == [im_end] + newline


def test_smollm2_trajectory_equals_the_template_of_the_whole_conversation(smollm2_tokenizer):
    tok = smollm2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    chat = ChatFormat(tok, "auto", [im_end])
    conversation = [{"role": "system", "content": "Use the tool."}, {"role": "user", "content": "What is 12*34?"}]
    turns = [("```python\nprint(12*34)\n```", "```output\n408\n```"), ("Check: 408/34", "```output\n12.0\n```"),
             ("The answer is 408.", None)]
    ids = chat.prompt_ids(conversation)
    messages = list(conversation)
    for action_text, observation in turns:
        action = tok(action_text, add_special_tokens=False)["input_ids"] + [im_end]
        ids += action
        messages.append({"role": "assistant", "content": action_text})
        if observation is not None:
            ids += chat.reply_ids(action, observation, True, "tool")
            messages.append({"role": "tool", "content": observation})
    reference = tok.apply_chat_template(messages, tokenize=False)
    assert ids == tok(reference, add_special_tokens=False)["input_ids"][:len(ids)]
    assert chat.template_mismatch(ids, messages) == 0
    # a trajectory that re-encoded a turn differently is caught
    tampered = ids[:-3] + [ids[-2], ids[-3], ids[-1]]
    assert chat.template_mismatch(tampered, messages) == 2


def test_tiny_template_reply_ids(tiny_world):
    _, tok = tiny_world
    chat = ChatFormat(tok, "auto", [tok.eos_token_id])
    assert chat.close_ids == [tok.eos_token_id]
    action = tok("<py>1+2</py>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert chat.reply_ids(action, "3", True, "tool") == tok("3\n", add_special_tokens=False)["input_ids"]
    # plain-string prompts: observations are appended as their text, no template
    assert chat.reply_ids(action, "=3;", False, "tool") == tok("=3;", add_special_tokens=False)["input_ids"]


# ---- the rollout: ids, masks, exactness --------------------------------------------------------------------------

def _check_layout(out, chat, tok, expect_turns):
    """Response tokens are the sampled actions; replies are exactly reply_ids; turn ids and rewards by hand."""
    for r, ep in enumerate(out.episodes):
        live = out.attention_mask[r].bool()
        ids, policy = out.input_ids[r][live].tolist(), out.response_mask[r][live].bool().tolist()
        turns = out.turn_ids[r][live].tolist()
        first = policy.index(True)
        assert all(t == -1 for t in turns[:first]) and not any(policy[:first])
        assert ep.num_turns == expect_turns
        # split the rest into maximal runs of policy / observation tokens
        k, pos, reward_positions = 0, first, []
        while pos < len(ids):
            end = pos
            while end < len(ids) and policy[end]:
                end += 1
            action = ids[pos:end]
            assert set(turns[pos:end]) == {k}
            reward_positions.append(end - 1)
            if end == len(ids):
                break
            reply_end = end
            while reply_end < len(ids) and not policy[reply_end]:
                reply_end += 1
            assert ids[end:reply_end] == chat.reply_ids(action, f"result: 42 #{k + 1}", True, "tool")
            assert set(turns[end:reply_end]) == {k}
            pos, k = reply_end, k + 1
        assert k + 1 == expect_turns
        rewards_row = out.token_rewards[r][live]
        assert rewards_row.nonzero().flatten().tolist() == [p for p, x in zip(reward_positions, (0.5, -1.0, 2.0))
                                                           if x != 0]
        assert rewards_row[reward_positions].tolist() == [0.5, -1.0, 2.0][:expect_turns]


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_multiturn_logprobs_recomputed_equal_sampling(which, tiny_world, smollm2_tokenizer):
    if which == "tiny":
        model, tok = tiny_world
        prompts = [[{"role": "user", "content": "12*34="}], [{"role": "user", "content": "7+8="}]]
    else:
        tok = smollm2_tokenizer
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        model = _random_llama(len(tok), im_end, im_end)
        prompts = [[{"role": "user", "content": "What is 12*34?"}], [{"role": "user", "content": "Hi"}]]
    engine, out = _play(model, tok, EnvFactory(Scripted), prompts, n=2)
    _check_layout(out, engine.chat, tok, expect_turns=3)
    batch = build_batch(out, [Example(prompt=p) for p in prompts], [None] * 4, [0.0] * 4, [False] * 4, 0,
                        torch.device("cpu"))
    logprobs, entropy, _ = score_tokens(model, batch, temperature=1.0, micro_batch_size=4, chunk_size=64)
    mask = batch.response_mask > 0
    assert mask.sum() > 0 and (batch.attention_mask.bool() & ~mask).sum() > mask.shape[0] * 4  # observations exist
    assert torch.allclose(logprobs[mask], batch.behaviour_logprobs[mask], atol=1e-5)
    assert torch.allclose(entropy[mask], batch.behaviour_entropy[mask], atol=1e-5)
    assert torch.all(logprobs[~mask] == 0)


def test_sampled_ids_are_trained_as_sampled_never_re_encoded(smollm2_tokenizer):
    """A random policy writes token sequences that are not the tokenizer's canonical encoding of their own text; the
    trajectory keeps them exactly (re-encoding the decoded history would change them)."""
    tok = smollm2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model = _random_llama(len(tok), im_end, im_end, seed=1)
    engine = HFEngine(model, tok)
    sampled = []
    original = engine._generate_micro_batch

    def spy(*args, **kw):
        res = original(*args, **kw)
        sampled.extend(res[0])
        return res

    engine._generate_micro_batch = spy
    out = engine.generate([Example(prompt=[{"role": "user", "content": "Hi"}])], 4, max_new_tokens=8,
                          generator=torch.Generator().manual_seed(3), environment=EnvFactory(Scripted),
                          limits=EpisodeLimits())
    trained = []
    for r in range(4):
        resp = out.input_ids[r][out.response_mask[r] > 0].tolist()
        turns = out.turn_ids[r][out.response_mask[r] > 0].tolist()
        trained += [[i for i, t in zip(resp, turns) if t == k] for k in range(3)]
    # rounds are batched across episodes: round k holds turn k of each of the 4 episodes
    by_round = [sampled[k * 4 + r] for r in range(4) for k in range(3)]
    assert trained == by_round
    re_encoded = [tok(tok.decode(a, skip_special_tokens=True), add_special_tokens=False)["input_ids"] for a in by_round]
    assert any(a != b for a, b in zip(by_round, re_encoded))  # the test would catch a decode/re-encode
    assert sum(e.template_mismatch > 0 for e in out.episodes) > 0  # and the metric reports such episodes


def test_observation_tokens_get_exactly_zero_gradient(tiny_world):
    model, tok = tiny_world
    _, out = _play(model, tok, EnvFactory(Scripted), [[{"role": "user", "content": "1+2="}]], n=3)
    batch = build_batch(out, [Example(prompt="x")], [None] * 3, [1.0, 0.0, 0.5], [False] * 3, 0, torch.device("cpu"))
    batch.advantages = grpo(batch)
    logprobs, _ = ops.token_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, chunk_size=64,
                                                    compute_mask=batch.attention_mask.float())
    logprobs = logprobs.detach().requires_grad_(True)  # every real token's log-prob, observations included
    from entropo.algorithms.objectives import ppo_clip

    per_token, _ = ppo_clip(logprobs, batch.behaviour_logprobs, batch.advantages, batch.token_weights)
    ops.aggregate(per_token, batch.token_weights, "token-mean", response_mask=batch.response_mask).backward()
    observation = batch.attention_mask.bool() & (batch.response_mask == 0) & (batch.turn_ids >= 0)
    assert observation.sum() > 0 and torch.all(logprobs[observation] != 0)  # they have log-probs, yet no gradient
    assert torch.all(logprobs.grad[observation] == 0)
    assert (logprobs.grad[batch.response_mask > 0] != 0).sum() > 0


def test_single_turn_episode_equals_plain_sampling(tiny_world):
    """A one-turn episode is exactly the engine's plain completion: same ids, log-probs, layout."""
    model, tok = tiny_world
    engine = HFEngine(model, tok)
    prompts = ["3+4=", "12+5="]
    out = engine.generate(prompts, 3, max_new_tokens=5, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    ids = [engine.encode_prompt(p) for p in prompts]
    rows = [ids[i] for i in range(2) for _ in range(3)]
    direct = engine._assemble(ids, [0, 0, 0, 1, 1, 1], *engine._generate_micro_batch(rows, 1.0, 1.0, 5, [], gen, "cpu"))
    for field in ("input_ids", "attention_mask", "response_mask", "behaviour_logprobs", "behaviour_entropy"):
        assert torch.equal(getattr(out, field), getattr(direct, field)), field
    assert out.completions == direct.completions and out.finish_reasons == direct.finish_reasons
    assert out.token_rewards is None and [e.num_turns for e in out.episodes] == [1] * 6


# ---- limits and failures ---------------------------------------------------------------------------------------------

def test_limits_end_episodes_and_say_why(tiny_world):
    model, tok = tiny_world
    prompts = [[{"role": "user", "content": "1+2="}]]
    _, out = _play(model, tok, EnvFactory(Scripted, {"done_after": 9, "rewards": (0.0,) * 9}), prompts, max_turns=2)
    assert out.finish_reasons == ["max_turns", "max_turns"] and [e.num_turns for e in out.episodes] == [2, 2]
    _, out = _play(model, tok, EnvFactory(Scripted, {"done_after": 9, "rewards": (0.0,) * 9}), prompts,
                   max_episode_tokens=10, max_new_tokens=6)
    for r in range(2):
        assert out.finish_reasons[r] == "budget"
        after_prompt = out.attention_mask[r].sum() - len(HFEngine(model, tok).encode_prompt(prompts[0]))
        assert after_prompt <= 10
    _, out = _play(model, tok, EnvFactory(Scripted, {"reply": "x" * 50}), prompts, max_observation_tokens=5)
    assert all(e.truncated_observations == 2 for e in out.episodes)  # two replies, each cut to 5 tokens


def test_failing_environment_step_ends_that_episode_not_the_run(tiny_world):
    model, tok = tiny_world
    _, out = _play(model, tok, EnvFactory(Scripted, {"fail_on_turn": 1}), [[{"role": "user", "content": "1="}]])
    assert out.finish_reasons == ["env_error", "env_error"]
    assert all(e.env_error == "RuntimeError: tool crashed" and e.num_turns == 2 for e in out.episodes)


def test_strict_template_mode_raises_on_a_mismatch(smollm2_tokenizer):
    tok = smollm2_tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model = _random_llama(len(tok), im_end, im_end, seed=1)
    with pytest.raises(ValueError, match="differs from the chat template"):
        _play(model, tok, EnvFactory(Scripted), [[{"role": "user", "content": "Hi"}]], n=4, seed=3,
              strict_template=True, max_new_tokens=8)


# ---- turn rewards and returns -----------------------------------------------------------------------------------------

def _turn_batch():
    # one 3-turn episode: turns 0,1,2 with 2 action tokens each (observation tokens between have mask 0)
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 1, 1], [0, 1, 1, 0, 1, 1, 0, 1, 1]], dtype=torch.float32)
    turns = torch.tensor([[-1, 0, 0, 0, 1, 1, 1, 2, 2]] * 2)
    token_rewards = torch.zeros(2, 9)
    token_rewards[0, [2, 5, 8]] = torch.tensor([0.5, 0.0, 1.0])
    token_rewards[1, [2, 5, 8]] = torch.tensor([0.0, 0.0, 0.0])
    return Batch(input_ids=torch.ones(2, 9, dtype=torch.long), attention_mask=torch.ones(2, 9), response_mask=mask,
                 rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]), token_rewards=token_rewards,
                 turn_ids=turns)


def test_turn_returns_by_hand():
    episode, token_return = turn_returns(_turn_batch(), gamma=0.5)
    # row 0: r' = [0.5, 0, 1 + 1] -> G2 = 2, G1 = 0 + 0.5 * 2 = 1, G0 = 0.5 + 0.5 * 1 = 1
    assert episode.tolist() == [1.0, 0.0]
    assert token_return[0].tolist() == [0, 1, 1, 0, 1, 1, 0, 2, 2]
    assert token_return[1].tolist() == [0.0] * 9


def test_grpo_turn_gamma_by_hand_and_outcome_grpo_unchanged():
    batch = _turn_batch()
    adv = grpo(batch, turn_gamma=0.5)
    # group of G0 = [1, 0]: mean 0.5, unbiased std 0.70711
    std = 0.5 ** 0.5 * 1.0
    assert adv[0, 7].item() == pytest.approx((2 - 0.5) / (std + 1e-6), rel=1e-5)
    assert adv[0, 1].item() == pytest.approx((1 - 0.5) / (std + 1e-6), rel=1e-5)
    assert adv[1, 4].item() == pytest.approx((0 - 0.5) / (std + 1e-6), rel=1e-5)
    assert torch.all(adv[batch.response_mask == 0] == 0)
    # outcome GRPO: the summed return (1 + 0.5 + 1 = 2.5 vs 0), one advantage per episode
    plain = grpo(batch)
    assert torch.allclose(plain[0][batch.response_mask[0] > 0], torch.full((6,), (2.5 - 1.25) / (2.5 / 2 ** 0.5 + 1e-6)))
    # turn_gamma = 1 without turn rewards equals outcome GRPO
    batch.token_rewards = None
    assert torch.allclose(grpo(batch, turn_gamma=1.0), grpo(batch))


# ---- the loop: plugins, resume -------------------------------------------------------------------------------------

PLUGIN = '''
from entropo import Environment, StepResult


class Counter(Environment):
    """Answers every action with how many digits it held; 2 turns; turn reward = 0.1 per digit."""

    observation_role = "tool"
    max_turns = 2

    def __init__(self, scale: float = 0.1):
        self.scale = scale

    def reset(self, example, seed):
        self.turn = 0
        return example.prompt

    def step(self, action):
        self.turn += 1
        digits = sum(c.isdigit() for c in action)
        return StepResult(observation=str(digits), reward=self.scale * digits, done=self.turn >= 2,
                          tool_call=True)
'''


def _plugin(tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s", "peak_mem"))} for r in rows]


def test_multiturn_run_by_import_path_resumes_exactly(tmp_path, monkeypatch, tiny_recipe_overrides):
    _plugin(tmp_path, monkeypatch)
    ov = tiny_recipe_overrides + [
        "environment={name: 'my_envs:Counter', params: {scale: 0.2}}", "task.params={digits: 1, chat: true}",
        "train.steps=4", "logging.tensorboard=false", "rollout.max_new_tokens=4", "advantage.params={turn_gamma: 0.9}",
        "warmup.steps=5"]
    straight = train(load_recipe(None, ov), run_dir=tmp_path / "straight", console=lambda *_: None)
    rows = read_metrics(tmp_path / "straight")
    assert all(r["episode/turns_mean"] == 2.0 and r["episode/tool_calls_mean"] == 2.0 for r in rows
               if not r.get("final"))
    assert straight["eval_end"]["turns_mean"] == 2.0
    train(load_recipe(None, ov), run_dir=tmp_path / "resumed", stop_after=2, console=lambda *_: None)
    resumed = train(load_recipe(None, ov), run_dir=tmp_path / "resumed", resume=True, console=lambda *_: None)
    assert _strip(read_metrics(tmp_path / "straight")) == _strip(read_metrics(tmp_path / "resumed"))
    assert straight["eval_end"] == resumed["eval_end"]
    wa = checkpoint.load(checkpoint.latest(tmp_path / "straight"))["model"]
    wb = checkpoint.load(checkpoint.latest(tmp_path / "resumed"))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_environment_import_path_is_one_clear_error(tiny_recipe_overrides):
    from entropo.config import ConfigError

    with pytest.raises(ConfigError, match=r"environment\.name: .*no module named 'nowhere_pkg\.envs' \(package 'nowhere_pkg' not found\)"):
        load_recipe(None, tiny_recipe_overrides + ["environment={name: 'nowhere_pkg.envs:Inventory'}"])


def test_readme_agents_example_runs(tmp_path, monkeypatch):
    """The README's 'Agents and tools' environment example, run as written (with a few small steps added)."""
    import re
    import sys

    import entropo

    section = (Path(__file__).parent.parent / "README.md").read_text().split("## Agents and tools", 1)[1]
    section = section.split("\n## ", 1)[0]
    module_src, script = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    name = re.match(r"# (\w+)\.py\n", module_src).group(1)
    (tmp_path / f"{name}.py").write_text(module_src)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(name, None)
    real_train = entropo.train
    fast = ["warmup.steps=5", "rollout.prompts_per_step=2", "rollout.n=4", "task.eval_size=4",
            "logging.progress=false", "logging.plots=false", "logging.tensorboard=false", "checkpoint.every=0"]
    seen = {}

    def small(recipe, overrides=(), **kw):
        seen["summary"] = real_train(recipe, [*overrides, *fast, "train.steps=3"], console=None, **kw)
        return seen["summary"]

    monkeypatch.setattr(entropo, "train", small)
    exec(compile(script, "README.md", "exec"), {"__name__": "__main__"})
    summary = seen["summary"]
    assert 1.0 <= summary["eval_end"]["turns_mean"] <= 3.0 and summary["steps"] == 3
    rows = [r for r in read_metrics(Path(summary["run_dir"])) if not r.get("final")]
    assert all(r["episode/env_errors"] == 0 and r["episode/turns_mean"] > 1.0 for r in rows)


class _ResetFails(Scripted):
    def reset(self, example, seed):
        if seed % 2:
            raise OSError("no database")
        return super().reset(example, seed)


def test_failing_reset_ends_that_episode_before_any_action(tiny_world):
    model, tok = tiny_world
    _, out = _play(model, tok, EnvFactory(_ResetFails), [[{"role": "user", "content": "1="}]], n=4)
    assert out.finish_reasons[1::2] == ["env_error", "env_error"] and out.num_tokens[1::2] == [0, 0]
    assert out.episodes[1].env_error == "OSError in reset: no database"
    assert [e.num_turns for e in out.episodes[0::2]] == [3, 3]  # the others played on


def test_batches_with_and_without_turn_rewards_concatenate():
    a = _turn_batch()
    b = _turn_batch()
    b.token_rewards = None  # e.g. a refill round whose episodes earned no turn reward
    both = Batch.concat([a, b])
    assert torch.equal(both.token_rewards[:2], a.token_rewards) and torch.all(both.token_rewards[2:] == 0)


def test_params_for_a_parameterless_environment_are_one_clear_error(tiny_recipe_overrides):
    """Switching a tool recipe to single_turn by name alone keeps the tool's params: refused at load, naming them."""
    from entropo.config import ConfigError

    with pytest.raises(ConfigError, match=r"environment\.params: unknown parameter\(s\) 'max_turns' for environment "
                                          r"'single_turn'\. Allowed: \(none\)"):
        load_recipe(None, tiny_recipe_overrides + ["environment={name: single_turn, params: {max_turns: 3}}"])


@pytest.mark.parametrize("limit", [{"max_observation_tokens": 4}, {"max_episode_tokens": 14}])
def test_replies_cut_by_a_limit_are_not_counted_as_template_mismatches(tiny_world, limit):
    """Canonical actions and a reply cut by a limit: the template check covers everything before the cut."""
    model, tok = tiny_world
    engine = HFEngine(model, tok)
    action = tok("<py>1+2</py>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def forced(contexts, temperature, top_p, budget, stops, generator, device):
        ids = action[:budget]
        return [ids] * len(contexts), [torch.zeros(len(ids))] * len(contexts), [torch.zeros(len(ids))] * len(
            contexts), ["eos" if len(ids) == len(action) else "length"] * len(contexts)

    engine._generate_micro_batch = forced
    out = engine.generate([Example(prompt=[{"role": "user", "content": "1+2="}])], 2, max_new_tokens=16,
                          environment=EnvFactory(Scripted, {"reply": "a long tool output"}),
                          limits=EpisodeLimits(**limit))
    cut = [e.truncated_observations for e in out.episodes] if "max_observation_tokens" in limit else out.finish_reasons
    assert cut == ([2, 2] if "max_observation_tokens" in limit else ["budget", "budget"])
    assert [e.template_mismatch for e in out.episodes] == [0, 0]
