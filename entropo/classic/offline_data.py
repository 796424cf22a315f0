"""Offline datasets that entropo generates itself (no D4RL/OGBench download exists here): seeded collection of
mixed expert/random data on small Gymnasium environments, cached as ``.npz`` with a ``manifest.json``.

Two datasets:

- ``pendulum`` (Gymnasium ``Pendulum-v1``, continuous torque in [-2, 2]): the "expert" is a SCRIPTED controller, not a
  trained policy: energy pumping (u = k·(E* − E)·θ̇ with E = θ̇²/2 + 15·cos θ, the pendulum's own energy under
  Pendulum-v1's dynamics θ̈ = 15·sin θ + 3u) and a PD stabiliser near the top. Its episodes are played with Gaussian
  action noise; the "random" episodes draw actions uniformly. ``expert_fraction`` of the episodes are expert.
- ``maze`` (:func:`maze_env`, a gridworld on the Gymnasium API: a seeded maze with loops, 4 moves, goal-conditioned):
  the "expert" walks the BFS shortest path to a random goal with ε-random moves; the "random" episodes are random
  walks. Used by OTA (goal-conditioned value learning; rewards are relabelled with goals at training time).

Every array is a deterministic function of (name, seed, sizes): :func:`load_or_collect` regenerates the file when
it is missing, and the manifest records the seed, sizes, per-kind returns and a SHA-256 of the arrays. The cache is
``$ENTROPO_OFFLINE_DIR`` or ``~/.cache/entropo/offline/v<DATA_VERSION>``. Regenerate with
``entropo run offline_data`` (program ``offline_data``) or :func:`load_or_collect` from Python.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from entropo.extras import require
from entropo.registry import register

DATA_VERSION = 1
KINDS = ("expert", "random")


def cache_dir() -> Path:
    env = os.environ.get("ENTROPO_OFFLINE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "entropo" / "offline" / f"v{DATA_VERSION}"


def _gym(what: str):
    return require("gymnasium", "classic", what)


# ---- Pendulum: scripted expert ---------------------------------------------------------------------------------------

def pendulum_expert(obs: np.ndarray, k_energy: float = 0.5, kp: float = 10.0, kd: float = 2.0) -> float:
    """Scripted swing-up + balance torque for Pendulum-v1 from its observation (cos θ, sin θ, θ̇); θ = 0 is upright.

    Pendulum-v1 integrates θ̈ = 3g/(2l)·sin θ + 3/(ml²)·u with g = 10, m = l = 1, so E = θ̇²/2 + 15·cos θ has
    dE/dt = 3·u·θ̇ and equals 15 at rest upright: pumping u = k·(15 − E)·θ̇ drives E to 15; near the top a PD law
    u = −kp·θ − kd·θ̇ holds it. Torque is clipped to ±2."""
    c, s, w = float(obs[0]), float(obs[1]), float(obs[2])
    theta = np.arctan2(s, c)
    if c > 0.85:
        u = -kp * theta - kd * w
    else:
        energy = 0.5 * w * w + 15.0 * c
        u = k_energy * (15.0 - energy) * w
        if abs(w) < 0.05:  # at rest at the bottom: kick
            u = 2.0
    return float(np.clip(u, -2.0, 2.0))


def collect_pendulum(seed: int, episodes: int = 60, expert_fraction: float = 0.5, noise: float = 0.3,
                     max_steps: int = 200) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``episodes`` episodes of Pendulum-v1, the first ``round(expert_fraction·episodes)`` by the scripted expert
    with N(0, noise²·4) action noise, the rest with uniform random torques; episodes are then shuffled (seeded)."""
    gym = _gym("the pendulum dataset")
    rng = np.random.default_rng(seed)
    env = gym.make("Pendulum-v1", max_episode_steps=max_steps)
    n_expert = int(round(expert_fraction * episodes))
    kinds = np.array([0] * n_expert + [1] * (episodes - n_expert))
    rng.shuffle(kinds)
    cols: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                             "terminals", "timeouts", "kind", "episode")}
    returns = {k: [] for k in KINDS}
    for ep, kind in enumerate(kinds):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        total = 0.0
        for t in range(max_steps):
            if kind == 0:
                a = pendulum_expert(obs) + noise * 2.0 * rng.standard_normal()
            else:
                a = rng.uniform(-2.0, 2.0)
            a = np.array([np.clip(a, -2.0, 2.0)], dtype=np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            for key, v in (("observations", obs), ("actions", a), ("rewards", r), ("next_observations", nxt),
                           ("terminals", term), ("timeouts", trunc or t == max_steps - 1), ("kind", kind),
                           ("episode", ep)):
                cols[key].append(v)
            total += float(r)
            obs = nxt
            if term or trunc:
                break
        returns[KINDS[kind]].append(total)
    env.close()
    data = {"observations": np.asarray(cols["observations"], np.float32),
            "actions": np.asarray(cols["actions"], np.float32),
            "rewards": np.asarray(cols["rewards"], np.float32),
            "next_observations": np.asarray(cols["next_observations"], np.float32),
            "terminals": np.asarray(cols["terminals"], np.float32),
            "timeouts": np.asarray(cols["timeouts"], np.float32),
            "kind": np.asarray(cols["kind"], np.int8), "episode": np.asarray(cols["episode"], np.int32)}
    info = {"env": "Pendulum-v1", "expert": "scripted energy-pumping swing-up + PD balance (pendulum_expert)",
            "noise": noise, "expert_fraction": expert_fraction, "episodes": episodes, "max_steps": max_steps,
            "returns": {k: {"n": len(v), "mean": float(np.mean(v)) if v else None,
                            "min": float(np.min(v)) if v else None, "max": float(np.max(v)) if v else None}
                        for k, v in returns.items()}}
    return data, info


# ---- Maze: a goal-conditioned gridworld on the Gymnasium API ---------------------------------------------------------

MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])  # up, down, left, right (row, col)


def make_maze(cells: int = 8, loop_fraction: float = 0.15, seed: int = 0) -> np.ndarray:
    """A (2·cells+1)² grid, True = wall: a depth-first-search maze on ``cells``×``cells`` cells (seeded), then a
    ``loop_fraction`` of the remaining inner walls between two cells removed so that paths are not unique."""
    rng = np.random.default_rng(seed)
    size = 2 * cells + 1
    wall = np.ones((size, size), dtype=bool)
    seen = np.zeros((cells, cells), dtype=bool)
    stack = [(0, 0)]
    seen[0, 0] = True
    wall[1, 1] = False
    while stack:
        r, c = stack[-1]
        nbrs = [(r + dr, c + dc) for dr, dc in MOVES if 0 <= r + dr < cells and 0 <= c + dc < cells
                and not seen[r + dr, c + dc]]
        if not nbrs:
            stack.pop()
            continue
        nr, nc = nbrs[int(rng.integers(len(nbrs)))]
        wall[2 * nr + 1, 2 * nc + 1] = False
        wall[r + nr + 1, c + nc + 1] = False
        seen[nr, nc] = True
        stack.append((nr, nc))
    inner = [(i, j) for i in range(1, size - 1) for j in range(1, size - 1)
             if wall[i, j] and ((i % 2 == 1 and j % 2 == 0) or (i % 2 == 0 and j % 2 == 1))]
    for k in rng.permutation(len(inner))[:int(round(loop_fraction * len(inner)))]:
        wall[inner[k]] = False
    return wall


def bfs_distances(wall: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Shortest-path step counts from every free cell to ``goal`` (−1 for walls and unreachable cells)."""
    dist = -np.ones(wall.shape, dtype=np.int32)
    dist[goal] = 0
    q = deque([goal])
    while q:
        r, c = q.popleft()
        for dr, dc in MOVES:
            nr, nc = r + dr, c + dc
            if not wall[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                q.append((nr, nc))
    return dist


def all_pairs_distances(wall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(free cells as an (N, 2) array, D[i, j] = shortest-path distance between free cells i and j)."""
    free = np.argwhere(~wall)
    index = -np.ones(wall.shape, dtype=np.int64)
    index[free[:, 0], free[:, 1]] = np.arange(len(free))
    dmat = np.zeros((len(free), len(free)), dtype=np.int32)
    for j, (r, c) in enumerate(free):
        d = bfs_distances(wall, (int(r), int(c)))
        dmat[:, j] = d[free[:, 0], free[:, 1]]
    return free, dmat


def maze_env(cells: int = 8, loop_fraction: float = 0.15, maze_seed: int = 0, max_steps: int = 200):
    """A goal-conditioned gridworld as a ``gymnasium.Env``: observation = {"observation": (row, col),
    "desired_goal": (row, col)}, 4 discrete moves (0 up, 1 down, 2 left, 3 right), reward −1 per step and 0 on
    reaching the goal (terminated). A move into a wall leaves the agent in place (never an error); an action outside
    0..3 raises ValueError naming it. ``reset(seed=..., options={"start": (r, c), "goal": (r, c)})`` fixes them;
    otherwise both are drawn (seeded) among the free cells."""
    gym = _gym("the maze environment")
    spaces = gym.spaces
    wall = make_maze(cells, loop_fraction, maze_seed)
    size = wall.shape[0]

    class GridMaze(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self):
            self.wall = wall
            self.free = np.argwhere(~wall)
            self.max_steps = max_steps
            self.action_space = spaces.Discrete(4)
            box = spaces.Box(0, size - 1, shape=(2,), dtype=np.int64)
            self.observation_space = spaces.Dict({"observation": box, "desired_goal": box})
            self.pos = self.free[0].copy()
            self.goal = self.free[-1].copy()
            self.t = 0

        def _obs(self):
            return {"observation": self.pos.copy(), "desired_goal": self.goal.copy()}

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            options = options or {}
            pick = lambda: self.free[int(self.np_random.integers(len(self.free)))].copy()  # noqa: E731
            self.pos = np.array(options["start"]) if "start" in options else pick()
            self.goal = np.array(options["goal"]) if "goal" in options else pick()
            for name, p in (("start", self.pos), ("goal", self.goal)):
                if self.wall[tuple(p)]:
                    raise ValueError(f"options.{name}={tuple(p)} is a wall cell; choose a free cell")
            self.t = 0
            return self._obs(), {}

        def step(self, action):
            if not isinstance(action, (int, np.integer)) or not 0 <= int(action) < 4:
                raise ValueError(f"action={action!r}: must be an integer move in 0..3 (up, down, left, right)")
            nxt = self.pos + MOVES[int(action)]
            if not self.wall[tuple(nxt)]:
                self.pos = nxt
            self.t += 1
            reached = bool((self.pos == self.goal).all())
            return self._obs(), 0.0 if reached else -1.0, reached, self.t >= self.max_steps and not reached, {}

    return GridMaze()


def collect_maze(seed: int, episodes: int = 80, expert_fraction: float = 0.5, epsilon: float = 0.2,
                 max_steps: int = 200, cells: int = 8, loop_fraction: float = 0.15,
                 maze_seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Trajectories of ``max_steps`` states in :func:`maze_env`: expert episodes walk the shortest path to a drawn
    goal with ε-random moves (a new goal once reached, so every trajectory has ``max_steps`` moves), random ones
    take uniform moves. Goals are not stored: goal-conditioned learners relabel them."""
    rng = np.random.default_rng(seed)
    env = maze_env(cells, loop_fraction, maze_seed, max_steps=10**9)
    n_expert = int(round(expert_fraction * episodes))
    kinds = np.array([0] * n_expert + [1] * (episodes - n_expert))
    rng.shuffle(kinds)
    dist_cache: dict[tuple[int, int], np.ndarray] = {}
    obs_list, kind_list, ep_list, reached = [], [], [], {k: 0 for k in KINDS}
    for ep, kind in enumerate(kinds):
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        pos, goal = obs["observation"], tuple(int(x) for x in obs["desired_goal"])
        for t in range(max_steps + 1):
            obs_list.append(pos.copy())
            kind_list.append(kind)
            ep_list.append(ep)
            if t == max_steps:
                break
            if kind == 0 and rng.random() >= epsilon:
                if goal not in dist_cache:
                    dist_cache[goal] = bfs_distances(env.wall, goal)
                d = dist_cache[goal]
                options = [a for a, m in enumerate(MOVES) if d[tuple(pos + m)] >= 0 and
                           d[tuple(pos + m)] < d[tuple(pos)]]
                a = options[int(rng.integers(len(options)))] if options else int(rng.integers(4))
            else:
                a = int(rng.integers(4))
            obs, _, done, _, _ = env.step(a)
            pos = obs["observation"]
            if done:
                reached[KINDS[kind]] += 1
                goal = tuple(int(x) for x in env.free[int(rng.integers(len(env.free)))])
                env.goal = np.array(goal)
    data = {"observations": np.asarray(obs_list, np.int16), "kind": np.asarray(kind_list, np.int8),
            "episode": np.asarray(ep_list, np.int32), "wall": env.wall.copy()}
    info = {"env": "maze_env", "cells": cells, "loop_fraction": loop_fraction, "maze_seed": maze_seed,
            "expert": "BFS shortest path to a drawn goal with epsilon-random moves", "epsilon": epsilon,
            "expert_fraction": expert_fraction, "episodes": episodes, "max_steps": max_steps,
            "free_cells": int((~env.wall).sum()), "goals_reached": reached}
    return data, info


COLLECTORS = {"pendulum": collect_pendulum, "maze": collect_maze}


def _digest(data: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode())
        h.update(np.ascontiguousarray(data[k]).tobytes())
    return h.hexdigest()


def dataset_key(name: str, seed: int, params: dict[str, Any]) -> str:
    blob = json.dumps({"name": name, "seed": seed, "params": params, "v": DATA_VERSION}, sort_keys=True)
    return f"{name}_s{seed}_{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def collect(name: str, seed: int = 0, **params: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Collect dataset ``name`` (``pendulum`` or ``maze``) without touching the cache."""
    if name not in COLLECTORS:
        raise ValueError(f"dataset={name!r}: unknown; allowed: {', '.join(COLLECTORS)}")
    data, info = COLLECTORS[name](seed, **params)
    info = {"name": name, "seed": seed, "params": params, "data_version": DATA_VERSION,
            "transitions": int(len(data["observations"])), "sha256": _digest(data), **info}
    return data, info


def load_or_collect(name: str, seed: int = 0, root: str | Path | None = None,
                    **params: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The cached dataset (``ROOT/<key>.npz`` + ``<key>.json`` manifest), collecting and writing it first if absent
    or if its arrays no longer match the manifest's SHA-256."""
    from entropo.checkpoint import atomic_write_bytes

    root = Path(root) if root is not None else cache_dir()
    key = dataset_key(name, seed, params)
    npz, man = root / f"{key}.npz", root / f"{key}.json"
    if npz.is_file() and man.is_file():
        try:
            with np.load(npz) as f:
                data = {k: f[k] for k in f.files}
            info = json.loads(man.read_text())
            if _digest(data) == info.get("sha256"):
                return data, info
        except (OSError, ValueError, json.JSONDecodeError):
            pass
    data, info = collect(name, seed, **params)
    root.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **data)
    os.replace(tmp, npz)
    atomic_write_bytes(man, json.dumps(info, indent=1).encode())
    return data, info


@register("program", "offline_data", paper="entropo's offline datasets (seeded mixed expert/random collection)")
def offline_data_program(out_dir: Path, seed: int, console=print, datasets: tuple[str, ...] = ("pendulum", "maze"),
                         pendulum: dict | None = None, maze: dict | None = None) -> dict[str, Any]:
    """Regenerate (or verify) the cached datasets and copy their manifests to ``out_dir``."""
    from entropo.checkpoint import atomic_write_bytes

    params = {"pendulum": dict(pendulum or {}), "maze": dict(maze or {})}
    out: dict[str, Any] = {}
    for name in datasets:
        if name not in COLLECTORS:
            raise ValueError(f"params.datasets: unknown dataset {name!r}; allowed: {', '.join(COLLECTORS)}")
        _, info = load_or_collect(name, seed, **params[name])
        atomic_write_bytes(Path(out_dir) / f"{name}_manifest.json", json.dumps(info, indent=1).encode())
        console(f"{name}: {info['transitions']} transitions, sha256 {info['sha256'][:12]}, cached in {cache_dir()}")
        out[name] = info
    return out
