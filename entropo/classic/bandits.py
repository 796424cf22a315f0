"""Contextual bandits with batch-logged delayed feedback and successive policy generations, after "Contextual Bandits
in Payment Processing: Non-uniform Exploration and Supervised Learning at Adyen" (Vangara & Egg, arXiv 2412.00569,
OARS @ KDD 2025).

The setting the paper analyses, as a seeded simulator and a generation loop:

- :class:`PaymentSimulator`: a payment-like contextual bandit. A transaction is a context x (``dim`` standardised
  features); the actions are ``n_actions`` interventions (routes / retry options) of which only some are available
  for a given transaction (a dynamic action set A(x), at least one); the reward is authorization success, Bernoulli
  with P(success | x, a) = sigmoid(b_a + w_a·x + q_a·(x² - 1)) (high base rate, so the logs are class-imbalanced, and
  a quadratic term the learner has to find).
- Exploration rules turning reward-model scores f̂(x, ·) into action probabilities over A(x):
  :func:`igw_probs` (SquareCB's inverse-gap weighting, Foster & Rakhlin 2020: for a ≠ b = argmax f̂,
  p(a) = 1 / (K_x + γ·(f̂(x, b) - f̂(x, a))), p(b) = 1 - Σ_{a≠b} p(a)), :func:`epsilon_greedy_probs`
  (p(a) = (1-ε)·1[a = b] + ε/K_x) and uniform (ε = 1).
- :func:`run_generations`: generation g deploys its policy for ``decisions`` transactions (a batch period); the label
  of a decision arrives ``delay`` decisions later; generation g+1's reward model is refitted from scratch on the
  last ``memory`` labelled decisions only (short-term memory), unweighted (ERM, as the paper) or with importance
  weights 1/p(a|x) (:func:`importance_weights`). Generation 0 explores uniformly. The reward model is a maintained
  supervised learner: LightGBM gradient-boosted trees on (x, action as a categorical feature) — the paper's
  model family — or scikit-learn logistic regression with per-action linear terms.

Measured per generation: the expected regret of the deployed stochastic policy (P(success) of the best available
action minus the policy's, averaged over the generation's transactions), the regret of the greedy policy of the
generation's reward model on a fixed held-out set of transactions (the quality of the learned model, free of
exploration), and the success rate / class balance of its training window. The paper's observations: regression-
oracle exploration (SquareCB) has lower regret than uniform exploration, but later generations can be worse than the
first one trained on uniform logs (reward distribution shift, class imbalance), and performance can oscillate across
generations. Neither γ, ε nor the window lengths are public; γ defaults to √(K·T) with T the total number of
decisions (SquareCB's theory scaling).

No official code exists (the paper describes an internal system); the formulas are the standard ones of the named
methods. The program ``adyen_bandit`` (recipe ``entropo run adyen_bandit``) runs several exploration arms in
lockstep, logs every generation's metrics with :class:`entropo.logging.MetricsLogger` (so ``entropo plot`` works) and
checkpoints the plain-data state after every generation, so a rerun into the same directory resumes with identical
results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entropo.registry import register

PAPER = ("Contextual Bandits in Payment Processing: Non-uniform Exploration and Supervised Learning at Adyen, "
         "arXiv 2412.00569")
EXPLORATIONS = ("uniform", "epsilon_greedy", "squarecb")
LEARNERS = ("lightgbm", "logistic")


# ---- exploration rules ------------------------------------------------------------------------------------------

def _check_scores(scores: np.ndarray, available: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(scores, dtype=float)
    if f.ndim == 1:
        f = f[None, :]
    avail = np.ones_like(f, dtype=bool) if available is None else np.asarray(available, dtype=bool).reshape(f.shape)
    if not avail.any(axis=1).all():
        raise ValueError("available: every context needs at least one available action")
    return f, avail


def igw_probs(scores: np.ndarray, available: np.ndarray | None = None, gamma: float = 10.0) -> np.ndarray:
    """SquareCB's inverse-gap weighting over the available actions (rows = contexts).

    b = argmax of the scores among available actions (first on ties); for every other available action
    p(a) = 1 / (K_x + γ·(f(b) - f(a))); the greedy action gets the rest, p(b) = 1 - Σ_{a≠b} p(a) >= 1/K_x.
    Unavailable actions get 0. A 1-D ``scores`` returns a 1-D vector."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0 (got {gamma}); 0 explores uniformly, larger exploits more")
    one = np.asarray(scores).ndim == 1
    f, avail = _check_scores(scores, available)
    masked = np.where(avail, f, -np.inf)
    best = masked.argmax(axis=1)
    rows = np.arange(len(f))
    k = avail.sum(axis=1, keepdims=True).astype(float)
    gap = np.where(avail, masked[rows, best][:, None] - np.where(avail, f, 0.0), 0.0)
    p = np.where(avail, 1.0 / (k + gamma * gap), 0.0)
    p[rows, best] = 0.0
    p[rows, best] = 1.0 - p.sum(axis=1)
    return p[0] if one else p


def epsilon_greedy_probs(scores: np.ndarray, available: np.ndarray | None = None, epsilon: float = 0.1) -> np.ndarray:
    """p(a) = (1-ε)·1[a = argmax] + ε/K_x over the available actions (ε = 1: uniform)."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1] (got {epsilon})")
    one = np.asarray(scores).ndim == 1
    f, avail = _check_scores(scores, available)
    best = np.where(avail, f, -np.inf).argmax(axis=1)
    k = avail.sum(axis=1, keepdims=True).astype(float)
    p = np.where(avail, epsilon / k, 0.0)
    p[np.arange(len(f)), best] += 1.0 - epsilon
    return p[0] if one else p


def importance_weights(propensities: np.ndarray, clip: float | None = None, normalize: bool = True) -> np.ndarray:
    """Inverse-propensity weights 1/p(a|x) of logged decisions, optionally capped at ``clip`` and rescaled to mean 1
    (so the learner's regularisation keeps its scale)."""
    p = np.asarray(propensities, dtype=float)
    if (p <= 0).any() or (p > 1).any():
        raise ValueError("propensities must be in (0, 1]: a logged action had probability 0 under its policy")
    w = 1.0 / p
    if clip is not None:
        w = np.minimum(w, float(clip))
    return w / w.mean() if normalize else w


def sample_actions(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row drawn from ``probs`` (rows sum to 1)."""
    u = rng.random((len(probs), 1))
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0 + 1e-12
    return (cdf > u).argmax(axis=1)


# ---- the simulator ------------------------------------------------------------------------------------------------

@dataclass
class PaymentSimulator:
    """A seeded payment-like contextual bandit (see the module docstring). ``world_seed`` fixes the ground truth;
    contexts are drawn from the generator passed to :meth:`contexts`."""

    n_actions: int = 5
    dim: int = 6
    availability: float = 0.7  # chance an action is available for a transaction (one is always forced available)
    base_logit: float = 1.8  # mean success logit: sigmoid(1.8) ≈ 0.86, so failures are the minority class
    action_spread: float = 0.4
    linear_scale: float = 0.5
    quadratic_scale: float = 0.4
    world_seed: int = 0

    def __post_init__(self) -> None:
        if self.n_actions < 2 or self.dim < 1:
            raise ValueError(f"n_actions must be >= 2 and dim >= 1 (got {self.n_actions}, {self.dim})")
        if not 0.0 < self.availability <= 1.0:
            raise ValueError(f"availability must be in (0, 1] (got {self.availability})")
        r = np.random.default_rng([self.world_seed, 2412_00569])
        self.bias = self.base_logit + r.normal(0.0, self.action_spread, self.n_actions)
        self.w = r.normal(0.0, self.linear_scale, (self.n_actions, self.dim))
        self.q = r.normal(0.0, self.quadratic_scale, (self.n_actions, self.dim))

    def contexts(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(X [n, dim], available [n, K] bool with at least one True per row)."""
        x = rng.normal(size=(n, self.dim))
        avail = rng.random((n, self.n_actions)) < self.availability
        avail[np.arange(n), rng.integers(0, self.n_actions, n)] = True
        return x, avail

    def success_prob(self, x: np.ndarray) -> np.ndarray:
        """P(success | x, a) for every action, [n, K]."""
        logit = self.bias + x @ self.w.T + (x ** 2 - 1.0) @ self.q.T
        return 1.0 / (1.0 + np.exp(-logit))

    def rewards(self, x: np.ndarray, actions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.success_prob(x)[np.arange(len(x)), actions]
        return (rng.random(len(x)) < p).astype(float)


def expected_regret(probs: np.ndarray, true_p: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Per context: P(success) of the best available action minus the policy's expected P(success)."""
    best = np.where(available, true_p, -np.inf).max(axis=1)
    return best - (probs * true_p).sum(axis=1)


# ---- reward models (regression oracles) --------------------------------------------------------------------------

def fit_reward_model(learner: str, x: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_actions: int,
                     weights: np.ndarray | None = None, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Fit f̂(x, a) ≈ P(success) on logged (x, a, r) and return ``predict(X) -> [n, K]``.

    ``lightgbm``: gradient-boosted trees (100 trees, 15 leaves, single-threaded and deterministic) on x plus the
    action as a categorical feature — one joint model, as an industrial ERM pipeline. ``logistic``: scikit-learn
    logistic regression on per-action one-hot and one-hot ⊗ x features (linear per action, so it cannot represent
    the simulator's quadratic term)."""
    from entropo.extras import require

    if learner not in LEARNERS:
        raise ValueError(f"learner must be one of {LEARNERS} (got {learner!r})")
    y = np.asarray(rewards, dtype=float)
    if learner == "lightgbm":
        lgb = require("lightgbm", "classic", "the Adyen bandit's lightgbm reward model")
        feats = np.hstack([x, actions[:, None].astype(float)])
        if y.min() == y.max():  # a window of only successes (or failures): the constant predictor
            const = float(y[0])
            return lambda xs: np.full((len(xs), n_actions), const)
        model = lgb.LGBMClassifier(n_estimators=100, learning_rate=0.1, num_leaves=15, min_child_samples=20,
                                   deterministic=True, force_row_wise=True, num_threads=1, verbose=-1,
                                   random_state=seed)
        model.fit(feats, y.astype(int), sample_weight=weights, categorical_feature=[x.shape[1]])

        def predict(xs: np.ndarray) -> np.ndarray:
            n = len(xs)
            big = np.hstack([np.repeat(xs, n_actions, axis=0), np.tile(np.arange(n_actions, dtype=float), n)[:, None]])
            return model.predict_proba(big)[:, 1].reshape(n, n_actions)

        return predict
    lm = require("sklearn.linear_model", "classic", "the Adyen bandit's logistic reward model")

    def features(xs: np.ndarray, acts: np.ndarray) -> np.ndarray:
        oh = np.zeros((len(xs), n_actions))
        oh[np.arange(len(xs)), acts] = 1.0
        return np.hstack([oh, (oh[:, :, None] * xs[:, None, :]).reshape(len(xs), -1)])

    if y.min() == y.max():
        const = float(y[0])
        return lambda xs: np.full((len(xs), n_actions), const)
    model = lm.LogisticRegression(C=1.0, max_iter=1000, fit_intercept=False)
    model.fit(features(x, actions), y.astype(int), sample_weight=weights)

    def predict_lin(xs: np.ndarray) -> np.ndarray:
        return np.stack([model.predict_proba(features(xs, np.full(len(xs), a)))[:, 1] for a in range(n_actions)], 1)

    return predict_lin


# ---- the generation loop ------------------------------------------------------------------------------------------

@dataclass
class BanditArm:
    """One exploration configuration: ``exploration`` in uniform / epsilon_greedy / squarecb; ``weighted``: fit the
    next generation with importance weights 1/p(a|x) (capped at ``clip``)."""

    name: str
    exploration: str
    weighted: bool = False
    epsilon: float = 0.1
    gamma: float | None = None  # None: sqrt(K * total decisions)
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.exploration not in EXPLORATIONS:
            raise ValueError(f"arms.{self.name}.exploration must be one of {EXPLORATIONS} (got {self.exploration!r})")


def parse_arms(arms: Sequence[str | dict[str, Any]]) -> list[BanditArm]:
    """Arms from short names (``uniform``, ``epsilon_greedy``, ``squarecb``, ``squarecb_ipw`` = weighted) or
    mappings of :class:`BanditArm` fields."""
    out = []
    for a in arms:
        if isinstance(a, dict):
            out.append(BanditArm(**a))
            continue
        weighted = a.endswith("_ipw")
        base = a[: -len("_ipw")] if weighted else a
        if base not in EXPLORATIONS:
            raise ValueError(f"arms: unknown arm {a!r}; use one of {EXPLORATIONS} (optionally with _ipw) or a "
                             f"mapping {{name, exploration, weighted, epsilon, gamma, clip}}")
        out.append(BanditArm(a, base, weighted))
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"arms: names must be unique (got {names})")
    return out


def policy_probs(arm: BanditArm, scores: np.ndarray | None, available: np.ndarray, gamma: float) -> np.ndarray:
    """The arm's action probabilities; ``scores`` None (generation 0, no model yet) explores uniformly."""
    if scores is None or arm.exploration == "uniform":
        return available / available.sum(axis=1, keepdims=True)
    if arm.exploration == "epsilon_greedy":
        return epsilon_greedy_probs(scores, available, arm.epsilon)
    return igw_probs(scores, available, gamma)


def lag1_autocorrelation(values: Sequence[float]) -> float:
    """Lag-1 autocorrelation of a series around its mean (< 0: successive values alternate up and down)."""
    v = np.asarray(values, dtype=float)
    v = v - v.mean()
    den = float((v * v).sum())
    return float((v[1:] * v[:-1]).sum() / den) if den > 0 and len(v) > 2 else float("nan")


def _window(logs: dict[str, np.ndarray], t_start: int, delay: int, memory: int) -> dict[str, np.ndarray]:
    """Decisions labelled by time ``t_start`` (made before t_start - delay) within the last ``memory`` of them."""
    t = logs["t"]
    keep = (t < t_start - delay) & (t >= t_start - delay - memory)
    return {k: v[keep] for k, v in logs.items()}


def _to_state(logs: dict[str, dict[str, np.ndarray]], generation: int) -> dict[str, Any]:
    import torch

    return {"generation": generation,
            "logs": {arm: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}
                     for arm, d in logs.items()}}


def _from_state(state: dict[str, Any]) -> tuple[int, dict[str, dict[str, np.ndarray]]]:
    return int(state["generation"]), {arm: {k: v.numpy() for k, v in d.items()} for arm, d in state["logs"].items()}


def run_generations(out_dir: str | Path | None, seed: int, console: Callable[[str], None] = print, *,
                    arms: Sequence[str | dict[str, Any]] = ("uniform", "epsilon_greedy", "squarecb", "squarecb_ipw"),
                    generations: int = 20, decisions: int = 5000, delay: int = 1000, memory: int = 5000,
                    learner: str = "lightgbm", eval_contexts: int = 3000, simulator: dict[str, Any] | None = None,
                    burn_in: int = 2) -> dict[str, Any]:
    """Run every arm for ``generations`` policy generations in lockstep on the same transactions (common random
    numbers: generation g of every arm sees the same contexts and the same uniform draws). With ``out_dir``, logs
    one metrics row per generation and checkpoints after each, resuming from the newest checkpoint there."""
    if generations < 2:
        raise ValueError(f"generations must be >= 2 (got {generations})")
    if decisions < 1 or delay < 0 or memory < 1:
        raise ValueError("decisions and memory must be >= 1 and delay >= 0")
    if delay >= decisions:
        raise ValueError(f"delay ({delay}) must be smaller than decisions ({decisions}): otherwise generation 1 "
                         f"has no labelled data")
    sim = PaymentSimulator(**{"world_seed": seed, **(simulator or {})})
    arm_list = parse_arms(arms)
    k = sim.n_actions
    x_eval, a_eval = sim.contexts(np.random.default_rng([seed, 1, 0]), eval_contexts)
    p_eval = sim.success_prob(x_eval)
    logger = None
    start = 0
    logs: dict[str, dict[str, np.ndarray]] = {a.name: {} for a in arm_list}
    if out_dir is not None:
        from entropo import checkpoint
        from entropo.logging import MetricsLogger

        out_dir = Path(out_dir)
        logger = MetricsLogger(out_dir, tensorboard=False)
        ckpt = checkpoint.latest(out_dir)
        if ckpt is not None:
            start, logs = _from_state(checkpoint.load(ckpt))
            console(f"adyen_bandit: resuming after generation {start - 1} from {ckpt}")
        logger.truncate_after(start - 1)
    for g in range(start, generations):
        rng = np.random.default_rng([seed, 0, g])
        x, avail = sim.contexts(rng, decisions)
        true_p = sim.success_prob(x)
        u_act = rng.random((decisions, 1))
        u_rew = rng.random(decisions)
        t = g * decisions + np.arange(decisions)
        row: dict[str, float] = {"generation": g}
        for arm in arm_list:
            gamma = arm.gamma if arm.gamma is not None else float(np.sqrt(k * generations * decisions))
            predict = None
            if g > 0:
                win = _window(logs[arm.name], g * decisions, delay, memory)
                weights = importance_weights(win["p"], arm.clip) if arm.weighted else None
                predict = fit_reward_model(learner, win["x"], win["a"].astype(int), win["r"], k, weights, seed)
                row[f"{arm.name}/train_success_rate"] = float(win["r"].mean())
                row[f"{arm.name}/train_size"] = float(len(win["r"]))
                greedy = np.where(a_eval, predict(x_eval), -np.inf).argmax(axis=1)
                g_probs = np.zeros_like(p_eval)
                g_probs[np.arange(len(greedy)), greedy] = 1.0
                row[f"{arm.name}/greedy_regret"] = float(expected_regret(g_probs, p_eval, a_eval).mean())
            probs = policy_probs(arm, None if predict is None else predict(x), avail, gamma)
            cdf = np.cumsum(probs, axis=1)
            cdf[:, -1] = 1.0 + 1e-12
            actions = (cdf > u_act).argmax(axis=1)
            rewards = (u_rew < true_p[np.arange(decisions), actions]).astype(float)
            prop = probs[np.arange(decisions), actions]
            row[f"{arm.name}/regret"] = float(expected_regret(probs, true_p, avail).mean())
            row[f"{arm.name}/success_rate"] = float(rewards.mean())
            row[f"{arm.name}/greedy_share"] = float(probs.max(axis=1).mean())
            new = {"t": t.astype(np.int64), "x": x, "a": actions.astype(np.int64), "r": rewards, "p": prop}
            old = logs[arm.name]
            merged = {key: np.concatenate([old[key], new[key]]) if old else new[key] for key in new}
            keep = merged["t"] >= (g + 1) * decisions - delay - memory  # all a later window can still use
            logs[arm.name] = {key: v[keep] for key, v in merged.items()}
        if logger is not None:
            logger.log(g, row)
            from entropo import checkpoint

            checkpoint.save(out_dir, g, _to_state(logs, g + 1), keep=1)
        console(f"generation {g}: " + ", ".join(f"{a.name} regret {row[f'{a.name}/regret']:.4f}"
                                                 + (f" (greedy {row[f'{a.name}/greedy_regret']:.4f})"
                                                    if f"{a.name}/greedy_regret" in row else "") for a in arm_list))
    if logger is not None:
        logger.close()
    return summarize(out_dir, arm_list, burn_in) if out_dir is not None else {}


def summarize(out_dir: str | Path, arm_list: list[BanditArm], burn_in: int = 2) -> dict[str, Any]:
    """Per arm, from the run's metrics.jsonl: mean regret of generations >= 1, greedy regret of generation 1 (fitted
    on uniform logs) and of later ones, and the oscillation of the greedy regret after ``burn_in`` generations
    (mean |change| between successive generations, lag-1 autocorrelation)."""
    from entropo.logging import read_metrics

    rows = sorted(read_metrics(out_dir), key=lambda r: r["step"])
    out: dict[str, Any] = {"generations": len(rows)}
    for arm in arm_list:
        reg = [r[f"{arm.name}/regret"] for r in rows]
        greedy = [r[f"{arm.name}/greedy_regret"] for r in rows[1:]]
        tail = greedy[burn_in - 1:] if burn_in >= 1 else greedy
        out[arm.name] = {
            "regret_series": reg, "greedy_regret_series": greedy,
            "regret": float(np.mean(reg[1:])),
            "greedy_regret_first": float(greedy[0]),
            "greedy_regret_later": float(np.mean(greedy[1:])),
            "degradation": float(np.mean(greedy[1:]) - greedy[0]),
            "oscillation": float(np.mean(np.abs(np.diff(tail)))) if len(tail) > 1 else float("nan"),
            "lag1_autocorr": lag1_autocorrelation(tail),
            "train_success_rate": float(np.mean([r[f"{arm.name}/train_success_rate"] for r in rows[1:]])),
        }
    return out


@register("program", "adyen_bandit", paper=PAPER)
def adyen_bandit(out_dir, seed: int, console, arms: list = ("uniform", "epsilon_greedy", "squarecb", "squarecb_ipw"),
                 generations: int = 20, decisions: int = 5000, delay: int = 1000, memory: int = 5000,
                 learner: str = "lightgbm", eval_contexts: int = 3000, simulator: dict | None = None,
                 burn_in: int = 2) -> dict[str, Any]:
    """``entropo run adyen_bandit``: the generation loop of :func:`run_generations` for several exploration arms,
    with a plot of regret and greedy-model regret per generation (OUT/generations.png)."""
    arm_list = parse_arms(list(arms))
    res = run_generations(out_dir, seed, console, arms=list(arms), generations=generations, decisions=decisions,
                          delay=delay, memory=memory, learner=learner, eval_contexts=eval_contexts,
                          simulator=simulator, burn_in=burn_in)
    plot_generations({a.name: res[a.name] for a in arm_list}, Path(out_dir) / "generations.png",
                     f"seed {seed}, {learner} reward model, {decisions} decisions per generation")
    return res


def plot_generations(per_arm: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in per_arm.items():
        axes[0].plot(range(len(r["regret_series"])), r["regret_series"], marker=".", label=name)
        axes[1].plot(range(1, len(r["greedy_regret_series"]) + 1), r["greedy_regret_series"], marker=".", label=name)
    axes[0].set_title("deployed policy: expected regret")
    axes[1].set_title("greedy policy of the reward model (held-out)")
    for ax in axes:
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
