"""N-PG-IGT and (N-)HARPG: stochastic policy gradient with momentum, implicit gradient transport and Hessian-aided
recursive momentum, on random tabular MDPs with a softmax policy (exact returns available for evaluation).

Paper: "Stochastic Policy Gradient Methods: Improved Sample Complexity for Fisher-non-degenerate Policies"
(Fatkhullin, Barakat, Kireeva, He), ICML 2023, arXiv 2302.01734. Headline rates: N-PG-IGT reaches an ε-global
optimum with Õ(ε^-2.5) trajectories, N-HARPG with Õ(ε^-2), each with ONE trajectory per iteration and no importance
sampling.

The updates (one sampled trajectory τ_t per iteration, GPOMDP gradient estimate ĝ(τ, θ)):

- N-PG-IGT: θ̃_t = θ_t + ((1−η_t)/η_t)(θ_t − θ_{t−1}); τ_t ~ π_θ̃_t; d_t = (1−η_t) d_{t−1} + η_t ĝ(τ_t, θ̃_t);
  θ_{t+1} = θ_t + γ_t d_t / ‖d_t‖. Schedules η_t = (t+1)^(-4/5), γ_t = γ_0 (t+1)^(-3/5).
- HARPG: θ̂_t = q θ_t + (1−q) θ_{t−1}, q ~ U(0, 1); τ̂_t ~ π_θ̂_t; v_t = B(τ̂_t, θ̂_t)(θ_t − θ_{t−1}) with the unbiased
  policy-Hessian estimate B(τ, θ) = ∇Φ(τ, θ) ∇log p(τ|θ)ᵀ + ∇²Φ(τ, θ) (Φ the GPOMDP surrogate
  Σ_t γ^t r_t Σ_{k≤t} log π(a_k|s_k)); d_t = (1−η_t)(d_{t−1} + v_t) + η_t ĝ(τ̂_t, θ̂_t); θ_{t+1} = θ_t + γ_t d_t
  (HARPG) or θ_t + γ_t d_t/‖d_t‖ (N-HARPG). Schedules η_t = 2/(t+2), γ_t = γ_0 (2/(t+2))^(1/2) for N-HARPG.

Provenance: no official code exists (checked: the method spec names none, and a search of stored repositories found
none), so the update rules follow the paper as summarised above and the step-size/momentum schedules are our reading
of the theorems' rates (N-PG-IGT: η ∝ t^-4/5, γ ∝ t^-3/5 gives the ε^-2.5 rate; N-HARPG: η ∝ 1/t, γ ∝ t^-1/2 gives
ε^-2) — not re-verified constants. The Hessian-aided gradient term uses the same trajectory τ̂_t as the correction
(one trajectory per iteration, as the paper's headline count).

Everything is vectorized over independent runs (each with its own parameters and trajectory), and the softmax
scores/Hessians are analytic, so thousands of iterations take seconds on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropo.registry import register

PAPER = ("Stochastic Policy Gradient Methods: Improved Sample Complexity for Fisher-non-degenerate Policies "
         "(N-PG-IGT, (N-)HARPG), ICML 2023, arXiv 2302.01734")
METHODS = ("pg", "n_mpg", "n_pg_igt", "harpg", "n_harpg")
# step size (γ_0) grids, each spanning a factor 10; set so that every method's best value lies inside its grid on a
# probe MDP (seed 0): normalized steps move θ by γ_t in norm, unnormalized ones by γ_t·‖d‖
DEFAULT_STEP_SIZES = {"pg": [0.03, 0.1, 0.3], "harpg": [0.01, 0.03, 0.1], "n_mpg": [0.1, 0.3, 1.0],
                      "n_pg_igt": [0.1, 0.3, 1.0], "n_harpg": [0.1, 0.3, 1.0]}


@dataclass
class TabularMDP:
    """P [S, A, S] transition probabilities, r [S, A] rewards, rho [S] initial distribution, discount gamma."""

    P: np.ndarray
    r: np.ndarray
    rho: np.ndarray
    gamma: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.r.shape  # type: ignore[return-value]


def random_mdp(n_states: int, n_actions: int, seed: int, gamma: float = 0.9, branching: int = 3) -> TabularMDP:
    """A random 'Garnet' MDP: each (s, a) moves to ``branching`` random next states with Dirichlet(1) probabilities;
    rewards uniform in [0, 1]; uniform initial distribution. Deterministic in ``seed``."""
    if n_states < 1 or n_actions < 1 or not 1 <= branching <= n_states:
        raise ValueError(f"random_mdp: need n_states >= 1, n_actions >= 1, 1 <= branching <= n_states "
                         f"(got {n_states}, {n_actions}, {branching})")
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma: must be in [0, 1), got {gamma}")
    rng = np.random.default_rng(seed)
    P = np.zeros((n_states, n_actions, n_states))
    for s in range(n_states):
        for a in range(n_actions):
            nxt = rng.choice(n_states, size=branching, replace=False)
            P[s, a, nxt] = rng.dirichlet(np.ones(branching))
    r = rng.uniform(0, 1, (n_states, n_actions))
    return TabularMDP(P, r, np.full(n_states, 1.0 / n_states), gamma)


def softmax(theta: np.ndarray) -> np.ndarray:
    z = theta - theta.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def exact_return(mdp: TabularMDP, theta: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
    """J(θ) = ρᵀ V^π (discounted), exactly, differentiable in θ (torch, float64); θ [..., S, A] (batched runs).
    With ``horizon`` H: the truncated return E[Σ_{t<H} γ^t r_t], which the sampled estimators target."""
    pi = torch.softmax(theta, -1)
    P = torch.as_tensor(mdp.P, dtype=theta.dtype)
    r = torch.as_tensor(mdp.r, dtype=theta.dtype)
    rho = torch.as_tensor(mdp.rho, dtype=theta.dtype)
    P_pi = torch.einsum("...sa,sat->...st", pi, P)
    r_pi = (pi * r).sum(-1)
    if horizon is None:
        eye = torch.eye(mdp.P.shape[0], dtype=theta.dtype)
        V = torch.linalg.solve(eye - mdp.gamma * P_pi, r_pi.unsqueeze(-1)).squeeze(-1)
        return (rho * V).sum(-1)
    mu = rho.expand(r_pi.shape)
    total = torch.zeros(r_pi.shape[:-1], dtype=theta.dtype)
    for t in range(horizon):
        total = total + mdp.gamma ** t * (mu * r_pi).sum(-1)
        mu = torch.einsum("...s,...st->...t", mu, P_pi)
    return total


def exact_gradient(mdp: TabularMDP, theta: np.ndarray, horizon: int | None = None) -> np.ndarray:
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    exact_return(mdp, t, horizon).sum().backward()
    return t.grad.numpy()


def optimal_return(mdp: TabularMDP, tol: float = 1e-12) -> float:
    """J* = ρᵀ V* by value iteration."""
    V = np.zeros(mdp.P.shape[0])
    while True:
        Q = mdp.r + mdp.gamma * mdp.P @ V
        V_new = Q.max(1)
        if np.abs(V_new - V).max() < tol:
            return float(mdp.rho @ V_new)
        V = V_new


@dataclass
class Trajectories:
    states: np.ndarray  # [M, H] int
    actions: np.ndarray  # [M, H] int
    rewards: np.ndarray  # [M, H]
    probs: np.ndarray  # [M, H, A] π(·|s_k) at the sampling parameters


def sample(mdp: TabularMDP, theta: np.ndarray, horizon: int, rng: np.random.Generator) -> Trajectories:
    """One trajectory of length ``horizon`` per row of θ [M, S, A] (M independent runs), s_0 ~ ρ."""
    M = theta.shape[0]
    S, A = mdp.r.shape
    rows = np.arange(M)
    cum_P = mdp.P.cumsum(-1)
    u = rng.random((horizon + 1, 2, M))
    s = np.minimum((u[0, 0][:, None] > mdp.rho.cumsum()).sum(1), S - 1)
    states, actions = np.empty((M, horizon), int), np.empty((M, horizon), int)
    rewards, probs = np.empty((M, horizon)), np.empty((M, horizon, A))
    pis = softmax(theta)  # [M, S, A]
    for k in range(horizon):
        pi = pis[rows, s]
        a = np.minimum((u[k + 1, 0][:, None] > pi.cumsum(1)).sum(1), A - 1)
        states[:, k], actions[:, k], probs[:, k] = s, a, pi
        s = np.minimum((u[k + 1, 1][:, None] > cum_P[s, a]).sum(1), S - 1)
    rewards[:] = mdp.r[states, actions]
    return Trajectories(states, actions, rewards, probs)


def _reward_to_go(tr: Trajectories, gamma: float) -> np.ndarray:
    """R_k = Σ_{t>=k} γ^t r_t  [M, H] (discounted from time 0, as GPOMDP)."""
    H = tr.rewards.shape[1]
    disc = tr.rewards * gamma ** np.arange(H)
    return disc[:, ::-1].cumsum(1)[:, ::-1]


def gpomdp(tr: Trajectories, gamma: float, n_states: int) -> np.ndarray:
    """GPOMDP gradient estimate per trajectory [M, S, A]: Σ_k ∇log π(a_k|s_k) · Σ_{t>=k} γ^t r_t, with the analytic
    softmax score ∇_{θ[s,·]} log π(a|s) = e_a − π(·|s) (row s only)."""
    M, H, A = tr.probs.shape
    R = _reward_to_go(tr, gamma)
    g = np.zeros((M, n_states, A))
    rows = np.arange(M)
    for k in range(H):
        score = -tr.probs[:, k].copy()
        score[rows, tr.actions[:, k]] += 1.0
        g[rows, tr.states[:, k]] += R[:, k, None] * score
    return g


def hessian_vector(tr: Trajectories, gamma: float, n_states: int, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B(τ, θ) v, ĝ(τ, θ)) per trajectory, [M, S, A] each: the unbiased policy-Hessian estimate applied to v,
    B v = ∇Φ·(∇log p(τ)·v) + ∇²Φ v, with ∇Φ = ĝ (GPOMDP), ∇log p(τ) = Σ_k ∇log π(a_k|s_k) and
    ∇²Φ v = Σ_k R_k ∇²log π(a_k|s_k) v, where for the softmax ∇²_{θ[s,·]} log π(a|s) = −(diag π_s − π_s π_sᵀ)."""
    M, H, A = tr.probs.shape
    R = _reward_to_go(tr, gamma)
    rows = np.arange(M)
    g = np.zeros((M, n_states, A))
    hv = np.zeros((M, n_states, A))
    logp_dot_v = np.zeros(M)
    for k in range(H):
        s, a, pi = tr.states[:, k], tr.actions[:, k], tr.probs[:, k]
        score = -pi.copy()
        score[rows, a] += 1.0
        g[rows, s] += R[:, k, None] * score
        vs = v[rows, s]  # [M, A]
        logp_dot_v += (score * vs).sum(1)
        fisher_v = pi * vs - pi * (pi * vs).sum(1, keepdims=True)
        hv[rows, s] -= R[:, k, None] * fisher_v
    return g * logp_dot_v[:, None, None] + hv, g


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x ** 2).sum((1, 2), keepdims=True))


def schedules(method: str, t: int) -> tuple[float, float]:
    """(momentum η_t, step decay) at iteration t = 0, 1, ...; the step is γ_t = scale · decay (η_0 = 1: the first
    direction is the first estimate)."""
    if method == "pg":
        return 1.0, 1.0
    if method in ("n_pg_igt", "n_mpg"):
        return (t + 1) ** -0.8, (t + 1) ** -0.6
    if method == "harpg":
        return 2.0 / (t + 2), 1.0
    if method == "n_harpg":
        return 2.0 / (t + 2), math.sqrt(2.0 / (t + 2))
    raise ValueError(f"method: {method!r} is unknown; allowed: {', '.join(METHODS)}")


def run_method(mdp: TabularMDP, method: str, iterations: int, scales: Any, seed: int, horizon: int,
               eval_every: int = 50, theta0: np.ndarray | None = None) -> dict[str, Any]:
    """Run ``method`` once per entry of ``scales`` (the step size γ_0 of each independent run, one sampled
    trajectory per iteration each), all vectorized, from θ_0 (zeros: the uniform policy, unless given). Returns the
    exact J gap J* − J(θ_t) per run ``gap`` [evaluations, runs] every ``eval_every`` iterations, the number of
    trajectories sampled per run so far, and the final parameters."""
    S, A = mdp.r.shape
    scale = np.asarray(scales, dtype=float).reshape(-1, 1, 1)
    runs = scale.shape[0]
    rng = np.random.default_rng(seed)
    theta = np.zeros((runs, S, A)) if theta0 is None else np.broadcast_to(theta0, (runs, S, A)).copy()
    prev = theta.copy()
    d = np.zeros_like(theta)
    j_star = optimal_return(mdp)
    traj, gaps = [], []

    def record(t: int) -> None:
        with torch.no_grad():
            J = exact_return(mdp, torch.tensor(theta, dtype=torch.float64)).numpy()
        traj.append(t)
        gaps.append(j_star - J)

    record(0)
    for t in range(iterations):
        eta, decay = schedules(method, t)
        if method == "pg":
            d = gpomdp(sample(mdp, theta, horizon, rng), mdp.gamma, S)
        elif method in ("n_pg_igt", "n_mpg"):
            point = theta + ((1 - eta) / eta) * (theta - prev) if method == "n_pg_igt" else theta
            g = gpomdp(sample(mdp, point, horizon, rng), mdp.gamma, S)
            d = (1 - eta) * d + eta * g
        else:  # harpg, n_harpg
            q = rng.random((runs, 1, 1))
            point = q * theta + (1 - q) * prev
            hv, g = hessian_vector(sample(mdp, point, horizon, rng), mdp.gamma, S, theta - prev)
            d = (1 - eta) * (d + hv) + eta * g
        prev = theta
        step = scale * decay
        if method in ("pg", "harpg"):
            theta = theta + step * d
        else:
            theta = theta + step * d / np.maximum(_norm(d), 1e-12)
        if (t + 1) % eval_every == 0 or t + 1 == iterations:
            record(t + 1)
    return {"trajectories": traj, "gap": np.array(gaps), "j_star": j_star, "theta": theta}


def trajectories_to_reach(traj: list[int], gap: list[float], target: float) -> int | None:
    """The first trajectory count at which the (run-averaged) gap is <= target; None if never."""
    return next((int(n) for n, g in zip(traj, gap) if g <= target), None)


def _plot(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], target: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, (x, m, sd) in curves.items():
        ax.plot(x, m, label=name, lw=1.4)
        ax.fill_between(x, np.maximum(m - sd, 1e-6), m + sd, alpha=0.15)
    ax.axhline(target, color="k", ls=":", lw=1, label="target gap")
    ax.set_yscale("log")
    ax.set_xlabel("trajectories sampled (per run)")
    ax.set_ylabel("(J* − J(θ)) / (J* − J(uniform)), exact")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@register("program", "stochastic_pg", paper=PAPER)
def stochastic_pg_program(out_dir, seed: int, console, n_states: int = 5, n_actions: int = 3, gamma: float = 0.8,
                          branching: int = 3, mdps: int = 2, runs: int = 16, iterations: int = 2000,
                          horizon: int = 0, methods: tuple[str, ...] = ("pg", "n_mpg", "n_pg_igt", "harpg", "n_harpg"),
                          step_sizes: dict[str, list[float]] | None = None, target: float = 0.25,
                          eval_every: int = 50) -> dict[str, Any]:
    """On ``mdps`` random MDPs (seeds seed·1000 + i), run each of ``methods`` ``runs`` times per step size of its
    grid (``step_sizes``; default 3 values per method, spanning a factor 10) for ``iterations`` one-trajectory
    iterations. Reports the exact J gap relative to the uniform policy's gap (mean over runs and MDPs) against
    trajectories for each method at its best step size (chosen in hindsight on the mean gap over the run, the same
    rule for every method), the trajectories it needs to bring the gap below ``target``, and a plot."""
    from entropo.logging import MetricsLogger

    grids = {**DEFAULT_STEP_SIZES, **(step_sizes or {})}
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"params.methods: {m!r} is unknown; allowed: {', '.join(METHODS)}")
    H = horizon or int(math.ceil(math.log(0.01) / math.log(gamma)))  # γ^H <= 0.01
    out = Path(out_dir)
    rel: dict[str, list[np.ndarray]] = {m: [] for m in methods}  # per MDP: [evaluations, lrs, runs]
    x = None
    for i in range(mdps):
        mdp = random_mdp(n_states, n_actions, seed * 1000 + i, gamma, branching)
        with torch.no_grad():
            gap0 = optimal_return(mdp) - float(exact_return(mdp, torch.zeros(n_states, n_actions, dtype=torch.float64)))
        for j, m in enumerate(methods):
            lrs = grids[m]
            res = run_method(mdp, m, iterations, np.repeat(lrs, runs), seed * 7919 + i * 101 + j, H, eval_every)
            x = np.array(res["trajectories"])
            rel[m].append(res["gap"].reshape(len(x), len(lrs), runs) / gap0)
        console(f"  MDP {i}: J* − J(uniform) = {gap0:.3f}; final relative gap (best step size) "
                + ", ".join(f"{m} {rel[m][-1][-1].mean(1).min():.3f}" for m in methods))
    results: dict[str, Any] = {"horizon": H, "target": target, "trajectories": x.tolist(), "step_sizes": grids}
    mean, spread = {}, {}
    for m in methods:
        per_lr = np.mean([r.mean(2) for r in rel[m]], 0)  # [evaluations, lrs]: mean over runs and MDPs
        best = int(np.argmin(per_lr.mean(0)))
        mean[m] = per_lr[:, best]
        spread[m] = np.std([r[:, best].mean(1) for r in rel[m]], 0)  # across MDPs
        results[f"{m}/best_step_size"] = grids[m][best]
        results[f"{m}/final_gap_per_step_size"] = dict(zip(map(str, grids[m]), per_lr[-1].tolist()))
        results[f"{m}/final_gap"] = float(mean[m][-1])
        results[f"{m}/auc_gap"] = float(mean[m].mean())  # mean relative gap over the run (area under the curve)
        results[f"{m}/trajectories_to_target"] = trajectories_to_reach(list(x), list(mean[m]), target)
        results[f"{m}/stuck_runs"] = float(np.mean([(r[-1, best] > 0.5).mean() for r in rel[m]]))
        results[f"{m}/gap_curve"] = mean[m].tolist()
    logger = MetricsLogger(out, tensorboard=False)
    for k, n in enumerate(x):
        logger.log(int(n), {f"gap/{m}": float(mean[m][k]) for m in methods})
    logger.close()
    results["plot"] = str(_plot({f"{m} (γ0={results[f'{m}/best_step_size']:g})": (x, mean[m], spread[m])
                                 for m in methods}, target, out / "gap_vs_trajectories.png",
                                f"{mdps} random MDPs (S={n_states}, A={n_actions}, γ={gamma}), {runs} runs each, "
                                f"H={H}\nmean ± sd over MDPs, best step size per method"))
    for m in methods:
        console(f"  {m} (step {results[f'{m}/best_step_size']:g}): final relative gap {results[f'{m}/final_gap']:.4f},"
                f" mean over run {results[f'{m}/auc_gap']:.4f}, trajectories to gap <= {target:g}: "
                f"{results[f'{m}/trajectories_to_target'] or 'never'}, runs stuck above 0.5: "
                f"{results[f'{m}/stuck_runs']:.2f}")
    return results
