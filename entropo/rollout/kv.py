"""KV-cache machinery of the HF rollout engine's fast decode path: preallocated caches and prefix reuse.

``PreallocatedLayer`` is a ``transformers`` cache layer whose keys and values live in one buffer of the final size
``[rows, kv_heads, capacity, head_dim]`` allocated at the first write: a decode step copies the new token's K/V into
its column and hands attention a view of the filled columns, instead of ``DynamicLayer``'s ``torch.cat`` that
re-allocates and copies the whole cache at every token (O(length) bytes per token and layer).

``PrefixKV`` keeps, for the rows a decode just produced, the K/V of every token whose K/V was computed (the context
and all sampled tokens but the last), keyed by those token ids. A later context that starts with (part of) such a
key -- the next turn of the same episode (context + action + observation), or a branch of a tree that forks off a
sampled row -- copies the K/V of the shared prefix into its cache and prefills only the rest, instead of re-running
the model over its whole history. The reused values are those the same weights computed for the same tokens at the
same positions (a causal model's K/V of a prefix do not depend on what follows it); they differ from a fresh prefill
only by floating-point summation order (different matmul shapes), ~1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _dynamic_layer_cls():
    from transformers.cache_utils import DynamicLayer
    return DynamicLayer


def plain_dynamic_cache(model):
    """``DynamicCache`` of ``model`` when every layer is a plain full-attention ``DynamicLayer``, else None (sliding
    windows, quantized or linear-attention layers: the fast path leaves those models to the reference path)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not _dynamic_layer_cls() for layer in layers):
        return None
    return cache


class PreallocatedLayer:
    """Factory for the preallocated cache layer class (defined lazily: transformers is imported on first use)."""

    _cls = None

    @classmethod
    def cls(cls):
        if cls._cls is None:
            base = _dynamic_layer_cls()

            class _Layer(base):
                """A ``DynamicLayer`` backed by a buffer of ``capacity`` columns allocated once (see the module
                docstring). ``keys``/``values`` are views of the filled columns."""

                def __init__(self, capacity: int):
                    super().__init__()
                    self.capacity = int(capacity)
                    self.length = 0
                    self.buf_k: Tensor | None = None
                    self.buf_v: Tensor | None = None

                def allocate(self, rows: int, heads: int, head_dim: int, dtype, device) -> None:
                    self.buf_k = torch.empty((rows, heads, self.capacity, head_dim), dtype=dtype, device=device)
                    self.buf_v = torch.empty_like(self.buf_k)
                    self.dtype, self.device = dtype, device
                    self.keys, self.values = self.buf_k[:, :, :0], self.buf_v[:, :, :0]
                    self.is_initialized = True

                def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
                    b, h, _, d = key_states.shape
                    self.allocate(b, h, d, key_states.dtype, key_states.device)

                def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
                    if not self.is_initialized:
                        self.lazy_initialization(key_states, value_states)
                    end = self.length + key_states.shape[-2]
                    if end > self.capacity:
                        raise RuntimeError(f"preallocated KV cache of {self.capacity} columns overflowed ({end})")
                    self.buf_k[:, :, self.length:end].copy_(key_states)
                    self.buf_v[:, :, self.length:end].copy_(value_states)
                    self.length = end
                    self.keys, self.values = self.buf_k[:, :, :end], self.buf_v[:, :, :end]
                    return self.keys, self.values

                def set_length(self, length: int) -> None:
                    self.length = int(length)
                    self.keys, self.values = self.buf_k[:, :, :length], self.buf_v[:, :, :length]

                def get_seq_length(self) -> int:
                    return self.length

                def get_max_length(self) -> int:
                    return self.capacity

            cls._cls = _Layer
        return cls._cls


def preallocated_cache(model, capacity: int):
    """A ``DynamicCache`` of ``model`` whose layers are ``PreallocatedLayer`` of ``capacity`` columns, or None when
    the model's cache is not plain full attention (see ``plain_dynamic_cache``)."""
    cache = plain_dynamic_cache(model)
    if cache is None:
        return None
    layer_cls = PreallocatedLayer.cls()
    cache.layers = [layer_cls(capacity) for _ in cache.layers]
    return cache


def expand_rows(cache, source: Tensor, capacity: int):
    """A new preallocated cache of ``len(source)`` rows and ``capacity`` columns whose row r holds row
    ``source[r]`` of ``cache`` (the prefill of each distinct context copied to the rows sampling from it)."""
    layer_cls = PreallocatedLayer.cls()
    out = type(cache).__new__(type(cache))
    out.__dict__.update(cache.__dict__)
    out.layers = []
    for layer in cache.layers:
        new = layer_cls(capacity)
        rows, heads, _, head_dim = layer.buf_k.shape
        new.allocate(len(source), heads, head_dim, layer.buf_k.dtype, layer.buf_k.device)
        new.buf_k[:, :, :layer.length].copy_(layer.buf_k[source, :, :layer.length])
        new.buf_v[:, :, :layer.length].copy_(layer.buf_v[source, :, :layer.length])
        new.set_length(layer.length)
        out.layers.append(new)
    return out


@dataclass
class _Entry:
    key: np.ndarray  # token ids whose K/V are held, in order
    kv: list[tuple[Tensor, Tensor]]  # per layer: K and V [kv_heads, len(key), head_dim]
    generation: int
    nbytes: int


class PrefixKV:
    """K/V of recently decoded rows for reuse by contexts that share a prefix with them (see the module docstring).

    ``max_bytes`` bounds what is held (rows that do not fit are not kept: their next turn is prefilled in full, with
    the same result). Entries are tied to the weights they were computed with: ``check_weights`` drops everything
    when the model's parameters changed in place since (an optimizer step), so a store can never serve stale K/V.
    ``new_generation``/``drop_older``: the episode loop keeps only the last turn's rows (a turn's contexts extend the
    previous turn's rows; older rows are never looked up again).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.entries: list[_Entry] = []
        self.bytes = 0
        self.generation = 0
        self.accepting = True  # False: lookups only (e.g. tree branches, whose rows nothing extends)
        self._weights_version: tuple | None = None

    def check_weights(self, model) -> None:
        version = tuple(p._version for p in list(model.parameters())[:4])
        if self._weights_version is not None and version != self._weights_version:
            self.clear()
        self._weights_version = version

    def clear(self) -> None:
        self.entries, self.bytes = [], 0

    def new_generation(self) -> int:
        self.generation += 1
        return self.generation

    def drop_older(self, generation: int) -> None:
        self.entries = [e for e in self.entries if e.generation >= generation]
        self.bytes = sum(e.nbytes for e in self.entries)

    def lookup(self, context: list[int]) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with ``context`` and how many of its tokens to reuse (at most
        ``len(context) - 1``: the last context token is always run, its logits start the decode)."""
        if not self.entries or len(context) < 2:
            return None, 0
        x = np.asarray(context, dtype=np.int64)
        best, best_n = None, 0
        for entry in self.entries:
            m = min(len(entry.key), len(x) - 1)
            if m <= best_n or entry.key[0] != x[0]:
                continue
            same = entry.key[:m] == x[:m]
            n = m if same.all() else int(np.argmin(same))
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def fits(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.max_bytes

    def put(self, key: list[int], kv: list[tuple[Tensor, Tensor]]) -> bool:
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if not self.fits(nbytes):
            return False
        self.entries.append(_Entry(np.asarray(key, dtype=np.int64), kv, self.generation, nbytes))
        self.bytes += nbytes
        return True
