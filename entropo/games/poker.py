"""Poker games on OpenSpiel: Kuhn poker, Leduc hold'em and heads-up limit Texas hold'em, with seeded dealing, the
word actions a language policy writes, tabular policies, opponents (random, always-call, a fixed hand-strength rule,
a CFR solution) and exact evaluation (expected payoff, exploitability / best response) on the small games.

The rules are OpenSpiel's (``kuhn_poker``, ``leduc_poker``, ``universal_poker`` with the ACPC heads-up limit gamedef
below); nothing here re-implements them. ``pyspiel`` is imported inside functions (``pip install 'entropo[games]'``).

Games (``GAMES``): ``kuhn`` (3 cards J<Q<K, ante 1, one bet of 1), ``leduc`` (6 cards, 2 rounds, a public card, ante
1, raises 2 then 4), ``limit_holdem`` (52 cards, blinds 5/10, raises 10/10/20/20, 4 rounds). Payoffs are reported in
the game's ``unit`` (the ante for Kuhn/Leduc, the big blind for hold'em): milli-big-blinds per hand = 1000 x units.

A policy, everywhere in this package, is anything with ``probs(state) -> np.ndarray`` over the game's distinct
actions (zero on illegal ones) for the player to act: :class:`TabularPolicy` (one row per information state),
the opponents of :func:`make_opponent`, and search policies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from entropo.extras import require

LIMIT_HOLDEM_GAMEDEF = """GAMEDEF
limit
numPlayers = 2
numRounds = 4
blind = 10 5
raiseSize = 10 10 20 20
firstPlayer = 2 1 1 1
maxRaises = 3 4 4 4
numSuits = 4
numRanks = 13
numHoleCards = 2
numBoardCards = 0 3 1 1
stack = 20000 20000
END GAMEDEF
"""


@dataclass(frozen=True)
class GameSpec:
    name: str
    title: str
    unit: float  # chips of one reporting unit (ante / big blind)
    num_cards: int  # chance outcomes are card ids 0..num_cards-1 (the deck a deal orders)
    small: bool  # small enough for exact tree computations (exploitability, exact payoff, search)
    rules: str


GAMES: dict[str, GameSpec] = {
    "kuhn": GameSpec("kuhn", "Kuhn poker", 1.0, 3, True,
                     "Kuhn poker: a deck of 3 cards J < Q < K; each player antes 1 chip and gets one private card. "
                     "One betting round: a player may CHECK or BET 1 chip; facing a bet, CALL or FOLD. At showdown "
                     "the higher card wins the pot."),
    "leduc": GameSpec("leduc", "Leduc hold'em", 1.0, 6, True,
                      "Leduc hold'em: a deck of 6 cards (J, Q, K in two suits); each player antes 1 chip and gets "
                      "one private card. Two betting rounds (bet/raise size 2 in round 1, 4 in round 2, at most 2 "
                      "raises per round); a public card is dealt after round 1. At showdown a pair with the public "
                      "card wins, else the higher card; equal ranks split."),
    "limit_holdem": GameSpec("limit_holdem", "heads-up limit Texas hold'em", 10.0, 52, False,
                             "Heads-up limit Texas hold'em: blinds 5/10 chips, two private cards each, 5 board cards "
                             "(flop 3, turn 1, river 1); bets of 10 chips preflop and on the flop, 20 on turn and "
                             "river, at most 3 raises preflop and 4 later. Best five-card hand wins."),
}
ACTION_WORDS = ("FOLD", "CHECK", "CALL", "BET", "RAISE")


def _spec(game: str) -> GameSpec:
    if game not in GAMES:
        raise ValueError(f"game={game!r} is unknown; use one of {', '.join(GAMES)}")
    return GAMES[game]


@lru_cache(maxsize=8)
def load_game(game: str) -> Any:
    """The OpenSpiel game object of ``game`` (kuhn / leduc / limit_holdem)."""
    _spec(game)
    pyspiel = require("pyspiel", "games", f"the {game} poker game")
    if game == "kuhn":
        return pyspiel.load_game("kuhn_poker")
    if game == "leduc":
        return pyspiel.load_game("leduc_poker")
    return pyspiel.universal_poker.load_universal_poker_from_acpc_gamedef(LIMIT_HOLDEM_GAMEDEF)


def game_of(state: Any) -> str:
    short = state.get_game().get_type().short_name
    return {"kuhn_poker": "kuhn", "leduc_poker": "leduc", "universal_poker": "limit_holdem"}[short]


# ------------------------------------------------------------------------------------------------ dealing and bets

def deck_order(game: str, deal: int) -> list[int]:
    """The seeded order of the deck for deal number ``deal``: chance nodes take the first legal card in this order, so
    a deal fixes every card of the hand whatever the betting (the same cards for both seats: duplicate poker)."""
    rng = np.random.default_rng([int(deal), 41])
    return [int(c) for c in rng.permutation(_spec(game).num_cards)]


def deal_card(state: Any, order: list[int]) -> int:
    legal = {a for a, _ in state.chance_outcomes()}
    for c in order:
        if c in legal:
            return c
    raise RuntimeError("deal_card: no legal chance outcome in the deck order")


def contributions(state: Any) -> tuple[float, float]:
    """Chips each player has put in the pot so far."""
    game = game_of(state)
    if game == "kuhn":
        bets = [0, 0]
        acts = [a for a in state.history()[2:]]
        for i, a in enumerate(acts):
            bets[i % 2] += int(a == 1)
        return 1.0 + bets[0], 1.0 + bets[1]
    if game == "leduc":
        if state.is_terminal():
            raise ValueError("contributions: the hand is over")
        m = re.search(r"\[Money: (\d+) (\d+)\]", state.information_state_string(0))
        return 100.0 - float(m.group(1)), 100.0 - float(m.group(2))
    m = re.search(r"Spent: \[P0: (\d+)\s+P1: (\d+)", str(state))
    return float(m.group(1)), float(m.group(2))


def action_words(state: Any) -> dict[str, int]:
    """The words of the legal actions of the player to act, e.g. ``{"CHECK": 0, "BET": 1}`` (Kuhn, no bet yet) or
    ``{"FOLD": 0, "CALL": 1, "RAISE": 2}`` (Leduc / hold'em facing a bet)."""
    legal = state.legal_actions()
    c = contributions(state)
    facing = c[state.current_player()] < max(c)
    words: dict[str, int] = {}
    if game_of(state) == "kuhn":  # action 0 = Pass, 1 = Bet
        words["FOLD" if facing else "CHECK"] = 0
        words["CALL" if facing else "BET"] = 1
        return words
    for a in legal:  # 0 = fold, 1 = call/check, 2 = raise/bet
        if a == 0:
            words["FOLD"] = 0
        elif a == 1:
            words["CALL" if facing else "CHECK"] = 1
        elif a == 2:
            words["RAISE" if facing else "BET"] = 2
    return words


def word_of(state: Any, action: int) -> str:
    for w, a in action_words(state).items():
        if a == action:
            return w
    return str(action)


_RANKS = "JQK"


def card_text(game: str, card: int) -> str:
    if game == "kuhn":
        return _RANKS[card]
    return _RANKS[card // 2] + "sh"[card % 2]


def private_cards(state: Any, player: int) -> str:
    game = game_of(state)
    if game in ("kuhn", "leduc"):
        return card_text(game, state.history()[player])
    m = re.search(rf"P{player} Cards: (\S+)", str(state))
    return m.group(1) if m else "?"


def board_cards(state: Any) -> str:
    game = game_of(state)
    if game == "kuhn":
        return ""
    if game == "leduc":
        m = re.search(r"\[Public: (\d+)\]", state.information_state_string(0) if not state.is_terminal()
                      else str(state))
        if m is None:
            m = re.search(r"Cards \(public player_0 player_1\): (-?\d+)", str(state))
        return card_text(game, int(m.group(1))) if m and int(m.group(1)) >= 0 else ""
    m = re.search(r"BoardCards (\S*)", str(state))
    return m.group(1) if m else ""


# ------------------------------------------------------------------------------------------------ policies

class Policy(Protocol):
    def probs(self, state: Any) -> np.ndarray: ...


def legal_mask(state: Any) -> np.ndarray:
    mask = np.zeros(state.get_game().num_distinct_actions())
    mask[state.legal_actions()] = 1.0
    return mask


def _normalize(p: np.ndarray, mask: np.ndarray) -> np.ndarray:
    p = np.where(mask > 0, np.maximum(p, 0.0), 0.0)
    s = p.sum()
    return p / s if s > 0 else mask / mask.sum()


class TabularPolicy:
    """One probability row per information state (``state.information_state_string()``); information states never
    set get ``default`` (``"uniform"`` over the legal actions)."""

    def __init__(self, table: dict[str, np.ndarray] | None = None):
        self.table: dict[str, np.ndarray] = {k: np.asarray(v, dtype=float) for k, v in (table or {}).items()}

    def probs(self, state: Any) -> np.ndarray:
        key = state.information_state_string()
        mask = legal_mask(state)
        if key in self.table:
            return _normalize(self.table[key], mask)
        return mask / mask.sum()

    def copy(self) -> TabularPolicy:
        return TabularPolicy({k: v.copy() for k, v in self.table.items()})


class UniformRandom:
    name = "random"

    def probs(self, state: Any) -> np.ndarray:
        m = legal_mask(state)
        return m / m.sum()


class AlwaysCall:
    """Checks when nothing is owed, calls any bet; never bets or folds (a calling station)."""

    name = "always_call"

    def probs(self, state: Any) -> np.ndarray:
        words = action_words(state)
        a = words.get("CALL", words.get("CHECK"))
        p = np.zeros(state.get_game().num_distinct_actions())
        p[a] = 1.0
        return p


def _hand_strength(state: Any, player: int) -> float:
    """A crude strength in [0, 1]: Kuhn: the card's rank; Leduc: pair with the public card = 1, else rank; hold'em:
    pairs (with the board or in the hand) and high cards (rank-only, no flush/straight reading)."""
    game = game_of(state)
    if game == "kuhn":
        return state.history()[player] / 2.0
    if game == "leduc":
        mine = private_cards(state, player)[0]
        board = board_cards(state)
        if board and board[0] == mine:
            return 1.0
        return 0.2 + 0.3 * _RANKS.index(mine)
    ranks = "23456789TJQKA"
    hole = private_cards(state, player)
    mine = [hole[i] for i in range(0, len(hole), 2)]
    board = board_cards(state)
    public = [board[i] for i in range(0, len(board), 2)]
    values = sorted((ranks.index(r) for r in mine), reverse=True)
    paired = mine[0] == mine[1] or any(r in public for r in mine)
    if paired:
        return 0.75 + 0.25 * values[0] / 12.0
    return 0.2 + 0.5 * (values[0] + 0.5 * values[1]) / 18.0


class FixedStrategy:
    """A fixed, deterministic hand-strength rule: bet/raise with strength >= ``raise_at``, fold to a bet below
    ``fold_below``, otherwise check/call. Kuhn: bets K, checks/calls Q, checks/folds J."""

    name = "fixed"

    def __init__(self, raise_at: float = 0.75, fold_below: float = 0.4):
        self.raise_at, self.fold_below = raise_at, fold_below

    def probs(self, state: Any) -> np.ndarray:
        words = action_words(state)
        s = _hand_strength(state, state.current_player())
        if s >= self.raise_at and ("BET" in words or "RAISE" in words):
            a = words.get("BET", words.get("RAISE"))
        elif s < self.fold_below and "FOLD" in words:
            a = words["FOLD"]
        else:
            a = words.get("CALL", words.get("CHECK"))
        p = np.zeros(state.get_game().num_distinct_actions())
        p[a] = 1.0
        return p


@lru_cache(maxsize=8)
def cfr_policy(game: str, iterations: int = 0) -> TabularPolicy:
    """The average policy of CFR+ (OpenSpiel's C++ solver) on a small game: an approximate Nash equilibrium
    (Kuhn, 1000 iterations: exploitability < 1e-4; Leduc, 300 iterations: about 2e-3). Cached per process."""
    spec = _spec(game)
    if not spec.small:
        raise ValueError(f"opponent 'cfr' needs a small game (kuhn, leduc); {game} is too large to solve here")
    pyspiel = require("pyspiel", "games", "the CFR opponent")
    iterations = iterations or (1000 if game == "kuhn" else 300)
    solver = pyspiel.CFRPlusSolver(load_game(game))
    for _ in range(iterations):
        solver.evaluate_and_update_policy()
    avg = solver.average_policy()
    tree = game_tree(game)
    n = load_game(game).num_distinct_actions()
    table = {}
    for key in tree.infostates:
        row = np.zeros(n)
        for a, p in avg.get_state_policy(key):
            row[a] = p
        table[key] = row
    return TabularPolicy(table)


OPPONENTS = ("random", "always_call", "fixed", "cfr")


def make_opponent(name: str, game: str) -> Policy:
    """An opponent by name: ``random``, ``always_call``, ``fixed`` (hand-strength rule), ``cfr`` (CFR+ solution;
    Kuhn and Leduc only)."""
    if name == "random":
        return UniformRandom()
    if name == "always_call":
        return AlwaysCall()
    if name == "fixed":
        return FixedStrategy()
    if name == "cfr":
        return cfr_policy(game)
    raise ValueError(f"opponent={name!r} is unknown; use one of {', '.join(OPPONENTS)}")


# ------------------------------------------------------------------------------------------------ exact tree

@dataclass
class Node:
    state: Any
    player: int  # -1 chance, -4 terminal, else the acting player
    key: str  # information state string of the acting player ("" for chance/terminal)
    children: list[tuple[int, int, float]]  # (action, child index, chance probability or 0)
    returns: tuple[float, float] = (0.0, 0.0)


class GameTree:
    """The whole tree of a small game in preorder (parents before children), built once from OpenSpiel."""

    def __init__(self, game: str):
        self.game = game
        g = load_game(game)
        self.num_actions = g.num_distinct_actions()
        self.nodes: list[Node] = []
        self.infostates: dict[str, list[int]] = {}  # key -> node indices (histories of the infoset)
        self.infostate_player: dict[str, int] = {}
        self._build(g.new_initial_state())

    def _build(self, root: Any) -> None:
        stack = [(root, -1, -1)]
        while stack:
            state, parent, action = stack.pop()
            idx = len(self.nodes)
            if state.is_terminal():
                node = Node(state, -4, "", [], tuple(state.returns()))
            elif state.is_chance_node():
                node = Node(state, -1, "", [])
            else:
                p = state.current_player()
                key = state.information_state_string(p)
                node = Node(state, p, key, [])
                self.infostates.setdefault(key, []).append(idx)
                self.infostate_player[key] = p
            self.nodes.append(node)
            if parent >= 0:
                pa = self.nodes[parent]
                prob = dict(pa.state.chance_outcomes()).get(action, 0.0) if pa.player == -1 else 0.0
                pa.children.append((action, idx, prob))
            if node.player != -4:
                for a in reversed(state.legal_actions()):
                    stack.append((state.child(a), idx, a))
        # stack order puts children after parents: preorder holds

    def node_probs(self, policies: dict[int, Policy]) -> list[np.ndarray | None]:
        """The action distribution at every decision node under ``policies`` (player -> policy)."""
        cache: dict[tuple[int, str], np.ndarray] = {}
        out: list[np.ndarray | None] = []
        for n in self.nodes:
            if n.player < 0:
                out.append(None)
                continue
            pol = policies[n.player]
            if isinstance(pol, TabularPolicy):
                k = (n.player, n.key)
                if k not in cache:
                    cache[k] = pol.probs(n.state)
                out.append(cache[k])
            else:
                out.append(pol.probs(n.state))
        return out

    def values(self, policies: dict[int, Policy], probs: list | None = None) -> np.ndarray:
        """Expected returns [num_nodes, 2] of every node when both players follow ``policies``."""
        probs = probs if probs is not None else self.node_probs(policies)
        v = np.zeros((len(self.nodes), 2))
        for i in range(len(self.nodes) - 1, -1, -1):
            n = self.nodes[i]
            if n.player == -4:
                v[i] = n.returns
            elif n.player == -1:
                v[i] = sum(p * v[c] for _, c, p in n.children)
            else:
                pr = probs[i]
                v[i] = sum(pr[a] * v[c] for a, c, _ in n.children)
        return v

    def reach(self, policies: dict[int, Policy], probs: list | None = None) -> np.ndarray:
        """Reach-probability contributions [num_nodes, 3] (player 0, player 1, chance) of every node."""
        probs = probs if probs is not None else self.node_probs(policies)
        r = np.ones((len(self.nodes), 3))
        for i, n in enumerate(self.nodes):
            for a, c, p in n.children:
                r[c] = r[i]
                if n.player == -1:
                    r[c, 2] *= p
                else:
                    r[c, n.player] *= probs[i][a]
        return r


@lru_cache(maxsize=4)
def game_tree(game: str) -> GameTree:
    if not _spec(game).small:
        raise ValueError(f"{game} is too large for exact tree computations; use kuhn or leduc")
    return GameTree(game)


def expected_payoff(game: str, policy: Policy, opponent: Policy, seat: int | None = None) -> float:
    """Exact expected chips (in the game's unit) of ``policy`` against ``opponent``; ``seat=None``: the mean over
    both seats (what a seat-alternating match converges to)."""
    tree = game_tree(game)
    unit = _spec(game).unit
    seats = (0, 1) if seat is None else (seat,)
    total = 0.0
    for s in seats:
        v = tree.values({s: policy, 1 - s: opponent})
        total += v[0, s] / unit
    return total / len(seats)


def to_openspiel(game: str, policy: Policy | dict[int, Policy]) -> Any:
    """An OpenSpiel python TabularPolicy holding ``policy`` (or one policy per player) at every information state."""
    P = require("open_spiel.python.policy", "games", "exploitability")
    tree = game_tree(game)
    tab = P.TabularPolicy(load_game(game))
    for key, idxs in tree.infostates.items():
        player = tree.infostate_player[key]
        pol = policy[player] if isinstance(policy, dict) else policy
        tab.action_probability_array[tab.state_lookup[key]] = pol.probs(tree.nodes[idxs[0]].state)
    return tab


def exploitability(game: str, policy: Policy | dict[int, Policy]) -> float:
    """Exploitability (NashConv / 2: the mean over seats of what a best response gains against the policy, in the
    game's unit) by OpenSpiel's best-response computation. Uniform Kuhn: 11/24 = 0.4583; a Nash equilibrium: 0."""
    E = require("open_spiel.python.algorithms.exploitability", "games", "exploitability")
    return float(E.exploitability(load_game(game), to_openspiel(game, policy))) / _spec(game).unit


def best_response_value(game: str, opponent: Policy, seat: int | None = None) -> float:
    """The most a player can win (game units per hand) against the fixed ``opponent`` (mean over seats if None)."""
    BR = require("open_spiel.python.algorithms.best_response", "games", "best response")
    g = load_game(game)
    seats = (0, 1) if seat is None else (seat,)
    tab = to_openspiel(game, opponent)
    vals = [BR.BestResponsePolicy(g, s, tab).value(g.new_initial_state()) for s in seats]
    return float(np.mean(vals)) / _spec(game).unit


def deal_value(game: str, policy: Policy, opponent: Policy, deal: int, seat: int) -> float:
    """Exact expected units of ``policy`` in ``seat`` against ``opponent`` on one deal (the cards fixed by
    :func:`deck_order`, only the players' randomness averaged): an opponent-aware baseline for that deal and seat."""
    if not _spec(game).small:
        raise ValueError(f"deal_value: {game} is too large for exact evaluation; use kuhn or leduc")
    order = deck_order(game, deal)

    def value(state: Any) -> float:
        if state.is_terminal():
            return float(state.returns()[seat])
        if state.is_chance_node():
            return value(state.child(deal_card(state, order)))
        p = (policy if state.current_player() == seat else opponent).probs(state)
        return sum(p[a] * value(state.child(a)) for a in state.legal_actions() if p[a] > 0)

    return value(load_game(game).new_initial_state()) / _spec(game).unit
