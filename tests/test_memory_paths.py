"""Memory paths of the update: activation checkpointing chosen per micro-batch (``train.activation_checkpointing:
auto``) gives the same gradients as none or all, and picks the layers the estimate in entropo/memory.py says."""

import copy
import inspect
from types import SimpleNamespace

import torch

from entropo.config import load_recipe
from entropo.logging import read_metrics
from entropo.memory import (CheckpointPlan, activation_bytes_per_token, checkpointable_layers, layers_to_checkpoint,
                            saved_activation_bytes)
from entropo.models import tiny
from entropo.models.logprobs import token_logprobs_and_entropy
from entropo.trainer import enable_activation_checkpointing, train
from conftest import padded_rows

SMOL = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)  # SmolLM2-135M's shape


def test_saved_activations_and_layers_to_checkpoint_by_hand():
    # full layer: 14*576 + 5*1536 = 15744 floats per token; a checkpointed layer keeps its input, 576 floats
    assert saved_activation_bytes(SMOL, tokens=100, checkpointed=0) == 4 * 30 * 15744 * 100  # 188,928,000
    # 10 of 30 checkpointed: 4 * 100 * (20*15744 + 10*576) = 400 * 320,640 = 128,256,000
    assert saved_activation_bytes(SMOL, tokens=100, checkpointed=10) == 128_256_000
    # all checkpointed: the layer inputs plus one layer recomputed at a time, as activation_bytes_per_token says
    assert saved_activation_bytes(SMOL, tokens=1, checkpointed=30) == activation_bytes_per_token(SMOL, checkpointing=True)
    assert saved_activation_bytes(SMOL, tokens=1, checkpointed=0) == activation_bytes_per_token(SMOL, checkpointing=False)
    # budget 100 MB = 104,857,600 B for 100 tokens: need (30-k)*15744 + 576k <= 262,144 -> k >= 13.86 -> 14
    # (k=14: 400 * 259,968 = 103,987,200 fits; k=13: 400 * 275,136 = 110,054,400 does not)
    assert layers_to_checkpoint(SMOL, tokens=100, budget_mb=100) == 14
    assert layers_to_checkpoint(SMOL, tokens=100, budget_mb=181) == 0  # 180.2 MB fits without any
    assert layers_to_checkpoint(SMOL, tokens=100, budget_mb=1) == 30  # nothing fits: all of them
    assert layers_to_checkpoint(SMOL, tokens=0, budget_mb=1) == 0


def test_partial_checkpointing_gives_the_same_gradients_and_picks_the_estimated_layers():
    ids, attention, response = padded_rows()
    tokens = 3 * 9  # 3 rows x columns 2..10 spanned by some row
    base, _ = tiny(num_layers=4)  # built once (tiny() saves and reloads a model): every variant is a copy
    config = base.config
    two_fit = saved_activation_bytes(config, tokens=tokens, checkpointed=2) / 2**20  # exactly the first 2 layers
    grads, chosen = [], []
    for budget_mb in (None, 1e6, two_fit, 1e-9):
        model = copy.deepcopy(base)
        if budget_mb is not None:
            enable_activation_checkpointing(model)
            plan = CheckpointPlan(model, budget_mb)
            k = plan.apply(attention)
            assert k == layers_to_checkpoint(model.config, tokens=tokens, budget_mb=budget_mb)
            assert [layer.gradient_checkpointing for layer in checkpointable_layers(model)] == [i < k for i in range(4)]
            chosen.append(k)
        model.train()
        lp, ent = token_logprobs_and_entropy(model, ids, attention, compute_mask=response)
        ((lp - 0.1 * ent) * response).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert chosen == [0, 2, 4]  # none, the first two, all
    for variant in grads[1:]:
        for a, b in zip(grads[0], variant):
            assert torch.allclose(a, b, atol=1e-6)


def test_auto_checkpointing_trains_as_without_it(tmp_path, tiny_recipe_overrides):
    base = tiny_recipe_overrides + ["train.steps=2", "logging.tensorboard=false", "checkpoint.every=0",
                                    "train.threads=1", "warmup.steps=0", "eval.max_prompts=1", "logging.plots=false"]
    runs = {}
    for name, extra in {"off": ["train.activation_checkpointing=false"],
                        "auto_all": ["train.activation_checkpointing=auto", "train.activation_memory_mb=0.000001"],
                        "auto_none": ["train.activation_checkpointing=auto", "train.activation_memory_mb=100000"]}.items():
        train(load_recipe(None, base + extra), run_dir=tmp_path / name, console=lambda *_: None)
        runs[name] = [r for r in read_metrics(tmp_path / name) if "actor/loss" in r]
    torch.set_num_threads(2)
    layers = inspect.signature(tiny).parameters["num_layers"].default  # the recipe's tiny model's depth
    assert all(r["actor/checkpointed_layers"] == layers for r in runs["auto_all"])
    assert all(r["actor/checkpointed_layers"] == 0 for r in runs["auto_none"])
    assert all("actor/checkpointed_layers" not in r for r in runs["off"])
    for name in ("auto_all", "auto_none"):  # same samples, same losses and gradient norms, step after step
        for a, b in zip(runs["off"], runs[name]):
            assert abs(a["actor/loss"] - b["actor/loss"]) < 1e-5 and abs(a["actor/grad_norm"] - b["actor/grad_norm"]) < 1e-4


def test_auto_checkpointing_validates_as_the_switch_does():
    assert load_recipe(None, ["train.activation_checkpointing=auto"]).train.activation_checkpointing == "auto"
    assert load_recipe(None, ["train.activation_checkpointing=true"]).train.activation_checkpointing is True
    import pytest

    from entropo.config import ConfigError
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        load_recipe(None, ["train.activation_checkpointing=sometimes"])


def test_mapped_reference_gives_the_resident_reference_values(tmp_path, tiny_recipe_overrides):
    base = tiny_recipe_overrides + ["train.steps=2", "logging.tensorboard=false", "checkpoint.every=0",
                                    "train.threads=1", "warmup.steps=0", "eval.max_prompts=1", "logging.plots=false",
                                    "optimizer.lr=0.05",  # with the entropy bonus the policy leaves the reference at once
                                    "regularizers=[{name: kl, coef: 0.1, params: {kind: k3}}, {name: entropy, coef: 1.0}]"]
    runs = {}
    for resident in (True, False):
        name = f"resident_{resident}"
        train(load_recipe(None, base + [f"model.reference_resident={str(resident).lower()}"]),
              run_dir=tmp_path / name, console=lambda *_: None)
        runs[resident] = [r for r in read_metrics(tmp_path / name) if "actor/loss" in r]
    torch.set_num_threads(2)
    assert runs[True][-1]["kl/ref"] > 1e-4  # the second step's reference differs from the policy
    for a, b in zip(runs[True], runs[False]):  # the same reference log-probs, so the same run
        assert a["kl/ref"] == b["kl/ref"] and a["actor/loss"] == b["actor/loss"]


def test_mapped_reference_holds_no_weights_outside_its_scope(tmp_path):
    from entropo.trainer import MappedReference

    model, _ = tiny()
    torch.save(model.state_dict(), tmp_path / "reference.pt")
    ref = MappedReference(copy.deepcopy(model).requires_grad_(False), tmp_path / "reference.pt", "cpu")
    assert all(p.is_meta for p in ref.model.parameters())
    ids = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with ref.scope(), torch.no_grad():
        mapped = token_logprobs_and_entropy(ref.model, ids, mask)
        assert all(not p.requires_grad for p in ref.model.parameters())
    with torch.no_grad():
        resident = token_logprobs_and_entropy(model, ids, mask)
    assert torch.equal(mapped[0], resident[0]) and torch.equal(mapped[1], resident[1])
    assert all(p.is_meta for p in ref.model.parameters())
