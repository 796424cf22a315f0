"""Steering the Herd (Steering the Herd: A Framework for LLM-based Control of Social Learning, arXiv 2504.02648):
a planner sets the precision of each agent's private signal in sequential social learning; its optimal precision
policy solves a dynamic program over the public belief, here by value iteration on a belief grid.

Model (the spec's reading of the paper; the paper publishes no code, and its exact signal family and cost function
were not checked beyond the abstract): binary state theta in {0, 1}; public belief pi = P(theta = 1 | a_1..a_{n-1}).
The planner picks precision q in a finite grid on [q_min, q_max] for agent n, who sees a binary-symmetric signal
(P(s = theta) = q), forms the posterior from pi and s, and plays a = 1[posterior >= 1/2] (utility 1[a = theta]).
Outsiders see a and update pi with the action likelihood P(a | theta, pi, q) (uninformative inside a cascade, where
the action does not depend on s). Precision costs c(q) = cost * (q - q_default)^2 away from the default precision
q_default (the signal agents get without mediation; lowering it, obfuscation, is not free either). Bellman:

    V(pi) = max_q  u(pi, q) - c(q) + delta * sum_a P(a | pi, q) V(pi'_a),

with u = P(a = theta) (altruistic planner: the agents' expected welfare) or u = P(a = 1) (biased planner, who wants
action 1). V between grid points is linearly interpolated. Paper's qualitative claims tested here: V (altruistic) is
convex in pi; the optimal policy's modes (max investment, none, monotone in between); the biased planner obfuscates
(q below the default) on some beliefs; mediation shifts welfare: the altruistic planner's agents do better than with
the fixed default precision, the biased planner's worse.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entropo.registry import register

TIE_TOL = 1e-9
PAPER = "Steering the Herd: A Framework for LLM-based Control of Social Learning, arXiv 2504.02648"


@dataclass(frozen=True)
class HerdModel:
    q_min: float = 0.5
    q_max: float = 0.9
    q_levels: int = 9
    q_default: float = 0.7
    cost: float = 0.5
    discount: float = 0.9
    planner: str = "altruistic"  # or "biased"

    def __post_init__(self):
        if not 0.5 <= self.q_min <= self.q_max < 1.0:
            raise ValueError(f"herd: need 0.5 <= q_min <= q_max < 1, got q_min={self.q_min}, q_max={self.q_max}")
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"herd: discount must be in [0, 1), got {self.discount}")
        if self.planner not in ("altruistic", "biased"):
            raise ValueError(f"herd: planner must be 'altruistic' or 'biased', got {self.planner!r}")
        if self.q_levels < 1:
            raise ValueError(f"herd: q_levels must be >= 1, got {self.q_levels}")

    @property
    def qs(self) -> np.ndarray:
        return np.linspace(self.q_min, self.q_max, self.q_levels) if self.q_levels > 1 else np.array([self.q_min])

    def cost_of(self, q) -> np.ndarray:
        return self.cost * (np.asarray(q, dtype=float) - self.q_default) ** 2


def action_probs(pi, q):
    """(P(a=1 | theta=1), P(a=1 | theta=0)) for public belief ``pi`` and precision ``q`` (arrays broadcast).

    The agent plays 1 iff its posterior is >= 1/2 (the spec's tie rule; an indifferent agent plays 1): after s = 1 the posterior is pi q / (pi q + (1-pi)(1-q)), after
    s = 0 it is pi (1-q) / (pi (1-q) + (1-pi) q). If both posteriors are >= 1/2 it plays 1 whatever s (cascade on 1),
    if neither it plays 0 (cascade on 0); otherwise it follows its signal."""
    pi, q = np.broadcast_arrays(np.asarray(pi, dtype=float), np.asarray(q, dtype=float))
    # posterior >= 1/2  <=>  pi * like_1 >= (1 - pi) * like_0, with ties (indifference) up to TIE_TOL counted as
    # ties: beliefs land exactly on indifference points often (symmetric signals on a lattice of q), and rounding
    # must not decide between herding and learning
    up_on_1 = pi * q >= (1 - pi) * (1 - q) - TIE_TOL
    up_on_0 = pi * (1 - q) >= (1 - pi) * q - TIE_TOL
    p1_given1 = np.where(up_on_0, 1.0, np.where(up_on_1, q, 0.0))  # P(a=1 | theta=1)
    p1_given0 = np.where(up_on_0, 1.0, np.where(up_on_1, 1 - q, 0.0))  # P(a=1 | theta=0)
    return p1_given1, p1_given0


def bayes_update(pi, q, a: int):
    """The public belief after observing action ``a`` (unchanged when the action is uninformative)."""
    p11, p10 = action_probs(pi, q)
    l1, l0 = (p11, p10) if a == 1 else (1 - p11, 1 - p10)
    pi = np.asarray(pi, dtype=float)
    den = pi * l1 + (1 - pi) * l0
    with np.errstate(invalid="ignore", divide="ignore"):
        post = np.where(den > 0, pi * l1 / np.where(den > 0, den, 1.0), pi)
    return post


def stage(model: HerdModel, pi, q) -> dict[str, np.ndarray]:
    """Per-(pi, q) quantities: P(a=1), posteriors after a=1/a=0, agent welfare P(a=theta), planner utility."""
    pi, q = np.broadcast_arrays(np.asarray(pi, dtype=float), np.asarray(q, dtype=float))
    p11, p10 = action_probs(pi, q)
    pa1 = pi * p11 + (1 - pi) * p10
    welfare = pi * p11 + (1 - pi) * (1 - p10)
    utility = welfare if model.planner == "altruistic" else pa1
    return {"pa1": pa1, "post1": bayes_update(pi, q, 1), "post0": bayes_update(pi, q, 0), "welfare": welfare,
            "utility": utility - model.cost_of(q)}


def bellman(model: HerdModel, grid: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Bellman backup on the grid: (new V, argmax precision per grid point; first maximiser on ties)."""
    pi = grid[:, None]
    q = model.qs[None, :]
    s = stage(model, pi, q)
    cont = s["pa1"] * np.interp(s["post1"], grid, V) + (1 - s["pa1"]) * np.interp(s["post0"], grid, V)
    Q = s["utility"] + model.discount * cont
    best = np.argmax(Q, axis=1)
    return Q[np.arange(len(grid)), best], model.qs[best]


def value_iteration(model: HerdModel, grid_points: int = 201, tol: float = 1e-9, max_iter: int = 2000,
                    logger=None) -> dict[str, Any]:
    grid = np.linspace(0.0, 1.0, grid_points)
    V = np.zeros(grid_points)
    policy = np.full(grid_points, model.qs[0])
    it, resid = 0, float("inf")
    for it in range(1, max_iter + 1):
        V_new, policy = bellman(model, grid, V)
        resid = float(np.max(np.abs(V_new - V)))
        V = V_new
        if logger is not None:
            logger.log(it, {f"herd/{model.planner}/bellman_residual": resid,
                            f"herd/{model.planner}/value_at_half": float(np.interp(0.5, grid, V))})
        if resid < tol:
            break
    return {"grid": grid, "V": V, "policy": policy, "iterations": it, "residual": resid}


def policy_value(model: HerdModel, grid: np.ndarray, policy: np.ndarray, tol: float = 1e-10,
                 max_iter: int = 5000) -> dict[str, np.ndarray]:
    """Exact-on-grid evaluation of a precision policy (q per grid point): the planner's objective and the agents'
    discounted welfare sum_n delta^n P(a_n = theta), both as functions of the starting belief."""
    J = np.zeros(len(grid))
    W = np.zeros(len(grid))
    s = stage(model, grid, policy)
    for _ in range(max_iter):
        contJ = s["pa1"] * np.interp(s["post1"], grid, J) + (1 - s["pa1"]) * np.interp(s["post0"], grid, J)
        contW = s["pa1"] * np.interp(s["post1"], grid, W) + (1 - s["pa1"]) * np.interp(s["post0"], grid, W)
        J_new = s["utility"] + model.discount * contJ
        W_new = s["welfare"] + model.discount * contW
        done = max(np.max(np.abs(J_new - J)), np.max(np.abs(W_new - W))) < tol
        J, W = J_new, W_new
        if done:
            break
    return {"objective": J, "welfare": W}


def simulate(model: HerdModel, grid: np.ndarray, policy: np.ndarray, episodes: int, horizon: int, prior: float,
             seed: int) -> dict[str, float]:
    """Monte-Carlo play with real signals and exact (off-grid) belief updates; the planner uses the policy of the
    nearest grid point. Returns the mean discounted agent welfare, planner objective, cost, and standard errors."""
    rng = np.random.default_rng(seed)
    theta = (rng.random(episodes) < prior).astype(int)
    pi = np.full(episodes, prior)
    welfare = np.zeros(episodes)
    objective = np.zeros(episodes)
    spend = np.zeros(episodes)
    for n in range(horizon):
        q = policy[np.clip(np.rint(pi * (len(grid) - 1)).astype(int), 0, len(grid) - 1)]
        s = np.where(rng.random(episodes) < q, theta, 1 - theta)
        p11, p10 = action_probs(pi, q)
        cascade1 = p10 == 1.0  # plays 1 whatever its signal
        cascade0 = p11 == 0.0  # plays 0 whatever its signal
        a = np.where(cascade1, 1, np.where(cascade0, 0, s))
        disc = model.discount ** n
        c = model.cost_of(q)
        welfare += disc * (a == theta)
        objective += disc * (((a == theta) if model.planner == "altruistic" else (a == 1)) - c)
        spend += disc * c
        pi = np.where(a == 1, bayes_update(pi, q, 1), bayes_update(pi, q, 0))
    se = lambda x: float(np.std(x) / np.sqrt(len(x)))  # noqa: E731
    return {"welfare": float(welfare.mean()), "welfare_se": se(welfare), "objective": float(objective.mean()),
            "objective_se": se(objective), "cost": float(spend.mean())}


def convexity_gap(V: np.ndarray) -> float:
    """The most negative second difference of V on the uniform grid (>= -tol means discretely convex)."""
    return float(np.min(V[2:] - 2 * V[1:-1] + V[:-2])) if len(V) >= 3 else 0.0


def learning_region_gap(model: HerdModel, grid: np.ndarray, V: np.ndarray) -> float:
    """:func:`convexity_gap` on the learning region, the beliefs strictly inside (1 - q_max, q_max) (one grid step
    from its ends) where some precision still makes an agent follow its signal. With binary signals V jumps at the
    region's ends (outside, every agent herds whatever q), so V is not convex across them."""
    step = grid[1] - grid[0] if len(grid) > 1 else 0.0
    inner = (grid > 1 - model.q_max + step * 1.1) & (grid < model.q_max - step * 1.1)
    return convexity_gap(V[inner])


def policy_modes(grid: np.ndarray, policy: np.ndarray, model: HerdModel) -> list[dict[str, Any]]:
    """Maximal belief intervals of the optimal precision's modes: "max" (q_max), "min" (q_min), "default"
    (q_default), or "increasing" / "decreasing" (plateaus of other precisions, labelled by the direction to the next
    plateau, the previous one for the last), merged when consecutive plateaus share a label."""
    plateaus: list[list[Any]] = []  # [q, from, to]
    for g, q in zip(grid, policy):
        if plateaus and np.isclose(plateaus[-1][0], q):
            plateaus[-1][2] = float(g)
        else:
            plateaus.append([float(q), float(g), float(g)])
    modes: list[dict[str, Any]] = []
    for k, (q, lo, hi) in enumerate(plateaus):
        if np.isclose(q, model.q_max):
            lab = "max"
        elif np.isclose(q, model.q_min):
            lab = "min"
        elif np.isclose(q, model.q_default):
            lab = "default"
        else:
            other = plateaus[k + 1][0] if k + 1 < len(plateaus) else plateaus[k - 1][0] if k else q
            lab = "increasing" if (other > q) == (k + 1 < len(plateaus)) else "decreasing"
        if modes and modes[-1]["mode"] == lab:
            modes[-1]["to"] = hi
        else:
            modes.append({"mode": lab, "from": lo, "to": hi})
    return modes


@register("program", "herd_planner", paper=PAPER)
def herd_planner(out_dir, seed: int, console, grid_points: int = 201, q_min: float = 0.5, q_max: float = 0.9,
                 q_levels: int = 9, q_default: float = 0.7, cost: float = 0.5, discount: float = 0.9,
                 prior: float = 0.5, episodes: int = 20000, horizon: int = 80, tol: float = 1e-9) -> dict:
    """Solve the altruistic and the biased planner by value iteration, then compare, by exact policy evaluation on the
    grid and by Monte-Carlo play from ``prior``, the agents' discounted welfare and each planner's objective under
    the optimal policy and under every fixed precision. Writes OUT/herd.json (V and policy per planner)."""
    from entropo.logging import MetricsLogger

    out_dir = Path(out_dir)
    logger = MetricsLogger(out_dir, tensorboard=False)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"prior": prior}
    curves: dict[str, Any] = {}
    for k, planner in enumerate(("altruistic", "biased")):
        model = HerdModel(q_min, q_max, q_levels, q_default, cost, discount, planner)
        vi = value_iteration(model, grid_points, tol, logger=logger)
        grid, V, policy = vi["grid"], vi["V"], vi["policy"]
        opt = simulate(model, grid, policy, episodes, horizon, prior, seed * 7919 + 2 * k)
        exact = policy_value(model, grid, policy)
        fixed = {}
        for q in model.qs:
            pol = np.full(grid_points, q)
            sim = simulate(model, grid, pol, episodes, horizon, prior, seed * 7919 + 2 * k + 1)
            ex = policy_value(model, grid, pol)
            fixed[f"{q:.3f}"] = {"mc": sim, "objective": float(np.interp(prior, grid, ex["objective"])),
                                 "welfare": float(np.interp(prior, grid, ex["welfare"]))}
        best_fixed = max(fixed, key=lambda q: fixed[q]["objective"])
        res[planner] = {
            "iterations": vi["iterations"], "residual": vi["residual"], "convexity_gap": convexity_gap(V),
            "convexity_gap_learning": learning_region_gap(model, grid, V),
            "value_at_prior": float(np.interp(prior, grid, V)),
            "objective": float(np.interp(prior, grid, exact["objective"])),
            "welfare": float(np.interp(prior, grid, exact["welfare"])), "mc": opt,
            "fixed": fixed, "best_fixed_q": best_fixed,
            "default_q": {"objective": fixed[f"{q_default:.3f}"]["objective"] if f"{q_default:.3f}" in fixed else None,
                          "welfare": fixed[f"{q_default:.3f}"]["welfare"] if f"{q_default:.3f}" in fixed else None},
            "obfuscation_frac": float(np.mean(policy < q_default - 1e-12)),
            "max_investment_frac": float(np.mean(np.isclose(policy, q_max))),
            "modes": policy_modes(grid, policy, model),
        }
        curves[planner] = {"grid": grid.tolist(), "V": V.tolist(), "policy": policy.tolist()}
        console(f"  {planner}: {vi['iterations']} iterations, V({prior}) = {res[planner]['value_at_prior']:.4f}, "
                f"convexity gap {res[planner]['convexity_gap']:.2e} (learning region "
                f"{res[planner]['convexity_gap_learning']:.2e}), agent welfare {res[planner]['welfare']:.4f} "
                f"(MC {opt['welfare']:.4f} +- {opt['welfare_se']:.4f}); best fixed q {best_fixed} objective "
                f"{fixed[best_fixed]['objective']:.4f} vs optimal {res[planner]['objective']:.4f}; obfuscates on "
                f"{res[planner]['obfuscation_frac']:.0%} of beliefs")
    for planner in ("altruistic", "biased"):  # flat scalars for the `entropo run` summary table
        res[f"{planner}/agent_welfare"] = res[planner]["welfare"]
        res[f"{planner}/objective"] = res[planner]["objective"]
        res[f"{planner}/best_fixed_objective"] = res[planner]["fixed"][res[planner]["best_fixed_q"]]["objective"]
        res[f"{planner}/obfuscation_frac"] = res[planner]["obfuscation_frac"]
    res["default_q/agent_welfare"] = res["altruistic"]["default_q"]["welfare"]
    res["altruistic/convexity_gap_learning"] = res["altruistic"]["convexity_gap_learning"]
    (out_dir / "herd.json").write_text(json.dumps(curves))
    res["wall_s"] = time.perf_counter() - t0
    return res
