"""Data-parallel training on torch.distributed (gloo, CPU), replicated (ddp) and sharded (fsdp): two processes equal
one process sampling the same two rollout shards — same weights and metrics — for ppo_clip (GRPO), Clip-Cov's
whole-batch top-k, a multi-turn recipe and a pairwise one with a reference model; a killed-and-resumed two-process run
equals the straight one; rank 0 alone writes; a raising rank stops the launch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entropo import checkpoint
from entropo.distributed import Dist, split_evenly
from entropo.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"
TINY = ["model.name_or_path=tiny", "warmup.steps=20", "warmup.batch_size=32", "warmup.lr=3e-3",
        "task.eval_size=8", "rollout.prompts_per_step=6", "rollout.n=4",
        "rollout.temperature=1.0", "optimizer.lr=1e-3", "train.micro_batch_size=5", "train.mini_batches=2",
        "logging.progress=false", "logging.plots=false", "logging.tensorboard=false", "checkpoint.every=1",
        "checkpoint.keep=10", "eval.max_prompts=4", "train.distributed=ddp", "rollout.shards=2"]
ARITH = ["task.name=arithmetic", "task.params={digits: 1, chat: false, template: '{expr}='}",
         "rollout.max_new_tokens=4"]
# metrics that must agree between the runs (the others are timings, memory and rank-local counters)
COMPARED = ("accuracy", "reward/mean", "entropy/mean", "actor/pg_loss", "actor/loss", "actor/grad_norm",
            "kl/behaviour", "cov/logp_adv", "advantage/abs_mean", "actor/kl_old_seq_k1", "selection/dropped_frac")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _launch(tmp_path: Path, name: str, overrides: list[str], procs: int, recipe: str | None = None,
            timeout: float = 400, **spec) -> subprocess.CompletedProcess:
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps({"overrides": overrides, "run_dir": str(tmp_path / name), "recipe": recipe,
                                     **spec}))
    if procs == 1:
        cmd = [sys.executable, str(WORKER), str(spec_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--standalone",
               str(WORKER), str(spec_path)]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _final(run_dir: Path) -> dict:
    return checkpoint.load(checkpoint.latest(run_dir))


def _assert_same_run(a: Path, b: Path, steps: int) -> None:
    ca, cb = _final(a), _final(b)
    assert ca["run_state"]["step"] == cb["run_state"]["step"] == steps
    moved = 0.0
    for k, wa in ca["model"].items():
        torch.testing.assert_close(cb["model"][k], wa, rtol=0, atol=1e-6, msg=f"weights differ at {k}")
    ref = torch.load(a / "reference.pt", weights_only=True) if (a / "reference.pt").exists() else None
    if ref is not None:
        moved = max(float((ca["model"][k] - ref[k]).abs().max()) for k in ref)
        assert moved > 1e-4  # the runs really trained
    ma = [r for r in read_metrics(a) if "accuracy" in r]
    mb = [r for r in read_metrics(b) if "accuracy" in r]
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == list(range(steps))  # each step logged once
    for ra, rb in zip(ma, mb):
        for key in COMPARED:
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)


def test_split_evenly_and_shard_ownership():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([1], 2) == [[1], []]
    assert Dist(rank=1, world=2, shards=4).own_shards() == [1, 3]
    assert Dist(shards=2).own_shards() == [0, 1]


def _assert_rank0_alone_writes(one: Path, two: Path) -> None:
    # one metrics file, one set of checkpoints (the same as the one-process run's), no per-rank files
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == \
        sorted(p.name for p in (one / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory):
    """GRPO (ppo_clip, token-mean) for 3 steps: one process sampling two shards, and two processes."""
    tmp = tmp_path_factory.mktemp("grpo")
    overrides = TINY + ARITH + ["train.steps=3"]
    _ok(_launch(tmp, "one", overrides, 1))
    _ok(_launch(tmp, "two", overrides, 2))
    return tmp, overrides


def test_two_processes_equal_one_process_sampling_the_same_shards_grpo(grpo_runs):
    tmp, _ = grpo_runs
    _assert_same_run(tmp / "one", tmp / "two", 3)
    _assert_rank0_alone_writes(tmp / "one", tmp / "two")


RECIPES = {
    "clip_cov": ARITH,  # whole-batch covariance top-k (scope=batch)
    "loop": ["rollout.max_new_tokens=14", "rollout.max_episode_tokens=60", "environment.params.max_turns=3",
             "train.early_stop=null"],  # multi-turn episodes on the object_store API environment
    "dpo_online": ARITH,  # pairwise (linked rows stay in one process) with a reference model
}


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory):
    """Each recipe's one-process run (sampling two shards), run once and shared by the ddp and fsdp tests."""
    tmp, done = tmp_path_factory.mktemp("one"), {}

    def get(recipe: str) -> tuple[Path, list[str]]:
        overrides = TINY + RECIPES[recipe] + ["train.steps=2"]
        if recipe not in done:
            _ok(_launch(tmp, recipe, overrides, 1, recipe))
            done[recipe] = tmp / recipe
        return done[recipe], overrides
    return get


@pytest.mark.parametrize("mode,recipe", [("ddp", "clip_cov"), ("ddp", "loop"), ("fsdp", "clip_cov"),
                                         ("fsdp", "dpo_online")])
def test_two_processes_equal_one_process_sampling_the_same_shards(one_process_runs, tmp_path, mode, recipe):
    one, overrides = one_process_runs(recipe)
    _ok(_launch(tmp_path, "two", overrides + [f"train.distributed={mode}"], 2, recipe))
    _assert_same_run(one, tmp_path / "two", 2)


def test_fsdp_two_processes_equal_one_process_and_write_the_same_files(grpo_runs, tmp_path):
    """train.distributed=fsdp (parameters, gradients and AdamW moments sharded): the same run as one process, the
    same files, and a final model folder holding the same full weights."""
    tmp, overrides = grpo_runs
    _ok(_launch(tmp_path, "fsdp", overrides + ["train.distributed=fsdp"], 2))
    _assert_same_run(tmp / "one", tmp_path / "fsdp", 3)
    _assert_rank0_alone_writes(tmp / "one", tmp_path / "fsdp")
    from safetensors.torch import load_file

    final_one, final_two = (load_file(d / "final" / "model.safetensors") for d in (tmp / "one", tmp_path / "fsdp"))
    assert final_one.keys() == final_two.keys()
    for k in final_one:
        torch.testing.assert_close(final_two[k], final_one[k], rtol=0, atol=1e-6)
    # killed after one step and resumed: the straight run
    _ok(_launch(tmp_path, "resumed", overrides + ["train.distributed=fsdp"], 2, stop_after=1))
    assert _final(tmp_path / "resumed")["run_state"]["step"] == 1
    _ok(_launch(tmp_path, "resumed", overrides + ["train.distributed=fsdp"], 2, resume=True))
    _assert_same_run(tmp_path / "fsdp", tmp_path / "resumed", 3)


def test_two_process_run_killed_and_resumed_equals_the_straight_run(grpo_runs, tmp_path):
    straight, overrides = grpo_runs
    _ok(_launch(tmp_path, "resumed", overrides, 2, stop_after=1))
    assert _final(tmp_path / "resumed")["run_state"]["step"] == 1
    _ok(_launch(tmp_path, "resumed", overrides, 2, resume=True))
    _assert_same_run(straight / "two", tmp_path / "resumed", 3)


def test_a_rank_that_raises_stops_every_rank_with_its_error(tmp_path):
    proc = _launch(tmp_path, "fail", TINY + ARITH + ["train.steps=3", "train.dist_timeout_s=600", "warmup.steps=0"], 2,
                   fail_rank=1, timeout=300)
    assert proc.returncode != 0
    assert "planted failure on rank 1" in proc.stdout + proc.stderr


def test_a_launch_that_does_not_match_the_recipe_is_refused(tmp_path):
    proc = _launch(tmp_path, "mismatch", TINY + ARITH + ["train.distributed=none", "rollout.shards=null"], 2,
                   timeout=300)
    assert proc.returncode != 0
    assert "train.distributed: the launcher started 2 processes" in proc.stdout + proc.stderr
