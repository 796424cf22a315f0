"""Demonstration-regularized RL (arXiv 2310.17303) as a recipe: the SFT warm-up on gold completions is the behaviour-
cloned policy, and the KL regularizer's reference is exactly that post-warm-up policy."""

import torch

import entropo.sft
from entropo.cli import RECIPES_DIR
from entropo.config import load_recipe
from entropo.logging import read_metrics
from entropo.trainer import train

FAST = ["warmup.steps=5", "train.steps=3", "rollout.prompts_per_step=2", "rollout.n=4", "task.eval_size=4",
        "logging.progress=false", "logging.tensorboard=false", "logging.plots=false", "checkpoint.every=0"]


def test_reference_is_the_post_warmup_policy(tmp_path, monkeypatch):
    recipe = load_recipe(RECIPES_DIR / "demo_regularized.yaml", FAST)
    assert recipe.warmup.steps > 0 and recipe.model.reference is None  # BC stage on, reference = copy at RL start
    assert [(r.name, r.params.get("kind")) for r in recipe.regularizers] == [("kl", "k3")]
    assert recipe.regularizers[0].coef > 0

    snapshots = {}
    real_warmup = entropo.sft.warmup

    def recording_warmup(model, *args, **kwargs):
        info = real_warmup(model, *args, **kwargs)
        snapshots["after_warmup"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return info

    monkeypatch.setattr(entropo.sft, "warmup", recording_warmup)
    train(recipe, run_dir=tmp_path / "run", console=lambda *_: None)

    reference = torch.load(tmp_path / "run" / "reference.pt", map_location="cpu", weights_only=True)
    after = snapshots["after_warmup"]
    assert reference.keys() == after.keys()
    assert all(torch.equal(reference[k], after[k]) for k in after)

    rows = [r for r in read_metrics(tmp_path / "run") if not r.get("final")]
    assert len(rows) == 3
    # step 0 scores the rollouts with the policy before any RL update, i.e. the BC policy itself: KL exactly 0
    assert abs(rows[0]["kl/ref"]) < 1e-6
    assert abs(rows[0]["reg/kl/kl_ref"]) < 1e-6
    # later steps measure KL(pi || pi_BC) of the updated policy (0 only while no group has reward variance)
    assert all(r["kl/ref"] >= 0 for r in rows)
