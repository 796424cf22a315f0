"""``poker``: one hand of Kuhn poker, Leduc hold'em or heads-up limit hold'em against a fixed opponent, on OpenSpiel
(registry kinds ``environment`` and ``task``; see :mod:`entropo.games.poker`).

The policy plays one seat; the opponent (``random``, ``always_call``, ``fixed``, ``cfr``) and the dealer act inside
``step``. Text observations (for language policies) show the rules, the seat, the private and public cards, the pot,
the betting so far and the legal actions as words (``FOLD`` / ``CHECK`` / ``CALL`` / ``BET`` / ``RAISE``); array
observations (for small networks) are OpenSpiel's information-state tensor plus the legal-action mask
(:meth:`PokerEnv.array_observation`, :meth:`PokerEnv.step_action` takes an action id).

Dealing is seeded and independent of the betting: ``example.meta["deal"]`` (else a deal drawn from the episode seed)
orders the deck, so one deal gives the same cards whatever is played and from either seat (``example.meta["seat"]``,
else the ``seat`` param; ``"alternate"``: the seed's parity). The opponent's own randomness comes from the episode
seed. With the ``poker`` task, the n samples of one example share the deal and the seat, so a group baseline (GRPO's
group mean) is a "duplicate poker" baseline that removes the luck of the cards (see ``mirror``).

Rewards: the chips won or lost at the end of the hand in the game's unit (ante / big blind; mbb/hand = 1000 x), on the
last turn. A malformed or illegal action gets an observation naming the legal words and a turn reward of
``invalid_penalty``; after ``max_retries`` such replies in a row, the ``fallback`` action is played for the policy
(``check_fold``: check if free, else fold; ``call``: check/call) and counted in ``info["fallbacks"]``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from entropo.envs.base import Environment, StepResult
from entropo.games.poker import (GAMES, OPPONENTS, action_words, board_cards, contributions, deal_card, deal_value,
                                 deck_order, load_game, make_opponent, private_cards, word_of)
from entropo.registry import register
from entropo.types import Example

FALLBACKS = ("check_fold", "call")
_WORD = re.compile(r"\b(fold|check|call|bet|raise)\b", re.IGNORECASE)
MAX_DECISIONS = {"kuhn": 2, "leduc": 6, "limit_holdem": 16}


def parse_action(text: str, words: dict[str, int]) -> tuple[int | None, str]:
    """The action id of the first action word in ``text`` (case-insensitive), or None with the reason. CALL with
    nothing owed means CHECK, RAISE with no bet means BET and BET facing a bet means RAISE; CHECK facing a bet and
    FOLD with nothing owed (Leduc, hold'em) are illegal."""
    m = _WORD.search(text or "")
    if m is None:
        return None, "no action word"
    w = m.group(1).upper()
    w = {"CALL": "CHECK", "RAISE": "BET"}.get(w, w) if w not in words and w in ("CALL", "RAISE") else w
    w = "RAISE" if w == "BET" and w not in words else w
    if w not in words:
        return None, f"{w} is not legal now"
    return words[w], w


class PokerEnv(Environment):
    """Params: ``game`` (kuhn / leduc / limit_holdem), ``opponent`` (random / always_call / fixed / cfr), ``seat`` (0:
    first to act in Kuhn/Leduc, the big blind in hold'em; 1; ``"alternate"``), ``invalid_penalty`` (turn reward of a
    malformed/illegal reply, default -0.1), ``max_retries`` (default 1), ``fallback`` (``check_fold`` / ``call``),
    ``show_rules`` (the rules text in the first observation, default True), ``baseline`` (a policy name of
    ``OPPONENTS``, Kuhn/Leduc only: ``info["baseline"]`` = its exact expected units on this deal and seat against this
    opponent, an opponent-aware control variate for ``keyed_baseline``; "" = none)."""

    observation_role = "user"

    def __init__(self, game: str = "kuhn", opponent: str = "random", seat: int | str = "alternate",
                 invalid_penalty: float = -0.1, max_retries: int = 1, fallback: str = "check_fold",
                 show_rules: bool = True, baseline: str = ""):
        if game not in GAMES:
            raise ValueError(f"poker: game={game!r} is unknown; use one of {', '.join(GAMES)}")
        if opponent not in OPPONENTS:
            raise ValueError(f"poker: opponent={opponent!r} is unknown; use one of {', '.join(OPPONENTS)}")
        if seat not in (0, 1, "alternate"):
            raise ValueError(f"poker: seat={seat!r} is invalid; use 0, 1 or 'alternate'")
        if fallback not in FALLBACKS:
            raise ValueError(f"poker: fallback={fallback!r} is unknown; use one of {', '.join(FALLBACKS)}")
        if int(max_retries) < 0:
            raise ValueError(f"poker: max_retries={max_retries!r} must be >= 0")
        self.game, self.opponent_name, self.seat_param = game, opponent, seat
        self.spec = GAMES[game]
        self.invalid_penalty, self.max_retries, self.fallback = float(invalid_penalty), int(max_retries), fallback
        self.show_rules = bool(show_rules)
        if baseline and (baseline not in OPPONENTS or not GAMES[game].small):
            raise ValueError(f"poker: baseline={baseline!r} needs a policy of {', '.join(OPPONENTS)} and a small game "
                             "(kuhn, leduc); use baseline='' otherwise")
        self.baseline = make_opponent(baseline, game) if baseline else None
        self.max_turns = MAX_DECISIONS[game] * (self.max_retries + 1)
        self.opponent = make_opponent(opponent, game)

    # ---- episode -----------------------------------------------------------------------------------------------
    def reset(self, example: Example | None, seed: int) -> str:
        self.example = example
        meta = (example.meta if example is not None else None) or {}
        self.deal = int(meta["deal"]) if "deal" in meta else int(np.random.default_rng([int(seed), 43]).integers(2**31))
        seat = meta.get("seat", self.seat_param)
        self.seat = int(seed) % 2 if seat == "alternate" else int(seat)
        if self.seat not in (0, 1):
            raise ValueError(f"poker: example.meta['seat']={seat!r} is invalid; use 0 or 1")
        self.order = deck_order(self.game, self.deal)
        self.rng = np.random.default_rng([int(seed), 47])
        self.state = load_game(self.game).new_initial_state()
        self.log: list[str] = []
        self.invalid = 0
        self.stats = {"malformed": 0, "fallbacks": 0, "decisions": 0}
        self._advance()
        return self.render(first=True)

    def _apply(self, action: int) -> None:
        p = self.state.current_player()
        who = "You" if p == self.seat else "Opponent"
        self.log.append(f"{who}: {word_of(self.state, action)}")
        self.state.apply_action(action)

    def _advance(self) -> None:
        """Deal and let the opponent act until it is the policy's turn or the hand is over."""
        while not self.state.is_terminal():
            if self.state.is_chance_node():
                before = board_cards(self.state)
                while self.state.is_chance_node():
                    self.state.apply_action(deal_card(self.state, self.order))
                after = board_cards(self.state)
                if after != before and after:
                    self.log.append(f"Board: {after}")
            elif self.state.current_player() == self.seat:
                return
            else:
                p = self.opponent.probs(self.state)
                self._apply(int(self.rng.choice(len(p), p=p / p.sum())))

    def step(self, action: str) -> StepResult:
        if self.state.is_terminal():  # the hand ended before the policy had to act (the opponent folded first)
            return self._final()
        words = action_words(self.state)
        a, why = parse_action(action, words)
        if a is None:
            self.invalid += 1
            self.stats["malformed"] += 1
            if self.invalid <= self.max_retries:
                return StepResult(observation=f"Invalid action ({why}). Reply with exactly one of: "
                                              f"{', '.join(words)}.", reward=self.invalid_penalty,
                                  info={"malformed": 1})
            a = self._fallback(words)
            self.stats["fallbacks"] += 1
            result = self.step_action(a)
            result.reward += self.invalid_penalty
            return result
        return self.step_action(a)

    def demonstration_rows(self, example: Example) -> list[tuple[str, list[dict[str, str]]]] | None:
        """A recorded hand for the SFT warm-up (``example.meta["history"]`` = {first, messages}, e.g. from the
        ``poker_histories`` task): its first observation and messages exactly as this environment showed them."""
        h = (example.meta or {}).get("history")
        return [(h["first"], h["messages"])] if h else None

    def _fallback(self, words: dict[str, int]) -> int:
        if self.fallback == "call":
            return words.get("CALL", words.get("CHECK"))
        return words.get("CHECK", words.get("FOLD"))

    def step_action(self, action: int) -> StepResult:
        """Play the action id ``action`` (for non-language policies); an illegal id raises ValueError."""
        if action not in self.state.legal_actions():
            raise ValueError(f"poker: action {action} is illegal; legal: {self.state.legal_actions()}")
        self.invalid = 0
        self.stats["decisions"] += 1
        self._apply(int(action))
        self._advance()
        if self.state.is_terminal():
            return self._final()
        return StepResult(observation=self.render(), info={"malformed": 0})

    def _final(self) -> StepResult:
        chips = float(self.state.returns()[self.seat])
        units = chips / self.spec.unit
        info = dict(self.stats, chips=chips, units=units, mbb=1000.0 * units, seat=self.seat, deal=self.deal)
        if self.baseline is not None:
            info["baseline"] = deal_value(self.game, self.baseline, self.opponent, self.deal, self.seat)
        return StepResult(observation=f"Hand over. You {'won' if chips > 0 else 'lost' if chips < 0 else 'tied'} "
                                      f"{abs(chips):g} chips.", reward=units, done=True, correct=chips > 0, info=info)

    # ---- observations ------------------------------------------------------------------------------------------
    def render(self, first: bool = False) -> str:
        lines = []
        if first and self.show_rules:
            lines.append(self.spec.rules)
        role = {"kuhn": ["player 1 (you act first)", "player 2 (you act second)"],
                "leduc": ["player 1 (you act first each round)", "player 2 (you act second each round)"],
                "limit_holdem": ["the big blind (you act second preflop, first after the flop)",
                                 "the small blind (you act first preflop, last after the flop)"]}[self.game][self.seat]
        lines.append(f"You are {role}.")
        lines.append(f"Your card{'s' if self.game == 'limit_holdem' else ''}: {private_cards(self.state, self.seat)}")
        if self.game != "kuhn":
            lines.append(f"Board: {board_cards(self.state) or '(none yet)'}")
        if self.state.is_terminal():
            lines.append("History: " + ("; ".join(self.log) or "(none)"))
            chips = self.state.returns()[self.seat]
            lines.append(f"The hand is over before your turn: you {'won' if chips > 0 else 'lost'} {abs(chips):g} "
                         "chips. Reply with any word to continue.")
            return "\n".join(lines)
        c = contributions(self.state)
        lines.append(f"Pot: {c[0] + c[1]:g} chips (you put in {c[self.seat]:g}, the opponent {c[1 - self.seat]:g}).")
        lines.append("History: " + ("; ".join(self.log) or "(none)"))
        words = list(action_words(self.state))
        lines.append(f"Your legal actions: {', '.join(words)}. Reply with exactly one of: {' or '.join(words)}.")
        return "\n".join(lines)

    def array_observation(self) -> tuple[np.ndarray, np.ndarray]:
        """(information-state tensor of the policy's seat, legal-action mask) for small networks."""
        mask = np.zeros(self.state.get_game().num_distinct_actions(), dtype=np.float32)
        if not self.state.is_terminal():
            mask[self.state.legal_actions()] = 1.0
        return np.asarray(self.state.information_state_tensor(self.seat), dtype=np.float32), mask


register("environment", "poker",
         paper="Kuhn / Leduc / heads-up limit hold'em on OpenSpiel (Lanctot et al., arXiv 1908.09453)")(PokerEnv)


def play_hand(game: str, policy: Any, opponent: str, deal: int, seat: int, seed: int = 0) -> float:
    """One hand of a state policy (``probs(state)``) from ``seat`` against ``opponent``; returns units won."""
    env = PokerEnv(game, opponent, seat)
    env.reset(Example(prompt="", meta={"deal": deal, "seat": seat}), seed)
    rng = np.random.default_rng([seed, 53])
    result = StepResult(done=env.state.is_terminal())
    while not result.done:
        p = policy.probs(env.state)
        result = env.step_action(int(rng.choice(len(p), p=p / p.sum())))
    return float(env.state.returns()[seat]) / env.spec.unit


class PokerTask:
    """Hands as examples: ``meta = {game, deal, seat}``; train deals and held-out deals come from disjoint ranges
    (train: even deal numbers, eval: odd), so a held-out deal number is never trained on (in Kuhn the 6 card
    combinations recur across deal numbers, by the nature of the game)."""

    name = "poker"

    def __init__(self, seed: int, eval_size: int, game: str, train_size: int, mirror: bool):
        if game not in GAMES:
            raise ValueError(f"poker task: game={game!r} is unknown; use one of {', '.join(GAMES)}")
        self.game, self.mirror = game, bool(mirror)
        rng = np.random.default_rng([seed, 59])
        self._train = [2 * int(d) for d in rng.integers(0, 2**30, size=train_size)]
        self._eval = [2 * int(d) + 1 for d in np.random.default_rng([seed, 61]).integers(0, 2**30, size=eval_size)]

    def _example(self, deal: int, seat: int, split: str) -> Example:
        return Example(prompt=f"{GAMES[self.game].title}, deal {deal}, seat {seat}", answer=None,
                       meta={"task": self.name, "game": self.game, "deal": deal, "seat": seat, "split": split})

    def train_size(self) -> int:
        return len(self._train) * (2 if self.mirror else 1)

    def train_example(self, i: int) -> Example:
        if self.mirror:  # consecutive examples: the same deal from both seats
            return self._example(self._train[(i // 2) % len(self._train)], i % 2, "train")
        return self._example(self._train[i % len(self._train)], i % 2, "train")

    def eval_examples(self) -> list[Example]:
        return [self._example(d, i % 2, "test") for i, d in enumerate(self._eval)]

    def correct(self, completion: str, example: Example) -> bool:
        return False  # the environment judges the hand (StepResult.correct: chips won > 0)


@register("task", "poker", description="poker hands (deal, seat) for the poker environment (Kuhn / Leduc / hold'em)")
def poker_task(seed: int, eval_size: int = 64, *, game: str = "kuhn", train_size: int = 4096,
               mirror: bool = True) -> PokerTask:
    """Pair with ``environment: {name: poker, params: {game: <same>, opponent: ...}}``. ``mirror``: every deal is
    played from both seats (consecutive examples), the duplicate-poker design."""
    return PokerTask(seed, eval_size, game, train_size, mirror)
