"""OTA: Option-aware Temporally Abstracted value for offline goal-conditioned RL (Ahn et al., NeurIPS 2025,
arXiv 2505.12737), on the HIQL base (HIQL: Offline Goal-Conditioned RL with Latent States as Actions, Park et al.,
NeurIPS 2023, arXiv 2307.11949), in entropo's seeded maze (:func:`entropo.classic.offline_data.maze_env`).

HIQL's high-level policy is trained by AWR on subgoals s_{t+k} with the advantage A^h = V(s_{t+k}, g) − V(s_t, g);
with a value learned step by step (reward −1 per step, γ per step), the difference between two far states' values
is small next to the value's errors, so A^h often has the wrong sign for distant goals. OTA learns a separate
high-level value V^h whose TD target counts *options* of n steps: one −1 and one γ per option, bootstrapping from
s_{t+n} of the same dataset trajectory, so the effective horizon is ≈ d(s, g)/n.

Exact target used here (:func:`option_value_target`; the official code is not available to check, so this is our
reading of "reward and target value made option-aware"): with s_t the state, g the goal and hit = 1[g ∈ {s_{t+1},
…, s_{t+n}}],

    y = 0                                   if s_t = g
    y = −1                                  if hit (the goal is reached within this option: terminal)
    y = −1 + γ·V̄^h(s_{t+n}, g)              otherwise,

with s_{t+n} clipped to the trajectory's last state and V̄ the EMA target network; n = 1 is HIQL's own value target.
Both values are fitted by expectile regression (τ = 0.7) with HIQL's goal sampling (current 0.2, future-in-trajectory
0.5 with a geometric offset, random 0.3). The measurement (:func:`sign_shares`) draws dataset states s_t with a
subgoal s_{t+k} on their trajectory and random goals g, and counts how often sign(V(s_{t+k}, g) − V(s_t, g)) matches
the sign of the true shortest-path improvement d(s_t, g) − d(s_{t+k}, g) (ties excluded), by goal distance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from entropo.classic.offline_rl import _Agent, _soft_update, mlp, train_loop
from entropo.registry import register

OTA_PAPER = ("Option-aware Temporally Abstracted Value for Offline Goal-Conditioned RL (OTA), NeurIPS 2025, "
             "arXiv 2505.12737")


def option_value_target(at_goal: torch.Tensor, hit: torch.Tensor, v_next: torch.Tensor,
                        gamma: float) -> torch.Tensor:
    """The option-aware TD target: 0 at the goal, −1 if the goal is reached within the option, else
    −1 + γ·V̄(s_{t+n}, g) (``v_next`` the target value at the option's end state). With n = 1 it is HIQL's
    per-step target."""
    at_goal, hit = at_goal.to(v_next.dtype), hit.to(v_next.dtype)
    return (1.0 - at_goal) * (-1.0 + gamma * (1.0 - hit) * v_next)


def expectile_regression(pred: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    diff = target - pred
    w = torch.where(diff > 0, torch.full_like(diff, tau), torch.full_like(diff, 1.0 - tau))
    return (w * diff.square()).mean()


class GoalValue(nn.Module):
    """V(s, g) over free-cell indices: an MLP on normalised (row, col) of s and g, or a table (``kind='table'``)."""

    def __init__(self, cells: np.ndarray, size: int, hidden: tuple[int, ...], kind: str = "mlp"):
        super().__init__()
        self.kind = kind
        self.register_buffer("coords", torch.as_tensor(cells / (size - 1) * 2 - 1, dtype=torch.float32))
        if kind == "mlp":
            self.net = mlp(4, 1, hidden)
        elif kind == "table":
            self.table = nn.Parameter(torch.zeros(len(cells), len(cells)))
        else:
            raise ValueError(f"params.value_model={kind!r}: allowed mlp, table")

    def forward(self, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.kind == "table":
            return self.table[s, g]
        return self.net(torch.cat([self.coords[s], self.coords[g]], -1)).squeeze(-1)


class GoalSampler:
    """HIQL-style batches from maze trajectories: (s_t, s_{t+1}, s_{t+n}, g, hit within 1 step, hit within n steps)."""

    def __init__(self, cell_idx: np.ndarray, episode: np.ndarray, option_len: int, gamma: float,
                 p_cur: float = 0.2, p_traj: float = 0.5):
        self.idx = cell_idx.astype(np.int64)
        ends = np.zeros(len(episode), dtype=np.int64)
        for e in np.unique(episode):
            where = np.flatnonzero(episode == e)
            ends[where] = where[-1]
        self.end = ends
        self.valid = np.flatnonzero(np.arange(len(episode)) < ends)  # states with a successor
        self.n, self.gamma, self.p_cur, self.p_traj = option_len, gamma, p_cur, p_traj
        self.n_cells = int(cell_idx.max()) + 1

    def sample(self, rng: np.random.Generator, batch: int):
        t = self.valid[rng.integers(0, len(self.valid), size=batch)]
        u = rng.random(batch)
        offset = np.minimum(rng.geometric(1 - self.gamma, size=batch), self.end[t] - t)
        g_traj = self.idx[t + offset]
        g_rand = self.idx[self.valid[rng.integers(0, len(self.valid), size=batch)]]
        g = np.where(u < self.p_cur, self.idx[t], np.where(u < self.p_cur + self.p_traj, g_traj, g_rand))
        hit1 = self.idx[t + 1] == g
        hitn = np.zeros(batch, dtype=bool)
        for j in range(1, self.n + 1):
            hitn |= self.idx[np.minimum(t + j, self.end[t])] == g
        tn = np.minimum(t + self.n, self.end[t])
        as_t = lambda x: torch.as_tensor(x)  # noqa: E731
        return (as_t(self.idx[t]), as_t(self.idx[t + 1]), as_t(self.idx[tn]), as_t(g), as_t(hit1), as_t(hitn))


class OTAValues(_Agent):
    """HIQL's per-step goal value V (n = 1) and OTA's option-aware high-level value V^h (n = option_len), fitted on the
    same batches."""

    def __init__(self, cells: np.ndarray, size: int, hidden=(256, 256), kind: str = "mlp", lr: float = 3e-4,
                 gamma: float = 0.99, tau: float = 0.005, expectile: float = 0.7):
        self.v, self.vh = GoalValue(cells, size, hidden, kind), GoalValue(cells, size, hidden, kind)
        self.v_t, self.vh_t = GoalValue(cells, size, hidden, kind), GoalValue(cells, size, hidden, kind)
        self.v_t.load_state_dict(self.v.state_dict())
        self.vh_t.load_state_dict(self.vh.state_dict())
        self.modules = {"v": self.v, "vh": self.vh, "v_t": self.v_t, "vh_t": self.vh_t}
        lr_ = lr if kind == "mlp" else 0.05
        self.optims = {"v": torch.optim.Adam(self.v.parameters(), lr=lr_),
                       "vh": torch.optim.Adam(self.vh.parameters(), lr=lr_)}
        self.gamma, self.tau, self.expectile = gamma, tau, expectile

    def update(self, s, s1, sn, g, hit1, hitn) -> dict[str, float]:
        self.total_it += 1
        at_goal = s == g
        out = {}
        for name, net, tgt, nxt, hit in (("v", self.v, self.v_t, s1, hit1), ("vh", self.vh, self.vh_t, sn, hitn)):
            with torch.no_grad():
                y = option_value_target(at_goal, hit, tgt(nxt, g), self.gamma)
            loss = expectile_regression(net(s, g), y, self.expectile)
            self.optims[name].zero_grad()
            loss.backward()
            self.optims[name].step()
            _soft_update(net, tgt, self.tau)
            out[f"loss/{name}"] = loss.item()
        return out


def sign_shares(values: dict[str, GoalValue], idx: np.ndarray, end: np.ndarray, dmat: np.ndarray,
                subgoal_steps: int, pairs: int, bins: list[int], seed: int) -> dict[str, Any]:
    """Share of correct-sign high-level advantages V(s_{t+k}, g) − V(s_t, g) per goal-distance bin (ties in true
    distance excluded), for each value in ``values``. ``bins`` are the left edges of distance bins."""
    rng = np.random.default_rng(seed)
    ok = np.flatnonzero(np.arange(len(idx)) + subgoal_steps <= end)
    t = ok[rng.integers(0, len(ok), size=pairs)]
    s, sk = idx[t], idx[t + subgoal_steps]
    g = rng.integers(0, dmat.shape[0], size=pairs)
    d0, dk = dmat[s, g], dmat[sk, g]
    keep = (d0 != dk) & (d0 > 0)
    s, sk, g, d0, dk = s[keep], sk[keep], g[keep], d0[keep], dk[keep]
    truth = np.sign(d0 - dk)
    which = np.searchsorted(np.asarray(bins), d0, side="right") - 1
    out: dict[str, Any] = {"bins": list(bins), "counts": [int((which == b).sum()) for b in range(len(bins))]}
    with torch.no_grad():
        for name, net in values.items():
            adv = (net(torch.as_tensor(sk), torch.as_tensor(g)) - net(torch.as_tensor(s), torch.as_tensor(g))).numpy()
            correct = np.sign(adv) == truth
            out[name] = [float(correct[which == b].mean()) if (which == b).any() else float("nan")
                         for b in range(len(bins))]
            out[f"{name}_all"] = float(correct.mean())
    return out


@register("program", "ota", paper=OTA_PAPER)
def ota_program(out_dir: Path, seed: int, console=print, steps: int = 3000, batch_size: int = 256,
                hidden: tuple[int, ...] = (256, 256), value_model: str = "mlp", option_len: int = 8,
                subgoal_steps: int = 8, gamma: float = 0.99, expectile: float = 0.7, lr: float = 3e-4,
                eval_every: int = 1000, eval_pairs: int = 20000, ckpt_every: int = 1000,
                distance_bins: tuple[int, ...] = (1, 10, 20, 30, 40), dataset: dict | None = None,
                data_seed: int | None = None) -> dict[str, Any]:
    """Fit HIQL's value V and OTA's option-aware V^h on the mixed expert/random maze dataset and report the share of
    correct-sign high-level advantages by goal distance (``distance_bins`` are left edges)."""
    from entropo.classic.offline_data import all_pairs_distances, load_or_collect

    torch.set_num_threads(1)
    data, info = load_or_collect("maze", seed if data_seed is None else data_seed, **(dataset or {}))
    wall = data["wall"]
    cells, dmat = all_pairs_distances(wall)
    index = -np.ones(wall.shape, dtype=np.int64)
    index[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    obs = data["observations"].astype(np.int64)
    cell_idx = index[obs[:, 0], obs[:, 1]]
    sampler = GoalSampler(cell_idx, data["episode"], option_len, gamma)
    torch.manual_seed(seed)
    agent = OTAValues(cells, wall.shape[0], tuple(hidden), value_model, lr, gamma, expectile=expectile)
    bins = list(distance_bins)

    def eval_fn() -> dict[str, float]:
        r = sign_shares({"hiql": agent.v, "ota": agent.vh}, sampler.idx, sampler.end, dmat, subgoal_steps,
                        eval_pairs, bins, seed + 1)
        out = {"sign/hiql_all": r["hiql_all"], "sign/ota_all": r["ota_all"]}
        for b, lo in enumerate(bins):
            out[f"sign/hiql_d{lo}"], out[f"sign/ota_d{lo}"] = r["hiql"][b], r["ota"][b]
        return out

    evals = train_loop(Path(out_dir), agent, sampler, seed, steps, batch_size, eval_fn, eval_every, ckpt_every,
                       console)
    final = sign_shares({"hiql": agent.v, "ota": agent.vh}, sampler.idx, sampler.end, dmat, subgoal_steps,
                        eval_pairs, bins, seed + 1)
    far = len(bins) - 1
    return {"bins": bins, "counts": final["counts"], "hiql": final["hiql"], "ota": final["ota"],
            "hiql_all": final["hiql_all"], "ota_all": final["ota_all"], "hiql_far": final["hiql"][far],
            "ota_far": final["ota"][far], "max_distance": int(dmat.max()), "free_cells": int(len(cells)),
            "evals": evals, "dataset": {k: info[k] for k in ("episodes", "transitions", "goals_reached", "sha256")}}
