"""C-IP (Conformal Information Pursuit, NeurIPS 2025) on the twenty_questions environment, and AlphaOPT (arXiv
2510.18428) on lp_word_problems: hand values of the bound and the quantile rule, coverage, query choice on a toy,
the environment's protocol, LP solutions against hand-solved toys, the library's verification gate, retrieval,
evolution, serialization and determinism."""

import json
import math

import numpy as np
import pytest

from entropo import registry
from entropo.algorithms import alphaopt as A
from entropo.algorithms import conformal_ip as C
from entropo.envs.twenty_questions import Game, TwentyQuestions, games, make_table, twenty_questions_task
from entropo.tasks.lp_word_problems import (LP, Clause, Constraint, Problem, answer_of, correct_lp, lp_word_problems,
                                            make_problem, parse_lp, problems, solve)
from entropo.types import Example

# ---- C-IP: formulas ---------------------------------------------------------------------------------------------


def test_upper_bound_hand_values():
    # H_b(0.1) = -0.1 log2 0.1 - 0.9 log2 0.9
    assert C.binary_entropy(0.1) == pytest.approx(0.4689955935892812)
    # n = 4, alpha_n = 0.1 - 1/5 = -0.1; covered sizes 1, 2, 2 -> mean log2 = 2/3; uncovered size 3 -> log2(4 - 3) = 0
    u = C.upper_bound(np.array([1, 2, 3, 2]), np.array([True, True, False, True]), num_classes=4, alpha=0.1)
    assert u == pytest.approx(0.4689955935892812 + 1.1 * 2 / 3)
    # n = 2, alpha = 0.2: covered size 1 -> 0; uncovered size 2 -> 0.2 * log2(4 - 2) = 0.2
    u = C.upper_bound(np.array([2, 1]), np.array([False, True]), num_classes=4, alpha=0.2)
    assert u == pytest.approx(0.7219280948873623 + 0.2)
    # an empty group contributes 0: all covered with sizes 4 -> (1 - (0.1 - 1/3)) * 2
    u = C.upper_bound(np.array([4, 4]), np.array([True, True]), num_classes=8, alpha=0.1)
    assert u == pytest.approx(0.4689955935892812 + (1 - (0.1 - 1 / 3)) * 2)


def test_quantile_rule_higher_and_finite_sample():
    scores = np.arange(20) / 20  # 0, 0.05, ..., 0.95
    # level 0.9: position 0.9 * 19 = 17.1 -> "higher" takes index 18
    assert C.conformal_quantile(scores, 0.1) == pytest.approx(0.90)
    # finite-sample level ceil(21 * 0.9) / 20 = 0.95: position 18.05 -> index 19
    assert C.conformal_quantile(scores, 0.1, finite_sample=True) == pytest.approx(0.95)
    assert C.conformal_quantile(scores[::-1], 0.1) == pytest.approx(0.90)  # order does not matter
    with pytest.raises(ValueError, match="alpha"):
        C.conformal_quantile(scores, 1.5)


def test_prediction_sets_and_tempered_posterior():
    assert C.prediction_sets(np.array([[0.5, 0.3, 0.2]]), -0.25).tolist() == [[True, True, False]]
    pred = C.NaiveBayesPredictor(np.array([[0.9, 0.2], [0.1, 0.8]]), temperature=1.0)
    assert pred.posterior(np.array([[0]]), np.array([[1]]))[0] == pytest.approx([0.9, 0.1])
    sharp = C.NaiveBayesPredictor(np.array([[0.9, 0.2], [0.1, 0.8]]), temperature=0.5)
    assert sharp.posterior(np.array([[0]]), np.array([[1]]))[0] == pytest.approx([0.81 / 0.82, 0.01 / 0.82])
    # two answers: 0.9 * 0.8 vs 0.1 * 0.2 (answer "no" to attribute 1)
    p = pred.posterior(np.array([[0, 1]]), np.array([[1, 0]]))[0]
    assert p == pytest.approx([0.72 / 0.74, 0.02 / 0.74])


def test_informative_question_is_asked_first():
    """Attribute 2 splits the classes cleanly, the others are coin flips: C-IP and entropy-IP both ask it first."""
    p = np.full((4, 4), 0.5)
    p[:, 2] = [0.99, 0.01, 0.99, 0.01]
    pred = C.NaiveBayesPredictor(p, temperature=1.0)
    game = Game("test-0", 1, (0, 1, 0, 1))
    qhats = np.full(3, -0.2)
    for method in ("cip", "entropy"):
        rec = C.play(game, method, pred, qhats, num_queries=1, alpha=0.1, n_samples=64, seed=0)
        assert rec.asked == [2], method


def test_coverage_on_held_out_games():
    """Split-conformal sets cover the label on held-out games (random-question histories, the calibration
    distribution) with probability >= 1 - alpha, up to sampling error."""
    table = make_table(8, 12, seed=3)
    s = C.setup(table, seed=3, alpha=0.1, temperature=0.5, num_queries=6, n_train=800, n_cal=600, n_test=600)
    cov = C.random_history_coverage(s.predictor, s.test_games, s.qhats, seed=3)
    sd = math.sqrt(0.1 * 0.9 / 600)
    assert cov.min() >= 0.9 - 4 * sd
    assert cov.mean() >= 0.9 - 2 * sd


def test_play_is_deterministic_by_seed():
    table = make_table(8, 12, seed=1)
    s = C.setup(table, seed=1, alpha=0.1, num_queries=4, n_train=300, n_cal=200, n_test=5)
    for m in C.METHODS:
        a = [C.play(g, m, s.predictor, s.qhats, 4, 0.1, 32, seed=7) for g in s.test_games]
        b = [C.play(g, m, s.predictor, s.qhats, 4, 0.1, 32, seed=7) for g in s.test_games]
        assert [r.asked for r in a] == [r.asked for r in b] and [r.predictions for r in a] == [r.predictions for r in b]
    assert len(set(a[0].asked)) == 4  # never asks twice
    with pytest.raises(ValueError, match="method"):
        C.play(s.test_games[0], "greedy", s.predictor, s.qhats, 4)


# ---- the twenty_questions environment ------------------------------------------------------------------------------


def test_env_reset_is_deterministic_and_answers_follow_the_game():
    env = TwentyQuestions(num_classes=8, num_attributes=12, max_questions=2)
    ex = Example(prompt="")
    env.reset(ex, seed=5)
    g1 = env.game
    env2 = TwentyQuestions(num_classes=8, num_attributes=12, max_questions=2)
    prompt = env2.reset(ex, seed=5)
    assert env2.game == g1 and "ASK" in prompt and "giraffe" not in prompt  # 8 classes: antelope..falcon
    r = env2.step("ASK 3")
    assert r.observation == ("Yes" if g1.answers[3] else "No") and not r.done and r.tool_call
    bad = env2.step("what is it?")
    assert "ASK <question number>" in bad.observation and not bad.done
    assert "no question 40" in env2.step("ASK 40").observation
    assert "Unknown animal" in env2.step("GUESS unicorn").observation
    env2.step("ASK 1")
    over = env2.step("ASK 2")
    assert over.done and over.correct is False
    env3 = TwentyQuestions(num_classes=8, num_attributes=12)
    env3.reset(ex, seed=5)
    win = env3.step(f"GUESS {env3.table.class_names[g1.label]}")
    assert win.done and win.correct and win.reward == 1.0


def test_env_plays_example_game_and_rejects_misfit():
    table = make_table(8, 12, seed=0)
    g = games(table, "test", 1)[0]
    env = TwentyQuestions(num_classes=8, num_attributes=12)
    env.reset(Example(prompt="p", meta={"game": {"game_id": g.game_id, "label": g.label, "answers": list(g.answers)}}),
              seed=0)
    assert env.game == g
    with pytest.raises(ValueError, match="does not fit"):
        env.reset(Example(prompt="p", meta={"game": {"game_id": "x", "label": 0, "answers": [1, 0]}}), seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        make_table(num_classes=50)
    assert registry.get("environment", "twenty_questions") is TwentyQuestions


def test_splits_are_disjoint_and_task_holds_out_test_games():
    table = make_table(8, 12, seed=0)
    tr, te = games(table, "train", 200), games(table, "test", 200)
    assert {g.game_id for g in tr}.isdisjoint({g.game_id for g in te})
    assert [g.answers for g in tr[:20]] != [g.answers for g in te[:20]]  # separate seed streams
    task = twenty_questions_task(seed=0, eval_size=10, num_classes=8, num_attributes=12, train_size=50)
    train_ids = {task.train_example(i).meta["game"]["game_id"] for i in range(task.train_size())}
    eval_ex = task.eval_examples()
    assert all(i.startswith("train-") for i in train_ids)
    assert all(e.meta["game"]["game_id"].startswith("test-") for e in eval_ex)
    assert task.correct(f"ASK 1\nGUESS {eval_ex[0].answer}", eval_ex[0])
    assert not task.correct("GUESS nothing", eval_ex[0])


# ---- AlphaOPT: LP toys -----------------------------------------------------------------------------------------


def test_lp_solutions_against_hand_solved_toys():
    # max 3x + 2y, x + y <= 4, x + 3y <= 6 -> x = 4, y = 0: 12
    lp = LP("max", {"x": 3, "y": 2}, [Constraint({"x": 1, "y": 1}, "<=", 4), Constraint({"x": 1, "y": 3}, "<=", 6)])
    assert solve(lp).objective == pytest.approx(12)
    # min x + y, x + 2y >= 4, 3x + y >= 6 -> x = 1.6, y = 1.2: 2.8
    lp = LP("min", {"x": 1, "y": 1}, [Constraint({"x": 1, "y": 2}, ">=", 4), Constraint({"x": 3, "y": 1}, ">=", 6)])
    assert solve(lp).objective == pytest.approx(2.8)
    # max x + y, 2x + 2y <= 5: 2.5 continuous, 2 integer
    lp = LP("max", {"x": 1, "y": 1}, [Constraint({"x": 2, "y": 2}, "<=", 5)])
    assert solve(lp).objective == pytest.approx(2.5)
    lp.integer = {"x", "y"}
    assert solve(lp).objective == pytest.approx(2.0)
    # min x with x >= -3: 0 when x is non-negative (default), -3 when free; unbounded without the bound
    lp = LP("min", {"x": 1}, [Constraint({"x": 1}, ">=", -3)])
    assert solve(lp).objective == pytest.approx(0)
    lp.free = {"x"}
    assert solve(lp).objective == pytest.approx(-3)
    assert solve(LP("min", {"x": 1}, [], free={"x"})).status == "unbounded"
    assert solve(LP("max", {"x": 1}, [Constraint({"x": 1}, "<=", 1), Constraint({"x": 1}, ">=", 2)])).status \
        == "infeasible"
    assert solve(LP("max", {"x": 1}, [Constraint({"x": 1}, "<", 1)])).status == "error"


def test_parse_lp_text():
    text = "Here is the model:\nmaximize: 3x + 2 y\nsubject to:\nx + y <= 4\nx + 3*y <= 6\ninteger: x\n"
    lp = parse_lp(text)
    assert lp.sense == "max" and lp.objective == {"x": 3, "y": 2} and lp.integer == {"x"}
    assert answer_of(text) == pytest.approx(12)
    assert answer_of("minimize: x - y\ny <= 2\nx >= 1") == pytest.approx(-1)
    with pytest.raises(ValueError, match="maximize"):
        parse_lp("no model here")
    with pytest.raises(ValueError, match="linear expression"):
        parse_lp("maximize: 3 x + 2 y   (or minimize: 4)")
    assert answer_of("maximize: 3 x + 2 y   (or minimize: 4)") is None


def test_generated_problems_are_deterministic_and_split_by_variant():
    a, b = problems("train", 2, seed=3), problems("train", 2, seed=3)
    assert [p.text for p in a] == [p.text for p in b] and [p.answer for p in a] == [p.answer for p in b]
    for p in a:
        assert solve(correct_lp(p)).objective == pytest.approx(p.answer)
        assert p.variant in (0, 1)
    assert all(p.variant == 2 for p in problems("heldout", 1, seed=3))
    task = lp_word_problems(seed=0, eval_size=4, train_per_template=1)
    train_pids = {task.train_example(i).meta["pid"] for i in range(task.train_size())}
    eval_ex = task.eval_examples()
    assert train_pids.isdisjoint({e.meta["pid"] for e in eval_ex}) and {e.meta["variant"] for e in eval_ex} == {2}
    p = make_problem("production", 2, 0, seed=0)
    lp = correct_lp(p)
    text = "maximize: " + " + ".join(f"{c} {v}" for v, c in lp.objective.items()) + "\n" + "\n".join(
        " + ".join(f"{a} {v}" for v, a in c.coeffs.items()) + f" {c.op} {c.rhs}" for c in lp.constraints)
    text += ("\ninteger: " + ", ".join(lp.integer)) if lp.integer else ""
    ex = next(e for e in [task.example(p)])
    assert task.correct(text, ex) and not task.correct("maximize: x", ex)
    with pytest.raises(ValueError, match="template"):
        make_problem("poetry", 0, 0)


# ---- AlphaOPT: library ---------------------------------------------------------------------------------------------


def toy_problem(pid="toy-1", extra_text=""):
    """max 3x + 2y s.t. x + y <= 4 and 'a minimum of 1' y: x = 3, y = 1 -> 11. Read as y <= 1 it gives 12."""
    clauses = [Clause("objective", f"Maximize profit 3 per x and 2 per y.{extra_text}",
                      {"sense": "max", "coeffs": {"x": 3.0, "y": 2.0}}),
               Clause("limit", "At most 4 units in total.", {"coeffs": {"x": 1.0, "y": 1.0}, "op": "<=", "rhs": 4.0}),
               Clause("minimum", "We need a minimum of 1 y.", {"coeffs": {"y": 1.0}, "op": ">=", "rhs": 1.0,
                                                              "phrase": "a minimum of"})]
    p = Problem(pid, "production", 0, clauses)
    p.answer = solve(correct_lp(p)).objective
    return p


def no_slip(p, ins):
    return A.scripted_programmer(p, ins, slip_rate=0.0)


def test_insight_kept_only_when_resolve_succeeds():
    p = toy_problem(extra_text=" The combined budget is generous.")
    assert p.answer == pytest.approx(11)
    assert not A.attempt(p, no_slip, [])  # reads "a minimum of" as a cap: 12
    lib = A.ExperienceLibrary()
    kept, rejected = A.learn_from_failure(p, lib, no_slip, A.scripted_extractor)
    # proposals: min_phrase_sense ("a minimum of") and combined_cap ("combined"); the re-solve needs only the first
    assert [i.fix for i in kept] == ["min_phrase_sense"] and rejected == 1
    assert [i.insight_id for i in lib.insights] == [1] and A.attempt(p, no_slip, lib.retrieve(p.text))

    def hopeless(problem, ins):  # a programmer no insight can help
        return LP("max", {"x": 1.0}, [Constraint({"x": 1.0}, "<=", 0.0)])

    lib2 = A.ExperienceLibrary()
    kept, rejected = A.learn_from_failure(p, lib2, hopeless, A.scripted_extractor)
    assert kept == [] and rejected == 2 and len(lib2) == 0


def test_retrieval_by_taxonomy_and_condition():
    lib = A.ExperienceLibrary()
    cat = A.CATALOGUE
    lib.add(A.Insight(cat["min_phrase_sense"][1], {"domain": None, "phrases": ["a minimum of"]}, "e", "x",
                      "min_phrase_sense"))
    lib.add(A.Insight(cat["nonneg"][1], {"domain": "transport", "phrases": []}, "e", "x", "nonneg"))
    lib.add(A.Insight(cat["ratio"][1], {"domain": None, "phrases": ["a minimum of"]}, "e", "x", "ratio"))
    prod = "Maximize profit. We need a minimum of 3 chairs."
    ship = "A company ships goods; Store 1 must receive at least 3."
    assert [i.fix for i in lib.retrieve(prod)] == ["min_phrase_sense"]  # ratio: its Blending label does not match
    assert [i.fix for i in lib.retrieve(ship)] == ["nonneg"]
    assert [i.fix for i in lib.retrieve(ship + " Ship a minimum of 2.")] == ["min_phrase_sense", "nonneg"]
    assert lib.retrieve("Maximize profit with at least 3 chairs.") == []
    assert A.detect_domain("mix into a blend") == "blending" and A.detect_domain("poem") is None


def test_evolution_narrows_an_over_general_condition():
    base = [Clause("objective", "Maximize profit: 1 per x, 1 per y.", {"sense": "max", "coeffs": {"x": 1.0, "y": 1.0}}),
            Clause("limit", "2 x + 2 y <= 5 hours.", {"coeffs": {"x": 2.0, "y": 2.0}, "op": "<=", "rhs": 5.0})]
    cont = Problem("c-1", "production", 0, list(base))
    whole = Problem("w-1", "production", 0, base + [Clause("integer", "Only whole units can be sold.", {})])
    for p in (cont, whole):
        p.answer = solve(correct_lp(p)).objective
    assert (cont.answer, whole.answer) == (pytest.approx(2.5), pytest.approx(2.0))
    lib = A.ExperienceLibrary()
    ins = lib.add(A.Insight({"General Formulation": {"Variable Definition": ["x"]},
                             "Domain Modeling": {"Production Planning": ["Discrete Quantities"]}},
                            {"domain": "production", "phrases": []}, "e", "x", "integrality"))
    dist = A.insight_distribution(lib, [cont, whole], no_slip)
    assert dist[ins.insight_id] == {"positive": ["w-1"], "negative": ["c-1"], "unretrieved": []}
    # candidate {production, ["whole"]}: (1 positive retrieved + 0 + 1 negative not retrieved) / 2 = 1 > 1/2
    texts = {p.pid: p.text for p in (cont, whole)}
    assert A.condition_score(ins, {"domain": "production", "phrases": ["whole"]}, texts, dist[1]) == 1.0
    assert A.condition_score(ins, ins.condition, texts, dist[1]) == 0.5
    assert A.evolve_library(lib, [cont, whole], no_slip) == 1
    assert lib.insights[0].condition == {"domain": "production", "phrases": ["whole"]} and lib.insights[0].version == 2
    assert A.accuracy([cont, whole], no_slip, lib)[0] == 1.0


def test_library_json_round_trip_and_atomic_write(tmp_path):
    lib = A.ExperienceLibrary()
    p = toy_problem()
    A.learn_from_failure(p, lib, no_slip, A.scripted_extractor)
    path = lib.save(tmp_path / "lib" / "library.json")
    back = A.ExperienceLibrary.load(path)
    assert back.to_json() == lib.to_json() and json.loads(path.read_text())[0]["fix"] == "min_phrase_sense"
    assert [i.fix for i in back.retrieve(p.text)] == ["min_phrase_sense"]
    before = path.read_text()
    lib.insights[0].example = object()  # not JSON-serializable: the write fails, the old file stays whole
    with pytest.raises(TypeError):
        lib.save(path)
    assert path.read_text() == before and sorted(x.name for x in path.parent.iterdir()) == ["library.json"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        A.ExperienceLibrary.load(tmp_path / "bad.json")


def test_learning_is_deterministic_and_helps_on_held_out_variant():
    train, held = problems("train", 3, seed=1), problems("heldout", 2, seed=1)
    lib1, log1 = A.learn_library(train, no_slip, iterations=1)
    lib2, _ = A.learn_library(train, no_slip, iterations=1)
    assert lib1.to_json() == lib2.to_json() and log1.rows[0]["kept"] >= 1
    assert A.accuracy(held, no_slip, lib1)[0] > A.accuracy(held, no_slip)[0]


def test_programs_are_registered():
    assert registry.get("program", "conformal_ip") is C.cip_program
    assert registry.get("program", "alphaopt") is A.alphaopt_program
