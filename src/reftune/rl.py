"""The RL loop: PPO as in ReFT, and the other estimators of `reftune.algos`, in one function.

Read it top to bottom; each iteration is
  1. rollout   — sample `num_generations` responses per question (temperature 1, KV cache), in
                 `rollout_precision`; with `dynamic_sampling` (DAPO), groups whose rewards all agree are
                 dropped and refilled with new questions;
  2. reward    — the weighted reward functions of `rl.rewards` (`reftune.reward_fns`), by default ReFT's
                 1 correct / 0.1 wrong number / 0 no answer, on the last token; DAPO's overlong penalty;
  3. score     — log-probs (and values) of the sampled tokens under the policy, and under the frozen
                 reference (the warm-up model) for the KL;
  4. advantage — ReFT: per-token KL penalty −β·(log π − log π_ref) inside the reward, GAE, whitening;
                 other estimators (grpo, rloo, ...) by name from the registry;
  5. update    — `ppo_epochs` passes of `minibatches` with the clipped policy and value losses (`tis_cap`:
                 truncated importance weights p_trainer / p_sampler on the policy loss);
  6. log       — reward (and reward/<fn> per function), accuracy, KL, entropy, clip fraction, approx-KL, value
                 loss, explained variance, response length, sampler/trainer mismatch, seconds in rollout vs
                 update; validation, best and resumable checkpoints.

`objective="online_self_training"` is the ReFT paper's online self-training baseline on the same loop: steps 1-3
as above (the rewards are computed and logged; the score only feeds the mismatch log), then, instead of 4-5,
`ppo_epochs` passes of `minibatches` of plain NLL, answer tokens only as in SFT, on the batch's samples graded
correct that ended with EOS plus the gold CoT of each of its questions that has one (`self_training_rows`). No
KL, no reference model, no value loss, no advantages. Rows are chosen by the task's grade, not the reward. It
logs `self_train_samples` (correct samples used), `self_train_gold` (gold CoTs) and `nll_loss`.

A trained reward model (`rl.reward_model`, for the `reward_model` reward function) is loaded once, frozen, on
the training device, and reaches the reward functions as `reward_scorer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reftune import algos
from reftune.accel import DTYPES, check_finite, get_accelerator, optimizer_step
from reftune.batching import encode, encode_target, join_prompt_response, positions
from reftune.checkpoint import load_state, rng_state, save_checkpoint, set_rng_state
from reftune.config import RLConfig
from reftune.data.example import Example
from reftune.errors import UserError
from reftune.evaluate import evaluate
from reftune.prompts import build_prompt, build_target
from reftune.reward_fns import compute_rewards, resolve_rewards, reward_metrics
from reftune.reward_model import load_reward_scorer
from reftune.rewards import Grade
from reftune.rollout import HFSampler, Samples


def response_logprobs(model, input_ids, attention_mask, prompt_width: int, with_values: bool):
    """Log-probs [B, R] of the response tokens (and values [B, R] of the states before them) in one pass.

    Column P-1+j of the logits predicts response token j (see `batching.join_prompt_response`).
    """
    logits, values = model(input_ids, attention_mask, positions(attention_mask), with_values=with_values)
    logits = logits[:, prompt_width - 1:-1].float()
    logp = algos.gather_logprobs(logits, input_ids[:, prompt_width:])
    values = values[:, prompt_width - 1:-1].float() if values is not None else None
    return logp, values, logits


class _LMOnly(torch.nn.Module):
    """The reference model behind the policy's call signature (no value head)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, position_ids, with_values=False):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).logits, None


@dataclass
class ScoredRollout:
    """Steps 1-2 for some questions: G samples each (row i*G+j is sample j of question idx[i]) and their scores.

    starts: the R^3 start state of each question (None without a curriculum); parts: each reward function's
    value per row (None = skipped); grades: the task's grade per row.
    """

    idx: list[int]
    starts: list | None
    samples: Samples
    examples: list[Example]
    scores: torch.Tensor
    parts: dict[str, list]
    grades: list[Grade]

    def groups(self, keep: list[int], G: int) -> ScoredRollout:
        """The questions at positions `keep`, in that order, with their G rows each."""
        rows = [q * G + j for q in keep for j in range(G)]

        def pick(xs):
            return [xs[r] for r in rows]

        s = self.samples
        starts = None if self.starts is None else [self.starts[q] for q in keep]
        return ScoredRollout([self.idx[q] for q in keep], starts,
                             Samples(pick(s.prompt_ids), pick(s.response_ids), pick(s.logprobs), pick(s.finished),
                                     pick(s.texts)),
                             pick(self.examples), self.scores[rows], {k: pick(v) for k, v in self.parts.items()},
                             pick(self.grades))

    def __add__(self, other: ScoredRollout) -> ScoredRollout:
        s, o = self.samples, other.samples
        return ScoredRollout(self.idx + other.idx, None if self.starts is None else self.starts + other.starts,
                             Samples(s.prompt_ids + o.prompt_ids, s.response_ids + o.response_ids,
                                     s.logprobs + o.logprobs, s.finished + o.finished, s.texts + o.texts),
                             self.examples + other.examples, torch.cat([self.scores, other.scores]),
                             {k: v + other.parts[k] for k, v in self.parts.items()}, self.grades + other.grades)


def informative_groups(scores: torch.Tensor, G: int) -> list[int]:
    """DAPO's dynamic-sampling filter: positions of the groups (G consecutive rows of scores [n*G]) whose scores
    are not all equal. A group that scored the same everywhere has zero group-relative advantage."""
    by_group = scores.view(-1, G)
    return torch.nonzero((by_group != by_group[:, :1]).any(-1)).flatten().tolist()


def needs_reference(cfg: RLConfig) -> bool:
    """Whether the run uses the frozen reference model: a KL term, which online self-training has none of."""
    return cfg.kl_in != "none" and cfg.objective == "ppo"


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


def train_rl(policy, ref_lm, tokenizer, train: list[Example], val: list[Example], cfg: RLConfig, *,
             out_dir: str | Path, logger, template: str = "reft", cot: str = "nl", precision: str = "fp32",
             seed: int = 0, eval_batch_size: int = 128, sandbox=None, stage: str = "rl", curriculum=None) -> dict:
    """Train `policy` (a `PolicyWithValue`) in place. ref_lm: frozen reference LM, or None when kl_in="none".

    curriculum: a `reftune.curriculum.Curriculum` (R^3): rollouts start from a prefix of the question's
    demonstration, appended to the prompt, so log-probs, KL and loss cover only what the policy writes;
    the grade is of the whole solution (prefix + response). Validation always starts from the question.

    ref_lm is not used (and need not be loaded) when `needs_reference(cfg)` is False.

    Returns {"best_val", "best_step"}; writes out_dir/best (highest validation accuracy) and out_dir/last.
    """
    out_dir = Path(out_dir)
    if not train:
        raise UserError("RL needs training questions; the training split is empty")
    if len(train) < cfg.prompts_per_step:
        raise UserError(f"rl.prompts_per_step={cfg.prompts_per_step} is larger than the training split "
                        f"({len(train)} questions); lower rl.prompts_per_step")
    use_values = cfg.advantage == "gae" and cfg.objective == "ppo"
    estimator = algos.get_advantage_estimator(cfg.advantage)
    kl_kind = cfg.kl_kind
    algos.kl_estimate(torch.zeros(1), torch.zeros(1), kl_kind)  # fail fast on a bad rl.kl_kind
    G, B = cfg.num_generations, cfg.prompts_per_step * cfg.num_generations
    mb_size = B // cfg.minibatches

    acc = get_accelerator(precision)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    policy, opt = acc.prepare(policy, opt)
    core = acc.unwrap_model(policy)
    ref = _LMOnly(ref_lm).eval() if ref_lm is not None and needs_reference(cfg) else None
    sampler = HFSampler(core.lm, tokenizer, batch_size=max(B, 64), device=acc.device)
    prompt_texts = [build_prompt(e.question, template, tokenizer) for e in train]
    prompts = [encode(tokenizer, t) for t in prompt_texts]
    reward_fns = resolve_rewards(cfg.rewards)
    reward_scorer = None  # rl.reward_model: loaded once, frozen, on the training device
    if cfg.reward_model and any(name == "reward_model" for name, _, _ in reward_fns):
        reward_scorer = load_reward_scorer(cfg.reward_model, template=template, sigmoid=cfg.reward_model_sigmoid,
                                           batch_size=eval_batch_size, device=acc.device)
    gold = ([encode_target(tokenizer, build_target(e.cot, template, e.answer)) if e.cot else None for e in train]
            if cfg.objective == "online_self_training" else [])  # its gold CoT rows, tokenized once
    rollout_dtype = DTYPES[cfg.rollout_precision]  # the sampler runs under autocast to it (the trainer: `precision`)

    step, best_val, best_step = 0, -1.0, -1
    state = load_state(out_dir / "last")
    if state is not None:  # resume: weights and value head were loaded by the caller from out_dir/last
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, best_val, best_step = state["step"], state["best_val"], state["best_step"]
        if curriculum is not None and state.get("curriculum") is not None:
            curriculum.load_state_dict(state["curriculum"])

    def checkpoint(path: Path, with_state: bool) -> None:
        st = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(), "step": step,
              "best_val": best_val, "best_step": best_step,
              "curriculum": curriculum.state_dict() if curriculum is not None else None} if with_state else None
        save_checkpoint(path, core.lm, tokenizer, value_head=core.value_head, state=st)

    def batch_indices(k: int) -> list[int]:
        """Questions of iteration k: consecutive slices of per-pass shuffles (deterministic, resumable)."""
        out, n = [], len(train)
        for pos in range(k * cfg.prompts_per_step, (k + 1) * cfg.prompts_per_step):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + pos // n))
            out.append(int(perm[pos % n]))
        return out

    def rollout(idx: list[int], k: int) -> ScoredRollout:
        """Steps 1 and 2 of iteration k for the questions `idx`."""
        # 1. rollout: G samples per question, under rl.rollout_precision; R^3: continuing a start state
        examples = [train[i] for i in idx for _ in range(G)]
        starts = curriculum.choose([train[i] for i in idx], k) if curriculum is not None else None
        batch_prompts = [prompts[i] + s.ids for i, s in zip(idx, starts)] if starts else [prompts[i] for i in idx]
        with torch.autocast(acc.device.type, dtype=rollout_dtype, enabled=rollout_dtype != torch.float32):
            samples = sampler.generate(batch_prompts, G, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
        if starts:  # R^3: the response completes the start state; the whole solution is what gets graded
            samples.texts = curriculum.complete(starts, samples.texts, G)
        # 2. reward: the weighted sum of rl.rewards (ReFT's 1 / 0.1 / 0 by default), plus DAPO's overlong penalty
        scores, parts, grades = compute_rewards(
            [prompt_texts[i] for i in idx for _ in range(G)], samples.texts, examples, reward_fns, cot=cot,
            sandbox=sandbox, template=template, correct_reward=cfg.correct_reward, partial_reward=cfg.partial_reward,
            completion_ids=samples.response_ids, max_new_tokens=cfg.max_new_tokens,
            overlong_penalty=cfg.overlong_penalty, reward_scorer=reward_scorer)
        return ScoredRollout(idx, starts, samples, examples, scores, parts, grades)

    def dynamic_sampling(batch: ScoredRollout, k: int) -> tuple[ScoredRollout, float]:
        """DAPO: keep the groups whose rewards differ; while fewer than prompts_per_step, roll out new questions
        (up to max_refill_rounds rounds, seeded by (seed, k, round)). Returns (the first prompts_per_step kept
        groups, share of all drawn groups that differ). When none differs at all, the first batch is kept as is
        (its group advantages are zero). Rows are fewer than prompts_per_step * G when the rounds run out."""
        kept, drawn = batch.groups(informative_groups(batch.scores, G), G), len(batch.idx)
        for r in range(cfg.max_refill_rounds):
            if len(kept.idx) >= cfg.prompts_per_step:
                break
            g = torch.Generator().manual_seed(seed * 7919 + 1_000_003 * (r + 1) + k)
            more = rollout(torch.randperm(len(train), generator=g)[:cfg.prompts_per_step].tolist(), k)
            kept, drawn = kept + more.groups(informative_groups(more.scores, G), G), drawn + len(more.idx)
        fraction = len(kept.idx) / drawn
        if not kept.idx:
            return batch, fraction
        return kept.groups(list(range(min(len(kept.idx), cfg.prompts_per_step))), G), fraction

    def self_training_update(batch: ScoredRollout) -> dict[str, list[float]]:
        """Online self-training's update (instead of steps 4-5): token-mean NLL on `self_training_rows`."""
        s = batch.samples
        rows = self_training_rows(s.prompt_ids, s.response_ids, [g.correct for g in batch.grades], s.finished,
                                  [prompts[i] for i in batch.idx], [gold[i] for i in batch.idx])
        n_gold = sum(gold[i] is not None for i in batch.idx)
        stats = {"self_train_samples": [len(rows) - n_gold], "self_train_gold": [n_gold]}
        if not rows:
            return stats
        ids, attn, mask, P = join_prompt_response([p for p, _ in rows], [r for _, r in rows], tokenizer.pad_token_id)
        ids, attn, mask = ids.to(acc.device), attn.to(acc.device), mask.to(acc.device).float()
        size = -(-len(rows) // cfg.minibatches)
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(len(rows))
            for start in range(0, len(rows), size):
                j = perm[start:start + size].to(acc.device)
                with acc.autocast():
                    loss = -algos.masked_mean(response_logprobs(policy, ids[j], attn[j], P, False)[0], mask[j])
                check_finite(loss, f"{stage} step {step}")
                optimizer_step(acc, loss, policy.parameters(), opt, cfg.grad_clip)
                stats.setdefault("nll_loss", []).append(loss.item())
        return stats

    bar = tqdm(total=cfg.steps, initial=step, desc=stage, dynamic_ncols=True)
    while step < cfg.steps:
        # 1. rollout and 2. reward (`rollout` above); DAPO's dynamic sampling drops groups that all agree --------
        t_start = time.time()
        batch, kept_fraction = rollout(batch_indices(step), step), None
        if cfg.dynamic_sampling:
            batch, kept_fraction = dynamic_sampling(batch, step)
        idx, starts, samples, examples = batch.idx, batch.starts, batch.samples, batch.examples
        scores, reward_parts, grades = batch.scores, batch.parts, batch.grades
        B, mb_size = len(examples), -(-len(examples) // cfg.minibatches)  # dynamic sampling may keep fewer rows
        t_rollout = time.time() - t_start
        # 3. score: old log-probs / values of the policy, reference log-probs ---------------------------
        ids, attn, mask, P = join_prompt_response(samples.prompt_ids, samples.response_ids, tokenizer.pad_token_id)
        ids, attn, mask = ids.to(acc.device), attn.to(acc.device), mask.to(acc.device).float()
        group_ids = torch.arange(len(idx), device=acc.device).repeat_interleave(G)
        old_logp, old_values, ref_logp = [], [], []
        policy.eval()
        with torch.no_grad(), acc.autocast():
            for s in range(0, B, mb_size):
                lp, v, _ = response_logprobs(policy, ids[s:s + mb_size], attn[s:s + mb_size], P, use_values)
                old_logp.append(lp)
                old_values.append(v if v is not None else torch.zeros_like(lp))
                if ref is not None:
                    ref_logp.append(response_logprobs(ref, ids[s:s + mb_size], attn[s:s + mb_size], P, False)[0])
        old_logp, old_values = torch.cat(old_logp), torch.cat(old_values)
        ref_logp = torch.cat(ref_logp) if ref is not None else None
        sampler_logp = torch.zeros_like(old_logp)  # what the sampler gave the same tokens (its own precision)
        for i, lp in enumerate(samples.logprobs):
            sampler_logp[i, :len(lp)] = torch.tensor(lp)
        is_weights = None
        if cfg.tis_cap is not None:  # truncated IS: the update is on-policy for the trainer, not the sampler
            is_weights = torch.exp(old_logp - sampler_logp).clamp(max=cfg.tis_cap) * mask
        # 4. advantages (ppo; online self-training has none) -----------------------------------------------
        if cfg.objective == "ppo":
            beta_reward = cfg.kl_coef if cfg.kl_in == "reward" else 0.0
            token_rewards = algos.kl_penalized_rewards(scores.to(acc.device), old_logp, ref_logp, mask, beta_reward,
                                                       kl_kind)
            advantages, returns = estimator(token_rewards, mask, values=old_values if use_values else None,
                                            group_ids=group_ids, gamma=cfg.gamma, lam=cfg.lam)
            if cfg.whiten_advantages:
                advantages = algos.masked_whiten(advantages, mask)
        # 5. update: the clipped PPO losses, or online self-training's NLL ----------------------------------
        t_update = time.time()
        policy.train()
        stats: dict[str, list[float]] = {}
        if cfg.objective == "online_self_training":
            stats = self_training_update(batch)
        else:
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(B)
                for s in range(0, B, mb_size):
                    j = perm[s:s + mb_size].to(acc.device)
                    with acc.autocast():
                        logp, values, logits = response_logprobs(policy, ids[j], attn[j], P, use_values)
                        pg_loss, pg_stats = algos.clipped_policy_loss(
                            logp, old_logp[j], advantages[j], mask[j], cfg.clip, cfg.clip_high, cfg.loss_agg,
                            norm_const=cfg.max_new_tokens, is_weights=is_weights[j] if is_weights is not None else None)
                        loss = pg_loss
                        if use_values:
                            vf_loss, vf_stats = algos.clipped_value_loss(
                                values, old_values[j], returns[j], mask[j], cfg.value_clip, cfg.loss_agg,
                                cfg.max_new_tokens)
                            loss = loss + cfg.vf_coef * vf_loss
                            pg_stats = {**pg_stats, **vf_stats, "value_loss": vf_loss.detach()}
                        if cfg.kl_in == "loss" and ref_logp is not None:
                            kl_term = algos.kl_loss(logp, ref_logp[j], mask[j], kl_kind, cfg.loss_agg,
                                                    cfg.max_new_tokens)
                            loss = loss + cfg.kl_coef * kl_term
                            pg_stats["kl_loss"] = kl_term.detach()
                    check_finite(loss, f"{stage} step {step}")
                    optimizer_step(acc, loss, policy.parameters(), opt, cfg.grad_clip)
                    with torch.no_grad():
                        pg_stats["entropy"] = algos.masked_mean(algos.entropy_from_logits(logits.detach()), mask[j])
                    for k, v in {**pg_stats, "policy_loss": pg_loss.detach()}.items():
                        stats.setdefault(k, []).append(float(v))
        sched.step()
        step += 1
        t_update = time.time() - t_update
        # 6. log, evaluate, checkpoint ------------------------------------------------------------------
        with torch.no_grad():
            kl_seq = (algos.masked_sum(old_logp - ref_logp, mask, dim=-1).mean() if ref_logp is not None
                      else torch.tensor(0.0))
            mismatch = (old_logp - sampler_logp).abs() * mask
            seq_ratio = torch.exp(algos.masked_sum(old_logp - sampler_logp, mask, dim=-1))  # p_train / p_sampler
        record = {"reward": scores.mean().item(), "accuracy": sum(g.correct for g in grades) / B,
                  "answered": sum(g.pred is not None for g in grades) / B, "kl": kl_seq.item(),
                  "response_length": mask.sum(-1).mean().item(), "rollout_tokens": int(mask.sum().item()),
                  "rollout_s": t_rollout, "update_s": t_update,
                  "lr": sched.get_last_lr()[0], **{k: sum(v) / len(v) for k, v in stats.items()},
                  **reward_metrics(reward_parts)}
        if kept_fraction is not None:
            record["kept_fraction"] = kept_fraction
        if use_values:
            record["explained_variance"] = algos.explained_variance(old_values, returns, mask).item()
        if cfg.temperature == 1.0:  # sampler vs trainer log-probs of the same tokens
            record["logp_mismatch_mean"] = (mismatch.sum() / mask.sum().clamp(min=1)).item()
            record["logp_mismatch_max"] = mismatch.max().item()
            record["seq_ratio_mean"], record["seq_ratio_max"] = seq_ratio.mean().item(), seq_ratio.max().item()
        if is_weights is not None:
            record["tis_weight_mean"] = algos.masked_mean(is_weights, mask).item()
        if starts:  # R^3: accuracy per start state (acc_k/<k>); a staged schedule may move to its next stage
            record.update(curriculum.update(step, [s.k for s in starts for _ in range(G)], [g.correct for g in grades]))
        logger.log(stage, step, **record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}", kl=f"{record['kl']:.3f}")
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            res = evaluate(core.lm, tokenizer, val, template=template, cot=cot, batch_size=eval_batch_size,
                           max_new_tokens=cfg.max_new_tokens, sandbox=sandbox, desc=f"{stage} val")
            logger.log(stage, step, val_accuracy=res["accuracy"], val_answered=res["answered"])
            bar.write(f"[{stage}] step {step}: val accuracy {res['accuracy']:.3f}")
            if res["accuracy"] > best_val:
                best_val, best_step = res["accuracy"], step
                checkpoint(out_dir / "best", False)
        if step % cfg.save_every == 0 or step == cfg.steps:
            checkpoint(out_dir / "last", True)
        if cfg.snapshot_every and step % cfg.snapshot_every == 0:
            checkpoint(out_dir / f"step-{step}", False)
    bar.close()
    return {"best_val": best_val, "best_step": best_step}
