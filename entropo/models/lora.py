"""LoRA adapters through PEFT: only the adapters train and are checkpointed, and the reference policy is the base
with the adapters switched off, so a KL term needs no second model in memory.

PEFT injects its LoRA layers into the loaded model in place; entropo keeps using that same model object everywhere
(rollout, scoring, update) and this handle for what is adapter-specific: the trainable state, the reference scope,
folding a warm-up into the base, and the final adapter / merged model.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

ADAPTER = "default"


def _is_adapter_key(name: str) -> bool:
    return ".lora_" in name


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
        if merged:
            plain = copy.deepcopy(self.peft).merge_and_unload()
            plain.save_pretrained(final_dir)
            tokenizer.save_pretrained(final_dir)
