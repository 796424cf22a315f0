"""Environments in a Ray actor pool (rollout.env_backend=ray): the sandboxed tool runs in a worker process, errors
come back as that episode's failure, closed episodes are released, and a multi-turn training run is identical to the
in-process (thread) backend."""

import os

import pytest

ray = pytest.importorskip("ray")

from entropo.cli import RECIPES_DIR  # noqa: E402
from entropo.config import load_recipe  # noqa: E402
from entropo.envs.python_tool import PythonTool  # noqa: E402
from entropo.envs.ray_pool import RayEnvFactory  # noqa: E402
from entropo.logging import TIMING_KEYS, read_metrics  # noqa: E402
from entropo.trainer import train  # noqa: E402
from entropo.types import Example  # noqa: E402

PARAMS = {"max_turns": 3, "code_start": "<py>", "code_end": "</py>", "output_template": "{output}", "timeout_s": 5.0,
          "stop": ["</py>"]}


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_remote_python_tool_matches_local_and_runs_elsewhere(ray_local):
    factory = RayEnvFactory(PythonTool, PARAMS, workers=2)
    assert factory.attrs["stop"] == ("</py>",) and factory.attrs["max_turns"] == 3
    example = Example(prompt="12*34=", answer="408")
    local, remote = PythonTool(**PARAMS), factory()
    assert remote.stop == ("</py>",) and remote.observation_role == local.observation_role
    assert remote.reset(example, 7) == local.reset(example, 7)
    for action in ("<py>12*34</py>", "<py>1/0</py>", "408"):
        a, b = local.step(action), remote.step(action)
        assert (a.observation, a.reward, a.done, a.tool_call) == (b.observation, b.reward, b.done, b.tool_call)
    stats = factory.stats()
    assert all(s["pid"] != os.getpid() for s in stats) and sum(s["live"] for s in stats) == 1
    branch = remote.fork()  # a copy in the same state, in the same actor (branching rollouts)
    assert branch.stop == remote.stop and sum(s["live"] for s in factory.stats()) == 2
    assert branch.step("<py>2+2</py>").observation == local.step("<py>2+2</py>").observation
    branch.close()
    remote.close()
    local.close()
    ray.get([a.stats.remote() for a in factory.actors])  # the fire-and-forget close has run before this call
    assert sum(s["live"] for s in factory.stats()) == 0
    with pytest.raises(KeyError):  # an environment error is raised in the caller (the loop ends that episode)
        remote.step("<py>1</py>")
    factory.shutdown()


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def test_tool_run_on_ray_equals_in_process_run(ray_local, tmp_path):
    ov = ["warmup.steps=60", "train.steps=2", "rollout.prompts_per_step=2", "rollout.n=4", "task.eval_size=4",
          "eval.n=2", "eval.k=[1, 2]", "logging.progress=false", "logging.tensorboard=false", "logging.plots=false",
          "checkpoint.every=0"]
    runs = {}
    for backend in ("thread", "ray"):
        recipe = load_recipe(RECIPES_DIR / "tir_tiny.yaml", ov + [f"rollout.env_backend={backend}"])
        train(recipe, run_dir=tmp_path / backend, console=lambda *_: None)
        runs[backend] = _strip(read_metrics(tmp_path / backend))
    assert runs["thread"] == runs["ray"]
    steps = [r for r in runs["ray"] if not r.get("final")]
    assert sum(r["episode/tool_calls_mean"] for r in steps) > 0  # the tool was really called, through Ray
