"""Offline and offline-to-online RL on entropo's own Gymnasium datasets (:mod:`entropo.classic.offline_data`):

- **TD3+BC** (A Minimalist Approach to Offline Reinforcement Learning, Fujimoto & Gu, NeurIPS 2021, arXiv 2106.06860):
  actor loss −λ·Q(s, π(s)) + ‖π(s) − a‖² with λ = α / mean|Q(s, π(s))| (:func:`td3bc_actor_loss`), the baseline;
- **A2PR** (Adaptive Advantage-Guided Policy Regularization for Offline RL, Liu et al., ICML 2024, arXiv 2405.19909):
  the same actor objective, but the BC target is the higher-advantage one of the dataset action and a VAE's
  reconstruction of π(s), and the BC term is gated by the advantage signs (:func:`a2pr_bc_target`);
- **FamO2O** (Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online RL, Wang et al., NeurIPS 2023,
  arXiv 2310.17966), IQL instantiation: one universal AWR actor π_u(a | s, β) conditioned on the balance coefficient
  β (sin–cos encoded, :func:`sincos_encoding`) and a balance model π_b(β | s) trained SAC-style to pick β per state
  (:func:`famo2o_actor_loss`, :func:`famo2o_balance_loss`).

Formulas checked against the official code (read, not copied):

- A2PR, ltlhuuu/A2PR ``A2PR.py`` (``train``): V(s) is regressed (MSE) to min(r + γ·min Q_targ(s', a'), r + γ·min
  Q(s', a')) with a' the smoothed target action; the VAE's reconstruction loss is weighted by 1[Q₁(s, a) > V(s)] and
  its KL by 0.5 (encoder log σ clamped to [−4, 15], decoder latent clipped to ±0.5 when sampling); the actor's BC
  target is ã = VAE(s, π(s)) where A(s, ã) ≥ A(s, a) and a otherwise (A = Q₁ − V), weighted by
  mask·(1[A(s, ã) ≥ 0] + 1[A(s, a) > 0]); the reconstruction is NOT detached (the BC gradient also flows through the
  VAE into π), kept here. λ uses Q₁ as in TD3+BC. Defaults α = 2.5, mask = 1, policy_freq = 2.
- FamO2O, LeapLabTHU/FamO2O ``jax_iql/family_actor.py``, ``family_learner.py``, ``family_utils.py``: the encoding
  interleaves sin/cos of β/n^(2i/d), i < d/2 (n = 10⁴, d = 6); the actor loss is −mean(min(exp(β·(Q_targ − V)), 100)
  ·log π_u(a | s, β)) with Q_targ the min of the target critics and β uniform in the range during offline
  pre-training (``random_hierarchical_coefficients=(i < 1)``) and sampled from π_b (stop-gradient) online; π_b is a
  tanh-Gaussian with a state-independent std mapped affinely to [β_min, β_max], trained by the pathwise loss
  mean(temp·log π_b(β|s) − min Q_targ(s, a)), a ∼ π_u(· | s, β) reparameterised; temperature loss
  temp·(H − H_target) with H_target = −0.5; update order value → balance model → temperature → actor → critic →
  target critic. The universal actor is a Gaussian with tanh-squashed mean and a state-independent std.

Reduced from the papers' settings (see the recipes): Pendulum-v1 instead of D4RL MuJoCo/AntMaze, 2×128 MLPs (VAE 2×128
instead of 750), a few thousand gradient steps, states normalised by the dataset mean/std for all methods (TD3+BC's
rule), actions rescaled to [−1, 1].
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from entropo.registry import register

TD3BC_PAPER = "A Minimalist Approach to Offline Reinforcement Learning (TD3+BC), NeurIPS 2021, arXiv 2106.06860"
A2PR_PAPER = "Adaptive Advantage-Guided Policy Regularization for Offline RL (A2PR), ICML 2024, arXiv 2405.19909"
FAMO2O_PAPER = ("Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online RL (FamO2O), NeurIPS 2023, "
                "arXiv 2310.17966")


# ---- pure losses / targets (hand-checked in tests/test_offline_a.py) -------------------------------------------------

def td3bc_lambda(q_pi: torch.Tensor, alpha: float = 2.5) -> torch.Tensor:
    """TD3+BC's normaliser λ = α / mean|Q(s, π(s))|, detached (a constant for the actor's gradient)."""
    return alpha / q_pi.abs().mean().detach()


def td3bc_actor_loss(q_pi: torch.Tensor, pi: torch.Tensor, a_data: torch.Tensor,
                     alpha: float = 2.5) -> torch.Tensor:
    """−λ·mean Q(s, π(s)) + mean‖π(s) − a‖² (the mean over batch and action dimensions, as F.mse_loss)."""
    return -td3bc_lambda(q_pi, alpha) * q_pi.mean() + F.mse_loss(pi, a_data)


def a2pr_bc_target(a_data: torch.Tensor, a_vae: torch.Tensor, adv_data: torch.Tensor,
                   adv_vae: torch.Tensor, mask: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A2PR's advantage-guided BC target and weight, per sample: a* = ã where A(s, ã) ≥ A(s, a), else a;
    w = mask·(1[A(s, ã) ≥ 0] + 1[A(s, a) > 0]) (0, 1 or 2: no pull toward actions that are both worse than V)."""
    use_vae = (adv_vae >= adv_data).to(a_data.dtype)
    target = a_vae * use_vae + a_data * (1.0 - use_vae)
    weight = mask * ((adv_vae >= 0).to(a_data.dtype) + (adv_data > 0).to(a_data.dtype))
    return target, weight


def a2pr_actor_loss(q_pi: torch.Tensor, pi: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                    alpha: float = 2.5) -> torch.Tensor:
    """−λ·mean Q(s, π(s)) + mean((π(s) − a*)²·w), λ as TD3+BC."""
    return -td3bc_lambda(q_pi, alpha) * q_pi.mean() + (torch.square(pi - target) * weight).mean()


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's value loss mean(|τ − 1[diff < 0]|·diff²), diff = Q − V."""
    w = torch.where(diff > 0, torch.full_like(diff, expectile), torch.full_like(diff, 1.0 - expectile))
    return (w * diff.square()).mean()


def sincos_encoding(beta: torch.Tensor, n: float = 10000.0, d: int = 6) -> torch.Tensor:
    """FamO2O's encoding of the balance coefficient: columns (sin, cos) of β / n^(2i/d), i = 0..d/2−1, interleaved."""
    k = beta.reshape(-1, 1)
    i = torch.arange(0, d // 2, dtype=k.dtype)
    inner = k / (n ** (2 * i / d))
    out = torch.empty(k.shape[0], d, dtype=k.dtype)
    out[:, 0::2] = torch.sin(inner)
    out[:, 1::2] = torch.cos(inner)
    return out


def famo2o_actor_loss(q: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, log_prob: torch.Tensor,
                      clip: float = 100.0) -> torch.Tensor:
    """The balance-conditioned AWR loss −mean(min(exp(β·(Q − V)), clip)·log π_u(a | s, β)): β per sample (a large β
    leans to improvement, a small one to imitation)."""
    w = torch.clamp(torch.exp((q - v).detach() * beta.reshape(q.shape)), max=clip)
    return -(w * log_prob).mean()


def famo2o_balance_loss(log_prob_beta: torch.Tensor, q_of_action: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """The balance model's SAC-style loss mean(temp·log π_b(β|s) − Q(s, a)), a ∼ π_u(· | s, β)."""
    return (temp.detach() * log_prob_beta - q_of_action).mean()


# ---- networks -------------------------------------------------------------------------------------------------------

def mlp(inp: int, out: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inp, h), nn.ReLU()]
        inp = h
    layers.append(nn.Linear(inp, out))
    return nn.Sequential(*layers)


class TwinQ(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, s, a):
        sa = torch.cat([s, a], -1)
        return self.q1(sa), self.q2(sa)

    def Q1(self, s, a):
        return self.q1(torch.cat([s, a], -1))


class VAE(nn.Module):
    """BCQ-style conditional VAE over actions (A2PR's behaviour model of advantage-positive actions)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.latent = 2 * act_dim
        self.enc = mlp(obs_dim + act_dim, 2 * self.latent, hidden)
        self.dec = mlp(obs_dim + self.latent, act_dim, hidden)

    def forward(self, s, a):
        h = self.enc(torch.cat([s, a], -1))
        mean, log_std = h[:, :self.latent], h[:, self.latent:].clamp(-4, 15)
        std = log_std.exp()
        z = mean + std * torch.randn_like(std)
        return self.decode(s, z), mean, std

    def decode(self, s, z=None):
        if z is None:
            z = torch.randn(s.shape[0], self.latent).clamp(-0.5, 0.5)
        return torch.tanh(self.dec(torch.cat([s, z], -1)))


def _soft_update(net: nn.Module, target: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for p, tp in zip(net.parameters(), target.parameters()):
            tp.mul_(1 - tau).add_(tau * p)


class _Agent:
    """Modules and optimizers by name; state_dict() is plain data (tensors, numbers) for entropo.checkpoint."""

    modules: dict[str, nn.Module]
    optims: dict[str, torch.optim.Optimizer]
    total_it: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optims": {k: o.state_dict() for k, o in self.optims.items()}, "total_it": self.total_it}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        self.total_it = int(state["total_it"])


class TD3BC(_Agent):
    """TD3+BC (arXiv 2106.06860); :class:`A2PR` overrides the BC term. Actions live in [−1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(128, 128), lr: float = 3e-4, alpha: float = 2.5,
                 gamma: float = 0.99, tau: float = 0.005, policy_noise: float = 0.2, noise_clip: float = 0.5,
                 policy_freq: int = 2):
        self.actor = mlp(obs_dim, act_dim, hidden)
        self.critic = TwinQ(obs_dim, act_dim, hidden)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.modules = {"actor": self.actor, "critic": self.critic, "actor_t": self.actor_t,
                        "critic_t": self.critic_t}
        self.optims = {"actor": torch.optim.Adam(self.actor.parameters(), lr=lr),
                       "critic": torch.optim.Adam(self.critic.parameters(), lr=lr)}
        self.alpha, self.gamma, self.tau = alpha, gamma, tau
        self.policy_noise, self.noise_clip, self.policy_freq = policy_noise, noise_clip, policy_freq

    def pi(self, s: torch.Tensor, target: bool = False) -> torch.Tensor:
        return torch.tanh((self.actor_t if target else self.actor)(s))

    @torch.no_grad()
    def act(self, s: torch.Tensor) -> torch.Tensor:
        return self.pi(s)

    def _critic_step(self, s, a, r, s2, nd) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            noise = (torch.randn_like(a) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            a2 = (self.pi(s2, target=True) + noise).clamp(-1, 1)
            tq = r + nd * self.gamma * torch.min(*self.critic_t(s2, a2))
        q1, q2 = self.critic(s, a)
        loss = F.mse_loss(q1, tq) + F.mse_loss(q2, tq)
        self.optims["critic"].zero_grad()
        loss.backward()
        self.optims["critic"].step()
        return {"loss/critic": loss.item(), "q/data": q1.mean().item()}, a2, tq

    def _extra_step(self, s, a, r, s2, nd, a2, tq) -> dict[str, float]:
        return {}

    def _bc(self, s, a, pi) -> tuple[torch.Tensor, dict[str, float]]:
        return F.mse_loss(pi, a), {}

    def update(self, s, a, r, s2, nd) -> dict[str, float]:
        self.total_it += 1
        out, a2, tq = self._critic_step(s, a, r, s2, nd)
        out.update(self._extra_step(s, a, r, s2, nd, a2, tq))
        if self.total_it % self.policy_freq == 0:
            pi = self.pi(s)
            q = self.critic.Q1(s, pi)
            lam = td3bc_lambda(q, self.alpha)
            bc, info = self._bc(s, a, pi)
            loss = -lam * q.mean() + bc
            self.optims["actor"].zero_grad()
            loss.backward()
            self.optims["actor"].step()
            _soft_update(self.critic, self.critic_t, self.tau)
            _soft_update(self.actor, self.actor_t, self.tau)
            out.update({"loss/actor": loss.item(), "loss/bc": bc.item(), "lambda": lam.item(), **info})
        return out


class A2PR(TD3BC):
    """A2PR (arXiv 2405.19909): TD3+BC with a value net, an advantage-filtered VAE and an advantage-gated BC target."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(128, 128), lr: float = 3e-4, mask: float = 1.0,
                 vae_weight: float = 1.0, vae_lr: float = 1e-3, **kw):
        super().__init__(obs_dim, act_dim, hidden, lr, **kw)
        self.value = mlp(obs_dim, 1, hidden)
        self.vae = VAE(obs_dim, act_dim, hidden)
        self.modules.update({"value": self.value, "vae": self.vae})
        self.optims.update({"value": torch.optim.Adam(self.value.parameters(), lr=lr),
                            "vae": torch.optim.Adam(self.vae.parameters(), lr=vae_lr)})  # official: Adam default lr
        self.mask, self.vae_weight = mask, vae_weight
        self._v = None

    def _extra_step(self, s, a, r, s2, nd, a2, tq) -> dict[str, float]:
        with torch.no_grad():
            t_online = r + nd * self.gamma * torch.min(*self.critic(s2, a2))
            target = torch.min(t_online, tq)
        v = self.value(s)
        vloss = F.mse_loss(v, target)
        self.optims["value"].zero_grad()
        vloss.backward()
        self.optims["value"].step()
        self._v = v.detach()  # the value before its update, as the official actor step uses it
        recon, mean, std = self.vae(s, a)
        with torch.no_grad():
            pos = (self.critic.Q1(s, a) > self._v).to(a.dtype)
        recon_loss = (self.vae_weight * pos * torch.square(recon - a)).mean()
        kl = -0.5 * (1 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2)).mean()
        loss = recon_loss + 0.5 * kl
        self.optims["vae"].zero_grad()
        loss.backward()
        self.optims["vae"].step()
        return {"loss/value": vloss.item(), "loss/vae": loss.item(), "vae/positive_share": pos.mean().item()}

    def _bc(self, s, a, pi) -> tuple[torch.Tensor, dict[str, float]]:
        v = self._v
        recon_pi, _, _ = self.vae(s, pi)
        with torch.no_grad():
            adv_data = self.critic.Q1(s, a) - v
            adv_vae = self.critic.Q1(s, recon_pi) - v
        target, weight = a2pr_bc_target(a, recon_pi, adv_data, adv_vae, self.mask)
        bc = (torch.square(pi - target) * weight).mean()
        return bc, {"a2pr/use_vae_share": (adv_vae >= adv_data).float().mean().item(),
                    "a2pr/weight_mean": weight.mean().item(), "a2pr/gated_share": (weight == 0).float().mean().item()}

    def update(self, s, a, r, s2, nd) -> dict[str, float]:
        out = super().update(s, a, r, s2, nd)
        for p in self.vae.parameters():  # the BC gradient that reached the VAE is not applied (actor step only)
            p.grad = None
        return out


class GaussianActor(nn.Module):
    """IQL's actor: Gaussian with a tanh-squashed mean and a state-independent log std (not a tanh distribution)."""

    def __init__(self, inp: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(inp, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def dist(self, x: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(torch.tanh(self.net(x)), self.log_std.clamp(-5.0, 2.0).exp())


class BalanceModel(nn.Module):
    """π_b(β | s): a tanh-Gaussian (state-independent std) mapped affinely onto [β_min, β_max]."""

    def __init__(self, obs_dim: int, hidden: tuple[int, ...], beta_range: tuple[float, float]):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden)
        self.log_std = nn.Parameter(torch.zeros(1))
        self.lo, self.hi = float(beta_range[0]), float(beta_range[1])

    def to_beta(self, b: torch.Tensor) -> torch.Tensor:
        return (b + 1.0) / 2.0 * (self.hi - self.lo) + self.lo

    def sample(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(β, log π_b of the squashed sample), reparameterised."""
        mean, std = self.net(s), self.log_std.clamp(-5.0, 2.0).exp()
        u = mean + std * torch.randn_like(mean)
        logp = torch.distributions.Normal(mean, std).log_prob(u) - 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        return self.to_beta(torch.tanh(u)), logp.sum(-1, keepdim=True)

    def mode(self, s: torch.Tensor) -> torch.Tensor:
        return self.to_beta(torch.tanh(self.net(s)))


class FamO2O(_Agent):
    """FamO2O on IQL (arXiv 2310.17966): universal actor π_u(a | s, β), balance model π_b(β | s), IQL critics."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(128, 128), lr: float = 3e-4, gamma: float = 0.99,
                 tau: float = 0.005, expectile: float = 0.7, beta_range=(1.0, 5.0), sincos_n: float = 10000.0,
                 sincos_d: int = 6, init_temp: float = 1.0, target_entropy: float = -0.5):
        self.actor = GaussianActor(obs_dim + sincos_d, act_dim, hidden)
        self.balance = BalanceModel(obs_dim, hidden, beta_range)
        self.critic = TwinQ(obs_dim, act_dim, hidden)
        self.critic_t = copy.deepcopy(self.critic)
        self.value = mlp(obs_dim, 1, hidden)
        self.log_temp = nn.Parameter(torch.tensor([math.log(init_temp)]))
        self.temp_holder = nn.ParameterDict({"log_temp": self.log_temp})
        self.modules = {"actor": self.actor, "balance": self.balance, "critic": self.critic,
                        "critic_t": self.critic_t, "value": self.value, "temp": self.temp_holder}
        self.optims = {"actor": torch.optim.Adam(self.actor.parameters(), lr=lr),
                       "balance": torch.optim.Adam(self.balance.parameters(), lr=lr),
                       "critic": torch.optim.Adam(self.critic.parameters(), lr=lr),
                       "value": torch.optim.Adam(self.value.parameters(), lr=lr),
                       "temp": torch.optim.Adam([self.log_temp], lr=lr)}
        self.gamma, self.tau, self.expectile = gamma, tau, expectile
        self.beta_range, self.n, self.d = tuple(beta_range), sincos_n, sincos_d
        self.target_entropy = target_entropy
        self.random_beta = True  # offline pre-training: β uniform in the range (official: i < 1)
        self.fixed_beta: float | None = None  # set for a fixed-balance baseline (online phase)

    def _inp(self, s: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return torch.cat([s, sincos_encoding(beta, self.n, self.d)], -1)

    @torch.no_grad()
    def act(self, s: torch.Tensor, beta: float | None = None, sample: bool = False) -> torch.Tensor:
        b = self.balance.mode(s) if beta is None else torch.full((s.shape[0], 1), float(beta))
        dist = self.actor.dist(self._inp(s, b))
        return (dist.sample() if sample else dist.mean).clamp(-1, 1)

    @torch.no_grad()
    def beta_of(self, s: torch.Tensor) -> torch.Tensor:
        return self.balance.mode(s)

    def update(self, s, a, r, s2, nd) -> dict[str, float]:
        self.total_it += 1
        with torch.no_grad():
            q_t = torch.min(*self.critic_t(s, a))
        v = self.value(s)
        vloss = expectile_loss(q_t - v, self.expectile)
        self.optims["value"].zero_grad()
        vloss.backward()
        self.optims["value"].step()
        # balance model (pathwise through the frozen universal actor and target critic)
        beta, logp = self.balance.sample(s)
        dist = self.actor.dist(self._inp(s, beta))
        a_pi = dist.rsample()
        temp = self.log_temp.exp()
        bloss = famo2o_balance_loss(logp, torch.min(*self.critic_t(s, a_pi)), temp)
        self.optims["balance"].zero_grad()
        bloss.backward()
        self.optims["balance"].step()
        entropy = -logp.mean().detach()
        tloss = (self.log_temp.exp() * (entropy - self.target_entropy)).mean()
        self.optims["temp"].zero_grad()
        tloss.backward()
        self.optims["temp"].step()
        for k in ("actor", "critic", "value"):  # the balance step's gradients reaching other nets are not applied
            self.optims[k].zero_grad()
        # universal actor (AWR with per-sample β)
        with torch.no_grad():
            v_new = self.value(s)
            if self.fixed_beta is not None:
                b = torch.full((s.shape[0], 1), float(self.fixed_beta))
            elif self.random_beta:
                lo, hi = self.beta_range
                b = lo + (hi - lo) * torch.rand(s.shape[0], 1)
            else:
                b = self.balance.sample(s)[0]
        logp_a = self.actor.dist(self._inp(s, b)).log_prob(a).sum(-1, keepdim=True)
        aloss = famo2o_actor_loss(q_t, v_new, b, logp_a)
        self.optims["actor"].zero_grad()
        aloss.backward()
        self.optims["actor"].step()
        # critic (IQL: r + γ·V(s'))
        with torch.no_grad():
            tq = r + nd * self.gamma * self.value(s2)
        q1, q2 = self.critic(s, a)
        closs = F.mse_loss(q1, tq) + F.mse_loss(q2, tq)
        self.optims["critic"].zero_grad()
        closs.backward()
        self.optims["critic"].step()
        _soft_update(self.critic, self.critic_t, self.tau)
        return {"loss/value": vloss.item(), "loss/balance": bloss.item(), "loss/actor": aloss.item(),
                "loss/critic": closs.item(), "balance/temp": temp.item(), "balance/beta_mean": beta.mean().item(),
                "balance/entropy": entropy.item()}


# ---- data, evaluation, loop -----------------------------------------------------------------------------------------

class Buffer:
    """Transitions as tensors; states normalised with the offline dataset's mean/std, actions rescaled to [−1, 1]."""

    def __init__(self, data: dict[str, np.ndarray], max_action: float, reward_scale: float = 1.0):
        obs = data["observations"].astype(np.float32)
        self.mean = obs.mean(0)
        self.std = obs.std(0) + 1e-3
        self.max_action = max_action
        self.reward_scale = reward_scale
        self.s = self.norm(obs)
        self.a = torch.as_tensor(data["actions"] / max_action, dtype=torch.float32)
        self.r = torch.as_tensor(data["rewards"] * reward_scale, dtype=torch.float32).reshape(-1, 1)
        self.s2 = self.norm(data["next_observations"].astype(np.float32))
        self.nd = torch.as_tensor(1.0 - data["terminals"], dtype=torch.float32).reshape(-1, 1)

    def norm(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.asarray(obs, np.float32) - self.mean) / self.std, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.s)

    def sample(self, rng: np.random.Generator, batch: int):
        idx = torch.as_tensor(rng.integers(0, len(self), size=batch))
        return self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.nd[idx]

    def add(self, s, a, r, s2, nd) -> None:
        self.s = torch.cat([self.s, self.norm(s[None])])
        self.a = torch.cat([self.a, torch.as_tensor(np.asarray(a, np.float32)[None] / self.max_action)])
        self.r = torch.cat([self.r, torch.tensor([[float(r) * self.reward_scale]])])
        self.s2 = torch.cat([self.s2, self.norm(s2[None])])
        self.nd = torch.cat([self.nd, torch.tensor([[1.0 - float(nd)]])])

    def online_state(self, n_offline: int) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k)[n_offline:].clone() for k in ("s", "a", "r", "s2", "nd")}

    def load_online(self, state: dict[str, torch.Tensor], n_offline: int) -> None:
        for k, v in state.items():
            setattr(self, k, torch.cat([getattr(self, k)[:n_offline], v]))


EVAL_SEED = 10_000


def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], buffer: Buffer, episodes: int = 5,
             env_id: str = "Pendulum-v1", seed0: int = EVAL_SEED) -> float:
    """Mean undiscounted return of a deterministic policy over ``episodes`` episodes (reset seeds seed0 + i, the
    same for every method)."""
    from entropo.extras import require

    gym = require("gymnasium", "classic", "offline RL evaluation")
    env = gym.make(env_id)
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed0 + i)
        done = False
        while not done:
            a = policy(buffer.norm(obs[None]))[0].numpy() * buffer.max_action
            obs, r, term, trunc, _ = env.step(a.astype(np.float32))
            total += float(r)
            done = term or trunc
    env.close()
    return total / episodes


def _rng_state(gen: np.random.Generator) -> dict[str, Any]:
    return {"np": gen.bit_generator.state, "torch": torch.get_rng_state()}


def _set_rng_state(gen: np.random.Generator, st: dict[str, Any]) -> None:
    gen.bit_generator.state = st["np"]
    torch.set_rng_state(st["torch"])


def train_loop(out_dir: Path, agent: _Agent, buffer: Buffer, seed: int, steps: int, batch_size: int,
               eval_fn: Callable[[], dict[str, float]], eval_every: int, ckpt_every: int, console=print,
               log_every: int = 100, on_step: Callable[[int], None] | None = None,
               extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None) -> list[dict[str, Any]]:
    """Gradient steps 1..steps with MetricsLogger metrics, evaluations every ``eval_every`` steps and a plain-data
    checkpoint every ``ckpt_every`` steps: a rerun into the same ``out_dir`` resumes from the newest checkpoint and
    reproduces the uninterrupted run exactly (the agent, the batch RNG, torch's RNG and the eval history are saved).
    ``on_step(step)`` runs before each update (the online phase collects there); ``extra_state`` = (get, set) adds
    its own plain data to the checkpoint. Returns the evaluation history."""
    from entropo import checkpoint
    from entropo.logging import MetricsLogger

    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    start, evals = 0, []
    path = checkpoint.latest(out_dir)
    if path is not None:
        st = checkpoint.load(path)
        agent.load_state_dict(st["agent"])
        _set_rng_state(gen, st["rng"])
        evals = list(st["evals"])
        start = int(st["step"])
        if extra_state is not None:
            extra_state[1](st["extra"])
        console(f"resumed from {path} (step {start})")
    logger = MetricsLogger(out_dir, tensorboard=False)
    logger.truncate_after(start)
    for step in range(start + 1, steps + 1):
        if on_step is not None:
            on_step(step)
        info = agent.update(*buffer.sample(gen, batch_size))
        row: dict[str, Any] = {}
        if step % log_every == 0:
            row.update(info)
        if step % eval_every == 0 or step == steps:
            torch_state = torch.get_rng_state()  # evaluation must not move the training RNG
            ev = eval_fn()
            torch.set_rng_state(torch_state)
            evals.append({"step": step, **ev})
            row.update(ev)
            console(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in ev.items()))
        if row:
            logger.log(step, row)
        if step % ckpt_every == 0 or step == steps:
            state = {"step": step, "agent": agent.state_dict(), "rng": _rng_state(gen), "evals": evals}
            if extra_state is not None:
                state["extra"] = extra_state[0]()
            checkpoint.save(out_dir, step, state)
    logger.close()
    return evals


def _pendulum(seed: int, dataset: dict | None):
    from entropo.classic.offline_data import load_or_collect

    return load_or_collect("pendulum", seed, **(dataset or {}))


def _summary(evals: list[dict[str, Any]], key: str = "eval/return") -> dict[str, float]:
    vals = [e[key] for e in evals if key in e]
    tail = vals[-max(1, len(vals) // 3):]
    return {"return_final": float(vals[-1]), "return_last_third": float(np.mean(tail)),
            "return_best": float(np.max(vals))}


@register("program", "offline_td3bc_a2pr", paper=f"{A2PR_PAPER}; {TD3BC_PAPER}")
def offline_program(out_dir: Path, seed: int, console=print, method: str = "a2pr", steps: int = 3000,
                    batch_size: int = 256, hidden: tuple[int, ...] = (128, 128), lr: float = 3e-4,
                    alpha: float = 2.5, mask: float = 1.0, eval_every: int = 500, eval_episodes: int = 5,
                    ckpt_every: int = 1000,
                    dataset: dict | None = None, data_seed: int | None = None) -> dict[str, Any]:
    """TD3+BC (``method: td3bc``) or A2PR (``method: a2pr``) on the mixed expert/random Pendulum dataset; reports the
    evaluation returns (final, mean of the last third of evaluations, best) and the dataset's per-kind returns."""
    torch.set_num_threads(1)
    if method not in ("td3bc", "a2pr"):
        raise ValueError(f"params.method={method!r}: allowed td3bc, a2pr")
    data, info = _pendulum(seed if data_seed is None else data_seed, dataset)
    buffer = Buffer(data, max_action=2.0)
    torch.manual_seed(seed)
    obs_dim, act_dim = buffer.s.shape[1], buffer.a.shape[1]
    agent = (TD3BC(obs_dim, act_dim, tuple(hidden), lr=lr, alpha=alpha) if method == "td3bc"
             else A2PR(obs_dim, act_dim, tuple(hidden), lr=lr, alpha=alpha, mask=mask))
    evals = train_loop(Path(out_dir), agent, buffer, seed, steps, batch_size,
                       lambda: {"eval/return": evaluate(agent.act, buffer, eval_episodes)}, eval_every, ckpt_every,
                       console)
    return {"method": method, **_summary(evals), "evals": evals, "dataset": info["returns"],
            "dataset_sha256": info["sha256"]}


@register("program", "famo2o", paper=FAMO2O_PAPER)
def famo2o_program(out_dir: Path, seed: int, console=print, steps: int = 3000, online_steps: int = 0,
                   online_beta: float | None = None, batch_size: int = 256, hidden: tuple[int, ...] = (128, 128),
                   lr: float = 3e-4, expectile: float = 0.7, beta_range: tuple[float, float] = (1.0, 5.0),
                   fixed_betas: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0), eval_every: int = 1000,
                   eval_episodes: int = 5, ckpt_every: int = 1000, episode_len: int = 200,
                   dataset: dict | None = None, data_seed: int | None = None) -> dict[str, Any]:
    """FamO2O (IQL) on the mixed Pendulum dataset: ``steps`` offline steps (β uniform in ``beta_range``), then
    ``online_steps`` online steps (one env step + one update each; β from the balance model, or fixed at
    ``online_beta`` for the fixed-balance baseline). Every evaluation scores the universal policy with the balance
    model's β(s) and at each fixed β in ``fixed_betas``; online episodes last ``episode_len`` steps. Rewards are
    scaled by 1000 / (max − min dataset episode return) as the official code does for locomotion."""
    from entropo.extras import require

    torch.set_num_threads(1)
    gym = require("gymnasium", "classic", "FamO2O's online phase")
    data, info = _pendulum(seed if data_seed is None else data_seed, dataset)
    ep_returns = [info["returns"][k][m] for k in ("expert", "random") for m in ("min", "max")
                  if info["returns"][k]["n"]]
    scale = 1000.0 / (max(ep_returns) - min(ep_returns))
    buffer = Buffer(data, max_action=2.0, reward_scale=scale)
    n_off = len(buffer)
    torch.manual_seed(seed)
    agent = FamO2O(buffer.s.shape[1], buffer.a.shape[1], tuple(hidden), lr=lr, expectile=expectile,
                   beta_range=tuple(beta_range))

    def eval_fn() -> dict[str, float]:
        out = {"eval/return": evaluate(agent.act, buffer, eval_episodes),
               "eval/beta_mean": float(agent.beta_of(buffer.s[:2000]).mean())}
        for b in fixed_betas:
            out[f"eval/return_beta{b:g}"] = evaluate(lambda s, b=b: agent.act(s, beta=b), buffer, eval_episodes)
        return out

    max_t = episode_len
    env = gym.make("Pendulum-v1", max_episode_steps=max_t)
    online = {"obs": None}

    def on_step(step: int) -> None:
        if step <= steps:
            return
        agent.random_beta = False
        agent.fixed_beta = online_beta
        k = step - steps - 1
        if k % max_t == 0:
            online["obs"], _ = env.reset(seed=seed * 1000 + k // max_t)
        obs = online["obs"]
        a = agent.act(buffer.norm(obs[None]), beta=online_beta, sample=True)[0].numpy() * 2.0
        nxt, r, term, trunc, _ = env.step(a.astype(np.float32))
        buffer.add(obs, a, r, nxt, term)
        online["obs"] = nxt

    if online_steps and (online_steps % max_t or ckpt_every % max_t or steps % max_t):
        raise ValueError(f"params.online_steps={online_steps}, steps={steps}, ckpt_every={ckpt_every}: with an online "
                         f"phase all must be multiples of the episode length {max_t} (checkpoints fall on episode "
                         f"boundaries)")
    extra = (lambda: {"online": buffer.online_state(n_off)}, lambda st: buffer.load_online(st["online"], n_off))
    evals = train_loop(Path(out_dir), agent, buffer, seed, steps + online_steps, batch_size, eval_fn, eval_every,
                       ckpt_every, console, on_step=on_step, extra_state=extra)
    env.close()
    off = [e for e in evals if e["step"] <= steps] or evals
    last = evals[-1]
    fixed = {f"beta{b:g}": last[f"eval/return_beta{b:g}"] for b in fixed_betas}
    best = max(fixed, key=fixed.get)
    return {"return_balance": last["eval/return"], "returns_fixed": fixed, "best_fixed": best,
            "return_best_fixed": fixed[best], "return_balance_offline": off[-1]["eval/return"],
            "beta_mean": last["eval/beta_mean"], "online_beta": online_beta, "evals": evals,
            "dataset": info["returns"], "reward_scale": scale}
