"""LoRA adapters through PEFT: only the adapters train and are checkpointed, and the reference policy is the base
with the adapters switched off, so a KL term needs no second model in memory.

PEFT injects its LoRA layers into the loaded model in place; entropo keeps using that same model object everywhere
(rollout, scoring, update) and this handle for what is adapter-specific: the trainable state, the reference scope,
folding a warm-up into the base, and the final adapter / merged model. ``merged_weights`` streams the policy's merged
weights under the base model's names (what vLLM loads after every update, and what ``final/`` holds) without touching
the training model.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Iterator

import torch

ADAPTER = "default"


def _is_adapter_key(name: str) -> bool:
    return ".lora_" in name


PEFT_PREFIX = "base_model.model."  # what a PeftModel wrapper puts before the model's own names


def has_adapters(model: torch.nn.Module) -> bool:
    """True when PEFT has injected adapters into ``model`` (or ``model`` is a PeftModel)."""
    return hasattr(model, "peft_config")


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of the policy ``model`` computes, with its active LoRA adapters merged, under the base model's
    own parameter names: ``(name, tensor)`` for every entry of the base state dict, where each adapted weight is
    ``W + scale * B @ A`` (PEFT's ``get_delta_weight``: fan-in/fan-out layout and ``alpha / r`` included) and no
    name carries ``base_model.model.``, ``.base_layer`` or a ``lora_`` tensor.

    Nothing is mutated (the training model keeps its separate, trainable adapters) and one merged matrix exists at
    a time (a generator): this is what an inference engine that knows nothing of LoRA loads after every update
    (``rollout.engine=vllm``). Equals the state dict of PEFT's ``merge_and_unload`` (tests/test_lora.py). Adapters
    that are disabled or already merged into the base contribute nothing (the base already holds them)."""
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and isinstance(head, LoraLayer):
        raise ValueError("merged_weights: the output head has an adapter but shares its weight with the input "
                         "embeddings, so there is no one merged model; leave lm_head out of model.lora.target_modules")
    for key, tensor in model.state_dict().items():
        if _is_adapter_key(key):
            continue
        if "modules_to_save." in key or ".original_module." in key:
            raise ValueError(f"merged_weights: {key!r} belongs to a PEFT modules_to_save copy, which entropo's "
                             f"model.lora does not create; merge this model with PEFT's merge_and_unload instead")
        name = key
        if ".base_layer." in key:
            owner, leaf = key.rsplit(".base_layer.", 1)
            name = f"{owner}.{leaf}"
            layer = layers.get(owner)
            if layer is not None and leaf == "weight" and not layer.disable_adapters:
                live = [a for a in layer.active_adapters if a in layer.lora_A and a not in layer.merged_adapters]
                if live:
                    with torch.no_grad():
                        tensor = tensor + sum(layer.get_delta_weight(a) for a in live).to(tensor.dtype)
        yield name.removeprefix(PEFT_PREFIX), tensor.detach()


class LoRA:
    """The adapters of one policy model. ``cfg`` is the recipe's ``model.lora`` section."""

    def __init__(self, model: torch.nn.Module, cfg: Any):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:  # the optional extra
            raise ImportError("model.lora needs PEFT: pip install 'entropo[lora]' (or pip install peft)") from e
        targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        if not isinstance(targets, str):
            unknown = [t for t in targets if t not in names]
            if unknown:
                raise ValueError(f"model.lora.target_modules: {unknown} match no linear layer of this model; its "
                                 f"linear layers are: {', '.join(sorted(names))}")
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if head is not None and m is head}
        if getattr(model.config, "tie_word_embeddings", False) and not isinstance(targets, str) and \
                head_names & set(targets):
            raise ValueError(f"model.lora.target_modules: {sorted(head_names & set(targets))} is the output head, "
                             f"whose weight this model ties to the input embeddings: an adapter there cannot be "
                             f"merged into one model (merging would change the embeddings too); leave it out")
        peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              bias="none", task_type="CAUSAL_LM")
        self.peft = get_peft_model(model, peft_cfg)
        self.model = model  # the same object, now with LoRA layers; get_peft_model froze everything else
        assert self.peft.base_model.model is model

    # ---- what trains and what is saved -------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter weights (the only trainable parameters), under the model's own parameter names."""
        return {k: v for k, v in self.model.state_dict().items() if _is_adapter_key(k)}

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not _is_adapter_key(k)}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        got = set(state)
        if got != expected:
            raise ValueError(f"LoRA checkpoint does not match model.lora: {len(got - expected)} unexpected and "
                             f"{len(expected - got)} missing adapter tensors (was it saved with other r or "
                             f"target_modules?)")
        self.model.load_state_dict(state, strict=False)

    def load_base(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or any(not _is_adapter_key(k) for k in missing):
            raise ValueError("LoRA base weights do not match the model")

    # ---- reference and warm-up -------------------------------------------------------------------------------

    def disabled(self) -> AbstractContextManager:
        """Inside this scope the model computes the base policy (adapters off): the reference of KL terms."""
        return self.peft.disable_adapter()

    def fold_in(self) -> None:
        """Merge the current adapters into the base weights and start new ones (B = 0, so the policy is unchanged):
        after an SFT warm-up the base is then the RL starting policy, which the reference must be."""
        from peft.tuners.lora import LoraLayer

        with torch.no_grad():
            for module in self.model.modules():
                if isinstance(module, LoraLayer):
                    module.merge(adapter_names=[ADAPTER])
                    module.merged_adapters = []  # the delta now lives in the base weight for good
                    module.reset_lora_parameters(ADAPTER, init_lora_weights=True)

    # ---- the end of a run ------------------------------------------------------------------------------------

    def save_final(self, final_dir: Path, tokenizer: Any, merged: bool) -> None:
        """``final/adapter`` (PEFT format: adapter_config.json + adapter_model.safetensors); with ``merged`` also the
        merged model in ``final/`` (a plain Hugging Face folder)."""
        final_dir = Path(final_dir)
        self.peft.save_pretrained(final_dir / "adapter")
        if merged:  # new tensors only for the adapted matrices (the rest is the model's own; no deepcopy)
            self.model.save_pretrained(final_dir, state_dict=dict(merged_weights(self.model)))
            tokenizer.save_pretrained(final_dir)
