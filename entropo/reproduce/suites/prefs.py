"""Preference learning on the tiny model (``entropo reproduce --suite preferences``).

- ``prefs_offline_dpo`` (custom): offline DPO (Direct Preference Optimization, arXiv 2305.18290) from the built-in
  seeded arithmetic preferences (recipe ``dpo_offline``). After training, on the held-out pairs (never replayed):
  the implicit-reward margin Delta = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)] (0 for the
  reference itself) and the preference accuracy P[log pi(y_w) > log pi(y_l)] of the policy vs the SFT reference; plus
  the DID diagnostics (arXiv 2505.23761): the sign of the mean held-out chosen log-likelihood change
  log pi(y_w) - log pi_ref(y_w) and the candidate-set DID entropy. The same statistics on as many training pairs are
  reported beside them (not checked), to tell a loss that did not fit from a fit that did not generalise.
- ``prefs_online`` (runs): online DPO and INPO (arXiv 2407.00617) with verifier-labelled pairs vs GRPO (arXiv
  2402.03300), same SFT warm-up, task, prompts and samples per step (the shipped ``grpo`` recipe's).
- ``prefs_offline_dpo_smollm2`` and ``prefs_online_smollm2``: the same two claims on SmolLM2-135M-Instruct (no
  warm-up: the instruct model is the reference). Offline: the built-in arithmetic pairs, TRL's DPOConfig defaults
  (lr 1e-6, beta 0.1). Online: the ``smollm2_addition`` task, prompts, samples and optimizer (lr 1e-5) for all three
  arms. Hyper-parameters were fixed before the first run.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
import torch

from entropo.reproduce.experiments import HELD, INCONCLUSIVE, NOT_HELD, Arm, CustomResult, Experiment, NotWorse

OFFLINE_STEPS = 60


def heldout_pair_stats(policy, reference, engine, examples) -> dict[str, float]:
    """Sequence log-probs of each held-out example's chosen and rejected responses under policy and reference
    (replayed by ``preference_replay``); returns margin, accuracies, chosen log-likelihood change and DID entropy."""
    from entropo import ops
    from entropo.algorithms.preferences import did_entropy

    out = engine.rollout(examples, 2, max_new_tokens=64)
    mask = out.response_mask.float()
    seqs = []
    for model in (policy, reference):
        with torch.no_grad():
            lp, _ = ops.token_logprobs_and_entropy(model, out.input_ids, out.attention_mask, compute_mask=mask)
        seqs.append((lp * mask).sum(-1).view(-1, 2))  # [P, (chosen, rejected)]
    pol, ref = seqs
    r = pol - ref
    return {
        "margin": float((r[:, 0] - r[:, 1]).mean()),
        "pref_acc_policy": float((pol[:, 0] > pol[:, 1]).float().mean()),
        "pref_acc_reference": float((ref[:, 0] > ref[:, 1]).float().mean()),
        "chosen_ll_change": float(r[:, 0].mean()),
        "rejected_ll_change": float(r[:, 1].mean()),
        "did_entropy_pair": float(did_entropy(pol, ref).mean()),
        "pairs": float(pol.shape[0]),
    }


def run_offline(cfg, out_dir: Path, console, recipe_overrides: tuple[str, ...] = ()) -> CustomResult:
    """Train ``dpo_offline`` per seed (plus ``recipe_overrides``, before the user's ``--set``), then score the held-out
    pairs with the final policy and the reference."""
    from entropo import models, registry
    from entropo.config import load_recipe
    from entropo.reproduce.runner import RECIPES_DIR
    from entropo.trainer import make_task, train

    per_seed: list[dict[str, float]] = []
    for seed in range(cfg.seeds):
        run_dir = Path(out_dir) / f"seed{seed}"
        overrides = [f"seed={seed}", f"train.steps={cfg.steps}", "eval.max_prompts=32", "logging.progress=false",
                     "logging.tensorboard=false", "logging.plots=false", "checkpoint.every=0", "checkpoint.keep=1",
                     *recipe_overrides, *cfg.overrides]
        recipe = load_recipe(RECIPES_DIR / "dpo_offline.yaml", overrides)
        if not (run_dir / "final").exists():
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            train(recipe, run_dir=run_dir, console=lambda *_: None)
        policy, tok = models.load(str(run_dir / "final"))
        reference = models.load_reference(policy)
        reference.load_state_dict(torch.load(run_dir / "reference.pt", map_location="cpu", weights_only=True))
        engine = registry.get("engine", "preference_replay")(policy, tok, chat_template=recipe.rollout.chat_template)
        task = make_task(recipe.task, recipe.seed, recipe.task.eval_size, "task")
        stats = heldout_pair_stats(policy.eval(), reference, engine, task.eval_examples())
        # the same statistics on training pairs (seen in training): tells "did not fit" from "did not generalise"
        seen = [task.train_example(i) for i in range(min(len(task.eval_examples()), task.train_size()))]
        train_stats = heldout_pair_stats(policy, reference, engine, seen)
        stats.update({"train_margin": train_stats["margin"], "train_pref_acc_policy": train_stats["pref_acc_policy"],
                      "train_pref_acc_reference": train_stats["pref_acc_reference"]})
        per_seed.append(stats)
        console(f"  {Path(out_dir).name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))

    def verdict(ok: list[bool]) -> str:
        return HELD if all(ok) else NOT_HELD if not any(ok) else INCONCLUSIVE

    margin = [s["margin"] for s in per_seed]
    acc_gain = [s["pref_acc_policy"] - s["pref_acc_reference"] for s in per_seed]
    chosen = [s["chosen_ll_change"] for s in per_seed]
    checks = [
        {"check": "held-out implicit-reward margin of the DPO policy > 0 (the reference's is 0)",
         "detail": "per seed " + ", ".join(f"{m:+.3f}" for m in margin), "verdict": verdict([m > 0 for m in margin])},
        {"check": "held-out preference accuracy P[log pi(y_w) > log pi(y_l)]: DPO policy > SFT reference",
         "detail": "policy - reference per seed " + ", ".join(f"{g:+.3f}" for g in acc_gain)
                   + "; policy " + ", ".join(f"{s['pref_acc_policy']:.3f}" for s in per_seed)
                   + "; reference " + ", ".join(f"{s['pref_acc_reference']:.3f}" for s in per_seed),
         "verdict": verdict([g > 0 for g in acc_gain])},
    ]
    overall = HELD if all(c["verdict"] == HELD for c in checks) else (
        NOT_HELD if any(c["verdict"] == NOT_HELD for c in checks) else INCONCLUSIVE)
    sign = "rose" if all(c > 0 for c in chosen) else "fell" if all(c < 0 for c in chosen) else "mixed"
    entropies = ", ".join(f"{s['did_entropy_pair']:.3f}" for s in per_seed)
    measured = (f"held-out margin {sum(margin) / len(margin):+.3f}, preference-accuracy gain "
                f"{sum(acc_gain) / len(acc_gain):+.3f}; DID: chosen log-likelihood {sign} "
                f"({', '.join(f'{c:+.3f}' for c in chosen)}), candidate-set DID entropy {entropies} "
                f"(max log 2 = {math.log(2):.3f})")
    lines = ["| seed | " + " | ".join(per_seed[0]) + " |", "|---" * (len(per_seed[0]) + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(f"{v:.3f}" for v in s.values()) + " |" for i, s in enumerate(per_seed)]
    return CustomResult(overall, measured, checks, lines, values={"per_seed": per_seed})


EVAL = ["eval.every=0"]

SMOLLM2 = "smollm2-135m-instruct"
# offline DPO on SmolLM2: the instruct model is the reference (no SFT warm-up); TRL DPOConfig's defaults lr 1e-6, beta 0.1
S2_OFFLINE = (f"model.name_or_path={SMOLLM2}", "warmup.steps=0", "optimizer.lr=1.0e-6", "train.micro_batch_size=32")
# online arms on SmolLM2: smollm2_addition's task, sampling and optimizer for all three (equal samples and lr)
S2_ONLINE = [f"model.name_or_path={SMOLLM2}", "warmup.steps=0", "task.name=arithmetic",
             "task.params={digits: 1, chat: true}", "task.eval_size=32", "rollout.prompts_per_step=8", "rollout.n=4",
             "rollout.temperature=0.7", "rollout.max_new_tokens=16", "optimizer.lr=1.0e-5",
             "train.micro_batch_size=16", "train.logprob_chunk_size=256", "eval.every=0", "eval.n=4",
             "eval.k=[1, 4]", "eval.temperature=0.7", "checkpoint.every=5", "checkpoint.keep=1"]

ARMS: dict[str, Arm] = {
    "prefs_dpo_online": Arm("dpo_online", EVAL, "online DPO, verifier pairs (correct > wrong), beta 0.1"),
    "prefs_inpo": Arm("inpo", [*EVAL, "train.snapshot_every=20"], "INPO, eta 0.5, tau 0.4, snapshot every 20 steps"),
    "prefs_grpo_baseline": Arm("grpo", EVAL, "GRPO (shipped grpo recipe: same warm-up, task, 16 prompts x 8)"),
    "prefs_s2_dpo_online": Arm("dpo_online", S2_ONLINE, "SmolLM2: online DPO, verifier pairs, beta 0.1"),
    "prefs_s2_inpo": Arm("inpo", [*S2_ONLINE, "train.snapshot_every=10"],
                         "SmolLM2: INPO, eta 0.5, tau 0.4, snapshot every 10 steps"),
    "prefs_s2_grpo": Arm("smollm2_addition", S2_ONLINE, "SmolLM2: GRPO (the smollm2_addition recipe)"),
}

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "prefs_offline_dpo", "Offline DPO raises the held-out chosen-over-rejected margin",
        "DPO, Direct Preference Optimization, arXiv 2305.18290; DID diagnostics, arXiv 2505.23761",
        "Training on preference pairs with the DPO loss raises the policy's implicit-reward margin of chosen over "
        "rejected responses and its preference accuracy on held-out pairs (over the SFT reference).",
        [], [], kind="custom", run=run_offline, suite="preferences", steps=OFFLINE_STEPS,
        note="Held-out pairs: the task's seeded eval split of the built-in arithmetic preferences, never replayed in "
             "training. Preference accuracy compares whole-response log-probs (not length-normalised).",
    ),
    Experiment(
        "prefs_online", "Online DPO and INPO vs GRPO with a verifier",
        "DPO arXiv 2305.18290 (online/iterative); INPO, Iterative Nash Policy Optimization, arXiv 2407.00617",
        "With a verifier as the preference oracle (correct > wrong), online DPO and INPO trained on the policy's own "
        "samples reach held-out accuracy not worse than GRPO on the same samples.",
        ["prefs_dpo_online", "prefs_inpo", "prefs_grpo_baseline"],
        [NotWorse("eval_accuracy", "prefs_dpo_online", "prefs_grpo_baseline", tol=0.05),
         NotWorse("eval_accuracy", "prefs_inpo", "prefs_grpo_baseline", tol=0.05)],
        curves=["accuracy", "actor/pref_margin", "actor/did_entropy", "entropy/mean"],
        extra_measures=["accuracy_mean"],
        suite="preferences", steps=60,
        note="Same SFT warm-up (150 steps), 16 prompts x 8 samples per step; pairs: up to 2 (correct, wrong) per group. "
             "Groups with all-equal outcomes give no pair (and no GRPO gradient either).",
    ),
    Experiment(
        "prefs_offline_dpo_smollm2", "Offline DPO on SmolLM2-135M raises the held-out chosen-over-rejected margin",
        "DPO, Direct Preference Optimization, arXiv 2305.18290; DID diagnostics, arXiv 2505.23761",
        "Training SmolLM2-135M-Instruct on preference pairs with the DPO loss raises its implicit-reward margin of "
        "chosen over rejected responses and its preference accuracy on held-out pairs (over the instruct model).",
        [], [], kind="custom", run=functools.partial(run_offline, recipe_overrides=S2_OFFLINE), suite="preferences",
        steps=OFFLINE_STEPS,
        note="SmolLM2-135M-Instruct, no warm-up (the reference is the instruct model), lr 1e-6 and beta 0.1 (TRL "
             "DPOConfig defaults), 32 pairs per step; the held-out pairs as in prefs_offline_dpo.",
    ),
    Experiment(
        "prefs_online_smollm2", "Online DPO and INPO vs GRPO with a verifier, on SmolLM2-135M",
        "DPO arXiv 2305.18290 (online/iterative); INPO, Iterative Nash Policy Optimization, arXiv 2407.00617",
        "With a verifier as the preference oracle (correct > wrong), online DPO and INPO trained on SmolLM2's own "
        "samples reach held-out accuracy not worse than GRPO on the same task, samples per step and optimizer.",
        ["prefs_s2_dpo_online", "prefs_s2_inpo", "prefs_s2_grpo"],
        [NotWorse("eval_accuracy", "prefs_s2_dpo_online", "prefs_s2_grpo", tol=0.05),
         NotWorse("eval_accuracy", "prefs_s2_inpo", "prefs_s2_grpo", tol=0.05)],
        curves=["accuracy", "actor/pref_margin", "actor/did_entropy", "entropy/mean"],
        extra_measures=["accuracy_mean"],
        suite="preferences", steps=12,
        note="SmolLM2-135M-Instruct on 'What is a + b?' (1-digit, chat), 8 prompts x 4 samples per step at T = 0.7, "
             "lr 1e-5 for every arm (the smollm2_addition recipe's), 32 held-out problems x 4 samples; pairs: up to "
             "2 (correct, wrong) per group.",
    ),
]
