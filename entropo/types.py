"""Small shared data types passed between stages (tasks -> rollout -> rewards -> losses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor


@dataclass
class Example:
    """One prompt of a task."""

    prompt: str | list[dict[str, str]]  # plain text, or chat messages [{"role": "user", "content": ...}]
    answer: str | None = None  # ground truth the verifier compares to (None for unsupervised rewards)
    target: str | None = None  # a gold completion, used by the optional SFT warm-up
    meta: dict[str, Any] = field(default_factory=dict)  # task name, difficulty, reasoning-gym entry, ...


class Task(Protocol):
    """A prompt source with a verifier. Built by a factory registered as ``("task", name)``:
    ``factory(seed: int, eval_size: int, **params) -> Task``."""

    name: str

    def train_size(self) -> int: ...

    def train_example(self, i: int) -> Example: ...  # deterministic in (seed, i); never an eval example

    def eval_examples(self) -> list[Example]: ...  # the held-out split, fixed by the seed

    def correct(self, completion: str, example: Example) -> bool: ...  # the task's own verifier (accuracy)


@dataclass
class EpisodeInfo:
    """Per-row facts of one episode, recorded by the engine (typed, carried into the Batch's info and Samples)."""

    num_turns: int = 0  # actions the policy took
    tool_calls: int = 0  # actions its environment counted as tool calls
    tool_call_turns: list[int] = field(default_factory=list)  # which turns (0-based) were tool calls
    env_correct: bool | None = None  # the environment's own verdict on the outcome (None: it gave none)
    env_error: str | None = None  # the exception that ended the episode, if an environment step failed
    template_mismatch: int = 0  # positions where the ids differ from the chat template's encoding (0 = none)
    truncated_observations: int = 0  # replies cut to rollout.max_observation_tokens
    final_action: str = ""  # decoded text of the last action (what outcome verifiers judge)
    actions: list[str] = field(default_factory=list)  # decoded text of every action, in order
    info: dict[str, Any] = field(default_factory=dict)  # the environment's free-form step info, merged


@dataclass
class Sample:
    """What a reward function sees for one completion."""

    completion: str  # decoded response text (special tokens removed)
    example: Example
    task: Any  # the Task object (for its verifier)
    num_tokens: int = 0  # response length in tokens
    max_tokens: int = 0  # the rollout's max_new_tokens
    truncated: bool = False  # True when the response hit max_new_tokens without EOS/stop
    episode: EpisodeInfo | None = None  # turns, tool calls, every action's text (multi-turn episodes)
    transcript: str = ""  # the whole decoded trajectory after the prompt (actions and observations)


@dataclass
class RolloutOutput:
    """What a rollout engine returns for P prompts x n samples (R = P*n rows, prompt-major order)."""

    input_ids: Tensor  # [R, L] long: left-padded prompt, then the response, then right padding
    attention_mask: Tensor  # [R, L] long: 1 on prompt and response tokens
    response_mask: Tensor  # [R, L] float: 1 on tokens the policy generated (incl. the EOS it emitted)
    behaviour_logprobs: Tensor  # [R, L] float: log-prob of each generated token under the sampling distribution
    behaviour_entropy: Tensor  # [R, L] float: entropy of the sampling distribution at each generated token
    prompt_index: Tensor  # [R] long: index into the prompts list
    completions: list[str]  # decoded responses (special tokens removed)
    num_tokens: list[int]  # response lengths (whole response; hf_window rows may have generated part of it earlier)
    finish_reasons: list[str]  # "eos" | "stop" | "length" | "max_turns" | "budget" | "env_error" | "partial"
    # ("partial": unfinished, continued by a later rollout; see ``finished``)
    # Engines whose training rollouts carry unfinished rows across steps return more prompt slots than prompts:
    # ``payloads[j]`` is what the caller passed for slot j (its Example), ``prompt_index`` indexes this list.
    payloads: list[Any] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)  # engine-specific [R, L] tensors -> Batch.extras
    turn_ids: Tensor | None = None  # [R, L] long: turn of each token after the prompt (action and its reply); -1 else
    token_rewards: Tensor | None = None  # [R, L] float: each turn's environment reward on its last action token
    episodes: list[EpisodeInfo] | None = None  # per row: turns, tool calls, environment verdicts
    transcripts: list[str] | None = None  # per row: decoded trajectory after the prompt

    @property
    def finished(self) -> list[bool]:
        """Per row: the response is complete (False only for rows an engine continues in a later rollout)."""
        return [reason != "partial" for reason in self.finish_reasons]


@dataclass
class TokenContext:
    """Everything a regularizer may read for one micro-batch (all [B, L], aligned on tokens)."""

    logprobs: Tensor  # current policy, differentiable
    entropy: Tensor  # current policy entropy, differentiable
    old_logprobs: Tensor
    ref_logprobs: Tensor | None
    advantages: Tensor
    mask: Tensor  # token_weights
    batch: Any  # the micro-batch (entropo.batch.Batch)
    extras: dict[str, Tensor] = field(default_factory=dict)  # batch.extras + this pass's token_fns outputs
    aggregation: str = "token-mean"  # the recipe's aggregation mode (for regularizers defined on a scalar)
    norm_length: int | None = None  # the constant of seq-mean-token-sum-norm
