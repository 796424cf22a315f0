"""Binding registered components to their recipe parameters, and the optional hooks the trainer honours.

A component is a function registered in ``entropo.registry`` (or a class, when it keeps state across steps: it is
built once with the recipe params, called like the function, and checkpointed through ``state_dict``). Beyond its
kind's signature, a component can opt into these hooks — all generic, so a new method never needs an ``if`` in the
trainer:

- ``step_ctx``: if the callable has a parameter named ``step_ctx``, it receives the ``StepContext`` (model,
  tokenizer, engine, task, reward runner, recipe, step, rollout generator, device) — for components that need the
  tokenizer or a forward pass of the policy. It cannot add rows: that is what producers are for.
- producers (registry kind ``"producer"``, the recipe's ``producers`` list): ``producer(batch, ctx, **params) ->
  Produced``, called by the trainer's rollout phase once the step's rows are sampled, rewarded and selected. ``ctx``
  is a ``RolloutContext``: the ``StepContext`` plus ``sample(examples, n, temperature) -> Batch``, which plays and
  rewards episodes exactly as the loop does. A producer *returns* new rows (with rewards, group ids and the typed
  per-row markers ``Batch.fixed_advantage`` / ``Batch.off_policy``) and optionally rows of the batch they displace;
  the trainer stacks them under the batch, and the normal scoring pass, advantage phase and update treat them like
  every other row (AEPO's temperature samples, Critique-GRPO's refinements).
- ``extras``: if an objective has a parameter named ``extras``, it receives the micro-batch's ``Batch.extras`` plus
  the current pass's ``token_fns`` outputs (regularizers get the same dict as ``TokenContext.extras``).
- ``micro_batch``: if an objective has a parameter named ``micro_batch``, it receives the micro-batch its
  per-token tensors come from, for typed per-row fields (``off_policy``: Critique-GRPO's refinements).
- ``prepare(batch, generator, **params) -> {name: Tensor [B, ...]}`` (registry meta ``prepare=``, or a method on a
  class component): runs once on the **whole** optimized batch after advantages and before the update; results go
  into ``batch.extras``. This is where batch-level selection rules live (top-k / quantiles over all tokens), so they
  never depend on the micro-batch split.
- ``token_fns(**params) -> {name: fn(logits [N, V], target_ids [N]) -> [N]}`` (meta ``token_fns=``): per-token
  functionals of the current policy's full distribution, computed chunk by chunk in the training forward pass
  (differentiable). ``old_token_fns`` is the same for the no-grad scoring pass of the policy before the update;
  its outputs are stored in ``batch.extras``.
- ``auxiliaries() -> [Auxiliary]`` (a method on a class component): learned models beside the policy (``gae``'s
  critic; later a process reward model). The component reads them (e.g. values for its advantages); the trainer
  fits each one in its own slot of the update phase (``Auxiliary.fit``, before the policy's optimizer steps, on the
  batch whose advantages just used it) and checkpoints its ``state_dict`` (weights and optimizer state).
- ``update(metrics)`` on a class component: called after every step with that step's metrics.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from entropo import registry
from entropo.batch import Batch


@dataclass
class StepContext:
    """What a component may use besides the batch (passed when it asks for ``step_ctx``)."""

    model: Any
    tokenizer: Any
    engine: Any
    task: Any
    rewards: Any
    recipe: Any
    step: int
    rollout_generator: torch.Generator
    device: torch.device


@dataclass
class RolloutContext(StepContext):
    """What a producer gets at rollout time: the ``StepContext`` plus the loop's own way to make rows."""

    sample: Callable[[list[Any], int, float], Batch]  # (examples, n, temperature) -> rewarded rows, new group ids

    @classmethod
    def of(cls, step_ctx: StepContext, sample: Callable[[list[Any], int, float], Batch]) -> "RolloutContext":
        return cls(**{f.name: getattr(step_ctx, f.name) for f in fields(StepContext)}, sample=sample)


@dataclass
class Produced:
    """A producer's answer: rows to add to the step's batch, rows of that batch they displace, and metrics.

    ``rows`` carry rewards, group ids (a new group, or an existing one they join) and their per-row markers
    (``fixed_advantage``, ``off_policy``); the trainer scores them with the rest of the batch. ``displaced`` are
    indices into the batch the producer was given; those rows are removed before scoring."""

    rows: Batch | None = None
    displaced: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Auxiliary(Protocol):
    """A learned model beside the policy, trained in the update phase's auxiliary slot (``gae``'s value critic).

    ``fit`` runs once per step, after the advantages that read the model were computed and before the policy's
    optimizer steps (so the features it reads are those of the policy that produced the advantages); it returns
    metrics, logged as ``aux/<name>/<key>``. ``state_dict`` must hold everything a resume needs: weights and the
    optimizer state."""

    name: str

    def fit(self, batch: Batch, step_ctx: StepContext) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Bound:
    """A registered component with its params bound."""

    def __init__(self, kind: str, name: str, params: dict[str, Any] | None = None):
        obj = registry.get(kind, name)
        self.kind, self.name, self.meta = kind, name, registry.meta(kind, name)
        params = dict(params or {})
        if inspect.isclass(obj):
            self.instance = obj(**params)
            self.fn, self.params = self.instance, {}
        else:
            self.instance, self.fn, self.params = None, obj, params
        sig = inspect.signature(self.fn)
        self.takes_step_ctx = "step_ctx" in sig.parameters
        self.takes_extras = "extras" in sig.parameters
        self.takes_micro_batch = "micro_batch" in sig.parameters
        self.stage = self.meta.get("stage", "advantage")

    def __call__(self, *args: Any, step_ctx: StepContext | None = None, extras: dict | None = None,
                 micro_batch: Batch | None = None) -> Any:
        kw = dict(self.params)
        if self.takes_step_ctx:
            kw["step_ctx"] = step_ctx
        if self.takes_extras:
            kw["extras"] = extras if extras is not None else {}
        if self.takes_micro_batch:
            kw["micro_batch"] = micro_batch
        return self.fn(*args, **kw)

    def _hook(self, key: str) -> tuple[Callable[..., Any] | None, dict[str, Any]]:
        if self.instance is not None and callable(getattr(self.instance, key, None)):
            return getattr(self.instance, key), {}
        return self.meta.get(key), self.params

    def prepare(self, batch: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        hook, kw = self._hook("prepare")
        return hook(batch, generator=generator, **kw) if hook is not None else {}

    def token_fns(self, which: str = "token_fns") -> dict[str, Callable[..., torch.Tensor]]:
        hook, kw = self._hook(which)
        return hook(**kw) if hook is not None else {}

    def auxiliaries(self) -> list[Auxiliary]:
        hook, kw = self._hook("auxiliaries")
        return list(hook(**kw)) if hook is not None else []

    def update(self, metrics: dict[str, Any]) -> None:
        if self.instance is not None and callable(getattr(self.instance, "update", None)):
            self.instance.update(metrics)

    def state_dict(self) -> Any:
        if self.instance is not None and callable(getattr(self.instance, "state_dict", None)):
            return self.instance.state_dict()
        return None

    def load_state_dict(self, state: Any) -> None:
        if state is not None and self.instance is not None:
            self.instance.load_state_dict(state)


def merged_token_fns(components: list[Bound], which: str = "token_fns") -> dict[str, Callable[..., torch.Tensor]]:
    out: dict[str, Callable[..., torch.Tensor]] = {}
    for c in components:
        for name, fn in c.token_fns(which).items():
            if name in out:
                raise ValueError(f"two components define the per-token function {name!r}")
            out[name] = fn
    return out
