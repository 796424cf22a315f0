"""Reproduction experiments of the games suite (``entropo reproduce --suite games``), all kind="custom" (no language
model; exact evaluation on OpenSpiel's Kuhn poker and Leduc hold'em):

- ``mmd_kuhn``: magnetic mirror descent as a learning dynamic: its last iterate's exploitability on Kuhn poker;
- ``mds_kuhn`` / ``mds_leduc``: update-equivalence decision-time search (MD and MMD steps from a blueprint, exact and
  Monte-Carlo q) against the fixed opponents (The Update-Equivalence Framework for Decision-Time Planning, arXiv
  2304.13138);
- ``poker_credit``: group baselines for zero-sum game rewards: duplicate (deal, seat) groups and an opponent-aware
  control variate vs the rows of a game / the batch as the group.

Each runs its program recipe's function once per seed into OUT/custom/<experiment>/seed<k>/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from entropo.reproduce.experiments import Compare, CustomResult, Experiment, Within, combine

ARMS: dict = {}  # custom experiments only

UE_PAPER = ("The Update-Equivalence Framework for Decision-Time Planning (Sokota et al.), arXiv 2304.13138; "
            "MMD: A Unified Approach to RL, QREs and Two-Player Zero-Sum Games, arXiv 2206.05825")
CREDIT_PAPER = "group baselines for zero-sum game rewards (duplicate poker; no single source paper)"
MMD_ITERATIONS = 1000
SEARCH_ARMS = ("blueprint", "md", "mmd", "md_mc", "mmd_mc")
OPPONENTS = ("random", "always_call", "fixed", "cfr")


def _check_dict(result) -> dict[str, Any]:
    return {"check": result.text, "detail": result.detail, "verdict": result.verdict, "values": result.values}


def _mean_sd(values: list[float], digits: int = 4) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def _seed_dir(out_dir: Path, name: str, seed: int) -> Path:
    d = Path(out_dir) / name / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_mmd(cfg, out_dir: Path, console) -> CustomResult:
    from entropo.games.search import mmd_learner_program

    arms = {"mmd_moving_magnet": dict(schedule="constant", eta=0.1, alpha=1.0, magnet_lr=0.05),
            "mmd_annealing": dict(schedule="annealing")}
    per_seed: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in range(cfg.seeds):
        for arm, kw in arms.items():
            init = "uniform" if seed == 0 else "random"
            per_seed[arm].append(mmd_learner_program(_seed_dir(out_dir, arm, seed), seed, console, game="kuhn",
                                                     iterations=MMD_ITERATIONS, init=init, log_every=50, **kw))
    final = {a: [r["final_exploitability"] for r in per_seed[a]] for a in arms}
    ratio = {a: [r["final_exploitability"] / r["initial_exploitability"] for r in per_seed[a]] for a in arms}
    checks = [Within("final_exploitability", "mmd_moving_magnet", high=0.05).evaluate(final),
              Within("final_exploitability", "mmd_annealing", high=0.05).evaluate(final),
              Within("final_over_initial", "mmd_moving_magnet", high=0.1).evaluate(ratio)]
    lines = [f"**Setup:** MMD self-play on OpenSpiel's Kuhn poker, {MMD_ITERATIONS} full-tree iterations, exact "
             "exploitability of the last iterate (no averaging). Seed 0 starts uniform, other seeds from a seeded "
             "random policy (the magnet starts uniform). Moving magnet: eta 0.1, alpha (temperature) 1, magnet step "
             "0.05 (the official Kuhn setting); annealing: eta = alpha = 1/sqrt(t), fixed uniform magnet.", "",
             "| arm | exploitability at 0 | 100 | 500 | 1000 | per seed (final) |", "|---|---|---|---|---|---|"]
    for a in arms:
        at = lambda t: [dict(r["curve"])[t] for r in per_seed[a]]  # noqa: E731
        lines.append(f"| {a} | {_mean_sd(at(0))} | {_mean_sd(at(100))} | {_mean_sd(at(500))} | "
                     f"{_mean_sd(at(MMD_ITERATIONS))} | {', '.join(f'{v:.4f}' for v in final[a])} |")
    checks = [_check_dict(c) for c in checks]
    measured = "; ".join(f"{a}: exploitability {_mean_sd(final[a])} after {MMD_ITERATIONS} iterations "
                         f"(uniform policy: 0.4583)" for a in arms)
    return CustomResult(combine([c["verdict"] for c in checks]), measured, checks, lines, [],
                        {"per_seed": per_seed})


def _run_search(cfg, out_dir: Path, console, game: str, samples: int, rollouts: int) -> CustomResult:
    from entropo.games.search import search_program

    per_seed: dict[str, list[dict]] = {"true": [], "blueprint": []}
    for seed in range(cfg.seeds):
        for model in per_seed:
            per_seed[model].append(search_program(_seed_dir(out_dir, f"{game}_{model}", seed), seed, console,
                                                  game=game, blueprint="mmd", blueprint_iterations=20 + 10 * seed,
                                                  opponent_model=model, eta=1.0, alpha=1.0, samples=samples,
                                                  rollouts=rollouts))
    mean_payoff = {m: {a: [float(np.mean([r[f"payoff/{o}"][a] for o in OPPONENTS])) for r in per_seed[m]]
                       for a in SEARCH_ARMS} for m in per_seed}
    checks = [Compare("mean_payoff_vs_fixed_opponents", a, "blueprint").evaluate(mean_payoff["true"])
              for a in SEARCH_ARMS[1:]]
    lines = [f"**Setup:** {game}; blueprint = the MMD last iterate after 20 (seed 0) / 30 (seed 1) iterations (moving "
             "magnet); at every information state of the searching seat, q(a) = the return of a followed by the "
             "blueprint (and the opponent model) afterwards, exact over the infoset's histories weighted by belief "
             f"(md, mmd) or Monte-Carlo ({samples} sampled histories x {rollouts} rollouts per action; md_mc, "
             "mmd_mc); one MD step pi ∝ pi_b e^(eta q) or MMD step (uniform magnet, alpha 1), eta = 1. Payoff = "
             "exact expected units per hand (ante = 1 unit; x1000 = milli-units) against each opponent, mean of "
             "both seats. Opponent model 'true': the search knows the opponent's policy; 'blueprint': it assumes "
             "the opponent plays the blueprint (self-play search).", ""]
    for m in per_seed:
        lines += [f"Opponent model **{m}** (mean ± sd over seeds):", "",
                  "| arm | " + " | ".join(OPPONENTS) + " | mean | exploitability |",
                  "|---|" + "---|" * (len(OPPONENTS) + 2)]
        for a in SEARCH_ARMS:
            cells = [_mean_sd([r[f"payoff/{o}"][a] for r in per_seed[m]]) for o in OPPONENTS]
            expl = _mean_sd([r[f"{a}_exploitability" if a != "blueprint" else "blueprint_exploitability"]
                             for r in per_seed[m]])
            lines.append(f"| {a} | " + " | ".join(cells) + f" | {_mean_sd(mean_payoff[m][a])} | {expl} |")
        lines.append("")
    lines.append("Exploitability of a search policy is measured for the one computed against the first opponent "
                 "(random) with the 'true' model, and against the blueprint with the 'blueprint' model.")
    checks = [_check_dict(c) for c in checks]
    mp = mean_payoff["true"]
    measured = (f"{game}, mean payoff over the 4 opponents (units/hand): blueprint {_mean_sd(mp['blueprint'])}, "
                + ", ".join(f"{a} {_mean_sd(mp[a])}" for a in SEARCH_ARMS[1:])
                + "; self-play model: " + ", ".join(f"{a} {_mean_sd(mean_payoff['blueprint'][a])}"
                                                    for a in SEARCH_ARMS))
    return CustomResult(combine([c["verdict"] for c in checks]), measured, checks, lines, [],
                        {"per_seed": per_seed, "mean_payoff": mean_payoff})


def run_search_kuhn(cfg, out_dir: Path, console) -> CustomResult:
    return _run_search(cfg, out_dir, console, "kuhn", samples=8, rollouts=4)


def run_search_leduc(cfg, out_dir: Path, console) -> CustomResult:
    return _run_search(cfg, out_dir, console, "leduc", samples=8, rollouts=2)


def run_credit(cfg, out_dir: Path, console) -> CustomResult:
    from entropo.games.credit import CREDIT_ARMS, credit_program

    per_seed = [credit_program(_seed_dir(out_dir, "kuhn_fixed", seed), seed, console, game="kuhn",
                               opponent="fixed") for seed in range(cfg.seeds)]
    payoff = {a: [r[a]["payoff"] for r in per_seed] for a in CREDIT_ARMS}
    msq = {a: [r[a]["mean_sq_advantage"] for r in per_seed] for a in CREDIT_ARMS}
    checks = [Compare("payoff", "keyed", "none").evaluate(payoff), Compare("payoff", "keyed", "batch_mean")
              .evaluate(payoff), Compare("payoff", "cv", "none").evaluate(payoff),
              Compare("mean_sq_advantage", "keyed", "batch_mean", higher=False).evaluate(msq)]
    br = per_seed[0]["best_response_value"]
    lines = ["**Setup:** tabular softmax REINFORCE on Kuhn poker against the fixed hand-strength opponent, 150 "
             "updates of 8 deals x 2 seats x 4 hands, lr 0.5, advantages divided by their batch std (equal step "
             "sizes). Arms: none (A = r, what grouping the two rows of a zero-sum self-play game gives: their mean "
             "is 0), batch_mean, keyed (group = same deal and seat: duplicate poker), cv (r minus the exact value of "
             "the uniform policy on that deal and seat against this opponent). Payoff = exact expected units per "
             f"hand of the final policy (the best response earns {br:.4f}).", "",
             "| arm | payoff after 150 updates | per seed | mean squared advantage (before scaling) |",
             "|---|---|---|---|"]
    for a in CREDIT_ARMS:
        lines.append(f"| {a} | {_mean_sd(payoff[a])} | {', '.join(f'{v:+.4f}' for v in payoff[a])} | "
                     f"{_mean_sd(msq[a], 3)} |")
    checks = [_check_dict(c) for c in checks]
    measured = "payoff vs fixed after 150 updates: " + ", ".join(f"{a} {_mean_sd(payoff[a])}" for a in CREDIT_ARMS)
    return CustomResult(combine([c["verdict"] for c in checks]), measured, checks, lines, [],
                        {"per_seed": per_seed})


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "mmd_kuhn", "Games: MMD's last iterate on Kuhn poker", UE_PAPER,
        "Magnetic mirror descent, run as self-play on the full game, converges in its last iterate: the "
        "exploitability of the current policy (not an average) falls toward 0.",
        [], [], kind="custom", suite="games", steps=MMD_ITERATIONS, run=run_mmd,
        note="Exact full-tree MMD (no sampling), the official Kuhn hyper-parameters; a reduced-scale reproduction of "
             "the MMD paper's Kuhn curve, not of Hanabi.",
    ),
    Experiment(
        "mds_kuhn", "Games: update-equivalence search (MD/MMD) from a blueprint, Kuhn poker", UE_PAPER,
        "One mirror-descent (or magnetic mirror-descent) step at decision time, with q estimated from histories "
        "sampled from the beliefs and blueprint rollouts, improves the blueprint's expected payoff.",
        [], [], kind="custom", suite="games", steps=1, run=run_search_kuhn,
        note="Two-player zero-sum poker stands in for Hanabi; the search knows the fixed opponent's policy in the "
             "checked arms (a single-agent improvement step); the self-play-model arms are reported only.",
    ),
    Experiment(
        "mds_leduc", "Games: update-equivalence search (MD/MMD) from a blueprint, Leduc hold'em", UE_PAPER,
        "As mds_kuhn, on Leduc hold'em (936 information states).",
        [], [], kind="custom", suite="games", steps=1, run=run_search_leduc,
        note="Exact beliefs by enumerating the infoset's histories; Monte-Carlo arms sample 8 of them.",
    ),
    Experiment(
        "poker_credit", "Games: group baselines for zero-sum rewards (duplicate deals, opponent-aware)", CREDIT_PAPER,
        "Grouping rows by deal and seat (or subtracting an opponent-aware value of the deal) removes the luck of "
        "the cards from the advantage, so at equal step size the policy improves faster than with the rows of a "
        "zero-sum game or the whole batch as the group.",
        [], [], kind="custom", suite="games", steps=150, run=run_credit,
        note="Tabular policy, not a language model: the estimator is the same group-centring as the keyed_baseline "
             "advantage used by LM recipes.",
    ),
]


POKERGPT_PAPER = ("PokerGPT: An End-to-End Lightweight Solver for Multi-Player Texas Hold'em via Large Language Model, "
                  "arXiv 2401.06781")
PG_SFT = ["warmup.steps=80", "warmup.batch_size=16", "train.steps=0", "task.eval_size=8", "eval.every=0",
          "logging.plots=false", "logging.progress=false"]
PG_RL_STEPS = 20
PG_EVAL_HANDS = 192


def run_pokergpt(cfg, out_dir: Path, console) -> CustomResult:
    """Per seed: SFT on filtered histories (the SFT-only arm), RL from it (pokergpt), SFT on unfiltered histories
    then RL (the unfiltered arm); each final model evaluated by greedy play against the four fixed opponents."""
    from entropo.api import train
    from entropo.games.pokergpt import evaluate_model

    arms = ("sft_only", "pokergpt", "unfiltered_sft_rl")
    per_seed: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in range(cfg.seeds):
        d = Path(out_dir) / f"seed{seed}"
        models = {}
        for filt in ("win", "none"):
            sft = train("pokergpt", [*PG_SFT, f"seed={seed}", f"task.params.filter={filt}"],
                        run_dir=d / f"sft_{filt}", console=None)
            rl = train("pokergpt", [f"seed={seed}", f"task.params.filter={filt}",
                                    f"model.name_or_path={sft['final_model']}", "warmup.steps=0",
                                    f"train.steps={PG_RL_STEPS}", "task.eval_size=8", "eval.every=0",
                                    "logging.plots=false", "logging.progress=false"],
                       run_dir=d / f"rl_{filt}", console=None)
            models[filt] = (sft["final_model"], rl["final_model"])
        for arm, path in (("sft_only", models["win"][0]), ("pokergpt", models["win"][1]),
                          ("unfiltered_sft_rl", models["none"][1])):
            res = evaluate_model(path, "kuhn", hands=PG_EVAL_HANDS, seed=seed)
            per_seed[arm].append(res)
            console(f"pokergpt seed {seed} {arm}: mean {res['mean_mbb']:+.0f} mbb/hand")
    mean = {a: [r["mean_mbb"] for r in per_seed[a]] for a in arms}
    checks = [Compare("mean_mbb_vs_fixed_opponents", "pokergpt", "sft_only").evaluate(mean),
              Compare("mean_mbb_vs_fixed_opponents", "pokergpt", "unfiltered_sft_rl").evaluate(mean)]
    lines = [f"**Setup:** Kuhn poker, the character-level tiny model. Hand histories: 2000 hands of four bots (random, "
             "always-call, fixed, CFR) against a random opponent, rendered as the environment's text; 'win' keeps "
             "the hands the bot won (about half), 'none' keeps all. SFT: 80 steps x 16 rows. RL: "
             f"{PG_RL_STEPS} steps x 8 deals x 8 episodes against the random opponent, PPO-clip, keyed_baseline "
             "advantage (deal, seat groups, std-scaled). Evaluation: greedy play of "
             f"{PG_EVAL_HANDS // 2} held-out deals from both seats against each opponent (mbb/hand = 1000 x "
             "chips per hand, ante 1; ± the standard error over deals).", "",
             "| arm | " + " | ".join(OPPONENTS) + " | mean | malformed / hand |", "|---|" + "---|" * 6]
    for a in arms:
        cells = [" / ".join(f"{r[o]['mbb']:+.0f}±{r[o]['mbb_se']:.0f}" for r in per_seed[a]) for o in OPPONENTS]
        bad = " / ".join(f"{np.mean([r[o]['malformed_per_hand'] for o in OPPONENTS]):.2f}" for r in per_seed[a])
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {_mean_sd(mean[a], 0)} | {bad} |")
    lines += ["", "Cells: per seed (seed 0 / seed 1)."]
    checks = [_check_dict(c) for c in checks]
    measured = "mean mbb/hand over the 4 opponents: " + ", ".join(f"{a} {_mean_sd(mean[a], 0)}" for a in arms)
    return CustomResult(combine([c["verdict"] for c in checks]), measured, checks, lines, [], {"per_seed": per_seed})


EXPERIMENTS.append(Experiment(
    "pokergpt", "Games: PokerGPT reduced (filtered hand histories -> SFT -> RL on chips), Kuhn poker", POKERGPT_PAPER,
    "Fine-tuning a small LM on hand histories filtered for winning play and then training it with RL on the game's "
    "outcome beats the SFT-only policy and the same pipeline on unfiltered histories, in chips per hand.",
    [], [], kind="custom", suite="games", steps=PG_RL_STEPS, run=run_pokergpt,
    note="Two-player Kuhn poker and bot histories stand in for multi-player hold'em and human play; RL on chips "
         "with a group baseline replaces the paper's reward model + PPO.",
))
