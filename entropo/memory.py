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
