"""Conformal Information Pursuit (C-IP): choose the next question that minimizes an upper bound on the label's
conditional entropy computed from the sizes of split-conformal prediction sets, instead of from the predictor's own
(mis-calibrated) probabilities. Inference-time only: nothing is trained.

Paper: "Conformal Information Pursuit for Interactively Guiding Large Language Models", Chan, Ge, Dobriban, Hassani,
Vidal, NeurIPS 2025. Played here on ``entropo.envs.twenty_questions`` with a tabular predictor.

Checked against the official code (ryanchankh/Conformal-IP, ``src/20q/20q_conformal_closed_binary.py`` and
``src/20q/20q_conformal_thresholds_closed_binary.py``):

- thresholds, one per history length k: calibration histories are k queries drawn uniformly without replacement for a
  label drawn uniformly; score s = -p(y_true | h_k); q_hat_k = ``np.quantile(s, 1 - alpha, method="higher")``, i.e.
  WITHOUT the finite-sample (n+1) correction (``conformal_quantile(..., finite_sample=True)`` adds it as an option);
- prediction set C(h) = {y : p(y | h) >= -q_hat_k};
- query score: n labels y_i drawn uniformly over the classes (the same draws for every candidate query), an answer
  simulated for each (y_i, q) from the answer model, C_i the set for h + (q, ans_i) at length len(h) + 1, then
  U(q) = H_b(alpha) + (1 - alpha_n) * mean_{i: y_i in C_i} log2|C_i| + alpha * mean_{i: y_i not in C_i} log2(K - |C_i|),
  alpha_n = alpha - 1/(n + 1); an empty group contributes 0. The means are over each group, not weighted by its size
  (as in the official ``compute_upper_bound_formula``);
- the entropy-IP baseline is the mean plug-in entropy of the same simulated posteriors (probabilities clamped at 1e-5,
  as the official ``compute_entropy_formula``); the prediction is the posterior's argmax;
- official defaults: alpha = 0.01, n = 64, 20 iterations, 20 AwA2 classes.

Reduced here: the predictor is a naive-Bayes posterior over a generated attribute table, tempered (temperature < 1
makes it over-confident, as the paper's LLM predictors are), and answers are simulated from the predictor's estimated
table (the official code draws them from the dataset's per-class answer lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from entropo.envs.twenty_questions import AttributeTable, Game
from entropo.registry import register

METHODS = ("cip", "entropy", "random")


# ---- conformal pieces --------------------------------------------------------------------------------------------

def binary_entropy(alpha: float) -> float:
    """H_b(alpha) in bits."""
    if alpha <= 0.0 or alpha >= 1.0:
        return 0.0
    return float(-alpha * np.log2(alpha) - (1 - alpha) * np.log2(1 - alpha))


def conformal_quantile(scores: Sequence[float], alpha: float, finite_sample: bool = False) -> float:
    """The (1 - alpha) empirical quantile of ``scores`` with numpy's "higher" method (the official rule). With
    ``finite_sample`` the level is ceil((n + 1)(1 - alpha)) / n (capped at 1), the textbook split-conformal level."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r}: use a miscoverage level in (0, 1)")
    s = np.asarray(scores, dtype=float)
    if s.size == 0:
        raise ValueError("conformal_quantile: no calibration scores")
    level = 1.0 - alpha
    if finite_sample:
        level = min(1.0, np.ceil((s.size + 1) * level) / s.size)
    return float(np.quantile(s, level, method="higher"))


def prediction_sets(probs: np.ndarray, qhat: float) -> np.ndarray:
    """Boolean [M, K]: y is in the set when p(y | h) >= -q_hat."""
    return np.asarray(probs) >= -qhat


def upper_bound(set_sizes: np.ndarray, covered: np.ndarray, num_classes: int, alpha: float) -> float:
    """C-IP's entropy upper bound U from the sampled sets' sizes and whether each sample's label was in its set."""
    sizes = np.asarray(set_sizes, dtype=float)
    cov = np.asarray(covered, dtype=bool)
    n = sizes.size
    alpha_n = alpha - 1.0 / (n + 1)
    inc = (1 - alpha_n) * np.log2(sizes[cov]).mean() if cov.any() else 0.0
    exc = alpha * np.log2(num_classes - sizes[~cov]).mean() if (~cov).any() else 0.0
    return float(binary_entropy(alpha) + inc + exc)


def plugin_entropy(probs: np.ndarray) -> np.ndarray:
    """Per-row entropy in bits of a posterior (clamped at 1e-5 like the official code)."""
    p = np.clip(np.asarray(probs, dtype=float), 1e-5, None)
    return -(p * np.log2(p)).sum(-1)


# ---- the predictor -----------------------------------------------------------------------------------------------

@dataclass
class NaiveBayesPredictor:
    """p(y | h) ∝ (prior(y) · prod_{(a, ans) in h} p_hat(ans | y, a)) ** (1 / temperature).

    ``p_yes`` is the estimated table (fitted on training games); temperature < 1 sharpens the posterior
    (over-confident), 1 is the plain naive-Bayes posterior (calibrated when the table is right, as answers here are
    conditionally independent given the class)."""

    p_yes: np.ndarray
    temperature: float = 1.0
    prior: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature!r}: use a positive temperature")
        k = self.p_yes.shape[0]
        self.prior = np.full(k, 1.0 / k) if self.prior is None else np.asarray(self.prior, dtype=float)
        self._log_yes, self._log_no = np.log(self.p_yes), np.log1p(-self.p_yes)

    @classmethod
    def fit(cls, games: Sequence[Game], num_classes: int, num_attributes: int, temperature: float = 1.0,
            smoothing: float = 1.0) -> NaiveBayesPredictor:
        """Laplace-smoothed per-class answer frequencies and the class frequencies of ``games``."""
        yes = np.full((num_classes, num_attributes), smoothing)
        total = np.full((num_classes, 1), 2 * smoothing)
        counts = np.full(num_classes, smoothing)
        for g in games:
            yes[g.label] += g.answers
            total[g.label] += 1
            counts[g.label] += 1
        return cls(yes / total, temperature, counts / counts.sum())

    @property
    def num_classes(self) -> int:
        return self.p_yes.shape[0]

    def posterior(self, asked: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """[M, K] posteriors for M histories of equal length k (``asked``/``answers``: int arrays [M, k])."""
        asked = np.asarray(asked, dtype=int).reshape(len(asked), -1)
        answers = np.asarray(answers, dtype=int).reshape(asked.shape)
        ll = np.where(answers[:, None, :] == 1, self._log_yes[:, asked].transpose(1, 0, 2),
                      self._log_no[:, asked].transpose(1, 0, 2)).sum(-1)  # [M, K]
        logits = (np.log(self.prior)[None, :] + ll) / self.temperature
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(-1, keepdims=True)

    def simulate_answers(self, labels: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[len(labels), len(queries)] answers drawn from the estimated table."""
        return (rng.random((len(labels), len(queries))) < self.p_yes[np.ix_(labels, queries)]).astype(int)


# ---- calibration ---------------------------------------------------------------------------------------------------

def calibrate(predictor: NaiveBayesPredictor, cal_games: Sequence[Game], alpha: float, max_len: int, seed: int = 0,
              finite_sample: bool = False) -> np.ndarray:
    """q_hat_k for k = 0..max_len: per length, k queries drawn uniformly without replacement per calibration game
    (the official rule), scores -p(y_true | h_k), their (1 - alpha) "higher" quantile."""
    rng = np.random.default_rng([seed, 61])
    labels = np.array([g.label for g in cal_games])
    ans = np.array([g.answers for g in cal_games])
    num_attr = ans.shape[1]
    if max_len > num_attr:
        raise ValueError(f"max_len={max_len} exceeds the {num_attr} questions of the bank")
    qhats = np.empty(max_len + 1)
    for k in range(max_len + 1):
        asked = np.array([rng.permutation(num_attr)[:k] for _ in cal_games], dtype=int).reshape(len(cal_games), k)
        post = predictor.posterior(asked, np.take_along_axis(ans, asked, 1))
        qhats[k] = conformal_quantile(-post[np.arange(len(labels)), labels], alpha, finite_sample)
    return qhats


# ---- query selection -----------------------------------------------------------------------------------------------

@dataclass
class QueryScores:
    """Per candidate query: C-IP's bound and the plug-in entropy over the same simulated answers."""

    candidates: np.ndarray
    bound: np.ndarray
    entropy: np.ndarray


def score_queries(predictor: NaiveBayesPredictor, asked: Sequence[int], answers: Sequence[int], qhat_next: float,
                  alpha: float, n_samples: int, rng: np.random.Generator, num_attributes: int) -> QueryScores:
    """U(q) and the mean plug-in entropy for every not-yet-asked query ``q`` (``qhat_next``: q_hat at len(h) + 1)."""
    k = predictor.num_classes
    candidates = np.array([q for q in range(num_attributes) if q not in set(asked)], dtype=int)
    labels = rng.integers(0, k, size=n_samples)  # the same label draws for every candidate (official)
    sim = predictor.simulate_answers(labels, candidates, rng)  # [n, C]
    c = len(candidates)
    hist_q = np.concatenate([np.tile(np.asarray(asked, dtype=int), (c * n_samples, 1)),
                             np.repeat(candidates, n_samples)[:, None]], 1)
    hist_a = np.concatenate([np.tile(np.asarray(answers, dtype=int), (c * n_samples, 1)), sim.T.reshape(-1, 1)], 1)
    post = predictor.posterior(hist_q, hist_a).reshape(c, n_samples, k)
    sets = prediction_sets(post, qhat_next)
    sizes = sets.sum(-1)
    covered = sets[:, np.arange(n_samples), labels]
    bound = np.array([upper_bound(sizes[j], covered[j], k, alpha) for j in range(c)])
    return QueryScores(candidates, bound, plugin_entropy(post).mean(-1))


@dataclass
class GameRecord:
    """One played game: the questions asked and, after 0..N questions, the prediction, set size and coverage."""

    game_id: str
    label: int
    asked: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    set_sizes: list[int] = field(default_factory=list)
    covered: list[bool] = field(default_factory=list)


def play(game: Game, method: str, predictor: NaiveBayesPredictor, qhats: np.ndarray, num_queries: int,
         alpha: float = 0.01, n_samples: int = 64, seed: int = 0) -> GameRecord:
    """Play one game with ``method`` (cip / entropy / random) for ``num_queries`` questions; seeded per game."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
    if len(qhats) < num_queries + 1:
        raise ValueError(f"qhats has {len(qhats)} thresholds; calibrate with max_len >= num_queries={num_queries}")
    num_attr = len(game.answers)
    rng = np.random.default_rng([seed, 62, int(game.game_id.rsplit("-", 1)[-1]), METHODS.index(method)])
    rec = GameRecord(game.game_id, game.label)
    answers: list[int] = []
    for k in range(num_queries + 1):
        post = predictor.posterior(np.array([rec.asked], dtype=int), np.array([answers], dtype=int))[0]
        in_set = prediction_sets(post, qhats[k])
        rec.predictions.append(int(post.argmax()))
        rec.set_sizes.append(int(in_set.sum()))
        rec.covered.append(bool(in_set[game.label]))
        if k == num_queries or len(rec.asked) == num_attr:
            break
        if method == "random":
            q = int(rng.choice([a for a in range(num_attr) if a not in rec.asked]))
        else:
            s = score_queries(predictor, rec.asked, answers, qhats[k + 1], alpha, n_samples, rng, num_attr)
            q = int(s.candidates[np.argmin(s.bound if method == "cip" else s.entropy)])
        rec.asked.append(q)
        answers.append(game.answers[q])
    return rec


def evaluate(games: Sequence[Game], method: str, predictor: NaiveBayesPredictor, qhats: np.ndarray, num_queries: int,
             alpha: float = 0.01, n_samples: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Per number of questions 0..N: accuracy of the argmax, mean set size and coverage of the conformal set."""
    recs = [play(g, method, predictor, qhats, num_queries, alpha, n_samples, seed) for g in games]
    preds = np.array([r.predictions for r in recs])
    labels = np.array([r.label for r in recs])[:, None]
    return {"accuracy": (preds == labels).mean(0), "set_size": np.array([r.set_sizes for r in recs]).mean(0),
            "coverage": np.array([r.covered for r in recs]).mean(0)}


def random_history_coverage(predictor: NaiveBayesPredictor, games: Sequence[Game], qhats: np.ndarray,
                            seed: int = 0) -> np.ndarray:
    """Coverage per length k of the sets on held-out games whose k questions are drawn as in calibration (uniform
    without replacement): the distribution the conformal guarantee is about."""
    rng = np.random.default_rng([seed, 63])
    ans = np.array([g.answers for g in games])
    labels = np.array([g.label for g in games])
    out = []
    for k, q in enumerate(qhats):
        asked = np.array([rng.permutation(ans.shape[1])[:k] for _ in games], dtype=int).reshape(len(games), k)
        post = predictor.posterior(asked, np.take_along_axis(ans, asked, 1))
        out.append(prediction_sets(post, q)[np.arange(len(games)), labels].mean())
    return np.array(out)


@dataclass
class CIPSetup:
    """A world, its predictor and its thresholds: what ``setup`` builds for one seed."""

    table: AttributeTable
    predictor: NaiveBayesPredictor
    qhats: np.ndarray
    test_games: list[Game]
    alpha: float


def setup(table: AttributeTable, seed: int = 0, alpha: float = 0.01, temperature: float = 0.5, num_queries: int = 10,
          n_train: int = 2000, n_cal: int = 500, n_test: int = 300, finite_sample: bool = False) -> CIPSetup:
    """Fit the predictor on train games, calibrate q_hat_0..q_hat_N on calibration games, draw the test games."""
    from entropo.envs.twenty_questions import games as draw_games

    pred = NaiveBayesPredictor.fit(draw_games(table, "train", n_train, seed), table.num_classes,
                                   table.num_attributes, temperature)
    qhats = calibrate(pred, draw_games(table, "calibration", n_cal, seed), alpha, num_queries, seed, finite_sample)
    return CIPSetup(table, pred, qhats, draw_games(table, "test", n_test, seed), alpha)


# ---- the program recipe (entropo run cip_20q) ----------------------------------------------------------------------

def plot_accuracy(curves: dict[str, Sequence[float]], path, title: str = "", spread: dict | None = None):
    """Accuracy vs number of questions, one line per method (± spread band when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m, acc in curves.items():
        x = np.arange(len(acc))
        ax.plot(x, acc, marker="o", ms=3, label=m)
        if spread and m in spread:
            ax.fill_between(x, np.asarray(acc) - spread[m], np.asarray(acc) + spread[m], alpha=0.2)
    ax.set_xlabel("questions asked")
    ax.set_ylabel("accuracy of the argmax prediction")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@register("program", "conformal_ip", paper="Conformal Information Pursuit, NeurIPS 2025 (Chan et al.)")
def cip_program(out_dir, seed: int, console, num_classes: int = 12, num_attributes: int = 16, alpha: float = 0.1,
                temperature: float = 0.5, num_queries: int = 8, n_samples: int = 64, n_train: int = 2000,
                n_cal: int = 500, n_test: int = 300, methods: Sequence[str] = METHODS, finite_sample: bool = False,
                noise_low: float = 0.02, noise_high: float = 0.2, ambiguous: float = 0.15) -> dict:
    """Play the held-out games of one seeded world with each method; accuracy / set size / coverage after 0..N
    questions, the coverage of sets on calibration-like (random-question) held-out histories, a plot."""
    from pathlib import Path

    from entropo.envs.twenty_questions import make_table

    for m in methods:
        if m not in METHODS:
            raise ValueError(f"params.methods: {m!r} is unknown; use any of {', '.join(METHODS)}")
    table = make_table(num_classes, num_attributes, seed, noise_low, noise_high, ambiguous)
    s = setup(table, seed, alpha, temperature, num_queries, n_train, n_cal, n_test, finite_sample)
    out: dict = {"qhats": s.qhats.tolist(),
                 "random_history_coverage": random_history_coverage(s.predictor, s.test_games, s.qhats, seed).tolist()}
    out["random_history_coverage_mean"] = float(np.mean(out["random_history_coverage"][1:]))
    for m in methods:
        r = evaluate(s.test_games, m, s.predictor, s.qhats, num_queries, alpha, n_samples, seed)
        for key, v in r.items():
            out.setdefault(key, {})[m] = v.tolist()
        out[f"{m}/accuracy_auc"] = float(r["accuracy"][1:].mean())  # mean accuracy over 1..N questions
        out[f"{m}/accuracy_final"] = float(r["accuracy"][-1])
        out[f"{m}/coverage_final"] = float(r["coverage"][-1])
        out[f"{m}/set_size_final"] = float(r["set_size"][-1])
        console(f"  {m}: accuracy after 0..{num_queries} questions "
                + " ".join(f"{a:.2f}" for a in r["accuracy"]))
    plot_accuracy(out["accuracy"], Path(out_dir) / "accuracy_vs_queries.png",
                  f"20Q, K={num_classes}, A={num_attributes}, alpha={alpha}, T={temperature}, seed {seed}")
    return out
