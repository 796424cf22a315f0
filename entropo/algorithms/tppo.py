"""GAE with a learned value head, and its Extended-GAE form for truncated responses (T-PPO).

Truncated Proximal Policy Optimization, Fan et al., arXiv 2506.15050. Generalized Advantage Estimation: Schulman et
al., arXiv 1506.02438.

- ``generalized_advantages``: per-token GAE over each row's response tokens. A row that ended gets terminal value 0
  after its last token; an unfinished row (a T-PPO window that stopped mid-response, finish reason ``"partial"``)
  bootstraps with the value of the state after its last token — T-PPO's Extended GAE:
  δ_t = r_t + γ V(s_{t+1}) − V(s_t), Â_t = Σ_k (γλ)^k δ_{t+k}, with V(s_l) at the truncation point.
- ``gae`` (advantage): a value critic — a linear layer (or a one-hidden-layer MLP) on the policy's final hidden
  state, detached so the critic never moves the policy — scores V(s_t) for every response token, and the estimator
  returns the (whitened) GAE advantages. The critic (``ValueCritic``) is the component's learned auxiliary
  (``entropo.components.Auxiliary``): the estimator only reads it; the trainer fits it in the update phase's
  auxiliary slot, after this step's advantages used its values and before the policy's optimizer steps (so it reads
  the same pre-update features, and a batch's advantages never see their own targets), and checkpoints its weights
  and Adam state. T-PPO's selective filtering of the value loss is ``fit_on="finished"``: only complete responses,
  with Monte-Carlo returns over all their generated tokens (earlier windows included, via the ``generated_mask`` of
  ``hf_window``); ``fit_on="all"`` is ordinary PPO (GAE returns as targets, bootstrapped ones included). The
  policy-side filtering (only this window's tokens enter the loss) is done by the ``hf_window`` engine's
  ``response_mask``.

Not recovered from the paper (it has no released code): the window length, the λ schedule and the value model's
architecture. Here the critic is a head on the shared trunk's detached features with its own Adam, γ = 1 and λ = 0.95
by default. A hand-computed check (V = [0.5, 0.6, 0.7], V(s_3) = 0.8 → Â = [0.28525, 0.195, 0.1]) is a unit test
(tests/test_tppo.py).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from entropo import ops
from entropo.batch import Batch
from entropo.models.logprobs import decoder_hidden_states
from entropo.registry import register


def generalized_advantages(token_rewards: Tensor, values: Tensor, bootstrap: Tensor, mask: Tensor, gamma: float,
                           lam: float) -> tuple[Tensor, Tensor]:
    """GAE over the masked (contiguous) tokens of each row, right to left.

    token_rewards, values, mask: [B, L] (values[b, t] = V(s_t), the state before token t); bootstrap: [B] the value
    after the row's last masked token (0 for a finished response). Returns (advantages, returns = advantages +
    values), both [B, L] and 0 outside the mask.
    """
    mask = mask.float()
    advantages = torch.zeros_like(values)
    next_value = bootstrap.float()
    next_advantage = torch.zeros_like(next_value)
    for t in range(values.shape[1] - 1, -1, -1):
        on = mask[:, t] > 0
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        advantage_t = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(on, advantage_t, 0.0)
        next_value = torch.where(on, values[:, t], next_value)  # padding after the response keeps the bootstrap
        next_advantage = torch.where(on, advantage_t, next_advantage)
    return advantages, (advantages + values) * mask


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo returns G_t = Σ_k γ^k r_{t+k} over the masked tokens, terminal value 0 ([B, L], 0 off the mask)."""
    zero = torch.zeros(token_rewards.shape[0], device=token_rewards.device)
    returns, _ = generalized_advantages(token_rewards, torch.zeros_like(token_rewards), zero, mask, gamma, 1.0)
    return returns


def state_values_at_tokens(head: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """V(s_t) for every position t from the hidden state at t - 1 (which has read the prefix before token t), and
    V after every position (the hidden state at t itself). hidden: [B, L, H] -> two [B, L] tensors."""
    after = head(hidden).squeeze(-1)  # [B, L] value of the state after token t
    before = torch.nn.functional.pad(after[:, :-1], (1, 0))  # [B, L] value of the state before token t
    return before, after


def outcome_token_rewards(batch: Batch, mask: Tensor) -> Tensor:
    """[B, L]: dense token rewards (if any) plus the outcome reward on each row's last masked token."""
    rewards = torch.zeros_like(mask, dtype=torch.float32) if batch.token_rewards is None else batch.token_rewards * mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).max(-1).values  # [B]
    has_tokens = last >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards = rewards.clone()
    rewards[rows, last[has_tokens]] += batch.rewards[has_tokens].float()
    return rewards


class ValueCritic:
    """V(s_t) from the policy's detached final hidden state, with its own Adam: ``gae``'s learned auxiliary.

    Built lazily (the hidden size is known at the first batch); a state loaded before that is applied when it is
    built. ``fit`` recomputes the batch's features under the current policy (one no-grad pass of the trunk) and
    takes ``value_epochs`` full-batch Adam steps on the masked squared error to its targets."""

    name = "critic"

    def __init__(self, gamma: float, lam: float, value_lr: float, value_epochs: int, value_hidden: int, fit_on: str,
                 seed: int):
        self.gamma, self.lam, self.fit_on, self.seed = gamma, lam, fit_on, seed
        self.value_lr, self.value_epochs, self.value_hidden = value_lr, value_epochs, value_hidden
        self.head: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    def _build(self, hidden_size: int, device: torch.device) -> None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)  # the head's init depends on the seed only (global RNG restored below)
        if self.value_hidden:
            head = nn.Sequential(nn.Linear(hidden_size, self.value_hidden), nn.Tanh(), nn.Linear(self.value_hidden, 1))
        else:
            head = nn.Linear(hidden_size, 1)
            nn.init.zeros_(head.weight)  # V = 0 at the start: the first advantages are plain reward-to-go
            nn.init.zeros_(head.bias)
        torch.random.set_rng_state(gen_state)
        self.head = head.to(device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=self.value_lr)
        if self._pending_state is not None:
            self.head.load_state_dict(self._pending_state["head"])
            self.optimizer.load_state_dict(self._pending_state["optimizer"])
            self._pending_state = None

    @torch.no_grad()
    def features(self, batch: Batch, step_ctx) -> Tensor:
        """[B, L, H] final hidden states of the current policy (no grad), micro-batched like the scoring pass; builds
        the head on first use."""
        chunks = []
        for micro in batch.split(step_ctx.recipe.train.micro_batch_size):
            position_ids = (micro.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            chunks.append(decoder_hidden_states(step_ctx.model, micro.input_ids, micro.attention_mask,
                                                position_ids).float())
        hidden = torch.cat(chunks)
        if self.head is None:
            self._build(hidden.shape[-1], hidden.device)
        return hidden

    @torch.no_grad()
    def estimate(self, batch: Batch, hidden: Tensor) -> dict[str, Tensor]:
        """Extended GAE of ``batch`` with this critic's values: advantages, GAE returns, V(s_t) and the partial rows."""
        mask = batch.response_mask
        partial = ~batch.finished.to(mask.device) if batch.finished is not None else torch.zeros(
            batch.size, dtype=torch.bool, device=mask.device)
        values_before, values_after = state_values_at_tokens(self.head, hidden)
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask > 0, positions, 0).max(-1).values  # [B] last token of this window
        bootstrap = values_after.gather(1, last[:, None]).squeeze(1) * partial.float()  # finished rows: 0
        advantages, returns = generalized_advantages(outcome_token_rewards(batch, mask), values_before, bootstrap,
                                                     mask, self.gamma, self.lam)
        return {"advantages": advantages, "returns": returns, "values": values_before, "partial": partial}

    def fit(self, batch: Batch, step_ctx) -> dict[str, float]:
        """The value loss on ``fit_on`` rows after ``value_epochs`` full-batch Adam steps (nan: nothing fitted)."""
        hidden = self.features(batch, step_ctx)
        if self.fit_on == "finished":
            generated = batch.extras.get("generated_mask", batch.response_mask)
            partial = ~batch.finished.to(generated.device) if batch.finished is not None else torch.zeros(
                batch.size, dtype=torch.bool, device=generated.device)
            fit_mask = generated * (~partial).float()[:, None]
            targets = discounted_returns(outcome_token_rewards(batch, generated), generated, self.gamma)
        else:
            fit_mask, targets = batch.response_mask, self.estimate(batch, hidden)["returns"]
        if fit_mask.sum() == 0 or self.value_epochs == 0:
            return {"value_loss": float("nan")}
        for _ in range(self.value_epochs):
            values, _ = state_values_at_tokens(self.head, hidden)
            loss = ops.masked_mean((values - targets) ** 2, fit_mask)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {"value_loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return {"pending": self._pending_state}
        return copy.deepcopy({"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = state.get("pending") if "pending" in state else state
        if state is None:
            return
        if self.head is None:
            self._pending_state = state  # built lazily once the hidden size is known
        else:
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])


@register("advantage", "gae", paper="T-PPO (Fan et al.), arXiv 2506.15050; GAE (Schulman et al.), arXiv 1506.02438")
class GAE:
    """Per-token GAE / Extended GAE with a value critic on the policy's detached final hidden state.

    gamma, lam: GAE discount and trace parameters (T-PPO: γ = 1). whiten: standardise the advantages over the
    batch's response tokens (PPO practice). value_lr / value_epochs: the critic's Adam step size and full-batch
    steps per training step. value_hidden: 0 = linear head, > 0 = MLP with that many hidden units. fit_on:
    "finished" (T-PPO: value loss on complete responses only, full Monte-Carlo returns) or "all" (GAE returns of
    every row, as in ordinary PPO). seed: the head's initialisation. The critic is ``self.critic``, the component's
    auxiliary (fitted and checkpointed by the trainer); this call only reads it.
    """

    def __init__(self, gamma: float = 1.0, lam: float = 0.95, whiten: bool = True, value_lr: float = 1e-3,
                 value_epochs: int = 8, value_hidden: int = 0, fit_on: str = "finished", seed: int = 0):
        if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
            raise ValueError(f"gae: gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
        if fit_on not in ("finished", "all"):
            raise ValueError(f"gae: fit_on must be 'finished' or 'all', got {fit_on!r}")
        if value_epochs < 0 or value_hidden < 0:
            raise ValueError("gae: value_epochs and value_hidden must be >= 0")
        self.whiten = whiten
        self.critic = ValueCritic(gamma, lam, value_lr, value_epochs, value_hidden, fit_on, seed)

    def auxiliaries(self) -> list[ValueCritic]:
        return [self.critic]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Checkpoints written before the critic became an auxiliary hold it in this component's own state."""
        self.critic.load_state_dict(state)

    def __call__(self, batch: Batch, step_ctx=None) -> tuple[Tensor, dict[str, float]]:
        hidden = self.critic.features(batch, step_ctx)
        est = self.critic.estimate(batch, hidden)
        mask = batch.response_mask
        advantages = est["advantages"]
        if self.whiten and mask.sum() > 1:
            advantages = ops.masked_whiten(advantages, mask) * mask
        metrics = {"value_mean": float(ops.masked_mean(est["values"], mask)),
                   "explained_variance": _explained_variance(est["values"], est["returns"], mask),
                   "bootstrapped_frac": float(est["partial"].float().mean())}
        return advantages, metrics


def _explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens (1 = perfect critic, <= 0 = useless)."""
    if mask.sum() < 2:
        return float("nan")
    var_returns = ops.masked_var(returns, mask)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - ops.masked_var(returns - values, mask) / var_returns)
