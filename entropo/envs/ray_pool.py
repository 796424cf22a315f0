"""Environment and tool workers in a Ray actor pool (``rollout.env_backend: ray``).

Each environment of an episode lives inside one of ``rollout.env_workers`` Ray actors (processes, on this machine or
a cluster's); the episode loop talks to it through a ``RemoteEnv`` proxy with the same ``reset``/``step``/``close``
as the environment itself, so the loop (which already runs the steps of different episodes concurrently) needs no
change, and sandboxed tool calls run in the workers' processes instead of the trainer's. Episodes are assigned to
actors round-robin; each actor holds the live environments of its episodes by id and drops one when it is closed.
"""

from __future__ import annotations

import copy
import itertools
import os
from typing import Any

from entropo.envs.base import EnvFactory, StepResult


class _EnvHost:
    """The actor body: builds environments from (cls, params) and serves their calls by episode id."""

    def __init__(self, cls: Any, params: dict[str, Any]):
        self.cls, self.params = cls, params
        self.envs: dict[int, Any] = {}

    def reset(self, env_id: int, example: Any, seed: int) -> Any:
        env = self.envs.get(env_id)
        if env is None:
            env = self.envs[env_id] = self.cls(**self.params)
        return env.reset(example, seed)

    def step(self, env_id: int, action: str) -> StepResult:
        return self.envs[env_id].step(action)

    def fork(self, env_id: int, new_id: int) -> None:
        env = self.envs[env_id]
        fork = getattr(env, "fork", None)
        self.envs[new_id] = fork() if callable(fork) else copy.deepcopy(env)

    def close(self, env_id: int) -> None:
        env = self.envs.pop(env_id, None)
        if env is not None:
            env.close()

    def stats(self) -> dict[str, int]:
        return {"pid": os.getpid(), "live": len(self.envs)}


class RemoteEnv:
    """An episode's environment, running in a Ray actor; exceptions raised there are raised here (then the episode
    loop ends that episode with an env_error, as for a local environment)."""

    def __init__(self, actor: Any, env_id: int, attrs: dict[str, Any], new_id: Any):
        self._actor, self._id, self._new_id = actor, env_id, new_id
        self._attrs = attrs
        self.__dict__.update(attrs)  # what the episode loop reads from an environment besides its methods

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self._actor, method).remote(self._id, *args))
        except ray.exceptions.RayTaskError as e:  # re-raise the environment's own exception
            raise e.as_instanceof_cause() from None

    def reset(self, example: Any, seed: int) -> Any:
        return self._call("reset", example, seed)

    def step(self, action: str) -> StepResult:
        return self._call("step", action)

    def fork(self) -> RemoteEnv:
        """A copy of this environment in its current state, in the same actor (``fork()`` of the environment when
        it has one, else a deep copy there): branching rollouts continue from it."""
        new_id = self._new_id()
        import ray

        ray.get(self._actor.fork.remote(self._id, new_id))
        return RemoteEnv(self._actor, new_id, self._attrs, self._new_id)

    def close(self) -> None:
        self._actor.close.remote(self._id)  # fire and forget: the episode's data is already complete


class RayEnvFactory(EnvFactory):
    """An ``EnvFactory`` whose environments run in a pool of Ray actors. ``ray.init`` is called (locally, with
    ``num_cpus``) when Ray is not running yet; pass ``address`` to join a cluster instead."""

    def __init__(self, cls: Any, params: dict[str, Any] | None = None, workers: int = 2, address: str | None = None,
                 num_cpus: int | None = None):
        super().__init__(cls, dict(params or {}))
        try:
            import ray
        except ImportError as e:
            raise ImportError("rollout.env_backend=ray needs Ray: pip install 'entropo[ray]' (or pip install ray)"
                              ) from e
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else (num_cpus or os.cpu_count()),
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        probe = cls(**self.params)  # instance attributes may come from params (e.g. python_tool's stop strings)
        self.attrs = {"stop": tuple(getattr(probe, "stop", ())), "max_turns": getattr(probe, "max_turns", 1),
                      "observation_role": getattr(probe, "observation_role", "user")}
        probe.close()
        host = ray.remote(num_cpus=0)(_EnvHost)  # env steps mostly wait on tools: do not reserve a CPU each
        self.actors = [host.remote(cls, self.params) for _ in range(max(1, workers))]
        self._ids = itertools.count()

    def _next_id(self) -> int:
        return next(self._ids)

    def __call__(self) -> RemoteEnv:
        env_id = self._next_id()
        return RemoteEnv(self.actors[env_id % len(self.actors)], env_id, self.attrs, self._next_id)

    def local(self) -> EnvFactory:
        return EnvFactory(self.cls, self.params)

    def stats(self) -> list[dict[str, int]]:
        import ray

        return ray.get([a.stats.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
