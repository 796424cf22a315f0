"""Extra per-token loss terms (registry kind ``"regularizer"``): ``fn(ctx: TokenContext, **params) ->
(per_token_loss [B, L], metrics)``. The trainer multiplies the loss by the recipe's coefficient and aggregates it
with the recipe's aggregation mode, like the policy loss.

- ``kl``: KL-to-reference loss of GRPO (Shao et al., arXiv 2402.03300; beta = 0.04 with k3), using the k1/k2/k3
  estimators of Schulman (2020), "Approximating KL divergence".
- ``entropy``: entropy bonus (Williams & Peng 1991; the ``entropy_coeff`` term of PPO/verl): loss = -H.
"""

from __future__ import annotations

from torch import Tensor

from entropo import ops
from entropo.registry import register
from entropo.types import TokenContext


@register(
    "regularizer",
    "kl",
    paper="GRPO KL loss (arXiv 2402.03300); estimators: Schulman 2020 'Approximating KL divergence'",
    needs_ref=True,
)
def kl(ctx: TokenContext, kind: str = "k3") -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token estimate of KL(pi_theta || pi_ref) at the sampled tokens (``ops.kl``). With the tokens treated as
    fixed samples, the gradient of k2 is (logprobs - ref_logprobs) * grad(logprobs) (the reverse-KL gradient) and
    k3's is the forward-KL gradient (1 - pi_ref / pi_theta) * grad(logprobs). Metric ``kl_ref``: masked mean."""
    if ctx.ref_logprobs is None:
        raise ValueError("the 'kl' regularizer needs reference log-probs (ctx.ref_logprobs is None): "
                         "the trainer must compute them with the reference model (meta needs_ref=True)")
    per_token_kl = ops.kl(ctx.logprobs, ctx.ref_logprobs, kind)
    return per_token_kl, {"kl_ref": ops.masked_mean(per_token_kl.detach(), (ctx.mask > 0).float())}


@register("regularizer", "entropy", paper="Entropy bonus (Williams & Peng 1991; PPO arXiv 1707.06347 entropy term)")
def entropy(ctx: TokenContext, tokens: str = "response") -> tuple[Tensor, dict[str, Tensor]]:
    """Loss -H per token: with a positive coefficient, minimising it raises the policy's entropy.

    ``tokens="response"``: every response token; ``"loss"``: only the tokens of the policy loss (token_weights > 0),
    which is what TRL's ``entropy_coef`` does (it matters when a mask such as ``entropy_quantile_mask`` removes tokens
    from the loss). Metric ``entropy``: mean H over the loss tokens (detached)."""
    if tokens not in ("response", "loss"):
        raise ValueError(f"entropy: tokens must be 'response' or 'loss', got {tokens!r}")
    in_loss = ctx.mask > 0
    per_token = -ctx.entropy if tokens == "response" else -ctx.entropy.where(in_loss, 0.0)
    return per_token, {"entropy": ops.masked_mean(ctx.entropy.detach(), in_loss.float())}
