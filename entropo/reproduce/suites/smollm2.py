"""``entropo reproduce --scale smollm2``: the entropy methods on a real model, where their effects can show.

SmolLM2-135M-Instruct on 1-digit, 3-term addition with a short chain of thought (``repro_smollm2``
recipe), GRPO and every entropy method of the quick suite as arms of that one recipe: only the method's own
components change, so every arm shares the model, task, sampling, optimizer and the 4 mini-batches per step (the
released Clip-Cov / STEER scripts take 8 / 16 off-policy mini-batches per step; KL-Cov's penalty is zero without one).
The methods whose released code selects or weights tokens per micro-batch with the current log-probs (Clip-Cov,
KL-Cov, STEER) run in both scopes: ``scope=batch`` (entropo's default, whole batch with pi_old) and ``scope=micro``
(the released behaviour).

Hyper-parameters were chosen once, from the papers and their released scripts, before any profile run; the table is
in docs/reproduce_smollm2.md. Scale knobs for a GPU machine go through ``--set`` (e.g. ``--set
rollout.prompts_per_step=32 --set model.name_or_path=...``) and ``--steps``; ``--budget-min 9`` bounds one call.
"""

from __future__ import annotations

from entropo.reproduce.experiments import Arm, Compare, Experiment, NotWorse, Profile, Within

EM = "The Entropy Mechanism of RL for Reasoning LMs, arXiv 2505.22617"
BASE = "repro_smollm2"

# AEPO's two targets: well below the base model's token entropy on this task at T = 1 (1.69 nats, measured on the base
# model's first batch before any update: docs/reproduce_smollm2.md), where GRPO is expected to pass on its way down;
# the paper's knobs T_high 1.2 / T_low 0.8.
AEPO_LOW, AEPO_HIGH = 0.5, 1.0
SKYWORK_TARGET = 0.2  # Skywork-OR1's released 7B script (tgt-ent 0.2, delta 1e-4, coef in [0, 0.005])


def _objective(name: str, **params) -> str:
    body = ", ".join(f"{k}: {v}" for k, v in params.items())
    return f"objective={{name: {name}, params: {{{body}}}}}"


CLIP_COV = dict(clip_low=1.0, clip_high=1.0, clip_cov_ratio=2.0e-4, clip_cov_lb=1.0, clip_cov_ub=5.0)
KL_COV = dict(kl_cov_ratio=2.0e-3, kl_coef=1.0)
STEER = dict(clip_low=0.2, clip_high=0.28, clip_c=10.0, lambda_min=0.8, lambda_max=1.0, mapping="exp")
LP_REG = dict(clip_low=1.0, clip_high=9.0, beta=1.0, min_p=0.02, proxy="min_p", neg_fraction=0.01, pos_fraction=0.0)

ARMS: dict[str, Arm] = {
    "s2_grpo": Arm(BASE, [], "GRPO (clip 0.2/0.28, token-mean, no KL)"),
    "s2_clip_cov": Arm(BASE, [_objective("clip_cov", **CLIP_COV)], "Clip-Cov, whole-batch selection (scope=batch)"),
    "s2_clip_cov_micro": Arm(BASE, [_objective("clip_cov", **CLIP_COV, scope="micro")],
                             "Clip-Cov, per-micro-batch selection with current log-probs (released code)"),
    "s2_kl_cov": Arm(BASE, [_objective("kl_cov", **KL_COV)], "KL-Cov, whole-batch selection (scope=batch)"),
    "s2_kl_cov_micro": Arm(BASE, [_objective("kl_cov", **KL_COV, scope="micro")],
                           "KL-Cov, per-micro-batch selection with current log-probs (released code)"),
    "s2_aepo_low": Arm(BASE, ["producers=[{name: aepo, params: {target_entropy: %s, temperature_high: 1.2, "
                              "temperature_low: 0.8, prompt_fraction: 0.5, max_samples: 60, threshold: 0.05, "
                              "mix: add}}]" % AEPO_LOW], f"AEPO, target entropy {AEPO_LOW}"),
    "s2_aepo_high": Arm(BASE, ["producers=[{name: aepo, params: {target_entropy: %s, temperature_high: 1.2, "
                               "temperature_low: 0.8, prompt_fraction: 0.5, max_samples: 60, threshold: 0.05, "
                               "mix: add}}]" % AEPO_HIGH], f"AEPO, target entropy {AEPO_HIGH}"),
    "s2_epo": Arm(BASE, ["regularizers=[{name: epo, coef: 0.001, params: {smooth_coef: 1.0, kappa_low: 0.0, "
                         "kappa_high: 2.0, beta_out: 0.05, mode: band_distance, phase_weighting: true, "
                         "phase_steps: {steps}, apply_from_turn: 0}}]"],
                  "EPO: entropy bonus c_H 0.001 + smoothing band (0, 2)·H_bar, beta_out 0.05, phase weight"),
    "s2_adaptive_entropy": Arm(BASE, ["regularizers=[{name: entropy, coef: 0.0, controller: {name: adaptive_entropy, "
                                      f"params: {{init_coef: 0.0, target: {SKYWORK_TARGET}, delta: 1.0e-4, "
                                      "coef_min: 0.0, coef_max: 0.005}}}]"],
                               f"entropy bonus, adaptive coefficient (Skywork-OR1), target {SKYWORK_TARGET}"),
    "s2_steer": Arm(BASE, [_objective("steer", **STEER)], "STEER, whole-batch weights (scope=batch)"),
    "s2_steer_micro": Arm(BASE, [_objective("steer", **STEER, scope="micro")],
                          "STEER, per-micro-batch weights with current log-probs (released code)"),
    "s2_siren": Arm(BASE, ["regularizers=[{name: siren, coef: 0.005, params: {top_p: 0.8, top_k: 10000, "
                           "quantile: 0.8}}]"], "SIREN, lambda 0.005, top-p 0.8, top-20 % tokens"),
    "s2_lp_reg": Arm(BASE, [_objective("lp_reg", **LP_REG)], "Lp-Reg, 1 % lowest-probability negative tokens"),
}

# The CPU profile's task (see PROFILES): the arithmetic task's default direct-answer template, two 1-digit terms
# (81 problems: 32 held out, 49 to train on).
CPU_TASK = ["task.params.template=What is {expr}? Answer with just the number.", "task.params.num_terms=2",
            "task.eval_size=32", "rollout.max_new_tokens=16", "rollout.prompts_per_step=4"]

ENTROPY_MARGIN = 0.02
PASS_TOL = 0.03


def _keeps_entropy(arm: str) -> list:
    """The common claim of the entropy-preserving methods, as checks against GRPO (paired by seed)."""
    return [Compare("entropy_last_third", arm, "s2_grpo", margin=ENTROPY_MARGIN),
            NotWorse("eval_pass@1", arm, "s2_grpo", tol=PASS_TOL), NotWorse("eval_pass@8", arm, "s2_grpo", tol=PASS_TOL)]


CURVES = ["accuracy", "entropy/mean", "eval/pass@8", "response/length_mean"]
PASS_AT_K = ["eval_pass@1", "eval_pass@8"]

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "s2_entropy_mechanism", "S1. SmolLM2 GRPO: entropy collapse and R = -a·e^H + b", EM,
        "Without intervention, entropy falls sharply early and accuracy saturates; accuracy follows R = -a·e^H + b, "
        "whose value at H = 0 (-a + b) predicts the ceiling the run reaches.",
        ["s2_grpo"],
        [Within("entropy_drop", "s2_grpo", low=0.0), Within("entropy_deceleration", "s2_grpo", low=0.0),
         Within("fit_r2", "s2_grpo", low=0.5), Within("ceiling_gap", "s2_grpo", high=0.1)],
        extra_plots=["fit"], extra_measures=["fit_ceiling", "accuracy_final"], suite="smollm2",
        note="Predicted ceiling = the fit's -a + b; reached = train accuracy over the last 10 % of steps. The fit "
             "uses the run's steps binned into 10 windows (as the quick suite).",
    ),
    Experiment(
        "s2_clip_cov", "S2. SmolLM2 Clip-Cov and KL-Cov vs GRPO, both scopes", EM,
        "Clip-Cov and KL-Cov keep entropy above GRPO's at equal steps, at equal or better pass@1 / pass@8.",
        ["s2_grpo", "s2_clip_cov", "s2_clip_cov_micro", "s2_kl_cov", "s2_kl_cov_micro"],
        [c for arm in ("s2_clip_cov", "s2_clip_cov_micro", "s2_kl_cov", "s2_kl_cov_micro") for c in _keeps_entropy(arm)],
        curves=CURVES, suite="smollm2",
        note="scope=batch selects tokens once per step over the whole batch with the pre-update log-probs; "
             "scope=micro per micro-batch with the current log-probs, as the released verl code. Fractions as in "
             "the paper's scripts (Clip-Cov 2e-4, KL-Cov 0.2 % = 2e-3) with max(1, ·) tokens per selection, so at "
             "this batch size the micro scope selects more tokens per step than the batch scope.",
    ),
    Experiment(
        "s2_entropy_targets", "S3. SmolLM2 AEPO targets, EPO, adaptive entropy coefficient",
        "AEPO arXiv 2510.08141; EPO arXiv 2509.22576; Skywork-OR1 arXiv 2505.22312",
        f"AEPO holds entropy at an arbitrary target (two targets: {AEPO_LOW} and {AEPO_HIGH}); EPO keeps entropy "
        "inside its band around the historical mean; the adaptive entropy coefficient brings entropy to its target "
        f"({SKYWORK_TARGET}).",
        ["s2_grpo", "s2_aepo_low", "s2_aepo_high", "s2_epo", "s2_adaptive_entropy"],
        [Within("entropy_last_third", "s2_aepo_low", AEPO_LOW * 0.8, AEPO_LOW * 1.2),
         Within("entropy_last_third", "s2_aepo_high", AEPO_HIGH * 0.8, AEPO_HIGH * 1.2),
         Within("epo_band_inside", "s2_epo", low=0.9),
         Within("entropy_last_third", "s2_adaptive_entropy", SKYWORK_TARGET * 0.8, SKYWORK_TARGET * 1.2),
         *(NotWorse(m, arm, "s2_grpo", tol=PASS_TOL) for arm in ("s2_aepo_low", "s2_aepo_high", "s2_epo",
                                                                 "s2_adaptive_entropy") for m in PASS_AT_K)],
        curves=CURVES, extra_measures=["epo_band_inside"], suite="smollm2",
        targets={"s2_aepo_low": AEPO_LOW, "s2_aepo_high": AEPO_HIGH, "s2_adaptive_entropy": SKYWORK_TARGET},
        note="A target is held if the last-third mean entropy is within ±20 % of it. EPO's band is its paper's "
             "(0, 2)·H_bar (measured here as the fraction of steps inside (0.8, 1.2)·H_bar, as the quick suite).",
    ),
    Experiment(
        "s2_steer_siren_lpreg", "S4. SmolLM2 STEER (both scopes), SIREN, Lp-Reg vs GRPO",
        "STEER arXiv 2510.10150; SIREN arXiv 2509.25133; Lp-Reg arXiv 2510.03222",
        "Each method keeps entropy from collapsing (higher than GRPO at equal steps) and improves or keeps "
        "pass@1 / pass@8.",
        ["s2_grpo", "s2_steer", "s2_steer_micro", "s2_siren", "s2_lp_reg"],
        [c for arm in ("s2_steer", "s2_steer_micro", "s2_siren", "s2_lp_reg") for c in _keeps_entropy(arm)],
        curves=CURVES, suite="smollm2",
        note="STEER scope=batch: weights from the pre-update policy over the whole batch; scope=micro: from the "
             "current policy with per-micro-batch min/max, as the released code.",
    ),
]

PROFILES = {
    "smollm2": Profile(
        "smollm2", {"seeds": 3, "steps": 100, "eval_size": 64, "eval_n": 8, "eval_every": 0, "checkpoint_every": 5},
        "the entropy methods on SmolLM2-135M-Instruct (a+b+c with a short chain of thought), "
        "3 seeds x 100 steps, held-out pass@1 / pass@8 on 64 prompts x 8 samples"),
    # The same arms and hyper-parameters on a task a 2-core CPU can finish for every arm in a few hours: the chain of
    # thought (~60 response tokens) made one (arm, seed) cost ~2 CPU-hours, i.e. ~50 for the profile. Direct-answer
    # a + b (1 digit, answers of ~10 tokens, at most 16) has the same shape at a fraction of the tokens: the base model
    # starts low at T = 1 (held-out pass@1 0.168, pass@8 0.750 on 32 prompts x 8, measured 2026-11-29) and GRPO's
    # entropy collapses within the run (2.39 -> 0.03 nats in 10 steps of a trial run, accuracy 0.16 -> 1.00). Each
    # run checkpoints every 5 steps, so a killed call loses at most 5 steps.
    "smollm2_cpu": Profile(
        "smollm2", {"seeds": 2, "steps": 16, "eval_size": 32, "eval_n": 8, "eval_every": 0, "checkpoint_every": 5,
                    "overrides": CPU_TASK},
        "the smollm2 arms on direct-answer a+b (1 digit): 2 seeds x 16 steps of 4 prompts x 8 samples, held-out "
        "pass@1 / pass@8 on 32 prompts x 8 samples"),
}
