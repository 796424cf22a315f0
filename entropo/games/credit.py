"""Credit assignment for multi-agent (zero-sum, team) game rewards with group baselines.

In a game the outcome of one row depends on the cards and the seat as much as on the policy: a group baseline only
removes that luck when the rows of a group share it. The rows of one self-play game are *not* such a group (in a
zero-sum game their rewards sum to zero, so their mean is 0 and "reward minus group mean" is just the reward), and
nor are rows of different deals that happen to share a prompt. :func:`keyed_baseline` (advantage ``keyed_baseline``)
therefore groups rows by keys the environment or the task reports (default: the deal and the seat, i.e. duplicate
poker: the n samples of one (deal, seat) compared with each other), and can first subtract a per-row
opponent-aware control variate the environment reports (``baseline_key``, e.g. the poker environment's
``baseline``: the exact expected chips of a reference policy on this deal and seat against this opponent). Both are
unbiased: the key and the control variate are fixed before the policy acts.

Team rewards: give teammates' rows a shared key (e.g. ``keys: [deal, team]``) so their group compares joint
outcomes of the same deal; the reward of a row is the team's.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from entropo import ops
from entropo.batch import Batch
from entropo.registry import register


def row_value(sample: Any, key: str) -> Any:
    """A row's value of ``key``: the environment's episode info first (``StepResult.info``), then the example's
    meta; None when neither has it."""
    episode = getattr(sample, "episode", None)
    info = getattr(episode, "info", None) or {}
    if key in info:
        return info[key]
    meta = getattr(getattr(sample, "example", None), "meta", None) or {}
    return meta.get(key)


def keyed_group_ids(batch: Batch, keys: Sequence[str]) -> Tensor:
    """[B] group ids: rows with equal values of every key share a group (one clear error for a row missing a key)."""
    samples = batch.info.get("sample")
    if samples is None or len(samples) != batch.size:
        raise ValueError("advantage keyed_baseline: the batch has no per-row samples (batch.info['sample']); it needs "
                         "a trainer batch, or pass group keys with group_ids instead")
    ids: dict[tuple, int] = {}
    out = []
    for b, s in enumerate(samples):
        values = []
        for k in keys:
            v = row_value(s, k)
            if v is None:
                raise ValueError(f"advantage keyed_baseline: row {b} has no {k!r} in its episode info or example meta; "
                                 f"set params.keys to keys the environment/task reports (e.g. [deal, seat])")
            values.append(v if isinstance(v, (int, str, float, bool)) else repr(v))
        out.append(ids.setdefault(tuple(values), len(ids)))
    return torch.tensor(out, dtype=torch.long, device=batch.rewards.device)


def group_centred(returns: Tensor, group_ids: Tensor, scale_std: bool = False, eps: float = 1e-6) -> Tensor:
    """r - mean of the row's group (a group of one: r itself), optionally / (std + eps)."""
    count, mean, std = ops.group_stats(returns, group_ids)
    single = count == 1
    adv = returns - mean.masked_fill(single, 0.0)
    if scale_std:
        adv = adv / (std.masked_fill(single, 1.0) + eps)
    return adv


@register("advantage", "keyed_baseline",
          paper="group baseline by deal and seat (duplicate poker) with an opponent-aware control variate")
def keyed_baseline(batch: Batch, keys: Sequence[str] = ("deal", "seat"), baseline_key: str = "",
                   scale_std: bool = False, eps: float = 1e-6) -> Tensor:
    """A_i = (r_i - b_i) - mean_{j in G(i)} (r_j - b_j), with G(i) the rows sharing every key in ``keys`` (from the
    episode info, else the example meta) and b_i the row's ``baseline_key`` value (0 when unset). ``keys=[]``: the
    batch's own groups (``group_ids``). Example: rewards [2, -1, 1, 1] with (deal, seat) = [(7,0), (7,0), (7,1),
    (7,1)] -> [1.5, -1.5, 0, 0]; the two seats of the deal are never averaged together."""
    returns = batch.returns().float()
    if baseline_key:
        samples = batch.info.get("sample") or []
        b = []
        for i, s in enumerate(samples):
            v = row_value(s, baseline_key)
            if v is None:
                raise ValueError(f"advantage keyed_baseline: row {i} has no {baseline_key!r}; set the environment's "
                                 f"baseline param (poker: baseline=cfr) or params.baseline_key=''")
            b.append(float(v))
        returns = returns - torch.tensor(b, dtype=returns.dtype, device=returns.device)
    groups = keyed_group_ids(batch, keys) if keys else batch.group_ids
    return ops.broadcast_to_tokens(group_centred(returns, groups, scale_std, eps), batch.response_mask)


# ------------------------------------------------------------------------------------------------ tabular demo

CREDIT_ARMS = ("none", "batch_mean", "keyed", "cv")


class _Softmax:
    """A tabular softmax policy over information states (the policy being trained in the credit demo)."""

    def __init__(self, num_actions: int):
        self.logits: dict[str, Any] = {}
        self.n = num_actions

    def probs(self, state: Any) -> Any:
        import numpy as np

        from entropo.games.poker import legal_mask

        mask = legal_mask(state)
        z = self.logits.get(state.information_state_string(), np.zeros(self.n))
        z = np.where(mask > 0, z, -np.inf)
        w = np.exp(z - z.max())
        return w / w.sum()


@register("program", "poker_credit", paper="group baselines for zero-sum game rewards (duplicate poker)")
def credit_program(out_dir: Any, seed: int, console: Any = print, game: str = "kuhn", opponent: str = "fixed",
                   arms: Sequence[str] = CREDIT_ARMS, updates: int = 150, deals_per_update: int = 8,
                   samples_per_deal: int = 4, lr: float = 0.5, reference: str = "random") -> dict[str, Any]:
    """Tabular REINFORCE (softmax over information states) against a fixed opponent, one run per advantage arm:
    ``none`` (A = r: what averaging the rows of one zero-sum self-play game gives), ``batch_mean`` (r - batch mean),
    ``keyed`` (r - mean of the rows of the same deal and seat: duplicate poker), ``cv`` (r minus the exact value of
    ``reference`` on the deal and seat against the opponent: an opponent-aware control variate, no grouping; within
    a keyed group it is a constant and cancels). Every update plays ``deals_per_update`` deals from both seats,
    ``samples_per_deal`` hands each; advantages are divided by their batch std (so every arm takes steps of the same
    size and only the direction's noise differs). Reports the exact payoff of the learned policy and the mean squared
    advantage before that scaling."""
    import numpy as np

    from entropo.games.poker import (GAMES, best_response_value, deal_card, deal_value, deck_order, expected_payoff,
                                     load_game, make_opponent)
    from entropo.logging import MetricsLogger

    for a in arms:
        if a not in CREDIT_ARMS:
            raise ValueError(f"params.arms: {a!r} is unknown; use some of {', '.join(CREDIT_ARMS)}")
    g, opp = load_game(game), make_opponent(opponent, game)
    ref = make_opponent(reference, game)
    unit = GAMES[game].unit
    cv_cache: dict[tuple, float] = {}
    logger = MetricsLogger(out_dir, tensorboard=False)
    results: dict[str, Any] = {"game": game, "opponent": opponent}
    for arm_i, arm in enumerate(arms):
        pol = _Softmax(g.num_distinct_actions())
        rng = np.random.default_rng([seed, 73])  # the same deal stream for every arm
        sq, curve = [], []
        for u in range(updates):
            rows = []  # (return, key, cv, [(infostate, action, probs)])
            for _ in range(deals_per_update):
                deal = int(rng.integers(2**31))
                order = deck_order(game, deal)
                for seat in (0, 1):
                    for _ in range(samples_per_deal):
                        st, traj = g.new_initial_state(), []
                        while not st.is_terminal():
                            if st.is_chance_node():
                                st.apply_action(deal_card(st, order))
                                continue
                            p = (pol if st.current_player() == seat else opp).probs(st)
                            a = int(rng.choice(len(p), p=p))
                            if st.current_player() == seat:
                                traj.append((st.information_state_string(), a, p))
                            st.apply_action(a)
                        cv = 0.0
                        if arm == "cv":
                            k = (tuple(order[:3]), seat)
                            if k not in cv_cache:
                                cv_cache[k] = deal_value(game, ref, opp, deal, seat)
                            cv = cv_cache[k]
                        rows.append((st.returns()[seat] / unit, (deal, seat), cv, traj))
            r = torch.tensor([x[0] - x[2] for x in rows], dtype=torch.float64)
            if arm in ("none", "cv"):
                adv = r
            elif arm == "batch_mean":
                adv = r - r.mean()
            else:
                keys: dict[tuple, int] = {}
                gid = torch.tensor([keys.setdefault(x[1], len(keys)) for x in rows])
                adv = group_centred(r, gid)
            sq.append(float((adv ** 2).mean()))
            adv = adv / (adv.std() + 1e-8)
            grads: dict[str, Any] = {}
            for (_, _, _, traj), A in zip(rows, adv.tolist()):
                for key, a, p in traj:
                    gvec = -p.copy()
                    gvec[a] += 1.0
                    grads[key] = grads.get(key, 0.0) + A * gvec
            for key, gvec in grads.items():
                pol.logits[key] = pol.logits.get(key, np.zeros(g.num_distinct_actions())) + lr * gvec / len(rows)
            if (u + 1) % 25 == 0 or u + 1 == updates:
                v = expected_payoff(game, pol, opp)
                curve.append((u + 1, v))
                logger.log(arm_i * 100000 + u + 1, {f"{arm}/payoff": v})
        results[arm] = {"payoff": curve[-1][1], "curve": curve, "mean_sq_advantage": float(np.mean(sq))}
        console(f"credit {arm}: payoff vs {opponent} {curve[-1][1]:+.4f}, E[A^2] {np.mean(sq):.3f}")
    logger.close()
    results["best_response_value"] = best_response_value(game, opp)
    return results
