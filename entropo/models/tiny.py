"""A tiny randomly initialised causal LM with a character-level tokenizer, for tests and zero-download demos.

``tiny()`` builds a LlamaForCausalLM of a few hundred thousand parameters and a ``PreTrainedTokenizerFast`` whose
vocabulary is single characters, then saves both with ``save_pretrained`` and reloads them with
``entropo.models.load`` — the same code path a real model takes — so tests exercise the real loading logic.

Chat template of the tiny tokenizer (deliberately minimal, so short arithmetic prompts stay short):
every system/user message renders as its content followed by ``"\\n"``; an assistant message renders as its
content followed by the EOS token. ``add_generation_prompt`` adds nothing: the newline after the last user message
already marks where the answer starts. ``[{"role": "user", "content": "3+4="}]`` → ``"3+4=\\n"``.
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Printable characters the tiny tokenizer knows, one token each (order fixes the ids; do not reorder).
CHARACTERS = (
    string.digits
    + string.ascii_lowercase
    + string.ascii_uppercase
    + " "
    + "+-*/=()?.,:!'<>\n"
    + "\"#$%&;@[]^_`{|}~\\\t"
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
)


def tiny_tokenizer():
    """The character-level tokenizer: ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3, then one id per character.

    No BOS is added when encoding; padding is on the left (prompts are left-padded for generation)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # An empty regex matches between every pair of characters: "isolated" turns each character into its own word.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(""), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny(
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
    seed: int = 0,
    path: str | os.PathLike | None = None,
):
    """A randomly initialised fp32 LlamaForCausalLM and its character tokenizer → ``(model, tokenizer)``.

    Deterministic in ``seed`` (the global torch RNG is left untouched). Both are written with ``save_pretrained``
    to ``path`` (a temporary directory when ``path`` is None) and read back with ``entropo.models.load``.
    With the defaults the model has about 150K parameters (tied input/output embeddings).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from entropo.models.loading import load

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    # Keep the saved generation config in sync with the tokenizer so generation code finds EOS/pad.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    def save_and_load(directory: Path):
        model.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))
        return load(str(directory))

    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        return save_and_load(Path(path))
    with tempfile.TemporaryDirectory(prefix="entropo-tiny-") as tmp:
        return save_and_load(Path(tmp))
