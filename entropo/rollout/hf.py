"""The embedded rollout engine: batched sampling from a Hugging Face causal LM with a KV cache.

``generate``/``rollout`` play episodes through ``entropo.rollout.episodes.run_episodes`` (one turn for single-turn
tasks; several against an environment), sampling every turn of the episodes still running in micro-batches of
``max_batch_size`` rows from token-id contexts (token in, token out).

``HFEngine.generate`` runs its own decoding loop rather than ``model.generate`` so that
  - all randomness comes from the ``torch.Generator`` passed in (deterministic and resumable; the global RNG is
    never touched);
  - the log-prob and entropy of each generated token under the *sampling* distribution (after temperature and
    top-p) are recorded as it is sampled, at O(B) memory per step (no ``[steps, B, V]`` score storage);
  - EOS, stop strings and the token budget end rows individually, and the result is laid out exactly as the
    ``Batch`` expects (left-padded prompt, response, right padding).

Prompt formatting (``chat_template``): ``"auto"`` applies the tokenizer's chat template (with the generation
prompt) to prompts given as message lists and uses plain-string prompts verbatim; ``True`` also wraps plain strings
as a single user message; ``False`` never applies a template (message lists are then rejected).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor

from entropo.envs.base import EnvFactory, single_turn_factory
from entropo.registry import register
from entropo.rollout.chat import ChatFormat
from entropo.rollout.episodes import EpisodeLimits, assemble, run_episodes, single_action_episode
from entropo.rollout.kv import PrefixKV, expand_rows, preallocated_cache
from entropo.types import Example, RolloutOutput


def _eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models often end turns on a second id)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos is not None:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def _max_positions(model) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_sampling_args(n: int, temperature: float, top_p: float, max_new_tokens: int,
                        stop: str | Sequence[str]) -> list[str]:
    """Validate the sampling arguments of ``generate``; returns the non-empty stop strings as a list."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if isinstance(stop, str):
        stop = [stop]
    return [s for s in stop if s]


def default_generator(device) -> torch.Generator:
    """A generator seeded from the global torch RNG (reproducible under ``torch.manual_seed``)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return generator


def _sample_step(next_logits: Tensor, temperature: float, top_p: float,
                 generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Sample one token per row from ``next_logits [B, V]``.

    Returns ``(token_ids [B], logprob [B], entropy [B])``; log-prob and entropy are those of the distribution
    actually sampled from (after temperature and top-p). Greedy (temperature 0) is a point mass: both are 0.
    """
    if temperature == 0:
        token_ids = next_logits.argmax(-1)
        zeros = torch.zeros(token_ids.shape, dtype=torch.float32, device=next_logits.device)
        return token_ids, zeros, zeros.clone()
    scaled = next_logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    if top_p < 1.0:
        # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p (always the top token).
        sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_ids, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    logprobs = torch.log_softmax(scaled, dim=-1)  # [B, V]
    probs = logprobs.exp()
    if generator.device != probs.device:  # a CPU generator with a GPU model: sample on the generator's device
        token_ids = torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)
    else:
        token_ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    token_logprob = logprobs.gather(-1, token_ids[:, None]).squeeze(-1)
    # 0 * log 0 = 0 for tokens removed by top-p (their log-prob is -inf).
    entropy = -(probs * logprobs.masked_fill(probs == 0, 0.0)).sum(-1)
    return token_ids, token_logprob, entropy


def _sample_step_fast(next_logits: Tensor, temperature: float, top_p: float,
                      generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``_sample_step`` with fewer full-vocabulary passes, the same draws and values: the temperature divides the
    logits in place (the decode loop owns them), and the entropy is one product and a NaN-skipping sum (a token
    removed by top-p or masked to -inf has probability 0 and log-prob -inf: 0·(-inf) = NaN is left out, as the
    reference's masked fill does) instead of compare, fill, product and sum. The draw is the same
    ``torch.multinomial`` on the same probabilities, so the generator is consumed identically."""
    if temperature == 0 or top_p < 1.0:
        return _sample_step(next_logits, temperature, top_p, generator)
    scaled = next_logits if next_logits.dtype == torch.float32 else next_logits.float()
    if temperature != 1.0:
        scaled = scaled.div_(temperature)
    logprobs = torch.log_softmax(scaled, dim=-1)
    probs = logprobs.exp()
    if generator.device != probs.device:
        token_ids = torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)
    else:
        token_ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    token_logprob = logprobs.gather(-1, token_ids[:, None]).squeeze(-1)
    entropy = -(probs.mul_(logprobs)).nansum(-1)
    return token_ids, token_logprob, entropy


@register("engine", "hf")
class HFEngine:
    """Batched sampling from an in-process Hugging Face causal LM.

    ``max_batch_size`` bounds how many rows (prompt x sample) decode together, which bounds the KV-cache memory.
    ``min_new_tokens`` (recipe: ``rollout.engine_params``) forbids EOS and ignores stop strings until a row has that
    many tokens, like ``transformers``' ``min_new_tokens``: EOS logits are set to -inf before sampling, so the
    recorded behaviour log-probs are those of that constrained distribution. Benchmarks use it to make every row
    exactly ``max_new_tokens`` long (identical work on both sides of a comparison); 0 leaves sampling unchanged.
    ``ignore_eos`` keeps decoding after an EOS token (rows end only at stop strings or the budget) without changing
    the sampling distribution, so the recorded log-probs stay the policy's: fixed-length rows for benchmarks that
    can still reuse them (``train.old_logprobs``), unlike ``min_new_tokens``.
    ``share_prompt_prefill`` prefills each distinct prompt of a micro-batch once and copies its KV cache to the rows
    that sample from it (a group of n samples costs one prefill instead of n).
    ``env_workers`` bounds how many environment steps (tool calls) of different episodes run at once.

    Decode path: ``static_kv_cache`` (default) decodes into a KV cache preallocated at its final size (no per-token
    ``torch.cat`` growth) with a leaner sampling step (same draws, same values; see ``_sample_step_fast``); False runs
    the reference loop (a growing ``DynamicCache``), kept for comparison and for models whose cache is not plain
    full attention (those always take it). ``reuse_prefix_kv`` (static path only): within one rollout, a context
    that extends a row decoded before -- the next turn of a multi-turn episode, a branch forked off a sampled row --
    reuses that row's K/V for the shared prefix and prefills only the new tokens (observation, reply), instead of
    re-prefilling the whole history; ``prefix_kv_mb`` bounds the K/V kept between turns (rows that do not fit are
    re-prefilled, with the same result). See ``entropo.rollout.kv``.
    """

    def __init__(self, model, tokenizer, *, chat_template: str | bool = "auto", max_batch_size: int = 64,
                 min_new_tokens: int = 0, ignore_eos: bool = False, share_prompt_prefill: bool = True,
                 env_workers: int = 8, static_kv_cache: bool = True, reuse_prefix_kv: bool = True,
                 prefix_kv_mb: float = 1024.0):
        if chat_template not in ("auto", True, False):
            raise ValueError(f"chat_template must be 'auto', True or False, got {chat_template!r}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {min_new_tokens}")
        self.min_new_tokens = int(min_new_tokens)
        self.ignore_eos = ignore_eos
        self.share_prompt_prefill = share_prompt_prefill
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_batch_size = max_batch_size
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0))
        self.chat = ChatFormat(tokenizer, chat_template, self.eos_token_ids)
        self.env_workers = int(env_workers)  # environment steps (tool calls) of different episodes run concurrently
        if prefix_kv_mb < 0:
            raise ValueError(f"prefix_kv_mb must be >= 0, got {prefix_kv_mb}")
        self.static_kv_cache = bool(static_kv_cache)
        self.reuse_prefix_kv = bool(reuse_prefix_kv)
        self.prefix_kv_mb = float(prefix_kv_mb)
        # The prefix K/V store of the rollout in progress: None outside any scope, False where reuse is off.
        self._prefix_kv: PrefixKV | bool | None = None
        # context tokens of the last rollout whose K/V were reused from an earlier row / prefilled (static path)
        self.kv_stats: dict[str, int] = {"reused_tokens": 0, "prefilled_tokens": 0}

    # ---- prompts -------------------------------------------------------------------------------------------------
    def format_prompt(self, prompt: str | list[dict]) -> str:
        """The exact text fed to the model for ``prompt`` (see the module docstring for the template rules)."""
        return self.chat.format_prompt(prompt)

    def encode_prompt(self, prompt: str | list[dict]) -> list[int]:
        return self.chat.prompt_ids(prompt)

    # ---- generation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str | list[dict] | Example],
        n: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        generator: torch.Generator | None = None,
        environment: EnvFactory | None = None,
        env_seed: int = 0,
        limits: EpisodeLimits | None = None,
        rounds: bool = False,
    ) -> RolloutOutput:
        """Play ``n`` episodes for each prompt (an ``Example`` or a bare prompt); rows are prompt-major (prompt 0's
        ``n`` episodes first). Without an ``environment`` every episode is one turn: a plain completion.

        ``temperature=0`` decodes greedily. An action ends at an EOS token (kept, ``response_mask`` 1), at the token
        that completes any string of ``stop`` or of the environment's ``stop`` (kept; later tokens are dropped), or
        after ``max_new_tokens``. Episode ``i`` of the call gets the environment seed ``env_seed + i``.
        Without a ``generator`` one is seeded from the global torch RNG (reproducible under ``torch.manual_seed``).
        ``rounds=True`` returns one row per round of an environment that rebuilds its context (``StepResult.context``;
        see ``entropo.rollout.episodes.assemble``) instead of one row per episode.
        """
        stop = check_sampling_args(n, temperature, top_p, max_new_tokens, stop)
        device = next(self.model.parameters()).device
        generator = generator if generator is not None else default_generator(device)
        examples = [p if isinstance(p, Example) else Example(prompt=p) for p in prompts]
        limits = replace(limits or EpisodeLimits(), max_new_tokens=max_new_tokens)
        self._check_prompt_lengths(examples, limits)

        row_prompt_index = [i for i in range(len(examples)) for _ in range(n)]

        # K/V is kept between turns only where a later turn can use it: episodes against an environment (a plain
        # completion is one turn), or inside a scope an engine opened around several calls (tree branches).
        multi_turn = environment is not None and not getattr(environment, "single_turn", False)
        environment = environment if environment is not None else single_turn_factory()
        with self.prefix_kv_scope(self.new_prefix_kv() if multi_turn else False):
            sample_turn = self.turn_sampler(temperature, top_p, generator, device)
            self.last_timing: dict[str, float] = {}  # wall seconds of this call: sampling, environment steps, resets
            episodes = run_episodes([environment() for _ in row_prompt_index],
                                    [examples[i] for i in row_prompt_index],
                                    [env_seed + r for r in range(len(row_prompt_index))], self.chat, sample_turn,
                                    limits, stop=stop, workers=self.env_workers, timing=self.last_timing)
        return assemble(episodes, row_prompt_index, self.pad_token_id,
                        lambda rows: self.tokenizer.batch_decode(rows, skip_special_tokens=True), rounds=rounds)

    def _check_prompt_lengths(self, examples: Sequence[Example], limits: EpisodeLimits) -> None:
        # The first observation may differ from the example's prompt (an environment's reset decides); the check
        # covers the common case where it is the prompt, and the model raises on anything longer.
        lengths = [len(self.encode_prompt(e.prompt)) for e in examples]
        if any(length == 0 for length in lengths):
            raise ValueError("a prompt encodes to zero tokens; give every prompt some text")
        max_positions = _max_positions(self.model)
        longest = max(lengths, default=0)
        need = limits.max_new_tokens if limits.max_episode_tokens is None else limits.max_episode_tokens
        if max_positions is not None and longest + need > max_positions:
            worst = max(range(len(examples)), key=lambda i: lengths[i])
            raise ValueError(
                f"prompt {worst} has {longest} tokens; with max_new_tokens={need} that exceeds the "
                f"model's {max_positions} positions. Shorten the prompt or lower max_new_tokens."
            )

    @property
    def records_policy_logprobs(self) -> bool:
        """True when the recorded behaviour log-probs are the policy's own at the sampling temperature (with
        top_p = 1): false while ``min_new_tokens`` masks EOS, which changes the sampling distribution."""
        return self.min_new_tokens == 0

    def rollout(self, examples: Sequence[Any], n: int, **sampling: Any) -> RolloutOutput:
        """A training rollout: ``n`` episodes of each example (``sampling`` as for ``generate``).

        The trainer calls this, evaluation calls ``generate``. Every row here is a complete episode, or one round of it
        when its environment rebuilds the context (rows of all rounds share the example's slot, hence its group); an
        engine that splits responses across steps (``hf_window``) overrides it and returns unfinished rows as
        ``"partial"``.
        """
        out = self.generate(list(examples), n, rounds=True, **sampling)
        out.payloads = list(examples)
        return out

    def after_update(self, model) -> None:
        """Called after every optimizer update. The in-process engine samples from the trained module itself, so
        there is nothing to sync; an out-of-process engine (vLLM) pushes the new weights here."""
        del model

    def state_dict(self) -> dict[str, Any]:
        """Engine state that must survive a resume (none here: sampling randomness lives in the caller's generator)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def turn_sampler(self, temperature: float, top_p: float, generator: torch.Generator, device=None):
        """The episode loop's ``sample_turn`` (``run_episodes``): one action per context, sampled in micro-batches of
        ``max_batch_size`` on the model's device (or ``device``)."""
        device = device if device is not None else next(self.model.parameters()).device
        # Prefix K/V reuse between calls of this sampler (turns): the rollout's store when one is open (``generate``
        # opens one for episodes against an environment, none for plain completions), else a store of its own (the
        # sampler is used directly: search, custom episode loops).
        store = self._prefix_kv if self._prefix_kv is not None else self.new_prefix_kv()

        def sample_turn(contexts: list[list[int]], budget: int, stops: list[str]):
            out = []
            # no_grad here too, not only in ``generate``: callers that drive the sampler themselves (tree decoding,
            # search) would otherwise get log-probs that hold every decode step's graph (~0.1 GB per SmolLM2 row)
            with torch.no_grad(), self.prefix_kv_scope(store, force=True):
                generation = store.new_generation() if store else 0
                for start in range(0, len(contexts), self.max_batch_size):
                    ids, lps, ents, why = self._generate_micro_batch(contexts[start:start + self.max_batch_size],
                                                                     temperature, top_p, budget, stops, generator,
                                                                     device)
                    out += list(zip(ids, lps, ents, why))
                if store:  # later turns extend this turn's rows; older rows are never looked up again
                    store.drop_older(generation)
            return out
        return sample_turn

    # ---- prefix K/V reuse ----------------------------------------------------------------------------------------
    def new_prefix_kv(self) -> PrefixKV | bool:
        """A fresh prefix K/V store for one rollout, or False when reuse is off."""
        if not (self.static_kv_cache and self.reuse_prefix_kv and self.prefix_kv_mb > 0):
            return False
        return PrefixKV(int(self.prefix_kv_mb * 2**20))

    @contextmanager
    def prefix_kv_scope(self, store: PrefixKV | bool, force: bool = False):
        """Make ``store`` the prefix K/V store of the decodes inside (an open outer scope wins unless ``force``)."""
        previous = self._prefix_kv
        if previous is None:  # the outermost scope: a new rollout
            self.kv_stats = {"reused_tokens": 0, "prefilled_tokens": 0}
        if previous is None or force:
            self._prefix_kv = store
        try:
            yield
        finally:
            self._prefix_kv = previous

    def _generate_micro_batch(self, row_prompts: list[list[int]], temperature: float, top_p: float,
                              max_new_tokens: int, stop: list[str], generator: torch.Generator, device):
        """Decode one micro-batch; returns per row: response ids, their log-probs [T], entropies [T], finish reason.

        The static-cache path when it is on and the model's cache is plain full attention, else the reference loop
        (both give the same ids, log-probs and entropies for the same generator; tests/test_decode.py)."""
        if self.static_kv_cache:
            out = self._decode_static(row_prompts, temperature, top_p, max_new_tokens, stop, generator, device)
            if out is not None:
                return out
        return self._decode_reference(row_prompts, temperature, top_p, max_new_tokens, stop, generator, device)

    def _decode_static(self, row_prompts: list[list[int]], temperature: float, top_p: float, max_new_tokens: int,
                       stop: list[str], generator: torch.Generator, device):
        """The fast decode loop: a KV cache preallocated at its final width, prefix K/V reuse, lean sampling.

        Layout of a row (columns of the cache and of the attention mask): the reused prefix K/V right-aligned in the
        first ``C`` columns (C = the longest reuse in the batch), the rest of the context right-aligned in the next
        ``S`` (prefilled in one forward), then the sampled tokens. Padding columns -- left of a row's reused prefix,
        between it and its suffix, after a row ended -- are masked; position ids count only real tokens, so every
        row sees exactly the positions and keys of its own unpadded sequence."""
        store = self._prefix_kv if isinstance(self._prefix_kv, PrefixKV) else None
        num_rows = len(row_prompts)
        # Rows with the same context (the n samples of a group) share its prefill: run each distinct context once,
        # then copy its K/V and first logits to every row of it. Same values as prefilling every row.
        if self.share_prompt_prefill:
            distinct: dict[tuple[int, ...], int] = {}
            row_source = [distinct.setdefault(tuple(ids), len(distinct)) for ids in row_prompts]
            contexts = [list(ids) for ids in distinct]
        else:
            row_source, contexts = list(range(num_rows)), [list(ids) for ids in row_prompts]
        num_ctx = len(contexts)
        share = num_ctx < num_rows

        if store is not None:
            store.check_weights(self.model)
        found = [store.lookup(c) if store is not None else (None, 0) for c in contexts]
        reuse = [n for _, n in found]
        width_c = max(reuse)
        suffix = [len(c) - n for c, n in zip(contexts, reuse)]
        width_s = max(suffix)
        width = width_c + width_s
        cache = preallocated_cache(self.model, width if share else width + max_new_tokens)
        if cache is None:
            return None
        self.kv_stats["reused_tokens"] += sum(reuse)
        self.kv_stats["prefilled_tokens"] += sum(suffix)

        attention = torch.zeros((num_ctx, width), dtype=torch.long)
        input_ids = torch.full((num_ctx, width_s), self.pad_token_id, dtype=torch.long)
        for d, (ctx, n, s_len) in enumerate(zip(contexts, reuse, suffix)):
            attention[d, width_c - n:width_c] = 1
            attention[d, width - s_len:] = 1
            input_ids[d, width_s - s_len:] = torch.tensor(ctx[n:], dtype=torch.long)
        attention, input_ids = attention.to(device), input_ids.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        if width_c > 0:  # copy the reused K/V in; other columns zero (masked, but never NaN garbage)
            first = next(entry for entry, n in found if n > 0)
            for i, layer in enumerate(cache.layers):
                k0 = first.kv[i][0]
                layer.allocate(num_ctx, k0.shape[0], k0.shape[-1], k0.dtype, k0.device)
                layer.buf_k[:, :, :width_c].zero_()
                layer.buf_v[:, :, :width_c].zero_()
                for d, (entry, n) in enumerate(found):
                    if n:
                        layer.buf_k[d, :, width_c - n:width_c].copy_(entry.kv[i][0][:, :n])
                        layer.buf_v[d, :, width_c - n:width_c].copy_(entry.kv[i][1][:, :n])
                layer.set_length(width_c)
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions[:, width_c:],
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        next_logits = out.logits[:, -1, :]
        del out
        next_position = attention.sum(-1)  # [contexts] position id of the next token (real tokens so far)
        if share:
            source = torch.tensor(row_source, device=device)
            cache = expand_rows(cache, source, width + max_new_tokens)
            next_logits, attention, next_position = next_logits[source], attention[source], next_position[source]
        # Attention mask for context + all steps, filled as we go (0 after a row finished, so its pads are ignored).
        full_attention = torch.zeros((num_rows, width + max_new_tokens), dtype=torch.long, device=device)
        full_attention[:, :width] = attention
        attention = full_attention
        eos_ids = torch.tensor(self.eos_token_ids or [-1], dtype=torch.long, device=device)
        check_eos = bool(self.eos_token_ids) and not self.ignore_eos

        step_token_ids = torch.full((num_rows, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
        step_logprobs = torch.zeros((num_rows, max_new_tokens), dtype=torch.float32, device=device)
        step_entropies = torch.zeros((num_rows, max_new_tokens), dtype=torch.float32, device=device)
        active = torch.ones(num_rows, dtype=torch.bool, device=device)
        lengths = torch.zeros(num_rows, dtype=torch.long, device=device)
        reasons = ["length"] * num_rows
        stop_window = max((len(s) for s in stop), default=0) + 8  # tokens to decode when checking stop strings
        steps_run = forwards = 0
        all_active = True  # no row has ended yet: skip the masking ops
        for step in range(max_new_tokens):
            if step < self.min_new_tokens and self.eos_token_ids:
                next_logits = next_logits.index_fill(-1, eos_ids, float("-inf"))  # too early to end a row
            token_ids, token_logprob, entropy = _sample_step_fast(next_logits, temperature, top_p, generator)
            if all_active:
                step_token_ids[:, step] = token_ids
                step_logprobs[:, step] = token_logprob
                step_entropies[:, step] = entropy
                attention[:, width + step] = 1
            else:
                token_ids = torch.where(active, token_ids, self.pad_token_id)
                step_token_ids[:, step] = token_ids
                step_logprobs[:, step] = torch.where(active, token_logprob, 0.0)
                step_entropies[:, step] = torch.where(active, entropy, 0.0)
                attention[:, width + step] = active
            lengths += active
            steps_run = step + 1

            still_active = active
            if check_eos:
                hit_eos = active & torch.isin(token_ids, eos_ids)
                if hit_eos.any():
                    for r in hit_eos.nonzero().flatten().tolist():
                        reasons[r] = "eos"
                    still_active = active & ~hit_eos
            if stop and step + 1 >= self.min_new_tokens and still_active.any():
                # Only the recent tokens can complete a stop string that was not complete a step earlier.
                still_active = still_active.clone()
                lo = max(0, step + 1 - stop_window)
                recent = step_token_ids[:, lo:step + 1].tolist()
                length_list = lengths.tolist()
                for r in still_active.nonzero().flatten().tolist():
                    text = self.tokenizer.decode(recent[r][: length_list[r] - lo], skip_special_tokens=False)
                    if any(s in text for s in stop):
                        reasons[r] = "stop"
                        still_active[r] = False
            if still_active is not active:
                active = still_active
                all_active = bool(active.all())
                if not active.any():
                    break
            if step == max_new_tokens - 1:
                break
            out = self.model(
                input_ids=token_ids[:, None],
                attention_mask=attention[:, : width + step + 1],
                position_ids=next_position[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            forwards += 1
            next_position += 1
            next_logits = out.logits[:, -1, :]
            del out

        token_rows = step_token_ids[:, :steps_run].tolist()
        length_list = lengths.tolist()
        responses = [token_rows[r][: length_list[r]] for r in range(num_rows)]
        logprob_rows = [step_logprobs[r, : length_list[r]].cpu() for r in range(num_rows)]
        entropy_rows = [step_entropies[r, : length_list[r]].cpu() for r in range(num_rows)]
        if store is not None and store.accepting:
            self._keep_prefix_kv(store, cache, attention, row_prompts, responses, width, forwards)
        return responses, logprob_rows, entropy_rows, reasons

    @staticmethod
    def _keep_prefix_kv(store: PrefixKV, cache, attention: Tensor, row_prompts: list[list[int]],
                        responses: list[list[int]], width: int, forwards: int) -> None:
        """Keep each row's K/V (its real columns: context, then the sampled tokens whose K/V a forward computed --
        all but the last one) in ``store``, keyed by those tokens, while the store has room."""
        per_token = sum(2 * layer.buf_k.shape[1] * layer.buf_k.shape[-1] * layer.buf_k.element_size()
                        for layer in cache.layers)
        for r, (ctx, resp) in enumerate(zip(row_prompts, responses)):
            n_kv = min(len(resp), forwards)
            columns = attention[r, : width + n_kv].nonzero().flatten()
            if len(columns) != len(ctx) + n_kv or not store.fits(len(columns) * per_token):
                continue
            kv = [(layer.buf_k[r][:, columns], layer.buf_v[r][:, columns]) for layer in cache.layers]
            store.put(list(ctx) + list(resp[:n_kv]), kv)

    def _decode_reference(self, row_prompts: list[list[int]], temperature: float, top_p: float,
                          max_new_tokens: int, stop: list[str], generator: torch.Generator, device):
        """The reference decode loop (a growing ``DynamicCache``, the plain sampling step), unchanged from before the
        static-cache path; ``static_kv_cache=False`` selects it."""
        from transformers import DynamicCache

        num_rows = len(row_prompts)
        prompt_width = max(len(p) for p in row_prompts)
        prompt_ids = torch.full((num_rows, prompt_width), self.pad_token_id, dtype=torch.long)
        prompt_attention = torch.zeros((num_rows, prompt_width), dtype=torch.long)
        for r, ids in enumerate(row_prompts):
            prompt_ids[r, prompt_width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            prompt_attention[r, prompt_width - len(ids):] = 1
        prompt_ids, prompt_attention = prompt_ids.to(device), prompt_attention.to(device)

        # Attention mask for prompt + all steps, filled as we go (0 after a row finished, so its pads are ignored).
        attention = torch.zeros((num_rows, prompt_width + max_new_tokens), dtype=torch.long, device=device)
        attention[:, :prompt_width] = prompt_attention
        next_position = prompt_attention.sum(-1)  # [rows] position id of the next token (left padding skipped)
        eos_ids = torch.tensor(self.eos_token_ids or [-1], dtype=torch.long, device=device)

        # Rows that share a prompt (the n samples of a group) share its prefill: run each distinct prompt once, then
        # copy its KV cache and first logits to every row of it. Same values as prefilling every row.
        distinct: dict[tuple[int, ...], int] = {}  # prompt -> its first row
        row_source = [distinct.setdefault(tuple(ids), r) for r, ids in enumerate(row_prompts)]  # row -> first row
        first_rows = torch.tensor(list(distinct.values()), device=device)
        slot = {first: k for k, first in enumerate(distinct.values())}
        row_source = [slot[first] for first in row_source]  # row -> index among the prefilled prompts
        share = self.share_prompt_prefill and len(distinct) < num_rows
        prefill_ids = prompt_ids[first_rows] if share else prompt_ids
        prefill_attention = prompt_attention[first_rows] if share else prompt_attention
        self.kv_stats["prefilled_tokens"] += int(prefill_attention.sum())
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=prefill_ids,
            attention_mask=prefill_attention,
            position_ids=(prefill_attention.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        next_logits = out.logits[:, -1, :]
        if share:
            source = torch.tensor(row_source, device=device)
            cache.batch_select_indices(source)
            next_logits = next_logits[source]

        step_token_ids = torch.full((num_rows, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
        step_logprobs = torch.zeros((num_rows, max_new_tokens), dtype=torch.float32, device=device)
        step_entropies = torch.zeros((num_rows, max_new_tokens), dtype=torch.float32, device=device)
        active = torch.ones(num_rows, dtype=torch.bool, device=device)
        lengths = torch.zeros(num_rows, dtype=torch.long, device=device)
        reasons = ["length"] * num_rows
        stop_window = max((len(s) for s in stop), default=0) + 8  # tokens to decode when checking stop strings
        steps_run = 0
        for step in range(max_new_tokens):
            if step < self.min_new_tokens and self.eos_token_ids:
                next_logits = next_logits.index_fill(-1, eos_ids, float("-inf"))  # too early to end a row
            token_ids, token_logprob, entropy = _sample_step(next_logits, temperature, top_p, generator)
            token_ids = torch.where(active, token_ids, self.pad_token_id)
            step_token_ids[:, step] = token_ids
            step_logprobs[:, step] = torch.where(active, token_logprob, 0.0)
            step_entropies[:, step] = torch.where(active, entropy, 0.0)
            attention[:, prompt_width + step] = active.long()
            lengths += active.long()
            steps_run = step + 1

            hit_eos = active & torch.isin(token_ids, eos_ids) & (not self.ignore_eos)
            if hit_eos.any():
                for r in hit_eos.nonzero().flatten().tolist():
                    reasons[r] = "eos"
            still_active = active & ~hit_eos
            if stop and step + 1 >= self.min_new_tokens and still_active.any():
                # Only the recent tokens can complete a stop string that was not complete a step earlier.
                lo = max(0, step + 1 - stop_window)
                recent = step_token_ids[:, lo:step + 1].tolist()
                for r in still_active.nonzero().flatten().tolist():
                    text = self.tokenizer.decode(recent[r][: int(lengths[r]) - lo], skip_special_tokens=False)
                    if any(s in text for s in stop):
                        reasons[r] = "stop"
                        still_active[r] = False
            active = still_active
            if not active.any() or step == max_new_tokens - 1:
                break
            out = self.model(
                input_ids=token_ids[:, None],
                attention_mask=attention[:, : prompt_width + step + 1],
                position_ids=next_position[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            next_position = next_position + 1
            next_logits = out.logits[:, -1, :]

        token_rows = step_token_ids[:, :steps_run].tolist()
        length_list = lengths.tolist()
        responses = [token_rows[r][: length_list[r]] for r in range(num_rows)]
        logprob_rows = [step_logprobs[r, : length_list[r]].cpu() for r in range(num_rows)]
        entropy_rows = [step_entropies[r, : length_list[r]].cpu() for r in range(num_rows)]
        return responses, logprob_rows, entropy_rows, reasons

    def _assemble(self, prompt_token_ids, row_prompt_index, responses, response_logprobs, response_entropies,
                  finish_reasons) -> RolloutOutput:
        """Lay single-turn rows out as [left padding | prompt | response | right padding] (the episode layout)."""
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        episodes = [single_action_episode(prompt_token_ids[p], ids, lp, ent, why, text)
                    for p, ids, lp, ent, why, text in zip(row_prompt_index, responses, response_logprobs,
                                                          response_entropies, finish_reasons, texts)]
        return assemble(episodes, list(row_prompt_index), self.pad_token_id,
                        lambda rows: self.tokenizer.batch_decode(rows, skip_special_tokens=True))
