"""Peak memory of per-token log-prob + entropy (forward + backward): naive full-vocabulary vs entropo's chunked path.

Builds a random Llama with SmolLM2's vocabulary size (49,152) but a tiny body (hidden 64, 2 layers), so the
vocabulary projection dominates memory exactly as it does for small real models; nothing is downloaded.

How memory is measured on CPU: torch's CPU allocator has no peak counter, and ``tracemalloc`` does not see it, so we
read the process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``) after resetting it through
``/proc/self/clear_refs`` (Linux). The reported number is peak RSS during the call minus RSS just before it. A fixed glibc mmap threshold keeps large tensors out of the heap, so RSS follows live memory. The
chunked variants run before the naive one, so memory the allocator keeps cached from a larger run can never make a
chunked run look smaller than it is.

    python benchmarks/logprob_memory.py [--batch 4] [--length 256] [--chunk-sizes 1024 256 128]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import time
from pathlib import Path

import torch


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_supported() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kb("VmHWM")
        return True
    except OSError:
        return False
    except RuntimeError:
        return False


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def fix_allocator_for_measurement(threshold_bytes: int = 1 << 20) -> None:
    """Serve every allocation >= ``threshold_bytes`` with its own mmap and unmap it on free (glibc only).

    By default glibc raises its mmap threshold after large blocks are freed (up to 32 MB), after which mid-size
    chunks come from the heap, which fragments and keeps pages resident: RSS then stops tracking live memory.
    A fixed threshold keeps RSS == live memory for big tensors. Small tensors are unaffected.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold_bytes)
    except (OSError, AttributeError):
        pass


def _release_free_memory() -> None:
    gc.collect()
    try:  # hand freed heap pages back to the OS so the baseline RSS is the live set (glibc only)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn) -> tuple[float, float]:
    """Run ``fn()``; return (peak RSS above the pre-call RSS in MB, seconds)."""
    fix_allocator_for_measurement()
    _release_free_memory()
    baseline_kb = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM")
    _release_free_memory()
    return (peak_kb - baseline_kb) / 1024, seconds


def build_wide_vocab_model(vocab_size: int = 49152, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A random Llama whose memory is dominated by its vocabulary projection."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().train()


def make_inputs(vocab_size: int, batch: int, length: int, seed: int = 0):
    """Token ids [B, L] and an attention mask with some left and right padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, : length // 8] = 0
    attention_mask[-1, -length // 8:] = 0
    return input_ids, attention_mask


def naive_step(model, input_ids, attention_mask, temperature: float = 1.0) -> None:
    """What most RL code does: full logits, full log-softmax, entropy, backward."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logprobs_all = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)  # [B, L-1, V]
    token_logprobs = logprobs_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).float()
    ((token_logprobs + 0.01 * entropy) * valid).sum().backward()
    model.zero_grad(set_to_none=True)


def chunked_step(model, input_ids, attention_mask, chunk_size: int, temperature: float = 1.0) -> None:
    from entropo.models.logprobs import token_logprobs_and_entropy

    logprobs, entropy = token_logprobs_and_entropy(model, input_ids, attention_mask, chunk_size=chunk_size,
                                                   temperature=temperature)
    (logprobs + 0.01 * entropy).sum().backward()
    model.zero_grad(set_to_none=True)


def compare(batch: int = 4, length: int = 256, chunk_sizes=(1024, 256, 128), vocab_size: int = 49152,
            threads: int | None = None) -> dict[str, tuple[float, float]]:
    """{variant: (peak MB, seconds)} for each chunk size and the naive path (naive measured last)."""
    if threads is not None:
        torch.set_num_threads(threads)
    model = build_wide_vocab_model(vocab_size)
    input_ids, attention_mask = make_inputs(vocab_size, batch, length)
    # Warm up both paths once so one-off allocations (thread pools, kernels) are not counted.
    chunked_step(model, input_ids[:, :16], attention_mask[:, :16], chunk_size=16)
    naive_step(model, input_ids[:, :16], attention_mask[:, :16])
    results = {}
    for chunk_size in chunk_sizes:
        results[f"chunked/{chunk_size}"] = peak_memory_mb(lambda: chunked_step(model, input_ids, attention_mask, chunk_size))
    results["naive"] = peak_memory_mb(lambda: naive_step(model, input_ids, attention_mask))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 256, 128])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not peak_memory_supported():
        print("SKIP: needs Linux /proc/self/clear_refs to measure peak RSS")
        return 0
    results = compare(args.batch, args.length, args.chunk_sizes, threads=args.threads)
    naive_mb = results["naive"][0]
    print(f"vocab 49152, hidden 64, 2 layers, B={args.batch}, L={args.length}, forward+backward of logprob+entropy")
    for name, (mb, seconds) in results.items():
        print(f"{name:>14s}: peak {mb:8.1f} MB  ({mb / naive_mb:5.2f}x naive)  {seconds:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
