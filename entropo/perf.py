"""Performance accounting: parameter counts, transformer FLOP estimates, and the machine's attainable GEMM rate.

These turn a phase's wall time into an achieved FLOP/s and a fraction of what this machine's matmuls can do, so a
speed-up (or a slowdown) can be read against a ceiling rather than only against another framework:

- ``count_params(model, include_embeddings=False)`` counts the parameters that take part in matmuls: embedding
  *lookups* (every ``nn.Embedding``) do no FLOPs and are left out, but the LM head's matmul does count — also when its
  weight is tied to the input embedding (the shared matrix is then counted once, as the head).
- ``transformer_flops(n_params, tokens, backward=...)`` is the standard dense estimate (Kaplan et al. 2020,
  arXiv 2001.08361): 2·N FLOPs per token for a forward pass, 6·N for forward + backward. It leaves out the attention
  score/value products (2·n_layers·context·d per token and pass), which are small for short sequences, and any
  recomputation (gradient checkpointing does an extra forward that this does not count: it is not useful work).
- ``measure_gemm_flops(...)`` times fp32 ``torch.matmul`` of one shape and returns the median FLOP/s over repeats.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _output_embedding_weight(model: nn.Module) -> nn.Parameter | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return getattr(head, "weight", None) if head is not None else None


def count_params(model: nn.Module, *, include_embeddings: bool) -> int:
    """Number of distinct parameters of ``model`` (tied weights counted once).

    ``include_embeddings=False`` leaves out the weights of every ``nn.Embedding`` (a lookup costs no FLOPs) except a
    weight that is also the output embedding (a tied LM head: its matmul costs 2·V·d FLOPs per token). Use that count
    as N in ``transformer_flops``.
    """
    params = {id(p): p for p in model.parameters()}  # parameters() already de-duplicates tied weights
    total = sum(p.numel() for p in params.values())
    if include_embeddings:
        return total
    head = _output_embedding_weight(model)
    lookups = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Embedding)}
    if head is not None:
        lookups.pop(id(head), None)
    return total - sum(p.numel() for k, p in lookups.items() if k in params)


def transformer_flops(n_params: int, tokens: float, *, backward: bool) -> float:
    """Dense-transformer FLOPs for ``tokens`` token positions: 6·N·tokens with ``backward`` (forward + backward),
    else 2·N·tokens. N should exclude embedding lookups and include the LM head (``count_params(...,
    include_embeddings=False)``)."""
    if n_params < 0 or tokens < 0:
        raise ValueError(f"n_params and tokens must be >= 0, got {n_params}, {tokens}")
    return (6.0 if backward else 2.0) * float(n_params) * float(tokens)


def gemm_shape(size: int | tuple[int, int, int]) -> tuple[int, int, int]:
    """``size`` as (m, k, n) of an [m, k] x [k, n] product; an int means a square m = k = n."""
    if isinstance(size, int):
        return size, size, size
    m, k, n = (int(v) for v in size)
    return m, k, n


def measure_gemm_flops(size: int | tuple[int, int, int] = (2048, 576, 1536), *, dtype: torch.dtype = torch.float32,
                       threads: int | None = None, repeats: int = 5, min_time_s: float = 0.05) -> float:
    """Attainable matmul rate of this machine in FLOP/s: median over ``repeats`` timings of ``[m,k] @ [k,n]``.

    The default shape is that of SmolLM2-135M's MLP up-projection on 2048 tokens ([B·L, d] x [d, 4d]-like). Each
    timing runs the product enough times to last at least ``min_time_s`` (short timings are dominated by the clock
    and by dispatch), after one untimed warm-up. ``threads`` sets torch's intra-op threads for the measurement only.
    """
    m, k, n = gemm_shape(size)
    if min(m, k, n) < 1 or repeats < 1:
        raise ValueError(f"need positive sizes and repeats, got size={size}, repeats={repeats}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(m, k, generator=generator).to(dtype)
        b = torch.randn(k, n, generator=generator).to(dtype)
        out = torch.empty(m, n, dtype=dtype)
        torch.matmul(a, b, out=out)  # warm-up: first call pays allocation and kernel selection
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        once = max(time.perf_counter() - t0, 1e-9)
        inner = max(1, int(min_time_s / once))
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b, out=out)
            elapsed = time.perf_counter() - t0
            rates.append(2.0 * m * k * n * inner / elapsed)
        return float(statistics.median(rates))
    finally:
        torch.set_num_threads(previous_threads)


def achieved(flops: float, seconds: float, peak_flops_per_s: float | None = None) -> dict[str, float]:
    """``{"flops_per_s": flops / seconds, "frac_of_peak": that / peak}`` (fraction only when a peak is given)."""
    rate = flops / seconds if seconds > 0 else 0.0
    out = {"flops_per_s": rate}
    if peak_flops_per_s:
        out["frac_of_peak"] = rate / peak_flops_per_s
    return out
