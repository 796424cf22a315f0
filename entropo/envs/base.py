"""The environment protocol: what a policy acts in over one episode (registry kind ``"environment"``).

An episode is: ``reset(example, seed)`` gives the first observation (the prompt); then the policy writes an action
(one assistant turn), ``step(action)`` answers with a ``StepResult`` (the next observation, a reward for that turn,
whether the episode is over), and so on until ``done`` or a limit (``rollout.max_turns``, the episode token budget).
A single-turn task is the one-turn episode of ``SingleTurn``: the rollout path is the same for both.

Environments are built fresh for every episode from their recipe spec (``environment: {name, params}``; the name is a
registered name or an import path ``"my_pkg.envs:Inventory"``), so an episode never outlives the RL step that ran it:
a resumed run replays nothing and is exact by construction. ``seed`` is derived from the run seed, the step and the
row, so an environment that draws randomness from it is deterministic across resumes.

The rollout engine owns the tokens (token in, token out): the action text handed to ``step`` is decoded from the
sampled ids for the environment's benefit only; the trajectory trained on is the sampled ids themselves plus the
observation ids the chat template adds for the reply (see ``entropo.rollout.chat``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from entropo.registry import register
from entropo.types import Example

Message = dict[str, str]  # {"role": ..., "content": ...}
Observation = Union[str, Message, list[Message]]


@dataclass
class StepResult:
    """What an environment returns for one action."""

    observation: Observation | None = None  # the reply shown to the policy next turn (ignored when done)
    reward: float = 0.0  # this turn's reward; placed on the last token of the turn (``Batch.token_rewards``)
    done: bool = False  # the episode is over (no further turn)
    correct: bool | None = None  # the episode's outcome when the environment can judge it (None: the task verifier)
    tool_call: bool = False  # this action called a tool (counted per episode; OTC, ASPO and the logs read it)
    info: dict[str, Any] = field(default_factory=dict)  # free-form, logged per episode
    # The next round's whole context, replacing the history (a Markov workspace, e.g. IterResearch's question +
    # report + last action/observation, arXiv 2511.07327): encoded by the chat template as a fresh prompt; the round
    # just played becomes its own training row. None (default): ``observation`` is appended to the history.
    context: Observation | None = None


class Environment:
    """Base class for environments. Subclass it, override ``step`` (and ``reset`` when the first observation is not
    the example's prompt), and name the class in a recipe. Keep per-episode state on ``self``.

    Class attributes a subclass may set:
      ``observation_role``: chat role of string observations (``"user"`` for interlocutors, ``"tool"`` for tools);
      ``stop``: extra stop strings that end an action (e.g. the closing tag of a tool call);
      ``max_turns``: the default turn limit (the recipe's ``rollout.max_turns`` overrides it).
    """

    observation_role: str = "user"
    stop: tuple[str, ...] = ()
    max_turns: int = 1

    def reset(self, example: Example, seed: int) -> Observation:
        """Start an episode for ``example``; returns the first observation (by default the example's prompt)."""
        del seed
        self.example = example
        return example.prompt

    def step(self, action: str) -> StepResult:
        """Answer one action (the decoded text of the policy's turn)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the episode held (files, processes). Called once when the episode ends."""


@register("environment", "single_turn", paper="one-turn episode: the task's prompt, one completion")
class SingleTurn(Environment):
    """The default environment: one action, then done. Its outcome is judged by the recipe's reward functions."""

    def step(self, action: str) -> StepResult:
        return StepResult(done=True)


@dataclass
class EnvFactory:
    """Builds a fresh environment for every episode from its registered class (or factory) and recipe params."""

    cls: Any
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Environment:
        return self.cls(**self.params)

    @property
    def single_turn(self) -> bool:
        return self.cls is SingleTurn

    def local(self) -> EnvFactory:
        """A factory of in-process environments of the same kind (for data such as SFT demonstrations)."""
        return self


def single_turn_factory() -> EnvFactory:
    return EnvFactory(SingleTurn)


def require_single_turn(engine: Any, environment: EnvFactory | None) -> None:
    """For engines that only sample single completions (tree, window): one clear error for any other environment."""
    if environment is not None and not environment.single_turn:
        raise ValueError(f"rollout.engine {type(engine).__name__} samples single-turn responses only; environment "
                         f"{getattr(environment.cls, '__name__', environment.cls)!r} needs rollout.engine=hf")
