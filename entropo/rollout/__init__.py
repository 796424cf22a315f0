"""Rollout engines: turn prompts into sampled completions laid out for a Batch. Importing this package registers the
built-in engines (``("engine", "hf")``: in-process Hugging Face sampling with a KV cache)."""

from entropo.rollout.hf import HFEngine
from entropo.rollout.tree import HFTreeEngine  # noqa: F401  (registers ("engine", "hf_tree"))
from entropo.rollout.window import HFWindowEngine  # noqa: F401  (registers ("engine", "hf_window"))
from entropo.rollout.vllm_engine import VLLMEngine  # noqa: F401  (registers ("engine", "vllm"); vllm imported on use)
from entropo.rollout.dataset_reset import DatasetResetEngine  # noqa: F401  (registers ("engine", "dataset_reset"): DR-PO)

__all__ = ["HFEngine"]
