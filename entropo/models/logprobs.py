"""Per-token log-probabilities and entropies of a causal LM, computed chunk by chunk over the vocabulary projection.

The naive way — ``log_softmax(model(ids).logits)`` — materializes a float32 ``[B, L, V]`` tensor (and its gradient)
for the whole batch: 16 x 256 tokens x 49,152 vocab is 0.8 GB per copy. Here the decoder body runs once to get
hidden states ``[B, L, H]``; only the positions that are actually scored are gathered; and the output projection,
log-sum-exp and entropy run on ``chunk_size`` positions at a time — a fused autograd function with a closed-form
backward for plain linear heads, activation checkpointing otherwise — so at most one chunk of logits is alive in
forward or backward.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def decoder_hidden_states(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
    """Final hidden states ``[B, L, H]`` (after the last norm), without running the LM head."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and decoder is not model and _parameters_sharded(model):
        # FSDP2 gathers the root's weights (embeddings, final norm, LM head) in the root's forward, which calling the
        # body alone would skip: run the root, keep one position's logits, and take the body's output from a hook.
        captured: list[Tensor] = []
        handle = decoder.register_forward_hook(lambda _m, _a, out: captured.append(
            out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]))
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                  logits_to_keep=1)
        finally:
            handle.remove()
        return captured[0]
    if decoder is not None and decoder is not model:
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    # Models without a separable body: this path does materialize the full logits once (unavoidable here).
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def _parameters_sharded(model) -> bool:
    """True for a model whose parameters FSDP2 shards (train.distributed: fsdp)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _logit_transform(model):
    """Post-projection logit adjustments some architectures apply inside ``forward`` (Gemma-2 soft-capping,
    Granite/Cohere scaling); returns a function on a logits chunk, or None."""
    cfg = model.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    divide_by = getattr(cfg, "logits_scaling", None)  # Granite: logits / logits_scaling
    multiply_by = getattr(cfg, "logit_scale", None)  # Cohere: logits * logit_scale
    if not softcap and not divide_by and not multiply_by:
        return None

    def transform(logits: Tensor) -> Tensor:
        if multiply_by:
            logits = logits * multiply_by
        if divide_by:
            logits = logits / divide_by
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


def _chunk_stats(hidden_chunk: Tensor, target_ids: Tensor, lm_head, transform, temperature: float,
                 with_entropy: bool, fns: tuple = ()) -> tuple[Tensor, ...]:
    """For ``hidden_chunk [N, H]`` and ``target_ids [N]``: log-prob of each target and entropy, both ``[N]`` fp32,
    then each per-token functional ``fn(logits [N, V], target_ids) -> [N]`` of the temperature-scaled logits."""
    logits = lm_head(hidden_chunk)
    if transform is not None:
        logits = transform(logits)
    # Softmax statistics in fp32 even for bf16/fp16 models: a bf16 log-sum-exp over 50k entries loses ~2 digits.
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_normalizer = torch.logsumexp(logits, dim=-1)  # [N]
    target_logprob = logits.gather(-1, target_ids[:, None]).squeeze(-1) - log_normalizer
    if with_entropy:
        # H = -sum p log p = logsumexp(z) - sum p z
        entropy = log_normalizer - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    else:
        entropy = torch.zeros_like(target_logprob)
    return (target_logprob, entropy) + tuple(fn(logits, target_ids) for fn in fns)


class _LinearLogprobEntropy(torch.autograd.Function):
    """Fused ``linear -> log-softmax -> (target log-prob, entropy)`` for one chunk of positions.

    Forward keeps only the inputs and two ``[N]`` statistics (log-normalizer, entropy); backward recomputes the
    ``[N, V]`` logits once and applies the closed-form gradient, which needs fewer full-vocabulary passes than
    autograd through a checkpointed softmax:
        d logp_y / dz = onehot(y) - p,      d H / dz = -p * (log p + H)     (z = logits / temperature)
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target_ids, temperature: float, with_entropy: bool):
        logits = torch.nn.functional.linear(hidden, weight, bias).float()  # [N, V], our own buffer from here on
        if temperature != 1.0:
            logits.div_(temperature)
        log_normalizer = torch.logsumexp(logits, dim=-1)  # [N]
        target_logprob = logits.gather(-1, target_ids[:, None]).squeeze(-1) - log_normalizer
        if with_entropy:
            log_probs = logits.sub_(log_normalizer[:, None])  # in place: logits become log p
            probs = log_probs.exp()
            # -sum_v p log p as a batched dot product, so no third [N, V] temporary is allocated.
            entropy = -torch.bmm(probs[:, None, :], log_probs[:, :, None]).view(-1)
        else:
            entropy = torch.zeros_like(target_logprob)
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), target_ids,
                              log_normalizer, entropy)
        ctx.has_bias = bias is not None
        ctx.temperature = temperature
        ctx.with_entropy = with_entropy
        return target_logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        hidden, weight, bias, target_ids, log_normalizer, entropy = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        log_probs = torch.nn.functional.linear(hidden, weight, bias).float()
        if ctx.temperature != 1.0:
            log_probs.div_(ctx.temperature)
        log_probs.sub_(log_normalizer[:, None])
        probs = log_probs.exp()
        # dL/dz = g_lp * (onehot - p) - g_H * p * (log p + H) = -p * (g_lp + g_H * (log p + H)) + g_lp * onehot
        coefficient = log_probs  # reuse the buffer
        if ctx.with_entropy:
            coefficient.add_(entropy[:, None]).mul_(grad_entropy[:, None]).add_(grad_logprob[:, None])
        else:
            coefficient.copy_(grad_logprob[:, None].expand_as(coefficient))
        grad_logits = probs.mul_(coefficient).neg_()
        del coefficient, log_probs
        grad_logits.scatter_add_(-1, target_ids[:, None], grad_logprob[:, None].float())
        if ctx.temperature != 1.0:
            grad_logits.div_(ctx.temperature)
        grad_logits = grad_logits.to(weight.dtype)
        grad_hidden = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.t() @ hidden if ctx.needs_input_grad[1] else None
        grad_bias = grad_logits.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def token_logprobs_and_entropy(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    compute_mask: Tensor | None = None,
    with_entropy: bool = True,
    token_fns: dict[str, Callable[[Tensor, Tensor], Tensor]] | None = None,
):
    """Log-prob of every token given its prefix, and the entropy of the predicting distribution.

    Returns ``(logprobs [B, L], entropy [B, L])`` in float32, aligned on tokens:
    ``logprobs[b, t] = log softmax(logits(input_ids[b, :t]) / temperature)[input_ids[b, t]]`` and ``entropy[b, t]``
    is the entropy of that same distribution. Both are differentiable w.r.t. the model parameters.

    Rows may be left-padded (prompt) and right-padded (after the response); positions come from the attention
    mask. A token is scored when it and the token before it are real (``attention_mask`` 1) and, if
    ``compute_mask [B, L]`` is given, ``compute_mask`` is nonzero on it (pass the response mask to score only the
    response). Everything else — padding, each row's first real token, masked tokens — is 0.

    ``chunk_size`` is the number of scored positions whose ``[chunk, V]`` logits exist at once.

    ``token_fns`` is the per-token functional hook for methods that need more of the distribution than the sampled
    token's log-prob (e.g. a top-p entropy, a KL to a filtered proxy distribution): each ``fn(logits [N, V] fp32,
    already divided by the temperature, target_ids [N]) -> [N]`` runs on every chunk, differentiably, and the
    results come back scattered to ``[B, L]`` as a third return value ``{name: Tensor}``. No ``[B, L, V]`` tensor is
    ever built for them either.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [B, L]; got {tuple(input_ids.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    batch_size, length = input_ids.shape
    real = attention_mask.bool()
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    # Which tokens get a score: real, with a real predecessor, and selected by compute_mask.
    scored = torch.zeros_like(real)
    scored[:, 1:] = real[:, 1:] & real[:, :-1]
    if compute_mask is not None:
        scored &= compute_mask.to(real.device) != 0
    row_index, token_index = scored.nonzero(as_tuple=True)  # each [N]

    logprobs = torch.zeros(batch_size, length, dtype=torch.float32, device=input_ids.device)
    entropy = torch.zeros(batch_size, length, dtype=torch.float32, device=input_ids.device)
    fn_names = tuple(token_fns or {})
    fn_list = tuple((token_fns or {})[k] for k in fn_names)
    if row_index.numel() == 0:
        if token_fns is not None:
            return logprobs, entropy, {k: torch.zeros_like(logprobs) for k in fn_names}
        return logprobs, entropy

    # Run the body only over the columns that matter: from the first real token of any row (left padding shared by
    # every row is skipped) up to the last position that predicts a scored token (causal: later columns can't
    # change it). Positions come from the full mask, so the result is the same as on the untrimmed rows.
    first = int(real.any(0).to(torch.int8).argmax())
    end = int(token_index.max())  # hidden states at columns [first, end) predict every scored token
    hidden = decoder_hidden_states(model, input_ids[:, first:end], attention_mask[:, first:end],
                                   position_ids[:, first:end])  # [B, end - first, H]
    # Token t is predicted from the hidden state at t-1.
    scoring_hidden = hidden[row_index, token_index - 1 - first]  # [N, H]
    target_ids = input_ids[row_index, token_index]  # [N]
    lm_head = model.get_output_embeddings()
    transform = _logit_transform(model)

    if transform is None and type(lm_head) is torch.nn.Linear and not fn_list:
        # The common case: a plain linear head gets the fused chunk kernel (closed-form backward).
        logprob_chunks, entropy_chunks = [], []
        for start in range(0, scoring_hidden.shape[0], chunk_size):
            chunk_logprob, chunk_entropy = _LinearLogprobEntropy.apply(
                scoring_hidden[start:start + chunk_size], lm_head.weight, lm_head.bias,
                target_ids[start:start + chunk_size], float(temperature), with_entropy)
            logprob_chunks.append(chunk_logprob)
            entropy_chunks.append(chunk_entropy)
        logprobs = logprobs.index_put((row_index, token_index), torch.cat(logprob_chunks))
        entropy = entropy.index_put((row_index, token_index), torch.cat(entropy_chunks))
        return (logprobs, entropy) if token_fns is None else (logprobs, entropy, {})

    # Any other head (or a logit transform): autograd through the chunk under checkpointing. Recompute each chunk's logits in backward instead of keeping [chunk, V] tensors alive for every chunk.
    use_checkpoint = torch.is_grad_enabled() and (
        scoring_hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters())
    )
    chunks: list[tuple[Tensor, ...]] = []
    for start in range(0, scoring_hidden.shape[0], chunk_size):
        args = (scoring_hidden[start:start + chunk_size], target_ids[start:start + chunk_size], lm_head, transform,
                float(temperature), with_entropy, fn_list)
        if use_checkpoint:
            chunks.append(checkpoint(_chunk_stats, *args, use_reentrant=False))
        else:
            chunks.append(_chunk_stats(*args))
    columns = [torch.cat(col) for col in zip(*chunks)]
    logprobs = logprobs.index_put((row_index, token_index), columns[0])
    entropy = entropy.index_put((row_index, token_index), columns[1])
    if token_fns is None:
        return logprobs, entropy
    extras = {name: torch.zeros_like(logprobs).index_put((row_index, token_index), col.float())
              for name, col in zip(fn_names, columns[2:])}
    return logprobs, entropy, extras

