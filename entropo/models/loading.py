"""Load a causal LM and its tokenizer from whatever the user names: ``"tiny"``, a known alias, a local HF folder,
a GGUF file, or a hub id.

Every path ends in the same state, which the rest of entropo relies on: the tokenizer pads on the LEFT and has a pad
token (falling back to EOS), the model is in eval mode on the requested device and dtype, and GGUF models carry no
leftover quantization bookkeeping (so checkpoints can ``save_pretrained`` them).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from entropo.models.pull import KNOWN_MODELS, cached_path, is_cached

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(set(_DTYPES)))}")
    return _DTYPES[key]


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist locally is a mistyped path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith(".gguf")


def resolve(name_or_path: str) -> str:
    """The location ``load(name_or_path)`` will read.

    ``"tiny"`` → ``"tiny"`` (built in memory); a known alias → its cached folder (``FileNotFoundError`` telling
    you to run ``entropo models pull <alias>`` if it is not cached yet); an existing local file/folder → its
    absolute path; anything else is returned unchanged and treated as a hub id.
    """
    name = str(name_or_path)
    if name == "tiny":
        return name
    if name in KNOWN_MODELS:
        folder = cached_path(name)
        if not is_cached(name):
            raise FileNotFoundError(
                f"model {name!r} is not in the cache ({folder}). Fetch and convert it once with:\n"
                f"    entropo models pull {name}\n"
                f"(or from Python: entropo.models.pull({name!r})). Source: {KNOWN_MODELS[name].source}"
            )
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if _looks_like_path(name):
        raise FileNotFoundError(f"no such model file or folder: {name}")
    return name


def _finish(model, tokenizer, device: str | torch.device):
    """Put model and tokenizer in the state the rest of entropo expects."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token first")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def _from_pretrained(location: str, *, dtype: torch.dtype, gguf_file: str | None, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        from entropo.models.pull import _require_accelerate

        _require_accelerate()
        extra["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **extra)
    if gguf_file is not None:
        # GGUF weights are dequantized to plain tensors on load; the quantizer record left behind only makes
        # save_pretrained refuse to write the model ("quantized with gguf and is not serializable").
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
    return model, tokenizer


def load(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "float32",
    gguf_file: str | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    tiny_kwargs: dict | None = None,
):
    """Load ``(model, tokenizer)``.

    ``name_or_path`` may be:
      - ``"tiny"``: ``entropo.models.tiny(**tiny_kwargs)`` (random weights, character tokenizer);
      - a known alias such as ``"smollm2-135m-instruct"``: its converted folder in the cache (see ``pull``);
      - a local Hugging Face folder (``config.json`` + weights + tokenizer files);
      - a local ``.gguf`` file, or a folder together with ``gguf_file=`` (dequantized to ``dtype``);
      - a hub id, loaded with ``from_pretrained`` (fails with a clear message on machines without hub access).

    Use float32 on CPU: bf16 is emulated on CPUs without AVX512-BF16/AMX and about 30x slower.
    """
    dt = _as_dtype(dtype)
    location = resolve(name_or_path)
    if location == "tiny":
        from entropo.models.tiny import tiny

        model, tokenizer = tiny(**(tiny_kwargs or {}))
        return _finish(model.to(dt), tokenizer, device)
    path = Path(location)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{location} is a file but not a .gguf file; pass a model folder or a .gguf file")
        if gguf_file is not None and gguf_file != path.name:
            raise ValueError(f"got both a .gguf file path ({location}) and gguf_file={gguf_file!r}")
        location, gguf_file = str(path.parent), path.name
    elif path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"no GGUF file {gguf_file!r} in {location}")
        if gguf_file is None and not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; it holds GGUF files, pass one as gguf_file=: {', '.join(ggufs)}" if ggufs else ""
            raise FileNotFoundError(f"{location} is not a Hugging Face model folder (no config.json){hint}")
    try:
        model, tokenizer = _from_pretrained(location, dtype=dt, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except OSError as e:
        if path.exists():
            raise
        known = ", ".join(sorted(KNOWN_MODELS))
        raise OSError(
            f"could not load {name_or_path!r}: it is not a local file or folder, so it was looked up on the Hugging "
            f"Face hub, which failed (is there network access to the hub?). Without a hub, use a local model folder, "
            f"a .gguf file, 'tiny', or a known alias fetched with `entropo models pull <alias>` ({known}).\n"
            f"Original error: {e}"
        ) from e
    return _finish(model, tokenizer, device)


def blank_like(model):
    """A freshly initialised model of ``model``'s architecture and config (for a copy that ``copy.deepcopy`` cannot
    make, e.g. of a model whose parameters FSDP shards); load weights into it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(model.config)


def load_reference(name_or_path, *, dtype: str | torch.dtype = "float32", gguf_file: str | None = None,
                   device: str | torch.device = "cpu", trust_remote_code: bool = False):
    """A frozen reference model (for KL terms): parameters have ``requires_grad=False`` and it is in eval mode.

    ``name_or_path`` is anything ``load`` accepts (the tokenizer is dropped: the policy's is the same), or an
    already-loaded model, which is deep-copied so later policy updates do not move the reference.
    Returns the model only.
    """
    if isinstance(name_or_path, torch.nn.Module):
        model = copy.deepcopy(name_or_path).to(device=device, dtype=_as_dtype(dtype))
    else:
        model, _ = load(name_or_path, dtype=dtype, gguf_file=gguf_file, device=device,
                        trust_remote_code=trust_remote_code)
    model.requires_grad_(False)
    model.eval()
    return model
