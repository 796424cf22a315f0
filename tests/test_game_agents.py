"""PORTAL (reduced; arXiv 2503.13356): the behaviour-tree DSL parser, interpreter, grid duel, task and reward.
Steering the Herd (arXiv 2504.02648): the Bayesian update, Bellman backups by hand, and the paper's qualitative
claims (convex value on the learning region, obfuscation by the biased planner, the welfare comparison)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from entropo.games import herd, portal
from entropo.games.portal import DSLError, GameConfig, Unit, decide, duel, evaluate_program, parse
from entropo.types import Example, Sample

RECIPES = Path(__file__).resolve().parent.parent / "entropo" / "recipes"


# ---- PORTAL: parser -------------------------------------------------------------------------------------------------

def test_parser_valid_programs_and_round_trip():
    tree = parse(" sel( seq(inr , atk), !low ,adv ) ")
    assert tree.kind == "sel" and len(tree.children) == 3
    assert tree.children[0].kind == "seq" and [c.name for c in tree.children[0].children] == ["inr", "atk"]
    assert tree.children[1].kind == "cond" and tree.children[1].negate and tree.children[1].name == "low"
    assert str(tree) == "sel(seq(inr,atk),!low,adv)"
    assert parse(str(tree)) == tree
    assert parse("wait") == portal.Node("act", "wait")
    for text in portal.OPPONENTS.values():
        if text is not None:
            assert str(parse(text)) == text


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("sel(", "ends where a node"),
    ("sel()", "unknown word ')'"),
    ("sel(atk,,adv)", "unknown word ','"),
    ("seq(inr atk)", "expected ',' or ')'"),
    ("fire", "unknown word 'fire'"),
    ("!atk", "'!' must precede a condition"),
    ("atk adv", "after the complete tree"),
    ("__import__('os').system('x')", "unexpected character"),
    ("sel(seq(inr,atk),adv))", "after the complete tree"),
    ("seq(" * 7 + "atk" + ")" * 7, "deeper than"),
    ("sel(" + ",".join(["atk"] * 60) + ")", "more than 48 nodes"),
    ("sel(" + ",".join(["wait"] * 90) + ")", "characters (limit"),
])
def test_parser_rejects_malformed_programs_with_a_clear_error(text, fragment):
    with pytest.raises(DSLError, match=None) as e:
        parse(text)
    assert fragment in str(e.value)


# ---- PORTAL: interpreter and game by hand ---------------------------------------------------------------------------

def test_decide_semantics_by_hand():
    me, far, at2, adj = Unit(0, 0), Unit(3, 0), Unit(1, 1), Unit(0, 1)
    rusher = parse("sel(seq(inr,atk),adv)")
    assert decide(rusher, me, far) == "adv" and decide(rusher, me, at2) == "atk"
    assert decide(parse("seq(inr,near)"), me, adj) == "wait"  # seq of true conditions: OK, no action -> wait
    assert decide(parse("sel(inr,atk)"), me, adj) == "wait"  # a true condition ends sel with OK
    assert decide(parse("sel(near,atk)"), me, at2) == "atk"  # a false condition: sel tries the next child
    assert decide(parse("seq(!near,flee)"), me, adj) == "wait" and decide(parse("seq(!near,flee)"), me, at2) == "flee"
    hurt = Unit(0, 0, hp=1, potions=0)
    assert decide(parse("sel(seq(low,pot,heal),seq(low,flee),adv)"), hurt, far) == "flee"
    assert decide(parse("sel(seq(elow,atk),wait)"), me, Unit(1, 0, hp=1)) == "atk"


def test_duel_by_hand_on_a_3x3_grid():
    cfg = GameConfig(size=3, hit_near=1.0, hit_far=0.0, max_ticks=10)
    start = ((0, 1), (2, 1))
    r = duel(parse("sel(seq(near,atk),adv)"), parse("wait"), seed=5, cfg=cfg, start=start, record=True)
    # tick 1: distance 2, not near -> adv to (1,1); ticks 2-4: adjacent, atk hits (p = 1) three times: 3 -> 0 hp
    assert r.actions == [("adv", "wait"), ("atk", "wait"), ("atk", "wait"), ("atk", "wait")]
    assert r.positions[0] == ((1, 1), (2, 1)) and r.outcome == "win" and r.ticks == 4 and r.hp == (3, 0)
    # both advance onto the same cell: both stay put, forever -> draw at the tick limit with equal hp
    r = duel(parse("adv"), parse("adv"), seed=0, cfg=cfg, start=start, record=True)
    assert set(r.positions) == {((0, 1), (2, 1))} and r.outcome == "draw" and r.ticks == 10
    # mutual kill is a draw; a hit at distance 2 (hit_far=1) counts, flee steps to the farthest cell
    r = duel(parse("atk"), parse("atk"), seed=0, cfg=GameConfig(size=3, max_hp=1, hit_near=1.0, hit_far=1.0),
             start=start)
    assert r.outcome == "draw" and r.ticks == 1 and r.hp == (0, 0)
    r = duel(parse("flee"), parse("adv"), seed=0, cfg=GameConfig(size=3, max_ticks=1), start=((1, 1), (2, 1)),
             record=True)
    assert r.positions[0] == ((0, 1), (1, 1))
    # heal: +2 capped at max hp, one potion (3-1=2, 2-1+2=3, 3-1=2); the attacker at distance 2 with hit_far=1 lands every hit
    r = duel(parse("sel(seq(hurt,pot,heal),wait)"), parse("atk"), seed=0,
             cfg=GameConfig(size=3, hit_far=1.0, max_ticks=3), start=((0, 0), (0, 2)), record=True)
    assert [a for a, _ in r.actions] == ["wait", "heal", "wait"] and r.hp == (2, 3) and r.outcome == "loss"


def test_duel_is_deterministic_by_seed():
    prog, opp = parse("sel(seq(low,pot,heal),seq(inr,atk),adv)"), portal.opponent_tree("random")
    runs = [duel(prog, opp, seed=s, record=True) for s in (11, 11, 12)]
    assert runs[0].actions == runs[1].actions and runs[0].positions == runs[1].positions
    assert runs[0].outcome == runs[1].outcome
    assert (runs[0].actions, runs[0].positions) != (runs[2].actions, runs[2].positions)


# ---- PORTAL: task and reward ----------------------------------------------------------------------------------------

def _sample(completion: str, ex: Example, task=None) -> Sample:
    return Sample(completion=completion, example=ex, task=task)


def test_reward_on_hand_cases(caplog):
    ex = Example(prompt="BT vs rusher:", meta={"opponent": "rusher", "duel_seeds": [0, 2, 4, 6]})
    assert portal.portal_duel_reward(_sample("wait", ex)) == 0.0  # never attacks: loses every duel
    prog = "sel(seq(low,pot,heal),seq(inr,atk),adv)"
    outcomes = [duel(parse(prog), portal.opponent_tree("rusher"), s).outcome for s in [0, 2, 4, 6]]
    expected = sum(portal.SCORE[o] for o in outcomes) / 4
    assert portal.portal_duel_reward(_sample(prog + "\ntrailing text", ex)) == pytest.approx(expected)
    with caplog.at_level(logging.INFO, logger="entropo.games.portal"):
        assert portal.portal_duel_reward(_sample("sel(seq(inr,atk)", ex), invalid_value=-1.0) == -1.0
        assert portal.portal_duel_reward(_sample("import os", ex)) == 0.0
    assert "malformed program" in caplog.text and "expected ',' or ')' at the end" in caplog.text
    assert portal.portal_valid_reward(_sample(prog, ex)) == 1.0 and portal.portal_valid_reward(_sample("adv(", ex)) == 0
    # 'random' draws its actions from the duel seed: a waiting unit is never attacked on purpose, so it draws or wins
    r = evaluate_program("wait", "random", list(range(20)))
    assert r["valid"] and r["losses"] + r["draws"] + r["wins"] == 20
    with pytest.raises(ValueError, match="opponent"):
        portal.portal_duel_reward(_sample(prog, Example(prompt="x")))


def test_task_splits_determinism_and_win_rate_verifier():
    task = portal.portal_duel_task(seed=3, eval_size=10, duels=3)
    again = portal.portal_duel_task(seed=3, eval_size=10, duels=3)
    ex = task.train_example(7)
    assert ex.prompt == again.train_example(7).prompt and ex.meta == again.train_example(7).meta
    assert ex.target == again.train_example(7).target and parse(ex.target) is not None  # seeded valid program
    assert len(ex.meta["duel_seeds"]) == 3 and all(s % 2 == 0 for s in ex.meta["duel_seeds"])
    evals = task.eval_examples()
    assert [e.meta["opponent"] for e in evals[:5]] == list(portal.OPPONENTS)
    assert all(len(e.meta["duel_seeds"]) == 1 and e.meta["duel_seeds"][0] % 2 == 1 for e in evals)  # held out: odd
    train_seeds = {s for i in range(200) for s in task.train_example(i).meta["duel_seeds"]}
    assert not train_seeds & {e.meta["duel_seeds"][0] for e in evals}
    e0 = evals[0]
    won = duel(parse("sel(seq(inr,atk),adv)"), portal.opponent_tree(e0.meta["opponent"]),
               e0.meta["duel_seeds"][0]).outcome == "win"
    assert task.correct("sel(seq(inr,atk),adv)", e0) == won and task.correct("sel(", e0) is False
    assert "Grammar" in portal.portal_duel_task(seed=0, eval_size=2, describe=True).eval_examples()[0].prompt
    chat = portal.portal_duel_task(seed=0, eval_size=2, chat=True).eval_examples()[0].prompt
    assert chat == [{"role": "user", "content": "BT vs rusher:"}]
    assert portal.extract_program("```\nsel(seq(inr,atk),adv)\n```\nThis tree attacks.") == "sel(seq(inr,atk),adv)"
    with pytest.raises(ValueError, match="placeholder"):
        portal.portal_duel_task(seed=0, eval_size=2, template="vs {enemy}")
    with pytest.raises(TypeError, match="allowed parameters"):
        portal.portal_duel_task(seed=0, eval_size=2, oponents=["rusher"])
    with pytest.raises(ValueError, match="unknown opponent"):
        portal.portal_duel_task(seed=0, eval_size=2, opponents=["ninja"])


def test_portal_recipe_loads():
    from entropo.api import load_recipe

    recipe = load_recipe(RECIPES / "portal_duel.yaml", [])
    assert recipe.task.name == "portal_duel" and recipe.warmup.steps > 0
    assert [r.name for r in recipe.rewards] == ["portal_duel", "portal_valid"]


# ---- Steering the Herd ----------------------------------------------------------------------------------------------

def test_bayesian_update_by_hand():
    assert float(herd.bayes_update(0.5, 0.8, 1)) == pytest.approx(0.8)
    assert float(herd.bayes_update(0.5, 0.8, 0)) == pytest.approx(0.2)
    # pi = 0.6, q = 0.7: after s = 0 the posterior is 0.18 / 0.46 < 1/2, so agents follow their signal
    assert float(herd.bayes_update(0.6, 0.7, 1)) == pytest.approx(0.42 / 0.54)
    assert float(herd.bayes_update(0.6, 0.7, 0)) == pytest.approx(0.18 / 0.46)
    # pi = 0.8, q = 0.7: even after s = 0 the posterior is 0.24 / 0.38 >= 1/2 -> cascade on 1, actions uninformative
    p11, p10 = herd.action_probs(0.8, 0.7)
    assert (float(p11), float(p10)) == (1.0, 1.0)
    assert float(herd.bayes_update(0.8, 0.7, 1)) == pytest.approx(0.8)
    assert float(herd.bayes_update(0.1, 0.7, 0)) == pytest.approx(0.1)  # cascade on 0


def test_two_bellman_backups_by_hand_on_a_3_point_grid():
    m = herd.HerdModel(q_min=0.5, q_max=0.9, q_levels=2, q_default=0.5, cost=0.5, discount=0.9)
    grid = np.array([0.0, 0.5, 1.0])
    V1, pol1 = herd.bellman(m, grid, np.zeros(3))
    # pi = 0 or 1: the state is known, a = theta whatever q, so the free q = 0.5: V = 1. pi = 1/2: q = 0.5 herds
    # everyone onto a = 1 (welfare 0.5); q = 0.9 gives welfare 0.9 at cost 0.5 * 0.4^2 = 0.08 -> 0.82.
    np.testing.assert_allclose(V1, [1.0, 0.82, 1.0])
    np.testing.assert_allclose(pol1, [0.5, 0.9, 0.5])
    V2, pol2 = herd.bellman(m, grid, V1)
    # pi = 1/2, q = 0.9: posteriors 0.9 / 0.1 each w.p. 1/2, V1 interpolated there = 0.82 + 0.8 * 0.18 = 0.964:
    # 0.82 + 0.9 * 0.964 = 1.6876; q = 0.5: 0.5 + 0.9 * V1(0.5) = 1.238. Ends: 1 + 0.9 * 1 = 1.9.
    np.testing.assert_allclose(V2, [1.9, 1.6876, 1.9])
    np.testing.assert_allclose(pol2, [0.5, 0.9, 0.5])


def test_altruistic_value_is_convex_on_the_learning_region():
    """Paper: V is convex in the public belief. With binary signals V jumps at the cascade boundaries
    pi = 1 - q_max, q_max (the last belief where a signal still moves an action), so convexity is checked on the
    learning region between them; there the most negative second difference shrinks as the precision grid refines
    (a discretization effect of the finite set of q)."""
    gaps = []
    for levels in (21, 81):
        m = herd.HerdModel(q_levels=levels)
        vi = herd.value_iteration(m, grid_points=101, tol=1e-7)
        gaps.append(herd.learning_region_gap(m, vi["grid"], vi["V"]))
    assert abs(gaps[1]) < abs(gaps[0])
    assert gaps[1] > -0.02  # V(1/2) ~ 9.5: under 0.2% of it


def test_welfare_comparison_obfuscation_and_modes(tmp_path):
    res = herd.herd_planner(tmp_path, seed=0, console=lambda *a: None, grid_points=101, q_levels=5,
                            episodes=1000, horizon=60)
    alt, bia = res["altruistic"], res["biased"]
    # the optimal precision policy is at least as good as every fixed precision for its planner, strictly for the
    # altruistic one
    assert all(alt["objective"] >= f["objective"] - 1e-6 for f in alt["fixed"].values())
    assert alt["objective"] > alt["fixed"][alt["best_fixed_q"]]["objective"] + 0.05
    assert all(bia["objective"] >= f["objective"] - 1e-6 for f in bia["fixed"].values())
    # mediation shifts agents' welfare both ways vs the default precision 0.7
    assert alt["welfare"] > alt["default_q"]["welfare"] > bia["welfare"]
    # Monte-Carlo play with exact beliefs agrees with the grid evaluation
    assert abs(alt["mc"]["welfare"] - alt["welfare"]) < 4 * alt["mc"]["welfare_se"] + 0.05
    # the biased planner obfuscates (q below the default) on some beliefs; the altruistic never does here
    assert bia["obfuscation_frac"] > 0 and alt["obfuscation_frac"] == 0
    assert "max" in {m["mode"] for m in alt["modes"]} and (tmp_path / "herd.json").exists()
    assert (tmp_path / "metrics.jsonl").exists()


def test_herd_recipe_and_bad_params():
    from entropo.programs import load_program, resolve

    recipe = load_program(RECIPES / "herd_planner.yaml")
    assert resolve(recipe) is herd.herd_planner
    with pytest.raises(ValueError, match="q_max"):
        herd.HerdModel(q_max=1.0)
    with pytest.raises(ValueError, match="planner"):
        herd.HerdModel(planner="evil")


def test_policy_modes_by_hand():
    m = herd.HerdModel(q_min=0.5, q_max=0.9, q_default=0.7)
    modes = herd.policy_modes(np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), np.array([0.7, 0.9, 0.9, 0.6, 0.8, 0.5]), m)
    assert [(d["mode"], d["from"], d["to"]) for d in modes] == [
        ("default", 0.0, 0.0), ("max", 0.2, 0.4), ("increasing", 0.6, 0.6), ("decreasing", 0.8, 0.8),
        ("min", 1.0, 1.0)]


def test_tie_rule_is_robust_to_rounding():
    """pi = 0.7 reached by Bayes' rule (0.35 / 0.5 in floating point) and the literal 0.7 herd alike at q = 0.7 (an
    agent with s = 0 is exactly indifferent and plays 1)."""
    reached = float(herd.bayes_update(0.5, 0.7, 1))
    for pi in (0.7, reached, np.nextafter(0.7, 0.0)):
        p11, p10 = herd.action_probs(pi, 0.7)
        assert (float(p11), float(p10)) == (1.0, 1.0)
