"""What keeps LoRA's peak memory down beyond the adapters themselves: frozen base weights get no gradient and no
optimizer state, and freed activations leave the process (entropo/heap.py: glibc would keep them in its heap)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from entropo import heap, models
from entropo.config import load_recipe
from entropo.models.lora import LoRA
from entropo.trainer import make_optimizer

PROBE = r"""
import json, sys, torch
from pathlib import Path
from entropo import heap
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
set_to = heap.return_freed_memory()
warm = torch.ones(1 << 21)  # an 8 MB block, mapped and freed: glibc's dynamic threshold rises to its size
del warm
before = rss()
keep, big = [], []
for _ in range(200):  # activations (2 MB) interleaved with smaller tensors that stay alive, as in a forward pass
    big.append(torch.ones(1 << 19))
    keep.append(torch.ones(1 << 15))
peak = rss()
big.clear()
print(json.dumps({"set": set_to, "held_mb": peak - before, "kept_mb": rss() - before}))
"""


def _probe(env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd(), **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_activations_leave_the_process_with_the_fixed_threshold(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    fixed = _probe({heap.ENV: str(heap.DEFAULT_THRESHOLD)})
    default = _probe({heap.ENV: "0"})
    assert fixed["set"] == heap.DEFAULT_THRESHOLD and default["set"] == 0
    assert fixed["held_mb"] > 350 and default["held_mb"] > 350  # 400 MB alive either way
    assert fixed["kept_mb"] < 50  # freed: gone from the process
    assert default["kept_mb"] > 300  # glibc's default keeps the freed blocks in its heap


def test_threshold_settings(monkeypatch):
    monkeypatch.setenv(heap.ENV, "nonsense")
    with pytest.raises(ValueError, match=heap.ENV):
        heap.return_freed_memory()
    monkeypatch.setenv(heap.ENV, "0")
    assert heap.return_freed_memory() == 0  # opted out
    assert heap.return_freed_memory(1 << 20) == 0  # the environment overrides the recipe's threshold
    monkeypatch.delenv(heap.ENV)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert heap.return_freed_memory() == 0  # glibc's own tunable is the user's choice


def test_auto_threshold_is_low_for_lora_and_high_for_full_fine_tuning():
    assert heap.threshold_for("auto", lora=True) == 256 * 1024
    assert heap.threshold_for("auto", lora=False) == 8 * 1024 * 1024
    assert heap.threshold_for(0, lora=True) == 0 and heap.threshold_for(65536, lora=False) == 65536
    assert load_recipe(None, []).train.malloc_mmap_threshold == "auto"
    with pytest.raises(ValueError, match="malloc_mmap_threshold"):
        load_recipe(None, ["train.malloc_mmap_threshold=lots"])


def test_frozen_base_gets_no_gradient_and_no_optimizer_state():
    torch.manual_seed(0)
    model, _ = models.load("tiny")
    LoRA(model, load_recipe(None, ["model.lora={r: 4, target_modules: [q_proj, v_proj, up_proj]}"]).model.lora)
    cfg = load_recipe(None, []).optimizer
    opt = make_optimizer(model, cfg)
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    frozen = [p for n, p in model.named_parameters() if ".lora_" not in n]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(p not in opt.state for p in frozen)
    adapters = [p for n, p in model.named_parameters() if ".lora_" in n]
    assert all(p in opt.state for p in adapters)
    state_numel = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    assert state_numel == 2 * sum(p.numel() for p in adapters)  # AdamW's two moments, for the adapters only
