import json

from entropo import checkpoint
from entropo.logging import MetricsLogger, Progress, read_metrics


def test_metrics_lines_truncate_and_torn_line(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(5):
        log.log(step, {"reward/mean": step / 10, "nan": float("nan")})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rew')  # a crash mid-write
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and rows[0]["nan"] is None
    log.truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("\n")


def test_progress_shows_reward_accuracy_entropy_kl_throughput():
    p = Progress(10, enabled=False)
    info = p._info({"reward/mean": 0.25, "accuracy": 0.5, "entropy/mean": 1.5, "kl/ref": 0.02,
                    "actor/approx_kl_old": 0.5, "tokens_per_s": 1234.4})
    assert info == "reward 0.250  acc 0.50  H 1.500  KL 0.0200  tok/s 1234"
    assert "KL 0.5000" in p._info({"actor/approx_kl_old": 0.5})  # no reference model: KL(old || new)


def test_checkpoint_atomic_keep_and_latest(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"x": step}, keep=2)
    (tmp_path / "checkpoints" / ".tmp_crashed").mkdir()  # a half-written checkpoint is never picked
    (tmp_path / "checkpoints" / "step_000009").mkdir()  # nor a directory without state.pt
    names = [p.name for p in checkpoint.all_checkpoints(tmp_path)]
    assert names == ["step_000002", "step_000003"]
    assert checkpoint.load(checkpoint.latest(tmp_path)) == {"x": 3}
    checkpoint.atomic_write_bytes(tmp_path / "a.json", json.dumps({"k": 1}).encode())
    assert json.loads((tmp_path / "a.json").read_text()) == {"k": 1}
