"""PNG curves of a run (``entropo plot RUN_DIR``): reward, accuracy, entropy, cov(logp, A), KL, clip fractions,
response length, plus accuracy against entropy with the R = -a*exp(H) + b fit of the Entropy Mechanism paper
(arXiv 2505.22617)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from entropo.diagnostics import fit_entropy_performance
from entropo.logging import read_metrics

# (file stem, title, metric keys drawn on the same axes)
PANELS = [
    ("reward", "reward (mean over samples)", ["reward/mean"]),
    ("accuracy", "accuracy (train samples; held-out eval as dots)", ["accuracy", "eval/accuracy"]),
    ("entropy", "mean token entropy of responses", ["entropy/mean"]),
    ("cov", "cov(log-prob, advantage)", ["cov/logp_adv"]),
    ("kl", "KL (k3) to reference / behaviour", ["kl/ref", "kl/behaviour"]),
    ("clip_fraction", "clip fraction", ["actor/clip_frac_low", "actor/clip_frac_high"]),
    ("response_length", "response length (tokens)", ["response/length_mean"]),
]


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    # the final row holds only the end-of-run eval; it belongs on eval curves and nowhere else
    pts = [(r["step"], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and (key.startswith("eval/") or not r.get("final"))]
    if not pts:
        return np.array([]), np.array([])
    s, v = zip(*pts)
    return np.array(s), np.array(v, dtype=float)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write one PNG per panel and a grid ``curves.png`` into RUN_DIR/plots; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"no metrics.jsonl with rows in {run_dir}")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written: list[Path] = []
    fig_grid, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax_grid, (stem, title, keys) in zip(axes.flat, PANELS):
        fig, ax = plt.subplots(figsize=(6, 4))
        for a in (ax, ax_grid):
            for key in keys:
                s, v = _series(rows, key)
                if len(s) == 0:
                    continue
                style = "o" if key.startswith("eval/") else "-"
                a.plot(s, v, style, label=key)
            a.set_title(title)
            a.set_xlabel("step")
            if a.lines:
                a.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=100)
        plt.close(fig)
        written.append(out / f"{stem}.png")
    # accuracy vs entropy with the R = -a e^H + b fit
    ax = axes.flat[len(PANELS)]
    _, h = _series(rows, "entropy/mean")
    _, acc = _series([r for r in rows if "entropy/mean" in r], "accuracy")
    ax.set_title("accuracy vs entropy, fit R = -a·e^H + b")
    ax.set_xlabel("entropy")
    if len(h) == len(acc) and len(h):
        ax.plot(h, acc, ".", label="steps")
        fit = fit_entropy_performance(list(h), list(acc))
        if fit:
            xs = np.linspace(0, max(h.max(), 1e-3), 100)
            ax.plot(xs, -fit["a"] * np.exp(xs) + fit["b"], "-",
                    label=f"a={fit['a']:.3f} b={fit['b']:.3f} ceiling={fit['ceiling']:.3f}")
        ax.legend(fontsize=8)
    fig_grid.tight_layout()
    fig_grid.savefig(out / "curves.png", dpi=90)
    plt.close(fig_grid)
    written.append(out / "curves.png")
    return written
