"""Typed recipe configuration: pydantic models, YAML loading, ``--set a.b=c`` overrides, readable errors.

The config is the documentation: every field has a description, and ``entropo.config.Recipe.model_json_schema()``
lists them all. Unknown keys are rejected; component names (advantage, objective, ...) are checked against the
registry, and their ``params`` against the component's signature, so a typo fails before any model is loaded.
A component may also be named by import path, ``"my_pkg.module:attr"`` (see ``entropo.registry``), and a recipe's
``imports`` lists plugin modules imported before its components are checked.
"""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from entropo import registry

AggregationMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


class ConfigError(ValueError):
    """A recipe problem, with the dotted field path and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component(_Section):
    """A registered component chosen by name, with keyword parameters passed to it."""

    name: str = Field(description="Registered name (see `entropo recipes --components`), or an import path "
                      "'my_pkg.module:attr' naming a function or class in your own code.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the component.")


class RewardSpec(Component):
    """One term of the (weighted-sum) reward."""

    weight: float = Field(1.0, description="Weight of this reward in the sum.")
    isolation: Literal["inline", "process"] | None = Field(
        None, description="Where this reward runs; None = the recipe's reward_isolation. 'process': in a worker "
        "process that is killed at the time limit (also stops C code that ignores signals).")


class ControllerSpec(Component):
    """A stateful controller that sets a coefficient each step (e.g. adaptive entropy coefficient)."""


class RegularizerSpec(Component):
    """An extra loss term: total loss += coef * aggregate(term)."""

    coef: float = Field(0.0, description="Coefficient of the term (ignored when a controller sets it).")
    controller: ControllerSpec | None = Field(None, description="Optional controller that updates `coef` each step.")


class LoraSection(_Section):
    """LoRA adapters (through PEFT): only the adapters train and are checkpointed; the reference of KL terms is the
    base with the adapters off (no second model in memory, unless ``model.reference`` names one)."""

    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input (0 keeps runs deterministic).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Names of the linear layers that get adapters (e.g. q_proj, v_proj, up_proj), or 'all-linear'.")
    merge_final: bool = Field(True, description="Also write the merged model to final/ (loadable by `entropo eval "
                              "RUN` and any Hugging Face code); the adapter alone is always written to final/adapter.")


class ModelConfig(_Section):
    name_or_path: str = Field(
        "tiny",
        description="'tiny' (built-in random char-level Llama), a cached alias such as 'smollm2-135m-instruct' "
        "(`entropo models pull`), a local HF directory, a .gguf file, or a hub id.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `name_or_path` when it is a directory.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype. Use float32 on CPU (bf16 autocast on CPU is ~24x slower)."
    )
    tiny: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of entropo.models.tiny() when name_or_path='tiny'."
    )
    reference: str | None = Field(
        None, description="Reference model for KL terms; None = a frozen copy of the initial policy (with `lora`: "
        "the base with the adapters off)."
    )
    reference_resident: bool = Field(
        True, description="Keep the frozen copy of the initial policy (the default reference: no `reference`, no "
        "`lora`) in memory. false: its weights stay in the run directory's reference.pt and are memory-mapped only while the "
        "reference log-probs are computed (the same weights, so the same values), then unmapped, so the update's "
        "peak memory holds one model less; costs mapping the file once per step (it stays in the OS page cache). "
        "With train.distributed=fsdp the reference is sharded over the processes instead and this is not used.")
    lora: LoraSection | None = Field(None, description="Train LoRA adapters instead of all weights (needs PEFT).")


class WarmupConfig(_Section):
    """Optional supervised warm-up on the task's gold completions before RL (a random tiny model earns no reward)."""

    steps: int = Field(0, ge=0, description="SFT optimizer steps (0 = no warm-up).")
    batch_size: int = Field(32, ge=1, description="Examples per SFT step.")
    lr: float = Field(3e-3, gt=0, description="SFT learning rate (AdamW).")
    task: Component | None = Field(None, description="Task to warm up on; None = the RL task.")


class TaskConfig(Component):
    eval_size: int = Field(64, ge=1, description="Held-out prompts (split by seed) used for accuracy reports. It also "
                           "decides which prompts remain for training, so changing it changes the run; to evaluate on "
                           "fewer prompts use eval.max_prompts.")


class RolloutConfig(_Section):
    engine: str = Field("hf", description="Rollout engine (registry kind 'engine').")
    prompts_per_step: int = Field(8, ge=1, description="Prompt groups per RL step (after selection refills).")
    n: int = Field(4, ge=1, description="Completions sampled per prompt (the group size G).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; training log-probs use the same T.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(32, ge=1, description="Maximum response length in tokens.")
    stop: list[str] = Field(default_factory=list, description="Stop strings; the response ends after one.")
    chat_template: bool | Literal["auto"] = Field(
        "auto", description="'auto': apply the chat template to message prompts, use strings as is."
    )
    max_tries: int = Field(
        1, ge=1, description="Rollout rounds per step: selection (e.g. dynamic_sampling) refills from new prompts "
        "until prompts_per_step groups are kept or this many rounds ran."
    )
    max_batch_size: int = Field(64, ge=1, description="Rows generated at once by the engine.")
    shards: int | None = Field(
        None, ge=1, description="Rollout shards: the step's prompts are cut into this many contiguous chunks, each "
        "sampled with its own generator (seeded from seed and the shard index). None: one per process "
        "(train.distributed). A one-process run with shards=N samples exactly what an N-process run samples."
    )
    max_turns: int | None = Field(
        None, ge=1, description="Actions per episode; None uses the environment's own max_turns (1 for single-turn)."
    )
    max_episode_tokens: int | None = Field(
        None, ge=1, description="Token budget of a whole episode after the prompt (actions and observations); an "
        "episode that reaches it ends with finish reason 'budget'. None: only max_turns x max_new_tokens bound it."
    )
    max_observation_tokens: int | None = Field(
        256, ge=1, description="Longest observation (environment reply) in tokens; longer ones are cut and counted "
        "(episode/truncated_observations)."
    )
    strict_template: bool = Field(
        False, description="Debug mode: raise when a multi-turn trajectory differs from the chat template's encoding "
        "of the same conversation (always measured and logged as episode/template_mismatch_frac)."
    )
    engine_params: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments of the engine (e.g. tree-rollout fork settings)."
    )
    env_backend: Literal["thread", "ray"] = Field(
        "thread", description="Where environments (and their sandboxed tools) run: 'thread' in the trainer's process "
        "(steps of different episodes on a thread pool), 'ray' in a pool of Ray actors (needs `entropo[ray]`)."
    )
    env_ray_workers: int = Field(2, ge=1, description="Ray actors hosting environments (env_backend=ray).")
    env_ray_address: str | None = Field(
        None, description="Ray cluster to join (env_backend=ray); None starts a local Ray with this machine's CPUs."
    )


class AggregationConfig(_Section):
    mode: AggregationMode = Field("token-mean", description="How per-token losses become one scalar (DESIGN.md).")
    norm_length: int | None = Field(
        None, description="Constant length for seq-mean-token-sum-norm (Dr.GRPO); None = rollout.max_new_tokens."
    )


class TrainConfig(_Section):
    steps: int = Field(50, ge=0, description="RL steps (one rollout batch and its updates per step).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per epoch (the rollout batch is split).")
    micro_batch_size: int | Literal["auto"] = Field(
        32, description="Rows per forward/backward (gradient accumulation); 'auto' = the most rows whose saved "
        "activations fit in activation_memory_mb (entropo/memory.py), at the longest expected row.")
    activation_memory_mb: float = Field(
        2048.0, gt=0, description="Budget for one micro-batch's saved activations when micro_batch_size=auto or "
        "activation_checkpointing=auto (with both, the rows are chosen first, as if without checkpointing).")

    @field_validator("micro_batch_size")
    @classmethod
    def _positive_micro_batch(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v
    grad_clip: float | None = Field(1.0, description="Max global grad norm (None = no clipping).")
    max_nonfinite_steps: int = Field(
        3, ge=1, description="An optimizer update whose loss or gradient norm is NaN/inf is skipped (metric "
        "actor/nonfinite_skipped); after this many skipped updates in a row the run stops with an error.")
    early_stop: ControllerSpec | None = Field(
        None, description="A controller with a stop_update(metrics) method (e.g. kl_early_stop), asked after each "
        "mini-batch's backward pass: when it says stop, that optimizer step is skipped and the RL step's remaining "
        "mini-batches and epochs are not run (metric actor/early_stopped).")
    snapshot_every: int = Field(
        0, ge=0, description="Steps between frozen snapshots of the policy (the previous iterate pi_t, scored into "
        "Batch.snapshot_logprobs) for components that declare needs_snapshot (INPO); 0 = none. A snapshot is taken at "
        "the start of steps 0, snapshot_every, 2*snapshot_every, ... and checkpointed.")
    logprob_chunk_size: int = Field(1024, ge=1, description="Tokens per chunk in the log-prob/entropy pass.")
    activation_checkpointing: bool | Literal["auto"] = Field(
        False, description="Recompute each decoder layer's activations in the backward pass instead of keeping them: "
        "less memory in the update for about one more forward of compute (the models' gradient checkpointing). "
        "'auto': before each micro-batch, checkpoint only the fewest leading layers whose saved activations keep "
        "that micro-batch (rows x columns) within activation_memory_mb (estimate in entropo/memory.py), so short "
        "micro-batches pay no recomputation; same gradients either way.")
    malloc_mmap_threshold: int | Literal["auto"] = Field(
        "auto", description="glibc's mmap threshold in bytes (Linux): tensors above it get their own mapping, given "
        "back to the system when freed, so freed activations do not stay in the process (entropo/heap.py); each "
        "such allocation costs page faults. 'auto': 256 KiB with model.lora (the adapter update's many mid-size "
        "tensors; 0.57x the peak of glibc's default) and 8 MiB otherwise (full fine-tuning: 256 KiB slowed a "
        "SmolLM2 step by ~35 %, 8 MiB costs no measurable time and keeps 0.3 GB less). 0 keeps glibc's dynamic "
        "default. The environment variable ENTROPO_MMAP_THRESHOLD overrides it.")
    threads: int | None = Field(
        None, ge=1, description="torch intra-op CPU threads (None = torch's default, one per physical core).")
    distributed: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="'ddp': data-parallel over the processes a launcher started (`torchrun --nproc-per-node N "
        "-m entropo train ...` or `accelerate launch -m entropo train ...`; gloo on CPU, NCCL on GPUs): each process "
        "samples its shard of the prompts, the batch is gathered so every whole-batch statistic is global, the update's "
        "rows are split and gradients summed. Rank 0 alone logs, evaluates and writes checkpoints. 'fsdp': the same "
        "split, with the policy's weights, gradients and AdamW moments sharded over the processes (FSDP2, one unit per "
        "decoder layer); rollout, scoring and evaluation run on weights gathered once per step. Not with model.lora "
        "or rollout.engine=vllm (use ddp).")
    dist_timeout_s: float = Field(
        1800.0, gt=0, description="How long a process waits in a collective for the others before failing (a rank "
        "that dies is normally noticed at once by the launcher, which stops the others).")
    old_logprobs: Literal["auto", "recompute", "behaviour"] = Field(
        "auto",
        description="Pre-update log-probs/entropies. 'auto' reuses what the rollout engine recorded while sampling "
        "on every row where that is exact (sampled by these weights at rollout.temperature with top_p = 1 and no "
        "constrained decoding, and no component needs old-pass hooks): equal to a fresh forward up to float rounding "
        "and one forward pass cheaper; the other rows (e.g. a producer's, sampled at another temperature or under "
        "another prompt) get the forward. 'recompute' always runs it on every row. "
        "'behaviour' is 'auto' that also rejects recipes where reuse can never apply (top_p < 1).",
    )


class OptimizerConfig(_Section):
    lr: float = Field(1e-6, gt=0, description="Peak learning rate (AdamW).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="LR schedule after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear LR warm-up steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final LR as a fraction of `lr` (linear/cosine).")
    fused: bool = Field(
        True, description="Use torch's fused AdamW kernel (one pass over each parameter; measured 7x faster than the "
        "multi-tensor 'foreach' step for SmolLM2-135M on CPU). false = the foreach implementation; same update up to "
        "float rounding.")


class EvalConfig(_Section):
    every: int = Field(0, ge=0, description="Evaluate on held-out prompts every this many steps (0 = start/end only).")
    n: int = Field(1, ge=1, description="Samples per prompt for pass@k (1 with temperature 0 = greedy pass@1).")
    k: list[int] = Field(default_factory=lambda: [1], description="k values reported as pass@k (each <= n).")
    temperature: float = Field(0.0, ge=0, description="Eval sampling temperature (0 = greedy).")
    max_prompts: int | None = Field(None, description="Use at most this many held-out prompts.")

    @model_validator(mode="after")
    def _k_le_n(self) -> "EvalConfig":
        bad = [k for k in self.k if k < 1 or k > self.n]
        if bad:
            raise ValueError(f"eval.k values must be between 1 and eval.n={self.n}; got {bad}")
        return self


class LoggingConfig(_Section):
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    run_name: str | None = Field(None, description="Run directory name; None = the recipe name.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files under RUN/tensorboard.")
    wandb: bool = Field(False, description="Log to Weights & Biases (only if installed).")
    mlflow: bool = Field(False, description="Log to MLflow (only if installed).")
    progress: bool = Field(True, description="Show a live progress bar.")
    plots: bool = Field(True, description="Write PNG curves at the end of the run.")


class CheckpointConfig(_Section):
    every: int = Field(10, ge=0, description="Checkpoint every this many steps (0 = only at the end).")
    keep: int = Field(2, ge=1, description="How many recent checkpoints to keep.")


class Recipe(_Section):
    """One RL run, start to finish."""

    @model_validator(mode="after")
    def _behaviour_needs_full_distribution(self) -> "Recipe":
        if self.train.old_logprobs == "behaviour" and self.rollout.top_p < 1:
            raise ValueError("train.old_logprobs=behaviour needs rollout.top_p=1 (with top-p the sampling distribution "
                             "is truncated and its log-probs differ from the policy's); use 'recompute'")
        return self

    name: str = Field("run", description="Recipe name (default run directory name).")
    paper: str | None = Field(None, description="Title and arXiv id of the paper the recipe implements.")
    description: str | None = Field(None, description="One line about what the recipe does.")
    imports: list[str] = Field(
        default_factory=list, description="Plugin modules to import (e.g. my_pkg.plugins) before the components are "
        "checked, so the components they @register can be named by plain name; `entropo train --import` adds to it.")
    seed: int = Field(0, description="Seeds model init, data order, sampling and every random choice.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    task: TaskConfig = Field(default_factory=lambda: TaskConfig(name="arithmetic"))
    environment: Component = Field(
        default_factory=lambda: Component(name="single_turn"),
        description="What the policy acts in (registry kind 'environment', or an import path 'pkg.mod:Class'): "
        "'single_turn' (one completion per prompt), 'python_tool' (a sandboxed interpreter), 'tools' (typed Python "
        "functions), or your own Environment subclass. Built fresh for every episode with these params.",
    )
    sampler: Component = Field(
        default_factory=lambda: Component(name="uniform"),
        description="Which training prompts each step sees: 'uniform' (shuffled epochs) or a curriculum ('dump').",
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="correct")], description="Weighted-sum reward terms."
    )
    reward_timeout_s: float = Field(5.0, gt=0, description="Per-sample time limit of each reward function.")
    reward_isolation: Literal["inline", "process"] = Field(
        "inline", description="Where reward functions run. 'inline': in the trainer process, stopped at the time limit "
        "by a signal (or, off the main thread, abandoned), which cannot stop a long C call. 'process': each reward "
        "in its own worker process, killed at the limit (a hard limit; the task must be picklable).")
    reward_budget_s: float | None = Field(
        None, gt=0, description="Per-step time budget of each reward function (None = none): once a reward has used "
        "it in a step, its remaining samples of that step fail at once (failure value), counted in the metric "
        "reward/budget_exhausted with a warning.")
    advantage: Component = Field(default_factory=lambda: Component(name="grpo"))
    shaping: list[Component] = Field(default_factory=list, description="Reward/advantage shaping, in order.")
    producers: list[Component] = Field(
        default_factory=list, description="Components that add rows at rollout time, in order (e.g. aepo's "
        "temperature samples, critique_refine's refinements); their rows are scored and updated with the batch.")
    selection: list[Component] = Field(default_factory=list, description="Sample filters (e.g. dynamic_sampling).")
    objective: Component = Field(default_factory=lambda: Component(name="ppo_clip"))
    regularizers: list[RegularizerSpec] = Field(default_factory=list, description="Extra loss terms.")
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("name must be a plain file name (no '/')")
        return v

    def needs_reference(self) -> bool:
        """True when some active component declares ``needs_ref`` (then a frozen reference model is loaded)."""
        for spec in self.regularizers:
            if registry.meta("regularizer", spec.name).get("needs_ref") and (spec.coef != 0 or spec.controller):
                return True
        if registry.meta("objective", self.objective.name).get("needs_ref"):  # e.g. DPO's log-ratio to pi_ref
            return True
        return any(registry.meta("shaping", s.name).get("needs_ref") for s in self.shaping)

    def needs_snapshot(self) -> bool:
        """True when the objective declares ``needs_snapshot`` (log-probs of a periodically refreshed frozen copy of
        the policy, ``train.snapshot_every``); check_components insists on snapshot_every > 0 then."""
        return bool(registry.meta("objective", self.objective.name).get("needs_snapshot"))


# ---- component-name and params checks -------------------------------------------------------------------------------

def _check_component(kind: str, comp: Component, where: str, skip_params: tuple[str, ...] = ()) -> None:
    if registry.is_import_path(comp.name):
        try:
            fn = registry.get(kind, comp.name)
        except registry.ComponentImportError as e:
            raise ConfigError(f"{where}.name: {e}") from e.__cause__
    else:
        allowed = registry.names(kind)
        if comp.name not in allowed:
            raise ConfigError(f"{where}.name: unknown {kind} {comp.name!r}. Allowed: {', '.join(allowed)}"
                              f"{registry.import_path_hint(comp.name)}")
        fn = registry.get(kind, comp.name)
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        # a class without its own __init__ (object's takes *args, **kwargs) accepts no params
        sig = inspect.Signature() if target is object.__init__ else inspect.signature(target)
    except (TypeError, ValueError):  # no introspectable signature (a builtin): the call itself reports bad params
        return
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [
        n for n, p in sig.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in ("self",) + skip_params
    ]
    unknown = [k for k in comp.params if k not in accepted]
    if unknown:
        raise ConfigError(
            f"{where}.params: unknown parameter(s) {', '.join(map(repr, unknown))} for {kind} {comp.name!r}. "
            f"Allowed: {', '.join(accepted) or '(none)'}"
        )


# First positional arguments of each kind's signature are data, not params.
_DATA_ARGS = {
    "advantage": ("batch", "step_ctx"),
    "objective": ("logprobs", "old_logprobs", "advantages", "mask", "extras", "micro_batch", "step_ctx"),
    "regularizer": ("ctx", "step_ctx"),
    "selection": ("batch", "step_ctx"),
    "shaping": ("batch", "step_ctx"),
    "producer": ("batch", "ctx"),
    "reward": ("sample",),
    "task": ("seed", "eval_size"),
    "controller": (),
    "engine": ("model", "tokenizer"),
    "sampler": ("task", "seed"),
    "environment": (),
}


def check_components(recipe: Recipe) -> None:
    """Import the recipe's plugin modules, then check every named component exists and its params match its
    signature; raise ConfigError otherwise."""
    import_plugins(recipe.imports, "imports.{i}")
    c = _check_component
    c("task", recipe.task, "task", _DATA_ARGS["task"])
    c("sampler", recipe.sampler, "sampler", _DATA_ARGS["sampler"])
    c("environment", recipe.environment, "environment", _DATA_ARGS["environment"])
    if recipe.warmup.task is not None:
        c("task", recipe.warmup.task, "warmup.task", _DATA_ARGS["task"])
    c("engine", Component(name=recipe.rollout.engine, params=recipe.rollout.engine_params), "rollout.engine",
      ("model", "tokenizer", "chat_template", "max_batch_size"))
    for i, r in enumerate(recipe.rewards):
        c("reward", r, f"rewards.{i}", _DATA_ARGS["reward"])
    c("advantage", recipe.advantage, "advantage", _DATA_ARGS["advantage"])
    for i, s in enumerate(recipe.shaping):
        c("shaping", s, f"shaping.{i}", _DATA_ARGS["shaping"])
    for i, s in enumerate(recipe.selection):
        c("selection", s, f"selection.{i}", _DATA_ARGS["selection"])
    for i, p in enumerate(recipe.producers):
        c("producer", p, f"producers.{i}", _DATA_ARGS["producer"])
    c("objective", recipe.objective, "objective", _DATA_ARGS["objective"])
    if recipe.needs_snapshot() and recipe.train.snapshot_every == 0:
        raise ConfigError(f"train.snapshot_every: objective {recipe.objective.name!r} needs a snapshot of the policy "
                          f"(the previous iterate); set train.snapshot_every to the steps per iteration, e.g. 10")
    for i, r in enumerate(recipe.regularizers):
        c("regularizer", r, f"regularizers.{i}", _DATA_ARGS["regularizer"])
        if r.controller is not None:
            c("controller", r.controller, f"regularizers.{i}.controller", _DATA_ARGS["controller"])
    if recipe.train.early_stop is not None:
        c("controller", recipe.train.early_stop, "train.early_stop", _DATA_ARGS["controller"])
        if not callable(getattr(registry.get("controller", recipe.train.early_stop.name), "stop_update", None)):
            raise ConfigError(f"train.early_stop.name: controller {recipe.train.early_stop.name!r} has no "
                              f"stop_update(metrics) method; use e.g. kl_early_stop")
    if not recipe.rewards:
        raise ConfigError("rewards: at least one reward is needed, e.g. [{name: correct}]")


def import_plugins(modules: list[str], what: str = "--import") -> None:
    """Import plugin modules (``--import``, a recipe's ``imports``); a failure is one ConfigError naming the module."""
    try:
        registry.import_modules(modules, what)
    except registry.PluginImportError as e:
        raise ConfigError(str(e)) from e.__cause__


# ---- loading ----------------------------------------------------------------------------------------------------

def _fmt_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid recipe {source}:"]
    for e in err.errors():
        loc = _fmt_loc(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            model: Any = Recipe
            for p in parent:
                f = model.model_fields.get(p) if isinstance(p, str) and hasattr(model, "model_fields") else None
                ann = getattr(f, "annotation", None) if f else None
                model = ann if inspect.isclass(ann) and issubclass(ann, BaseModel) else None
                if model is None:
                    break
            allowed = ", ".join(model.model_fields) if model is not None else "see the docs"
            msg = f"unknown field. Allowed here: {allowed}"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif e["type"] == "missing":
            msg = "field required"
        else:
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading, plus YAML 1.2 floats: ``1e-3`` is a number, not the string PyYAML makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse recipe YAML (files and ``--set`` values) with ``1e-5``-style floats read as numbers."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a','b','c'], yaml-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. optimizer.lr=1e-5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key part; use a dotted path like objective.params.clip_high")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw recipe dict (list items addressed by index, e.g. rewards.0.weight=2)."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            here = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item}: {here} is not an index of a list of {len(node)} items")
                node = node[int(part)]
            else:
                if part not in node or node[part] is None:
                    node[part] = {}
                node = node[part]
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {item}: {here} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"--set {item}: {'.'.join(path)} is not an index of a list of {len(node)} items")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _defaults_dict() -> dict[str, Any]:
    return Recipe().model_dump(mode="json", exclude_defaults=False)


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None, check: bool = True,
                imports: list[str] | None = None) -> Recipe:
    """Load a recipe YAML (None = built-in defaults), apply ``--set`` overrides, validate everything.

    ``imports``: plugin modules (``entropo train --import``) imported before the recipe is validated; they are added
    in front of the recipe's own ``imports`` so the run directory's recipe.yaml records them."""
    source = str(path) if path else "(defaults)"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"recipe file not found: {p}. List the shipped recipes with `entropo recipes`.")
        try:
            loaded = yaml_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{p}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a recipe must be a YAML mapping (key: value), got {type(loaded).__name__}")
        data = loaded
        data.setdefault("name", p.stem)
        if "program" in data:
            raise ConfigError(f"{p}: recipe {data['name']!r} is a program (an inference-time method, no training): "
                              f"run it with `entropo run {data['name']}`")
    return recipe_from_dict(data, overrides, check=check, imports=imports, source=source)


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None, *, check: bool = True,
                     imports: list[str] | None = None, source: str = "(dict)") -> Recipe:
    """Validate a raw recipe mapping (what a recipe file holds) after ``--set`` overrides; ``data`` is not modified.
    ``imports`` as in ``load_recipe``; ``source`` names the recipe in error messages."""
    data = copy.deepcopy(dict(data))
    if imports:
        import_plugins(list(imports))
    if overrides:
        # Overrides may address fields the file leaves at their defaults (e.g. regularizers.0.coef): merge defaults
        # for list-valued sections only when the path needs them.
        base = _defaults_dict()
        for item in overrides:
            head = parse_override(item)[0][0]
            if head not in data and head in base:
                data[head] = base[head]
        data = apply_overrides(data, overrides)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    if imports:
        recipe.imports = list(dict.fromkeys([*imports, *recipe.imports]))
    if check:
        check_components(recipe)
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
