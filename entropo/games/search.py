"""Update-equivalence decision-time search and magnetic mirror descent, from "The Update-Equivalence Framework for
Decision-Time Planning" (Sokota, Farina, Wu, Hu, Wang, Kolter, Brown; arXiv 2304.13138) and "A Unified Approach to
Reinforcement Learning, Quantal Response Equilibria, and Two-Player Zero-Sum Games" (MMD; Sokota et al., arXiv
2206.05825).

- :func:`md_target`: one mirror-descent step pi'(a) ∝ pi(a) exp(eta q(a)) (the same algebra as KL-regularised policy
  improvement). Hand value: pi = [0.5, 0.3, 0.2], q = [1, 0, -1], eta = 0.5 -> [0.662, 0.241, 0.097].
- :func:`mmd_target`: one magnetic-mirror-descent step pi'(a) ∝ [pi(a) rho(a)^(alpha eta) exp(eta q(a))]^(1/(1 +
  alpha eta)) with magnet rho. Hand value (uniform magnet, alpha = 1): [0.559, 0.285, 0.156].
- :class:`MMDLearner`: MMD as a learning dynamic on a whole small game (Kuhn, Leduc): every information state takes the
  step above with q = its reach-weighted action values under the current joint policy; the magnet moves toward the
  new policy, rho <- normalize[rho^(1-m) pi'^m]. The last iterate (not an average) approaches equilibrium.
- :func:`search_policy`: decision-time search at every information state of one player: q(a) = E_{h ~ P(h|s)}[return
  of a, then everyone following the blueprint] (exact over the infoset's histories, or Monte-Carlo: sampled histories
  and rollouts), then one MD or MMD step from the blueprint. Beliefs P(h|s) weight each history by the chance and
  opponent-model reach (own reach is the same for all histories of an infoset under perfect recall).

Checked against the official MMD code (github.com/ssokota/mmd, ``mmd/nfg/learners.py`` ``MMD.update`` and
``mmd/efg/learners.py``): the policy energy is (log pi + lr·temp·log rho + lr·q)/(1 + lr·temp), exponentiated and
normalised (our ``eta`` = their lr, ``alpha`` = their temp); the EFG learner's q at an infostate is the mean of the
histories' action values weighted by their full reach probability, with the "standard" objective (no entropy bonus
inside the values); every infostate of both players is updated simultaneously from the same tree pass; the EFG magnet
update uses the freshly updated policy (the NFG one the previous policy); Kuhn hyper-parameters "moving magnet": temp 1,
lr 0.1, magnet lr 0.05; "annealing": temp = lr = 1/sqrt(t), magnet lr 0. The paper's Hanabi search settings (eta,
samples per decision) were not found in code and are not reproduced.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from entropo.games.poker import (GAMES, GameTree, Policy, TabularPolicy, expected_payoff, exploitability, game_tree,
                                 make_opponent)
from entropo.registry import register


def md_target(pi: np.ndarray, q: np.ndarray, eta: float) -> np.ndarray:
    """Mirror descent: pi'(a) ∝ pi(a)·exp(eta·q(a)) (actions with pi(a) = 0 stay at 0)."""
    pi, q = np.asarray(pi, dtype=float), np.asarray(q, dtype=float)
    if pi.shape != q.shape:
        raise ValueError(f"md_target: pi {pi.shape} and q {q.shape} differ in shape")
    logits = np.where(pi > 0, np.log(np.where(pi > 0, pi, 1.0)) + eta * q, -np.inf)
    logits -= logits.max()
    w = np.exp(logits)
    return w / w.sum()


def mmd_target(pi: np.ndarray, q: np.ndarray, eta: float, alpha: float,
               magnet: np.ndarray | None = None) -> np.ndarray:
    """Magnetic mirror descent: pi'(a) ∝ [pi(a)·rho(a)^(alpha·eta)·exp(eta·q(a))]^(1/(1+alpha·eta));
    ``magnet=None``: uniform over the support of ``pi``."""
    pi, q = np.asarray(pi, dtype=float), np.asarray(q, dtype=float)
    support = pi > 0
    rho = support / support.sum() if magnet is None else np.asarray(magnet, dtype=float)
    if rho.shape != pi.shape:
        raise ValueError(f"mmd_target: magnet {rho.shape} and pi {pi.shape} differ in shape")
    ok = support & (rho > 0)
    safe = lambda x: np.log(np.where(ok, x, 1.0))  # noqa: E731
    energy = np.where(ok, (safe(pi) + alpha * eta * safe(rho) + eta * q) / (1.0 + alpha * eta), -np.inf)
    energy -= energy.max()
    w = np.exp(energy)
    return w / w.sum()


def infostate_q(tree: GameTree, values: np.ndarray, reach: np.ndarray, key: str,
                exclude_own: bool = True) -> np.ndarray:
    """Reach-weighted action values q(a) of information state ``key`` for its acting player (0 on illegal actions)."""
    player = tree.infostate_player[key]
    idxs = tree.infostates[key]
    cols = [c for c in range(3) if not (exclude_own and c == player)]
    w = np.array([np.prod(reach[i, cols]) for i in idxs])
    q = np.zeros(tree.num_actions)
    if w.sum() <= 0:
        w = np.ones(len(idxs))
    w = w / w.sum()
    for wi, i in zip(w, idxs):
        for a, c, _ in tree.nodes[i].children:
            q[a] += wi * values[c, player]
    return q


def _dirichlet(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = np.zeros_like(mask)
    p[mask > 0] = rng.dirichlet(np.ones(int((mask > 0).sum())))
    return np.maximum(p, 1e-3 * mask) / np.maximum(p, 1e-3 * mask).sum()


class MMDLearner:
    """Magnetic mirror descent on the whole tree of a small game (both players' policies in one table). ``eta``,
    ``alpha`` (regularisation temperature) and ``magnet_lr`` are numbers or schedules ``t -> value`` (t = 1, 2, ...)."""

    def __init__(self, game: str, eta: float | Callable[[int], float] = 0.1,
                 alpha: float | Callable[[int], float] = 1.0, magnet_lr: float | Callable[[int], float] = 0.05,
                 init: str = "uniform", seed: int = 0):
        if init not in ("uniform", "random"):
            raise ValueError(f"MMDLearner: init={init!r} is unknown; use 'uniform' or 'random'")
        self.game = game
        self.tree = game_tree(game)
        self.eta, self.alpha, self.magnet_lr = eta, alpha, magnet_lr
        uniform = {}
        for key, idxs in self.tree.infostates.items():
            mask = np.zeros(self.tree.num_actions)
            mask[[a for a, _, _ in self.tree.nodes[idxs[0]].children]] = 1.0
            uniform[key] = mask / mask.sum()
        rng = np.random.default_rng([seed, 71])
        start = {k: (v if init == "uniform" else _dirichlet(v, rng)) for k, v in uniform.items()}
        self.policy = TabularPolicy(start)
        self.magnet = TabularPolicy({k: v.copy() for k, v in uniform.items()})
        self.iteration = 0

    @staticmethod
    def _at(x: float | Callable[[int], float], t: int) -> float:
        return float(x(t)) if callable(x) else float(x)

    def update(self) -> None:
        self.iteration += 1
        t = self.iteration
        eta, alpha, m = self._at(self.eta, t), self._at(self.alpha, t), self._at(self.magnet_lr, t)
        pols = {0: self.policy, 1: self.policy}
        probs = self.tree.node_probs(pols)
        values = self.tree.values(pols, probs)
        reach = self.tree.reach(pols, probs)
        new = {}
        for key in self.tree.infostates:
            q = infostate_q(self.tree, values, reach, key)
            new[key] = mmd_target(self.policy.table[key], q, eta, alpha, self.magnet.table[key])
        for key, p in new.items():
            rho = self.magnet.table[key]
            mag = np.power(np.where(rho > 0, rho, 1.0), 1 - m) * np.power(np.where(p > 0, p, 1.0), m)
            mag = np.where(p > 0, mag, 0.0)
            self.magnet.table[key] = mag / mag.sum()
            self.policy.table[key] = p

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "policy": {k: v.tolist() for k, v in self.policy.table.items()},
                "magnet": {k: v.tolist() for k, v in self.magnet.table.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.policy = TabularPolicy({k: np.array(v) for k, v in state["policy"].items()})
        self.magnet = TabularPolicy({k: np.array(v) for k, v in state["magnet"].items()})


def search_policy(game: str, blueprint: Policy, player: int, opponent_model: Policy, kind: str = "md",
                  eta: float = 1.0, alpha: float = 1.0, magnet: str = "uniform", samples: int = 0,
                  rollouts: int = 1, seed: int = 0) -> TabularPolicy:
    """Decision-time search for ``player`` at every one of its information states: q(a) of the blueprint continuation
    (everyone follows ``blueprint`` for ``player`` and ``opponent_model`` for the other seat afterwards), then one
    ``kind`` = ``md`` / ``mmd`` step from the blueprint (MMD magnet: ``uniform`` or ``blueprint``).

    ``samples=0``: exact q (all histories of the infoset, weighted by belief). ``samples=k``: k histories drawn from
    the belief, ``rollouts`` Monte-Carlo playouts per history and action (seeded)."""
    if kind not in ("md", "mmd"):
        raise ValueError(f"search_policy: kind={kind!r} is unknown; use 'md' or 'mmd'")
    if magnet not in ("uniform", "blueprint"):
        raise ValueError(f"search_policy: magnet={magnet!r} is unknown; use 'uniform' or 'blueprint'")
    tree = game_tree(game)
    pols = {player: blueprint, 1 - player: opponent_model}
    probs = tree.node_probs(pols)
    values = tree.values(pols, probs)
    reach = tree.reach(pols, probs)
    rng = np.random.default_rng([seed, 67])
    table = {}
    for key, idxs in tree.infostates.items():
        if tree.infostate_player[key] != player:
            continue
        pi = probs[idxs[0]]
        if samples <= 0:
            q = infostate_q(tree, values, reach, key)
        else:
            q = _sampled_q(tree, probs, reach, idxs, player, samples, rollouts, rng)
        if kind == "md":
            table[key] = md_target(pi, q, eta)
        else:
            table[key] = mmd_target(pi, q, eta, alpha, None if magnet == "uniform" else pi)
    return TabularPolicy(table)


def _rollout(tree: GameTree, probs: list, start: int, player: int, rng: np.random.Generator) -> float:
    i = start
    while tree.nodes[i].player != -4:
        n = tree.nodes[i]
        if n.player == -1:
            p = np.array([c[2] for c in n.children])
        else:
            p = np.array([probs[i][a] for a, _, _ in n.children])
        i = n.children[int(rng.choice(len(p), p=p / p.sum()))][1]
    return float(tree.nodes[i].returns[player])


def _sampled_q(tree: GameTree, probs: list, reach: np.ndarray, idxs: list[int], player: int, samples: int,
               rollouts: int, rng: np.random.Generator) -> np.ndarray:
    w = np.array([reach[i, 1 - player] * reach[i, 2] for i in idxs])
    w = w / w.sum() if w.sum() > 0 else np.full(len(idxs), 1.0 / len(idxs))
    q = np.zeros(tree.num_actions)
    for h in rng.choice(len(idxs), size=samples, p=w):
        for a, c, _ in tree.nodes[idxs[h]].children:
            q[a] += sum(_rollout(tree, probs, c, player, rng) for _ in range(rollouts)) / (rollouts * samples)
    return q


class _PerSeat:
    """One policy per seat (player index), for evaluation of a search policy computed for each seat."""

    def __init__(self, by_seat: dict[int, Policy]):
        self.by_seat = by_seat

    def probs(self, state: Any) -> np.ndarray:
        return self.by_seat[state.current_player()].probs(state)


# ------------------------------------------------------------------------------------------------ programs

@register("program", "mmd_learner",
          paper="MMD (arXiv 2206.05825) as in the update-equivalence framework, arXiv 2304.13138")
def mmd_learner_program(out_dir: Path, seed: int, console: Callable[[str], None] = print, game: str = "kuhn",
                        iterations: int = 1000, eta: float = 0.1, alpha: float = 1.0, magnet_lr: float = 0.05,
                        schedule: str = "constant", init: str = "uniform", log_every: int = 25) -> dict[str, Any]:
    """MMD self-play on a small game: exploitability of the LAST iterate every ``log_every`` iterations, from a
    uniform (``init="uniform"``) or a seeded random initial policy (``init="random"``; the magnet starts uniform).
    ``schedule``: ``constant`` (eta, alpha, magnet_lr as given: the official "moving magnet" setting for Kuhn is
    0.1, 1, 0.05) or ``annealing`` (eta = alpha = 1/sqrt(t), magnet fixed). The dynamics are deterministic given the
    initial policy."""
    from entropo.logging import MetricsLogger

    if schedule not in ("constant", "annealing"):
        raise ValueError(f"params.schedule={schedule!r} is unknown; use 'constant' or 'annealing'")
    if schedule == "annealing":
        learner = MMDLearner(game, eta=lambda t: 1 / math.sqrt(t), alpha=lambda t: 1 / math.sqrt(t), magnet_lr=0.0,
                             init=init, seed=seed)
    else:
        learner = MMDLearner(game, eta=eta, alpha=alpha, magnet_lr=magnet_lr, init=init, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out_dir, tensorboard=False)
    curve = [(0, exploitability(game, learner.policy))]
    logger.log(0, {"exploitability": curve[0][1]})
    t0 = time.time()
    for t in range(1, iterations + 1):
        learner.update()
        if t % log_every == 0 or t == iterations:
            e = exploitability(game, learner.policy)
            curve.append((t, e))
            logger.log(t, {"exploitability": e})
    logger.close()
    console(f"mmd_learner {game}: exploitability {curve[0][1]:.4f} -> {curve[-1][1]:.5f} after {iterations} "
            f"iterations ({time.time() - t0:.1f}s)")
    return {"game": game, "initial_exploitability": curve[0][1], "final_exploitability": curve[-1][1],
            "min_exploitability": min(e for _, e in curve), "curve": curve, "iterations": iterations}


@register("program", "update_equivalence_search",
          paper="The Update-Equivalence Framework for Decision-Time Planning, arXiv 2304.13138")
def search_program(out_dir: Path, seed: int, console: Callable[[str], None] = print, game: str = "kuhn",
                   blueprint: str = "mmd", blueprint_iterations: int = 20, opponents: tuple[str, ...] = (
                       "random", "always_call", "fixed", "cfr"), opponent_model: str = "true", eta: float = 1.0,
                   alpha: float = 1.0, samples: int = 8, rollouts: int = 4) -> dict[str, Any]:
    """Payoff (game units per hand, exact, both seats) of a blueprint and of MD / MMD decision-time search from it,
    against each fixed opponent; exploitability of each. ``blueprint``: ``mmd`` (a partly trained MMD last iterate
    after ``blueprint_iterations``), ``uniform``, or an opponent name. ``opponent_model``: ``true`` (the search knows
    the opponent's policy) or ``blueprint`` (it assumes the opponent plays the blueprint: self-play search).
    ``samples``: histories per decision for the Monte-Carlo arms (``<arm>_mc``), ``rollouts`` per action."""
    from entropo.logging import MetricsLogger

    if game not in GAMES or not GAMES[game].small:
        raise ValueError(f"params.game={game!r}: search needs a small game (kuhn, leduc)")
    if opponent_model not in ("true", "blueprint"):
        raise ValueError(f"params.opponent_model={opponent_model!r} is unknown; use 'true' or 'blueprint'")
    if blueprint == "mmd":
        learner = MMDLearner(game, eta=0.1, alpha=1.0, magnet_lr=0.05)
        for _ in range(blueprint_iterations):
            learner.update()
        bp: Policy = learner.policy
    elif blueprint == "uniform":
        bp = TabularPolicy()
    else:
        bp = make_opponent(blueprint, game)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out_dir, tensorboard=False)
    results: dict[str, Any] = {"game": game, "blueprint_exploitability": exploitability(game, bp)}
    arms = {"md": dict(kind="md", samples=0), "mmd": dict(kind="mmd", samples=0),
            "md_mc": dict(kind="md", samples=samples), "mmd_mc": dict(kind="mmd", samples=samples)}
    for k, name in enumerate(opponents):
        opp = make_opponent(name, game)
        model = opp if opponent_model == "true" else bp
        row = {"blueprint": expected_payoff(game, bp, opp)}
        for arm, kw in arms.items():
            per_seat = {s: search_policy(game, bp, s, model, eta=eta, alpha=alpha, rollouts=rollouts,
                                         seed=seed * 1000 + 10 * k + s, **kw) for s in (0, 1)}
            pol = _PerSeat(per_seat)
            row[arm] = expected_payoff(game, pol, opp)
            if name == opponents[0]:
                results[f"{arm}_exploitability"] = exploitability(game, pol)
        results[f"payoff/{name}"] = row
        logger.log(k, {f"{name}/{a}": v for a, v in row.items()})
        console(f"search vs {name}: " + ", ".join(f"{a} {v:+.4f}" for a, v in row.items()))
    logger.close()
    return results
