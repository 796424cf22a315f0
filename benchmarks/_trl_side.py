"""One TRL trial of the side-by-side benchmark (benchmarks/trl_vs_entropo.py runs it as a subprocess).

    python benchmarks/_trl_side.py SPEC.json      # prints one JSON line (the trial result); needs trl (venv-trl)

Runs TRL's ``GRPOTrainer`` on the work a spec describes (the same spec the entropo side gets): the same model folder,
the same prompts in the same order (entropo's sampler schedule, ``shuffle_dataset=False``), the same verifier as
reward, G completions per prompt of exactly ``max_new_tokens`` tokens (``generation_kwargs={"min_new_tokens": L}``),
``num_iterations`` = PPO epochs, ``beta`` = KL coefficient (a reference model only when > 0), ``loss_type="dapo"``
(token-mean over the whole generation batch, like entropo's ``token-mean``), fp32 on the CPU, AdamW, one optimizer
step per PPO epoch. TRL's own memory/speed defaults are kept (``gradient_checkpointing=True`` unless the spec says
otherwise; the fused LM head TRL installs for its log-prob passes).

Phase split, by timing ``GRPOTrainer`` methods in a subclass (one RL step = ``num_iterations`` optimizer steps,
delimited by ``on_step_end`` at every ``num_iterations``-th global step):
  rollout = ``_generate`` (prompt tokenization, ``model.generate``, decoding);
  reward  = ``_calculate_rewards``;
  score   = ``_get_per_token_logps_and_entropies`` called without grad (old-policy pass when ``num_iterations`` > 1,
            reference pass when ``beta`` > 0);
  update  = ``training_step`` minus the generation it triggers (``_generate_and_score_completions`` runs inside the
            first micro-step's ``_prepare_inputs``) + ``_clip_grad_norm`` + ``optimizer.step`` (between the
            ``on_pre_optimizer_step``/``on_optimizer_step`` callbacks);
  step    = wall time between consecutive RL-step ends (everything, including what no phase names).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _entropo_side import RESULT_PREFIX, peak_rss_mb, prompt_schedule, set_threads, total_steps

PHASES = ("rollout_s", "reward_s", "score_s", "gen_score_s", "train_step_s", "clip_s", "optim_s", "gen_tokens",
          "update_tokens", "score_tokens", "batch_tokens")


def trl_config(spec: dict[str, Any], output_dir: str):
    """The GRPOConfig of a spec (see the module docstring for what each choice matches on the entropo side)."""
    from trl import GRPOConfig

    rows = spec["prompts_per_step"] * spec["group_size"]
    if rows % spec["micro_batch_size"]:
        raise ValueError(f"prompts_per_step x group_size = {rows} must be a multiple of micro_batch_size")
    L = int(spec["max_new_tokens"])
    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=spec["micro_batch_size"],
        gradient_accumulation_steps=rows // spec["micro_batch_size"],  # steps_per_generation defaults to this
        num_generations=spec["group_size"],
        max_completion_length=L,
        generation_kwargs={"min_new_tokens": L},
        temperature=spec["temperature"],
        top_p=1.0,
        num_iterations=spec["ppo_epochs"],
        beta=spec["kl_coef"],
        loss_type="dapo",
        epsilon=spec["clip_low"],
        epsilon_high=spec["clip_high"],
        scale_rewards="group",
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=total_steps(spec) * spec["ppo_epochs"],
        shuffle_dataset=False,
        gradient_checkpointing=spec["trl"]["gradient_checkpointing"],
        bf16=False,
        fp16=False,
        use_cpu=True,
        model_init_kwargs={"dtype": "float32"},
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=spec["seed"],
        dataloader_num_workers=0,
    )


def make_trainer_class():
    """GRPOTrainer subclass that accumulates per-phase seconds and token counts into ``self.acc``."""
    import torch
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        def _acc(self) -> defaultdict:
            if not hasattr(self, "_bench_acc"):
                self._bench_acc = defaultdict(float)
            return self._bench_acc

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            self._acc()["rollout_s"] += time.perf_counter() - t0
            return out

        def _calculate_rewards(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*args, **kwargs)
            self._acc()["reward_s"] += time.perf_counter() - t0
            return out

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, *args, **kwargs):
            if torch.is_grad_enabled():  # the training forward: part of the update
                return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, *args, **kwargs)
            t0 = time.perf_counter()
            out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, *args, **kwargs)
            acc = self._acc()
            acc["score_s"] += time.perf_counter() - t0
            acc["score_tokens"] += float(attention_mask.sum())
            return out

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            acc = self._acc()
            acc["gen_score_s"] += time.perf_counter() - t0
            batch_tokens = float(out["prompt_mask"].sum() + out["completion_mask"].sum())
            acc["gen_tokens"] += float(out["completion_mask"].sum())
            acc["batch_tokens"] += batch_tokens
            acc["update_tokens"] += batch_tokens * self.num_iterations
            return out

        def training_step(self, model, inputs, num_items_in_batch):
            acc = self._acc()
            gen_before = acc["gen_score_s"]
            t0 = time.perf_counter()
            out = super().training_step(model, inputs, num_items_in_batch)
            acc["train_step_s"] += time.perf_counter() - t0 - (acc["gen_score_s"] - gen_before)
            return out

        def _clip_grad_norm(self, model):
            t0 = time.perf_counter()
            out = super()._clip_grad_norm(model)
            self._acc()["clip_s"] += time.perf_counter() - t0
            return out

    return TimedGRPOTrainer


def make_step_callback(steps: list[dict[str, float]], ppo_epochs: int):
    """Callback closing an RL step every ``ppo_epochs`` optimizer steps and timing ``optimizer.step``."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_end = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.trainer._acc()["optim_s"] += time.perf_counter() - self.t_opt

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % ppo_epochs:
                return
            now = time.perf_counter()
            acc = self.trainer._acc()
            row = {k: acc.get(k, 0.0) for k in PHASES}
            row["update_s"] = row["train_step_s"] + row["clip_s"] + row["optim_s"]
            row["step_s"] = now - self.last_end
            row["optimizer_steps"] = ppo_epochs
            row["score_passes"] = round(row["score_tokens"] / row["batch_tokens"]) if row["batch_tokens"] else 0
            steps.append(row)
            acc.clear()
            self.last_end = now

    return StepTimer()


def entropo_prompt_ids(tokenizer, prompt) -> list[int]:
    """The token ids entropo's HF engine feeds for ``prompt`` (its own encode_prompt, tokenizer only)."""
    from entropo.rollout.chat import ChatFormat

    # HFEngine.encode_prompt is its ChatFormat's prompt_ids (tokenizer and template mode "auto", the engine default)
    return ChatFormat(tokenizer, "auto").prompt_ids(prompt)


def run_trial(spec: dict[str, Any], work_dir: str | None = None) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    set_threads(spec["threads"])
    schedule, task = prompt_schedule(spec)
    examples = [ex for step in schedule for ex in step]
    dataset = Dataset.from_list([{"prompt": ex.prompt, "example_id": i} for i, ex in enumerate(examples)])

    def correct(completions, example_id, **_kwargs) -> list[float]:
        """entropo's `correct` reward: the task's verifier (last number equals the answer) -> 1.0 / 0.0."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.correct(t, examples[i])) for t, i in zip(texts, example_id)]

    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    steps: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="trl-bench-", dir=work_dir) as tmp:
        args = trl_config(spec, tmp)
        callback = make_step_callback(steps, spec["ppo_epochs"])
        trainer = make_trainer_class()(model=spec["model_path"], reward_funcs=correct, args=args,
                                       train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])
        callback.trainer = trainer
        trl_ids = trainer._tokenize_prompts([examples[0].prompt])[0][0]
        same_prompt_ids = list(trl_ids) == entropo_prompt_ids(tokenizer, examples[0].prompt)
        torch.set_num_threads(spec["threads"])  # in case the trainer set-up changed it
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        rows = spec["prompts_per_step"] * spec["group_size"]
        for row in steps:
            row["response_length_mean"] = row["gen_tokens"] / rows
        config = args.to_dict()
    return {
        "side": "trl",
        "steps": steps,
        "warmup_steps": spec["warmup_steps"],
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "config": json.dumps(config, indent=1, default=str),
        "checks": {"prompt_ids_equal_entropo": same_prompt_ids, "prompt_tokens_first": len(trl_ids)},
        "notes": {"phases": "Phase split" + __doc__.split("Phase split")[1].rstrip()},
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = run_trial(spec, work_dir=os.environ.get("BENCH_TMP"))
    print(RESULT_PREFIX + json.dumps(result))  # libraries print to stdout too: the driver looks for this prefix


if __name__ == "__main__":
    main()
