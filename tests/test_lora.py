"""LoRA through PEFT: only the adapters train and are checkpointed; the reference is the base with the adapters off
(the same model object, no copy); an SFT warm-up is folded into the base; resume is exact; final/ holds the adapter
and the merged model, which computes the trained policy."""

import copy

import pytest
import torch

from entropo import checkpoint, models
from entropo.config import ConfigError, load_recipe
from entropo.logging import TIMING_KEYS, read_metrics
from entropo.models.lora import LoRA
from entropo.trainer import setup, train

KL = "regularizers=[{name: kl, coef: 0.05, params: {kind: k3}}]"
LORA = "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}"


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _lora_cfg(**kw):
    return load_recipe(None, [LORA] + [f"model.lora.{k}={v}" for k, v in kw.items()]).model.lora


def test_adapters_off_is_the_base_and_fold_in_keeps_the_policy():
    torch.manual_seed(0)
    model, _ = models.load("tiny")
    base = copy.deepcopy(model)
    lora = LoRA(model, _lora_cfg())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    assert torch.allclose(logits(model, ids), logits(base, ids), atol=1e-6)  # B = 0 at init: the base policy
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    trained = logits(model, ids)
    assert not torch.allclose(trained, logits(base, ids), atol=1e-3)
    with lora.disabled():
        assert torch.allclose(logits(model, ids), logits(base, ids), atol=1e-6)
    lora.fold_in()
    assert torch.allclose(logits(model, ids), trained, atol=1e-5)  # same policy ...
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if "lora_B" in n)  # ... new adapters
    with lora.disabled():  # and the base is now that policy
        assert torch.allclose(logits(model, ids), trained, atol=1e-5)
    assert set(lora.trainable_state_dict()) == set(trainable)


def test_unknown_target_module_is_one_config_error(tmp_path, tiny_recipe_overrides):
    recipe = load_recipe(None, tiny_recipe_overrides + ["model.lora={target_modules: [qq_proj]}"])
    with pytest.raises(ConfigError, match="model.lora.target_modules.*q_proj"):
        setup(recipe, tmp_path / "r", resume=False, console=lambda *_: None)


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def test_lora_run_trains_adapters_only_resumes_exactly_and_saves_final(tmp_path, tiny_recipe_overrides):
    # a reward that varies within groups from the first step (the tiny model's answers are still wrong after a
    # short warm-up), so the adapters get gradient; the warm-up is folded into the base
    ov = tiny_recipe_overrides + ["train.steps=4", KL, LORA, "optimizer.lr=3e-2", "warmup.steps=4",
                                  "rewards=[{name: format, params: {pattern: '[0-4]'}}]", "logging.tensorboard=false"]
    recipe = load_recipe(None, ov)
    run = setup(recipe, tmp_path / "probe", resume=False, console=lambda *_: None)
    assert run.ref_model is run.model  # no second model in memory
    n_opt = sum(p.numel() for g in run.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(v.numel() for v in run.lora.trainable_state_dict().values())
    warm_base = {k: v.clone() for k, v in run.lora.base_state_dict().items()}

    straight = train(load_recipe(None, ov), run_dir=tmp_path / "straight", console=lambda *_: None)
    part = train(load_recipe(None, ov), run_dir=tmp_path / "resumed", stop_after=2, console=lambda *_: None)
    assert part["steps"] == 2
    resumed = train(load_recipe(None, ov), run_dir=tmp_path / "resumed", resume=True, console=lambda *_: None)
    assert _strip(read_metrics(tmp_path / "straight")) == _strip(read_metrics(tmp_path / "resumed"))
    assert straight["eval_end"] == resumed["eval_end"]
    rows = [r for r in read_metrics(tmp_path / "straight") if not r.get("final")]
    assert rows[-1]["kl/ref"] > 0 and rows[-1]["reward/mean"] > 0  # the policy moved away from its base, measured against the base

    saved = checkpoint.load(checkpoint.latest(tmp_path / "straight"))["model"]
    assert saved and all(".lora_" in k for k in saved)  # only adapters are checkpointed
    base_file = torch.load(tmp_path / "straight" / "lora_base.pt", weights_only=True)
    for k, v in warm_base.items():  # the warmed-up base (the reference) never moved during RL
        assert torch.equal(base_file[k], v), k

    final = tmp_path / "straight" / "final"
    assert (final / "adapter" / "adapter_config.json").exists()
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    merged, _ = models.load(str(final))
    assert not any(".lora_" in k for k in merged.state_dict())
    run = setup(load_recipe(None, ov), tmp_path / "straight", resume=True, console=lambda *_: None)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 4, 8]])
    assert torch.allclose(logits(merged, ids), logits(run.model, ids), atol=1e-5)


ALL = "model.lora={r: 4, alpha: 8, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}"


def test_merged_weights_equal_peft_merge_and_unload_without_touching_the_model():
    from entropo.models.lora import merged_weights

    torch.manual_seed(0)
    model, _ = models.load("tiny")
    plain_names = set(model.state_dict())
    lora = LoRA(model, load_recipe(None, [ALL]).model.lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = dict(merged_weights(model))
    expected = copy.deepcopy(lora.peft).merge_and_unload().state_dict()
    assert set(merged) == set(expected) == plain_names  # the base model's own names, nothing of PEFT's
    for k, v in expected.items():
        assert torch.equal(merged[k], v), k
    moved = [k for k in merged if not torch.equal(merged[k], before.get(k.replace(".weight", ".base_layer.weight"),
                                                                         merged[k]))]
    assert len(moved) == 7 * 2  # every adapted weight (7 per layer, 2 layers) differs from its base ...
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())  # ... untouched
    # W + (alpha / r) B @ A, by hand for one layer
    q = model.model.layers[0].self_attn.q_proj
    by_hand = q.base_layer.weight + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"], by_hand, atol=1e-6)
    with lora.disabled():  # adapters off: the merged weights are the base
        base = dict(merged_weights(model))
    assert torch.equal(base["model.layers.0.self_attn.q_proj.weight"], q.base_layer.weight)


def test_an_adapter_on_a_tied_output_head_is_refused():
    model, _ = models.load("tiny")
    assert model.config.tie_word_embeddings  # the tiny model ties lm_head to the input embeddings
    cfg = load_recipe(None, ["model.lora={target_modules: [q_proj, lm_head]}"]).model.lora
    with pytest.raises(ValueError, match="model.lora.target_modules.*lm_head.*tie"):
        LoRA(model, cfg)


def test_final_holds_the_adapter_and_on_request_the_merged_model(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    model, tok = models.load("tiny")
    lora = LoRA(model, load_recipe(None, [ALL]).model.lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 4, 8]])
    trained = logits(model, ids)
    lora.save_final(tmp_path / "adapter_only", tok, merged=False)
    assert (tmp_path / "adapter_only" / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter_only" / "config.json").exists()  # no merged model unless asked for
    lora.save_final(tmp_path / "both", tok, merged=True)
    merged, _ = models.load(str(tmp_path / "both"))  # a plain Hugging Face folder
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    assert torch.allclose(logits(merged, ids), trained, atol=1e-5)
    base, _ = models.load("tiny")  # the adapter applies to the base it was trained on
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "both" / "adapter"))
    assert torch.allclose(logits(reloaded, ids), trained, atol=1e-5)
