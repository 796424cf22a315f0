"""PokerGPT, reduced ("PokerGPT: An End-to-End Lightweight Solver for Multi-Player Texas Hold'em via Large Language
Model", Huang et al., arXiv 2401.06781): text hand histories of scripted / CFR bots, filtered for winning play, as
supervised demonstrations for a small language policy, then RL on chip rewards in the ``poker`` environment.

- :func:`hand_history`: one hand played by a bot (``random``, ``always_call``, ``fixed``, ``cfr``) in the ``poker``
  environment, recorded exactly as the environment shows it to a language policy: the first observation, then the
  bot's action words and the environment's replies (so the SFT rows are laid out as sampled episodes are).
- task ``poker_histories``: those hands as training examples (``meta["history"]``, replayed by
  ``PokerEnv.demonstration_rows``), ``filter: win`` keeps only hands the demonstrator won (PokerGPT keeps the play of
  high-win-rate players), ``none`` keeps all; held-out deals for evaluation, never in the histories.
- :func:`evaluate_model`: milli-units (mbb) per hand of a language policy (greedy) against each fixed opponent on
  held-out deals from both seats.

Reduced from the paper: two-player Kuhn / Leduc instead of multi-player Texas hold'em, bot self-play histories
instead of human online play, per-hand outcome filtering instead of per-player win-rate ranking, and RL directly on
chip rewards (the trainer's policy gradient) instead of a reward model trained on rankings + PPO.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from entropo.games.env import PokerEnv
from entropo.games.poker import GAMES, OPPONENTS, action_words, make_opponent
from entropo.registry import register
from entropo.types import Example

FILTERS = ("win", "none")


def hand_history(game: str, demonstrator: str, opponent: str, deal: int, seat: int,
                 env_seed: int) -> tuple[str, list[dict[str, str]], float]:
    """(first observation, messages, chips won) of one hand the ``demonstrator`` bot plays in the environment."""
    env = PokerEnv(game, opponent, seat, show_rules=False)
    bot = make_opponent(demonstrator, game)
    first = env.reset(Example(prompt="", meta={"deal": deal, "seat": seat}), env_seed)
    rng = np.random.default_rng([env_seed, 79])
    messages: list[dict[str, str]] = []
    result = None
    while result is None or not result.done:
        if env.state.is_terminal():  # the hand ended before the bot had to act
            word = "CHECK"
        else:
            p = bot.probs(env.state)
            a = int(rng.choice(len(p), p=p / p.sum()))
            word = next(w for w, x in action_words(env.state).items() if x == a)
        messages.append({"role": "assistant", "content": word})
        result = env.step(word)
        if not result.done:
            messages.append({"role": env.observation_role, "content": result.observation})
    return first, messages, float(env.state.returns()[seat])


class PokerHistories:
    """Hand histories as examples: ``meta["history"]`` = {first, messages, deal, seat, chips, demonstrator} (the
    SFT row, replayed by ``PokerEnv.demonstration_rows``) and a FRESH training deal ``meta["deal"]`` / ``seat`` that
    RL episodes on the example play (so RL never replays the filtered, won deals)."""

    name = "poker_histories"

    def __init__(self, seed: int, eval_size: int, game: str, opponent: str, demonstrators: Sequence[str],
                 hands: int, filter: str):
        if game not in GAMES or not GAMES[game].small:
            raise ValueError(f"poker_histories: game={game!r}; use kuhn or leduc")
        if filter not in FILTERS:
            raise ValueError(f"poker_histories: filter={filter!r} is unknown; use one of {', '.join(FILTERS)}")
        bad = [d for d in demonstrators if d not in OPPONENTS]
        if bad or not demonstrators:
            raise ValueError(f"poker_histories: demonstrators={list(demonstrators)!r}; use some of "
                             f"{', '.join(OPPONENTS)}")
        self.game, self.filter = game, filter
        rng = np.random.default_rng([seed, 83])
        self.all: list[Example] = []
        for i in range(hands):
            deal, seat, env_seed = 2 * int(rng.integers(2**30)), i % 2, int(rng.integers(2**31))
            demo = demonstrators[i % len(demonstrators)]
            first, messages, chips = hand_history(game, demo, opponent, deal, seat, env_seed)
            self.all.append(Example(prompt=first, answer=None, meta={
                "task": self.name, "game": game, "deal": 2 * int(rng.integers(2**30)), "seat": i % 2,
                "history": {"first": first, "messages": messages, "deal": deal, "seat": seat, "chips": chips,
                            "demonstrator": demo}}))
        self.kept = [e for e in self.all if filter == "none" or e.meta["history"]["chips"] > 0]
        if not self.kept:
            raise ValueError("poker_histories: no hand passed the filter; raise hands or use filter=none")
        self._eval = [Example(prompt=f"{GAMES[game].title}, held-out deal", meta={
            "task": self.name, "game": game, "deal": 2 * int(d) + 1, "seat": i % 2, "split": "test"})
            for i, d in enumerate(np.random.default_rng([seed, 89]).integers(0, 2**30, size=eval_size))]

    def train_size(self) -> int:
        return len(self.kept)

    def train_example(self, i: int) -> Example:
        return self.kept[i % len(self.kept)]

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, completion: str, example: Example) -> bool:
        return False  # the environment judges the hand

    def stats(self) -> dict[str, float]:
        chips = [e.meta["history"]["chips"] for e in self.all]
        kept = [e.meta["history"]["chips"] for e in self.kept]
        return {"hands": len(chips), "kept": len(kept), "mean_chips_all": float(np.mean(chips)),
                "mean_chips_kept": float(np.mean(kept))}


@register("task", "poker_histories", description="PokerGPT-style text hand histories of poker bots, filtered")
def poker_histories_task(seed: int, eval_size: int = 64, *, game: str = "kuhn", opponent: str = "random",
                         demonstrators: Sequence[str] = ("random", "always_call", "fixed", "cfr"), hands: int = 2000,
                         filter: str = "win") -> PokerHistories:
    """Pair with ``environment: {name: poker, params: {game: <same>, show_rules: false, ...}}`` and a warm-up: the
    environment's ``demonstration_rows`` replays each kept hand. RL episodes on these examples play a fresh deal
    (``meta["deal"]``, training range) against the environment's opponent."""
    return PokerHistories(seed, eval_size, game, opponent, list(demonstrators), hands, filter)


def evaluate_model(model_dir: str, game: str, opponents: Sequence[str] = ("random", "always_call", "fixed", "cfr"),
                   hands: int = 200, seed: int = 0, max_new_tokens: int = 8) -> dict[str, Any]:
    """Greedy play of the language policy in ``model_dir`` on ``hands // 2`` held-out deals, each from both seats
    (duplicate), against each opponent: mbb/hand (1000 x units) with its standard error over deals, malformed
    replies per hand and the fraction of decisions the fallback made."""
    import torch

    from entropo import models
    from entropo.envs.base import EnvFactory
    from entropo.rollout import HFEngine
    from entropo.rollout.episodes import EpisodeLimits

    model, tokenizer = models.load(model_dir)
    model.eval()
    engine = HFEngine(model, tokenizer)
    deals = np.random.default_rng([seed, 97]).integers(0, 2**30, size=max(1, hands // 2))
    examples = [Example(prompt=f"{GAMES[game].title}, held-out deal", meta={"deal": 2 * int(d) + 1, "seat": s})
                for d in deals for s in (0, 1)]
    out: dict[str, Any] = {}
    for k, opp in enumerate(opponents):
        factory = EnvFactory(PokerEnv, {"game": game, "opponent": opp, "show_rules": False})
        with torch.no_grad():
            ro = engine.generate(examples, 1, temperature=0.0, max_new_tokens=max_new_tokens, environment=factory,
                                 env_seed=seed * 1_000_003 + 7919 * k, limits=EpisodeLimits(max_turns=None))
        infos = [e.info for e in ro.episodes]
        mbb = [float(i.get("mbb", 0.0)) for i in infos]
        decisions = sum(int(i.get("decisions", 0)) for i in infos)
        per_deal = np.asarray(mbb).reshape(-1, 2).mean(1)
        out[opp] = {"mbb": float(np.mean(mbb)), "mbb_se": float(np.std(per_deal) / np.sqrt(len(per_deal))),
                    "malformed_per_hand": float(np.mean([i.get("malformed", 0) for i in infos])),
                    "fallback_rate": sum(int(i.get("fallbacks", 0)) for i in infos) / max(1, decisions),
                    "finished": float(np.mean(["mbb" in i for i in infos]))}
    out["mean_mbb"] = float(np.mean([out[o]["mbb"] for o in opponents]))
    return out
