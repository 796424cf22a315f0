"""Program recipes (`entropo run`): params checked against the program's signature with one error naming the field,
the trainer refuses them with a pointer to `entropo run`, results are written to OUT/results.json, and `entropo
recipes` lists them."""

import json

import pytest
from typer.testing import CliRunner

from entropo import registry
from entropo.cli import app
from entropo.config import ConfigError, load_recipe
from entropo.programs import load_program, run_program


@registry.register("program", "test_square_sum")
def square_sum(out_dir, seed, console, n: int, scale: float = 1.0) -> dict:
    """sum_{i<n} (scale * i)^2 + seed: a result that depends on every input."""
    console(f"n={n}")
    (out_dir / "artifact.txt").write_text("x")
    return {"value": sum((scale * i) ** 2 for i in range(n)) + seed}


def write(tmp_path, text):
    p = tmp_path / "prog.yaml"
    p.write_text(text)
    return p


def test_program_runs_and_writes_results(tmp_path):
    p = write(tmp_path, "paper: a paper, arXiv 0000.00000\nprogram: test_square_sum\nseed: 2\nparams: {n: 4}\n")
    rec = load_program(p, ["params.scale=2"])
    assert rec.name == "prog" and rec.params == {"n": 4, "scale": 2}
    lines = []
    res = run_program(rec, tmp_path / "out", console=lines.append)
    assert res["value"] == 4 * (0 + 1 + 4 + 9) + 2 and lines == ["n=4"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["value"] == res["value"] and saved["wall_s"] >= 0
    assert (tmp_path / "out" / "artifact.txt").exists() and (tmp_path / "out" / "recipe.yaml").exists()


@pytest.mark.parametrize("text, field", [
    ("program: test_square_sum\nparams: {n: 1, nn: 2}\n", "params.nn"),
    ("program: test_square_sum\nparams: {}\n", "params.n"),
    ("program: test_square_sum\nparams: {n: 1, seed: 3}\n", "params.seed"),
    ("program: nope_program\n", "program"),
    ("program: test_square_sum\nparams: {n: 1}\nextra_key: 1\n", "extra_key"),
])
def test_bad_program_recipe_names_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError) as e:
        load_program(write(tmp_path, text))
    assert str(e.value).startswith(field) or f"{field}:" in str(e.value)


def test_trainer_refuses_a_program_recipe_and_cli_runs_it(tmp_path):
    p = write(tmp_path, "program: test_square_sum\nparams: {n: 3}\n")
    with pytest.raises(ConfigError, match="entropo run prog"):
        load_recipe(p)
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "o"), "--set", "params.n=2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "results.json").read_text())["value"] == 1
    bad = CliRunner().invoke(app, ["train", str(p)])
    assert bad.exit_code != 0 and "entropo run prog" in bad.output
