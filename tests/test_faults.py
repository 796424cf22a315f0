"""Run safety (issue 11): what a hostile but fair user does to a run — kill -9 at any moment, crafted and corrupted
files, bad data, a full disk, hostile rewards — and what entropo guarantees in return. One section per item."""

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import fault_rewards  # noqa: F401  (registers the hostile rewards/regularizer)
from entropo import checkpoint as ckpt
from entropo.checkpoint import CheckpointError
from entropo.cli import app, describe
from entropo.config import ConfigError, load_recipe
from entropo.guards import NonFiniteError
from entropo.logging import read_metrics
from entropo.rewards.runner import RewardRunner
from entropo.runlock import RunLock, RunLockedError
from entropo.trainer import save_checkpoint, train
from entropo.types import Example, Sample

# A tiny run with no warm-up: these tests are about the loop's machinery, not learning.
FAST = ["model.name_or_path=tiny", "warmup.steps=0", "task.params={digits: 1, chat: false, template: '{expr}='}",
        "task.eval_size=4", "rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=3",
        "optimizer.lr=1e-3", "train.micro_batch_size=16", "logging.progress=false", "logging.plots=false",
        "logging.tensorboard=false", "checkpoint.every=1", "checkpoint.keep=10"]
QUIET = dict(console=lambda *_: None)
ROOT = Path(__file__).resolve().parents[1]


def recipe(*extra):
    return load_recipe(None, FAST + list(extra))


def steps(run):
    return [r["step"] for r in read_metrics(run) if not r.get("final")]


def weights(path):
    return ckpt.load(path)["model"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 2-step run with checkpoints after steps 1 and 2; tests work on copies of it."""
    run = tmp_path_factory.mktemp("base") / "run"
    train(recipe("train.steps=2"), run_dir=run, **QUIET)
    return run


def copy_run(base_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


# ---- 1. foreign code on --resume ------------------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a crafted state.pt does: run code while being unpickled
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plant(ckpt_dir, payload):
    """Replace a checkpoint's state.pt, with a manifest that matches it (integrity is not authenticity)."""
    with open(ckpt_dir / "state.pt", "wb") as f:
        torch.save(payload, f)
    data = (ckpt_dir / "state.pt").read_bytes()
    (ckpt_dir / "manifest.json").write_text(json.dumps(
        {"format": 1, "files": {"state.pt": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}))


def test_resume_from_a_planted_pickle_runs_nothing_and_says_why(base_run, tmp_path):
    run = copy_run(base_run, tmp_path)
    marker = tmp_path / "pwned"
    _plant(run / "checkpoints" / "step_000002", {"model": _Payload(marker)})
    with pytest.raises(CheckpointError, match="refusing to load .*step_000002.*state.pt.*nothing in it was run"):
        train(recipe("train.steps=2"), run_dir=run, resume=True, **QUIET)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load(run / "checkpoints" / "step_000002")
    assert not marker.exists()


def test_checkpoints_hold_only_plain_data(base_run, tmp_path):
    saved = ckpt.load(ckpt.latest(base_run))  # weights_only=True, everything the trainer saves
    ckpt.check_plain(saved)
    ckpt.set_rng_state(saved["rng"])  # the RNG states round-trip from tensors and lists
    # a component returning something weights_only would refuse fails at save time, naming where it is
    import numpy as np

    with pytest.raises(TypeError, match=r"checkpoint\['components'\]\[1\]\['ema'\] is a numpy.float64"):
        ckpt.save(tmp_path, 1, {"components": [None, {"ema": np.float64(0.5)}]})
    assert not (tmp_path / "checkpoints").exists()
    # the windowed engine carries Example payloads across steps: checkpointed as plain dicts
    from entropo.models import tiny
    from entropo.rollout.window import CarriedRow, HFWindowEngine

    engine = HFWindowEngine(*tiny(), window=2)
    engine.carried = [CarriedRow(group=3, payload=Example(prompt="1+2=", answer="3", meta={"row": 1}),
                                 prompt_ids=[1, 2], generated_ids=[5])]
    state = engine.state_dict()
    ckpt.check_plain(state)
    engine.load_state_dict(state)
    assert engine.carried[0].payload == Example(prompt="1+2=", answer="3", meta={"row": 1})


def test_latest_trusts_only_checkpoints_that_verify(base_run, tmp_path):
    run = copy_run(base_run, tmp_path)
    fake = run / "checkpoints" / "step_000099"
    fake.mkdir()
    shutil.copy(run / "checkpoints" / "step_000002" / "state.pt", fake / "state.pt")  # no manifest
    odd = run / "checkpoints" / "step_x"
    odd.mkdir()
    assert ckpt.latest(run).name == "step_000002"
    assert "no manifest.json" in ckpt.verify(fake)


# ---- 2. two runs into one run dir ----------------------------------------------------------------------------------

HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from entropo.runlock import RunLock\n"
        "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")


def test_a_second_run_into_a_locked_run_dir_fails_at_once_and_a_dead_holders_lock_is_stale(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT)), str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run / "metrics.jsonl").write_text("")  # the holder's run
        t0 = time.monotonic()
        for resume in (False, True):
            with pytest.raises(RunLockedError, match=f"in use by another run \\(pid {holder.pid} "):
                train(recipe("train.steps=1"), run_dir=run, resume=resume, **QUIET)
        assert time.monotonic() - t0 < 5  # at once: before any model is loaded
        res = CliRunner().invoke(app, ["train", "--run-dir", str(run), "--overwrite", "--set", "model.name_or_path=tiny"])
        assert res.exit_code == 2 and f"pid {holder.pid}" in res.output and "Traceback" not in res.output
        assert (run / "metrics.jsonl").exists()  # --overwrite deleted nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    notes = []
    with RunLock(run, on_stale=notes.append) as lock:  # the holder was killed: its lock is stale, and taken over
        assert lock.stale == f"pid {holder.pid} on {socket.gethostname()}"
        assert (run / ".lock").read_text().startswith(f"pid {os.getpid()} ")
    assert "stale lock" in notes[0] and str(holder.pid) in notes[0]
    assert (run / ".lock").read_text() == ""  # released


# ---- 3. duplicate steps -------------------------------------------------------------------------------------------

def test_resume_before_the_first_checkpoint_logs_each_step_once(tmp_path):
    run = tmp_path / "run"
    ov = ["train.steps=3", "checkpoint.every=0"]  # checkpoint only at the end
    part = train(recipe(*ov), run_dir=run, stop_after=1, **QUIET)  # killed after step 0's line, no checkpoint yet
    assert part["steps"] == 1 and steps(run) == [0] and ckpt.latest(run) is None
    train(recipe(*ov), run_dir=run, resume=True, **QUIET)
    assert steps(run) == [0, 1, 2]
    assert len([r for r in read_metrics(run) if r.get("final")]) == 1


# ---- 4. non-finite updates ------------------------------------------------------------------------------------------

def test_nonfinite_updates_are_skipped_counted_and_stop_the_run_in_a_row(tmp_path, caplog):
    run = tmp_path / "run"
    nan = "regularizers=[{name: _fault_nan_on_calls, coef: 1.0, params: {calls: [1, 3, 4]}}]"
    with caplog.at_level(logging.WARNING, logger="entropo.train"), \
            pytest.raises(NonFiniteError, match=r"2 optimizer updates in a row .*train.max_nonfinite_steps=2"):
        train(recipe("train.steps=6", "train.max_nonfinite_steps=2", nan), run_dir=run, **QUIET)
    rows = {r["step"]: r for r in read_metrics(run)}
    assert [rows[s]["actor/nonfinite_skipped"] for s in range(4)] == [0, 1, 0, 1]
    assert [rows[s]["actor/optimizer_steps"] for s in range(4)] == [1, 0, 1, 0]
    assert "skipped an optimizer update: non-finite loss nan" in caplog.text
    c = run / "checkpoints"
    assert sorted(p.name for p in c.iterdir()) == [f"step_00000{i}" for i in (1, 2, 3, 4)]
    w1, w2, w3, w4 = (weights(c / f"step_00000{i}") for i in (1, 2, 3, 4))
    for k in w1:
        assert torch.isfinite(w4[k]).all()
        assert torch.equal(w1[k], w2[k]) and torch.equal(w3[k], w4[k])  # the skipped steps changed nothing
    assert any(not torch.equal(w2[k], w3[k]) for k in w1)


def test_an_overflowing_update_stops_the_run_and_is_never_checkpointed(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="after an optimizer update: .* weights are NaN or inf"):
        train(recipe("train.steps=2", "optimizer.lr=1e39"), run_dir=run, **QUIET)
    assert ckpt.latest(run) is None
    # and save_checkpoint itself refuses non-finite weights
    from entropo.models import tiny

    model, _ = tiny()
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteError, match="checkpoint of step 1"):
        save_checkpoint(SimpleNamespace(model=model, out_dir=tmp_path, state=SimpleNamespace(step=1)))
    assert not (tmp_path / "checkpoints").exists()


# ---- 5. corrupt newest checkpoint ----------------------------------------------------------------------------------

def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(base_run, tmp_path):
    run = copy_run(base_run, tmp_path)
    state = run / "checkpoints" / "step_000002" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (run / "checkpoints" / ".tmp_killed").mkdir()  # a save killed half-way
    said = []
    summary = train(recipe("train.steps=3"), run_dir=run, resume=True, console=said.append)
    assert any("skipping checkpoint" in s and "step_000002" in s and "truncated" in s for s in said)
    assert any("resumed from" in s and "step_000001" in s for s in said)
    assert summary["steps"] == 3 and steps(run) == [0, 1, 2]
    assert not (run / "checkpoints" / ".tmp_killed").exists()
    assert ckpt.verify(run / "checkpoints" / "step_000002") is None  # rewritten by the resumed run
    # train.steps may change on resume: accepted and recorded
    change = json.loads((run / "recipe_changes.jsonl").read_text())
    assert change["changes"] == {"train.steps": [2, 3]} and change["checkpoint"] == "step_000001"


def test_an_empty_or_torn_checkpoint_is_named_not_a_raw_zip_error(base_run, tmp_path):
    run = copy_run(base_run, tmp_path)
    (run / "checkpoints" / "step_000002" / "state.pt").write_bytes(b"")
    said = []
    found, saved = ckpt.resume_point(run, warn=said.append)
    assert found.name == "step_000001" and saved["run_state"]["step"] == 1
    assert "step_000002" in said[0] and "0 bytes" in said[0]
    with pytest.raises(CheckpointError, match=r"step_000002/state.pt is corrupted"):
        ckpt.load(run / "checkpoints" / "step_000002")
    (run / "checkpoints" / "step_000001" / "state.pt").write_bytes(b"PK\x03\x04 not a zip")
    assert ckpt.resume_point(run, warn=said.append) == (None, None)


# ---- 6. resume with a different recipe ------------------------------------------------------------------------------

@pytest.mark.parametrize("change,field", [
    ("seed=1", "seed"),
    ("task.eval_size=3", "task.eval_size"),
    ("model.tiny={hidden_size: 32}", "model.tiny.hidden_size"),
    ("objective.params={clip_high: 0.3}", "objective.params.clip_high"),
])
def test_resume_refuses_a_recipe_that_changes_the_run(base_run, tmp_path, change, field):
    run = copy_run(base_run, tmp_path)
    before = (run / "recipe.yaml").read_text()
    with pytest.raises(ConfigError, match=rf"(?s)differs from the one .*step_000002.*{field}:"):
        train(recipe("train.steps=3", change), run_dir=run, resume=True, **QUIET)
    assert (run / "recipe.yaml").read_text() == before  # left as it was


def test_resume_accepts_changes_of_length_logging_and_cadence(base_run):
    from entropo import recipe_diff

    saved = ckpt.load(ckpt.latest(base_run))["recipe"]
    new = recipe("train.steps=10", "logging.tensorboard=true", "eval.every=5", "checkpoint.every=2",
                 "train.micro_batch_size=4", "reward_isolation=process", "train.malloc_mmap_threshold=0",
                 "model.reference_resident=false")
    changes = recipe_diff.check_resume(saved, new, Path("step_000002"), 2)
    assert set(changes) == {"train.steps", "logging.tensorboard", "eval.every", "checkpoint.every",
                            "train.micro_batch_size", "reward_isolation", "train.malloc_mmap_threshold",
                            "model.reference_resident"}


# ---- 7. errors as one line ------------------------------------------------------------------------------------------

def _cli_train(run, *sets, debug=False):
    args = (["--debug"] if debug else []) + ["train", "--run-dir", str(run)]
    for s in FAST + ["train.steps=1", *sets]:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def _one_line_error(res):
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize("content,expect", [
    ("", r"is empty \(0 rows\)"),
    ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"\n', r"line 2: not valid JSON"),
    ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n{"answer": "6"}\n',
     r"line 3: field 'prompt' is empty or missing"),
    ('{"prompt": "1+1=", "answer": "2"}\n' * 5 + '{"prompt": "' + "9+" * 300 + '1=", "answer": "1"}\n',
     r"line 6 \((train|eval) split\): the prompt is \d+ tokens.*512 positions"),
])
def test_bad_data_is_one_line_naming_file_and_line(tmp_path, content, expect):
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    res = _cli_train(tmp_path / "run", "task.name=dataset",
                     f"task.params={{path: '{data}', chat: false, cache_dir: '{tmp_path / 'cache'}'}}")
    line = _one_line_error(res)
    assert str(data) in line and re.search(expect, line), line


def test_debug_shows_the_traceback(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    res = _cli_train(tmp_path / "run", "task.name=dataset", f"task.params={{path: '{data}'}}", debug=True)
    assert isinstance(res.exception, ConfigError) and "is empty" in str(res.exception)


def test_eval_on_a_folder_that_is_not_a_model_or_a_run(tmp_path):
    (tmp_path / "stuff").mkdir()
    line = _one_line_error(CliRunner().invoke(app, ["eval", str(tmp_path / "stuff")]))
    assert "neither a run directory" in line and "config.json" in line
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    line = _one_line_error(CliRunner().invoke(app, ["eval", str(tmp_path / "unfinished")]))
    assert "no final/ model yet" in line and "--resume" in line


def test_disk_full_while_checkpointing_says_no_space_left_on_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "_open_for_write", lambda path: open("/dev/full", "wb"))  # every write: ENOSPC
    with pytest.raises(CheckpointError) as e:
        ckpt.save(tmp_path, 3, {"model": {"w": torch.zeros(1000)}})
    assert str(e.value).startswith(f"no space left on {tmp_path / 'checkpoints'} while writing step_000003")
    assert "inline_container" not in str(e.value)
    assert describe(e.value) == (str(e.value), 2)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # nothing half-written left behind


# ---- 8. reward time limits -----------------------------------------------------------------------------------------

def _sample(text):
    return Sample(completion=text, example=Example(prompt="1+1=", answer="2"), task=None)


def test_process_isolation_stops_a_c_call_at_the_limit():
    runner = RewardRunner([{"name": "_fault_pbkdf2", "isolation": "process"}], timeout_s=0.5)
    try:
        assert runner.score([_sample("fast")]).rewards == [1.0]  # starts the worker
        t0 = time.monotonic()
        r = runner.score([_sample("slow")])
        elapsed = time.monotonic() - t0
        assert r.failures == ["reward _fault_pbkdf2 timed out after 0.5 s (worker process killed)"]
        assert elapsed < 1.5, elapsed  # inline, the same call overruns its limit by seconds
        assert runner.score([_sample("fast")]).rewards == [1.0]  # a fresh worker replaces the killed one
    finally:
        runner.close()


def test_process_isolated_reward_sees_the_task(tmp_path):
    from entropo.tasks.arithmetic import arithmetic

    task = arithmetic(seed=0, eval_size=2, digits=1, chat=False)
    ex = task.eval_examples()[0]
    runner = RewardRunner([{"name": "_fault_uses_task"}], isolation="process")
    try:
        r = runner.score([Sample(completion=ex.answer, example=ex, task=task),
                          Sample(completion="x", example=ex, task=task)])
        assert r.rewards == [1.0, 0.0] and r.failures == [None, None]
    finally:
        runner.close()


def test_a_reward_that_swallows_the_timeout_fails():
    r = RewardRunner([{"name": "_fault_swallows_and_returns"}], timeout_s=0.2, failure_value=-1.0).score(
        [_sample("x")])
    assert r.rewards == [-1.0]
    assert r.failures == ["reward _fault_swallows_and_returns timed out after 0.2 s (it caught the timeout and "
                          "returned)"]


def test_a_hanging_reward_spends_its_step_budget_then_fails_fast(caplog):
    runner = RewardRunner([{"name": "_fault_hangs"}, {"name": "format"}], timeout_s=0.2, budget_s=0.5)
    with caplog.at_level(logging.WARNING, logger="entropo.rewards"):
        t0 = time.monotonic()
        r = runner.score([_sample("x")] * 12)
        elapsed = time.monotonic() - t0
    assert elapsed < 1.5, elapsed  # 12 x 0.2 s = 2.4 s without the budget
    assert all("_fault_hangs" in f for f in r.failures)
    assert sum("per-step budget of 0.5 s is used up" in f for f in r.failures) >= 8
    assert "used its per-step budget" in caplog.text
    metrics = runner.end_step()
    assert metrics["reward/budget_exhausted"] >= 8
    assert runner.end_step() == {"reward/budget_exhausted": 0}  # a new step, a fresh budget


def test_budget_metric_and_isolated_rewards_in_a_run(tmp_path):
    rec = recipe("train.steps=2", "rewards=[{name: correct, isolation: process}, {name: _fault_hangs, weight: 0}]",
                 "reward_timeout_s=0.1", "reward_budget_s=0.25", "checkpoint.every=0")
    train(rec, run_dir=tmp_path / "run", **QUIET)
    rows = [r for r in read_metrics(tmp_path / "run") if not r.get("final")]
    assert len(rows) == 2
    for r in rows:
        assert r["reward/budget_exhausted"] >= 4  # 8 samples, ~2-3 fit in 0.25 s of 0.1 s timeouts
        assert r["reward/failures"] == 8
