from pathlib import Path

import pytest

from entropo.config import ConfigError, Recipe, apply_overrides, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "entropo" / "recipes"


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_every_shipped_recipe_validates():
    paths = sorted(RECIPES.glob("*.yaml"))
    assert paths, "no recipes shipped"
    for p in paths:
        if "program:" in p.read_text():  # a program recipe (entropo run): validated by its own loader
            from entropo.programs import load_program

            assert load_program(p).name == p.stem
            continue
        r = load_recipe(p)
        assert r.name == p.stem or r.name


def test_unknown_component_names_field_and_allowed(tmp_path):
    p = write(tmp_path, "advantage: {name: grpoo}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "advantage.name" in msg and "'grpoo'" in msg and "grpo" in msg and "rloo" in msg


def test_unknown_component_param(tmp_path):
    p = write(tmp_path, "objective: {name: ppo_clip, params: {clip_hi: 0.3}}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert "objective.params" in str(e.value) and "clip_hi" in str(e.value) and "clip_high" in str(e.value)


def test_bad_type(tmp_path):
    p = write(tmp_path, "rollout: {n: many}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert "rollout.n" in str(e.value) and "'many'" in str(e.value)


def test_missing_field(tmp_path):
    p = write(tmp_path, "objective: {params: {clip_low: 0.1}}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert "objective.name: field required" in str(e.value)


def test_unknown_key_lists_allowed(tmp_path):
    p = write(tmp_path, "rollout: {temprature: 0.5}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "rollout.temprature: unknown field" in msg and "temperature" in msg


def test_bad_literal(tmp_path):
    p = write(tmp_path, "aggregation: {mode: token-sum}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert "aggregation.mode" in str(e.value) and "seq-mean-token-mean" in str(e.value)


def test_bad_yaml_reports_line(tmp_path):
    p = write(tmp_path, "rollout:\n  n: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert "invalid YAML" in str(e.value) and "line" in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")


def test_overrides_dotted_and_list_index(tmp_path):
    p = write(tmp_path, "rewards: [{name: correct}, {name: overlong, weight: 0.5, params: {buffer: 4}}]\n")
    r = load_recipe(p, ["optimizer.lr=3e-5", "objective.params.clip_high=0.28", "rewards.1.weight=2",
                        "rollout.stop=[\"\\n\"]"])
    assert r.optimizer.lr == 3e-5
    assert r.objective.params == {"clip_high": 0.28}
    assert r.rewards[1].weight == 2.0
    assert r.rollout.stop == ["\n"]
    assert r.name == "r"


def test_override_errors(tmp_path):
    p = write(tmp_path, "rewards: [{name: correct}]\n")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_recipe(p, ["optimizer.lr"])
    with pytest.raises(ConfigError, match="rewards.5"):
        load_recipe(p, ["rewards.5.weight=1"])
    with pytest.raises(ConfigError, match="optimizer.lrr: unknown field"):
        load_recipe(p, ["optimizer.lrr=1"])


def test_eval_k_must_not_exceed_n():
    with pytest.raises(ConfigError, match="eval"):
        load_recipe(None, ["eval.n=2", "eval.k=[1,4]"])


def test_defaults_are_valid_and_documented():
    r = load_recipe(None)
    assert isinstance(r, Recipe)
    # the config is the documentation: every field of every section carries a description
    for section in Recipe.model_fields.values():
        ann = section.annotation
        if hasattr(ann, "model_fields"):
            for name, f in ann.model_fields.items():
                assert f.description, f"{ann.__name__}.{name} has no description"


def test_apply_overrides_creates_sections():
    d = apply_overrides({}, ["a.b.c=1", "a.d=x"])
    assert d == {"a": {"b": {"c": 1}, "d": "x"}}


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    # PyYAML (YAML 1.1) reads "1e-3" as a string; recipes and --set follow YAML 1.2 and read a float
    p = tmp_path / "r.yaml"
    p.write_text("optimizer: {lr: 3e-4}\nadvantage: {name: gae, params: {value_lr: 1e-2}}\n")
    r = load_recipe(p, ["objective.params={clip_low: 2e-1}"])
    assert r.optimizer.lr == 3e-4 and r.advantage.params["value_lr"] == 1e-2
    assert r.objective.params["clip_low"] == 0.2
