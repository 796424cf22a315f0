"""HIB: PPO with a history encoder and an information-bottleneck auxiliary loss on a randomized CartPole
(a program recipe, ``entropo run hib``).

Paper: "Bridging the Sim-to-Real Gap from the Information Bottleneck Perspective" (He et al.), CoRL 2024,
arXiv 2305.18464. No official code was found for it, so the loss estimator (InfoNCE + beta KL, marked to verify)
could not be checked against one; this is written from the paper's description:

- a history h_t = (s_{t-H+1..t}, a_{t-H..t-1}) (:func:`push_history`) is encoded by q_phi(z | h) = N(mu, diag sigma^2);
- the privileged information e_t (here the episode's physical parameters, known only in simulation) is embedded by
  g_psi(e);
- the IB objective maximises I(z; g(e)) - beta I(z; h), estimated as an InfoNCE term on reparameterised samples
  z ~ q (positives: pairs from the same episode, which share e) plus beta * KL(q(z|h) || N(0, I)) (:func:`ib_loss`);
- the actor is pi(a | s_t, z_t), the critic sees e_t (asymmetric), and PPO + lam * IB is trained jointly (one stage).

Reduced: the actor reads z = mu(h) (the posterior mean, so the PPO ratio is of a deterministic input); the IB term
samples z. The 200-step time limit ends an episode like a fall (no bootstrap past it). The policy's PPO clip loss is
entropo's :func:`entropo.algorithms.objectives.clipped_surrogate`. Variant ``oracle`` (the actor reads e itself) is a
non-deployable reference; the paper's two-stage teacher-student distillation baseline is not implemented.

The environment: CartPole (the Gymnasium task's equations and limits, 200 steps) with per-episode randomised pole
mass, pole half-length, actuator force, a constant lateral wind on the cart and the motor's polarity (+1, or -1: the
two actions swapped) (privileged: the state shows none of them; a memoryless policy cannot tell the polarity, a
history of (state, action) can). Training draws them from the train box; the held-out split draws from a wider box
and keeps only parameter sets with at least one value outside the train box (unseen dynamics, never drawn in
training).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from entropo.algorithms.objectives import clipped_surrogate, importance_ratio
from entropo.classic.ogsrl import single_threaded
from entropo.registry import register

PAPER = ("Bridging the Sim-to-Real Gap from the Information Bottleneck Perspective (He et al.), CoRL 2024, "
         "arXiv 2305.18464")

# ---- randomised CartPole ---------------------------------------------------------------------------------------------

PARAMS = ("masspole", "length", "force_mag", "wind", "polarity")
TRAIN_BOX = {"masspole": (0.05, 0.5), "length": (0.2, 0.8), "force_mag": (5.0, 12.0), "wind": (-3.5, 3.5),
             "polarity": (-1.0, 1.0)}
HELDOUT_BOX = {"masspole": (0.05, 1.0), "length": (0.1, 1.2), "force_mag": (5.0, 14.0), "wind": (-5.0, 5.0),
               "polarity": (-1.0, 1.0)}
MASSCART, GRAVITY, TAU = 1.0, 9.8, 0.02
X_LIMIT, THETA_LIMIT = 2.4, 12 * 2 * math.pi / 360
MAX_STEPS = 200
OBS_DIM, N_ACT, PRIV_DIM = 4, 2, len(PARAMS)


def sample_params(n: int, split: str, rng: np.random.Generator) -> np.ndarray:
    """[n, 5] parameters (masspole, length, force_mag, wind, polarity). The motor's polarity is +1 or -1 with
    probability 1/2 in both splits (-1: the actions are swapped, as a miswired actuator); the other four are uniform
    in TRAIN_BOX (``train``) or in HELDOUT_BOX (``heldout``), where any set lying entirely inside TRAIN_BOX is
    rejected (so every held-out set is unseen)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout' (got {split!r})")
    box = TRAIN_BOX if split == "train" else HELDOUT_BOX
    lo, hi = (np.array([box[k][i] for k in PARAMS[:4]]) for i in (0, 1))
    out = np.zeros((0, len(PARAMS)))
    while len(out) < n:
        p = np.concatenate([rng.uniform(lo, hi, (2 * n, 4)), rng.choice([-1.0, 1.0], (2 * n, 1))], 1)
        out = np.concatenate([out, p if split == "train" else p[~in_train_box(p)]])
    return out[:n]


def in_train_box(p: np.ndarray) -> np.ndarray:
    """Rows whose (masspole, length, force_mag, wind) all lie in TRAIN_BOX (the polarity is shared by the splits)."""
    p = p[..., :4]
    lo, hi = (np.array([TRAIN_BOX[k][i] for k in PARAMS[:4]]) for i in (0, 1))
    return ((p >= lo) & (p <= hi)).all(-1)


def privileged(p: np.ndarray) -> np.ndarray:
    """The privileged vector e: parameters scaled so the train box is [-1, 1]^5."""
    lo, hi = (np.array([TRAIN_BOX[k][i] for k in PARAMS]) for i in (0, 1))
    return 2.0 * (p - lo) / (hi - lo) - 1.0


def cartpole_step(s: np.ndarray, a: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched Euler step of CartPole (Gymnasium's equations) with per-row (masspole, half-length, force, wind,
    polarity):
    s [N, 4] = (x, x_dot, theta, theta_dot), a [N] in {0, 1}; returns (s', terminated)."""
    x, x_dot, th, th_dot = s.T
    mp, length, f, wind, polarity = p.T
    total = MASSCART + mp
    force = polarity * np.where(a == 1, f, -f) + wind
    cos, sin = np.cos(th), np.sin(th)
    temp = (force + mp * length * th_dot ** 2 * sin) / total
    th_acc = (GRAVITY * sin - cos * temp) / (length * (4.0 / 3.0 - mp * cos ** 2 / total))
    x_acc = temp - mp * length * th_acc * cos / total
    s2 = np.stack([x + TAU * x_dot, x_dot + TAU * x_acc, th + TAU * th_dot, th_dot + TAU * th_acc], 1)
    done = (np.abs(s2[:, 0]) > X_LIMIT) | (np.abs(s2[:, 2]) > THETA_LIMIT)
    return s2, done


_ENV_CLASS = None


def cartpole_env_class():
    """The Gymnasium class of the randomised CartPole (built on first use: Gymnasium is the optional extra)."""
    global _ENV_CLASS
    if _ENV_CLASS is not None:
        return _ENV_CLASS
    from entropo.extras import require

    gym = require("gymnasium", "classic", "the HIB randomised CartPole")

    class RandomizedCartPoleEnv(gym.Env):
        """CartPole-v1 dynamics with per-episode random (masspole, length, force_mag, wind) from the ``split`` box
        (``reset(options={"split": "heldout"})``); ``info["privileged"]`` is e (simulation only). Reward 1 per step,
        200 steps. An action other than 0/1 is read as 0 and flagged in ``info["invalid_action"]``."""

        metadata = {"render_modes": []}

        def __init__(self, split: str = "train"):
            self.split = split
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
            self.action_space = gym.spaces.Discrete(N_ACT)
            self.params = np.zeros(PRIV_DIM)
            self._s, self._t = np.zeros(OBS_DIM), 0

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            super().reset(seed=seed)
            split = (options or {}).get("split", self.split)
            self.params = sample_params(1, split, self.np_random)[0]
            self._s, self._t = self.np_random.uniform(-0.05, 0.05, OBS_DIM), 0
            return self._s.copy(), {"privileged": privileged(self.params[None])[0], "params": self.params.copy()}

        def step(self, action):
            try:
                a = int(action)
                invalid = a not in (0, 1) or float(action) != a
            except (TypeError, ValueError):
                a, invalid = 0, True
            if invalid:
                a = 0
            s2, done = cartpole_step(self._s[None], np.array([a]), self.params[None])
            self._s, self._t = s2[0], self._t + 1
            return (self._s.copy(), 1.0, bool(done[0]), self._t >= MAX_STEPS,
                    {"privileged": privileged(self.params[None])[0], "invalid_action": invalid})

    _ENV_CLASS = RandomizedCartPoleEnv
    return RandomizedCartPoleEnv


class CartPoleBatch:
    """N randomised CartPoles stepped together (the training and evaluation path; same dynamics as the Gymnasium
    class). Finished episodes restart at once with fresh parameters; ``state_dict`` holds everything as plain data."""

    def __init__(self, n: int, split: str, seed: int):
        self.n, self.split = n, split
        self.rng = np.random.default_rng(seed)
        self.s = np.zeros((n, OBS_DIM)); self.p = np.zeros((n, PRIV_DIM)); self.t = np.zeros(n, dtype=np.int64)
        self.episode = np.zeros(n, dtype=np.int64)  # a global episode id per env (for the IB positives)
        self._next_id = 0
        self._reset(np.ones(n, dtype=bool))

    def _reset(self, mask: np.ndarray) -> None:
        k = int(mask.sum())
        if k == 0:
            return
        self.s[mask] = self.rng.uniform(-0.05, 0.05, (k, OBS_DIM))
        self.p[mask] = sample_params(k, self.split, self.rng)
        self.t[mask] = 0
        self.episode[mask] = np.arange(self._next_id, self._next_id + k)
        self._next_id += k

    def step(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (reward, done); done rows are already reset (self.s is the new episode's first state)."""
        self.s, term = cartpole_step(self.s, a, self.p)
        self.t += 1
        done = term | (self.t >= MAX_STEPS)
        self._reset(done)
        return np.ones(self.n), done

    def state_dict(self) -> dict[str, Any]:
        st = self.rng.bit_generator.state
        return {"s": torch.from_numpy(self.s.copy()), "p": torch.from_numpy(self.p.copy()),
                "t": torch.from_numpy(self.t.copy()), "episode": torch.from_numpy(self.episode.copy()),
                "next_id": self._next_id, "rng": [str(st["state"]["state"]), str(st["state"]["inc"]),
                                                  int(st["has_uint32"]), int(st["uinteger"])]}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.s, self.p = d["s"].numpy().copy(), d["p"].numpy().copy()
        self.t, self.episode = d["t"].numpy().copy(), d["episode"].numpy().copy()
        self._next_id = d["next_id"]
        st, inc, has, uint = d["rng"]
        self.rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": int(st), "inc": int(inc)},
                                        "has_uint32": has, "uinteger": uint}


# ---- history, IB loss ------------------------------------------------------------------------------------------------

def push_history(hist: np.ndarray, obs: np.ndarray, prev_action: np.ndarray, new_episode: np.ndarray) -> np.ndarray:
    """Slide the window: hist [N, H, 5] holds (s_tau, a_{tau-1}) for the last H steps, oldest first; the newest
    entry is (obs, 2 prev_action - 1). Rows with ``new_episode`` are cleared first (zero padding, and no previous
    action: its slot is 0), so a window never mixes two episodes."""
    hist = hist.copy()
    hist[new_episode] = 0.0
    prev = np.where(new_episode, 0.0, 2.0 * prev_action - 1.0)
    hist[:, :-1] = hist[:, 1:]
    hist[:, -1] = np.concatenate([obs, prev[:, None]], 1)
    return hist


def gaussian_kl_standard(mu: Tensor, log_std: Tensor) -> Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per row: 0.5 * sum(mu^2 + sigma^2 - 1 - 2 log sigma)."""
    return 0.5 * (mu ** 2 + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(-1)


def info_nce(z: Tensor, g: Tensor, groups: Tensor, temperature: float = 0.2) -> Tensor:
    """Multi-positive InfoNCE: -mean_i log(sum_{j: group_j = group_i} e^{s_ij} / sum_j e^{s_ij}), s_ij the cosine
    similarity of z_i and g_j over ``temperature``. Pairs of the same episode share e, so they are all positives."""
    s = nn.functional.normalize(z, dim=-1) @ nn.functional.normalize(g, dim=-1).T / temperature
    pos = groups[:, None] == groups[None, :]
    return -(torch.logsumexp(s.masked_fill(~pos, -math.inf), 1) - torch.logsumexp(s, 1)).mean()


def ib_loss(mu: Tensor, log_std: Tensor, g: Tensor, groups: Tensor, beta: float, temperature: float = 0.2,
            noise: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The HIB auxiliary loss: InfoNCE(z, g(e)) + beta * mean KL(q(z|h) || N(0, I)), z = mu + sigma * noise."""
    if noise is None:
        noise = torch.randn_like(mu)
    z = mu + log_std.exp() * noise
    nce, kl = info_nce(z, g, groups, temperature), gaussian_kl_standard(mu, log_std).mean()
    return nce + beta * kl, {"ib/nce": float(nce.detach()), "ib/kl": float(kl.detach())}


# ---- networks, PPO ---------------------------------------------------------------------------------------------------

def _mlp(i: int, o: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, o))


VARIANTS = ("ppo", "ppo_history", "hib", "oracle")


class Agent(nn.Module):
    """``ppo``: actor/critic on the state. ``ppo_history``: + history encoder (trained by PPO only). ``hib``: +
    the IB loss and a privileged critic. ``oracle``: actor and critic see e itself (not deployable: a reference)."""

    def __init__(self, variant: str, history: int = 8, z_dim: int = 4, hidden: int = 64):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)} (got {variant!r})")
        self.variant, self.z_dim = variant, z_dim
        uses_z = variant in ("ppo_history", "hib")
        extra = z_dim if uses_z else PRIV_DIM if variant == "oracle" else 0
        self.encoder = _mlp(history * (OBS_DIM + 1), 2 * z_dim, hidden) if uses_z else None
        self.priv_embed = _mlp(PRIV_DIM, z_dim, 32) if variant == "hib" else None
        self.actor = _mlp(OBS_DIM + extra, N_ACT, hidden)
        critic_in = OBS_DIM + extra + (PRIV_DIM if variant == "hib" else 0)
        self.critic = _mlp(critic_in, 1, hidden)

    def encode(self, hist: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder(hist.flatten(1))
        return out[:, :self.z_dim], out[:, self.z_dim:].clamp(-5.0, 2.0)

    def forward(self, obs: Tensor, hist: Tensor, e: Tensor):
        """(logits, value, (mu, log_std) or None)."""
        post = None
        if self.encoder is not None:
            post = self.encode(hist)
            x = torch.cat([obs, post[0]], 1)
        elif self.variant == "oracle":
            x = torch.cat([obs, e], 1)
        else:
            x = obs
        v_in = torch.cat([x, e], 1) if self.variant == "hib" else x
        return self.actor(x), self.critic(v_in).squeeze(-1), post


def gae(rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over [T, N]; ``dones[t]`` ends the episode after step t (no bootstrap)."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(len(rewards))):
        nxt = last_value if t == len(rewards) - 1 else values[t + 1]
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * nxt * live - values[t]
        running = delta + gamma * lam * live * running
        adv[t] = running
    return adv, adv + values


def evaluate(agent: Agent, split: str, episodes: int, seed: int, history: int) -> float:
    """Mean return of the greedy policy (argmax, z = mu) over ``episodes`` fresh episodes of ``split``."""
    env = CartPoleBatch(episodes, split, seed)
    hist = push_history(np.zeros((episodes, history, OBS_DIM + 1)), env.s, np.zeros(episodes),
                        np.ones(episodes, dtype=bool))
    alive = np.ones(episodes, dtype=bool)
    ret = np.zeros(episodes)
    for _ in range(MAX_STEPS):
        with torch.no_grad():
            logits, _, _ = agent(torch.tensor(env.s, dtype=torch.float32), torch.tensor(hist, dtype=torch.float32),
                                 torch.tensor(privileged(env.p), dtype=torch.float32))
        a = logits.argmax(-1).numpy()
        r, done = env.step(a)  # finished rows restart; ``alive`` stops counting them
        ret += r * alive
        alive &= ~done
        hist = push_history(hist, env.s, a, done)
        if not alive.any():
            break
    return float(ret.mean())


@register("program", "hib", paper=PAPER)
@single_threaded
def hib_program(out_dir, seed: int, console, variant: str = "hib", num_envs: int = 16, rollout: int = 128,
                iterations: int = 60, history: int = 8, z_dim: int = 4, lr: float = 1e-3, epochs: int = 4,
                minibatch: int = 512, gamma: float = 0.99, gae_lambda: float = 0.95, clip: float = 0.2,
                ent_coef: float = 0.01, vf_coef: float = 0.5, ib_coef: float = 0.1, ib_beta: float = 1e-3,
                ib_temperature: float = 0.2, eval_episodes: int = 100, checkpoint_every: int = 10) -> dict:
    """Train one variant (ppo / ppo_history / hib / oracle) with PPO on the train box, then report the greedy
    return on the train box and on the held-out (unseen) box. Resumes from OUT's newest checkpoint identically."""
    from entropo import checkpoint
    from entropo.logging import MetricsLogger

    if variant not in VARIANTS:
        raise ValueError(f"params.variant: {variant!r} is unknown; use one of {', '.join(VARIANTS)}")
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    agent = Agent(variant, history, z_dim)
    opt = torch.optim.Adam(agent.parameters(), lr=lr)
    env = CartPoleBatch(num_envs, "train", seed)
    hist = push_history(np.zeros((num_envs, history, OBS_DIM + 1)), env.s, np.zeros(num_envs),
                        np.ones(num_envs, dtype=bool))
    ep_ret, finished = np.zeros(num_envs), []
    start = 0
    point, state = checkpoint.resume_point(out_dir, warn=console)
    if state is not None:
        agent.load_state_dict(state["agent"]); opt.load_state_dict(state["opt"]); env.load_state_dict(state["env"])
        hist, ep_ret = state["hist"].numpy().copy(), state["ep_ret"].numpy().copy()
        checkpoint.set_rng_state(state["rng"])
        start = state["iteration"]
        console(f"  resumed from {point.name} (iteration {start})")
    log = MetricsLogger(out_dir, tensorboard=False)
    log.truncate_after(start - 1)
    for it in range(start, iterations):
        buf: dict[str, list] = {k: [] for k in ("obs", "hist", "e", "group", "act", "logp", "val", "rew", "done")}
        finished = []
        for _ in range(rollout):
            obs_t = torch.tensor(env.s, dtype=torch.float32)
            hist_t = torch.tensor(hist, dtype=torch.float32)
            e_t = torch.tensor(privileged(env.p), dtype=torch.float32)
            with torch.no_grad():
                logits, value, _ = agent(obs_t, hist_t, e_t)
                dist = torch.distributions.Categorical(logits=logits)
                a = dist.sample()
            for k, v in (("obs", obs_t), ("hist", hist_t), ("e", e_t), ("group", torch.from_numpy(env.episode.copy())),
                         ("act", a), ("logp", dist.log_prob(a)), ("val", value)):
                buf[k].append(v)
            r, done = env.step(a.numpy())
            ep_ret += r
            finished += ep_ret[done].tolist()
            ep_ret[done] = 0.0
            hist = push_history(hist, env.s, a.numpy(), done)
            buf["rew"].append(torch.tensor(r, dtype=torch.float32))
            buf["done"].append(torch.tensor(done, dtype=torch.float32))
        b = {k: torch.stack(v) for k, v in buf.items()}
        with torch.no_grad():
            _, last_v, _ = agent(torch.tensor(env.s, dtype=torch.float32), torch.tensor(hist, dtype=torch.float32),
                                 torch.tensor(privileged(env.p), dtype=torch.float32))
        adv, ret = gae(b["rew"], b["val"], b["done"], last_v, gamma, gae_lambda)
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in b.items()}
        adv, ret = adv.reshape(-1), ret.reshape(-1)
        stats: dict[str, list[float]] = {}
        for _ in range(epochs):
            for mb in torch.randperm(len(adv)).split(minibatch):
                logits, value, post = agent(flat["obs"][mb], flat["hist"][mb], flat["e"][mb])
                dist = torch.distributions.Categorical(logits=logits)
                a_mb = adv[mb]
                a_mb = (a_mb - a_mb.mean()) / (a_mb.std() + 1e-8)
                pg = clipped_surrogate(importance_ratio(dist.log_prob(flat["act"][mb]), flat["logp"][mb]), a_mb,
                                       clip, clip).mean()
                loss = pg + vf_coef * ((value - ret[mb]) ** 2).mean() - ent_coef * dist.entropy().mean()
                if variant == "hib":
                    ib, m = ib_loss(post[0], post[1], agent.priv_embed(flat["e"][mb]), flat["group"][mb], ib_beta,
                                    ib_temperature)
                    loss = loss + ib_coef * ib
                    for k, v in m.items():
                        stats.setdefault(k, []).append(v)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                opt.step()
        row = {"train/episode_return": float(np.mean(finished)) if finished else float("nan"),
               "train/episodes": len(finished), **{k: float(np.mean(v)) for k, v in stats.items()}}
        log.log(it, row)
        if (it + 1) % checkpoint_every == 0 or it + 1 == iterations:
            checkpoint.save(out_dir, it + 1, {"iteration": it + 1, "agent": agent.state_dict(), "opt": opt.state_dict(),
                                              "env": env.state_dict(), "hist": torch.from_numpy(hist.copy()),
                                              "ep_ret": torch.from_numpy(ep_ret.copy()),
                                              "rng": checkpoint.rng_state()})
        if (it + 1) % max(1, iterations // 4) == 0:
            console(f"  [{variant}] it {it + 1}: train episode return {row['train/episode_return']:.1f}")
    log.close()
    train_ret = evaluate(agent, "train", eval_episodes, seed + 1000, history)
    held_ret = evaluate(agent, "heldout", eval_episodes, seed + 2000, history)
    console(f"  [{variant}] greedy return: train box {train_ret:.1f}, held-out box {held_ret:.1f}")
    return {"variant": variant, "train_return": train_ret, "heldout_return": held_ret,
            "env_steps": iterations * rollout * num_envs}
