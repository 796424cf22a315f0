"""Suspicion-Agent, reduced ("Suspicion-Agent: Playing Imperfect Information Games with Theory of Mind Aware GPT-4",
Guo et al., arXiv 2309.17277): a prompting pipeline that wraps any language model as a poker policy, with no
training, measured here with a 135M-parameter model.

Per decision, separate generations, each stage's prompt built from the text of the stages before it:

1. ``observe`` -- observation interpretation: restate the card, the betting so far and the legal actions;
2. ``reflect`` (only with ``memory > 0``, once per hand) -- game-pattern analysis over summaries of the last
   ``memory`` hands of this match (own card, the betting, the result; never the opponent's card);
3. ``belief`` -- theory of mind: first order (which cards the opponent holds, given its actions) and, with
   ``tom_order=2``, second order (what the opponent believes about *our* card, and how our action changes that);
4. ``plan`` -- one plan per legal action with the opponent's likely reply and the expected chips, then a choice;
5. ``act`` -- one action word, parsed by the environment (:func:`entropo.games.env.parse_action`); a malformed or
   illegal reply gets the environment's fallback (check if free, else fold).

What was checked in the official code (CR-Gjx/Suspicion-Agent, ``agent.py``: ``make_act``): per decision it runs
``convert_obs`` (readable observation) -> ``get_short_memory_summary`` (the current hand so far) -> ``get_pattern``
(at the first round of a game, reflection over the long memory of previous games) -> ``get_belief`` (first_tom:
own-card analysis, belief on the opponent's cards; second_tom adds the opponent's belief about our cards) ->
``planning_module`` (plans, win/lose rates per opponent card, payoffs, expected chips gain, plan selection) ->
``action_decision`` (one word from the valid list, re-asked until valid), and after each game ``get_summarization``
into the long memory. The prompts here are our own and much shorter (the model is tiny); the stage order and the
information each stage sees follow the official pipeline.

Reduced from the paper: Kuhn poker instead of Leduc / Coup / limit hold'em; a 135M model instead of GPT-4 (the
paper's gains come from a GPT-4-class model); greedy decoding with short per-stage budgets; the hand-so-far summary is
the environment's own history line (no summarization call); hand summaries for ``reflect`` are written by the harness
from the text the policy saw, not generated; no hindsight observation of the opponent's card (the paper's default
shows it after the game); a malformed reply gets the environment's fallback instead of being re-asked.

Also here: :class:`DirectPolicy` (the same model, one prompt), :class:`RandomPolicy` (uniform over the legal words in
the observation), :func:`play_match` (seeded deals, both seats), :func:`exact_value` (greedy, memoryless text
policies are deterministic functions of the information state, so their exact expected payoff against a known
opponent is computed on the game tree), and the program ``suspicion_agent`` (``entropo run suspicion_agent``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from entropo.games.env import PokerEnv, parse_action
from entropo.games.poker import GAMES, OPPONENTS, expected_payoff, load_game, make_opponent, word_of
from entropo.registry import register
from entropo.types import Example

PAPER = "Suspicion-Agent: Playing Imperfect Information Games with Theory of Mind Aware GPT-4, arXiv 2309.17277"
STAGES = ("observe", "reflect", "belief", "plan", "act")
DEFAULT_BUDGET = {"observe": 40, "reflect": 48, "belief": 64, "plan": 80, "act": 6, "direct": 6}
_LEGAL = re.compile(r"Your legal actions: ([A-Z, ]+)\.")


class LanguageModel(Protocol):
    """A text generator: ``lm(prompt, stage=..., max_new_tokens=...) -> str``. ``count_tokens(text)`` (optional)
    counts tokens for the per-stage report (else whitespace words)."""

    def __call__(self, prompt: str, *, stage: str, max_new_tokens: int) -> str: ...


def legal_words(observation: str) -> list[str]:
    """The legal action words the environment lists in its observation (the only legal-action information a text
    policy gets)."""
    m = _LEGAL.search(observation)
    if m is None:
        raise ValueError("suspicion: the observation has no 'Your legal actions: ...' line; pass a poker observation "
                         "of a decision point")
    return [w.strip() for w in m.group(1).split(",") if w.strip()]


def fallback_word(words: list[str]) -> str:
    """The environment's ``check_fold`` fallback: CHECK when free, else FOLD."""
    return "CHECK" if "CHECK" in words else "FOLD"


def count_tokens(lm: Any, text: str) -> int:
    f = getattr(lm, "count_tokens", None)
    return int(f(text)) if f is not None else len(text.split())


@dataclass
class Call:
    stage: str
    prompt: str
    output: str
    prompt_tokens: int
    output_tokens: int


@dataclass
class Decision:
    observation: str
    calls: list[Call]
    reply: str  # the text handed to the environment (the act stage's output)
    word: str  # the legal word it resolves to (after the fallback)
    malformed: bool


class _TextPolicy:
    """Shared bookkeeping: ``act(observation) -> reply text``, ``end_hand(final_observation)``, ``decisions``."""

    name = "text"

    def __init__(self, lm: Any = None, budget: dict[str, int] | None = None):
        self.lm = lm
        self.budget = {**DEFAULT_BUDGET, **(budget or {})}
        bad = [k for k in (budget or {}) if k not in DEFAULT_BUDGET]
        if bad:
            raise ValueError(f"suspicion: budget has unknown stage(s) {bad}; use {', '.join(DEFAULT_BUDGET)}")
        self.decisions: list[Decision] = []
        self.hands: list[str] = []  # per finished hand, a summary from the text the policy saw

    def _call(self, stage: str, prompt: str, calls: list[Call]) -> str:
        out = str(self.lm(prompt, stage=stage, max_new_tokens=self.budget[stage])).strip()
        calls.append(Call(stage, prompt, out, count_tokens(self.lm, prompt), count_tokens(self.lm, out)))
        return out

    def _finish(self, observation: str, calls: list[Call], reply: str) -> str:
        words = legal_words(observation)
        a, why = parse_action(reply, {w: i for i, w in enumerate(words)})
        word = words[a] if a is not None else fallback_word(words)
        self.decisions.append(Decision(observation, calls, reply, word, a is None))
        return reply

    def new_hand(self) -> None:
        self._hand_obs: list[str] = []

    def end_hand(self, final_observation: str) -> None:
        """Summarize the finished hand from what the policy saw (its observations, its actions, the result line)."""
        seen = getattr(self, "_hand_obs", [])
        if not seen:
            return
        last = seen[-1]
        card = re.search(r"Your card: (\S+)", last)
        hist = re.search(r"History: (.*)", last)
        mine = [d.word for d in self.decisions[-len(seen):]]
        self.hands.append(f"you held {card.group(1) if card else '?'}; before your last action: "
                          f"{hist.group(1) if hist else '(none)'}; you played {', '.join(mine)}; "
                          f"{final_observation.strip()}")


class SuspicionPolicy(_TextPolicy):
    """The Suspicion-Agent pipeline around ``lm`` (see the module docstring). ``tom_order``: 1 (opponent's cards) or
    2 (also the opponent's belief about ours); ``memory``: hands of this match summarized for the ``reflect`` stage
    (0 = off, the policy is then a deterministic function of the observation under greedy decoding)."""

    name = "suspicion"

    def __init__(self, lm: Any, game: str = "kuhn", tom_order: int = 2, memory: int = 0,
                 budget: dict[str, int] | None = None):
        super().__init__(lm, budget)
        if tom_order not in (1, 2):
            raise ValueError(f"suspicion: tom_order={tom_order!r}; use 1 or 2")
        if int(memory) < 0:
            raise ValueError(f"suspicion: memory={memory!r} must be >= 0")
        self.rules = GAMES[game].rules
        self.tom_order, self.memory = tom_order, int(memory)
        self._pattern = ""
        self.new_hand()

    def new_hand(self) -> None:
        super().new_hand()
        self._pattern = ""

    def act(self, observation: str) -> str:
        words = legal_words(observation)
        options = " or ".join(words)
        calls: list[Call] = []
        first = not self._hand_obs
        self._hand_obs.append(observation)
        head = f"{self.rules}\n\nWhat you see now:\n{observation}\n"
        interp = self._call("observe", head + "\nTask: observation interpretation. In one or two short sentences, "
                            "state your card and how strong it is in this deck, what the opponent has done so far, "
                            f"and your legal actions ({options}).", calls)
        if self.memory and first and self.hands:
            past = "\n".join(f"Hand {i + 1}: {h}" for i, h in enumerate(self.hands[-self.memory:]))
            self._pattern = self._call("reflect", f"{self.rules}\n\nYour previous hands against this opponent (you "
                                       f"never saw its cards unless stated):\n{past}\n\nTask: game-pattern analysis. "
                                       "Briefly: how does this opponent tend to play, and how should you adapt?",
                                       calls)
        pattern = f"Your analysis of the opponent's past play: {self._pattern}\n" if self._pattern else ""
        second = (" 2) You cannot see each other's cards: from your own actions so far, what does the opponent "
                  "believe about your card, and how would your next action change that belief?"
                  if self.tom_order == 2 else "")
        belief = self._call("belief", head + f"Your reading of the situation: {interp}\n{pattern}\nTask: theory of "
                            "mind. 1) From the opponent's actions, which cards is the opponent likely to hold? Give "
                            f"rough probabilities.{second} Answer briefly.", calls)
        plan = self._call("plan", head + f"Your reading of the situation: {interp}\n{pattern}Your beliefs: {belief}\n"
                          f"\nTask: plan. For each legal action ({options}), say how the opponent will likely respond "
                          "and whether you expect to win or lose chips. Then name the action with the highest "
                          "expected chips.", calls)
        reply = self._call("act", head + f"Your reading of the situation: {interp}\n{pattern}Your beliefs: {belief}\n"
                           f"Your plan: {plan}\n\nBased on the plan, reply with exactly one word: {options}.", calls)
        return self._finish(observation, calls, reply)


class DirectPolicy(_TextPolicy):
    """The baseline: the same model asked once for the action (rules + the observation)."""

    name = "direct"

    def __init__(self, lm: Any, game: str = "kuhn", budget: dict[str, int] | None = None):
        super().__init__(lm, budget)
        self.rules = GAMES[game].rules
        self.new_hand()

    def act(self, observation: str) -> str:
        words = legal_words(observation)
        self._hand_obs.append(observation)
        calls: list[Call] = []
        reply = self._call("direct", f"{self.rules}\n\n{observation}\n\nReply with exactly one word: "
                           f"{' or '.join(words)}.", calls)
        return self._finish(observation, calls, reply)


class RandomPolicy(_TextPolicy):
    """Uniform over the legal words listed in the observation (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__(None)
        self.rng = np.random.default_rng([int(seed), 131])
        self.new_hand()

    def act(self, observation: str) -> str:
        words = legal_words(observation)
        self._hand_obs.append(observation)
        return self._finish(observation, [], words[int(self.rng.integers(len(words)))])


# ------------------------------------------------------------------------------------------------ language models

class HFChatLM:
    """A Hugging Face causal LM as a :class:`LanguageModel`: the prompt as one user message in the chat template,
    greedy decoding (``temperature=0``) or sampling; a cache keyed by (prompt, budget, temperature) makes repeated
    greedy prompts free (exact: greedy decoding is deterministic). ``calls`` counts real generations."""

    def __init__(self, model: Any, tokenizer: Any, temperature: float = 0.0, cache: dict[str, str] | None = None):
        self.model, self.tokenizer, self.temperature = model, tokenizer, float(temperature)
        self.cache: dict[str, str] = cache if cache is not None else {}
        self.calls = 0

    def _ids(self, prompt: str) -> Any:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return self.tokenizer(prompt, return_tensors="pt").input_ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids)

    def __call__(self, prompt: str, *, stage: str, max_new_tokens: int) -> str:
        import torch

        key = hashlib.sha256(f"{max_new_tokens}|{self.temperature}|{prompt}".encode()).hexdigest()
        if self.temperature == 0.0 and key in self.cache:
            return self.cache[key]
        ids = self._ids(prompt)
        with torch.no_grad():
            kw = {"do_sample": False} if self.temperature == 0.0 else {"do_sample": True,
                                                                       "temperature": self.temperature}
            gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id, **kw)
        self.calls += 1
        out = self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        if self.temperature == 0.0:
            self.cache[key] = out
        return out


# ------------------------------------------------------------------------------------------------ play and measure

def match_deals(seed: int, hands: int) -> list[tuple[int, int]]:
    """(deal, seat) pairs: ``hands // 2`` seeded deals, each played from both seats (duplicate poker)."""
    deals = np.random.default_rng([int(seed), 101]).integers(0, 2**30, size=max(1, hands // 2))
    return [(int(d), s) for d in deals for s in (0, 1)]


def play_match(policy: Any, game: str, opponent: str, hands: int, seed: int) -> dict[str, Any]:
    """Play ``hands`` hands (seeded deals, both seats) of ``policy`` (``act(obs) -> text``) against ``opponent`` in
    the ``poker`` environment (no rules in the observations: the policy's prompts carry them; a malformed reply gets
    the ``check_fold`` fallback at once, no penalty). Returns mbb/hand with its standard error over deals, the
    malformed-reply rate per decision and the per-hand results."""
    mbb, malformed, decisions = [], 0, 0
    for k, (deal, seat) in enumerate(match_deals(seed, hands)):
        env = PokerEnv(game, opponent, seat, invalid_penalty=0.0, max_retries=0, show_rules=False)
        obs = env.reset(Example(prompt="", meta={"deal": deal, "seat": seat}), int(seed) * 1_000_003 + k)
        policy.new_hand()
        result = None
        while result is None or not result.done:
            if env.state.is_terminal():  # the opponent folded before the policy had to act
                result = env.step("")
                break
            result = env.step(policy.act(obs))
            obs = result.observation
        policy.end_hand(result.observation)
        info = result.info
        mbb.append(float(info["mbb"]))
        malformed += int(info["malformed"])
        decisions += int(info["decisions"])
    per_deal = np.asarray(mbb).reshape(-1, 2).mean(1)
    return {"mbb": float(np.mean(mbb)), "mbb_se": float(np.std(per_deal, ddof=1) / np.sqrt(len(per_deal)))
            if len(per_deal) > 1 else 0.0, "malformed_rate": malformed / max(1, decisions), "decisions": decisions,
            "hands": len(mbb), "per_hand_mbb": mbb}


def observation_of(game: str, state: Any, seat: int) -> str:
    """The text the ``poker`` environment (``show_rules=False``) shows ``seat`` at decision state ``state``."""
    env = PokerEnv(game, "random", seat, show_rules=False)
    replay = load_game(game).new_initial_state()
    env.log = []
    for a in state.history():
        if replay.is_chance_node():
            replay.apply_action(a)
            continue
        env.log.append(f"{'You' if replay.current_player() == seat else 'Opponent'}: {word_of(replay, a)}")
        replay.apply_action(a)
    env.state, env.seat = state, seat
    return env.render()


class TextStatePolicy:
    """A memoryless text policy as a game-tree policy (``probs(state)``): its word (after the fallback) at the
    observation the environment would show. Exact for greedy decoding without ``memory``."""

    def __init__(self, policy: Any, game: str):
        self.policy, self.game = policy, game

    def probs(self, state: Any) -> np.ndarray:
        from entropo.games.poker import action_words

        seat = state.current_player()
        self.policy.new_hand()
        self.policy.act(observation_of(self.game, state, seat))
        word = self.policy.decisions[-1].word
        p = np.zeros(state.get_game().num_distinct_actions())
        p[action_words(state)[word]] = 1.0
        return p


def exact_value(policy: Any, game: str, opponent: str) -> float:
    """Exact expected mbb/hand (both seats) of a memoryless deterministic text policy against ``opponent``."""
    return 1000.0 * expected_payoff(game, TextStatePolicy(policy, game), make_opponent(opponent, game))


def stage_tokens(decisions: list[Decision]) -> dict[str, dict[str, float]]:
    """Mean prompt and generated tokens per decision, per stage (cached generations count: they are what the
    pipeline consumes)."""
    out: dict[str, dict[str, float]] = {}
    n = max(1, len(decisions))
    for d in decisions:
        for c in d.calls:
            s = out.setdefault(c.stage, {"prompt": 0.0, "generated": 0.0, "calls": 0.0})
            s["prompt"] += c.prompt_tokens / n
            s["generated"] += c.output_tokens / n
            s["calls"] += 1 / n
    return {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in out.items()}


@register("program", "suspicion_agent", paper=PAPER)
def suspicion_agent(out_dir: Path, seed: int, console: Callable[..., Any] = print, *, game: str = "kuhn",
                    opponents: list[str] = ("random", "cfr"), hands: int = 40,
                    policies: list[str] = ("suspicion", "direct", "random"), model: str = "smollm2-135m-instruct",
                    tom_order: int = 2, memory: int = 0, temperature: float = 0.0,
                    budget: dict[str, int] | None = None, exact: bool = True, cache: str = "") -> dict[str, Any]:
    """Play ``hands`` hands (seeded deals, both seats) of each policy (``suspicion``: the ToM pipeline; ``direct``:
    the same model, one prompt; ``random``: uniform legal words) against each opponent; report mbb/hand (played, and
    exact on the game tree when ``exact`` and the policy is memoryless and greedy), the malformed-reply rate and the
    tokens per stage. Greedy generations are cached in ``cache`` (default ``OUT/lm_cache.json``), so a rerun reuses
    them (identical results; the cache only replays deterministic greedy generations)."""
    from entropo.logging import MetricsLogger

    if not GAMES.get(game) or not GAMES[game].small:
        raise ValueError(f"suspicion_agent: game={game!r}; use kuhn or leduc")
    bad = [o for o in opponents if o not in OPPONENTS]
    if bad:
        raise ValueError(f"suspicion_agent: opponents={list(opponents)!r}; use some of {', '.join(OPPONENTS)}")
    bad = [p for p in policies if p not in ("suspicion", "direct", "random")]
    if bad:
        raise ValueError(f"suspicion_agent: policies={list(policies)!r}; use some of suspicion, direct, random")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_file = Path(cache) if cache else out_dir / "lm_cache.json"
    store = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    lm = None
    if any(p != "random" for p in policies):
        from entropo import models

        m, tok = models.load(model)
        m.eval()
        lm = HFChatLM(m, tok, temperature=temperature, cache=store)

    def make(name: str) -> Any:
        if name == "suspicion":
            return SuspicionPolicy(lm, game, tom_order=tom_order, memory=memory, budget=budget)
        if name == "direct":
            return DirectPolicy(lm, game, budget=budget)
        return RandomPolicy(seed)

    (out_dir / "metrics.jsonl").unlink(missing_ok=True)  # a rerun recomputes every row (from the cache)
    logger = MetricsLogger(out_dir, tensorboard=False)
    results: dict[str, Any] = {"game": game, "hands": len(match_deals(seed, hands)), "model": model, "seed": seed}
    step = 0
    for pname in policies:
        for opp in opponents:
            pol = make(pname)
            r = play_match(pol, game, opp, hands, seed)
            r["tokens"] = stage_tokens(pol.decisions)
            deterministic = pname != "random" and memory == 0 and temperature == 0.0
            if exact and deterministic:
                r["exact_mbb"] = exact_value(make(pname), game, opp)
            elif exact and pname == "random":
                r["exact_mbb"] = 1000.0 * expected_payoff(game, make_opponent("random", game),
                                                          make_opponent(opp, game))
            r.pop("per_hand_mbb")
            results[f"{pname}/{opp}"] = r
            logger.log(step, {f"{pname}/{opp}/mbb": r["mbb"], f"{pname}/{opp}/mbb_se": r["mbb_se"],
                              f"{pname}/{opp}/malformed_rate": r["malformed_rate"],
                              f"{pname}/{opp}/exact_mbb": r.get("exact_mbb", float("nan"))})
            step += 1
            console(f"  {pname:9s} vs {opp:11s}: {r['mbb']:+8.1f} ± {r['mbb_se']:.1f} mbb/hand over {r['hands']} "
                    f"hands (exact {r.get('exact_mbb', float('nan')):+.1f}); malformed {r['malformed_rate']:.2f}")
            if lm is not None:
                cache_file.write_text(json.dumps(store))
    logger.close()
    if lm is not None:
        results["model_calls"] = lm.calls
    return results
