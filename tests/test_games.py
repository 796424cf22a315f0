"""Games (entropo.games): the poker environments on OpenSpiel (payoffs and legal actions checked against pyspiel,
seeded dealing, malformed actions), exploitability, and the update-equivalence search / MMD (arXiv 2304.13138)."""

import numpy as np
import pytest

pyspiel = pytest.importorskip("pyspiel")

from entropo.games import poker as P  # noqa: E402
from entropo.games.env import PokerEnv, parse_action, play_hand, poker_task  # noqa: E402
from entropo.types import Example  # noqa: E402


def _deal_with(game, first, second=None):
    """The first deal number whose deck order starts with the given cards (player 0's, player 1's)."""
    for d in range(10_000):
        o = P.deck_order(game, d)
        if o[0] == first and (second is None or o[1] == second):
            return d
    raise AssertionError("no such deal")


def _ex(deal, seat=None):
    meta = {"deal": deal}
    if seat is not None:
        meta["seat"] = seat
    return Example(prompt="", meta=meta)


# ------------------------------------------------------------------------------------------------ rules and payoffs

def test_kuhn_bet_called_pays_two_as_openspiel():
    d = _deal_with("kuhn", 2, 0)  # I hold K, the opponent J
    env = PokerEnv("kuhn", "always_call", seat=0)
    obs = env.reset(_ex(d), seed=1)
    assert "Your card: K" in obs and "CHECK, BET" in obs
    r = env.step("BET")
    st = P.load_game("kuhn").new_initial_state()
    for a in (2, 0, 1, 1):
        st.apply_action(a)
    assert r.done and r.reward == st.returns()[0] == 2.0 and r.correct and r.info["mbb"] == 2000.0


def test_kuhn_legal_words_match_openspiel():
    st = P.load_game("kuhn").new_initial_state()
    st.apply_action(0)
    st.apply_action(1)
    assert P.action_words(st) == {"CHECK": 0, "BET": 1} and st.legal_actions() == [0, 1]
    st.apply_action(1)  # player 0 bets
    assert P.action_words(st) == {"FOLD": 0, "CALL": 1}


def test_leduc_words_and_payoff_against_openspiel():
    g = P.load_game("leduc")
    st = g.new_initial_state()
    st.apply_action(0)
    st.apply_action(3)
    assert P.action_words(st) == {"CHECK": 1, "BET": 2} and sorted(P.action_words(st).values()) == st.legal_actions()
    st.apply_action(2)
    assert P.action_words(st) == {"FOLD": 0, "CALL": 1, "RAISE": 2} and st.legal_actions() == [0, 1, 2]
    # the env from seat 1 (holding card 3 = Q) facing always-call: raise, then check down; compare with pyspiel
    d = _deal_with("leduc", 0, 3)
    env = PokerEnv("leduc", "always_call", seat=1)
    obs = env.reset(_ex(d), seed=0)
    assert "Your card: Qh" in obs and "Opponent: CHECK" in obs
    r = env.step("BET")
    assert not r.done and "Board:" in r.observation
    public = P.deck_order("leduc", d)[2]
    while not r.done:
        r = env.step("check")
    ref = g.new_initial_state()
    for a in (0, 3, 1, 2, 1, public, 1, 1):
        ref.apply_action(a)
    assert ref.is_terminal() and r.reward == ref.returns()[1]


def test_limit_holdem_plays_and_is_zero_sum():
    env = PokerEnv("limit_holdem", "fixed", seat=1)
    obs = env.reset(_ex(7), seed=3)
    assert "small blind" in obs and "Your cards:" in obs
    words = P.action_words(env.state)
    assert sorted(words.values()) == env.state.legal_actions()
    r, turns = None, 0
    while r is None or not r.done:
        r = env.step("call")
        turns += 1
        assert turns <= env.max_turns
    assert sum(env.state.returns()) == 0 and r.reward == env.state.returns()[1] / 10.0


def test_reset_deterministic_and_deal_fixes_cards_for_both_seats():
    a, b = PokerEnv("leduc", "random"), PokerEnv("leduc", "random")
    assert a.reset(_ex(11, 0), 5) == b.reset(_ex(11, 0), 5)
    o = P.deck_order("leduc", 11)
    assert a.state.history()[:2] == o[:2]
    c = PokerEnv("leduc", "random")
    c.reset(_ex(11, 1), 9)
    assert c.state.history()[:2] == o[:2]  # the same cards from the other seat
    e1, e2 = PokerEnv("kuhn", "random"), PokerEnv("kuhn", "random")
    assert e1.reset(None, 3) == e2.reset(None, 3) and e1.seat == e2.seat == 1  # alternate: the seed's parity


def test_malformed_actions_get_an_observation_then_a_fallback():
    d = _deal_with("kuhn", 0, 2)
    env = PokerEnv("kuhn", "always_call", seat=0, invalid_penalty=-0.25, max_retries=1)
    env.reset(_ex(d), 0)
    r = env.step("I think... \u2660\u2660")
    assert not r.done and "Invalid action" in r.observation and "CHECK, BET" in r.observation and r.reward == -0.25
    r = env.step("FOLD")  # folding with nothing owed is illegal in Kuhn (action 0 there is CHECK)
    # second bad reply in a row: the fallback (check) is played; always-call checks behind; J loses the showdown
    assert r.done and r.info["fallbacks"] == 1 and r.reward == pytest.approx(-1.0 - 0.25)
    assert parse_action("", {"CHECK": 0}) == (None, "no action word")
    assert parse_action("call", {"CHECK": 1, "BET": 2}) == (1, "CHECK")  # CALL with nothing owed = CHECK
    with pytest.raises(ValueError, match="illegal"):
        _illegal()


def _illegal():
    env = PokerEnv("kuhn", "random", seat=0)
    env.reset(_ex(1), 0)
    env.step_action(5)


def test_bad_params_raise_one_clear_error():
    with pytest.raises(ValueError, match="game='go'"):
        PokerEnv("go")
    with pytest.raises(ValueError, match="opponent="):
        PokerEnv("kuhn", "shark")
    with pytest.raises(ValueError, match="too large"):
        P.make_opponent("cfr", "limit_holdem")


def test_task_heldout_deals_never_in_training_and_mirror_seats():
    t = poker_task(0, eval_size=50, game="leduc", train_size=200)
    train = {t.train_example(i).meta["deal"] for i in range(t.train_size())}
    held = {e.meta["deal"] for e in t.eval_examples()}
    assert not train & held
    a, b = t.train_example(6), t.train_example(7)
    assert a.meta["deal"] == b.meta["deal"] and (a.meta["seat"], b.meta["seat"]) == (0, 1)


def test_array_observation_is_openspiel_tensor_with_mask():
    env = PokerEnv("kuhn", "random", seat=0)
    env.reset(_ex(_deal_with("kuhn", 1)), 0)
    x, mask = env.array_observation()
    assert x.tolist() == env.state.information_state_tensor(0) and mask.tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------ exact evaluation

def test_exploitability_uniform_kuhn_and_cfr():
    assert P.exploitability("kuhn", P.UniformRandom()) == pytest.approx(11 / 24)
    assert P.exploitability("kuhn", P.cfr_policy("kuhn")) < 1e-3
    # the Kuhn game value for player 0 at equilibrium is -1/18
    assert P.expected_payoff("kuhn", P.cfr_policy("kuhn"), P.cfr_policy("kuhn"), seat=0) == pytest.approx(-1 / 18,
                                                                                                          abs=2e-3)


def test_best_response_to_always_call_is_one_third():
    # bet K (+2), Q either way (0), check J (-1): (2 + 0 - 1) / 3 from either seat
    assert P.best_response_value("kuhn", P.AlwaysCall()) == pytest.approx(1 / 3)
    assert P.expected_payoff("kuhn", P.AlwaysCall(), P.AlwaysCall()) == pytest.approx(0.0)


def test_play_hand_matches_exact_expectation_on_average():
    fixed = P.FixedStrategy()
    exact = P.expected_payoff("kuhn", fixed, P.UniformRandom())
    sampled = np.mean([play_hand("kuhn", fixed, "random", d, d % 2, seed=d) for d in range(1200)])
    assert sampled == pytest.approx(exact, abs=0.12)  # 3 standard errors


# ------------------------------------------------------------------------------------------------ C22: MD / MMD search

from entropo.games import search as S  # noqa: E402


def test_md_and_mmd_targets_hand_values():
    pi, q = [0.5, 0.3, 0.2], [1.0, 0.0, -1.0]
    assert S.md_target(pi, q, 0.5) == pytest.approx([0.662, 0.241, 0.097], abs=1e-3)
    assert S.mmd_target(pi, q, 0.5, 1.0) == pytest.approx([0.559, 0.285, 0.156], abs=1e-3)
    # alpha = 0 is MD; an illegal action (pi = 0) stays at 0; a blueprint magnet with alpha*eta = 1: pi ∝ pi·e^(q/2)
    assert S.mmd_target(pi, q, 0.5, 0.0) == pytest.approx(S.md_target(pi, q, 0.5))
    assert S.md_target([0.0, 1.0], [5.0, 0.0], 1.0).tolist() == [0.0, 1.0]
    assert S.mmd_target(pi, q, 1.0, 1.0, magnet=pi) == pytest.approx(S.md_target(pi, q, 0.5))


def test_infostate_q_kuhn_king_against_always_call():
    tree = P.game_tree("kuhn")
    pols = {0: P.UniformRandom(), 1: P.AlwaysCall()}
    values, reach = tree.values(pols), tree.reach(pols)
    key = next(k for k in tree.infostates if tree.infostate_player[k] == 0 and k.startswith("2") and len(k) == 1)
    # holding K: check -> the caller checks behind, showdown +1; bet -> called, +2
    assert S.infostate_q(tree, values, reach, key)[:2] == pytest.approx([1.0, 2.0])


def test_mmd_last_iterate_approaches_equilibrium_on_kuhn():
    learner = S.MMDLearner("kuhn", eta=0.1, alpha=1.0, magnet_lr=0.05)
    e0 = P.exploitability("kuhn", learner.policy)
    for _ in range(300):
        learner.update()
    e = P.exploitability("kuhn", learner.policy)
    assert e0 == pytest.approx(11 / 24) and e < 0.1
    clone = S.MMDLearner("kuhn")
    clone.load_state_dict(learner.state_dict())
    assert P.exploitability("kuhn", clone.policy) == pytest.approx(e)


def test_search_with_exact_q_improves_the_blueprint_against_a_fixed_opponent():
    bp = P.UniformRandom()
    for name in ("always_call", "fixed"):
        opp = P.make_opponent(name, "kuhn")
        for seat in (0, 1):
            base = P.expected_payoff("kuhn", bp, opp, seat=seat)
            for kind in ("md", "mmd"):
                pol = S.search_policy("kuhn", bp, seat, opp, kind=kind, eta=1.0)
                assert P.expected_payoff("kuhn", pol, opp, seat=seat) > base + 1e-3
    with pytest.raises(ValueError, match="kind="):
        S.search_policy("kuhn", bp, 0, bp, kind="ucb")


def test_monte_carlo_search_is_seeded():
    opp = P.FixedStrategy()
    a = S.search_policy("kuhn", P.UniformRandom(), 0, opp, samples=4, rollouts=2, seed=3)
    b = S.search_policy("kuhn", P.UniformRandom(), 0, opp, samples=4, rollouts=2, seed=3)
    assert all(np.array_equal(a.table[k], b.table[k]) for k in a.table)


# ------------------------------------------------------------------------------------------------ multi-agent credit

import torch  # noqa: E402

from entropo.batch import Batch  # noqa: E402
from entropo.games.credit import keyed_baseline  # noqa: E402
from entropo.rollout.episodes import EpisodeInfo  # noqa: E402
from entropo.types import Sample  # noqa: E402


def _batch(rewards, keys, baselines=None, group_ids=None):
    samples = []
    for i, (deal, seat) in enumerate(keys):
        ep = EpisodeInfo(num_turns=1)
        ep.info.update({"deal": deal, "seat": seat})
        if baselines is not None:
            ep.info["baseline"] = baselines[i]
        samples.append(Sample(completion="", example=Example(prompt=""), task=None, episode=ep))
    n = len(rewards)
    return Batch(input_ids=torch.zeros(n, 3, dtype=torch.long), attention_mask=torch.ones(n, 3),
                 response_mask=torch.tensor([[0.0, 1.0, 1.0]] * n), rewards=torch.tensor(rewards),
                 group_ids=torch.tensor(group_ids or [0] * n), info={"sample": samples})


def test_keyed_baseline_groups_by_deal_and_seat_not_by_game():
    # one zero-sum self-play game per deal gives rows (r, -r): grouped as one "game" their mean is 0 and A = r;
    # grouped by (deal, seat) each seat is compared with its own other samples of that deal
    b = _batch([2.0, -1.0, 1.0, 1.0], [(7, 0), (7, 0), (7, 1), (7, 1)])
    adv = keyed_baseline(b)
    assert adv[:, 1].tolist() == pytest.approx([1.5, -1.5, 0.0, 0.0]) and adv[:, 0].tolist() == [0.0] * 4
    cv = keyed_baseline(_batch([2.0, -1.0], [(1, 0), (2, 0)], baselines=[1.0, -2.0]), baseline_key="baseline")
    assert cv[:, 1].tolist() == pytest.approx([1.0, 1.0])  # singleton groups: r - b
    with pytest.raises(ValueError, match="'team'"):
        keyed_baseline(b, keys=("team",))


def test_poker_env_reports_the_opponent_aware_baseline():
    env = PokerEnv("kuhn", "always_call", seat=0, baseline="random")
    d = _deal_with("kuhn", 2, 0)
    env.reset(_ex(d), 0)
    r = env.step("BET")
    # uniform with K vs J against always-call: check -> +1 ... bet -> +2: 1.5
    assert r.info["baseline"] == pytest.approx(1.5)


# ------------------------------------------------------------------------------------------------ PokerGPT (reduced)

from entropo.games.pokergpt import hand_history, poker_histories_task  # noqa: E402


def test_hand_history_is_what_the_environment_shows():
    d = _deal_with("kuhn", 2, 0)
    first, messages, chips = hand_history("kuhn", "fixed", "always_call", d, 0, env_seed=5)
    # the fixed bot bets its K, always-call calls: +2; the first observation is the environment's own
    assert messages == [{"role": "assistant", "content": "BET"}] and chips == 2.0
    env = PokerEnv("kuhn", "always_call", seat=0, show_rules=False)
    assert env.reset(_ex(d), 5) == first


def test_poker_histories_filter_keeps_won_hands_and_rl_plays_fresh_deals():
    win = poker_histories_task(0, eval_size=4, game="kuhn", hands=40, filter="win")
    all_ = poker_histories_task(0, eval_size=4, game="kuhn", hands=40, filter="none")
    assert win.train_size() < all_.train_size() == 40
    assert all(win.train_example(i).meta["history"]["chips"] > 0 for i in range(win.train_size()))
    ex = win.train_example(0)
    assert ex.meta["deal"] != ex.meta["history"]["deal"] and ex.meta["deal"] % 2 == 0
    assert all(e.meta["deal"] % 2 == 1 for e in win.eval_examples())  # held-out deals are odd, training even
    rows = PokerEnv("kuhn", show_rules=False).demonstration_rows(ex)
    assert rows == [(ex.meta["history"]["first"], ex.meta["history"]["messages"])]
    with pytest.raises(ValueError, match="filter="):
        poker_histories_task(0, game="kuhn", hands=4, filter="best")
