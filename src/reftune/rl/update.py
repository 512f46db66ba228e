"""Phases 4-5 of an RL iteration: advantages, then the update — PPO's clipped losses, or online
self-training's NLL."""

from __future__ import annotations

import torch

from reftune import algos
from reftune.config import RLConfig
from reftune.model.batching import join_prompt_response
from reftune.rl.batch import Rollout, ScoredBatch
from reftune.rl.scoring import response_logprobs, rows_forward
from reftune.train.accel import (all_sum, all_weighted_means, counts_by_process, num_processes, optimizer_step,
                                 process_index, row_span, shard)

LOSS_STATS = ("policy_loss", "value_loss", "kl_loss")  # averaged like the loss; every other statistic per token


def whitens_over_batch(cfg: RLConfig) -> bool:
    """rl.whiten_advantages resolved. "auto" whitens as each estimator is published: GAE over the batch (PPO,
    ReFT); none of the others, since GRPO divides by its group's std, Dr. GRPO and RLOO use the raw group
    deviation, and REINFORCE++ already whitens over the batch inside the estimator. Batch whitening on top of a
    group estimator gives a group whose rewards all agree a non-zero advantage when its responses differ in
    length from the batch's (the token mean shifts every token)."""
    return cfg.advantage == "gae" if cfg.whiten_advantages == "auto" else bool(cfg.whiten_advantages)


def advantages(batch: ScoredBatch, scores: torch.Tensor, cfg: RLConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [B, R], returns [B, R]) of a scored batch whose rows got the sequence rewards scores [B].

    The per-token reward is the sequence reward on the last response token, minus β·KL to the reference per
    token when rl.kl_in="reward" (ReFT); the estimator is `rl.advantage` from `algos` (GAE uses the old values,
    group estimators the batch's groups); then, where `whitens_over_batch(cfg)`, the advantages are whitened
    over the batch's response tokens. With several processes, `batch` is this process's shard and batch-wide
    statistics (whitening, REINFORCE++) are over every shard.
    """
    beta = cfg.kl_coef if cfg.kl_in == "reward" else 0.0
    token_rewards = algos.kl_penalized_rewards(scores.to(batch.mask.device), batch.old_logp, batch.ref_logp,
                                               batch.mask, beta, cfg.kl_kind)
    estimator = algos.get_advantage_estimator(cfg.advantage)
    total = all_sum if num_processes() > 1 else None  # a process holds whole groups; whitening spans all
    adv, returns = estimator(token_rewards, batch.mask, values=batch.old_values if cfg.advantage == "gae" else None,
                             group_ids=batch.group_ids, gamma=cfg.gamma, lam=cfg.lam, all_sum=total)
    if whitens_over_batch(cfg):
        adv = algos.masked_whiten(adv, batch.mask, all_sum=total)
    return adv, returns


def minibatch_rows(perm: torch.Tensor, first: int, n: int) -> torch.Tensor:
    """This process's rows of a minibatch: the entries of `perm` (global row numbers) in [first, first + n),
    the rows it holds, as local indices, in perm's order."""
    mine = perm[(perm >= first) & (perm < first + n)]
    return mine - first


def data_parallel_scale(count: torch.Tensor) -> torch.Tensor:
    """The factor that turns this process's loss (aggregated over its rows of a minibatch, `count` being what
    that aggregation divided by: `algos.aggregation_count`, 0 without rows) into its share of the whole
    minibatch's loss: N * count / all processes' count. DDP averages the N gradients, so the shares add up to
    the loss one process would compute on the whole minibatch."""
    return num_processes() * count / all_sum(count).clamp(min=1)


def reduce_stats(stats: dict[str, torch.Tensor], tokens: torch.Tensor, count: torch.Tensor) -> dict[str, float]:
    """A minibatch's statistics over every process's rows: the losses weighted by their aggregation `count`, the
    per-token means by `tokens` (one all-reduce). With one process, the values as they are."""
    if num_processes() == 1:
        return {k: float(v) for k, v in stats.items()}
    return all_weighted_means(stats, {k: count if k in LOSS_STATS else tokens for k in stats})


def ppo_update(policy, opt, acc, batch: ScoredBatch, adv: torch.Tensor, returns: torch.Tensor, cfg: RLConfig,
               use_values: bool, where: str, gold: list | None = None,
               gold_pool: list | None = None) -> dict[str, list[float]]:
    """`rl.ppo_epochs` passes of `rl.minibatches` shuffled minibatches (global torch RNG) with the clipped policy
    loss, plus the clipped value loss (with `use_values`), the KL loss (rl.kl_in="loss") and, with rl.sft_coef > 0,
    `sft_coef` x the token-mean NLL of gold CoTs (`gold`: one (prompt ids, target ids) or None per question of this
    process's batch, in row order): each epoch deals the step's questions into the minibatches at random, and a
    minibatch's loss takes its questions' gold CoTs (InstructGPT's PPO-ptx, with the SFT data ReFT warmed up on).
    With rl.sft_rows > 0 it takes instead that many (prompt ids, target ids) drawn at random from `gold_pool` (every
    annotated training question), whatever the minibatch's questions are. One optimizer step per minibatch.
    Returns each statistic's value per minibatch.

    With several processes, `batch` is this process's shard: the minibatches are drawn from the rows of all
    shards (the same permutation everywhere), each process computes its rows' share of the minibatch's loss
    (`data_parallel_scale`), and the statistics are reduced over all rows, so N processes step like one. A
    process with no row in a minibatch backpropagates zero times one row's loss: DDP needs its gradients."""
    first, B = row_span(len(batch))
    mask, size = batch.mask, -(-B // cfg.minibatches)
    G, with_gold = cfg.num_generations, cfg.sft_coef > 0 and (gold_pool if cfg.sft_rows else gold) is not None
    stats: dict[str, list[float]] = {}
    policy.train()
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B)
        deal = None
        if with_gold and cfg.sft_rows:
            deal = pool_minibatches(gold_pool, cfg.sft_rows, -(-B // size))
        elif with_gold:
            deal = gold_minibatches(torch.randperm(B // G), -(-B // size), first // G, gold)
        for m, s in enumerate(range(0, B, size)):
            j = minibatch_rows(perm[s:s + size], first, len(batch)).to(mask.device)
            here = float(len(j) > 0)  # 0: a stand-in row, masked out and weighted 0
            j = j if len(j) else torch.zeros(1, dtype=torch.long, device=mask.device)
            row_mask = mask[j] * here
            tokens, count = (algos.aggregation_count(row_mask, agg) * here for agg in ("token_mean", cfg.loss_agg))
            minibatch_stats = _minibatch_step(policy, opt, acc, batch, adv, returns, j, row_mask, count, cfg,
                                              use_values, where, deal[m] if deal else None)
            for k, v in reduce_stats(minibatch_stats, tokens, count).items():
                stats.setdefault(k, []).append(v)
    return stats


def gold_minibatches(order: torch.Tensor, minibatches: int, first: int, gold: list) -> list[list[tuple]]:
    """The gold (prompt, target) rows of each minibatch held by this process: the step's questions in `order` (a
    permutation of all processes' questions) dealt into `minibatches` consecutive parts; this process holds
    questions first .. first + len(gold) - 1, those with a gold CoT count."""
    size = -(-len(order) // minibatches)
    return [[gold[q - first] for q in order[s:s + size].tolist()
             if first <= q < first + len(gold) and gold[q - first] is not None]
            for s in range(0, size * minibatches, size)]


def pool_minibatches(pool: list, rows: int, minibatches: int) -> list[list[tuple]]:
    """This process's gold (prompt, target) rows of each of `minibatches` minibatches: min(rows, len(pool)) distinct
    entries of `pool` drawn at random for each (global torch RNG, so every process draws the same), of which this
    process holds its contiguous share (`shard`)."""
    mine = shard(min(rows, len(pool)))
    picks = [torch.randperm(len(pool))[:rows].tolist() for _ in range(minibatches)]
    return [[pool[i] for i in pick[mine.start:mine.stop]] for pick in picks]


def gold_nll(policy, rows: list[tuple[list[int], list[int]]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(token-mean NLL of the targets of `rows` (prompt ids, target ids) under `policy`, their token count); a
    process without rows gets a masked stand-in row: (0 with a graph through every weight, 0)."""
    held = rows or [([pad_id], [pad_id])]
    ids, attn, mask, P = join_prompt_response([p for p, _ in held], [t for _, t in held], pad_id)
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device).float() * float(bool(rows))
    return -algos.masked_mean(response_logprobs(policy, ids, attn, P, False)[0], mask), mask.sum()


def _minibatch_step(policy, opt, acc, batch: ScoredBatch, adv, returns, j: torch.Tensor, mask: torch.Tensor,
                    count: torch.Tensor, cfg: RLConfig, use_values: bool, where: str,
                    gold_rows: list | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step on the rows j of this process's batch; mask: their response mask (zeros: none of the
    minibatch's rows is here); count: its loss aggregation's count; gold_rows: the minibatch's gold CoTs held here
    (rl.sft_coef > 0; None: no SFT term). Returns the step's statistics (0-dim)."""
    with acc.autocast():
        # with one epoch of one minibatch, scoring already ran this forward (scoring.reuses_update_forward)
        logp, values, entropy = batch.take_update_forward(j) or rows_forward(policy, batch, j, use_values)
        pg_loss, pg_stats = algos.clipped_policy_loss(
            logp, batch.old_logp[j], adv[j], mask, cfg.clip, cfg.clip_high, cfg.loss_agg,
            norm_const=cfg.max_new_tokens,
            is_weights=batch.is_weights[j] if batch.is_weights is not None else None)
        loss = pg_loss
        if use_values:
            vf_loss, vf_stats = algos.clipped_value_loss(values, batch.old_values[j], returns[j], mask,
                                                         cfg.value_clip, cfg.loss_agg, cfg.max_new_tokens)
            loss = loss + cfg.vf_coef * vf_loss
            pg_stats = {**pg_stats, **vf_stats, "value_loss": vf_loss.detach()}
        if cfg.kl_in == "loss" and batch.ref_logp is not None:
            kl_term = algos.kl_loss(logp, batch.ref_logp[j], mask, cfg.kl_kind, cfg.loss_agg, cfg.max_new_tokens)
            loss = loss + cfg.kl_coef * kl_term
            pg_stats["kl_loss"] = kl_term.detach()
        if num_processes() > 1:
            loss = loss * data_parallel_scale(count)
        if gold_rows is not None:
            sft_loss, gold_tokens = gold_nll(policy, gold_rows, batch.pad_id, mask.device)
            scale = data_parallel_scale(gold_tokens) if num_processes() > 1 else 1.0
            loss = loss + cfg.sft_coef * sft_loss * scale
            pg_stats["sft_loss"] = (sft_loss.detach() if num_processes() == 1 else  # the whole minibatch's mean
                                    all_weighted_means({"s": sft_loss.detach()}, {"s": gold_tokens})["s"])
    optimizer_step(acc, loss, policy.parameters(), opt, cfg.grad_clip, where=where)
    pg_stats["entropy"] = algos.masked_mean(entropy, mask)
    return {**pg_stats, "policy_loss": pg_loss.detach()}


def self_training_rows(prompt_ids: list[list[int]], response_ids: list[list[int]], correct: list[bool],
                       finished: list[bool], question_prompts: list[list[int]],
                       gold_targets: list[list[int] | None]) -> list[tuple[list[int], list[int]]]:
    """The (prompt, response) rows of online self-training's NLL update, the loss going on the responses.

    First every sampled row (prompt_ids, response_ids, correct, finished: one per sample) graded correct that ended
    with EOS, in order; then (question_prompts[q], gold_targets[q]) for each question q of the batch with a gold
    target (None: an answer-only question).
    """
    rows = [(p, r) for p, r, ok, done in zip(prompt_ids, response_ids, correct, finished) if ok and done]
    return rows + [(p, g) for p, g in zip(question_prompts, gold_targets) if g is not None]


def nll_update(policy, opt, acc, rows: list[tuple[list[int], list[int]]], pad_id: int, cfg: RLConfig,
               where: str, n_gold: int = 0) -> list[float]:
    """Online self-training's update: `rl.ppo_epochs` passes of `rl.minibatches` shuffled minibatches of
    token-mean NLL on the responses of `rows`. Returns the loss of each minibatch.

    With several processes, `rows` are this process's: its sampled rows, then its `n_gold` gold rows. The rows of
    all processes are numbered as one process orders them (every process's samples by process index, then every
    process's gold rows), the minibatches are drawn from that numbering (the same permutation everywhere), and
    each process backpropagates its rows' share of the minibatch's token mean; a process without a row in a
    minibatch backpropagates a masked stand-in row (DDP needs its gradients). So N processes step like one."""
    n_proc, r = num_processes(), process_index()
    counts = counts_by_process([len(rows) - n_gold, n_gold])  # [[samples, gold] of each process]
    samples_before, gold_before = sum(c[0] for c in counts[:r]), sum(c[1] for c in counts[:r])
    all_samples, B = sum(c[0] for c in counts), sum(map(sum, counts))
    positions = ([samples_before + i for i in range(len(rows) - n_gold)]
                 + [all_samples + gold_before + i for i in range(n_gold)])
    if not B:
        return []
    local = {g: i for i, g in enumerate(positions)}
    held = rows or [([pad_id], [pad_id])]  # a stand-in row when this process has none
    ids, attn, mask, P = join_prompt_response([p for p, _ in held], [r for _, r in held], pad_id)
    ids, attn, mask = ids.to(acc.device), attn.to(acc.device), mask.to(acc.device).float()
    size, losses = -(-B // cfg.minibatches), []
    policy.train()
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B)
        for start in range(0, B, size):
            j = [local[g] for g in perm[start:start + size].tolist() if g in local]
            here = float(len(j) > 0)
            j = torch.tensor(j or [0], dtype=torch.long, device=acc.device)
            m = mask[j] * here
            with acc.autocast():
                loss = -algos.masked_mean(response_logprobs(policy, ids[j], attn[j], P, False)[0], m)
                if n_proc > 1:
                    tokens = m.sum()
                    mean = loss.detach()
                    loss = loss * data_parallel_scale(tokens)
            optimizer_step(acc, loss, policy.parameters(), opt, cfg.grad_clip, where=where)
            losses.append(loss.item() if n_proc == 1 else all_weighted_means({"nll": mean}, {"nll": tokens})["nll"])
    return losses


def self_training_update(policy, opt, acc, rollout: Rollout, prompt_ids: list[list[int]],
                         gold: list[list[int] | None], pad_id: int, cfg: RLConfig, where: str) -> dict[str, list]:
    """Online self-training's phase 5 (instead of advantages and PPO): `nll_update` on `self_training_rows` of the
    rollout (prompt_ids, gold: every training question's prompt and gold target). Logs `self_train_samples`
    (correct samples used), `self_train_gold` (gold CoTs) and `nll_loss`. Rows are chosen by the task's grade."""
    s = rollout.samples
    rows = self_training_rows(s.prompt_ids, s.response_ids, [g.correct for g in rollout.grades], s.finished,
                              [prompt_ids[i] for i in rollout.idx], [gold[i] for i in rollout.idx])
    n_gold = sum(gold[i] is not None for i in rollout.idx)
    n_samples, n_all_gold = (int(x) for x in all_sum(torch.tensor([len(rows) - n_gold, n_gold], device=acc.device)))
    stats: dict[str, list] = {"self_train_samples": [n_samples], "self_train_gold": [n_all_gold]}
    if losses := nll_update(policy, opt, acc, rows, pad_id, cfg, where, n_gold=n_gold):
        stats["nll_loss"] = losses
    return stats
