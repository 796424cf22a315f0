"""Choosing the micro-batch size from a memory budget (``train.micro_batch_size: auto``).

The update keeps, per token of a micro-batch, the activations every decoder layer saves for its backward pass. For
a Llama-style layer (hidden size d, MLP width i) that is about 14·d + 5·i floats: the two norm inputs and outputs,
q/k/v and their rotated copies, the attention output and o_proj input, the residual stream, and the gate, up, act and
product tensors of the MLP. Checked against this machine: SmolLM2-135M (d 576, i 1536, 30 layers) forward+backward on
16 x 256 tokens peaked at 11.7 GB RSS, i.e. ~1.8 MB per token above the weights/optimizer/logits (the estimate gives
1.89 MB). With activation checkpointing only each layer's input (d floats) stays, plus one layer recomputed at a time.
The log-prob chunk's logits are a fixed cost (``logprob_chunk_size`` x vocab), not per token.
"""

from __future__ import annotations

import math

HIDDEN_FLOATS_PER_LAYER = 14  # x hidden size
MLP_FLOATS_PER_LAYER = 5  # x intermediate size


def activation_bytes_per_token(config, *, checkpointing: bool, bytes_per_float: int = 4) -> int:
    """Estimated bytes of saved activations per token for one forward+backward of a decoder-only model config."""
    d = int(config.hidden_size)
    i = int(getattr(config, "intermediate_size", 4 * d) or 4 * d)
    layers = int(config.num_hidden_layers)
    full_layer = HIDDEN_FLOATS_PER_LAYER * d + MLP_FLOATS_PER_LAYER * i
    if checkpointing:
        return bytes_per_float * (layers * d + full_layer)
    return bytes_per_float * layers * full_layer


def auto_micro_batch_size(config, *, budget_mb: float, row_tokens: int, checkpointing: bool) -> int:
    """The most rows of ``row_tokens`` tokens whose saved activations fit in ``budget_mb`` (at least 1)."""
    per_row = activation_bytes_per_token(config, checkpointing=checkpointing) * max(row_tokens, 1)
    return max(1, math.floor(budget_mb * 2**20 / per_row))


# ---- activation checkpointing chosen per micro-batch (``train.activation_checkpointing: auto``) ---------------------
#
# With the first k of L decoder layers checkpointed, a forward+backward keeps, per token, the full saved activations of
# the L - k others and only the input (d floats) of each checkpointed one. The backward reaches the checkpointed layers
# last, after the others' activations are freed, so the one layer recomputed at a time adds nothing to the peak while
# k < L. Each checkpointed layer costs one more forward of that layer (about 1/3 of its forward+backward).


def saved_activation_bytes(config, *, tokens: int, checkpointed: int, bytes_per_float: int = 4) -> int:
    """Estimated peak bytes of saved activations for a forward+backward over ``tokens`` tokens with the first
    ``checkpointed`` decoder layers recomputed in the backward (0 = none, ``num_hidden_layers`` = all)."""
    d = int(config.hidden_size)
    i = int(getattr(config, "intermediate_size", 4 * d) or 4 * d)
    layers = int(config.num_hidden_layers)
    k = min(max(int(checkpointed), 0), layers)
    full_layer = HIDDEN_FLOATS_PER_LAYER * d + MLP_FLOATS_PER_LAYER * i
    per_token = (layers - k) * full_layer + k * d + (full_layer if k == layers else 0)
    return bytes_per_float * per_token * max(int(tokens), 0)


def layers_to_checkpoint(config, *, tokens: int, budget_mb: float) -> int:
    """The fewest decoder layers to checkpoint so that a forward+backward over ``tokens`` tokens keeps its saved
    activations within ``budget_mb`` (0 when everything fits; every layer when even that does not fit)."""
    layers = int(config.num_hidden_layers)
    budget = budget_mb * 2**20
    for k in range(layers + 1):  # at most a few dozen layers: a linear scan is clearer than the closed form
        if saved_activation_bytes(config, tokens=tokens, checkpointed=k) <= budget:
            return k
    return layers


def checkpointable_layers(model) -> list:
    """The model's decoder layers that can recompute their activations (transformers' GradientCheckpointingLayer),
    in forward order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


class CheckpointPlan:
    """``train.activation_checkpointing: auto``: before each micro-batch's forward, checkpoint the fewest leading
    decoder layers whose saved activations keep that micro-batch (rows x spanned columns) within the budget.

    The model must have had activation checkpointing enabled once (which installs the recompute function on every
    layer); this only switches layers on and off. Recomputation is exact (the same ops on the same inputs, RNG state
    restored), so gradients do not depend on the choice (tests/test_memory_paths.py)."""

    def __init__(self, model, budget_mb: float):
        self.layers = checkpointable_layers(model)
        self.config = model.config
        self.budget_mb = float(budget_mb)
        self.last = 0  # layers checkpointed for the latest micro-batch (a metric)

    def apply(self, attention_mask) -> int:
        """Set the layers for a micro-batch with this ``attention_mask`` [rows, columns]; returns how many."""
        used = attention_mask.bool().any(0).nonzero()
        width = int(used.max() - used.min() + 1) if used.numel() else 0
        k = layers_to_checkpoint(self.config, tokens=attention_mask.shape[0] * width, budget_mb=self.budget_mb)
        k = min(k, len(self.layers))
        for index, layer in enumerate(self.layers):
            layer.gradient_checkpointing = index < k
        self.last = k
        return k
