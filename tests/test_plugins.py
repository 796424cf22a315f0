"""Components from the user's own code: import paths ('module:attr'), plugin modules (--import, a recipe's
`imports`), the Python API (entropo.train / entropo.load_recipe) and the README example that shows them."""

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import entropo
from entropo import registry
from entropo.cli import app
from entropo.config import ConfigError, Recipe
from entropo.logging import read_metrics

ROOT = Path(__file__).resolve().parent.parent

# A plugin module the way a user writes one: a reward, an advantage estimator and a task factory, plus a constant
# (not a component) and a counter the tests read to see what ran.
PLUGIN = '''
from entropo.types import Example

CALLS = {"reward": 0, "advantage": 0, "task": 0}
NOT_A_COMPONENT = 42


def constant_reward(sample, value: float = 0.625):
    CALLS["reward"] += 1
    return value


def flat_advantage(batch, value: float = 0.375):
    CALLS["advantage"] += 1
    return value * batch.response_mask  # [B, L], zero outside the response


class CopyDigit:
    """'c7=' -> '7'."""

    name = "copy_digit"

    def __init__(self, seed, eval_size, prefix):
        self.seed, self.eval_size, self.prefix = seed, eval_size, prefix

    def _example(self, i):
        d = str((i * 7 + self.seed) % 10)
        return Example(prompt=f"{self.prefix}{d}=", answer=d, target=d)

    def train_size(self):
        return 50

    def train_example(self, i):
        return self._example(i)

    def eval_examples(self):
        return [self._example(50 + i) for i in range(self.eval_size)]

    def correct(self, completion, example):
        return completion.strip()[:1] == example.answer


def copy_digit(seed, eval_size=8, *, prefix="c"):
    CALLS["task"] += 1
    return CopyDigit(seed, eval_size, prefix)
'''

FAST = {"model": {"name_or_path": "tiny"}, "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 3},
        "train": {"steps": 2, "micro_batch_size": 8}, "warmup": {"steps": 0},
        "logging": {"progress": False, "plots": False, "tensorboard": False}, "checkpoint": {"every": 0}}
FAST_SETS = ["model.name_or_path=tiny", "warmup.steps=0", "train.steps=2", "rollout.prompts_per_step=2",
             "rollout.n=2", "rollout.max_new_tokens=3", "task.eval_size=4", "eval.every=0", "logging.progress=false",
             "logging.plots=false", "logging.tensorboard=false", "checkpoint.every=0"]


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    d = tmp_path / "plugins"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    return d


def write_module(directory: Path, source: str) -> str:
    """Write a module with a fresh name (modules and import paths are cached per process) and return its name."""
    name = f"user_plugin_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    return name


def plugin_recipe(mod: str) -> dict:
    return {**FAST, "name": "plugin_run",
            "task": {"name": f"{mod}:copy_digit", "params": {"prefix": "c"}, "eval_size": 4},
            "rewards": [{"name": f"{mod}:constant_reward", "params": {"value": 0.625}}],
            "advantage": {"name": f"{mod}:flat_advantage", "params": {"value": 0.375}}}


def steps(run_dir):
    return [r for r in read_metrics(run_dir) if not r.get("final")]


# ---- training with import-path components, through entropo.train ----------------------------------------------------

def test_train_dict_recipe_with_import_path_components(plugin_dir, tmp_path):
    mod = write_module(plugin_dir, PLUGIN)
    recipe = plugin_recipe(mod)
    before = yaml.safe_dump(recipe)
    summary = entropo.train(recipe, run_dir=tmp_path / "run", console=None)
    assert yaml.safe_dump(recipe) == before  # the caller's dict is not modified
    assert summary["steps"] == 2 and set(summary["eval_end"]) >= {"accuracy", "pass@1"}
    calls = sys.modules[mod].CALLS
    assert calls["reward"] == 2 * 2 * 2  # steps x prompts x n: the plugin reward scored every sample
    assert calls["advantage"] == 2 and calls["task"] >= 1
    rows = steps(tmp_path / "run")
    assert [r["reward/mean"] for r in rows] == [0.625, 0.625]
    # the custom advantage is what the update used: 0.375 on every response token
    assert all(r["advantage/mean"] == pytest.approx(0.375) and r["advantage/abs_mean"] == pytest.approx(0.375)
               for r in rows)
    # the resolved import paths are registered like any component
    assert f"{mod}:constant_reward" in registry.names("reward")
    assert registry.meta("advantage", f"{mod}:flat_advantage") == {}
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["rewards"][0]["name"] == f"{mod}:constant_reward"


def test_train_yaml_path_with_overrides(plugin_dir, tmp_path):
    mod = write_module(plugin_dir, PLUGIN)
    path = tmp_path / "plugin_recipe.yaml"
    path.write_text(yaml.safe_dump(plugin_recipe(mod)))
    summary = entropo.train(path, ["rewards.0.params.value=0.25", "advantage.params={value: -0.5}", "train.steps=1"],
                            run_dir=tmp_path / "run", console=None)
    assert summary["steps"] == 1
    (row,) = steps(tmp_path / "run")
    assert row["reward/mean"] == 0.25 and row["advantage/mean"] == pytest.approx(-0.5)


def test_train_shipped_name_and_recipe_object(plugin_dir, tmp_path):
    mod = write_module(plugin_dir, PLUGIN)
    rec = entropo.load_recipe("demo", [*FAST_SETS, f"rewards=[{{name: '{mod}:constant_reward'}}]", "train.steps=1"])
    assert isinstance(rec, Recipe) and rec.name == "demo" and rec.train.steps == 1
    summary = entropo.train(rec, ["rewards.0.params={value: 0.125}"], run_dir=tmp_path / "run", console=None)
    assert summary["steps"] == 1 and steps(tmp_path / "run")[0]["reward/mean"] == 0.125
    assert rec.rewards[0].params == {}  # the Recipe passed in is not modified
    with pytest.raises(FileExistsError, match="resume"):
        entropo.train(rec, run_dir=tmp_path / "run", console=None)


def test_load_recipe_inputs_and_errors(tmp_path):
    assert entropo.load_recipe().name == "run"
    assert entropo.load_recipe("dapo").name == "dapo"
    assert entropo.load_recipe({"train": {"steps": 3}}, ["optimizer.lr=1e-4"]).optimizer.lr == 1e-4
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe.*demo"):
        entropo.load_recipe("demoo")
    with pytest.raises(ConfigError, match=r"invalid recipe \(dict\):\n  rollout.n"):
        entropo.load_recipe({"rollout": {"n": "many"}})
    with pytest.raises(TypeError, match="list of strings"):
        entropo.load_recipe("demo", "train.steps=2")


def test_import_entropo_is_light():
    heavy = ("torch", "transformers", "pydantic", "typer")
    code = f"import entropo, sys; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    assert {"train", "load_recipe", "register"} <= set(entropo.__all__)


# ---- plugin modules: --import and the recipe's imports ---------------------------------------------------------------

REGISTERING_PLUGIN = '''
from entropo import register

@register("reward", "{name}", description="a plugin reward")
def plugin_reward(sample):
    return 0.875
'''


runner = CliRunner()


def test_cli_import_registers_plain_name(plugin_dir, tmp_path):
    reward = f"plugin_reward_{uuid.uuid4().hex[:6]}"
    mod = write_module(plugin_dir, REGISTERING_PLUGIN.format(name=reward))
    args = ["train", "demo", "--import", mod, "--run-dir", str(tmp_path / "run"),
            *sum((["--set", s] for s in [*FAST_SETS, "train.steps=1", f"rewards=[{{name: {reward}}}]"]), [])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert steps(tmp_path / "run")[0]["reward/mean"] == 0.875
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["imports"] == [mod]  # the run's recipe.yaml re-runs as is
    assert registry.meta("reward", reward) == {"description": "a plugin reward"}

    res = runner.invoke(app, ["recipes", "--components", "--import", mod])
    assert res.exit_code == 0 and reward in res.output


def test_recipe_imports_field(plugin_dir):
    reward = f"plugin_reward_{uuid.uuid4().hex[:6]}"
    mod = write_module(plugin_dir, REGISTERING_PLUGIN.format(name=reward))
    rec = entropo.load_recipe({"imports": [mod], "rewards": [{"name": reward}]})
    assert rec.imports == [mod] and registry.get("reward", reward)(None) == 0.875
    assert "imports" in Recipe.model_fields and Recipe.model_fields["imports"].description


def test_cli_import_errors_are_one_line(plugin_dir):
    res = runner.invoke(app, ["train", "demo", "--import", "no_such_plugin_mod"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--import: no module named 'no_such_plugin_mod'" in res.output
    bad = write_module(plugin_dir, "raise RuntimeError('plugin exploded')\n")
    for cmd in (["train", "demo"], ["recipes", "--components"], ["eval", "tiny"]):
        res = runner.invoke(app, [*cmd, "--import", bad])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert f"importing module '{bad}' failed: RuntimeError: plugin exploded" in " ".join(res.output.split())


def test_cli_main_imports_from_current_directory(tmp_path, monkeypatch, capsys):
    # the `entropo` console script does not put the current directory on sys.path (python -m does): main() adds it
    reward = f"plugin_reward_{uuid.uuid4().hex[:6]}"
    mod = write_module(tmp_path, REGISTERING_PLUGIN.format(name=reward))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(sys, "argv", ["entropo", "recipes", "--components", "--import", mod])
    from entropo.cli import main

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0 and reward in capsys.readouterr().out


# ---- error messages --------------------------------------------------------------------------------------------------

def config_error(recipe: dict) -> str:
    with pytest.raises(ConfigError) as e:
        entropo.load_recipe(recipe)
    return str(e.value)


def test_error_nonexistent_module():
    msg = config_error({"task": {"name": "no_such_pkg.tasks:make"}})
    assert msg.startswith("task.name: task 'no_such_pkg.tasks:make': no module named 'no_such_pkg.tasks' "
                          "(package 'no_such_pkg' not found)")


def test_error_missing_attribute_lists_attributes(plugin_dir):
    mod = write_module(plugin_dir, PLUGIN)
    msg = config_error({"rewards": [{"name": "correct"}, {"name": f"{mod}:constant_rewrd"}]})
    assert msg.startswith(f"rewards.1.name: reward '{mod}:constant_rewrd': module '{mod}' has no attribute "
                          f"'constant_rewrd'; it defines: ")
    # the module's own functions and classes first, then its other public names (imports, constants)
    assert msg.endswith("it defines: constant_reward, flat_advantage, CopyDigit, copy_digit, Example, CALLS, "
                        "NOT_A_COMPONENT")


def test_error_not_a_function_or_class(plugin_dir):
    mod = write_module(plugin_dir, PLUGIN)
    msg = config_error({"advantage": {"name": f"{mod}:NOT_A_COMPONENT"}})
    assert msg == (f"advantage.name: advantage '{mod}:NOT_A_COMPONENT': 'NOT_A_COMPONENT' is not a function or class "
                   f"(it is of type int)")
    assert "expected an import path" in config_error({"advantage": {"name": f"{mod}:"}})


def test_error_bad_params_of_import_path_component(plugin_dir):
    mod = write_module(plugin_dir, PLUGIN)
    msg = config_error({"advantage": {"name": f"{mod}:flat_advantage", "params": {"valu": 1}}})
    assert msg == f"advantage.params: unknown parameter(s) 'valu' for advantage '{mod}:flat_advantage'. Allowed: value"
    msg = config_error({"task": {"name": f"{mod}:copy_digit", "params": {"prefx": "c"}}})
    assert msg.startswith("task.params: unknown parameter(s) 'prefx'") and "prefix" in msg


def test_error_plugin_raises_on_import(plugin_dir):
    bad = write_module(plugin_dir, "import os\n\nraise RuntimeError('plugin exploded')\n")
    msg = config_error({"imports": ["os", bad]})
    assert re.fullmatch(rf"imports\.1: importing module '{bad}' failed: RuntimeError: plugin exploded "
                        rf"\(at .*{bad}\.py:3\)", msg), msg
    msg = config_error({"rewards": [{"name": f"{bad}:f"}]})
    assert msg.startswith(f"rewards.0.name: reward '{bad}:f': importing module '{bad}' failed: RuntimeError")
    broken_dep = write_module(plugin_dir, "import no_such_dependency_xyz\n")
    msg = config_error({"imports": [broken_dep]})
    assert (f"imports.0: importing module '{broken_dep}' failed: ModuleNotFoundError: No module named "
            f"'no_such_dependency_xyz'") in msg
    with pytest.raises(ConfigError, match=r"^--import: no module named 'nope_plugin'"):
        entropo.load_recipe(None, imports=["nope_plugin"])


def test_registry_get_import_path_and_dotted_hint(plugin_dir):
    mod = write_module(plugin_dir, PLUGIN)
    fn = registry.get("reward", f"{mod}:constant_reward")
    assert fn is sys.modules[mod].constant_reward and registry.get("reward", f"{mod}:constant_reward") is fn
    with pytest.raises(registry.ComponentImportError, match=rf"^reward '{mod}:nope': module '{mod}' has no attribute"):
        registry.get("reward", f"{mod}:nope")
    msg = config_error({"rewards": [{"name": f"{mod}.constant_reward"}]})
    assert f"e.g. {mod}:constant_reward" in msg
    assert "environment" in registry.KINDS and "single_turn" in registry.names("environment")
    # an import path to a component registered under a plain name keeps its meta (e.g. a shaping stage)
    assert registry.meta("advantage", "entropo.algorithms.advantages:grpo") == registry.meta("advantage", "grpo")


# ---- the README example ----------------------------------------------------------------------------------------------

def readme_example() -> tuple[str, str, str]:
    """(module name, module source, script) of the README's 'Plugins and the Python API' example."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Plugins and the Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    module_src, script = blocks[0], blocks[1]
    module_name = re.match(r"# (\w+)\.py\n", module_src).group(1)
    return module_name, module_src, script


def test_readme_example_runs(tmp_path, monkeypatch):
    module_name, module_src, script = readme_example()
    assert f"'{module_name}:" in script and "entropo.train(" in script
    (tmp_path / f"{module_name}.py").write_text(module_src)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the example writes runs/<name> in the current directory
    sys.modules.pop(module_name, None)
    user_module = importlib.import_module(module_name)
    calls = []
    for attr, fn in list(vars(user_module).items()):  # count calls of the user's functions
        if callable(fn) and getattr(fn, "__module__", None) == module_name:
            def counted(*a, _fn=fn, **kw):
                calls.append(_fn.__name__)
                return _fn(*a, **kw)
            counted.__signature__ = inspect.signature(fn)
            monkeypatch.setattr(user_module, attr, counted)
    real_train = entropo.train
    monkeypatch.setattr(entropo, "train", lambda recipe, overrides=(), **kw: real_train(
        recipe, [*overrides, *FAST_SETS, "train.steps=2"], **kw))  # same example, 2 small steps
    exec(compile(script, "README.md", "exec"), {"__name__": "__main__"})
    assert calls, "the README's reward was never called"
    rows = steps(next((tmp_path / "runs").iterdir()))
    assert len(rows) == 2 and all(r["reward/failures"] == 0 for r in rows)
