"""ZO-RankSGD: zeroth-order optimization of a black box that can only be *ranked*.

Paper: "Zeroth-Order Optimization Meets Human Feedback: Provable Learning via Ranking Oracles" (ZO-RankSGD),
arXiv 2303.03751 (ICLR 2024).

At x_t draw xi_1..xi_m ~ N(0, I_d), query the (m, k)-ranking oracle on the points x_t + mu xi_i (it returns the
indices of the k best points, best first; k = m: a full ranking). Every known relation "i beats j" is a pair: ranked
vs ranked by order, and every ranked point beats every unranked one, |E| = k(k-1)/2 + k(m-k). The estimate

    g_t = (1/|E|) sum_{(i beats j)} (xi_i - xi_j) = (1/|E|) sum_i w_i xi_i,   w_i = #wins_i - #losses_i,

with w = m - 1 - 2r for the point ranked r (0-based) and w = -k for an unranked one, points toward *better* points
(ascent on preference; for a loss "better" = lower, so x_{t+1} = x_t + eta g_t descends it).

Official code (TZW1998/Taming-Stable-Diffusion-with-Human-Ranking-Feedback ``optimizer.py``, ``RankSGD``), checked:
it weights ranked points by m - 2r (one more than the exact pair count m - 1 - 2r; the extra term is
(1/|E|) sum_ranked (x_i - x), zero-mean, so the estimate stays unbiased up to noise) and unranked points by -k,
divides by |E|, and multiplies the perturbations mu xi (it uses x_i - x). We count pairs exactly (weights sum to
0) and keep the unit-scale xi (mu only sets where the points are queried). Its demo alternates a gradient-estimate
round (directions averaged over consecutive estimate rounds while no move happens) with a ranked line search over
x + eta 0.5^j d (j = 0..m-3), the estimate round's best point and x itself; it moves to the winner unless x wins.
``ZORankSGD(line_search=True)`` implements that schedule; ``line_search=False`` is plain ZO-RankSGD,
x_{t+1} = x_t + eta_t g_t with eta_t = eta / sqrt(1 + t / decay_steps) when ``decay_steps`` > 0.

Programs: ``zo_ranksgd`` (``entropo run zo_ranksgd``): the toy (d = 10 quadratic or Rosenbrock, full ranking) against
random search at equal oracle queries, and, with ``lm: true``, the tiny model's output logit bias (a LoRA-free
vector of vocabulary size) optimised from rankings of sampled completions by the task's reward functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from entropo.registry import register

PAPER = "Zeroth-Order Optimization Meets Human Feedback: Provable Learning via Ranking Oracles (ZO-RankSGD), arXiv 2303.03751"

RankOracle = Callable[[np.ndarray], Sequence[int]]  # points [m, d] -> indices of the k best, best first


def pair_count(m: int, k: int) -> int:
    """|E| = k(k-1)/2 + k(m-k): the 'i beats j' pairs a top-k ranking of m points reveals."""
    return k * (k - 1) // 2 + k * (m - k)


def rank_weights(m: int, ranking: Sequence[int]) -> np.ndarray:
    """Per point: #wins - #losses over the revealed pairs (ranked r: m-1-2r; unranked: -k). Sums to 0."""
    k = len(ranking)
    if not 1 <= k <= m:
        raise ValueError(f"a ranking of {m} points must name 1..{m} of them, got {k}")
    if len(set(int(i) for i in ranking)) != k or any(not 0 <= int(i) < m for i in ranking):
        raise ValueError(f"ranking {list(ranking)} must list distinct point indices in [0, {m})")
    w = np.full(m, -float(k))
    for r, i in enumerate(ranking):
        w[int(i)] = m - 1 - 2 * r
    return w


def rank_gradient(xis: np.ndarray, ranking: Sequence[int]) -> np.ndarray:
    """The ZO-RankSGD estimate (1/|E|) sum_i w_i xi_i from perturbations ``xis`` [m, d] and a best-first ranking."""
    m = xis.shape[0]
    w = rank_weights(m, ranking)
    return (w[:, None] * xis).sum(0) / pair_count(m, len(ranking))


def ranking_by_value(values: Sequence[float], k: int | None = None, lower_is_better: bool = True,
                     rng: np.random.Generator | None = None) -> list[int]:
    """A (m, k)-ranking oracle from values: the k best indices, best first (ties broken at random with ``rng``)."""
    v = np.asarray(values, dtype=float)
    v = v if lower_is_better else -v
    tie = rng.random(len(v)) if rng is not None else np.arange(len(v))
    order = np.lexsort((tie, v))
    return [int(i) for i in order[: (k or len(v))]]


class ZORankSGD:
    """Ask/tell ZO-RankSGD on a vector x (see the module docstring; arXiv 2303.03751).

    ``ask()`` returns the points to rank; ``tell(ranking)`` (indices best first) updates x. ``step(oracle)`` does
    both. ``queries`` counts points sent to the oracle. State is plain data (``state_dict``/``load_state_dict``)."""

    def __init__(self, x0: Sequence[float], *, m: int = 5, k: int | None = None, mu: float = 0.05, eta: float = 0.1,
                 line_search: bool = False, decay_steps: float = 0.0, seed: int = 0):
        if m < 2:
            raise ValueError(f"m (points per query) must be >= 2, got {m}")
        if line_search and m < 3:
            raise ValueError("line_search needs m >= 3 (m - 2 step sizes plus two incumbents)")
        self.x = np.asarray(x0, dtype=float).copy()
        self.m, self.k = int(m), int(k if k is not None else m)
        if not 1 <= self.k <= self.m:
            raise ValueError(f"k must be in [1, m={m}], got {k}")
        self.mu, self.eta, self.line_search, self.decay_steps = float(mu), float(eta), bool(line_search), decay_steps
        self.rng = np.random.default_rng(seed)
        self.t = 0  # gradient-estimate rounds
        self.queries = 0
        self.mode = "grad_est"
        self.direction = np.zeros_like(self.x)
        self.accumulated = 0
        self.prev_best: np.ndarray | None = None
        self._pending: tuple[str, np.ndarray, np.ndarray] | None = None

    def ask(self) -> np.ndarray:
        if self.mode == "grad_est":
            xis = self.rng.standard_normal((self.m, self.x.size))
            points = self.x[None] + self.mu * xis
            self._pending = ("grad_est", xis, points)
        else:
            scales = self.eta * 0.5 ** np.arange(self.m - 2)
            points = np.concatenate([self.x[None] + scales[:, None] * self.direction[None],
                                     self.prev_best[None], self.x[None]])
            self._pending = ("line_search", scales, points)
        self.queries += len(points)
        return points.copy()

    def tell(self, ranking: Sequence[int]) -> None:
        if self._pending is None:
            raise RuntimeError("tell() without ask(): rank the points ask() returned")
        mode, info, points = self._pending
        self._pending = None
        if mode == "grad_est":
            g = rank_gradient(info, ranking)
            self.t += 1
            if not self.line_search:
                rate = self.eta / np.sqrt(1.0 + (self.t - 1) / self.decay_steps) if self.decay_steps else self.eta
                self.x = self.x + rate * g
                return
            self.direction = (self.direction * self.accumulated + g) / (self.accumulated + 1)
            self.accumulated += 1
            self.prev_best = points[int(ranking[0])].copy()
            self.mode = "line_search"
        else:
            best = int(ranking[0])
            if best != len(points) - 1:  # a candidate beat the incumbent: move there, restart the direction
                self.x = points[best].copy()
                self.direction = np.zeros_like(self.x)
                self.accumulated = 0
            self.mode = "grad_est"

    def step(self, oracle: RankOracle) -> None:
        points = self.ask()
        k = self.k if self._pending[0] == "grad_est" else 1  # the line search only needs the winner
        self.tell(list(oracle(points))[:k])

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x.tolist(), "t": self.t, "queries": self.queries, "mode": self.mode,
                "direction": self.direction.tolist(), "accumulated": self.accumulated,
                "prev_best": None if self.prev_best is None else self.prev_best.tolist(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x = np.asarray(state["x"], dtype=float)
        self.t, self.queries, self.mode = int(state["t"]), int(state["queries"]), state["mode"]
        self.direction = np.asarray(state["direction"], dtype=float)
        self.accumulated = int(state["accumulated"])
        self.prev_best = None if state["prev_best"] is None else np.asarray(state["prev_best"], dtype=float)
        self.rng.bit_generator.state = state["rng"]
        self._pending = None


class RankRandomSearch:
    """The baseline at equal oracle queries: rank the incumbent with m - 1 Gaussian perturbations (scale sigma) and
    move to the best. Uses the same ranking oracle and counts queries the same way."""

    def __init__(self, x0: Sequence[float], *, m: int = 5, sigma: float = 0.1, seed: int = 0):
        self.x = np.asarray(x0, dtype=float).copy()
        self.m, self.sigma = int(m), float(sigma)
        self.rng = np.random.default_rng(seed)
        self.queries = 0

    def step(self, oracle: RankOracle) -> None:
        xis = self.rng.standard_normal((self.m - 1, self.x.size))
        points = np.concatenate([self.x[None] + self.sigma * xis, self.x[None]])
        self.queries += len(points)
        self.x = points[int(list(oracle(points))[0])].copy()


def quadratic(x: np.ndarray) -> float:
    """f(x) = 1/2 sum_i c_i x_i^2 with c_i = 1..d (condition number d)."""
    c = np.arange(1, x.shape[-1] + 1, dtype=float)
    return float(0.5 * (c * x**2).sum())


def rosenbrock(x: np.ndarray) -> float:
    return float((100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum())


TOYS: dict[str, tuple[Callable[[np.ndarray], float], float]] = {"quadratic": (quadratic, 1.0), "rosenbrock": (rosenbrock, 0.0)}


def run_toy(function: str = "quadratic", method: str = "zo_ranksgd", *, d: int = 10, queries: int = 2000, m: int = 5,
            k: int | None = None, mu: float = 0.05, eta: float = 0.5, line_search: bool = True,
            sigma: float = 0.1, seed: int = 0, on_log: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Minimise a d-dim toy from x0 (all ones for the quadratic, zeros for Rosenbrock) with a full-ranking oracle
    built from exact function values; stop at ``queries`` oracle points. Returns the loss curve by queries."""
    if function not in TOYS:
        raise ValueError(f"function={function!r}: choose one of {sorted(TOYS)}")
    f, start = TOYS[function]
    x0 = np.full(d, start)
    if method == "zo_ranksgd":
        opt: Any = ZORankSGD(x0, m=m, k=k, mu=mu, eta=eta, line_search=line_search, seed=seed)
    elif method == "random_search":
        opt = RankRandomSearch(x0, m=m, sigma=sigma, seed=seed)
    else:
        raise ValueError(f"method={method!r}: choose 'zo_ranksgd' or 'random_search'")
    oracle = lambda pts: ranking_by_value([f(p) for p in pts])  # noqa: E731
    curve = [(0, f(x0))]
    while opt.queries < queries:
        opt.step(oracle)
        curve.append((opt.queries, f(opt.x)))
        if on_log is not None:
            on_log(len(curve) - 1, {"queries": opt.queries, "loss": curve[-1][1]})
    return {"final_loss": curve[-1][1], "initial_loss": curve[0][1], "curve": curve, "x": opt.x.tolist()}


# ---- the LM use: a logit bias of the tiny model, ranked by rewards of sampled completions ---------------------------

def lm_logit_bias_demo(out_dir: Path, seed: int, console, *, task: dict | None = None,
                       rewards: Sequence[Any] = ({"name": "format", "params": {"pattern": "^[0-9]+$"}},),
                       steps: int = 20, m: int = 6, mu: float = 0.5, eta: float = 2.0, line_search: bool = True,
                       prompts: int = 8, samples: int = 2, max_new_tokens: int = 3, logger=None) -> dict[str, Any]:
    """Optimise b in R^V (added to the tiny model's output logits) by ZO-RankSGD: each queried b samples
    ``prompts`` x ``samples`` completions of fixed training prompts (the same sampling seed for every point of a
    query: common random numbers) and the points are ranked by the mean reward of ``rewards``. Returns the mean
    reward of b = 0 and of the final b on held-out prompts."""
    import torch

    from entropo import registry
    from entropo.models import tiny
    from entropo.rewards.runner import RewardRunner
    from entropo.rollout import HFEngine
    from entropo.types import Sample

    spec = task or {"name": "arithmetic", "params": {"digits": 1, "num_terms": 2, "chat": False,
                                                   "template": "{expr}="}}
    t = registry.get("task", spec["name"])(seed=seed, eval_size=prompts, **spec.get("params", {}))
    model, tok = tiny(seed=seed)
    model.eval()
    engine = HFEngine(model, tok, chat_template=False)
    runner = RewardRunner(list(rewards))
    vocab = model.get_output_embeddings().weight.shape[0]
    bias = torch.zeros(vocab)
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + bias)
    train_examples = [t.train_example(i) for i in range(prompts)]
    eval_examples = t.eval_examples()[:prompts]

    def score(b: np.ndarray, examples, gen_seed: int) -> float:
        bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        gen = torch.Generator().manual_seed(gen_seed)
        out = engine.generate(examples, samples, temperature=1.0, max_new_tokens=max_new_tokens, generator=gen)
        ex = [examples[i] for i in out.prompt_index.tolist()]
        scored = runner.score([Sample(completion=c, example=e, task=t, num_tokens=n, max_tokens=max_new_tokens)
                               for c, e, n in zip(out.completions, ex, out.num_tokens)])
        return float(np.mean(scored.rewards))

    opt = ZORankSGD(np.zeros(vocab), m=m, mu=mu, eta=eta, line_search=line_search, seed=seed)
    rng = np.random.default_rng(seed + 1)
    try:
        before = score(np.zeros(vocab), eval_examples, 10_000 + seed)
        for step in range(steps):
            gen_seed = int(rng.integers(2**31))
            values = []

            def oracle(points):
                values[:] = [score(p, train_examples, gen_seed) for p in points]
                return ranking_by_value(values, lower_is_better=False, rng=rng)

            opt.step(oracle)
            row = {"queries": opt.queries, "lm/best_ranked_reward": max(values), "lm/mean_ranked_reward": float(np.mean(values))}
            if logger is not None:
                logger.log(step, row)
        after = score(opt.x, eval_examples, 10_000 + seed)
    finally:
        hook.remove()
    console(f"zo_ranksgd lm: held-out mean reward {before:.3f} (b = 0) -> {after:.3f} after {opt.queries} ranked points")
    return {"lm_reward_before": before, "lm_reward_after": after, "lm_queries": opt.queries}


@register("program", "zo_ranksgd", paper=PAPER)
def zo_ranksgd_program(out_dir, seed: int, console, functions: Sequence[str] = ("quadratic", "rosenbrock"),
                       d: int = 10, queries: int = 2000, m: int = 5, mu: float = 0.05, eta: float = 0.5,
                       line_search: bool = True, sigma: float = 0.1, lm: bool = True,
                       lm_params: dict | None = None) -> dict[str, Any]:
    """ZO-RankSGD vs random search at equal ranking-oracle queries on the toys, then (``lm``) the tiny model's
    logit bias from rankings of sampled completions. Metrics go to ``metrics.jsonl`` (``entropo plot``)."""
    from entropo.logging import MetricsLogger

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out, tensorboard=False)
    summary: dict[str, Any] = {}
    step0 = 0
    for fn in functions:
        for method in ("zo_ranksgd", "random_search"):
            res = run_toy(fn, method, d=d, queries=queries, m=m, mu=mu, eta=eta, line_search=line_search,
                          sigma=sigma, seed=seed,
                          on_log=lambda k, row, fn=fn, method=method: logger.log(
                              step0 + k, {"queries": row["queries"], f"{fn}/{method}_loss": row["loss"]}))
            step0 += len(res["curve"])
            summary[f"{fn}/{method}_final_loss"] = res["final_loss"]
            console(f"{fn} {method}: loss {res['initial_loss']:.4g} -> {res['final_loss']:.4g} "
                    f"after {res['curve'][-1][0]} oracle points")
    if lm:
        summary.update(lm_logit_bias_demo(out, seed, console, logger=logger, **(lm_params or {})))
    logger.close()
    return summary
