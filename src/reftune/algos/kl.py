"""Per-token KL estimators between the policy and a reference model, and the KL-shaped token rewards of ReFT.

All estimators take log-probabilities of the *sampled* tokens (not full distributions): logp [B, T] under the
policy that generated them, ref_logp [B, T] under the reference. With log-ratio d = logp - ref_logp and samples
drawn from the policy, they estimate KL(policy || reference) per token (Schulman, "Approximating KL
divergence", 2020):

- "k1": d. Unbiased, high variance, can be negative on a single token.
- "k2": d^2 / 2. Biased, low variance, always >= 0.
- "k3": exp(-d) + d - 1. Unbiased, low variance, always >= 0 (since e^x >= 1 + x).
- "abs": |d|. Biased, >= 0; a common penalty in RLHF code.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_KINDS = ("k1", "k2", "k3", "abs")


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate of kind "k1", "k2", "k3" or "abs" (see the module docstring); [B, T] -> [B, T].

    No mask: the caller reduces over response tokens. Raises ValueError on an unknown kind.
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1
    if kind == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator {kind!r}; valid kinds: {', '.join(KL_KINDS)}")


def last_token_index(mask: Tensor) -> Tensor:
    """Position of the last nonzero entry of each row of `mask` [B, T] -> long [B]; 0 for an empty row."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), positions, 0).amax(dim=-1)


def kl_penalized_rewards(
    scores: Tensor,
    logp: Tensor | None,
    ref_logp: Tensor | None,
    mask: Tensor,
    beta: float,
    kind: str = "k1",
) -> Tensor:
    """ReFT's token rewards: -beta * KL at every response token, plus the outcome score on the last one.

    scores [B]: one outcome reward per response (e.g. 1 / 0.1 / 0 from the answer check).
    logp, ref_logp [B, T]: log-probabilities of the sampled tokens under the policy and the reference.
    mask [B, T]: response tokens; the score lands on the last masked position of each row. A row with no
    masked token gets all-zero rewards (there is no token to credit).
    beta: KL coefficient. With beta == 0 or ref_logp None the KL term is skipped (logp may then be None too).
    Returns token_rewards [B, T], zero outside the mask, detached: rewards are constants for the update.
    """
    mask = mask.bool()
    dtype = logp.dtype if logp is not None else torch.promote_types(scores.dtype, torch.float32)
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    if beta != 0 and ref_logp is not None:
        kl = kl_estimate(logp.detach(), ref_logp.detach(), kind)
        rewards = torch.where(mask, -beta * kl, rewards)
    rows = torch.arange(mask.shape[0], device=mask.device)
    last_score = torch.where(mask.any(dim=-1), scores.detach().to(dtype), 0)
    rewards[rows, last_token_index(mask)] += last_score
    return rewards
