"""Penalty methods for (nonconvex) bilevel optimization, first-order only.

Paper: "On Penalty Methods for Nonconvex Bilevel Optimization and First-Order Stochastic Approximation" (Kwon, Kwon,
Wright, Nowak), arXiv 2309.01753 (ICLR 2024).

The bilevel problem min_x F(x) = f(x, y*(x)), y*(x) ∈ argmin_y g(x, y) is replaced by the penalty

    L_σ(x, y) = f(x, y) + (1/σ)·[g(x, y) − min_z g(x, z)],

whose minimum over y, ψ_σ(x) = min_y L_σ(x, y), has values and gradients O(σ)-close to the hyper-objective F under
the paper's error-bound conditions, so a stationary point of ψ_σ is O(σ)-stationary for F. Its gradient needs no
second derivatives (Danskin):

    ∇ψ_σ(x) = ∇_x f(x, y_σ) + (1/σ)·[∇_x g(x, y_σ) − ∇_x g(x, z*)],   y_σ ∈ argmin_y σ f + g,  z* ∈ argmin_z g.

The algorithm: per outer iteration, ``inner_steps`` gradient steps on z (min g(x, ·)) and on y (min σ f + g(x, ·)),
warm-started, then a (projected) gradient step on x with the expression above; ``inner_steps = 1`` is the fully
single-loop version. Provenance: no official code exists (the method spec names none); the formulation follows the
paper's abstract and the algorithm is our reading of it (step sizes are ours, stated per use).

Shown here: a quadratic bilevel toy with y*(x) and the stationary points in closed form (the stationarity gap
‖∇F(x_σ)‖ shrinks linearly in σ), and a small RL use: the outer variable is the entropy temperature of a tabular
entropy-regularized policy optimization on reward estimates, the outer objective is the return on an independent
(validation) estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropo.registry import register

PAPER = ("On Penalty Methods for Nonconvex Bilevel Optimization and First-Order Stochastic Approximation, "
         "arXiv 2309.01753 (ICLR 2024)")

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grad(fn: Fn, x: torch.Tensor, y: torch.Tensor, wrt: str) -> torch.Tensor:
    x = x.detach().requires_grad_(wrt == "x")
    y = y.detach().requires_grad_(wrt == "y")
    target = x if wrt == "x" else y
    out = fn(x, y)
    if not out.requires_grad:
        return torch.zeros_like(target)
    (g,) = torch.autograd.grad(out, target, allow_unused=True)
    return torch.zeros_like(target) if g is None else g  # a function that does not depend on it


@dataclass
class PenaltyResult:
    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    history: list[dict[str, float]]


def penalty_gradient(f: Fn, g: Fn, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    """∇_x f(x, y) + (∇_x g(x, y) − ∇_x g(x, z)) / σ: the penalty's x-gradient at the inner iterates (first order)."""
    return _grad(f, x, y, "x") + (_grad(g, x, y, "x") - _grad(g, x, z, "x")) / sigma


def penalty_method(f: Fn, g: Fn, x0: torch.Tensor, y0: torch.Tensor, sigma: float, outer_steps: int,
                   inner_steps: int, lr_x: float, lr_y: float, lr_z: float | None = None,
                   z0: torch.Tensor | None = None, x_bounds: tuple[float, float] | None = None,
                   log_every: int = 0, on_log: Callable[[int, dict[str, float]], None] | None = None) -> PenaltyResult:
    """Minimize the penalty L_σ with first-order steps (see the module docstring): per outer iteration,
    ``inner_steps`` steps z ← z − lr_z ∇_z g(x, z) and y ← y − lr_y ∇_y(σ f + g)(x, y), then
    x ← Π(x − lr_x ∇ψ_σ-estimate). ``x_bounds`` projects x onto a box. Logs the estimate's norm every ``log_every``."""
    if sigma <= 0:
        raise ValueError(f"sigma: must be > 0, got {sigma}")
    if inner_steps < 1 or outer_steps < 0:
        raise ValueError("inner_steps must be >= 1 and outer_steps >= 0")
    lr_z = lr_y if lr_z is None else lr_z
    x, y = x0.detach().clone(), y0.detach().clone()
    z = y.clone() if z0 is None else z0.detach().clone()

    def sf(a, b):
        return sigma * f(a, b) + g(a, b)

    history = []
    for k in range(outer_steps):
        for _ in range(inner_steps):
            z = z - lr_z * _grad(g, x, z, "y")
            y = y - lr_y * _grad(sf, x, y, "y")
        gx = penalty_gradient(f, g, x, y, z, sigma)
        x = x - lr_x * gx
        if x_bounds is not None:
            x = x.clamp(*x_bounds)
        if log_every and ((k + 1) % log_every == 0 or k + 1 == outer_steps):
            row = {"penalty_grad_norm": float(gx.norm())}
            history.append({"step": k + 1, **row})
            if on_log is not None:
                on_log(k + 1, row)
    return PenaltyResult(x, y, z, history)


# ---- the quadratic toy: y*(x), F, and the stationary points of F and of ψ_σ in closed form ---------------------------

@dataclass
class QuadraticBilevel:
    """g(x, y) = ½ yᵀAy − yᵀBx (A ≻ 0), f(x, y) = ½‖y − c‖² + ½ μ‖x‖². Then y*(x) = A⁻¹Bx = Mx,
    ∇F(x) = Mᵀ(Mx − c) + μx, x* = (MᵀM + μI)⁻¹Mᵀc; y_σ(x) = (A + σI)⁻¹(Bx + σc) and
    ∇ψ_σ(x) = Bᵀ(A + σI)⁻¹(Mx − c) + μx, so x_σ = (Bᵀ(A + σI)⁻¹M + μI)⁻¹ Bᵀ(A + σI)⁻¹c."""

    A: torch.Tensor
    B: torch.Tensor
    c: torch.Tensor
    mu: float

    @classmethod
    def random(cls, n: int, m: int, seed: int, mu: float = 0.5) -> "QuadraticBilevel":
        gen = torch.Generator().manual_seed(seed)
        Q = torch.randn(m, m, generator=gen, dtype=torch.float64)
        A = Q @ Q.T / m + torch.eye(m, dtype=torch.float64)
        return cls(A, torch.randn(m, n, generator=gen, dtype=torch.float64),
                   torch.randn(m, generator=gen, dtype=torch.float64), mu)

    def f(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((y - self.c) ** 2).sum() + 0.5 * self.mu * (x ** 2).sum()

    def g(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * y @ self.A @ y - y @ self.B @ x

    @property
    def M(self) -> torch.Tensor:
        return torch.linalg.solve(self.A, self.B)

    def grad_F(self, x: torch.Tensor) -> torch.Tensor:
        return self.M.T @ (self.M @ x - self.c) + self.mu * x

    def x_star(self) -> torch.Tensor:
        M = self.M
        return torch.linalg.solve(M.T @ M + self.mu * torch.eye(M.shape[1], dtype=M.dtype), M.T @ self.c)

    def x_sigma(self, sigma: float) -> torch.Tensor:
        K = torch.linalg.solve(self.A + sigma * torch.eye(self.A.shape[0], dtype=self.A.dtype), self.B).T  # Bᵀ(A+σI)⁻¹
        return torch.linalg.solve(K @ self.M + self.mu * torch.eye(self.B.shape[1], dtype=self.A.dtype), K @ self.c)


# ---- RL use: the entropy temperature of a tabular policy optimization as the outer variable -----------------------

def regularized_return(P: torch.Tensor, r: torch.Tensor, rho: torch.Tensor, gamma: float, theta: torch.Tensor,
                       tau: torch.Tensor | float = 0.0) -> torch.Tensor:
    """E[Σ_t γ^t (r(s_t, a_t) + τ·H(π(·|s_t)))] for the softmax policy π = softmax(θ), exactly (linear solve)."""
    pi = torch.softmax(theta, -1)
    logp = torch.log_softmax(theta, -1)
    P_pi = torch.einsum("sa,sat->st", pi, P)
    r_pi = (pi * r).sum(-1) + tau * (-(pi * logp).sum(-1))
    V = torch.linalg.solve(torch.eye(P.shape[0], dtype=P.dtype) - gamma * P_pi, r_pi)
    return rho @ V


def soft_optimal_logits(P: torch.Tensor, r: torch.Tensor, gamma: float, tau: float, iters: int = 2000) -> torch.Tensor:
    """θ*(τ) = Q_soft/τ by soft value iteration (the exact inner solution, for the grid-search reference)."""
    V = torch.zeros(P.shape[0], dtype=P.dtype)
    for _ in range(iters):
        Q = r + gamma * P @ V
        V_new = tau * torch.logsumexp(Q / tau, -1)
        if (V_new - V).abs().max() < 1e-12:
            break
        V = V_new
    return (r + gamma * P @ V) / tau


def temperature_demo(seed: int, n_states: int = 6, n_actions: int = 4, gamma: float = 0.8, noise: float = 1.0,
                     sigma: float = 0.05, outer_steps: int = 300, inner_steps: int = 20, lr_x: float = 0.5,
                     lr_y: float = 1.0, grid: int = 23, log_tau_bounds: tuple[float, float] = (-4.0, 1.5),
                     on_log=None) -> dict[str, Any]:
    """Choose the entropy temperature τ = e^x of a tabular entropy-regularized policy optimization by the penalty
    method: inner g(x, θ) = −J_τ(θ; r̂_train), outer f(x, θ) = −J(θ; r̂_val), with r̂_train and r̂_val two independent
    noisy estimates (noise sd ``noise``) of the true rewards of a random MDP. Reference: the outer objective at the
    exact inner solution θ*(τ) (soft value iteration) on a grid of τ. Returns the penalty's τ and its outer objective,
    the grid's best, and the true returns (never seen by either)."""
    from entropo.classic.stochastic_pg import random_mdp

    mdp = random_mdp(n_states, n_actions, seed, gamma)
    gen = np.random.default_rng(seed + 17)
    P = torch.tensor(mdp.P)
    rho = torch.tensor(mdp.rho)
    r_true = torch.tensor(mdp.r)
    r_train = r_true + noise * torch.tensor(gen.standard_normal(mdp.r.shape))
    r_val = r_true + noise * torch.tensor(gen.standard_normal(mdp.r.shape))

    def g(x, theta):
        return -regularized_return(P, r_train, rho, gamma, theta, torch.exp(x).squeeze())

    def f(x, theta):
        return -regularized_return(P, r_val, rho, gamma, theta)

    taus = np.exp(np.linspace(*log_tau_bounds, grid))
    val, true = [], []
    for tau in taus:
        th = soft_optimal_logits(P, r_train, gamma, float(tau))
        val.append(float(regularized_return(P, r_val, rho, gamma, th)))
        true.append(float(regularized_return(P, r_true, rho, gamma, th)))
    best = int(np.argmax(val))
    x0 = torch.tensor([float(np.mean(log_tau_bounds))], dtype=torch.float64)
    res = penalty_method(f, g, x0, torch.zeros(n_states, n_actions, dtype=torch.float64), sigma, outer_steps,
                         inner_steps, lr_x, lr_y, x_bounds=log_tau_bounds, log_every=10, on_log=on_log)
    tau_pen = float(torch.exp(res.x))
    th_pen = soft_optimal_logits(P, r_train, gamma, tau_pen)  # the exact inner solution at the penalty's τ
    j_opt = optimal_value(mdp.P, mdp.r, gamma, mdp.rho)
    return {"taus": taus.tolist(), "val_return": val, "true_return": true, "grid_best_tau": float(taus[best]),
            "grid_best_val": val[best], "grid_best_true": true[best],
            "penalty_tau": tau_pen, "penalty_val": float(regularized_return(P, r_val, rho, gamma, th_pen)),
            "penalty_true": float(regularized_return(P, r_true, rho, gamma, th_pen)),
            "smallest_tau_val": val[0], "smallest_tau_true": true[0], "optimal_true": j_opt,
            "history": res.history}


def optimal_value(P: np.ndarray, r: np.ndarray, gamma: float, rho: np.ndarray) -> float:
    V = np.zeros(P.shape[0])
    for _ in range(5000):
        V_new = (r + gamma * P @ V).max(1)
        if np.abs(V_new - V).max() < 1e-12:
            break
        V = V_new
    return float(rho @ V)


def _plot(quad: dict[str, Any], demo: dict[str, Any] | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if demo else 1, figsize=(11 if demo else 5.5, 4))
    ax = axes[0] if demo else axes
    s = np.array(quad["sigmas"])
    ax.loglog(s, quad["gap_closed_form"], "o-", label="‖∇F(x_σ)‖, x_σ closed form")
    ax.loglog(s, quad["gap_algorithm"], "s--", label="‖∇F(x_K)‖, first-order penalty method")
    ax.loglog(s, quad["gap_closed_form"][0] * s / s[0], "k:", lw=1, label="slope 1 (O(σ))")
    ax.set_xticks(s, [f"{v:g}" for v in s])
    ax.minorticks_off()
    ax.set_xlabel("σ")
    ax.set_ylabel("hyper-objective stationarity gap")
    ax.set_title("quadratic bilevel toy", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if demo:
        ax = axes[1]
        ax.semilogx(demo["taus"], demo["val_return"], "o-", ms=3, label="validation return at θ*(τ)")
        ax.semilogx(demo["taus"], demo["true_return"], ".-", ms=3, label="true return at θ*(τ)")
        ax.axvline(demo["penalty_tau"], color="r", ls="--", label=f"penalty method τ = {demo['penalty_tau']:.3g}")
        ax.axvline(demo["grid_best_tau"], color="g", ls=":", label=f"grid best τ = {demo['grid_best_tau']:.3g}")
        ax.set_xlabel("entropy temperature τ")
        ax.set_ylabel("return")
        ax.set_title("choosing τ of a tabular entropy-regularized PO", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def quadratic_sweep(seed: int, sigmas: list[float], n: int = 3, m: int = 4, mu: float = 0.5, outer_steps: int = 150,
                    inner_steps: int = 10) -> dict[str, Any]:
    """Stationarity gap ‖∇F(x)‖ at the penalty's closed-form stationary point x_σ and at the first-order method's
    iterate after ``outer_steps`` outer steps, for each σ; and the log-log slope of each against σ. Step sizes are
    1/smoothness: lr_y = 1/(λ_max(A) + σ) for σf + g, lr_x = 1/(‖M‖² + μ) for the hyper-objective (M = A⁻¹B)."""
    q = QuadraticBilevel.random(n, m, seed, mu)
    L = float(torch.linalg.eigvalsh(q.A).max())
    lr_x = 1.0 / (float(torch.linalg.matrix_norm(q.M, ord=2)) ** 2 + mu)
    closed, alg, dist = [], [], []
    for s in sigmas:
        xs = q.x_sigma(s)
        res = penalty_method(q.f, q.g, torch.zeros(n, dtype=torch.float64), torch.zeros(m, dtype=torch.float64), s,
                             outer_steps, inner_steps, lr_x, lr_y=1.0 / (L + s))
        closed.append(float(q.grad_F(xs).norm()))
        alg.append(float(q.grad_F(res.x).norm()))
        dist.append(float((res.x - xs).norm()))
    ls = np.log(sigmas)
    return {"sigmas": list(sigmas), "gap_closed_form": closed, "gap_algorithm": alg, "distance_to_x_sigma": dist,
            "slope_closed_form": float(np.polyfit(ls, np.log(closed), 1)[0]),
            "slope_algorithm": float(np.polyfit(ls, np.log(alg), 1)[0]),
            "grad_F_at_x_star": float(q.grad_F(q.x_star()).norm())}


@register("program", "bilevel_penalty", paper=PAPER)
def bilevel_penalty_program(out_dir, seed: int, console, sigmas: tuple[float, ...] = (0.4, 0.2, 0.1, 0.05, 0.025),
                            outer_steps: int = 150, inner_steps: int = 10, rl_demo: bool = True,
                            rl_sigma: float = 0.05, rl_noise: float = 1.0, rl_outer_steps: int = 150,
                            rl_inner_steps: int = 20) -> dict[str, Any]:
    """The quadratic toy (stationarity gap vs σ, closed form and first-order algorithm) and, with ``rl_demo``, the
    entropy-temperature choice of a tabular policy optimization compared with a grid search at exact inner solutions."""
    from entropo.logging import MetricsLogger

    out = Path(out_dir)
    quad = quadratic_sweep(seed, list(sigmas), outer_steps=outer_steps, inner_steps=inner_steps)
    console("  quadratic toy: ‖∇F(x_σ)‖ " + ", ".join(f"σ={s:g}: {c:.2e} (alg {a:.2e})" for s, c, a in
                                                    zip(sigmas, quad["gap_closed_form"], quad["gap_algorithm"]))
            + f"; log-log slope {quad['slope_closed_form']:.3f} (closed form), {quad['slope_algorithm']:.3f} (alg)")
    results: dict[str, Any] = {"quadratic": quad}
    logger = MetricsLogger(out, tensorboard=False)
    for k, s in enumerate(sigmas):
        logger.log(k, {"sigma": s, "quad/gap_closed_form": quad["gap_closed_form"][k],
                       "quad/gap_algorithm": quad["gap_algorithm"][k]})
    demo = None
    if rl_demo:
        base = len(sigmas)
        demo = temperature_demo(seed, noise=rl_noise, sigma=rl_sigma, outer_steps=rl_outer_steps,
                                inner_steps=rl_inner_steps,
                                on_log=lambda k, row: logger.log(base + k, {f"rl/{n}": v for n, v in row.items()}))
        results["rl"] = {k: v for k, v in demo.items() if k != "history"}
        console(f"  RL: penalty τ = {demo['penalty_tau']:.4g} (validation return {demo['penalty_val']:.4f}, true "
                f"{demo['penalty_true']:.4f}); grid best τ = {demo['grid_best_tau']:.4g} (validation "
                f"{demo['grid_best_val']:.4f}, true {demo['grid_best_true']:.4f}); smallest τ true "
                f"{demo['smallest_tau_true']:.4f}; optimal true {demo['optimal_true']:.4f}")
    logger.close()
    results["plot"] = str(_plot(quad, demo, out / "penalty_bilevel.png"))
    return results
