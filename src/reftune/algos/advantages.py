"""Advantage estimators, registered by name so the RL loop picks one from its config.

Every estimator has the same signature:

    fn(token_rewards, mask, *, values=None, group_ids=None, gamma=1.0, lam=0.95, eps=1e-6, all_sum=None)
        -> (advantages [B, T], returns [B, T])

token_rewards [B, T]: per-token reward, zero except the outcome score on the last response token and,
    optionally, -beta * KL on every response token (see `kl_penalized_rewards`).
mask [B, T]: response tokens (bool or 0/1 float); entries outside it are ignored, whatever they hold.
values [B, T]: critic values (only "gae"). group_ids [B]: long, equal for samples of the same prompt, any
    values, in any order (only the group estimators "grpo", "dr_grpo", "rloo").
all_sum: None, or a sum across processes when each holds a shard of the batch (whole groups): an estimator
    with batch-wide statistics ("reinforce_pp") takes them over every shard; the others ignore it.
Outputs are zero outside the mask and detached: advantages are constants for the policy update.

None of the estimators whitens across the batch except "reinforce_pp", whose definition includes it. Whitening
is a separate, visible step of the RL loop (`reftune.rl.update.advantages`): `rl.whiten_advantages=auto` (the
default) applies `masked_whiten` over the batch's response tokens to GAE's advantages only, as PPO does; `true`
applies it to every estimator's, the group estimators' included; `false` to none.

Adding an algorithm is one decorated function:

    @register_advantage("my_estimator")
    def my_estimator(token_rewards, mask, *, values=None, group_ids=None, gamma=1.0, lam=0.95, eps=1e-6,
                     all_sum=None): ...
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from reftune.algos.masked import masked_sum, masked_whiten

AdvantageEstimator = Callable[..., tuple[Tensor, Tensor]]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator: make `fn` available as `get_advantage_estimator(name)`. Raises ValueError on a duplicate name."""

    def register(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return register


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered under `name`; ValueError listing the valid names otherwise."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; valid: {', '.join(sorted(ADVANTAGE_ESTIMATORS))}")
    return ADVANTAGE_ESTIMATORS[name]


def _reverse_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """GAE over the masked tokens of each row, scanning right to left; zero outside the mask.

    The successor of a masked token is the next *masked* token (unmasked positions are skipped, not treated
    as steps), and the value after the last masked token is 0: the response ends the episode.
    With values == 0 and lam == 1 this is the discounted return-to-go sum_k gamma^k r_{t+k}.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        keep = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        # torch.where, not a multiply: garbage (even NaN) at unmasked positions must not leak into the carry.
        next_advantage = torch.where(keep, advantage, next_advantage)
        next_value = torch.where(keep, values[:, t], next_value)
        advantages[:, t] = torch.where(keep, advantage, 0)
    return advantages


def _broadcast_to_tokens(seq_advantages: Tensor, mask: Tensor) -> Tensor:
    """[B] -> [B, T]: each sequence's advantage on every one of its masked tokens, zero elsewhere."""
    return torch.where(mask, seq_advantages[:, None], 0)


def _group_index(group_ids: Tensor) -> Tensor:
    """Arbitrary group ids [B] -> dense group indices [B] in 0..n_groups-1."""
    return torch.unique(group_ids, return_inverse=True)[1]


def _group_sum(x: Tensor, group: Tensor) -> Tensor:
    """For each sample, the sum of `x` over its group: x, group [B] -> [B]."""
    return torch.zeros_like(x).index_add_(0, group, x)[group]


def _group_deviation(scores: Tensor, group: Tensor) -> Tensor:
    """Each score minus its group's mean: scores, group [B] -> [B].

    Scores are centred on their group's maximum before averaging, so a group whose scores are all equal
    gets a deviation of exactly 0 (in float32, the plain mean of eight 0.1s is not exactly 0.1).
    """
    group_max = torch.full_like(scores, float("-inf")).scatter_reduce(0, group, scores, reduce="amax")[group]
    shifted = scores - group_max
    return shifted - _group_sum(shifted, group) / _group_sum(torch.ones_like(scores), group)


def _sequence_scores(token_rewards: Tensor, mask: Tensor, group_ids: Tensor | None, name: str) -> Tensor:
    """Outcome score per response [B]: token_rewards summed over the mask. Checks group_ids is given."""
    if group_ids is None:
        raise ValueError(f"advantage estimator {name!r} needs group_ids (samples of the same prompt share an id)")
    return masked_sum(token_rewards.detach(), mask, dim=-1)


@register_advantage("gae")
def gae(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_ids: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
    all_sum: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (PPO, ReFT) with the critic's per-token values.

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1} over the masked tokens,
    with V = 0 and A = 0 after the last one. returns = advantages + values (the critic's regression target).
    Not whitened here: whitening is a separate step of the RL loop. group_ids and eps are unused.
    """
    if values is None:
        raise ValueError("advantage estimator 'gae' needs values from a critic")
    mask = mask.bool()
    advantages = _reverse_gae(token_rewards.detach(), values.detach(), mask, gamma, lam)
    returns = torch.where(mask, advantages + values.detach(), 0)
    return advantages, returns


@register_advantage("grpo")
def grpo(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_ids: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
    all_sum: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """GRPO (DeepSeekMath): (score - group mean) / (group std + eps) on every token of the response.

    score = sum of token_rewards over the mask. std is unbiased (n - 1), as in DeepSeekMath and TRL; a group
    of one has std 0 and advantage 0. A group whose scores are all equal gets exactly 0.
    returns = advantages (no critic). values, gamma, lam are unused.
    """
    mask = mask.bool()
    scores = _sequence_scores(token_rewards, mask, group_ids, "grpo")
    group = _group_index(group_ids)
    deviation = _group_deviation(scores, group)
    count = _group_sum(torch.ones_like(scores), group)
    std = (_group_sum(deviation.square(), group) / (count - 1).clamp(min=1)).sqrt()
    advantages = _broadcast_to_tokens(deviation / (std + eps), mask)
    return advantages, advantages


@register_advantage("dr_grpo")
def dr_grpo(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_ids: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
    all_sum: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Dr. GRPO (Liu et al., 2025): score - group mean, without dividing by the group std.

    Pair it with the "seq_sum_norm" loss aggregation to also remove GRPO's length normalisation.
    returns = advantages. values, gamma, lam, eps are unused.
    """
    mask = mask.bool()
    scores = _sequence_scores(token_rewards, mask, group_ids, "dr_grpo")
    deviation = _group_deviation(scores, _group_index(group_ids))
    advantages = _broadcast_to_tokens(deviation, mask)
    return advantages, advantages


@register_advantage("rloo")
def rloo(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_ids: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
    all_sum: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """REINFORCE Leave-One-Out (Ahmadian et al., 2024): score - mean score of the *other* samples of the group.

    Computed as n / (n - 1) * (score - group mean), the same quantity. A group of one has no other sample to
    compare with: its advantage is 0. returns = advantages. values, gamma, lam, eps are unused.
    """
    mask = mask.bool()
    scores = _sequence_scores(token_rewards, mask, group_ids, "rloo")
    group = _group_index(group_ids)
    deviation = _group_deviation(scores, group)
    count = _group_sum(torch.ones_like(scores), group)
    # A group of one has deviation exactly 0, so the clamp only avoids 0/0.
    advantages = _broadcast_to_tokens(deviation * count / (count - 1).clamp(min=1), mask)
    return advantages, advantages


@register_advantage("reinforce_pp")
def reinforce_pp(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    values: Tensor | None = None,
    group_ids: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
    all_sum: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu, 2025): discounted return-to-go per token, whitened over the whole batch.

    G_t = sum_k gamma^k r_{t+k} over the masked tokens; advantages = (G - mean) / sqrt(var + eps), mean and
    unbiased var over all masked tokens of the batch, every process's shard with `all_sum` (global
    normalisation; no critic, no groups).
    returns = G, the unwhitened return-to-go. values, group_ids, lam are unused.
    """
    mask = mask.bool()
    rewards = token_rewards.detach()
    returns = _reverse_gae(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0)
    return masked_whiten(returns, mask, eps=eps, all_sum=all_sum), returns
