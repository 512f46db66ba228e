"""Phase 6 of an RL iteration: the metrics record of one iteration (`metrics.jsonl`, TensorBoard)."""

from __future__ import annotations

import torch

from reftune import algos
from reftune.config import RLConfig
from reftune.rewards.functions import reward_metrics
from reftune.rl.batch import Rollout, ScoredBatch


@torch.no_grad()
def iteration_record(rollout: Rollout, batch: ScoredBatch, stats: dict[str, list[float]], cfg: RLConfig, *,
                     lr: float, rollout_s: float, update_s: float, returns: torch.Tensor | None = None,
                     kept_fraction: float | None = None) -> dict:
    """reward (and reward/<fn>), accuracy, answered share, sequence KL to the reference, response length,
    rollout tokens, seconds, lr, the mean of each update statistic; kept_fraction (dynamic sampling), explained
    variance (with `returns` of a value head), the sampler/trainer mismatch (at temperature 1, where the
    sampler's log-probs are of the same distribution) and the mean truncated IS weight (rl.tis_cap)."""
    mask, grades, B = batch.mask, rollout.grades, len(batch)
    kl_seq = (algos.masked_sum(batch.old_logp - batch.ref_logp, mask, dim=-1).mean() if batch.ref_logp is not None
              else torch.tensor(0.0))
    record = {"reward": rollout.scores.mean().item(), "accuracy": sum(g.correct for g in grades) / B,
              "answered": sum(g.pred is not None for g in grades) / B, "kl": kl_seq.item(),
              "response_length": mask.sum(-1).mean().item(), "rollout_tokens": int(mask.sum().item()),
              "rollout_s": rollout_s, "update_s": update_s, "lr": lr,
              **{k: sum(v) / len(v) for k, v in stats.items()}, **reward_metrics(rollout.parts)}
    if kept_fraction is not None:
        record["kept_fraction"] = kept_fraction
    if returns is not None:
        record["explained_variance"] = algos.explained_variance(batch.old_values, returns, mask).item()
    if cfg.temperature == 1.0:
        mismatch = (batch.old_logp - batch.sampler_logp).abs() * mask
        seq_ratio = torch.exp(algos.masked_sum(batch.old_logp - batch.sampler_logp, mask, dim=-1))  # p_train/p_sampler
        record["logp_mismatch_mean"] = (mismatch.sum() / mask.sum().clamp(min=1)).item()
        record["logp_mismatch_max"] = mismatch.max().item()
        record["seq_ratio_mean"], record["seq_ratio_max"] = seq_ratio.mean().item(), seq_ratio.max().item()
    if batch.is_weights is not None:
        record["tis_weight_mean"] = algos.masked_mean(batch.is_weights, mask).item()
    return record
