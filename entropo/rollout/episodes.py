"""The episode loop: batched multi-turn sampling against environments, token in and token out.

``run_episodes`` drives one environment instance per row. Each round samples one turn for every episode still
running (batched across episodes; finished episodes leave the batch), hands each decoded action to its environment
(concurrently, on a bounded thread pool: tool calls of different episodes overlap), and appends the reply ids from
``ChatFormat.reply_ids``. The trajectory of a row is exactly: prompt ids, then per turn the sampled action ids (policy
tokens: trained on, with their sampling log-probs and entropies) and the reply ids (observation tokens: never trained
on). A single-turn task is the one-turn episode of ``SingleTurn`` and takes this same path.

Rebuilt contexts (Markov workspaces, IterResearch arXiv 2511.07327): a step whose ``StepResult.context`` is set ends
the episode's current *round*: the next action is sampled from the chat template's encoding of that context as a new
prompt (never a decode/re-encode of sampled ids), not from the history. Each round keeps its own prompt ids, sampled
ids and replies; ``assemble(..., rounds=True)`` (training rollouts) lays every round out as its own row of the same
prompt slot, ``rounds=False`` (evaluation) one row per episode, its last round. An episode that never rebuilds is one
round, so both give exactly the rows of the plain loop. The token limits (``max_new_tokens``, ``max_episode_tokens``,
``max_observation_tokens``) apply per round: the context window is what they bound; ``max_turns`` counts all actions.

Limits: ``max_turns`` actions per episode, ``max_new_tokens`` per action, ``max_episode_tokens`` for everything after
the prompt (actions and replies), ``max_observation_tokens`` per reply. An episode that hits one is ended and its
finish reason says which (``"length"`` for the last action's own limit, ``"max_turns"``, ``"budget"``). An
environment whose ``reset`` or ``step`` raises ends that episode as a failure (``EpisodeInfo.env_error``), never the run.
"""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from entropo.envs.base import Environment, StepResult
from entropo.rollout.chat import ChatFormat
from entropo.types import EpisodeInfo, Example, RolloutOutput

log = logging.getLogger(__name__)

# sample_turn(contexts: list[list[int]], max_new_tokens, stop) -> per row (ids, logprobs [T], entropies [T], reason)
TurnSampler = Callable[[list[list[int]], int, list[str]], list[tuple[list[int], Tensor, Tensor, str]]]


@dataclass
class EpisodeLimits:
    max_turns: int | None = None  # None: the environment's own ``max_turns``
    max_new_tokens: int = 64  # per action
    max_episode_tokens: int | None = None  # actions + replies after the prompt (None: no limit beyond the turns)
    max_observation_tokens: int | None = None  # per reply (longer replies are cut, counted in EpisodeInfo)
    check_template: bool = True  # measure each templated episode against the template's own encoding
    strict_template: bool = False  # raise on a mismatch (debug mode) instead of only reporting it


@dataclass
class _Episode:
    env: Environment | None  # None for one-turn rows an engine sampled itself (tree leaves, window continuations)
    example: Example | None
    prompt_ids: list[int]
    templated: bool
    max_turns: int
    messages: list[dict[str, str]]
    ids: list[int] = field(default_factory=list)  # everything after the prompt
    policy: list[bool] = field(default_factory=list)
    turn_of: list[int] = field(default_factory=list)
    logprobs: list[Tensor] = field(default_factory=list)
    entropies: list[Tensor] = field(default_factory=list)
    turn_rewards: list[tuple[int, float]] = field(default_factory=list)  # (index in ids of the turn's last token, r)
    actions: list[str] = field(default_factory=list)
    reason: str = ""
    info: EpisodeInfo = field(default_factory=EpisodeInfo)
    running: bool = True
    # The template check covers ids[:exact_upto] and ``messages``: everything up to the first reply cut short by a
    # limit (a cut reply is not the encoding of any message, so nothing after it can be compared).
    exact_upto: int = 0
    exact: bool = True
    rounds: list["_Round"] = field(default_factory=list)  # earlier rounds, closed by a rebuilt context

    def add(self, ids: Sequence[int], policy: bool, turn: int, logprobs: Tensor | None = None,
            entropies: Tensor | None = None) -> None:
        self.ids += list(ids)
        self.policy += [policy] * len(ids)
        self.turn_of += [turn] * len(ids)
        zeros = torch.zeros(len(ids))
        self.logprobs.append(logprobs if logprobs is not None else zeros)
        self.entropies.append(entropies if entropies is not None else zeros)

    def fork(self, env: Environment | None) -> "_Episode":
        """A running copy of this episode in ``env`` (an environment in the same state as this one's): the same
        prompt and trajectory ids (copied as ids, never decoded), log-probs, entropies, turn rewards and actions;
        sampling then continues from exactly this token prefix. Used by branching rollouts (``on_round``)."""
        return _Episode(env=env, example=self.example, prompt_ids=list(self.prompt_ids), templated=self.templated,
                        max_turns=self.max_turns, messages=[dict(m) for m in self.messages], ids=list(self.ids),
                        policy=list(self.policy), turn_of=list(self.turn_of), logprobs=list(self.logprobs),
                        entropies=list(self.entropies), turn_rewards=list(self.turn_rewards),
                        actions=list(self.actions), reason=self.reason, info=copy.deepcopy(self.info),
                        running=self.running, exact_upto=self.exact_upto, exact=self.exact)


@dataclass
class _Round:
    """One round of an episode: a prompt and what followed it until the context was rebuilt (or the episode ended)."""

    prompt_ids: list[int]
    ids: list[int]
    policy: list[bool]
    turn_of: list[int]
    logprobs: list[Tensor]
    entropies: list[Tensor]
    turn_rewards: list[tuple[int, float]]

    @classmethod
    def of(cls, ep: _Episode) -> "_Round":
        return cls(ep.prompt_ids, ep.ids, ep.policy, ep.turn_of, ep.logprobs, ep.entropies, ep.turn_rewards)


def _rounds(ep: _Episode) -> list[_Round]:
    """Every round of ``ep`` in order (just one for an episode that never rebuilt its context)."""
    return [*ep.rounds, _Round.of(ep)]


def _rebuild(ep: _Episode, context: Any, chat: ChatFormat, limits: EpisodeLimits) -> None:
    """Close the current round and start the next one from ``context`` (encoded as a fresh prompt)."""
    if limits.check_template and ep.templated:  # each round is checked against the template on its own
        ep.info.template_mismatch += chat.template_mismatch(ep.prompt_ids + ep.ids[:ep.exact_upto], ep.messages)
    ep.rounds.append(_Round.of(ep))
    ep.prompt_ids, ep.templated = chat.prompt_ids(context), chat.uses_template(context)
    ep.messages = chat.as_messages(context) if ep.templated else []
    ep.ids, ep.policy, ep.turn_of, ep.logprobs, ep.entropies, ep.turn_rewards = [], [], [], [], [], []
    ep.exact_upto, ep.exact = 0, True


def _safe_step(env: Environment, action: str) -> StepResult | BaseException:
    try:
        result = env.step(action)
        if not isinstance(result, StepResult):
            raise TypeError(f"{type(env).__name__}.step returned {type(result).__name__}; return a StepResult")
        return result
    except Exception as e:  # an environment failure ends that episode, never the run
        return e


def run_episodes(
    envs: list[Environment],
    examples: list[Example],
    seeds: list[int],
    chat: ChatFormat,
    sample_turn: TurnSampler,
    limits: EpisodeLimits,
    stop: Sequence[str] = (),
    workers: int = 8,
    on_round: Callable[[list[_Episode], int], list[_Episode]] | None = None,
    timing: dict[str, float] | None = None,
) -> list[_Episode]:
    """Play one episode per (env, example, seed) row; returns the finished episodes in row order.

    ``on_round(episodes, turn)``, when given, is called after every round (all actions of ``turn`` sampled, their
    steps taken, the replies of the episodes going on appended) and may return new running episodes to add, made
    with ``_Episode.fork`` of an episode still running (branching rollouts: they continue from its exact token
    prefix at the next turn). Added episodes are returned after the rows, in the order they were added.

    ``timing``, when given, accumulates wall seconds: ``sample_s`` (the policy sampling turns), ``env_s`` (the loop
    waiting on environment steps, all episodes' steps of a turn running concurrently) and ``reset_s``."""
    timing = timing if timing is not None else {}
    for key in ("sample_s", "env_s", "reset_s"):
        timing.setdefault(key, 0.0)
    def decode(ids: list[int]) -> str:  # the action's text, for the environment only; never re-encoded
        return chat.tokenizer.decode(ids, skip_special_tokens=True)

    episodes: list[_Episode] = []
    t0 = time.perf_counter()
    for env, example, seed in zip(envs, examples, seeds):
        max_turns = limits.max_turns if limits.max_turns is not None else int(getattr(env, "max_turns", 1))
        try:
            first, error = env.reset(example, int(seed)), None
        except Exception as e:  # the episode ends before its first action; the run goes on
            first, error = example.prompt, f"{type(e).__name__} in reset: {e}"
            log.warning("environment %s failed to reset: %s", type(env).__name__, e)
        ep = _Episode(env=env, example=example, prompt_ids=chat.prompt_ids(first), templated=chat.uses_template(first),
                      max_turns=max(1, max_turns), messages=chat.as_messages(first) if chat.uses_template(first) else [])
        episodes.append(ep)
        if error is not None:
            ep.info.env_error = error
            _finish(ep, "env_error")

    timing["reset_s"] += time.perf_counter() - t0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        turn = 0
        while True:
            running = [ep for ep in episodes if ep.running]
            if not running:
                break
            budgets = [_action_budget(ep, limits) for ep in running]
            stops = list(dict.fromkeys([*stop, *(s for ep in running for s in getattr(ep.env, "stop", ()))]))
            t0 = time.perf_counter()
            sampled = sample_turn([ep.prompt_ids + ep.ids for ep in running], max(budgets), stops)
            timing["sample_s"] += time.perf_counter() - t0
            for ep, budget, (ids, lps, ents, why) in zip(running, budgets, sampled):
                if len(ids) > budget:  # the episode budget is tighter than this round's per-action limit
                    ids, lps, ents, why = ids[:budget], lps[:budget], ents[:budget], "budget"
                ep.add(ids, True, turn, lps.float(), ents.float())
                ep.actions.append(decode(ids))
                ep.reason = why
            t0 = time.perf_counter()
            results = list(pool.map(lambda ep: _safe_step(ep.env, ep.actions[-1]), running))
            timing["env_s"] += time.perf_counter() - t0
            for ep, result in zip(running, results):
                last_token = len(ep.ids) - 1
                if isinstance(result, BaseException):
                    ep.info.env_error = f"{type(result).__name__}: {result}"
                    log.warning("environment %s failed on turn %d: %s", type(ep.env).__name__, turn, result)
                    _finish(ep, "env_error")
                    continue
                if last_token >= 0:
                    ep.turn_rewards.append((last_token, float(result.reward)))
                if result.tool_call:
                    ep.info.tool_calls += 1
                    ep.info.tool_call_turns.append(turn)
                if result.info:
                    ep.info.info.update(result.info)
                if result.correct is not None:
                    ep.info.env_correct = bool(result.correct)
                if ep.templated and ep.exact:
                    ep.messages.append({"role": "assistant", "content": ep.actions[-1]})
                    ep.exact_upto = len(ep.ids)
                if result.done:
                    _finish(ep, ep.reason)
                elif turn + 1 >= ep.max_turns:
                    _finish(ep, "max_turns")
                elif result.context is not None:
                    _rebuild(ep, result.context, chat, limits)
                elif ep.reason == "budget" or _remaining(ep, limits) == 0:
                    _finish(ep, "budget")
                else:
                    _append_reply(ep, result, chat, limits, turn)
            if on_round is not None:
                episodes += on_round(episodes, turn)
            turn += 1

    for ep in episodes:
        if limits.check_template and ep.templated:
            ep.info.template_mismatch += chat.template_mismatch(ep.prompt_ids + ep.ids[:ep.exact_upto], ep.messages)
            if ep.info.template_mismatch and limits.strict_template:
                raise ValueError(
                    f"multi-turn trajectory differs from the chat template's encoding of the same conversation at "
                    f"{ep.info.template_mismatch} positions (prompt {ep.example.prompt!r}); the template is not "
                    f"append-only for these messages. Unset rollout.strict_template to train anyway.")
    return episodes


def _remaining(ep: _Episode, limits: EpisodeLimits) -> int | None:
    return None if limits.max_episode_tokens is None else max(0, limits.max_episode_tokens - len(ep.ids))


def _action_budget(ep: _Episode, limits: EpisodeLimits) -> int:
    left = _remaining(ep, limits)
    return limits.max_new_tokens if left is None else max(1, min(limits.max_new_tokens, left))


def _append_reply(ep: _Episode, result: StepResult, chat: ChatFormat, limits: EpisodeLimits, turn: int) -> None:
    role = getattr(ep.env, "observation_role", "user")
    observation = result.observation if result.observation is not None else ""
    action_ids = [i for i, p in zip(ep.ids, ep.policy) if p][-1:]  # the last sampled token decides the close
    reply = chat.reply_ids(action_ids, observation, ep.templated, role)
    cap = limits.max_observation_tokens
    if cap is not None and len(reply) > cap:
        reply = reply[:cap]
        ep.info.truncated_observations += 1
        ep.exact = False
    left = _remaining(ep, limits)
    if left is not None and len(reply) >= left:  # no room for the reply and one more action token
        ep.add(reply[:left], False, turn)
        ep.exact = False
        _finish(ep, "budget")
        return
    ep.add(reply, False, turn)
    if ep.templated and ep.exact:
        ep.messages += chat.observation_messages(observation, role)


def _finish(ep: _Episode, reason: str) -> None:
    ep.running = False
    ep.reason = reason
    try:
        ep.env.close()
    except Exception as e:  # a failing close is logged, the episode's data stands
        log.warning("environment %s failed to close: %s", type(ep.env).__name__, e)


def single_action_episode(prompt_ids: list[int], ids: list[int], logprobs: Tensor, entropies: Tensor, reason: str,
                          text: str) -> _Episode:
    """A finished one-turn episode from an engine's own sampling (tree leaves, window continuations)."""
    ep = _Episode(env=None, example=None, prompt_ids=list(prompt_ids), templated=False, max_turns=1, messages=[],
                  actions=[text], reason=reason, running=False)
    ep.add(ids, True, 0, logprobs.float(), entropies.float())
    return ep


def assemble(episodes: list[_Episode], row_prompt_index: list[int], pad_token_id: int, decode_batch,
             rounds: bool = False) -> RolloutOutput:
    """Lay episodes out as [left padding | prompt | turns | right padding] rows of one RolloutOutput.

    ``rounds=True``: every round of an episode (see the module docstring: a rebuilt context starts a new round) is its
    own row, with the episode's prompt slot (so all rounds of the n episodes of a prompt share one group), its
    outcome fields (completion = the episode's final action, finish reason, ``EpisodeInfo``: the same object on every
    round row) and ``turn_ids`` = the episode's turn index of each token (the round index). Rows then outnumber
    episodes. ``rounds=False``: one row per episode, its last round. Episodes that never rebuilt give the same rows
    either way."""
    layout = [(e, rnd) for e, ep in enumerate(episodes) for rnd in (_rounds(ep) if rounds else _rounds(ep)[-1:])]
    num_rows = len(layout)
    prompt_width = max(len(rnd.prompt_ids) for _, rnd in layout)
    width = prompt_width + max((len(rnd.ids) for _, rnd in layout), default=0)
    input_ids = torch.full((num_rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((num_rows, width), dtype=torch.long)
    response_mask = torch.zeros((num_rows, width), dtype=torch.float32)
    behaviour_logprobs = torch.zeros((num_rows, width), dtype=torch.float32)
    behaviour_entropy = torch.zeros((num_rows, width), dtype=torch.float32)
    turn_ids = torch.full((num_rows, width), -1, dtype=torch.long)
    token_rewards = torch.zeros((num_rows, width), dtype=torch.float32)
    for r, (_, rnd) in enumerate(layout):
        p = rnd.prompt_ids
        input_ids[r, prompt_width - len(p): prompt_width] = torch.tensor(p, dtype=torch.long)
        attention_mask[r, prompt_width - len(p): prompt_width + len(rnd.ids)] = 1
        if rnd.ids:
            end = prompt_width + len(rnd.ids)
            input_ids[r, prompt_width:end] = torch.tensor(rnd.ids, dtype=torch.long)
            response_mask[r, prompt_width:end] = torch.tensor(rnd.policy, dtype=torch.float32)
            behaviour_logprobs[r, prompt_width:end] = torch.cat(rnd.logprobs)
            behaviour_entropy[r, prompt_width:end] = torch.cat(rnd.entropies)
            turn_ids[r, prompt_width:end] = torch.tensor(rnd.turn_of, dtype=torch.long)
            for index, reward in rnd.turn_rewards:
                token_rewards[r, prompt_width + index] += reward
    for ep in episodes:
        ep.info.num_turns = len(ep.actions)
        ep.info.final_action = ep.actions[-1] if ep.actions else ""
        ep.info.actions = list(ep.actions)
    any_turn_rewards = bool(token_rewards.abs().sum() > 0)
    return RolloutOutput(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        behaviour_logprobs=behaviour_logprobs,
        behaviour_entropy=behaviour_entropy,
        prompt_index=torch.tensor([row_prompt_index[e] for e, _ in layout], dtype=torch.long),
        completions=[episodes[e].info.final_action for e, _ in layout],
        num_tokens=[sum(rnd.policy) for _, rnd in layout],
        finish_reasons=[episodes[e].reason for e, _ in layout],
        turn_ids=turn_ids,
        token_rewards=token_rewards if any_turn_rewards else None,
        episodes=[episodes[e].info for e, _ in layout],
        transcripts=decode_batch([rnd.ids for _, rnd in layout]),
    )
