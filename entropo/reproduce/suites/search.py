"""Reproduction experiment of search and search-then-learn (suite ``preferences``, kind="custom"):

``search_vs_tokens``: on held-out 3-step arithmetic chains (task ``arith_chain``, recipe ``search_tiny``: the tiny
model after its cached SFT warm-up, once per seed), accuracy vs generated tokens of greedy decoding, best-of-N,
step-level beam search and MCTS (MCTS-DPO's PUCT/backup), each at budgets 1, 2, 4, guided by the task's verifier (an
oracle on held-out problems: it reads the gold answer); best-of-N and beam also with the model's own log-prob (no
answer read);
then expert iteration (best-of-4 search on fresh training prompts → keep verified answers → SFT) for 2 iterations,
measured by held-out greedy accuracy; and the MCTS-DPO step pairs its searches produce on training prompts, written to
``OUT/custom/search_vs_tokens/seed<k>/mcts_pairs.jsonl`` for an offline DPO recipe.

``search_smollm2``: the same measurements with SmolLM2-135M-Instruct after a short SFT warm-up on the step format
(recipe ``search_smollm2``, 2-digit a+b+c+d chains), at a smaller number of problems (``SMOLLM2``).

Papers: "Scaling of Search and Learning: A Roadmap to Reproduce o1 from Reinforcement Learning Perspective"
(arXiv 2412.14135); "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning" (arXiv 2405.00451).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from entropo.reproduce.experiments import Arm, Compare, CustomResult, Experiment, combine

ARMS: dict[str, Arm] = {}  # custom experiment: no trainer-run arms

PAPER = ("Scaling of Search and Learning: A Roadmap to Reproduce o1 (arXiv 2412.14135); MCTS-DPO (arXiv 2405.00451)")
BUDGETS = (1, 2, 4)
SAMPLER = {"temperature": 1.0, "max_step_tokens": 16, "max_steps": 6, "max_tokens": 40}
EXPERT = {"iterations": 2, "prompts_per_iter": 64, "strategy": "best_of_n", "budget": 4, "sft_lr": 1e-3}
# the pre-declared setting (60 SFT steps of 32 rows per iteration, ~90 passes over ~20 kept answers: it overfits) and
# a second one added after seeing that: 2 passes over the kept answers per iteration
EXPERTS = {"steps60": {**EXPERT, "sft_steps": 60}, "epochs2": {**EXPERT, "sft_epochs": 2}}
PAIR_PROMPTS = 16  # training prompts searched by MCTS for the pair file
# the warm-up run's own logging, checkpoints and evaluation are not what these experiments measure
SUITE_OVERRIDES = ["logging.progress=false", "logging.tensorboard=false", "logging.plots=false", "checkpoint.every=0",
                   "checkpoint.keep=1", "eval.max_prompts=16"]


@dataclass(frozen=True)
class Scale:
    """One model's setting of the experiment: the warm-up recipe (model, task, SFT), the chains, the search and
    expert-iteration knobs, and how many held-out problems each measurement uses."""

    recipe: str  # recipe whose model is warmed up (cached per seed) and searched
    task_params: dict  # arith_chain parameters (held-out split of 128)
    sampler: dict  # step sampler: temperature, max_step_tokens, max_steps, max_tokens
    experts: dict  # expert-iteration settings by name
    setup: str  # the report's description of model and chains
    n_eval: int | None = None  # held-out problems searched per seed (None: max(8, eval_size // 2))
    greedy_eval: int = 128  # held-out problems for greedy accuracy (expert iteration, faithfulness)
    pair_prompts: int = PAIR_PROMPTS
    faithfulness_note: str = ""  # the report's reading of the faithfulness count (written before the run)


TINY = Scale("search_tiny", {"digits": 1, "num_terms": 4}, SAMPLER, EXPERTS,
             "tiny model after the `search_tiny` SFT warm-up (300 steps, cached per seed); {n} held-out a+b+c+d chains "
             "per seed",
             faithfulness_note=" The tiny model mostly gets the last number right with wrong intermediate lines, so "
                               "outcome-verified samples teach wrong steps and outcome-valued MCTS can prefer a wrong "
                               "step that leads to a right answer.")
# SmolLM2-135M-Instruct after 40 SFT steps on the format (recipe `search_smollm2`): 2-digit a+b+c+d, three lines per
# chain (lines are ~9 tokens). A first run on 2-digit a+b+c (two lines) could not tell the budgets apart: with 2
# proposals per step, a two-step tree holds at most 4 chains, so beam and MCTS spent ~62 tokens per problem at budgets
# 1, 2 and 4 alike; three steps, as the tiny setting, leave room for the budgets to differ. One expert setting (2
# passes over the kept answers, the tiny run's lesson) at the warm-up's order of learning rate; fewer problems, as
# every token costs ~1000x the tiny model's.
S2_SAMPLER = {"temperature": 1.0, "max_step_tokens": 16, "max_steps": 5, "max_tokens": 48}
SMOLLM2 = Scale("search_smollm2", {"digits": 2, "num_terms": 4}, S2_SAMPLER,
                {"epochs2": {**EXPERT, "prompts_per_iter": 32, "sft_lr": 2e-5, "sft_epochs": 2}},
                "SmolLM2-135M-Instruct after the `search_smollm2` SFT warm-up (40 steps of 8, lr 5e-5, cached per "
                "seed); {n} held-out 2-digit a+b+c+d chains per seed", n_eval=16, greedy_eval=64, pair_prompts=8)


def _check_dict(result) -> dict[str, Any]:
    return {"check": result.text, "detail": result.detail, "verdict": result.verdict, "values": result.values}


def _mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def _warm_model(seed: int, out_dir: Path, console, recipe_name: str = "search_tiny") -> Path:
    from entropo.config import load_recipe
    from entropo.reproduce.runner import RECIPES_DIR, warmed_up_model
    from entropo.trainer import train

    recipe = load_recipe(RECIPES_DIR / f"{recipe_name}.yaml", [f"seed={seed}", *SUITE_OVERRIDES])
    return warmed_up_model(recipe, out_dir / "warmup", train, console)


def _engine(path: Path):
    from entropo import models
    from entropo.rollout.hf import HFEngine

    model, tokenizer = models.load(str(path))
    return HFEngine(model, tokenizer, chat_template=False)


def _cached(path: Path, key: dict, compute, console) -> dict:
    """``compute()``'s result, stored in ``path`` with ``key``; reused when the key matches (reruns are cheap)."""
    key = json.loads(json.dumps(key))
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            console(f"  reusing {path}")
            return data
    data = {"key": key, **compute()}
    path.write_text(json.dumps(data, indent=1))
    return data


def run_seed(seed: int, cfg, out_dir: Path, console, scale: Scale = TINY) -> dict[str, Any]:
    """Every measurement of one seed, cached per part in OUT/seed<k>/ (search.json, expert_<setting>.json)."""
    from entropo import registry
    from entropo.search.expert import expert_iteration
    from entropo.search.mcts import write_pairs_jsonl
    from entropo.search.runner import compare, plot_points, search_one
    from entropo.search.strategies import budget_params
    from entropo.tasks.base import stable_seed

    d = out_dir / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    n_eval = scale.n_eval or max(8, cfg.eval_size // 2)
    path = _warm_model(seed, out_dir, console, scale.recipe)
    task = registry.get("task", "arith_chain")(seed=seed, eval_size=128, **scale.task_params)
    sampler = scale.sampler

    def search_part() -> dict:
        engine = _engine(path)
        held_out = task.eval_examples()[:n_eval]
        console(f"  search seed {seed}: verifier-guided search on {n_eval} held-out problems")
        oracle = compare(engine, task, held_out, ["greedy", "best_of_n", "beam", "mcts"], list(BUDGETS), seed=seed,
                         scorer="outcome", sampler_params=sampler, console=console)
        console(f"  search seed {seed}: log-prob-guided search (no answer read)")
        own = compare(engine, task, held_out, ["best_of_n", "beam"], list(BUDGETS), seed=seed, scorer="logprob",
                      sampler_params=sampler, console=console)
        plot_points(oracle, d / "accuracy_vs_tokens_verifier.png", f"seed {seed}: verifier-guided, {n_eval} problems")
        plot_points(own, d / "accuracy_vs_tokens_logprob.png", f"seed {seed}: log-prob-guided, {n_eval} problems")
        # MCTS-DPO step pairs on training prompts (what an offline DPO recipe would train on)
        records, found = [], 0
        for j in range(scale.pair_prompts):
            ex = task.train_example(task.train_size() - 1 - j)  # the far end: expert iteration starts at 0
            row = search_one("mcts", ex, engine, task, seed=stable_seed(seed, "pairs", j), scorer="outcome",
                             sampler_params=sampler, params=budget_params("mcts", 2))
            found += row["correct"]
            records += row["info"].get("pair_records", [])
        write_pairs_jsonl(d / "mcts_pairs.jsonl", records)
        strip = lambda pts: [{k: v for k, v in p.items() if k != "rows"} for p in pts]  # noqa: E731
        return {"verifier": strip(oracle), "logprob": strip(own),
                "pairs": {"count": len(records), "prompts": scale.pair_prompts, "mcts_found_correct": found,
                          "mean_label_smoothing": float(np.mean([r["label_smoothing"] for r in records]))
                          if records else float("nan")}}

    data = _cached(d / "search.json", {"n_eval": n_eval, "budgets": BUDGETS, "sampler": sampler,
                                       "pairs": scale.pair_prompts}, search_part, console)
    def faithfulness_part() -> dict:
        from entropo.search.scorers import ArithStepScorer

        engine = _engine(path)
        examples = task.eval_examples()[:scale.greedy_eval]
        out = engine.generate(examples, 1, temperature=0.0, max_new_tokens=sampler["max_tokens"])
        right = [(x, e) for x, e in zip(out.completions, examples) if task.correct(x, e)]
        chains = sum(ArithStepScorer.check(x, e.meta["operands"], e.meta["ops"], True) == 1.0 for x, e in right)
        return {"greedy_correct": len(right), "greedy_correct_chains": int(chains), "problems": len(examples)}

    data["faithfulness"] = _cached(d / "faithfulness.json", {"sampler": sampler}, faithfulness_part, console)
    for name, setting in scale.experts.items():
        def expert_part(setting=setting) -> dict:
            engine = _engine(path)  # a fresh copy of the warmed-up model: expert iteration trains it in place
            sft = {"sft_epochs": setting["sft_epochs"]} if "sft_epochs" in setting else {
                "sft_steps": setting["sft_steps"]}
            history = expert_iteration(engine, task, iterations=setting["iterations"],
                                       prompts_per_iter=setting["prompts_per_iter"], strategy=setting["strategy"],
                                       strategy_params=budget_params(setting["strategy"], setting["budget"]),
                                       scorer="outcome", sft_lr=setting["sft_lr"], **sft,
                                       eval_examples=task.eval_examples()[:scale.greedy_eval],
                                       sampler_params=sampler, seed=seed, console=console)
            return {"history": history}

        data[f"expert_{name}"] = _cached(d / f"expert_{name}.json", {"setting": setting, "sampler": sampler},
                                         expert_part, console)["history"]
    return data


def _acc(data: dict, family: str, strategy: str, budget: int) -> float:
    return next(p["accuracy"] for p in data[family] if p["strategy"] == strategy and p["budget"] == budget)


def _tokens(data: dict, family: str, strategy: str, budget: int) -> float:
    return next(p["tokens"] for p in data[family] if p["strategy"] == strategy and p["budget"] == budget)


def run(cfg, out_dir: Path, console, scale: Scale = TINY) -> CustomResult:
    from entropo.search.runner import plot_points

    out_dir = Path(out_dir)
    per_seed = [run_seed(seed, cfg, out_dir, console, scale) for seed in range(cfg.seeds)]
    top = max(BUDGETS)
    v = {"greedy": [_acc(r, "verifier", "greedy", 1) for r in per_seed]}
    for s in ("best_of_n", "beam", "mcts"):
        for b in BUDGETS:
            v[f"{s}@{b}"] = [_acc(r, "verifier", s, b) for r in per_seed]
    for s in ("best_of_n", "beam"):
        v[f"{s}@{top}/logprob"] = [_acc(r, "logprob", s, top) for r in per_seed]
    first = next(iter(scale.experts))
    v["expert_start"] = [r[f"expert_{first}"][0]["eval_greedy"] for r in per_seed]  # the same warmed-up model
    for name in scale.experts:
        v[f"expert_{name}_end"] = [r[f"expert_{name}"][-1]["eval_greedy"] for r in per_seed]
    checks = [Compare("held-out accuracy", f"best_of_n@{top}", "greedy").evaluate(v),
              Compare("held-out accuracy", f"beam@{top}", "greedy").evaluate(v),
              Compare("held-out accuracy", f"mcts@{top}", "greedy").evaluate(v),
              Compare("held-out accuracy", f"best_of_n@{top}", "best_of_n@1").evaluate(v),
              Compare("held-out accuracy", f"best_of_n@{top}/logprob", "greedy").evaluate(v),
              *(Compare("held-out greedy accuracy", f"expert_{name}_end", "expert_start").evaluate(v)
                for name in scale.experts)]
    checks = [_check_dict(c) for c in checks]
    verdict = combine([c["verdict"] for c in checks])
    # mean curve over seeds for the report plot
    mean_points = []
    for family, label in (("verifier", ""), ("logprob", " (log-prob)")):
        for p in per_seed[0][family]:
            s, b = p["strategy"], p["budget"]
            mean_points.append({"strategy": s + label, "budget": b,
                                "accuracy": float(np.mean([_acc(r, family, s, b) for r in per_seed])),
                                "tokens": float(np.mean([_tokens(r, family, s, b) for r in per_seed]))})
    plot = plot_points(mean_points, out_dir / "accuracy_vs_tokens.png",
                       f"arith_chain held-out ({scale.recipe}), mean over {cfg.seeds} seeds")
    n_eval = scale.n_eval or max(8, cfg.eval_size // 2)
    lines = [f"**Setup:** {scale.setup.format(n=n_eval)}; steps are lines; budgets 1/2/4 = best-of-N n, beam width (2 "
             "proposals per beam), MCTS iterations per move (4x at the root, 2 actions per expansion). Tokens count "
             "every generated token (policy samples and, for MCTS/beam, all expanded steps).", "",
             "| strategy (scorer) | budget | accuracy (mean ± sd over seeds) | tokens / problem |",
             "|---|---|---|---|"]
    for family, label in (("verifier", "verifier"), ("logprob", "log-prob")):
        for p in per_seed[0][family]:
            s, b = p["strategy"], p["budget"]
            lines.append(f"| {s} ({label}) | {b} | {_mean_sd([_acc(r, family, s, b) for r in per_seed])} | "
                         f"{np.mean([_tokens(r, family, s, b) for r in per_seed]):.1f} |")
    sft_words = {"steps60": "60 SFT steps of 32 rows (pre-declared; ~90 passes over the kept answers)",
                 "epochs2": "2 passes over the kept answers" + (" (added after the first overfitted)"
                                                                 if "steps60" in scale.experts else "")}
    expert = scale.experts[first]
    lines += ["", f"**Expert iteration** (best-of-{expert['budget']} with the verifier on {expert['prompts_per_iter']} "
              f"fresh training prompts per iteration, keep the verified answers, SFT at lr {expert['sft_lr']:g}), "
              f"held-out greedy accuracy on {scale.greedy_eval} problems after iterations 0, 1, 2 (kept answers per "
              "iteration in brackets):"]
    for name in scale.experts:
        lines.append(f"- {sft_words.get(name, name)}: " + "; ".join(
            f"seed {k}: " + " → ".join(f"{h['eval_greedy']:.3f}" + (f" [{h['kept']}]" if "kept" in h else "")
                                       for h in r[f"expert_{name}"]) for k, r in enumerate(per_seed)) + ".")
    lines += ["", "**Are the verified answers right for the right reason?** Greedy answers on "
              f"{scale.greedy_eval} held-out problems "
              "that the verifier accepts, and how many of them are a fully correct chain (every line right, checked "
              "by the `arith_steps` process checker): " + "; ".join(
                  f"seed {k}: {r['faithfulness']['greedy_correct']} accepted, "
                  f"{r['faithfulness']['greedy_correct_chains']} correct chains" for k, r in enumerate(per_seed)) +
              "." + scale.faithfulness_note,
              "", "**MCTS-DPO pairs** from MCTS (2 iterations per move) on training prompts: " +
              "; ".join(f"seed {k}: {r['pairs']['count']} pairs from {r['pairs']['prompts']} prompts, mean label "
                        f"smoothing {r['pairs']['mean_label_smoothing']:.3f}" for k, r in enumerate(per_seed)) +
              " (OUT/custom/<experiment>/seed<k>/mcts_pairs.jsonl)."]
    measured = (f"greedy {_mean_sd(v['greedy'])}; with the verifier at budget {top}: best-of-N "
                f"{_mean_sd(v[f'best_of_n@{top}'])}, beam {_mean_sd(v[f'beam@{top}'])}, MCTS "
                f"{_mean_sd(v[f'mcts@{top}'])}; best-of-N by log-prob {_mean_sd(v[f'best_of_n@{top}/logprob'])}; "
                "expert iteration " + ", ".join(f"{name} {_mean_sd(v['expert_start'])} → "
                                                f"{_mean_sd(v[f'expert_{name}_end'])}" for name in scale.experts))
    return CustomResult(verdict, measured, checks, lines, [plot], {"per_seed": per_seed, "accuracy": v})


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "search_vs_tokens", "Preferences: search strategies (accuracy vs tokens) and expert iteration", PAPER,
        "Tree search guided by a verifier (best-of-N, beam, MCTS) turns more generated tokens into higher held-out "
        "accuracy than greedy decoding; best-of-N improves with N; and learning from search (expert iteration: keep "
        "the verified search results, fine-tune on them) raises the policy's own greedy accuracy.",
        [], [], kind="custom", suite="preferences", run=run,
        note="The verifier reads the gold answer, so verifier-guided search on held-out problems is an oracle "
             "setting (it measures how cheaply each strategy finds a verified answer); the log-prob rows read no "
             "answer. Expert iteration uses the verifier on training prompts only; its accuracy is greedy on held-out.",
    ),
    Experiment(
        "search_smollm2", "Preferences: search strategies and expert iteration on SmolLM2-135M", PAPER,
        "The same claims as search_vs_tokens on a real model: verifier-guided search (best-of-N, beam, MCTS) turns "
        "more generated tokens into higher held-out accuracy than greedy decoding; best-of-N improves with N; expert "
        "iteration raises the policy's own greedy accuracy.",
        [], [], kind="custom", suite="preferences", run=partial(run, scale=SMOLLM2),
        note="SmolLM2-135M-Instruct after 40 SFT steps on the one-line-per-step format (recipe search_smollm2), "
             "2-digit a+b+c+d chains; 16 held-out problems per seed for the search, 64 for greedy accuracy; expert "
             "iteration: best-of-4 on 32 fresh prompts, 2 passes over the kept answers at lr 2e-5. The verifier "
             "reads the gold answer (oracle setting, as search_vs_tokens); the log-prob rows read no answer.",
    ),
]
