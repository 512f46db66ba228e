"""Masked reductions and per-token helpers shared by the RL algorithms.

Shapes: B = batch (one row per sampled response), T = time (token positions), V = vocabulary.
A mask is a bool or 0/1 float tensor of the same shape as the data; nonzero marks an entry that counts
(a generated response token). Rows are right-padded, and with R^3 prompt prefixes a row may also start
with zeros. Entries outside the mask may hold anything, NaN included: every reduction here selects with
`torch.where` instead of multiplying, so padding never leaks into a result.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over masked entries.

    x, mask: same shape, e.g. [B, T]. dim=None: a 0-dim tensor over all entries; dim=-1: one sum per row [B].
    """
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over masked entries (see `masked_sum` for `dim`).

    The count is clamped to at least 1, so an empty mask (or an empty row) gives 0, not NaN.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def _moments(x: Tensor, mask: Tensor, unbiased: bool, all_sum: Callable[[Tensor], Tensor] | None) -> tuple[Tensor, Tensor]:
    """(mean, variance) of x over its masked entries; every partial sum (count, sum, sum of squared deviations)
    goes through `all_sum` first, so with a sum across processes they are the statistics of all processes' x."""
    total = all_sum or (lambda t: t)
    n = total(mask.bool().sum().to(x.dtype))
    mean = total(masked_sum(x, mask)) / n.clamp(min=1)
    sum_sq = total(masked_sum((x - mean).square(), mask))
    return mean, sum_sq / ((n - 1) if unbiased else n).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True,
               all_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Variance of `x` over all masked entries, a 0-dim tensor.

    unbiased=True divides by n - 1 (Bessel), clamped to at least 1: a single masked entry has variance 0.
    all_sum: None, or a sum across processes (`reftune.train.accel.all_sum`) when each process holds a shard of
    the batch: the variance is then over the masked entries of every shard, the same on each process.
    """
    return _moments(x, mask, unbiased, all_sum)[1]


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Normalise `x` to mean 0 and (unbiased) standard deviation 1 over its masked entries.

    Returns (x - mean) / sqrt(var + eps), same shape as x, with zeros outside the mask. shift_mean=False adds
    the mean back, so only the spread is normalised. Statistics are over all masked entries of the tensor
    (the batch-level normalisation PPO and REINFORCE++ use), not per row; with `all_sum` (see `masked_var`)
    over all processes' shards of the batch.
    """
    mean, var = _moments(x, mask, True, all_sum)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor,
                       all_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """How much of the variance of `returns` the critic's `values` explain: 1 - Var(returns - values) / Var(returns).

    values, returns, mask: [B, T]. Returns a 0-dim float tensor: 1 is a perfect critic, 0 no better than a
    constant, negative worse than one. Choice: when Var(returns) == 0 (e.g. every reward in the batch equal)
    the ratio is undefined and we return 0 rather than NaN, so logs stay plottable. all_sum: see `masked_var`.
    """
    var_returns = masked_var(returns, mask, unbiased=False, all_sum=all_sum)
    var_residual = masked_var(returns - values, mask, unbiased=False, all_sum=all_sum)
    ev = 1 - var_residual / var_returns
    return torch.where(var_returns > 0, ev, torch.zeros_like(ev))


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution at every position: [B, T, V] -> [B, T].

    H = logsumexp(z) - sum_v softmax(z)_v * z_v, which never takes the log of a probability that underflowed
    to 0. Computed in the dtype of `logits`; pass float32 logits when bf16 precision is not enough.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def gather_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each token under its position's logits: logits [B, T, V], tokens [B, T] -> [B, T].

    Computed as z[token] - logsumexp(z), which avoids keeping a full [B, T, V] log-softmax. `logits[:, t]` must
    already be the prediction for `tokens[:, t]` (the caller shifts by one). Padding positions need a valid
    token id (any, e.g. the pad id); their values are meaningless and should be masked downstream.
    """
    picked = logits.gather(dim=-1, index=tokens.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
