"""Phase 6 of an RL iteration: the metrics record of one iteration (`metrics.jsonl`, TensorBoard).

With several processes each holds a shard of the batch; `reduce_record` makes its shard's record the whole
batch's (row means weighted by rows, token means by tokens, sums, maxima), the same on every process."""

from __future__ import annotations

import torch
from accelerate.utils import gather_object

from reftune import algos
from reftune.config import RLConfig
from reftune.rewards.functions import reward_metrics
from reftune.rl.batch import Rollout, ScoredBatch
from reftune.train.accel import all_max, all_sum, all_weighted_means, num_processes

ROW_MEANS = ("reward", "accuracy", "answered", "kl", "response_length", "seq_ratio_mean")
TOKEN_MEANS = ("logp_mismatch_mean", "tis_weight_mean")
MAXIMA = ("logp_mismatch_max", "seq_ratio_max")


@torch.no_grad()
def iteration_record(rollout: Rollout, batch: ScoredBatch, stats: dict[str, list[float]], cfg: RLConfig, *,
                     lr: float, rollout_s: float, update_s: float, returns: torch.Tensor | None = None,
                     kept_fraction: float | None = None, scoring_s: float | None = None) -> dict:
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
    if scoring_s is not None:  # phase 3's seconds (rollout_s: phases 1-2, update_s: phases 4-5)
        record["scoring_s"] = scoring_s
    if kept_fraction is not None:
        record["kept_fraction"] = kept_fraction
    if returns is not None:
        record["explained_variance"] = algos.explained_variance(
            batch.old_values, returns, mask, all_sum=all_sum if num_processes() > 1 else None).item()
    if cfg.temperature == 1.0:
        mismatch = (batch.old_logp - batch.sampler_logp).abs() * mask
        seq_ratio = torch.exp(algos.masked_sum(batch.old_logp - batch.sampler_logp, mask, dim=-1))  # p_train/p_sampler
        record["logp_mismatch_mean"] = (mismatch.sum() / mask.sum().clamp(min=1)).item()
        record["logp_mismatch_max"] = mismatch.max().item()
        record["seq_ratio_mean"], record["seq_ratio_max"] = seq_ratio.mean().item(), seq_ratio.max().item()
    if batch.is_weights is not None:
        record["tis_weight_mean"] = algos.masked_mean(batch.is_weights, mask).item()
    return reduce_record(record, rollout, batch)


def reduce_record(record: dict, rollout: Rollout, batch: ScoredBatch) -> dict:
    """This process's record (of its shard) → the whole batch's: ROW_MEANS weighted by rows, TOKEN_MEANS by
    response tokens, `rollout_tokens` summed, MAXIMA maximised, the reward functions' means recomputed on every
    process's values; the update statistics (already over all rows) and timings stay. One process: as is."""
    if num_processes() == 1:
        return record
    rows, tokens, device = float(len(batch)), batch.mask.sum().float(), batch.mask.device
    means = [k for k in (*ROW_MEANS, *TOKEN_MEANS) if k in record]
    out = {**record, **all_weighted_means({k: torch.tensor(record[k], device=device) for k in means},
                                          {k: torch.tensor(rows, device=device) if k in ROW_MEANS else tokens
                                           for k in means})}
    out["rollout_tokens"] = int(all_sum(tokens).item())
    maxima = [k for k in MAXIMA if k in record]
    if maxima:
        out.update(zip(maxima, all_max(torch.tensor([record[k] for k in maxima], device=device)).tolist()))
    parts: dict[str, list] = {}
    for shard in gather_object([rollout.parts]):
        for name, v in shard.items():
            parts.setdefault(name, []).extend(v)
    return {**out, **reward_metrics(parts)}
