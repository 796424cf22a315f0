"""Suspicion-Agent wrapper (entropo.games.suspicion) with a scripted fake language model: stage order and prompt
chaining, action parsing and the fallback, determinism by seed, no hidden information in any prompt, exact value."""

import json

import numpy as np
import pytest

pytest.importorskip("pyspiel")

from entropo.games.env import PokerEnv  # noqa: E402
from entropo.games.poker import GAMES, deck_order, expected_payoff, load_game, make_opponent  # noqa: E402
from entropo.games.suspicion import (DirectPolicy, RandomPolicy, SuspicionPolicy, exact_value,  # noqa: E402
                                     legal_words, match_deals, observation_of, play_match, stage_tokens,
                                     suspicion_agent)
from entropo.types import Example  # noqa: E402


class FakeLM:
    """Canned text per stage; the act reply is ``action`` (a string or a callable of the prompt). Records prompts."""

    def __init__(self, action="BET", tag=True):
        self.action, self.tag = action, tag
        self.prompts: list[tuple[str, str]] = []
        self.n = 0

    def __call__(self, prompt, *, stage, max_new_tokens):
        self.prompts.append((stage, prompt))
        self.n += 1
        if stage in ("act", "direct"):
            return self.action(prompt) if callable(self.action) else self.action
        return f"<{stage}-{self.n}>" if self.tag else f"<{stage}>"


def first_obs(deal=5, seat=0, opponent="random"):
    env = PokerEnv("kuhn", opponent, seat, show_rules=False)
    return env, env.reset(Example(prompt="", meta={"deal": deal, "seat": seat}), 0)


def test_stage_order_and_chaining():
    lm = FakeLM()
    pol = SuspicionPolicy(lm, "kuhn", tom_order=2)
    _, obs = first_obs()
    pol.act(obs)
    calls = pol.decisions[-1].calls
    assert [c.stage for c in calls] == ["observe", "belief", "plan", "act"]
    for i, c in enumerate(calls):
        assert obs in c.prompt and GAMES["kuhn"].rules in c.prompt
        for prev in calls[:i]:
            assert prev.output in c.prompt, (c.stage, prev.stage)
    assert "believe about your card" in calls[1].prompt  # second-order ToM
    pol1 = SuspicionPolicy(FakeLM(), "kuhn", tom_order=1)
    pol1.act(obs)
    assert "believe about your card" not in pol1.decisions[-1].calls[1].prompt
    # token counts: whitespace words for a model without count_tokens; one call per stage
    tok = stage_tokens(pol.decisions)
    assert tok["act"]["calls"] == 1 and tok["plan"]["generated"] == 1
    assert tok["observe"]["prompt"] == len(calls[0].prompt.split())


def test_reflect_stage_uses_past_hands_once_per_hand():
    lm = FakeLM(action="CHECK")
    pol = SuspicionPolicy(lm, "kuhn", memory=2)
    play_match(pol, "kuhn", "always_call", hands=6, seed=0)
    stages = [[c.stage for c in d.calls] for d in pol.decisions]
    assert stages[0] == ["observe", "belief", "plan", "act"]  # no past hand yet
    assert all(s == ["observe", "reflect", "belief", "plan", "act"] for s in stages[1:])  # one decision per hand
    reflect = pol.decisions[-1].calls[1]
    assert "Hand 1:" in reflect.prompt and "Hand 2:" in reflect.prompt and "Hand 3:" not in reflect.prompt
    assert reflect.output in pol.decisions[-1].calls[2].prompt and reflect.output in pol.decisions[-1].calls[3].prompt
    assert len(pol.hands) == 6 and "you played CHECK" in pol.hands[0]


@pytest.mark.parametrize("reply,word,malformed", [
    ("BET", "BET", False), ("I will bet now.", "BET", False), ("check", "CHECK", False),
    ("RAISE", "BET", False),  # RAISE with no bet means BET (the env's parser)
    ("CALL", "CHECK", False),  # CALL with nothing owed means CHECK
    ("FOLD", "CHECK", True),  # illegal with nothing owed -> fallback check
    ("hmm, not sure", "CHECK", True),  # malformed -> fallback check
])
def test_action_parsing_no_bet(reply, word, malformed):
    pol = DirectPolicy(FakeLM(action=reply), "kuhn")
    _, obs = first_obs(seat=0)
    assert legal_words(obs) == ["CHECK", "BET"]
    out = pol.act(obs)
    assert out == reply and pol.decisions[-1].word == word and pol.decisions[-1].malformed is malformed


def test_action_parsing_facing_bet_and_env_agrees():
    # seat 1 facing a bet (always-bet opponent via 'fixed' with K): find a deal where player 1 (opponent) has K
    deal = next(d for d in range(200) if deck_order("kuhn", d)[0] == 2)  # player 0 = opponent holds K -> bets
    env = PokerEnv("kuhn", "fixed", 1, invalid_penalty=0.0, max_retries=0, show_rules=False)
    obs = env.reset(Example(prompt="", meta={"deal": deal, "seat": 1}), 0)
    assert legal_words(obs) == ["FOLD", "CALL"]
    for reply, word, bad in [("CALL", "CALL", False), ("fold.", "FOLD", False), ("CHECK", "FOLD", True),
                             ("xyz", "FOLD", True)]:
        pol = DirectPolicy(FakeLM(action=reply), "kuhn")
        pol.act(obs)
        assert (pol.decisions[-1].word, pol.decisions[-1].malformed) == (word, bad)
    # the environment resolves a malformed reply to the same fallback and counts it
    res = env.step("xyz")
    assert res.done and res.info["malformed"] == 1 and res.info["fallbacks"] == 1 and res.reward == -1.0
    with pytest.raises(ValueError, match="legal actions"):
        legal_words("Hand over. You won 2 chips.")


def test_no_hidden_cards_in_prompts():
    """Two deals that differ only in the opponent's card give identical prompts (same own card, same betting)."""
    deals = {}
    for d in range(500):
        o = deck_order("kuhn", d)
        deals.setdefault((o[0], o[1]), d)
    runs = []
    for opp_card in (0, 1):  # we hold K (seat 0); the opponent holds J or Q; always_call -> the same betting
        lm = FakeLM(action="BET", tag=False)
        pol = SuspicionPolicy(lm, "kuhn", memory=3)
        env = PokerEnv("kuhn", "always_call", 0, invalid_penalty=0.0, max_retries=0, show_rules=False)
        obs = env.reset(Example(prompt="", meta={"deal": deals[(2, opp_card)], "seat": 0}), 0)
        pol.new_hand()
        res = env.step(pol.act(obs))
        pol.end_hand(res.observation)
        pol.new_hand()
        obs2 = env.reset(Example(prompt="", meta={"deal": deals[(2, opp_card)], "seat": 0}), 1)
        pol.act(obs2)  # the reflect stage sees the summary of the first hand
        assert res.done and res.info["chips"] == 2.0
        runs.append(lm.prompts)
    assert runs[0] == runs[1]
    assert any(s == "reflect" for s, _ in runs[0])
    # and every prompt carries the policy's own card only: no "Opponent's card" or opponent private card line
    for _, p in runs[0]:
        assert "Your card: K" in p or "you held K" in p
        assert "Opponent card" not in p and "Cards (public" not in p


def test_play_match_deterministic_by_seed_and_both_seats():
    deals = match_deals(3, 10)
    assert len(deals) == 10 and [s for _, s in deals] == [0, 1] * 5 and deals[0][0] == deals[1][0]
    a = play_match(RandomPolicy(seed=3), "kuhn", "random", 10, seed=3)
    b = play_match(RandomPolicy(seed=3), "kuhn", "random", 10, seed=3)
    c = play_match(RandomPolicy(seed=4), "kuhn", "random", 10, seed=4)
    assert a == b and a["per_hand_mbb"] != c["per_hand_mbb"]
    s1 = SuspicionPolicy(FakeLM(action="CALL"), "kuhn")  # CALL with nothing owed is CHECK: always legal
    s2 = SuspicionPolicy(FakeLM(action="CALL"), "kuhn")
    r1, r2 = play_match(s1, "kuhn", "cfr", 8, 1), play_match(s2, "kuhn", "cfr", 8, 1)
    assert r1 == r2 and r1["malformed_rate"] == 0.0
    assert [d.calls for d in s1.decisions] == [d.calls for d in s2.decisions]
    bad = play_match(DirectPolicy(FakeLM(action="??"), "kuhn"), "kuhn", "random", 8, 1)
    assert bad["malformed_rate"] == 1.0  # every decision fell back (check / fold), counted by the env


def test_observation_of_matches_env_and_exact_value():
    env, obs = first_obs(deal=7, seat=1, opponent="fixed")
    assert observation_of("kuhn", env.state, 1) == obs
    # a text policy that always checks/calls (CHECK, CALL) = always_call: exact value equals the tree's
    pol = DirectPolicy(FakeLM(action=lambda p: "CALL" if "CALL" in p.split("exactly one word:")[-1] else "CHECK"),
                       "kuhn")
    for opp in ("random", "cfr"):
        want = 1000.0 * expected_payoff("kuhn", make_opponent("always_call", "kuhn"), make_opponent(opp, "kuhn"))
        assert exact_value(pol, "kuhn", opp) == pytest.approx(want)
    # always check/fold against always_call: you never win a contested pot except at showdown with the best card
    # seat 0: check, opp checks -> showdown; seat 1: opp checks, we check -> showdown: 0 in expectation
    fold = DirectPolicy(FakeLM(action="x"), "kuhn")
    assert exact_value(fold, "kuhn", "always_call") == pytest.approx(0.0)
    st = load_game("kuhn").new_initial_state()
    st.apply_action(0)
    st.apply_action(1)
    assert "History: (none)" in observation_of("kuhn", st, 0)


def test_program_with_random_policy_only(tmp_path):
    res = suspicion_agent(tmp_path, seed=0, console=lambda *_: None, opponents=["random", "cfr"], hands=12,
                          policies=["random"])
    assert res["hands"] == 12 and set(res) >= {"random/random", "random/cfr"}
    assert res["random/random"]["exact_mbb"] == pytest.approx(0.0, abs=1e-9)
    assert res["random/cfr"]["exact_mbb"] < 0  # uniform random loses to the equilibrium on average
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "random/cfr/mbb" in rows[1]
    again = suspicion_agent(tmp_path, seed=0, console=lambda *_: None, opponents=["random", "cfr"], hands=12,
                            policies=["random"])
    assert again == res
    with pytest.raises(ValueError, match="opponents"):
        suspicion_agent(tmp_path, seed=0, console=lambda *_: None, opponents=["gto"], policies=["random"])
    assert np.isfinite(res["random/cfr"]["mbb_se"])


def test_hf_chat_lm_on_tiny_model_caches_greedy():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from entropo.games.suspicion import HFChatLM
    from entropo.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()  # the tiny model's tokenizer and chat template; a 1-layer model built in memory
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=4096,
                                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id)).eval()
    lm = HFChatLM(model, tok)
    a = lm("You hold K. Reply with exactly one word: CHECK or BET.", stage="act", max_new_tokens=3)
    b = lm("You hold K. Reply with exactly one word: CHECK or BET.", stage="act", max_new_tokens=3)
    assert a == b and lm.calls == 1 and isinstance(a, str)
    assert lm.count_tokens("abc") >= 1
    pol = SuspicionPolicy(lm, "kuhn", budget={"observe": 2, "belief": 2, "plan": 2, "act": 2})
    _, obs = first_obs()
    pol.act(obs)
    assert lm.calls == 5 and pol.decisions[-1].word in ("CHECK", "BET")
    with pytest.raises(ValueError, match="unknown stage"):
        SuspicionPolicy(lm, "kuhn", budget={"think": 3})
