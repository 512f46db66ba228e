"""RL algorithms as pure tensor functions: masked statistics, KL estimators, advantage estimators, losses.

No module here holds state besides the advantage-estimator registry; every function takes and returns tensors.
"""

from reftune.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    dr_grpo,
    gae,
    get_advantage_estimator,
    grpo,
    register_advantage,
    reinforce_pp,
    rloo,
)
from reftune.algos.kl import KL_KINDS, kl_estimate, kl_penalized_rewards, last_token_index
from reftune.algos.losses import (
    AGGREGATION_MODES,
    aggregate_loss,
    aggregation_count,
    clipped_policy_loss,
    clipped_value_loss,
    kl_loss,
)
from reftune.algos.masked import (
    entropy_from_logits,
    explained_variance,
    gather_logprobs,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "KL_KINDS",
    "aggregate_loss",
    "aggregation_count",
    "clipped_policy_loss",
    "clipped_value_loss",
    "dr_grpo",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "gather_logprobs",
    "get_advantage_estimator",
    "grpo",
    "kl_estimate",
    "kl_loss",
    "kl_penalized_rewards",
    "last_token_index",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "register_advantage",
    "reinforce_pp",
    "rloo",
]
