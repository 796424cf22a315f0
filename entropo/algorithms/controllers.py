"""Controllers: stateful knobs that change across steps, checkpointed with the run.

A controller sets a coefficient (for instance a regularizer's) from the metrics of the previous steps. It is a class
registered as ``("controller", name)`` with ``value() -> float``, ``update(metrics) -> None`` and
``state_dict()`` / ``load_state_dict()`` so a resumed run continues exactly where it stopped.

Implemented here:
- ``adaptive_kl``: the proportional KL controller of Ziegler et al. 2019, "Fine-Tuning Language Models from Human
  Preferences" (arXiv 1909.08593), used by PPO-RLHF to hold KL(pi || pi_ref) near a target.
- ``adaptive_entropy``: the step controller of Skywork-OR1 (arXiv 2505.22312), also in TRL's GRPOConfig
  (``use_adaptive_entropy``): raise the entropy-bonus coefficient while entropy is below a target, lower it above.
- ``kl_early_stop``: LOOP's stop of the update iterations (Chen et al., "Reinforcement Learning for Long-Horizon
  Interactive LLM Agents", arXiv 2502.01600), named in a recipe's ``train.early_stop``: a controller with a
  ``stop_update(metrics) -> bool`` method, which the trainer asks after each mini-batch's backward pass.
"""

from __future__ import annotations

from typing import Any

from entropo.registry import register


class Controller:
    """Base class: holds ``coef`` and serialises every public attribute."""

    coef: float

    def value(self) -> float:
        return float(self.coef)

    def update(self, metrics: dict[str, float]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


@register("controller", "adaptive_kl", paper="Ziegler et al. 2019, arXiv 1909.08593")
class AdaptiveKL(Controller):
    """coef <- coef * (1 + clip(kl/target - 1, -0.2, 0.2) * n_steps/horizon), reading ``metric`` (default kl_ref)."""

    def __init__(self, init_coef: float = 0.05, target: float = 0.01, horizon: int = 100, metric: str = "kl_ref"):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive_kl: target and horizon must be > 0")
        self.coef, self.target, self.horizon, self.metric = float(init_coef), float(target), int(horizon), metric

    def update(self, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            return
        error = min(max(metrics[self.metric] / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * 1.0 / self.horizon


@register("controller", "adaptive_entropy", paper="Skywork-OR1, arXiv 2505.22312; TRL use_adaptive_entropy")
class AdaptiveEntropy(Controller):
    """coef += delta while entropy < target, coef -= delta otherwise; clamped to [coef_min, coef_max]."""

    def __init__(self, init_coef: float = 0.0, target: float = 0.2, delta: float = 1e-4, coef_min: float = 0.0,
                 coef_max: float = 1e-2, metric: str = "entropy"):
        if coef_min > coef_max:
            raise ValueError("adaptive_entropy: coef_min must be <= coef_max")
        self.coef, self.target, self.delta = float(init_coef), float(target), float(delta)
        self.coef_min, self.coef_max, self.metric = float(coef_min), float(coef_max), metric

    def update(self, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            return
        step = self.delta if metrics[self.metric] < self.target else -self.delta
        self.coef = min(max(self.coef + step, self.coef_min), self.coef_max)


@register("controller", "kl_early_stop", paper="LOOP, arXiv 2502.01600 (high_kl_threshold)")
class KLEarlyStop(Controller):
    """Stop this RL step's update when the KL estimate of a mini-batch exceeds ``threshold``.

    Used as ``train.early_stop: {name: kl_early_stop, params: {threshold: 20}}``. After each mini-batch's gradients
    are accumulated and before its optimizer step, the trainer calls ``stop_update(metrics)`` with that mini-batch's
    metrics; when it returns True the step is **not** taken and the remaining mini-batches and epochs of this RL step
    are skipped (the next RL step starts normally: nothing carries over).

    Checked against apple/ml-loop ``phi_agents/rl/train.py`` ``_gradient_step``: the estimate is
    ``kl_estimate(log_iw) = -mean(log_iw)`` over the mini-batch's rollouts, log_iw the *trajectory* log importance
    weight (sum over its output tokens of log pi_theta - log pi_old), computed in the forward pass whose gradient is
    about to be applied; ``abs(kl) > high_kl_threshold`` (default 20) skips that optimizer step and ends the
    iteration. Here that estimate is the trainer's metric ``actor/kl_old_seq_k1`` (the default ``metric``); any other
    mini-batch metric works too (e.g. ``actor/approx_kl_old``, the token-mean k3 of ``ppo_clip``). The first
    mini-batch of a step is on-policy, so its estimate is ~0 and it always steps.
    ``events`` counts the stops over the run (checkpointed); ``coef`` is the threshold."""

    def __init__(self, threshold: float = 20.0, metric: str = "actor/kl_old_seq_k1", absolute: bool = True):
        if threshold < 0:
            raise ValueError(f"kl_early_stop: threshold must be >= 0 (got {threshold})")
        self.coef, self.metric, self.absolute = float(threshold), metric, bool(absolute)
        self.events = 0
        self.last_value = float("nan")

    def stop_update(self, metrics: dict[str, float]) -> bool:
        if self.metric not in metrics:
            raise ValueError(f"kl_early_stop: metric {self.metric!r} is not among the mini-batch metrics "
                             f"({', '.join(sorted(metrics))}); set train.early_stop.params.metric")
        value = float(metrics[self.metric])
        self.last_value = value
        stop = (abs(value) if self.absolute else value) > self.coef
        self.events += int(stop)
        return stop

    def update(self, metrics: dict[str, float]) -> None:
        return None
