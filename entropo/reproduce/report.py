"""The reproduction report: OUT/report.md (summary table + one section per experiment), OUT/plots/*.png (mean ±
spread curves across seeds) and OUT/summary.json (every measured number, for scripts).

Curves are smoothed with a trailing mean over ~5 % of the steps before the seed mean and spread (per-step train
accuracy over 128 samples is noisy); eval/* points are unsmoothed. The spread band is ± one sample standard deviation
across seeds.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from entropo.reproduce import bandit
from entropo.reproduce.aggregate import (
    Rows,
    aggregate_curve,
    mean_and_spread,
    series,
    train_rows,
)
from entropo.reproduce.experiments import (
    ARMS,
    HELD,
    INCONCLUSIVE,
    MEASURES,
    NOT_HELD,
    Experiment,
    binned_entropy_accuracy,
    entropy_fit,
    evaluate_checks,
    measure_runs,
)

SUMMARY_MEASURES = ["entropy_last_third", "accuracy_final", "eval_pass@1", "eval_pass@8", "grad_norm_cv"]
BANDIT_ETAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
VERDICT_MARK = {HELD: "✅ held", NOT_HELD: "❌ did not hold", INCONCLUSIVE: "❔ inconclusive"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smoothing_window(runs: dict[str, list[Rows]]) -> int:
    lengths = [len(train_rows(r)) for seeds in runs.values() for r in seeds]
    return max(1, (max(lengths) if lengths else 0) // 20)


# ---- plots ----------------------------------------------------------------------------------------------------------

def plot_curves(exp: Experiment, runs: dict[str, list[Rows]], path: Path) -> Path:
    """One panel per curve key, one line per arm: seed mean with a ± spread band."""
    plt = _plt()
    window = smoothing_window(runs)
    cols = 2
    rows_n = (len(exp.curves) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 4 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, exp.curves):
        for i, arm in enumerate(exp.arms):
            is_eval = key.startswith("eval/")
            curve = aggregate_curve(runs[arm], key, smooth=1 if is_eval else window)
            if curve is None:
                continue
            color = f"C{i}"
            if is_eval:
                ax.errorbar(curve.steps, curve.mean, yerr=curve.spread, fmt="o-", color=color, capsize=3, label=arm)
            else:
                ax.plot(curve.steps, curve.mean, color=color, label=arm)
                ax.fill_between(curve.steps, curve.mean - curve.spread, curve.mean + curve.spread, color=color,
                                alpha=0.2)
            if key == "entropy/mean" and arm in exp.targets:
                ax.axhline(exp.targets[arm], color=color, linestyle="--", linewidth=1)
        ax.set_title(key + ("" if key.startswith("eval/") else f" (trailing mean over {window} steps)"))
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(exp.curves):]:
        ax.axis("off")
    n_seeds = len(next(iter(runs.values()))) if runs else 0
    fig.suptitle(f"{exp.title} — mean ± std over {n_seeds} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_fit(runs: list[Rows], path: Path) -> Path:
    """Accuracy against entropy: per-step points (faint), the 10 window means the fit uses, each seed's fit."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, rows in enumerate(runs):
        steps = [r for r in train_rows(rows) if "entropy/mean" in r]
        ax.plot([r["entropy/mean"] for r in steps], [r["accuracy"] for r in steps], ".", color=f"C{i}", alpha=0.2)
        h, acc = binned_entropy_accuracy(rows)
        ax.plot(h, acc, "o", color=f"C{i}", label=f"seed {i}: 10 window means")
        fit = entropy_fit(rows)
        if np.isfinite(fit["a"]):
            xs = np.linspace(0, max(h.max(), 1e-3), 100)
            ax.plot(xs, -fit["a"] * np.exp(xs) + fit["b"], "-", color=f"C{i}",
                    label=f"seed {i} fit: ceiling {fit['ceiling']:.2f}, R² {fit['r2']:.2f}")
    ax.set_xlabel("mean token entropy H")
    ax.set_ylabel("train accuracy")
    ax.set_title("GRPO: accuracy vs entropy, fit R = -a·e^H + b")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_samples(exp: Experiment, runs: dict[str, list[Rows]], samples: dict[str, float], path: Path) -> Path:
    """Train accuracy (smoothed, seed mean ± spread) against cumulative generated samples."""
    plt = _plt()
    window = smoothing_window(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, arm in enumerate(exp.arms):
        curve = aggregate_curve(runs[arm], "accuracy", smooth=window)
        if curve is None:
            continue
        x = (curve.steps + 1) * samples[arm]
        ax.plot(x, curve.mean, color=f"C{i}", label=arm)
        ax.fill_between(x, curve.mean - curve.spread, curve.mean + curve.spread, color=f"C{i}", alpha=0.2)
    ax.set_xlabel("generated samples")
    ax.set_ylabel(f"train accuracy (trailing mean over {window} steps)")
    ax.set_title("accuracy vs samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def sampler_keys(rows: Rows) -> list[str]:
    keys = sorted({k for r in rows for k in r if k.startswith("sampler/")})
    return keys


def plot_sampler(runs: list[Rows], labels: list[str], path: Path) -> Path | None:
    """DUMP's per-distribution sampling probabilities over steps (seed mean ± spread)."""
    keys = sampler_keys(runs[0]) if runs else []
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, key in enumerate(keys):
        curve = aggregate_curve(runs, key)
        if curve is None:
            continue
        j = int(key.rsplit("_", 1)[-1]) if key.rsplit("_", 1)[-1].isdigit() else i
        label = f"{key} ({labels[j]})" if j < len(labels) else key
        ax.plot(curve.steps, curve.mean, color=f"C{i}", label=label)
        ax.fill_between(curve.steps, curve.mean - curve.spread, curve.mean + curve.spread, color=f"C{i}", alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("sampling probability")
    ax.set_title("DUMP: per-distribution sampling probabilities")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_identity(res: bandit.IdentityResult, path: Path) -> Path:
    """Left: median |actual - predicted| against eta (log-log) with a slope-2 guide; right: predicted vs actual."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, kind in enumerate(bandit.PG_KINDS):
        err = res.median_abs_error(kind)
        ax1.loglog(res.etas, err, "o-", color=f"C{i}", label=f"{kind} PG: slope {res.slope(kind):.3f}")
        ax1.loglog(res.etas, err[0] * (res.etas / res.etas[0]) ** 2, ":", color=f"C{i}", linewidth=1)
    ax1.set_xlabel("step size eta")
    ax1.set_ylabel("median |ΔH actual - ΔH predicted|")
    ax1.set_title("first-order error (dotted: slope 2)")
    ax1.legend(fontsize=8)
    k = int(np.argmin(np.abs(res.etas - 1e-2)))
    for i, kind in enumerate(bandit.PG_KINDS):
        ax2.plot(res.predicted[kind][k], res.actual[kind][k], ".", color=f"C{i}", alpha=0.5,
                 label=f"{kind} PG (corr {res.correlation(kind, k):.5f})")
    lim = [min(ax2.get_xlim()[0], ax2.get_ylim()[0]), max(ax2.get_xlim()[1], ax2.get_ylim()[1])]
    ax2.plot(lim, lim, "k--", linewidth=1)
    ax2.set_xlabel("predicted ΔH = -eta·Cov")
    ax2.set_ylabel("actual ΔH")
    ax2.set_title(f"{res.actual['natural'].shape[1]} random bandits, eta = {res.etas[k]:g}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---- the bandit experiment ------------------------------------------------------------------------------------------

def identity_section(res: bandit.IdentityResult) -> tuple[str, list[dict[str, Any]], str]:
    """Verdict, check rows and one-line measurement of the entropy-change identity."""
    k = int(np.argmin(np.abs(res.etas - 1e-3)))
    checks = []
    for kind in bandit.PG_KINDS:
        slope = res.slope(kind)
        checks.append({"check": f"{kind} PG: log-log slope of the error vs eta in [1.8, 2.2]",
                       "detail": f"slope {slope:.3f}", "verdict": HELD if 1.8 <= slope <= 2.2 else NOT_HELD})
        rel = float(res.median_rel_error(kind)[k])
        checks.append({"check": f"{kind} PG: median relative error at eta = {res.etas[k]:g} below 1 %",
                       "detail": f"{100 * rel:.3f} %", "verdict": HELD if rel < 0.01 else NOT_HELD})
    verdict = HELD if all(c["verdict"] == HELD for c in checks) else NOT_HELD
    measured = "; ".join(f"{kind}: slope {res.slope(kind):.3f}, median rel. error {100 * res.median_rel_error(kind)[k]:.2f} % "
                         f"at eta {res.etas[k]:g}" for kind in bandit.PG_KINDS)
    return verdict, checks, measured


# ---- markdown -------------------------------------------------------------------------------------------------------

def _ms(values: list[float]) -> str:
    m, s = mean_and_spread(values)
    return "n/a" if not np.isfinite(m) else f"{m:.3f} ± {s:.3f}"


def _arm_overrides(arm: str) -> str:
    ov = ARMS[arm].overrides
    return "; ".join(f"`{o}`" for o in ov) if ov else "—"


def write_report(out_dir: Path, experiments: list[Experiment], runs: dict[str, list[Rows]], cfg, wall_s: float,
                 command: str = "", load: tuple[float, float] | None = None, custom: dict | None = None,
                 configs: dict | None = None) -> dict[str, Any]:
    """Measure, check, plot and write OUT/report.md and OUT/summary.json; returns the summary."""
    from entropo.reproduce.runner import arm_recipe

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"command": command, "wall_s": wall_s, "seeds": cfg.seeds, "steps": cfg.steps,
                               "eval_size": cfg.eval_size, "eval_n": cfg.eval_n, "overrides": cfg.overrides,
                               "load_avg": list(load) if load else None,
                               "experiments": {}}
    sections, table = [], []
    for exp in experiments:
        entry: dict[str, Any] = {"title": exp.title, "paper": exp.paper, "claim": exp.claim}
        images: list[Path] = []
        lines = [f"## {exp.title}", "", f"**Paper:** {exp.paper}", "", f"**Claim:** {exp.claim}", ""]
        exp_cfg = (configs or {}).get(exp.name, cfg)
        if exp.kind == "custom":
            res = (custom or {})[exp.name]
            lines += res.lines
            if res.checks:
                lines += ["", "| check | measured | verdict |", "|---|---|---|"]
                lines += [f"| {c['check']} | {c['detail']} | {VERDICT_MARK[c['verdict']]} |" for c in res.checks]
            for p in map(Path, res.plots):  # the report links plots/<name>: copy what the experiment drew elsewhere
                if p.parent.resolve() != plots.resolve():
                    p = Path(shutil.copy(p, plots / f"{exp.name}_{p.name}"))
                images.append(p)
            entry.update({"verdict": res.verdict, "checks": res.checks, "measured": res.measured,
                          "values": res.values})
        elif exp.kind == "bandit":
            res = bandit.identity_experiment(num=500, arms=10, etas=BANDIT_ETAS, seed=0)
            verdict, checks, measured = identity_section(res)
            images.append(plot_identity(res, plots / f"{exp.name}.png"))
            setup = ("**Setup:** 500 random 10-armed softmax bandits (logits ~ N(0, 2²), Q ~ N(0, 1), A = Q − E_π Q), "
                     "float64, exact entropy after one step vs the first-order prediction; no language model.")
            lines += [setup, "",
                      "| check | measured | verdict |", "|---|---|---|"]
            lines += [f"| {c['check']} | {c['detail']} | {VERDICT_MARK[c['verdict']]} |" for c in checks]
            lines += ["", "| eta | natural: median rel. error | vanilla: median rel. error |", "|---|---|---|"]
            lines += [f"| {e:g} | {100 * a:.4f} % | {100 * b:.4f} % |" for e, a, b in
                      zip(res.etas, res.median_rel_error("natural"), res.median_rel_error("vanilla"))]
            entry.update({"verdict": verdict, "checks": checks, "measured": measured,
                          "slopes": {k: res.slope(k) for k in bandit.PG_KINDS}})
        else:
            exp_runs = {arm: runs[arm] for arm in exp.arms}
            extra = [m for m in [*SUMMARY_MEASURES, *exp.extra_measures] if m not in exp.measures()]
            if "epo" in exp.arms:
                extra.append("epo_band_inside")
            if "d3s" in exp.arms:
                extra.append("d3s_kept_samples")
            measured_values = measure_runs(exp, exp_runs, extra)
            verdict, results = evaluate_checks(exp, measured_values)
            lines += ["**Arms** (shipped recipe + overrides, on top of the suite's scale settings):", "",
                      "| arm | recipe | overrides | what |", "|---|---|---|---|"]
            lines += [f"| {a} | `{ARMS[a].recipe}` | {_arm_overrides(a)} | {ARMS[a].label} |" for a in exp.arms]
            lines += ["", "| check | measured (mean ± std over seeds) | verdict |", "|---|---|---|"]
            lines += [f"| {r.text} | {r.detail} | {VERDICT_MARK[r.verdict]} |" for r in results]
            names = list(measured_values)
            lines += ["", "| arm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            lines += [f"| {a} | " + " | ".join(_ms(measured_values[m][a]) for m in names) + " |" for a in exp.arms]
            lines += ["", "Measures: " + "; ".join(f"*{m}* = {MEASURES[m][0]}" for m in names) + "."]
            images.append(plot_curves(exp, exp_runs, plots / f"{exp.name}_curves.png"))
            if "fit" in exp.extra_plots:
                images.append(plot_fit(exp_runs[exp.arms[0]], plots / f"{exp.name}_fit.png"))
            if "samples" in exp.extra_plots:
                samples = {}
                for a in exp.arms:
                    r = arm_recipe(a, 0, exp_cfg)
                    samples[a] = r.rollout.prompts_per_step * r.rollout.n * r.rollout.max_tries
                images.append(plot_samples(exp, exp_runs, samples, plots / f"{exp.name}_samples.png"))
            if "sampler" in exp.extra_plots and "dump" in exp.arms:
                tasks = arm_recipe("dump", 0, exp_cfg).task.params.get("tasks", [])
                labels = [t.get("label") or t["name"] for t in tasks]
                p = plot_sampler(exp_runs["dump"], labels, plots / f"{exp.name}_sampler.png")
                if p is not None:
                    images.append(p)
                    finals = {k: _ms([series(rows, k)[1][-1] for rows in exp_runs["dump"]])
                              for k in sampler_keys(exp_runs["dump"][0])}
                    lines += ["", "DUMP's sampling probabilities at the last step: " +
                              ", ".join(f"{k} ({labels[i] if i < len(labels) else ''}) {v}"
                                        for i, (k, v) in enumerate(finals.items())) + "."]
            if exp_cfg.steps != cfg.steps:
                lines += ["", f"This experiment's scale: {exp_cfg.steps} RL steps per run."]
            measured = "; ".join(r.detail.split(";")[0] + f" [{r.text.split(' of ')[0]}]" for r in results)
            entry.update({"verdict": verdict, "measured": measured,
                          "checks": [{"check": r.text, "detail": r.detail, "verdict": r.verdict, "values": r.values}
                                     for r in results],
                          "values": measured_values})
        if exp.note:
            lines += ["", f"*Note:* {exp.note}"]
        lines += ["", f"**Verdict: {VERDICT_MARK[entry['verdict']]}**", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in images] + [""]
        sections.append("\n".join(lines))
        table.append(f"| {exp.title} | {exp.claim} | {entry['measured']} | {VERDICT_MARK[entry['verdict']]} |")
        entry["plots"] = [str(p.relative_to(out_dir)) for p in images]
        summary["experiments"][exp.name] = entry

    # time the runs themselves recorded (excludes reused-run savings and the report): sum of time/step_s
    run_s = sum(float(series(rows, "time/step_s")[1].sum()) for seeds in runs.values() for rows in seeds)
    summary["runs_step_s"] = run_s
    counts = {v: sum(e["verdict"] == v for e in summary["experiments"].values()) for v in (HELD, NOT_HELD, INCONCLUSIVE)}
    every = getattr(cfg, "eval_every", None)
    # experiments with their own scale (steps; a custom one's evaluation) state it in their note
    steps = sorted({c.steps for c in (configs or {}).values()}) or [cfg.steps]
    when = (f"every {max(1, steps[0] // 4)} steps and at the end" if every is None and len(steps) == 1
            else "during the runs and at the end" if every is None
            else "at the start and the end" if every == 0 else f"every {every} steps and at the end")
    steps_text = (f"{steps[0]} RL steps" if len(steps) == 1
                  else f"{', '.join(map(str, steps))} RL steps (per experiment)")
    scale = (f"Scale: {cfg.seeds} seed(s) per arm, {steps_text}, held-out eval on {cfg.eval_size} prompts × "
             f"{cfg.eval_n} samples at T = 1 (pass@1, pass@{cfg.eval_n}), {when}, unless an experiment's note says "
             "otherwise."
             + (f" Overrides on every arm: {', '.join(f'`{o}`' for o in cfg.overrides)}." if cfg.overrides else ""))
    rule = ("Each verdict comes from the rule stated in its check, applied to per-seed numbers paired by seed (arm "
            "and baseline of a seed start from the same warmed-up model). *held*: every seed shows the claimed effect; "
            "*did not hold*: no seed does; *inconclusive*: the seeds disagree or the effect is below the stated margin. "
            "A claim that does not reproduce at this scale is a result, reported as such.")
    generated = (f"Generated {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} with {os.cpu_count()} CPU "
                 f"core(s), wall time of this invocation {wall_s / 60:.1f} min (the RL steps of all runs, as recorded "
                 f"in their metrics: {run_s / 60:.1f} min)"
                 + (f" (1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end)" if load else "")
                 + ".  ")
    header = [
        "# entropo reproduce — does each method do what its paper claims, at small scale?", "",
        f"Command: `{command or 'entropo reproduce'}`  ",
        generated, scale, "", rule, "",
        f"**{counts[HELD]} held, {counts[NOT_HELD]} did not hold, {counts[INCONCLUSIVE]} inconclusive.**", "",
        "## Summary", "", "| experiment | claim | measured | verdict |", "|---|---|---|---|", *table, "",
    ]
    (out_dir / "report.md").write_text("\n".join(header) + "\n" + "\n".join(sections))
    summary["counts"] = counts
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    """The report's summary table alone (for docs/reproduce_quick.md)."""
    rows = ["| experiment | claim | measured | verdict |", "|---|---|---|---|"]
    for e in summary["experiments"].values():
        rows.append(f"| {e['title']} | {e['claim']} | {e['measured']} | {VERDICT_MARK[e['verdict']]} |")
    return "\n".join(rows)


def summary_document(summary: dict[str, Any], report_path: Path) -> str:
    """A short Markdown page: how it was made, the scale, the verdict counts and the summary table."""
    c = summary["counts"]
    return "\n".join([
        "# Reproduction suite: summary", "",
        f"Regenerate with `{summary['command']}` (the full report, with plots, is written to `{report_path}`).", "",
        (f"Scale: {summary['seeds']} seed(s) per arm, {summary['steps']} RL steps per run, held-out eval on "
         f"{summary['eval_size']} prompts × {summary['eval_n']} samples; wall time {summary['wall_s'] / 60:.1f} min (RL steps as recorded by the runs: "
         f"{summary.get('runs_step_s', float('nan')) / 60:.1f} min)"
         + (f" (load average {summary['load_avg'][0]:.1f} → {summary['load_avg'][1]:.1f} on "
            f"{os.cpu_count()} cores)" if summary.get("load_avg") else "") + "."),
        "",
        f"**{c[HELD]} held, {c[NOT_HELD]} did not hold, {c[INCONCLUSIVE]} inconclusive.**", "",
        summary_table(summary), "",
    ])
