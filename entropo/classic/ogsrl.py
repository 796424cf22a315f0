"""OGSRL: offline guarded safe RL, at the scale of a seeded synthetic patient (a program recipe, ``entropo run ogsrl``).

Paper: "Offline Guarded Safe Reinforcement Learning for Medical Treatment Optimization Strategies", arXiv 2505.16242.
No official code was found for it (so the guardian's construction, marked to verify, could not be checked against
one); everything here is written from the paper's description:

1. learn the dynamics from offline data with an ensemble of MLPs (:class:`DynamicsEnsemble`);
2. fit a *guardian* G = {x = (s, a) : p(x) <= 1}, a polynomial sublevel set that contains the data with high
   probability. The paper fits a sum-of-squares polynomial (PSoS) with a finite-sample containment guarantee; here the
   stand-in is the empirical Christoffel function p(x) = phi(x)^T M^-1 phi(x) / tau (phi: monomials of degree <= k of
   the standardised (s, a), M their regularised moment matrix over the data, tau the (1 - delta) quantile of the
   data's scores, so about 1 - delta of the data lies in G) (:class:`ChristoffelGuardian`);
3. solve the estimated CMDP in the learned model: maximise the model return subject to E[sum c_safe] <= d_safe and
   E[sum c_ood] <= d_ood, c_ood = 1[x not in G];
4. with a Lagrangian PPO on model rollouts from dataset start states (the paper uses CPO; its text allows a
   Lagrangian relaxation): advantage (A_r - lam_s A_safe - lam_o A_ood) / (1 + lam_s + lam_o) and dual ascent
   lam <- max(0, lam + eta (J_c - d)) per constraint (:class:`LagrangeMultiplier`, a reusable ``controller``).

The environment (no data set exists here: the behaviour data is collected by a seeded script, :func:`collect_dataset`):
a two-dimensional "patient" with severity ``h`` and drug toxicity ``x`` treated with a dose ``a`` in [0, 3]:

    h' = clip(0.9 h + 0.35 - 0.6 a + 2 max(0, a - 1)^2 + 0.05 eps, 0, 10),   x' = max(0, 0.6 x + 0.25 a^2 + 0.02 eps'),

reward -h' (less severity is better), safety cost 1[x' > 1] (a toxic step), 20 steps from h0 ~ U(1.5, 3), x0 = 0.
A noisy, conservative clinician (dose 0.15 + 0.15 h + N(0, 0.2^2)) rarely doses above 1, so the overdose harm
(a > 1) and the curvature of the toxicity are outside the data: a model fitted on it extrapolates "more drug, faster
recovery, little toxicity", which an unguarded policy exploits.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from entropo.algorithms.controllers import Controller
from entropo.algorithms.objectives import clipped_surrogate, importance_ratio
from entropo.registry import register

PAPER = "Offline Guarded Safe Reinforcement Learning for Medical Treatment Optimization Strategies, arXiv 2505.16242"

@contextlib.contextmanager
def single_thread():
    """Run torch on one intra-op thread (restored after): these networks are tiny, and on a loaded machine extra
    OpenMP threads spin-wait for each other (a 25 ms tanh on a [256, 32] tensor with 2 threads at load 12 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_threaded(fn):
    """Decorator: ``fn`` runs inside :func:`single_thread`; its signature stays visible (``entropo run`` checks
    a recipe's params against it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)
    return wrapper


# ---- the synthetic patient ------------------------------------------------------------------------------------------

HORIZON = 20
MAX_DOSE = 3.0
MAX_SEVERITY = 10.0  # the severity saturates (the patient cannot get worse than this)
TOXIC = 1.0  # safety cost: 1[x' > TOXIC]
OBS_DIM, ACT_DIM = 2, 1


def patient_step(h: np.ndarray, x: np.ndarray, a: np.ndarray, rng: np.random.Generator):
    """One batched step of the true patient: (h', x', reward, safety cost). ``a`` is clipped to [0, MAX_DOSE]."""
    a = np.clip(a, 0.0, MAX_DOSE)
    h2 = np.clip(0.9 * h + 0.35 - 0.6 * a + 2.0 * np.maximum(0.0, a - 1.0) ** 2
                 + 0.05 * rng.standard_normal(h.shape), 0.0, MAX_SEVERITY)
    x2 = np.maximum(0.0, 0.6 * x + 0.25 * a ** 2 + 0.02 * rng.standard_normal(x.shape))
    return h2, x2, -h2, (x2 > TOXIC).astype(np.float64)


def initial_states(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.uniform(1.5, 3.0, n), np.zeros(n)], axis=1)


def clinician_dose(obs: np.ndarray, rng: np.random.Generator, noise: float = 0.2) -> np.ndarray:
    """The behaviour policy of the data set: conservative and noisy, never near the overdose region."""
    return np.clip(0.15 + 0.15 * obs[:, 0] + noise * rng.standard_normal(len(obs)), 0.0, MAX_DOSE)


_ENV_CLASS = None


def patient_env_class():
    """The Gymnasium class of the patient (built on first use: Gymnasium is the optional extra ``classic``)."""
    global _ENV_CLASS
    if _ENV_CLASS is not None:
        return _ENV_CLASS
    from entropo.extras import require

    gym = require("gymnasium", "classic", "the OGSRL patient environment")

    class PatientEnv(gym.Env):
        """Synthetic treatment CMDP. obs = (severity h, toxicity x); action = dose in [0, 3]; reward -h';
        ``info["cost"]`` = 1[x' > 1]; truncated after 20 steps. An out-of-range dose is clipped and a non-finite one
        is treated as no dose; both are flagged in ``info["invalid_action"]`` (never an exception)."""

        metadata = {"render_modes": []}

        def __init__(self):
            self.observation_space = gym.spaces.Box(0.0, np.inf, (OBS_DIM,), np.float64)
            self.action_space = gym.spaces.Box(0.0, MAX_DOSE, (ACT_DIM,), np.float64)
            self._state = np.zeros(OBS_DIM)
            self._t = 0

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            super().reset(seed=seed)
            self._state = initial_states(1, self.np_random)[0]
            self._t = 0
            return self._state.copy(), {}

        def step(self, action):
            a = np.asarray(action, dtype=np.float64).reshape(-1)
            invalid = a.size != 1 or not np.isfinite(a).all()
            dose = 0.0 if invalid else float(a[0])
            invalid = invalid or not (0.0 <= dose <= MAX_DOSE)
            h, x, r, c = patient_step(self._state[:1], self._state[1:], np.array([dose]), self.np_random)
            self._state = np.array([h[0], x[0]])
            self._t += 1
            info = {"cost": float(c[0]), "dose": float(np.clip(dose, 0.0, MAX_DOSE)), "invalid_action": invalid}
            return self._state.copy(), float(r[0]), False, self._t >= HORIZON, info

    _ENV_CLASS = PatientEnv
    return PatientEnv


def collect_dataset(n_episodes: int = 200, seed: int = 0, noise: float = 0.2) -> dict[str, np.ndarray]:
    """The offline data set: ``n_episodes`` clinician episodes of the Gymnasium patient, seeded (deterministic).
    Arrays obs [N, 2], act [N, 1], next_obs [N, 2], reward [N], cost [N], t [N]."""
    env = patient_env_class()()
    rng = np.random.default_rng(seed + 1_000_003)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "next_obs", "reward", "cost", "t")}
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed * 100_003 + ep)
        for t in range(HORIZON):
            a = clinician_dose(obs[None], rng, noise)
            nxt, r, _, trunc, info = env.step(a)
            for k, v in zip(rows, (obs, a, nxt, r, info["cost"], t)):
                rows[k].append(v)
            obs = nxt
            if trunc:
                break
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


# ---- the learned model ----------------------------------------------------------------------------------------------

class DynamicsEnsemble(nn.Module):
    """K independent MLPs (batched weights) predicting the state change s' - s from (s, a), on standardised inputs
    and targets. Reward and safety cost are known functions of the next state (as the patient's)."""

    def __init__(self, members: int = 5, hidden: int = 64, in_dim: int = OBS_DIM + ACT_DIM, out_dim: int = OBS_DIM):
        super().__init__()
        dims = [in_dim, hidden, hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, o in zip(dims[:-1], dims[1:]):
            self.weights.append(nn.Parameter(torch.randn(members, i, o) / math.sqrt(i)))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, o)))
        for name, dim in (("in_mean", in_dim), ("in_std", in_dim), ("out_mean", out_dim), ("out_std", out_dim)):
            self.register_buffer(name, torch.zeros(dim) if "mean" in name else torch.ones(dim))
        self.members = members

    def forward(self, sa: Tensor) -> Tensor:
        """sa [K, N, in] (or [N, in], broadcast to every member) -> predicted s' - s [K, N, out]."""
        z = (sa - self.in_mean) / self.in_std
        if z.dim() == 2:
            z = z.expand(self.members, *z.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b, z, w)
            if i < len(self.weights) - 1:
                z = torch.relu(z)
        return z * self.out_std + self.out_mean


def fit_ensemble(data: dict[str, np.ndarray], members: int = 5, hidden: int = 64, epochs: int = 300,
                 lr: float = 3e-3, batch: int = 256, seed: int = 0) -> DynamicsEnsemble:
    """Train each member on its own bootstrap resample of the transitions (MSE on standardised deltas)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sa = torch.tensor(np.concatenate([data["obs"], data["act"]], 1), dtype=torch.float32)
    delta = torch.tensor(data["next_obs"] - data["obs"], dtype=torch.float32)
    model = DynamicsEnsemble(members, hidden)
    model.in_mean.copy_(sa.mean(0)); model.in_std.copy_(sa.std(0).clamp_min(1e-6))
    model.out_mean.copy_(delta.mean(0)); model.out_std.copy_(delta.std(0).clamp_min(1e-6))
    n = len(sa)
    boot = torch.randint(0, n, (members, n), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = boot[:, torch.randperm(n, generator=g)]
        for i in range(0, n, batch):
            idx = perm[:, i:i + batch]
            pred = model(sa[idx])
            loss = (((pred - delta[idx]) / model.out_std) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


# ---- the guardian ---------------------------------------------------------------------------------------------------

def monomial_exponents(dim: int, degree: int) -> list[tuple[int, ...]]:
    """All exponent tuples of total degree <= ``degree`` in ``dim`` variables, by total degree (constant first)."""
    exps = [e for e in itertools.product(range(degree + 1), repeat=dim) if sum(e) <= degree]
    return sorted(exps, key=lambda e: (sum(e), tuple(-v for v in e)))


class ChristoffelGuardian:
    """G = {x : p(x) <= 1}, p(x) = phi(x)^T M^-1 phi(x) / tau, phi the monomials of degree <= ``degree`` of the
    standardised x, M = mean(phi phi^T) + reg I over the data, tau the (1 - delta) quantile of the data's scores.
    A stand-in for the paper's PSoS guardian (same form: a polynomial sublevel set containing the data); its
    containment is empirical (about 1 - delta of the fitting data), not the paper's finite-sample bound."""

    def __init__(self, degree: int = 2, delta: float = 0.01, reg: float = 1e-6):
        if not 0.0 < delta < 1.0:
            raise ValueError(f"guardian delta must be in (0, 1) (got {delta})")
        self.degree, self.delta, self.reg = int(degree), float(delta), float(reg)
        self.mean = self.std = self.minv = None
        self.tau = float("nan")
        self._exps: Tensor | None = None

    def _features(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / self.std
        return torch.prod(z.unsqueeze(-2) ** self._exps, dim=-1)  # [N, n_monomials]

    def fit(self, x: Tensor | np.ndarray) -> "ChristoffelGuardian":
        x = torch.as_tensor(x, dtype=torch.float64)
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-9)
        self._exps = torch.tensor(monomial_exponents(x.shape[1], self.degree), dtype=torch.float64)
        phi = self._features(x)
        m = phi.T @ phi / len(x) + self.reg * torch.eye(phi.shape[1], dtype=torch.float64)
        self.minv = torch.linalg.inv(m)
        self.tau = 1.0
        self.tau = float(torch.quantile(self.score(x), 1.0 - self.delta))
        return self

    def score(self, x: Tensor | np.ndarray) -> Tensor:
        """p(x): <= 1 inside the guardian, > 1 outside (larger further from the data)."""
        if self.minv is None:
            raise RuntimeError("ChristoffelGuardian.score before fit")
        x = torch.as_tensor(x, dtype=torch.float64)
        phi = self._features(x)
        return (phi @ self.minv * phi).sum(-1) / self.tau

    def cost(self, x: Tensor | np.ndarray) -> Tensor:
        """c_ood = 1[x not in G]."""
        return (self.score(x) > 1.0).to(torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"degree": self.degree, "delta": self.delta, "reg": self.reg, "tau": self.tau, "mean": self.mean,
                "std": self.std, "minv": self.minv}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.degree, self.delta, self.reg, self.tau = state["degree"], state["delta"], state["reg"], state["tau"]
        self.mean, self.std, self.minv = state["mean"], state["std"], state["minv"]
        if self.mean is not None:
            self._exps = torch.tensor(monomial_exponents(len(self.mean), self.degree), dtype=torch.float64)


# ---- the Lagrange multiplier (a reusable controller) ---------------------------------------------------------------

@register("controller", "lagrange_multiplier",
          paper=f"Lagrangian relaxation of a CMDP constraint, as in OGSRL ({PAPER})")
class LagrangeMultiplier(Controller):
    """Dual ascent on one cost constraint E[cost] <= budget: coef <- clip(coef + lr (metrics[metric] - budget), 0,
    max_coef). The penalised objective is reward - coef * cost; usable for any budget (a length, tool calls, a KL)."""

    def __init__(self, budget: float, lr: float = 0.05, init_coef: float = 0.0, max_coef: float = 100.0,
                 metric: str = "cost"):
        if lr <= 0 or max_coef < 0 or init_coef < 0:
            raise ValueError("lagrange_multiplier: lr must be > 0 and init_coef, max_coef >= 0")
        self.coef, self.budget, self.lr = float(init_coef), float(budget), float(lr)
        self.max_coef, self.metric = float(max_coef), metric

    def update(self, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            return
        self.coef = min(max(self.coef + self.lr * (float(metrics[self.metric]) - self.budget), 0.0), self.max_coef)


def constraint_report(costs: dict[str, float], budgets: dict[str, float], tol: float = 0.0) -> dict[str, Any]:
    """Which constraints E[cost] <= budget (+ tol) hold: {name: {"cost", "budget", "slack", "ok"}, "all_ok": bool}."""
    missing = [k for k in budgets if k not in costs]
    if missing:
        raise KeyError(f"constraint_report: no measured cost for {missing}; measured: {sorted(costs)}")
    out: dict[str, Any] = {}
    for k, d in budgets.items():
        slack = float(d) + tol - float(costs[k])
        out[k] = {"cost": float(costs[k]), "budget": float(d), "slack": slack, "ok": slack >= 0.0}
    out["all_ok"] = all(v["ok"] for v in out.values())
    return out


# ---- policy, rollouts, Lagrangian PPO -------------------------------------------------------------------------------

class GaussianPolicy(nn.Module):
    """Dose ~ N(mu(s), sigma^2); the environment clips it to [0, 3]."""

    def __init__(self, hidden: int = 32, init_std: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(OBS_DIM, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, ACT_DIM))
        self.log_std = nn.Parameter(torch.full((ACT_DIM,), math.log(init_std)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, 0.5)

    def dist(self, obs: Tensor) -> torch.distributions.Normal:
        z = torch.stack([obs[:, 0] / 3.0, obs[:, 1]], 1)
        return torch.distributions.Normal(self.net(z), self.log_std.exp())


def model_rollout(policy: GaussianPolicy, model: DynamicsEnsemble, guardian: ChristoffelGuardian | None,
                  starts: Tensor, horizon: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Roll the policy out in the model (a random member per sample and step, as MBPO/MOPO); tensors [T, N, ...]."""
    obs, out = starts.float(), {k: [] for k in ("obs", "act", "logp", "reward", "c_safe", "c_ood")}
    n = len(obs)
    for _ in range(horizon):
        with torch.no_grad():
            d = policy.dist(obs)
            raw = d.sample()  # the global torch RNG is seeded and checkpointed
            a = raw.clamp(0.0, MAX_DOSE)
            sa = torch.cat([obs, a], 1)
            pred = model(sa)  # [K, N, 2]
            k = torch.randint(0, model.members, (n,), generator=gen)
            nxt = (obs + pred[k, torch.arange(n)]).clamp_min(0.0)  # the known ranges of h and x
            nxt[:, 0] = nxt[:, 0].clamp_max(MAX_SEVERITY)
        out["obs"].append(obs); out["act"].append(raw); out["logp"].append(d.log_prob(raw).sum(-1))
        out["reward"].append(-nxt[:, 0]); out["c_safe"].append((nxt[:, 1] > TOXIC).float())
        out["c_ood"].append(guardian.cost(sa).float() if guardian is not None else torch.zeros(n))
        obs = nxt
    return {k: torch.stack(v) for k, v in out.items()}


def returns_to_go(x: Tensor) -> Tensor:
    """Undiscounted sums from each step to the end: x [T, N] -> [T, N]."""
    return x.flip(0).cumsum(0).flip(0)


def lagrangian_advantage(adv_r: Tensor, adv_costs: list[Tensor], lambdas: list[float]) -> Tensor:
    """(A_r - sum_i lam_i A_ci) / (1 + sum_i lam_i), the PPO-Lagrangian advantage (Ray et al. 2019's scaling)."""
    total = adv_r.clone()
    for a, lam in zip(adv_costs, lambdas):
        total = total - lam * a
    return total / (1.0 + sum(lambdas))


def _centred(x: Tensor) -> Tensor:
    """Returns-to-go minus the per-step mean over the batch (a time-indexed baseline)."""
    rtg = returns_to_go(x)
    return rtg - rtg.mean(1, keepdim=True)


def real_rollout(policy: GaussianPolicy | None, n: int, seed: int, guardian: ChristoffelGuardian | None = None,
                 deterministic: bool = False) -> dict[str, float]:
    """Episodes of the TRUE patient (batched); ``policy=None`` is the clinician. Mean return, safety cost, OOD
    steps (under ``guardian``), mean dose and fraction of overdose steps (a > 1)."""
    rng = np.random.default_rng(seed)
    obs = initial_states(n, rng)
    ret = cost = ood = dose = over = np.zeros(n)
    for _ in range(HORIZON):
        if policy is None:
            a = clinician_dose(obs, rng)
        else:
            with torch.no_grad():
                d = policy.dist(torch.tensor(obs, dtype=torch.float32))
                raw = d.mean if deterministic else d.mean + d.stddev * torch.tensor(
                    rng.standard_normal((n, 1)), dtype=torch.float32)
            a = np.clip(raw[:, 0].double().numpy(), 0.0, MAX_DOSE)
        if guardian is not None:
            ood = ood + guardian.cost(np.concatenate([obs, a[:, None]], 1)).double().numpy()
        h, x, r, c = patient_step(obs[:, 0], obs[:, 1], a, rng)
        ret, cost, dose, over = ret + r, cost + c, dose + a, over + (a > 1.0)
        obs = np.stack([h, x], 1)
    return {"return": float(ret.mean()), "cost": float(cost.mean()), "ood_steps": float(ood.mean()),
            "dose": float(dose.mean() / HORIZON), "overdose_frac": float(over.mean() / HORIZON)}


def _plain_state(model, policy, opt, lambdas, guardian, it, gen) -> dict[str, Any]:
    from entropo.checkpoint import rng_state

    return {"iteration": it, "model": model.state_dict(), "policy": policy.state_dict(), "opt": opt.state_dict(),
            "lambdas": [lam.state_dict() for lam in lambdas], "guardian": guardian.state_dict(),
            "gen": gen.get_state(), "rng": rng_state()}


@register("program", "ogsrl", paper=PAPER)
@single_threaded
def ogsrl_program(out_dir, seed: int, console, guardian: bool = True, n_episodes: int = 200, members: int = 5,
                  model_epochs: int = 150, guardian_degree: int = 3, guardian_delta: float = 0.01,
                  budget_safe: float = 1.0, budget_ood: float = 1.0, iterations: int = 60, batch: int = 256,
                  ppo_epochs: int = 4, lr: float = 3e-3, clip: float = 0.2, lambda_lr: float = 0.1,
                  eval_episodes: int = 500, checkpoint_every: int = 20) -> dict:
    """Collect the clinician data set, fit the dynamics ensemble and the guardian, run Lagrangian PPO in the model
    (with the OOD constraint when ``guardian``, the safety constraint always), evaluate in the true patient.

    Returns the true return / safety cost / OOD steps / dose of the policy and of the clinician, the model-predicted
    return and costs of the policy (``model_gap`` = model return - true return), and the final multipliers. Resumes
    from the newest checkpoint under ``out_dir`` with identical results."""
    from entropo import checkpoint
    from entropo.logging import MetricsLogger

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = collect_dataset(n_episodes, seed)
    np.savez_compressed(out_dir / "dataset.npz", **data)
    x_data = np.concatenate([data["obs"], data["act"]], 1)
    guard = ChristoffelGuardian(guardian_degree, guardian_delta).fit(x_data)
    starts_all = torch.tensor(data["obs"][data["t"] == 0], dtype=torch.float32)
    policy = GaussianPolicy()
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    lam_safe = LagrangeMultiplier(budget_safe, lambda_lr, metric="c_safe")
    lam_ood = LagrangeMultiplier(budget_ood, lambda_lr, metric="c_ood")
    gen = torch.Generator().manual_seed(seed + 7)
    start_it = 0
    point, state = checkpoint.resume_point(out_dir, warn=console)
    if state is not None:
        model = DynamicsEnsemble(members)
        model.load_state_dict(state["model"])
        policy.load_state_dict(state["policy"]); opt.load_state_dict(state["opt"])
        lam_safe.load_state_dict(state["lambdas"][0]); lam_ood.load_state_dict(state["lambdas"][1])
        guard.load_state_dict(state["guardian"]); gen.set_state(state["gen"])
        checkpoint.set_rng_state(state["rng"])
        start_it = state["iteration"]
        console(f"  resumed from {point.name} (iteration {start_it})")
    else:
        model = fit_ensemble(data, members, epochs=model_epochs, seed=seed)
    log = MetricsLogger(out_dir, tensorboard=False)
    log.truncate_after(start_it - 1)
    for it in range(start_it, iterations):
        idx = torch.randint(0, len(starts_all), (batch,), generator=gen)
        ro = model_rollout(policy, model, guard if guardian else None, starts_all[idx], HORIZON, gen)
        j = {k: float(ro[k].sum(0).mean()) for k in ("reward", "c_safe", "c_ood")}
        lams = [lam_safe.value()] + ([lam_ood.value()] if guardian else [])
        adv = lagrangian_advantage(_centred(ro["reward"]), [_centred(ro["c_safe"])]
                                   + ([_centred(ro["c_ood"])] if guardian else []), lams)
        adv = (adv / adv.std().clamp_min(1e-8)).reshape(-1)
        obs, act, old = ro["obs"].reshape(-1, OBS_DIM), ro["act"].reshape(-1, ACT_DIM), ro["logp"].reshape(-1)
        for _ in range(ppo_epochs):
            for mb in torch.randperm(len(adv), generator=gen).split(1024):
                logp = policy.dist(obs[mb]).log_prob(act[mb]).sum(-1)
                loss = clipped_surrogate(importance_ratio(logp, old[mb]), adv[mb], clip, clip).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        lam_safe.update(j)
        if guardian:
            lam_ood.update(j)
        log.log(it, {"model/return": j["reward"], "model/c_safe": j["c_safe"], "model/c_ood": j["c_ood"],
                     "lambda/safe": lam_safe.value(), "lambda/ood": lam_ood.value(),
                     "policy/std": float(policy.log_std.detach().exp()), "ood_true_guardian": float(guard.cost(
                         torch.cat([obs, act.clamp(0, MAX_DOSE)], 1)).sum() / batch)})
        if (it + 1) % checkpoint_every == 0 or it + 1 == iterations:
            checkpoint.save(out_dir, it + 1, _plain_state(model, policy, opt, [lam_safe, lam_ood], guard, it + 1,
                                                          gen))
        if (it + 1) % max(1, iterations // 5) == 0:
            console(f"  it {it + 1}: model return {j['reward']:.2f}, safety {j['c_safe']:.2f}, ood {j['c_ood']:.2f}, "
                    f"lambda safe {lam_safe.value():.2f} ood {lam_ood.value():.2f}")
    log.close()
    # evaluation: the same policy in the model (from the data's start states) and in the true patient
    eval_gen = torch.Generator().manual_seed(seed + 11)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 13)
        ro = model_rollout(policy, model, guard, starts_all, HORIZON, eval_gen)
    model_j = {k: float(ro[k].sum(0).mean()) for k in ("reward", "c_safe", "c_ood")}
    true = real_rollout(policy, eval_episodes, seed + 17, guard)
    clin = real_rollout(None, eval_episodes, seed + 17, guard)
    # the constraints as the optimiser saw them (in the model) and the safety constraint in the true patient
    model_ok = constraint_report({"safe": model_j["c_safe"], "ood": model_j["c_ood"]},
                                 {"safe": budget_safe, **({"ood": budget_ood} if guardian else {})})["all_ok"]
    true_ok = constraint_report({"safe": true["cost"]}, {"safe": budget_safe})["all_ok"]
    res = {"guardian": guardian, "true_return": true["return"], "true_cost": true["cost"],
           "true_ood_steps": true["ood_steps"], "dose": true["dose"], "overdose_frac": true["overdose_frac"],
           "model_return": model_j["reward"], "model_cost": model_j["c_safe"], "model_ood_steps": model_j["c_ood"],
           "model_gap": model_j["reward"] - true["return"], "clinician_return": clin["return"],
           "clinician_cost": clin["cost"], "clinician_ood_steps": clin["ood_steps"], "clinician_dose": clin["dose"],
           "lambda_safe": lam_safe.value(), "lambda_ood": lam_ood.value(), "model_constraints_ok": model_ok,
           "true_safety_ok": true_ok,
           "dataset_transitions": int(len(data["t"])), "guardian_data_inside": float(
               1.0 - guard.cost(x_data).mean())}
    console(f"  true return {true['return']:.2f} (clinician {clin['return']:.2f}), model return "
            f"{model_j['reward']:.2f}, true safety cost {true['cost']:.2f}, ood steps {true['ood_steps']:.2f}, "
            f"dose {true['dose']:.2f}")
    return res
