"""Models: load HF folders, hub ids, GGUF files and known aliases; build the tiny test model; fetch models without a
hub; compute per-token log-probs and entropies without materializing full-vocabulary logits for a whole batch."""

from entropo.models.loading import blank_like, load, load_reference, resolve
from entropo.models.logprobs import token_logprobs_and_entropy
from entropo.models.pull import KNOWN_MODELS, pull
from entropo.models.tiny import tiny

__all__ = ["blank_like", "load", "load_reference", "resolve", "tiny", "pull", "KNOWN_MODELS", "token_logprobs_and_entropy"]
