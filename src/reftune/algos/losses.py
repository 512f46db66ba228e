"""Policy, value and KL losses of PPO / GRPO as pure tensor functions, and how a [B, T] loss becomes a scalar.

Shapes: B responses, T token positions. logp, old_logp, ref_logp are log-probabilities of the sampled tokens
under the policy being trained, the policy that sampled them, and the frozen reference. mask [B, T] marks the
response tokens (bool or 0/1 float). Entries outside the mask may hold anything, NaN included: they are
replaced before any arithmetic, so they reach neither the loss nor its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reftune.algos.kl import kl_estimate
from reftune.algos.masked import masked_mean, masked_sum

AGGREGATION_MODES = ("token_mean", "seq_mean_token_mean", "seq_sum_norm")


def aggregate_loss(loss_mat: Tensor, mask: Tensor, mode: str, norm_const: float | None = None) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    "token_mean": sum over all masked tokens / their count; every token weighs the same, so long responses
        weigh more (DAPO, verl's default).
    "seq_mean_token_mean": mean over each response's tokens, then over responses (original GRPO); every
        response weighs the same, so each token of a long response weighs less.
    "seq_sum_norm": sum over each response's tokens / norm_const, then mean over responses (Dr. GRPO);
        norm_const defaults to T = loss_mat.shape[1], the batch's padded width; pass a fixed one (the RL loop
        passes max_new_tokens) so that it does not vary with the batch's longest response.
    In the sequence modes, the mean is over all B rows; a row with no masked token contributes 0.
    Raises ValueError on an unknown mode.
    """
    if mode == "token_mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq_mean_token_mean":
        return masked_mean(loss_mat, mask, dim=-1).mean()
    if mode == "seq_sum_norm":
        norm = loss_mat.shape[1] if norm_const is None else norm_const
        return (masked_sum(loss_mat, mask, dim=-1) / norm).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; valid modes: {', '.join(AGGREGATION_MODES)}")


def aggregation_count(mask: Tensor, mode: str) -> Tensor:
    """What `aggregate_loss` divides by, as a 0-dim float tensor: the masked tokens ("token_mean") or the rows
    (the sequence modes) of mask [B, T].

    Data parallelism uses it: a process holding a shard of the batch rescales its loss by its count over the
    count of all shards, so that the shards' losses add up to the loss of the whole batch."""
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; valid modes: {', '.join(AGGREGATION_MODES)}")
    if mode == "token_mean":
        return mask.bool().sum().float()
    return torch.tensor(float(mask.shape[0]), device=mask.device)


def _zero_outside(x: Tensor, mask: Tensor) -> Tensor:
    """x with 0 wherever the bool `mask` is False (selecting, so NaN there is dropped, gradient included)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    agg: str = "token_mean",
    norm_const: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate: per token -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A), r = p / p_old.

    logp [B, T] carries the gradient; old_logp, advantages [B, T] are constants (detached here).
    clip_high: upper clip range, defaults to clip_low; a larger one is DAPO's "clip-higher".
    agg, norm_const: see `aggregate_loss`.
    is_weights [B, T]: optional per-token importance weights multiplying the loss, e.g. a truncated
        p_policy / p_sampler correction when the sampler (vLLM) and the trainer disagree; detached.
    Returns (loss, stats), stats being detached 0-dim tensors, means over masked tokens:
        "clipfrac": fraction of tokens where the clipped term is the active one (their gradient is 0);
        "approx_kl": k3 estimate of KL(old || new), the usual early-stopping signal;
        "ratio_mean": mean of r.
    """
    mask = mask.bool()
    high = clip_low if clip_high is None else clip_high
    log_ratio = _zero_outside(logp - old_logp.detach(), mask)
    ratio = torch.exp(log_ratio)
    advantages = _zero_outside(advantages.detach(), mask)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + high)
    loss_mat = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        loss_mat = loss_mat * _zero_outside(is_weights.detach(), mask)
    loss = aggregate_loss(loss_mat, mask, agg, norm_const)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            # k3 with the old policy as the sampler: KL(old || new) ~ (r - 1) - log r.
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    agg: str = "token_mean",
    norm_const: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped value loss: per token 0.5 * max((v - R)^2, (clip(v, v_old - clip, v_old + clip) - R)^2).

    values [B, T] carries the gradient; old_values (the critic at rollout time) and returns [B, T] are detached.
    The clipped term keeps the critic from moving more than `clip` per token away from its rollout estimate.
    agg, norm_const: see `aggregate_loss`.
    Returns (loss, {"vf_clipfrac": fraction of masked tokens where the clipped term is the larger one}).
    """
    mask = mask.bool()
    values = _zero_outside(values, mask)
    old_values = _zero_outside(old_values.detach(), mask)
    returns = _zero_outside(returns.detach(), mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_sq = (values - returns).square()
    clipped_sq = (clipped_values - returns).square()
    loss = aggregate_loss(0.5 * torch.maximum(unclipped_sq, clipped_sq), mask, agg, norm_const)
    with torch.no_grad():
        vf_clipfrac = masked_mean((clipped_sq > unclipped_sq).to(values.dtype), mask)
    return loss, {"vf_clipfrac": vf_clipfrac}


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: str = "k3", agg: str = "token_mean",
            norm_const: float | None = None) -> Tensor:
    """KL(policy || reference) as a loss term (GRPO puts it in the loss, PPO-ReFT in the reward).

    logp [B, T] carries the gradient; ref_logp [B, T] is detached. kind: see `kl_estimate`; agg, norm_const:
    see `aggregate_loss`. Returns a scalar, to be scaled by the caller's coefficient.
    """
    mask = mask.bool()
    kl = kl_estimate(_zero_outside(logp, mask), _zero_outside(ref_logp.detach(), mask), kind)
    return aggregate_loss(kl, mask, agg, norm_const)
