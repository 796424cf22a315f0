"""HDPO — Hindsight Differentiable Policy Optimization for inventory control.

Paper: "Deep Reinforcement Learning for Inventory Networks: Toward Reliable Policy Optimization" (Alvo, Russo,
Kanoria), arXiv 2306.11246. When the dynamics are known and differentiable, the policy is trained by *pathwise*
gradients of the simulated cost over sampled (hindsight) demand paths, instead of a score-function (REINFORCE)
estimator.

What follows the official code (MatiasAlvo/Neural_inventory_control, ``environment.py`` and
``config_files/settings/one_store_backlogged.yml``, read to get the timing right; this is our own code):

- state of a store = [on-hand, pipeline arriving next period, ..., arriving in L-1 periods] (length L); in period t
  the demand d_t is served from on-hand, the cost is ``h·(on-hand − d_t)⁺ + p·(d_t − on-hand)⁺``, then the pipeline
  shifts left (its first slot joins on-hand) and the order a_t enters the last slot, so it is on hand for d_{t+L};
- lost sales clip the post-demand on-hand at 0, backlog keeps it negative;
- the policy maps the state to a non-negative order through a softplus of (network output + 1); the loss is the mean
  cost per period, back-propagated through the whole simulated trajectory; Adam.

The timing gives the classical check: with backlog the optimal policy is base-stock on the inventory position
(on-hand + pipeline + order) and the optimal level is the p/(p+h) quantile of the demand over the L+1 periods
d_t..d_{t+L} (Poisson(5), L = 4, h = 1, p = 9: the 0.9 quantile of Poisson(25), S* = 32).

Reduced here: one store only (no warehouses / networks, so no GNN), Poisson or clipped-normal demand, a few hundred
Adam steps on ~1000 paths instead of 20000 epochs on 32768 paths with dev-set early stopping; the network output is
scaled by the mean demand so a small CPU budget suffices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entropo.registry import register

PAPER = ("Deep Reinforcement Learning for Inventory Networks: Toward Reliable Policy Optimization "
         "(HDPO), arXiv 2306.11246")


@dataclass
class InventoryProblem:
    """One store, lead time L >= 1, holding cost h, underage (backlog or lost-sale) cost p, i.i.d. demand."""

    lead_time: int = 4
    holding_cost: float = 1.0
    underage_cost: float = 9.0
    demand_mean: float = 5.0
    demand: str = "poisson"  # "poisson" or "normal" (clipped at 0, as the official config)
    demand_std: float = 1.6  # for "normal"
    lost_sales: bool = False
    periods: int = 50
    ignore_periods: int = 30  # warm-up periods left out of the reported cost

    def __post_init__(self) -> None:
        if int(self.lead_time) != self.lead_time or self.lead_time < 1:
            raise ValueError(f"lead_time: must be an integer >= 1, got {self.lead_time!r}")
        if self.demand not in ("poisson", "normal"):
            raise ValueError(f"demand: {self.demand!r} is unknown; use 'poisson' or 'normal'")
        if self.holding_cost < 0 or self.underage_cost <= 0:
            raise ValueError("holding_cost must be >= 0 and underage_cost > 0")
        if not 0 <= self.ignore_periods < self.periods:
            raise ValueError(f"ignore_periods: must be in [0, periods={self.periods}), got {self.ignore_periods}")

    def sample_demands(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, periods] demand paths (the hindsight samples)."""
        if self.demand == "poisson":
            rate = torch.full((n, self.periods), float(self.demand_mean))
            return torch.poisson(rate, generator=generator)
        d = self.demand_mean + self.demand_std * torch.randn(n, self.periods, generator=generator)
        return d.clamp(min=0.0)

    def initial_state(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, L]: on-hand and pipeline each uniform in [0, mean demand] (the official range_mult [0, 1])."""
        return torch.rand(n, self.lead_time, generator=generator) * self.demand_mean


def simulate(problem: InventoryProblem, policy, demands: torch.Tensor, state: torch.Tensor,
             noise: torch.Tensor | None = None, noise_std: float = 0.0, score: bool = False) -> dict[str, torch.Tensor]:
    """Roll the store forward through ``demands`` [n, T] from ``state`` [n, L] under ``policy(state) -> order``.

    Everything is a torch op, so the returned costs are differentiable in the policy's parameters (pathwise).
    With ``noise`` [n, T] the pre-clip action is ``mean + noise_std·noise`` (a Gaussian policy, for REINFORCE and the
    reparameterized gradient) and ``log_probs`` [n, T] are the Gaussian log-densities of those pre-clip actions; the
    executed order is its positive part. With ``score`` the sampled actions are detached, so the states carry no
    gradient and ``log_probs`` differentiate to the score ∇ log π(a_t|s_t) at the visited states (REINFORCE); without
    it the gradient flows through actions and states (pathwise). Returns ``costs`` [n, T] and ``log_probs``."""
    n, T = demands.shape
    h, p = problem.holding_cost, problem.underage_cost
    costs, log_probs = [], []
    for t in range(T):
        mean = policy(state)
        if noise is not None:
            pre = mean + noise_std * noise[:, t]
            if score:
                pre = pre.detach()
            log_probs.append(-0.5 * ((pre.detach() - mean) / noise_std) ** 2 - math.log(noise_std)
                             - 0.5 * math.log(2 * math.pi))
            order = torch.relu(pre)
        else:
            order = mean
            log_probs.append(torch.zeros_like(mean))
        if not torch.isfinite(order).all():
            raise ValueError("policy: returned a NaN or infinite order quantity; orders must be finite numbers >= 0")
        order = torch.clamp(order, min=0.0)  # a negative order is no order (stock cannot be sent back)
        post = state[:, 0] - demands[:, t]
        costs.append(h * torch.relu(post) + p * torch.relu(-post))
        if problem.lost_sales:
            post = torch.relu(post)
        pipe = torch.cat([state[:, 1:], order[:, None]], dim=1)  # slots arriving in 1..L periods
        state = torch.cat([(post + pipe[:, 0])[:, None], pipe[:, 1:]], dim=1)
    return {"costs": torch.stack(costs, 1), "log_probs": torch.stack(log_probs, 1)}


class MLPPolicy(nn.Module):
    """State [n, L] -> order >= 0: mean_demand · softplus(MLP(state / mean_demand) + 1) (ELU hidden layers)."""

    def __init__(self, lead_time: int, demand_mean: float, hidden: int = 32, layers: int = 3):
        super().__init__()
        dims = [lead_time] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ELU()]
        mods.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*mods)
        self.scale = float(demand_mean)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.softplus(self.net(state / self.scale).squeeze(-1) + 1.0)


class BaseStockPolicy(nn.Module):
    """Order up to a learnable level S on the inventory position: order = (S − on-hand − pipeline)⁺."""

    def __init__(self, level: float):
        super().__init__()
        self.level = nn.Parameter(torch.tensor(float(level)))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.level - state.sum(dim=1))


def poisson_cdf(k: int, rate: float) -> float:
    """P(N <= k) for N ~ Poisson(rate), by the series (no scipy)."""
    term = total = math.exp(-rate)
    for i in range(1, k + 1):
        term *= rate / i
        total += term
    return total


def optimal_base_stock(problem: InventoryProblem) -> tuple[float, float]:
    """(S*, expected cost per period at S*) of the backlogged store: the p/(p+h) quantile of the demand over L+1
    periods (the newsvendor critical fractile), and E[h(S*−D)⁺ + p(D−S*)⁺] for that demand D."""
    if problem.lost_sales:
        raise ValueError("optimal_base_stock: the closed form holds for backlog only (lost_sales=False)")
    h, p, m = problem.holding_cost, problem.underage_cost, problem.demand_mean * (problem.lead_time + 1)
    q = p / (p + h)
    if problem.demand == "normal":
        from statistics import NormalDist

        sd = problem.demand_std * math.sqrt(problem.lead_time + 1)
        z = NormalDist().inv_cdf(q)
        return m + sd * z, (h + p) * sd * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # clipping ignored
    s = 0
    while poisson_cdf(s, m) < q:
        s += 1
    # E cost = h·E(S−D)⁺ + p·E(D−S)⁺ with E(D−S)⁺ = E(S−D)⁺ − (S − m)
    pmf, below = math.exp(-m), 0.0
    for k in range(s + 1):
        if k:
            pmf *= m / k
        below += (s - k) * pmf
    return float(s), h * below + p * (below - (s - m))


HELD_OUT_SEED = (1 << 62) - 1  # held-out demand paths: generator seeds counted down from here; training batches use
# seed·1_000_003 + step (far below for any practical seed and step count)


def _paths(problem: InventoryProblem, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return problem.sample_demands(n, g), problem.initial_state(n, g)


def evaluate_cost(problem: InventoryProblem, policy, demands: torch.Tensor, state: torch.Tensor) -> float:
    """Mean cost per period after the warm-up periods (deterministic policy)."""
    with torch.no_grad():
        c = simulate(problem, policy, demands, state)["costs"]
    return float(c[:, problem.ignore_periods:].mean())


def hdpo_loss(problem: InventoryProblem, policy, demands: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """HDPO's loss: the mean simulated cost per period; its gradient is the pathwise (hindsight) policy gradient."""
    return simulate(problem, policy, demands, state)["costs"].mean()


def reinforce_loss(problem: InventoryProblem, policy, demands: torch.Tensor, state: torch.Tensor,
                   noise: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Score-function surrogate of the same objective for the Gaussian policy N(policy(s), noise_std²) (clipped at 0):
    Σ_t log π(a_t|s_t)·(cost-to-go from t − leave-one-out mean of the batch's cost-to-go) / (n·T). Its gradient is an
    unbiased REINFORCE (GPOMDP form) estimate of ∇ E[mean cost per period]."""
    out = simulate(problem, policy, demands, state, noise=noise, noise_std=noise_std, score=True)
    c = out["costs"].detach()
    n, T = c.shape
    to_go = c.flip(1).cumsum(1).flip(1)
    baseline = (to_go.sum(0, keepdim=True) - to_go) / max(n - 1, 1)
    return (out["log_probs"] * (to_go - baseline)).sum() / (n * T)


def pathwise_gaussian_loss(problem: InventoryProblem, policy, demands: torch.Tensor, state: torch.Tensor,
                           noise: torch.Tensor, noise_std: float) -> torch.Tensor:
    """The same Gaussian-policy objective differentiated pathwise (reparameterized: a = mean + std·ε)."""
    return simulate(problem, policy, demands, state, noise=noise, noise_std=noise_std)["costs"].mean()


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


def gradient_variance(problem: InventoryProblem, policy: nn.Module, n_paths: int, repeats: int, noise_std: float,
                      seed: int) -> dict[str, float]:
    """Per-batch gradient estimates of ∇ E[cost] of the Gaussian policy around ``policy``, by the pathwise and by
    the REINFORCE estimator, on the same ``repeats`` batches of ``n_paths`` demand paths each: total variance
    tr Cov (summed over parameters), relative variance E‖g − ḡ‖² / ‖ḡ‖² (ḡ the pathwise mean, the more precise) and
    the cosine between the two mean gradients (both estimate the same gradient, so it should be near 1)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    gp, gr = [], []
    for k in range(repeats):
        g = torch.Generator().manual_seed(seed * 100003 + k)
        demands, state = problem.sample_demands(n_paths, g), problem.initial_state(n_paths, g)
        noise = torch.randn(n_paths, problem.periods, generator=g)
        gp.append(_flat_grad(pathwise_gaussian_loss(problem, policy, demands, state, noise, noise_std), params))
        gr.append(_flat_grad(reinforce_loss(problem, policy, demands, state, noise, noise_std), params))
    gp, gr = torch.stack(gp), torch.stack(gr)
    ref = gp.mean(0)
    var_p = float(((gp - gp.mean(0)) ** 2).sum(1).mean())
    var_r = float(((gr - gr.mean(0)) ** 2).sum(1).mean())
    norm2 = float((ref ** 2).sum())
    cos = float(torch.nn.functional.cosine_similarity(gp.mean(0), gr.mean(0), dim=0))
    return {"var_pathwise": var_p, "var_reinforce": var_r, "relvar_pathwise": var_p / norm2,
            "relvar_reinforce": var_r / norm2, "variance_ratio": var_r / max(var_p, 1e-30), "mean_grad_cosine": cos}


def train(problem: InventoryProblem, policy: nn.Module, estimator: str, steps: int, n_paths: int, lr: float,
          seed: int, noise_std: float = 1.0, logger=None, prefix: str = "", eval_every: int = 25,
          eval_paths: tuple[torch.Tensor, torch.Tensor] | None = None, out_dir: Path | None = None,
          checkpoint_every: int = 0, console=None) -> list[dict[str, float]]:
    """Adam on ``policy`` with the ``hdpo`` (pathwise, deterministic policy) or ``reinforce`` (Gaussian policy,
    score function) gradient, ``n_paths`` fresh demand paths per step. Records ``{prefix}train_cost`` (hdpo) every
    step and ``{prefix}eval_cost`` (deterministic policy, held-out paths) every ``eval_every`` steps, logged to
    ``logger`` if given. With ``out_dir`` and ``checkpoint_every`` > 0, checkpoints plain-data state (parameters, Adam
    state, history, step) under ``out_dir/<prefix or estimator>/checkpoints`` and resumes from the newest one with
    identical results: demand paths are drawn from a generator seeded by (seed, step), so no RNG state needs
    saving."""
    from entropo import checkpoint

    if estimator not in ("hdpo", "reinforce"):
        raise ValueError(f"estimator: {estimator!r} is unknown; use 'hdpo' or 'reinforce'")
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    history: list[dict[str, float]] = []
    start = 0
    ckpt_dir = Path(out_dir) / (prefix.strip("/") or estimator) if out_dir and checkpoint_every else None
    if ckpt_dir is not None and (last := checkpoint.latest(ckpt_dir)) is not None:
        state = checkpoint.load(last)
        policy.load_state_dict(state["policy"])
        opt.load_state_dict(state["optimizer"])
        history, start = list(state["history"]), int(state["step"])
        if console:
            console(f"  resumed {prefix or 'hdpo'} from step {start}")
    for step in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        demands, state0 = problem.sample_demands(n_paths, g), problem.initial_state(n_paths, g)
        if estimator == "hdpo":
            loss = hdpo_loss(problem, policy, demands, state0)
            report = loss
        else:
            noise = torch.randn(n_paths, problem.periods, generator=g)
            loss = reinforce_loss(problem, policy, demands, state0, noise, noise_std)
            report = None
        opt.zero_grad()
        loss.backward()
        opt.step()
        row: dict[str, float] = {"step": step + 1}
        if report is not None:
            row[f"{prefix}train_cost"] = float(report.detach())
        if eval_paths is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            row[f"{prefix}eval_cost"] = evaluate_cost(problem, policy, *eval_paths)
        history.append(row)
        if logger is not None:
            logger.log(step + 1, {k: v for k, v in row.items() if k != "step"})
        if ckpt_dir is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            checkpoint.save(ckpt_dir, step + 1, {"policy": policy.state_dict(), "optimizer": opt.state_dict(),
                                                 "history": history, "step": step + 1})
    return history


def _plot(curves: dict[str, tuple[list[int], list[float]]], optimum: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", ms=2, label=name)
    ax.axhline(optimum, color="k", ls="--", lw=1, label="optimal base-stock policy (same held-out paths)")
    ax.set_xlabel("Adam steps (each on the same number of fresh demand paths)")
    ax.set_ylabel("held-out mean cost per period")
    ax.set_ylim(optimum * 0.95, optimum * 1.6)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@register("program", "hdpo", paper=PAPER)
def hdpo_program(out_dir, seed: int, console, lead_time: int = 4, holding_cost: float = 1.0,
                 underage_cost: float = 9.0, demand_mean: float = 5.0, demand: str = "poisson",
                 lost_sales: bool = False, periods: int = 50, ignore_periods: int = 30, steps: int = 300,
                 n_paths: int = 512, lr: float = 0.003, hidden: int = 32, layers: int = 3, eval_paths: int = 4096,
                 noise_std: float = 1.0, variance_repeats: int = 16, reinforce: bool = True,
                 checkpoint_every: int = 100) -> dict[str, Any]:
    """Train an MLP ordering policy with HDPO (pathwise gradients through the simulator) and, at equal demand paths,
    with REINFORCE (Gaussian policy); compare held-out costs with the closed-form optimal base-stock policy
    (backlog) and measure the variance of both gradient estimators at initialization and after HDPO training."""
    from entropo.logging import MetricsLogger

    out = Path(out_dir)
    problem = InventoryProblem(lead_time, holding_cost, underage_cost, demand_mean, demand, lost_sales=lost_sales,
                               periods=periods, ignore_periods=ignore_periods)
    held_out = _paths(problem, eval_paths, seed=HELD_OUT_SEED - seed)  # disjoint from every training batch's seed
    results: dict[str, Any] = {"problem": {"lead_time": lead_time, "holding_cost": holding_cost,
                                           "underage_cost": underage_cost, "demand": demand,
                                           "demand_mean": demand_mean, "lost_sales": lost_sales}}
    optimum = None
    if not lost_sales:
        s_star, c_star = optimal_base_stock(problem)
        results["base_stock_level"] = s_star
        results["base_stock_cost_closed_form"] = c_star
        optimum = evaluate_cost(problem, BaseStockPolicy(s_star), *held_out)
        results["base_stock_cost_heldout"] = optimum
        console(f"  optimal base-stock S* = {s_star:g}: cost {c_star:.4f} (closed form), {optimum:.4f} (held-out)")
    torch.manual_seed(seed)
    init = MLPPolicy(lead_time, demand_mean, hidden, layers)
    results["variance_at_init"] = gradient_variance(problem, init, n_paths, variance_repeats, noise_std, seed)
    curves, histories = {}, {}
    for est in ("hdpo", "reinforce") if reinforce else ("hdpo",):
        policy = MLPPolicy(lead_time, demand_mean, hidden, layers)
        policy.load_state_dict(init.state_dict())
        hist = train(problem, policy, est, steps, n_paths, lr, seed, noise_std, None, prefix=f"{est}/",
                     eval_paths=held_out, out_dir=out, checkpoint_every=checkpoint_every, console=console)
        evals = [(int(r["step"]), r[f"{est}/eval_cost"]) for r in hist if f"{est}/eval_cost" in r]
        curves[est] = ([s for s, _ in evals], [c for _, c in evals])
        histories[est] = hist
        results[f"{est}/final_cost"] = evals[-1][1]
        if optimum:
            results[f"{est}/gap_to_base_stock"] = evals[-1][1] / optimum - 1
        console(f"  {est}: held-out cost {evals[-1][1]:.4f} after {steps} steps x {n_paths} paths"
                + (f" ({results[f'{est}/gap_to_base_stock']:+.2%} vs base-stock)" if optimum else ""))
        if est == "hdpo":
            results["variance_after_hdpo"] = gradient_variance(problem, policy, n_paths, variance_repeats,
                                                               noise_std, seed + 7)
    # metrics.jsonl is written once from the (checkpointed) histories, so a resumed run writes the same file
    (out / "metrics.jsonl").unlink(missing_ok=True)
    logger = MetricsLogger(out, tensorboard=False)
    for step in range(1, steps + 1):
        row = {k: v for h in histories.values() for k, v in h[step - 1].items() if k != "step"}
        logger.log(step, row)
    logger.close()
    for where in ("variance_at_init", "variance_after_hdpo"):
        if where in results:
            v = results[where]
            console(f"  gradient variance {where.split('_', 1)[1]}: REINFORCE / pathwise = {v['variance_ratio']:.1f}"
                    f" (relative {v['relvar_reinforce']:.3g} vs {v['relvar_pathwise']:.3g}, mean-gradient cosine "
                    f"{v['mean_grad_cosine']:.3f})")
    if curves:
        results["plot"] = str(_plot(curves, optimum if optimum else min(min(c[1]) for c in curves.values()),
                                    out / "cost_vs_steps.png",
                                    f"one store, L={lead_time}, h={holding_cost:g}, p={underage_cost:g}, {demand}"
                                    f"({demand_mean:g}), {'lost sales' if lost_sales else 'backlog'}, seed {seed}"))
    results["samples_per_arm"] = steps * n_paths
    return results
