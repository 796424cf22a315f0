"""DR-RPO: distributionally robust regularized policy optimization, after "Policy Regularized Distributionally
Robust Markov Decision Processes with Linear Function Approximation" (DR-RPO, arXiv 2510.14246): a d-rectangular
linear robust MDP with a total-variation uncertainty set, softmax policies updated by reference-regularized mirror
descent against an optimistic robust value estimate.

What is implemented, for a finite-horizon episodic MDP with features φ(s, a) ∈ R^d and nominal transitions
P(·|s, a) = Σ_i φ_i(s, a) μ_i(·) (d-rectangular linear; a tabular MDP is the case φ = one-hot(s, a), d = S·A):

- :func:`tv_worst_case`: inf over q with TV(q, p) = ½‖q - p‖₁ <= ρ of q·V, through its dual
  max_{α ∈ [min V, max V]} { E_p[min(V, α)] - ρ·(α - min_s V(s)) } (the objective is concave and piecewise linear in
  α, so the maximum is attained at one of the values of V, all of which are tried: exact, no grid). Tested against a
  brute-force linear program solved by HiGHS.
- :func:`robust_backup`: the d-rectangular robust Bellman backup Σ_i φ_i(s, a)·inf_{μ ∈ TV-ball(μ̂_i, ρ)} μ·V — one
  worst case per factor, as the uncertainty set is a product over factors.
- :func:`ridge_factors`: μ̂ from ridge regression of the next-state indicator on φ (Λ = λI + Σ φφᵀ); each factor's
  estimate is clipped at 0 and renormalised to a distribution (uniform when it has no data yet), since the TV ball is
  a set of distributions. UCB bonus β·‖φ(s, a)‖_{Λ⁻¹}.
- :func:`mirror_descent_step`: π_{k+1}(a|s) ∝ π_k(a|s)^{1-ηλ} · π_ref(a|s)^{ηλ} · exp(η·Q̂_k(s, a)) — the closed-form
  KL mirror-descent step for the objective regularised by λ·KL(π‖π_ref) (requires ηλ <= 1).
- :func:`dr_rpo_train`: the online loop. Each episode: optimistic robust Q̂_h by backward induction (robust backup of
  the regularised value V_h(s) = Σ_a π_h(a|s)[Q̂_h(s, a) - λ log(π_h(a|s)/π_ref(a|s))], plus the bonus, clipped to the
  range of returns), one mirror-descent step on every π_h, then one episode in the *nominal* environment with the new
  policy, whose transitions update the ridge statistics. ρ = 0 gives the non-robust (nominal) version of the same
  algorithm.

The demonstration (program ``dr_rpo``, recipe ``entropo run dr_rpo``) is a slippery cliff gridworld
(:class:`SlipperyGrid`): the short path runs next to a row of holes, the long one away from it. The robust and the
nominal policy are learned online from the same episodes budget and evaluated exactly (known model): under the
nominal slip probability, under larger slip probabilities, and under the worst-case transitions of the TV ball
(robust policy evaluation).

No official code was found; the TV dual is the standard one for TV-ball robust MDPs and the mirror-descent step the
closed form of a KL-proximal step with a KL regulariser. Mapped from the paper's abstract; its exact constants
(β, η, λ, the regret-optimal schedules) are not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entropo.registry import register

PAPER = ("Policy Regularized Distributionally Robust Markov Decision Processes with Linear Function Approximation "
         "(DR-RPO), arXiv 2510.14246")
ACTIONS = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left
ACTION_NAMES = ("up", "right", "down", "left")


# ---- the TV worst case --------------------------------------------------------------------------------------------

def tv_worst_case(p: np.ndarray, v: np.ndarray, rho: float, support: str = "all") -> np.ndarray:
    """min_{q: ½‖q-p‖₁ <= ρ, q a distribution} q·v for each row of ``p`` (rows: distributions over the states of
    ``v``), by the dual max_α {p·min(v, α) - ρ(α - m)} evaluated at every α among the values of v, where m is the
    smallest value q may move mass to: min_s v(s) over all states (``support="all"``, the TV ball of the paper's
    setting) or over the support of the row of p (``support="nominal"``: q ≪ p, the adversary only reweights the
    outcomes the nominal kernel allows)."""
    if rho < 0:
        raise ValueError(f"rho must be >= 0 (got {rho})")
    if support not in ("all", "nominal"):
        raise ValueError(f"support must be 'all' or 'nominal' (got {support!r})")
    p = np.atleast_2d(np.asarray(p, dtype=float))
    v = np.asarray(v, dtype=float)
    if p.shape[-1] != v.shape[-1]:
        raise ValueError(f"p has {p.shape[-1]} states but v has {v.shape[-1]}")
    if support == "all":
        floor = np.full(len(p), v.min())
    else:
        floor = np.where(p > 0, v[None, :], np.inf).min(axis=1)
    alphas = np.unique(v)  # candidate thresholds [m]
    clipped = np.minimum(v[None, :], alphas[:, None])  # [m, S]
    vals = p @ clipped.T - rho * (alphas[None, :] - floor[:, None])  # [rows, m]
    vals = np.where(alphas[None, :] >= floor[:, None], vals, -np.inf)  # α below the floor is not a valid dual point
    return vals.max(axis=1)


def tv_worst_case_lp(p: np.ndarray, v: np.ndarray, rho: float, support: str = "all") -> float:
    """The same worst case as a linear program over (q, t), |q - p| <= t, Σt <= 2ρ (q = 0 off the support of p when
    ``support="nominal"``), solved by HiGHS (a test oracle)."""
    from entropo.extras import require

    opt = require("scipy.optimize", "classic", "the brute-force TV linear program")
    p = np.asarray(p, dtype=float)
    v = np.asarray(v, dtype=float)
    n = len(p)
    eye = np.eye(n)
    c = np.concatenate([v, np.zeros(n)])
    a_ub = np.vstack([np.hstack([eye, -eye]), np.hstack([-eye, -eye]),
                      np.concatenate([np.zeros(n), np.ones(n)])[None, :]])
    b_ub = np.concatenate([p, -p, [2.0 * rho]])
    a_eq = np.concatenate([np.ones(n), np.zeros(n)])[None, :]
    q_bounds = [(0, None) if support == "all" or p[i] > 0 else (0, 0) for i in range(n)]
    res = opt.linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0], bounds=q_bounds + [(0, None)] * n,
                      method="highs")
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return float(res.fun)


# ---- d-rectangular linear pieces -----------------------------------------------------------------------------------

def ridge_factors(phi_sa: np.ndarray, next_states: np.ndarray, n_states: int, lam: float = 1.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(μ̂ [d, S], Λ⁻¹ [d, d]) from transitions with features ``phi_sa`` [N, d] and next states [N]: ridge regression
    μ̂ = Λ⁻¹ Σ_t φ_t e_{s'_t}ᵀ, each row clipped at 0 and renormalised (uniform when it carries no mass)."""
    d = phi_sa.shape[1]
    lam_mat = lam * np.eye(d) + phi_sa.T @ phi_sa
    inv = np.linalg.inv(lam_mat)
    targets = np.zeros((len(next_states), n_states))
    targets[np.arange(len(next_states)), next_states] = 1.0
    mu = inv @ (phi_sa.T @ targets)
    mu = np.clip(mu, 0.0, None)
    mass = mu.sum(axis=1, keepdims=True)
    mu = np.where(mass > 1e-12, mu / np.maximum(mass, 1e-12), 1.0 / n_states)
    return mu, inv


def robust_backup(phi: np.ndarray, mu: np.ndarray, v: np.ndarray, rho: float, support: str = "all") -> np.ndarray:
    """Σ_i φ_i(s, a) · inf_{q ∈ TV-ball(μ_i, ρ)} q·V for every row of ``phi`` [N, d] (φ >= 0, rows summing to 1)."""
    return phi @ tv_worst_case(mu, v, rho, support)


def mirror_descent_step(pi: np.ndarray, pi_ref: np.ndarray, q: np.ndarray, eta: float, lam: float) -> np.ndarray:
    """π' ∝ π^{1-ηλ} π_ref^{ηλ} exp(ηQ) along the last axis (computed in log space)."""
    if not 0.0 <= eta * lam <= 1.0:
        raise ValueError(f"eta * lam must be in [0, 1] (got {eta * lam}): the step would extrapolate past pi_ref")
    logits = (1.0 - eta * lam) * np.log(np.maximum(pi, 1e-300)) + eta * lam * np.log(pi_ref) + eta * q
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=-1, keepdims=True)


# ---- a slippery gridworld -----------------------------------------------------------------------------------------

@dataclass
class SlipperyGrid:
    """A cliff gridworld: start bottom-left, goal bottom-right, holes on the bottom row between them. A move goes
    where intended with probability 1 - slip and to each perpendicular direction with slip/2 (walls: stay). Each
    step costs ``step_cost``; reaching the goal pays ``goal_reward``; holes and goal are absorbing with reward 0."""

    rows: int = 3
    cols: int = 5
    slip: float = 0.1
    step_cost: float = 0.05
    goal_reward: float = 1.0
    hole_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.rows < 2 or self.cols < 3:
            raise ValueError(f"the grid needs rows >= 2 and cols >= 3 (got {self.rows}x{self.cols})")
        if not 0.0 <= self.slip <= 1.0:
            raise ValueError(f"slip must be in [0, 1] (got {self.slip})")
        self.n_states, self.n_actions = self.rows * self.cols, len(ACTIONS)
        self.start = self.index(self.rows - 1, 0)
        self.goal = self.index(self.rows - 1, self.cols - 1)
        self.holes = {self.index(self.rows - 1, c) for c in range(1, self.cols - 1)}

    def index(self, r: int, c: int) -> int:
        return r * self.cols + c

    def terminal(self, s: int) -> bool:
        return s == self.goal or s in self.holes

    def _move(self, s: int, a: int) -> int:
        r, c = divmod(s, self.cols)
        dr, dc = ACTIONS[a]
        nr, nc = r + dr, c + dc
        return self.index(nr, nc) if 0 <= nr < self.rows and 0 <= nc < self.cols else s

    def transitions(self, slip: float | None = None) -> np.ndarray:
        """P [S, A, S] for a slip probability (default the grid's)."""
        slip = self.slip if slip is None else slip
        p = np.zeros((self.n_states, self.n_actions, self.n_states))
        for s in range(self.n_states):
            for a in range(self.n_actions):
                if self.terminal(s):
                    p[s, a, s] = 1.0
                    continue
                p[s, a, self._move(s, a)] += 1.0 - slip
                for side in ((a + 1) % 4, (a + 3) % 4):
                    p[s, a, self._move(s, side)] += slip / 2
        return p

    def step_reward(self) -> np.ndarray:
        """r(s) [S]: -step_cost for a move from a non-terminal state, 0 in the absorbing states."""
        return np.array([0.0 if self.terminal(s) else -self.step_cost for s in range(self.n_states)])

    def entry_reward(self) -> np.ndarray:
        """[S]: goal_reward for landing in the goal, -hole_penalty in a hole (from a non-terminal state), else 0."""
        e = np.zeros(self.n_states)
        e[self.goal] = self.goal_reward
        e[list(self.holes)] = -self.hole_penalty
        return e

    def terminal_mask(self) -> np.ndarray:
        return np.array([self.terminal(s) for s in range(self.n_states)])

    def render_policy(self, pi_h: np.ndarray) -> str:
        """The most likely action per cell (H: hole, G: goal) of one step's policy [S, A]."""
        arrows = "^>v<"
        lines = []
        for r in range(self.rows):
            row = ""
            for c in range(self.cols):
                s = self.index(r, c)
                row += "G" if s == self.goal else "H" if s in self.holes else arrows[int(pi_h[s].argmax())]
            lines.append(row)
        return "\n".join(lines)


def evaluate(pi: np.ndarray, grid: SlipperyGrid, slip: float | None = None, rho: float = 0.0,
             support: str = "nominal") -> float:
    """Exact expected return from the start of the time-dependent policy pi [H, S, A] on the grid with slip
    probability ``slip`` (default the grid's); with rho > 0, under the worst case of the (s, a)-rectangular TV ball
    of radius rho around those transitions (robust policy evaluation: the adversary picks the transitions that
    minimise the value, step by step)."""
    p = grid.transitions(slip)
    n_s = grid.n_states
    term, step, entry = grid.terminal_mask(), grid.step_reward(), grid.entry_reward()
    v = np.zeros(n_s)
    for h in range(pi.shape[0] - 1, -1, -1):
        target = v + entry
        nxt = (tv_worst_case(p.reshape(-1, n_s), target, rho, support).reshape(p.shape[:2]) if rho > 0
               else p @ target)
        q = step[:, None] + nxt
        q[term] = 0.0
        v = (pi[h] * q).sum(axis=1)
    return float(v[grid.start])


# ---- DR-RPO ---------------------------------------------------------------------------------------------------------

def dr_rpo_train(grid: SlipperyGrid, *, rho: float, episodes: int = 300, horizon: int = 20, eta: float = 1.0,
                 lam: float = 0.05, beta: float = 0.5, ridge: float = 1.0, seed: int = 0, support: str = "nominal",
                 callback: Callable[[int, np.ndarray], None] | None = None,
                 state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Learn a time-dependent softmax policy [H, S, A] online on the grid's nominal dynamics with DR-RPO (ρ = 0: the
    non-robust version). Features: one-hot(s, a) (d = S·A, the tabular case of the d-rectangular linear RMDP).
    Rewards are known (as in the paper's setting); transitions are learned from the episodes. ``state`` (a dict from a
    previous call's ``"state"``) resumes the loop; ``callback(k, pi)`` is called after every episode."""
    n_s, n_a = grid.n_states, grid.n_actions
    d = n_s * n_a
    p_true = grid.transitions()
    term, step, entry = grid.terminal_mask(), grid.step_reward(), grid.entry_reward()
    v_min = -grid.step_cost * horizon - grid.hole_penalty
    v_max = grid.goal_reward  # the range of returns, for clipping Q̂
    pi_ref = np.full((n_s, n_a), 1.0 / n_a)
    if state is None:
        state = {"k": 0, "pi": np.tile(pi_ref, (horizon, 1, 1)), "phi_idx": np.zeros(0, dtype=np.int64),
                 "next": np.zeros(0, dtype=np.int64)}
    k0, pi = int(state["k"]), np.array(state["pi"], dtype=float)
    phi_idx, nxt_all = np.array(state["phi_idx"], dtype=np.int64), np.array(state["next"], dtype=np.int64)
    for k in range(k0, episodes):
        phi_sa = np.zeros((len(phi_idx), d))
        phi_sa[np.arange(len(phi_idx)), phi_idx] = 1.0
        mu, inv = ridge_factors(phi_sa, nxt_all, n_s, ridge)
        bonus = beta * np.sqrt(np.diag(inv)).reshape(n_s, n_a)  # ‖e_{sa}‖_{Λ⁻¹} for one-hot features
        phi = np.eye(d)  # φ(s, a) = e_{s·A + a}
        v = np.zeros(n_s)
        q_all = np.zeros((horizon, n_s, n_a))
        for h in range(horizon - 1, -1, -1):
            target = v + entry  # value of landing in s' (the goal pays on entry)
            back = robust_backup(phi, mu, target, rho, support).reshape(n_s, n_a)
            q = np.clip(step[:, None] + back + bonus, v_min, v_max)
            q[term] = 0.0
            q_all[h] = q
            kl = (pi[h] * (np.log(np.maximum(pi[h], 1e-300)) - np.log(pi_ref))).sum(axis=1)
            v = (pi[h] * q).sum(axis=1) - lam * kl
        pi = mirror_descent_step(pi, pi_ref[None], q_all, eta, lam)
        rng = np.random.default_rng([seed, k])
        s = grid.start
        new_idx, new_next = [], []
        for h in range(horizon):
            if grid.terminal(s):
                break
            a = int(rng.choice(n_a, p=pi[h, s]))
            s2 = int(rng.choice(n_s, p=p_true[s, a]))
            new_idx.append(s * n_a + a)
            new_next.append(s2)
            s = s2
        phi_idx = np.concatenate([phi_idx, np.array(new_idx, dtype=np.int64)])
        nxt_all = np.concatenate([nxt_all, np.array(new_next, dtype=np.int64)])
        if callback is not None:
            callback(k, pi)
    return {"pi": pi, "state": {"k": episodes, "pi": pi, "phi_idx": phi_idx, "next": nxt_all}}


@register("program", "dr_rpo", paper=PAPER)
def dr_rpo_program(out_dir, seed: int, console, rho: float = 0.1, episodes: int = 300, horizon: int = 20,
                   eta: float = 1.0, lam: float = 0.05, beta: float = 0.5, ridge: float = 1.0,
                   grid: dict | None = None, eval_slips: Sequence[float] = (0.1, 0.2, 0.3, 0.4),
                   eval_rho: float | None = None, support: str = "nominal", log_every: int = 25) -> dict[str, Any]:
    """``entropo run dr_rpo``: learn the robust (TV radius ``rho``) and the nominal (ρ = 0) policy online with the
    same episode budget, then evaluate both exactly under the nominal slip, the slips of ``eval_slips`` and the
    worst case of the TV ball of radius ``eval_rho`` (default ``rho``). ``support``: "nominal" (the adversary
    reweights the outcomes of a move: a perturbed slip) or "all" (any next state, the unrestricted ball). Logs the
    exact nominal and worst-case
    returns of both policies every ``log_every`` episodes (metrics.jsonl) and checkpoints the learner states."""
    import torch

    from entropo import checkpoint
    from entropo.logging import MetricsLogger

    g = SlipperyGrid(**(grid or {}))
    eval_rho = rho if eval_rho is None else eval_rho
    out = Path(out_dir)
    logger = MetricsLogger(out, tensorboard=False)
    arms = {"robust": rho, "nominal": 0.0}
    states: dict[str, dict[str, Any] | None] = {a: None for a in arms}
    done = 0
    ckpt = checkpoint.latest(out)
    if ckpt is not None:
        saved = checkpoint.load(ckpt)
        done = int(saved["episodes"])
        states = {a: {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in saved[a].items()} for a in arms}
        console(f"dr_rpo: resuming after {done} episodes from {ckpt}")
    logger.truncate_after(done)
    for stop in range(done + log_every, episodes + log_every, log_every):
        stop = min(stop, episodes)
        row = {}
        for a, rho_a in arms.items():
            res = dr_rpo_train(g, rho=rho_a, episodes=stop, horizon=horizon, eta=eta, lam=lam, beta=beta,
                               ridge=ridge, seed=seed, support=support, state=states[a])
            states[a] = res["state"]
            row[f"{a}/return_nominal"] = evaluate(res["pi"], g)
            row[f"{a}/return_worst_case"] = evaluate(res["pi"], g, rho=eval_rho, support=support)
        logger.log(stop, row)
        checkpoint.save(out, stop, {"episodes": stop, **{a: {k: (torch.from_numpy(np.ascontiguousarray(v))
                                                               if isinstance(v, np.ndarray) else v)
                                                           for k, v in st.items()} for a, st in states.items()}},
                        keep=1)
        console(f"episode {stop}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        if stop >= episodes:
            break
    logger.close()
    results: dict[str, Any] = {"eval_rho": eval_rho, "rho": rho}
    for a in arms:
        pi = np.asarray(states[a]["pi"])
        results[f"{a}/worst_case"] = evaluate(pi, g, rho=eval_rho, support=support)
        for slip in eval_slips:
            results[f"{a}/slip_{slip:g}"] = evaluate(pi, g, slip)
        results[f"{a}/policy_t0"] = g.render_policy(pi[0])
    results["optimal_nominal"] = optimal_return(g, horizon)
    results["optimal_worst_case"] = optimal_return(g, horizon, rho=eval_rho, support=support)
    return results


def optimal_return(grid: SlipperyGrid, horizon: int, slip: float | None = None, rho: float = 0.0,
                   support: str = "nominal") -> float:
    """The optimal (rho > 0: robust-optimal) expected return from the start, by exact backward induction."""
    p = grid.transitions(slip)
    term, step, entry = grid.terminal_mask(), grid.step_reward(), grid.entry_reward()
    v = np.zeros(grid.n_states)
    for _ in range(horizon):
        target = v + entry
        nxt = (tv_worst_case(p.reshape(-1, grid.n_states), target, rho, support).reshape(p.shape[:2]) if rho > 0
               else p @ target)
        q = step[:, None] + nxt
        q[term] = 0.0
        v = q.max(axis=1)
    return float(v[grid.start])
