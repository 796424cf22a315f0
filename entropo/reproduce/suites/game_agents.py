"""Language agents that play games (suite ``games``): PORTAL (reduced) and Steering the Herd.

* ``portal_duel`` (PORTAL: Agents Play Thousands of 3D Video Games, arXiv 2503.13356): per seed, recipe
  ``portal_duel`` (tiny model, SFT warm-up on seeded random valid behaviour trees, then GRPO with the duel outcome as
  the reward); the held-out win rate of sampled programs against the five scripted opponents (one held-out duel per
  eval prompt, 4 programs per prompt at temperature 1) right after the warm-up and after RL, paired by seed. The
  trained model's greedy program per opponent and its held-out win rate are listed too, beside the scripted trees.
* ``herd_welfare`` (Steering the Herd: A Framework for LLM-based Control of Social Learning, arXiv 2504.02648):
  program ``herd_planner`` per seed (the seed drives the Monte-Carlo play; value iteration is deterministic): the
  altruistic planner's objective vs every fixed precision, and the agents' discounted welfare under the altruistic
  planner, the fixed default precision and the biased planner.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from entropo.reproduce.experiments import HELD, INCONCLUSIVE, NOT_HELD, CustomResult, Experiment

PORTAL = "PORTAL: Agents Play Thousands of 3D Video Games, arXiv 2503.13356"
HERD = "Steering the Herd: A Framework for LLM-based Control of Social Learning, arXiv 2504.02648"
RECIPES = Path(__file__).resolve().parent.parent.parent / "recipes"

ARMS: dict = {}


def _paired(name: str, a: list[float], b: list[float], margin: float = 0.0) -> dict:
    diffs = [x - y for x, y in zip(a, b)]
    verdict = HELD if all(d > margin for d in diffs) else NOT_HELD if all(d <= 0 for d in diffs) else INCONCLUSIVE
    detail = f"{np.mean(a):.3f} vs {np.mean(b):.3f}; per-seed differences {', '.join(f'{d:+.3f}' for d in diffs)}"
    return {"check": name, "detail": detail, "verdict": verdict}


def _combine(checks: list[dict]) -> str:
    verdicts = [c["verdict"] for c in checks]
    return HELD if all(v == HELD for v in verdicts) else NOT_HELD if NOT_HELD in verdicts else INCONCLUSIVE


def greedy_programs(final_model: str, task, max_new_tokens: int) -> dict[str, dict]:
    """The trained model's greedy program for each opponent and its win rate on that opponent's held-out duels."""
    import torch

    from entropo.games.portal import evaluate_program, extract_program
    from entropo.models import load as load_model

    model, tokenizer = load_model(final_model)
    model.eval()
    evals = task.eval_examples()
    out = {}
    for opponent in task.opponents:
        exs = [e for e in evals if e.meta["opponent"] == opponent]
        prompt = exs[0].prompt
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt")
        else:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        program = extract_program(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        r = evaluate_program(program, opponent, [e.meta["duel_seeds"][0] for e in exs])
        out[opponent] = {"program": program, "valid": r["valid"], "win_rate": r["wins"] / len(exs)}
    return out


def scripted_baselines(task) -> dict[str, float]:
    """Held-out win rate (all opponents) of each scripted tree played as the program, for scale."""
    from entropo.games.portal import OPPONENTS, evaluate_program

    evals = task.eval_examples()
    res = {}
    for name, text in OPPONENTS.items():
        if text is None:
            continue
        wins = sum(evaluate_program(text, e.meta["opponent"], e.meta["duel_seeds"])["wins"] for e in evals)
        res[name] = wins / len(evals)
    return res


def run_portal(cfg, out_dir: Path, console) -> CustomResult:
    from entropo.api import load_recipe
    from entropo.logging import read_metrics
    from entropo.trainer import make_task, train

    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for seed in range(cfg.seeds):
        overrides = [f"seed={seed}", f"train.steps={cfg.steps}", "eval.every=0", "logging.progress=false",
                     "logging.tensorboard=false", "logging.plots=false", "checkpoint.every=0", "checkpoint.keep=1",
                     *cfg.overrides]
        recipe = load_recipe(RECIPES / "portal_duel.yaml", overrides)
        run_dir = out_dir / f"seed{seed}"
        summary_file = run_dir / "summary.json"
        if summary_file.exists():
            summary = json.loads(summary_file.read_text())
            console(f"  portal_duel seed {seed}: reusing {run_dir}")
        else:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            summary = train(recipe, run_dir=run_dir / "train", console=lambda *_: None)
            task = make_task(recipe.task, recipe.seed, recipe.task.eval_size, "task")
            summary["greedy"] = greedy_programs(summary["final_model"], task, recipe.rollout.max_new_tokens)
            summary["scripted"] = scripted_baselines(task)
            rows = [r for r in read_metrics(run_dir / "train") if "reward/term/portal_valid" in r]
            summary["valid_first_step"] = rows[0]["reward/term/portal_valid"] if rows else float("nan")
            summary["valid_last_step"] = rows[-1]["reward/term/portal_valid"] if rows else float("nan")
            summary["reward_first_step"] = rows[0]["reward/term/portal_duel"] if rows else float("nan")
            summary["reward_last5"] = float(np.mean([r["reward/term/portal_duel"] for r in rows[-5:]])) if rows \
                else float("nan")
            summary_file.write_text(json.dumps(summary, indent=1, default=str))
        row = {"seed": seed, "sft": summary["eval_start"]["accuracy"], "rl": summary["eval_end"]["accuracy"],
               "valid0": summary["valid_first_step"], "valid1": summary["valid_last_step"],
               "reward0": summary["reward_first_step"], "reward1": summary["reward_last5"],
               "greedy": summary["greedy"], "scripted": summary["scripted"]}
        per_seed.append(row)
        console(f"  portal_duel seed {seed}: held-out win rate SFT {row['sft']:.3f} -> RL {row['rl']:.3f}; valid "
                f"programs {row['valid0']:.2f} -> {row['valid1']:.2f}; greedy: "
                + "; ".join(f"{o} {g['program']} ({g['win_rate']:.2f})" for o, g in row["greedy"].items()))
    col = lambda k: [r[k] for r in per_seed]  # noqa: E731
    checks = [_paired("held-out win rate vs scripted opponents: after RL > after the SFT warm-up", col("rl"),
                      col("sft"))]
    lines = ["| seed | win rate SFT | win rate RL | valid programs first / last step | train reward first / last 5 |",
             "|---|---|---|---|---|"]
    for r in per_seed:
        lines.append(f"| {r['seed']} | {r['sft']:.3f} | {r['rl']:.3f} | {r['valid0']:.2f} / {r['valid1']:.2f} | "
                     f"{r['reward0']:.3f} / {r['reward1']:.3f} |")
    lines += ["", "Greedy program per opponent after RL (held-out win rate vs that opponent):", ""]
    for r in per_seed:
        lines.append(f"- seed {r['seed']}: " + "; ".join(f"{o}: `{g['program']}` ({g['win_rate']:.2f})"
                                                        for o, g in r["greedy"].items()))
    lines.append("- scripted trees played as the program (win rate over all held-out duels): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in per_seed[0]["scripted"].items()))
    measured = (f"held-out win rate (sampled programs, T=1) after SFT {np.mean(col('sft')):.3f} -> after RL "
                f"{np.mean(col('rl')):.3f} (per seed {', '.join(f'{a:.3f}->{b:.3f}' for a, b in zip(col('sft'), col('rl')))})")
    return CustomResult(_combine(checks), measured, checks, lines=lines, values={"per_seed": per_seed})


def run_herd(cfg, out_dir: Path, console) -> CustomResult:
    from entropo.games.herd import herd_planner

    out_dir.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for seed in range(cfg.seeds):
        res = herd_planner(out_dir / f"seed{seed}", seed=seed, console=console, episodes=20000, horizon=80)
        alt, bia = res["altruistic"], res["biased"]
        best_fixed = alt["fixed"][alt["best_fixed_q"]]
        per_seed.append({
            "seed": seed, "alt_obj": alt["objective"], "alt_obj_mc": alt["mc"]["objective"],
            "best_fixed_q": alt["best_fixed_q"], "best_fixed_obj": best_fixed["objective"],
            "best_fixed_obj_mc": best_fixed["mc"]["objective"],
            "w_alt": alt["mc"]["welfare"], "w_alt_se": alt["mc"]["welfare_se"],
            "w_default": alt["fixed"]["0.700"]["mc"]["welfare"], "w_biased": bia["mc"]["welfare"],
            "w_alt_exact": alt["welfare"], "w_default_exact": alt["default_q"]["welfare"],
            "w_biased_exact": bia["welfare"], "obfuscation": bia["obfuscation_frac"],
            "convexity_gap": alt["convexity_gap"], "convexity_gap_learning": alt["convexity_gap_learning"],
        })
    col = lambda k: [r[k] for r in per_seed]  # noqa: E731
    checks = [
        _paired("altruistic planner's objective (Monte-Carlo): optimal policy > best fixed precision",
                col("alt_obj_mc"), col("best_fixed_obj_mc")),
        _paired("agents' welfare (Monte-Carlo): altruistic planner > fixed default precision 0.7",
                col("w_alt"), col("w_default")),
        _paired("agents' welfare (Monte-Carlo): fixed default precision 0.7 > biased planner",
                col("w_default"), col("w_biased")),
    ]
    lines = ["| seed | objective optimal / best fixed q (MC) | welfare altruistic / default 0.7 / biased (MC) | "
             "exact on grid | biased obfuscates on |", "|---|---|---|---|---|"]
    for r in per_seed:
        lines.append(f"| {r['seed']} | {r['alt_obj_mc']:.3f} / {r['best_fixed_obj_mc']:.3f} (q={r['best_fixed_q']}) | "
                     f"{r['w_alt']:.3f} / {r['w_default']:.3f} / {r['w_biased']:.3f} | "
                     f"{r['w_alt_exact']:.3f} / {r['w_default_exact']:.3f} / {r['w_biased_exact']:.3f} | "
                     f"{r['obfuscation']:.0%} of beliefs |")
    lines.append("")
    lines.append(f"Altruistic V: most negative second difference {per_seed[0]['convexity_gap_learning']:.4f} on the "
                 f"learning region (1 - q_max, q_max) vs {per_seed[0]['convexity_gap']:.3f} over the whole grid (the "
                 f"jumps at the cascade boundaries of binary signals); V(0.5) = {per_seed[0]['alt_obj']:.3f}.")
    measured = (f"agents' discounted welfare from pi=0.5: altruistic {np.mean(col('w_alt')):.3f}, fixed default "
                f"{np.mean(col('w_default')):.3f}, biased {np.mean(col('w_biased')):.3f}; altruistic objective "
                f"{np.mean(col('alt_obj_mc')):.3f} vs best fixed {np.mean(col('best_fixed_obj_mc')):.3f}")
    return CustomResult(_combine(checks), measured, checks, lines=lines, values={"per_seed": per_seed})


EXPERIMENTS = [
    Experiment(
        "portal_duel", "PORTAL (reduced): RL on behaviour-tree programs for a grid duel", PORTAL,
        "A language policy that writes behaviour trees in a DSL, executed by a game simulator, improves its win "
        "rate against scripted opponents when the game's outcome drives the policy (here: GRPO on the program text).",
        [], [], kind="custom", suite="games", steps=40, run=run_portal,
        note="Tiny character-level model, 150 SFT steps on seeded random valid programs, then 40 GRPO steps of 8 "
             "prompts x 8 programs, reward = mean score of 4 training duels (win 1, draw 0.5, loss 0; malformed "
             "program 0). Win rate: 100 held-out prompts (20 per opponent: rusher, brawler, kiter, turtle, random), "
             "one held-out duel seed each, 4 sampled programs per prompt; paired by seed (the same run's start and "
             "end eval).",
    ),
    Experiment(
        "herd_welfare", "Steering the Herd: optimal precision vs fixed precision, welfare shift", HERD,
        "The planner's optimal precision policy (value iteration over the public belief) beats fixed precision; "
        "information mediation shifts the agents' welfare in either direction: up under an altruistic planner, down "
        "under a biased one (who obfuscates on some beliefs).",
        [], [], kind="custom", suite="games", steps=None, run=run_herd,
        note="Binary-symmetric signals, q in 9 levels on [0.5, 0.9], cost 0.5 (q - 0.7)^2, discount 0.9, prior 0.5; "
             "201-point belief grid; 20,000 Monte-Carlo episodes of 80 agents per policy and seed (exact beliefs).",
    ),
]
