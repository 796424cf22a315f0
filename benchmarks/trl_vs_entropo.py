"""entropo vs TRL's GRPOTrainer on identical work, measured side by side in one invocation.

    /work/venv-trl/bin/python benchmarks/trl_vs_entropo.py --config tiny [--repeats 3] [--steps 5] [--quick]
    /work/venv-trl/bin/python benchmarks/trl_vs_entropo.py --config smollm2 --cells 1:0 --repeats 2

(one interpreter with both entropo and trl: see benchmarks/README.md for the separate venv). For every cell of the
matrix {1, 2 PPO epochs} x {KL off, KL on} it runs R repeats of [entropo trial, TRL trial] (interleaved, each a fresh
subprocess running W warm-up + S timed RL steps and printing one JSON line), then reports MEDIANS per side: seconds per
RL step split into rollout / reward / score (old-policy + reference log-probs) / update / other, generated and update
tokens per second, the update's and the scoring passes' achieved FLOP/s (6·N and 2·N per token, N = parameters
without embedding lookups, LM head included) as a fraction of this machine's measured fp32 GEMM rate, and the peak
RSS of each side's process; then the ratios (throughput = TRL s/step / entropo s/step, > 1 means entropo is faster;
memory = entropo peak / TRL peak, < 1 means entropo is leaner). Results also go to --out as JSON.

Identical work: same model folder, same prompts in the same order (entropo's sampler schedule), same chat template
(checked: the TRL trial compares its prompt token ids with entropo's), G completions per prompt each exactly L tokens
(TRL: EOS masked until L with min_new_tokens; entropo: decoding continues past EOS with ignore_eos, which keeps
its sampling log-probs exactly the policy's; checked from the generated token counts), same temperature, same PPO epochs
(TRL num_iterations) with one optimizer step each, token-mean aggregation (TRL loss_type="dapo"), KL k3 with the same
coefficient (TRL beta; a reference model only when > 0), same AdamW lr / clip / grad-norm, same micro-batch, fp32,
2 torch threads. TRL keeps its own defaults where they are its memory/speed choices (gradient_checkpointing=True,
its fused LM head). entropo reuses the engine's sampling log-probs (train.old_logprobs=auto, its default: only
when they are exactly the policy's) unless --entropo-old-logprobs recompute; TRL computes an
old-policy pass only when num_iterations > 1. The passes that ran are counted and shown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _entropo_side import RESULT_PREFIX

SMOLLM2_DIR = Path.home() / ".cache" / "entropo" / "models" / "smollm2-135m-instruct"

# The work of each configuration. P prompts x G completions x L tokens per RL step.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": "tiny",
        "task": {"name": "arithmetic", "params": {"digits": 1, "num_terms": 3, "chat": False, "template": "{expr}="}},
        "prompts_per_step": 16, "group_size": 8, "max_new_tokens": 16, "temperature": 1.0,
        "micro_batch_size": 128, "lr": 1e-5, "kl_on": 0.04,
        "warmup_steps": 2, "timed_steps": 5, "repeats": 3,
        "gemm_shape": (2048, 64, 256),  # [B·L, d] x [d, 4d] of the tiny model
        "entropo": {"logprob_chunk_size": 1024},
    },
    "smollm2": {
        "model": str(SMOLLM2_DIR),
        "task": {"name": "arithmetic", "params": {"digits": 1, "chat": True}},
        # 2 prompts x 8 x 64 tokens: ~10-20 s per step on a quiet 2-core CPU (4 prompts took ~2x as long)
        "prompts_per_step": 2, "group_size": 8, "max_new_tokens": 64, "temperature": 0.7,
        "micro_batch_size": 16, "lr": 1e-5, "kl_on": 0.04,
        "warmup_steps": 1, "timed_steps": 2, "repeats": 2,
        "gemm_shape": (2048, 576, 1536),  # [B·L, d] x [d, 4d]-like: SmolLM2-135M's MLP up-projection
        "entropo": {"logprob_chunk_size": 256},
    },
}
ALL_CELLS = [(1, False), (1, True), (2, False), (2, True)]  # (PPO epochs, KL on)
TIME_KEYS = ("rollout_s", "reward_s", "score_s", "update_s", "other_s", "step_s")


# ---- machine facts ------------------------------------------------------------------------------------------------

def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": version("torch"), "transformers": version("transformers"), "trl": version("trl"),
        "accelerate": version("accelerate"), "entropo": version("entropo"),
        "date": dt.datetime.now().isoformat(timespec="seconds"), "loadavg_start": os.getloadavg(),
    }


# ---- model, specs, trials -----------------------------------------------------------------------------------------

def prepare_model(cfg: dict[str, Any], tmp: Path) -> str:
    """A model folder both sides load: the tiny model saved once, or the cached SmolLM2 folder (pulled if missing)."""
    if cfg["model"] == "tiny":
        from entropo.models import tiny

        path = tmp / "tiny-model"
        tiny(path=path)
        return str(path)
    path = Path(cfg["model"])
    if not (path / "config.json").exists():
        from entropo.models import pull

        print(f"{path} missing: pulling smollm2-135m-instruct (entropo models pull) ...", flush=True)
        pull("smollm2-135m-instruct")
    return str(path)


def matmul_params(model_path: str) -> int:
    """N for the FLOP estimates: parameters without embedding lookups, LM head included (entropo.perf)."""
    from entropo.models import load
    from entropo.perf import count_params

    model, _ = load(model_path)
    n = count_params(model, include_embeddings=False)
    del model
    return n


def make_spec(cfg: dict[str, Any], model_path: str, epochs: int, kl_on: bool, args) -> dict[str, Any]:
    return {
        "model_path": model_path, "task": cfg["task"], "seed": 0,
        "prompts_per_step": cfg["prompts_per_step"], "group_size": cfg["group_size"],
        "max_new_tokens": cfg["max_new_tokens"], "temperature": cfg["temperature"],
        "ppo_epochs": epochs, "kl_coef": cfg["kl_on"] if kl_on else 0.0, "lr": cfg["lr"],
        "clip_low": 0.2, "clip_high": 0.28, "micro_batch_size": cfg["micro_batch_size"],
        "warmup_steps": args.warmup if args.warmup is not None else cfg["warmup_steps"],
        "timed_steps": args.steps if args.steps is not None else cfg["timed_steps"],
        "threads": args.threads,
        "entropo": {"old_logprobs": args.entropo_old_logprobs,
                    "activation_checkpointing": args.entropo_activation_checkpointing,
                    "activation_memory_mb": args.entropo_activation_memory_mb,
                    "reference_resident": args.entropo_reference_resident,
                    "micro_batch_size": args.entropo_micro_batch_size or cfg["micro_batch_size"], **cfg["entropo"]},
        "trl": {"gradient_checkpointing": args.trl_gradient_checkpointing},
    }


def run_side(side: str, spec: dict[str, Any], tmp: Path, timeout_s: float) -> dict[str, Any]:
    """Run one trial subprocess; returns its parsed result (or {"error": ...})."""
    spec_path = tmp / f"spec-{side}-{time.time_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "BENCH_TMP": str(tmp), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    script = HERE / f"_{side}_side.py"
    load_before = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, str(script), str(spec_path)], capture_output=True, text=True, env=env,
                          timeout=timeout_s, check=False)  # a failed trial is reported, not raised
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"side": side, "error": f"exit {proc.returncode}: {proc.stderr[-3000:]}"}
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    return result


def trial_summary(result: dict[str, Any]) -> dict[str, float]:
    """Median over a trial's timed steps (warm-up steps dropped) of each per-step quantity; 'other' = step minus
    the named phases."""
    timed = result["steps"][result["warmup_steps"]:]
    for row in timed:
        row["other_s"] = row["step_s"] - sum(row[k] for k in ("rollout_s", "reward_s", "score_s", "update_s"))
    keys = [k for k in timed[0] if isinstance(timed[0][k], (int, float))]
    out = {k: statistics.median(row[k] for row in timed) for k in keys}
    out["peak_rss_mb"] = result["peak_rss_mb"]
    return out


def side_summary(trials: list[dict[str, float]], n_params: int, gemm_rate: float) -> dict[str, float]:
    """Median over repeats of the trial medians, plus the derived rates."""
    from entropo.perf import transformer_flops

    med = {k: statistics.median(t[k] for t in trials) for k in trials[0]}
    med["gen_tok_s"] = med["gen_tokens"] / med["rollout_s"] if med["rollout_s"] else 0.0
    med["update_tok_s"] = med["update_tokens"] / med["update_s"] if med["update_s"] else 0.0
    med["update_flops_s"] = transformer_flops(n_params, med["update_tokens"], backward=True) / med["update_s"] \
        if med["update_s"] else 0.0
    med["score_flops_s"] = transformer_flops(n_params, med["score_tokens"], backward=False) / med["score_s"] \
        if med["score_s"] > 0 and med["score_tokens"] > 0 else 0.0
    med["update_gemm_frac"] = med["update_flops_s"] / gemm_rate
    med["score_gemm_frac"] = med["score_flops_s"] / gemm_rate
    batch_tokens = med["update_tokens"] / med["optimizer_steps"] if med["optimizer_steps"] else 0.0
    med["score_passes"] = round(med["score_tokens"] / batch_tokens) if batch_tokens else 0
    med["repeats"] = len(trials)
    return med


def ratios(ent: dict[str, float], trl: dict[str, float]) -> dict[str, float]:
    """TRL time / entropo time per phase (> 1: entropo faster; 'throughput' is the step's), and entropo / TRL peak
    RSS (< 1: entropo leaner)."""
    # a phase shorter than 1 ms on either side is one that does not run there (e.g. no scoring pass): no ratio
    out = {f"{k}_trl_over_entropo": (trl[k] / ent[k] if min(ent[k], trl[k]) > 1e-3 else float("nan"))
           for k in ("rollout_s", "score_s", "update_s", "step_s")}
    out["throughput"] = out["step_s_trl_over_entropo"]
    out["memory_entropo_over_trl"] = ent["peak_rss_mb"] / trl["peak_rss_mb"]
    return out


# ---- report -------------------------------------------------------------------------------------------------------

def consistency_warnings(cell: str, results: dict[str, list[dict[str, Any]]], spec: dict[str, Any]) -> list[str]:
    """Checks that both sides did the same work (token counts, prompt ids, optimizer steps, threads)."""
    rows = spec["prompts_per_step"] * spec["group_size"]
    want_gen = rows * spec["max_new_tokens"]
    warn = []
    for side, trials in results.items():
        for r in trials:
            for i, s in enumerate(r["steps"]):
                if round(s["gen_tokens"]) != want_gen:
                    warn.append(f"{cell} {side}: step {i} generated {s['gen_tokens']:.0f} tokens, expected {want_gen}")
                if s["optimizer_steps"] != spec["ppo_epochs"]:
                    warn.append(f"{cell} {side}: step {i} made {s['optimizer_steps']} optimizer steps")
            if r["threads"] != spec["threads"]:
                warn.append(f"{cell} {side}: ran with {r['threads']} threads")
            if side == "trl" and not r.get("checks", {}).get("prompt_ids_equal_entropo", False):
                warn.append(f"{cell} trl: prompt token ids differ from entropo's")
    ent_tokens = [s["update_tokens"] for r in results.get("entropo", []) for s in r["steps"]]
    trl_tokens = [s["update_tokens"] for r in results.get("trl", []) for s in r["steps"]]
    if ent_tokens and trl_tokens and abs(statistics.median(ent_tokens) - statistics.median(trl_tokens)) > 0.5:
        warn.append(f"{cell}: update tokens differ (entropo {statistics.median(ent_tokens):.0f}, "
                    f"trl {statistics.median(trl_tokens):.0f})")
    return warn


def markdown_table(report: dict[str, Any]) -> str:
    head = ("| config | epochs | KL | side | rollout s | reward s | score s | update s | other s | step s | gen tok/s "
            "| update tok/s | update GFLOP/s (% GEMM) | score GFLOP/s (% GEMM) | peak RSS MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cell in report["cells"]:
        tag = f"| {cell['config']} | {cell['epochs']} | {'on' if cell['kl_coef'] else 'off'} "
        for side in ("entropo", "trl"):
            s = cell["summary"].get(side)
            if s is None:
                lines.append(tag + f"| {side} | " + " | ".join(["n/a"] * 11) + " |")
                continue
            name = side if side == "entropo" else f"trl{' (grad ckpt)' if report['trl_gradient_checkpointing'] else ''}"
            passes = round(s.get("score_passes", 0))
            score = (f"{s['score_flops_s'] / 1e9:.1f} ({100 * s['score_gemm_frac']:.0f}%), {passes} pass"
                     f"{'es' if passes > 1 else ''}" if s["score_flops_s"] else "no pass")
            lines.append(tag + f"| {name} | {s['rollout_s']:.3f} | {s['reward_s']:.3f} | {s['score_s']:.3f} | "
                         f"{s['update_s']:.3f} | {s['other_s']:.3f} | {s['step_s']:.3f} | {s['gen_tok_s']:.0f} | "
                         f"{s['update_tok_s']:.0f} | {s['update_flops_s'] / 1e9:.1f} "
                         f"({100 * s['update_gemm_frac']:.0f}%) | {score} | {s['peak_rss_mb']:.0f} |")
        r = cell.get("ratios")
        if r:
            def fmt(v: float) -> str:
                return "–" if math.isnan(v) else f"{v:.2f}x"  # NaN: the phase does not run on one side
            lines.append(tag + f"| **TRL/entropo** | {fmt(r['rollout_s_trl_over_entropo'])} | | "
                         f"{fmt(r['score_s_trl_over_entropo'])} | {fmt(r['update_s_trl_over_entropo'])} | | "
                         f"**{fmt(r['throughput'])}** | | | | | **mem {r['memory_entropo_over_trl']:.2f}x** |")
    return "\n".join(lines)


def summarize(report: dict[str, Any]) -> None:
    """(Re)compute every cell's per-side medians and ratios from its stored trials."""
    for cell in report["cells"]:
        cell["summary"] = {side: side_summary([trial_summary(t) for t in ts], report["n_params_matmul"],
                                              report["gemm_flops_s"])
                           for side, ts in cell["trials"].items() if ts}
        if "entropo" in cell["summary"] and "trl" in cell["summary"]:
            cell["ratios"] = ratios(cell["summary"]["entropo"], cell["summary"]["trl"])


def print_report(report: dict[str, Any], *, show_configs: bool) -> None:
    cfg = report["config"]
    first = report["cells"][0]["trials"] if report["cells"] else {}
    if show_configs:
        print("\n## full configuration (first cell; other cells differ only in PPO epochs / KL coefficient)")
        for side, trials in first.items():
            if trials:
                print(f"\n### {side}\n```\n{trials[0]['config']}\n```")
                print(f"{side} phases: {trials[0]['notes']['phases']}")
    print(f"\n## results ({report['config_name']}: {cfg['prompts_per_step']} prompts x {cfg['group_size']} "
          f"completions x {cfg['max_new_tokens']} tokens per RL step; medians of {report['repeats']} repeats x the "
          f"timed steps; GEMM ceiling {report['gemm_flops_s'] / 1e9:.1f} GFLOP/s, N = {report['n_params_matmul']:,})\n")
    print(markdown_table(report))
    print("\nRatios: time columns TRL/entropo (> 1 = entropo faster; the step column is the throughput ratio); "
          "memory = entropo peak RSS / TRL peak RSS (< 1 = entropo leaner). Shared machine: check the load averages.")
    for w in report.get("warnings", []):
        print(f"WARNING {w}")


def parse_cells(text: str | None) -> list[tuple[int, bool]]:
    if not text:
        return ALL_CELLS
    cells = []
    for item in text.split(","):
        epochs, kl = item.split(":")
        cells.append((int(epochs), kl.strip().lower() in ("1", "on", "true", "kl")))
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--repeats", type=int, default=None, help="trials per side and cell (default: per config)")
    parser.add_argument("--steps", type=int, default=None, help="timed RL steps per trial (default: per config)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up RL steps per trial (default: per config)")
    parser.add_argument("--cells", default=None,
                        help="subset of the matrix as EPOCHS:KL pairs, e.g. '1:off,2:on' (default: all four)")
    parser.add_argument("--sides", default="entropo,trl", help="comma-separated sides to run")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 1-epoch KL-off cell only, 1 repeat, 1 warm-up + 1 timed step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--entropo-old-logprobs", choices=["auto", "recompute"], default="auto")
    parser.add_argument("--entropo-activation-checkpointing",
                        type=lambda s: "auto" if s.lower() == "auto" else s.lower() in ("1", "true", "yes", "on"),
                        default=False, help="entropo's train.activation_checkpointing: false (its default), true, auto")
    parser.add_argument("--entropo-activation-memory-mb", type=float, default=None,
                        help="entropo's train.activation_memory_mb (the budget of activation_checkpointing=auto); "
                        "default: entropo's default")
    parser.add_argument("--entropo-reference-resident", type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                        default=True, help="entropo's model.reference_resident (default true, its default)")
    parser.add_argument("--entropo-micro-batch-size", type=int, default=None,
                        help="entropo's train.micro_batch_size (default: the config's, which TRL also uses as "
                        "per_device_train_batch_size); the same samples and gradients, in smaller pieces")
    parser.add_argument("--trl-gradient-checkpointing", type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                        default=True, help="TRL's default is true (kept: a user's run)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per trial")
    parser.add_argument("--out", default=None, help="JSON results (default benchmarks/results/<date>-<config>.json)")
    parser.add_argument("--from-json", default=None, help="re-summarize and print a results file, run nothing")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        summarize(report)
        print_report(report, show_configs=False)
        return 0

    cfg = CONFIGS[args.config]
    cells = parse_cells(args.cells)
    repeats = args.repeats if args.repeats is not None else cfg["repeats"]
    if args.quick:
        cells, repeats, args.steps, args.warmup = [(1, False)], 1, 1, 1
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]

    from entropo.perf import measure_gemm_flops

    facts = machine_facts()
    print("## machine\n" + "\n".join(f"- {k}: {v}" for k, v in facts.items()), flush=True)
    report: dict[str, Any] = {"machine": facts, "config_name": args.config, "config": cfg, "repeats": repeats,
                              "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
                              "entropo_old_logprobs": args.entropo_old_logprobs, "cells": [], "warnings": [],
                              "partial": True}
    out = Path(args.out) if args.out else HERE / "results" / f"{dt.date.today().isoformat()}-{args.config}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(current_cell: dict[str, Any] | None = None) -> None:
        """Write what has been measured so far (a long run cut short still leaves its trials; --from-json reads it)."""
        snapshot = {**report, "cells": report["cells"] + ([current_cell] if current_cell else [])}
        out.write_text(json.dumps(snapshot, indent=1, default=str))

    with tempfile.TemporaryDirectory(prefix="trl-vs-entropo-") as tmp_name:
        tmp = Path(tmp_name)
        model_path = prepare_model(cfg, tmp)
        n_params = matmul_params(model_path)
        gemm_start = measure_gemm_flops(cfg["gemm_shape"], threads=args.threads, repeats=7)
        print(f"- model: {model_path} (N = {n_params:,} matmul parameters)\n- fp32 GEMM {cfg['gemm_shape']}, "
              f"{args.threads} threads, before the trials: {gemm_start / 1e9:.1f} GFLOP/s", flush=True)
        report.update(model_path=model_path, n_params_matmul=n_params, gemm_flops_s=gemm_start,
                      gemm_shape=cfg["gemm_shape"])

        for epochs, kl_on in cells:
            spec = make_spec(cfg, model_path, epochs, kl_on, args)
            name = f"{args.config} epochs={epochs} kl={'on' if kl_on else 'off'}"
            results: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
            for r in range(repeats):
                for side in sides:  # interleaved: entropo, trl, entropo, trl, ...
                    t0 = time.perf_counter()
                    res = run_side(side, spec, tmp, args.timeout)
                    if "error" in res:
                        print(f"  {name} {side} #{r + 1}: FAILED {res['error']}", flush=True)
                        report["warnings"].append(f"{name} {side} #{r + 1} failed: {res['error'][-500:]}")
                        continue
                    med = trial_summary(res)
                    print(f"  {name} {side} #{r + 1}: {med['step_s']:.3f} s/step (rollout {med['rollout_s']:.3f}, "
                          f"score {med['score_s']:.3f}, update {med['update_s']:.3f}), peak {med['peak_rss_mb']:.0f} "
                          f"MB, load {res['loadavg_1m'][0]:.1f}->{res['loadavg_1m'][1]:.1f}, "
                          f"{time.perf_counter() - t0:.0f} s wall", flush=True)
                    results[side].append(res)
                    save({"config": args.config, "epochs": epochs, "kl_coef": spec["kl_coef"], "spec": spec,
                          "trials": results})
            cell = {"config": args.config, "epochs": epochs, "kl_coef": spec["kl_coef"], "spec": spec,
                    "trials": results}
            warnings = consistency_warnings(name, results, spec)
            report["warnings"] += warnings
            for w in warnings:
                print(f"  WARNING {w}", flush=True)
            report["cells"].append(cell)

        # The GEMM ceiling is measured before and after the trials (a busy shared machine drags it down); the
        # larger is the attainable rate the phases are compared with.
        gemm_end = measure_gemm_flops(cfg["gemm_shape"], threads=args.threads, repeats=7)
        gemm = max(gemm_start, gemm_end)
        report.update(gemm_flops_s=gemm, gemm_flops_s_start_end=[gemm_start, gemm_end], partial=False)
        print(f"- fp32 GEMM after the trials: {gemm_end / 1e9:.1f} GFLOP/s; ceiling used: {gemm / 1e9:.1f}")
    report["machine"]["loadavg_end"] = os.getloadavg()
    summarize(report)
    print_report(report, show_configs=True)
    save()
    print(f"\nwrote {out}")
    return 1 if any("failed" in w for w in report["warnings"]) else 0


if __name__ == "__main__":
    sys.exit(main())
