"""Shipped recipes run on the tiny model; the CLI reports bad input as one clear error; bad rewards never kill a run."""

import json

import pytest
from typer.testing import CliRunner

from entropo import registry
from entropo.cli import RECIPES_DIR, app
from entropo.config import ConfigError, load_recipe
from entropo.logging import read_metrics
from entropo.trainer import train

# Recipes on the tiny model run a 2-step smoke test; those on a real model (which needs `entropo models pull`) are
# validated only.
ALL_RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if "program:" not in p.read_text())
REAL_MODEL_RECIPES = [n for n in ALL_RECIPES if "smollm2" in n]
RECIPES = [n for n in ALL_RECIPES if n not in REAL_MODEL_RECIPES]
SMOKE = ["model.name_or_path=tiny", "warmup.steps=3", "train.steps=3", "rollout.prompts_per_step=2",
         "rollout.n=4", "task.eval_size=4", "logging.progress=false", "logging.tensorboard=false",
         "logging.plots=false", "checkpoint.every=0"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_smoke_on_tiny_model(name, tmp_path):
    recipe = load_recipe(RECIPES_DIR / f"{name}.yaml", SMOKE)
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    assert text.startswith("#") and "arXiv" in text.splitlines()[0] + text.splitlines()[1] + text.splitlines()[2]
    summary = train(recipe, run_dir=tmp_path / name, console=lambda *_: None)
    rows = [r for r in read_metrics(tmp_path / name) if not r.get("final")]
    assert len(rows) == 3 and summary["steps"] == 3
    assert all(r["reward/mean"] == r["reward/mean"] for r in rows)  # not NaN


@pytest.mark.parametrize("name", REAL_MODEL_RECIPES)
def test_real_model_recipe_validates(name):
    r = load_recipe(RECIPES_DIR / f"{name}.yaml")
    assert r.model.name_or_path == "smollm2-135m-instruct"
    assert "arXiv" in (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()[0]


@registry.register("reward", "test_raises")
def _raises(sample):
    raise RuntimeError("boom")


def test_reward_that_raises_is_logged_not_fatal(tmp_path):
    rec = load_recipe(None, SMOKE + ["rewards=[{name: correct}, {name: test_raises, weight: 0.5}]",
                                     "reward_timeout_s=1"])
    train(rec, run_dir=tmp_path / "r", console=lambda *_: None)
    rows = [r for r in read_metrics(tmp_path / "r") if not r.get("final")]
    assert rows and all(r["reward/failures"] == 8 for r in rows)  # 2 prompts x 4 samples, every one failed


def test_missing_dataset_column_is_one_config_error(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) for i in range(20)))
    rec = load_recipe(None, SMOKE + ["task.name=dataset", f"task.params={{path: '{data}'}}"])
    with pytest.raises(ConfigError) as e:
        train(rec, run_dir=tmp_path / "r", console=lambda *_: None)
    assert "prompt" in str(e.value) and "question" in str(e.value) and "prompt_column" in str(e.value)


runner = CliRunner()


def test_cli_recipes_lists_papers():
    res = runner.invoke(app, ["recipes", "--components"])
    assert res.exit_code == 0, res.output
    for name in RECIPES:
        assert name in res.output
    assert "2503.14476" in res.output and "grpo" in res.output


def test_cli_bad_override_is_one_clear_error():
    res = runner.invoke(app, ["train", "demo", "--set", "objective.name=ppo_clipp"])
    assert res.exit_code == 2
    assert "objective.name" in res.output and "ppo_clip" in res.output and "Traceback" not in res.output


def test_cli_unknown_model_is_one_clear_error(tmp_path):
    res = runner.invoke(app, ["train", "demo", "--run-dir", str(tmp_path / "x"), "--set",
                              "model.name_or_path=smollm2-135m-instructt"])
    assert res.exit_code == 2 and "model.name_or_path" in res.output and "Traceback" not in res.output


def test_cli_train_resume_plot_eval(tmp_path):
    run = tmp_path / "cli"
    args = ["train", "demo", "--run-dir", str(run)] + sum((["--set", s] for s in SMOKE), [])
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "held-out evaluation" in res.output and "metrics.jsonl" in res.output and "checkpoints" in res.output
    res = runner.invoke(app, args)  # same run dir again without --resume
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 0 and (run / "plots" / "curves.png").exists()
    res = runner.invoke(app, ["eval", str(run), "--task", "arithmetic", "--task-param", "digits=1",
                              "--n", "2", "--k", "1,2", "--size", "4", "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output
    assert "pass@1" in res.output and "pass@2" in res.output


def test_cli_policy_cliff_reports_both_regularizations():
    args = ["cliff", "demo", "--updates", "2", "--flip-fraction", "0.25"]
    for item in ["warmup.steps=20", "rollout.prompts_per_step=4", "rollout.n=4", "task.eval_size=4"]:
        args += ["--set", item]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "ratio none / entropy" in res.output and "entropy coef 0.01" in res.output
