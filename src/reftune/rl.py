"""The RL loop: PPO as in ReFT, and the other estimators of `reftune.algos`, in one function.

Read it top to bottom; each iteration is
  1. rollout   — sample `num_generations` responses per question (temperature 1, KV cache);
  2. reward    — grade each response: 1 correct / 0.1 wrong number / 0 no answer, on the last token;
  3. score     — log-probs (and values) of the sampled tokens under the policy, and under the frozen
                 reference (the warm-up model) for the KL;
  4. advantage — ReFT: per-token KL penalty −β·(log π − log π_ref) inside the reward, GAE, whitening;
                 other estimators (grpo, rloo, ...) by name from the registry;
  5. update    — `ppo_epochs` passes of `minibatches` with the clipped policy and value losses;
  6. log       — reward, accuracy, KL, entropy, clip fraction, approx-KL, value loss, explained variance,
                 response length, seconds in rollout vs update; validation, best and resumable checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reftune import algos
from reftune.accel import check_finite, get_accelerator
from reftune.batching import encode, join_prompt_response, positions
from reftune.checkpoint import load_state, rng_state, save_checkpoint, set_rng_state
from reftune.config import RLConfig
from reftune.data.example import Example
from reftune.errors import UserError
from reftune.evaluate import evaluate
from reftune.prompts import build_prompt
from reftune.rewards import grade, reft_reward
from reftune.rollout import HFSampler


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


def train_rl(policy, ref_lm, tokenizer, train: list[Example], val: list[Example], cfg: RLConfig, *,
             out_dir: str | Path, logger, template: str = "reft", cot: str = "nl", precision: str = "fp32",
             seed: int = 0, eval_batch_size: int = 128, sandbox=None, stage: str = "rl") -> dict:
    """Train `policy` (a `PolicyWithValue`) in place. ref_lm: frozen reference LM, or None when kl_in="none".

    Returns {"best_val", "best_step"}; writes out_dir/best (highest validation accuracy) and out_dir/last.
    """
    out_dir = Path(out_dir)
    if not train:
        raise UserError("RL needs training questions; the training split is empty")
    if len(train) < cfg.prompts_per_step:
        raise UserError(f"rl.prompts_per_step={cfg.prompts_per_step} is larger than the training split "
                        f"({len(train)} questions); lower rl.prompts_per_step")
    use_values = cfg.advantage == "gae"
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
    ref = _LMOnly(ref_lm).eval() if ref_lm is not None and cfg.kl_in != "none" else None
    sampler = HFSampler(core.lm, tokenizer, batch_size=max(B, 64), device=acc.device)
    prompts = [encode(tokenizer, build_prompt(e.question, template, tokenizer)) for e in train]

    step, best_val, best_step = 0, -1.0, -1
    state = load_state(out_dir / "last")
    if state is not None:  # resume: weights and value head were loaded by the caller from out_dir/last
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, best_val, best_step = state["step"], state["best_val"], state["best_step"]

    def checkpoint(path: Path, with_state: bool) -> None:
        st = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(), "step": step,
              "best_val": best_val, "best_step": best_step} if with_state else None
        save_checkpoint(path, core.lm, tokenizer, value_head=core.value_head, state=st)

    def batch_indices(k: int) -> list[int]:
        """Questions of iteration k: consecutive slices of per-pass shuffles (deterministic, resumable)."""
        out, n = [], len(train)
        for pos in range(k * cfg.prompts_per_step, (k + 1) * cfg.prompts_per_step):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + pos // n))
            out.append(int(perm[pos % n]))
        return out

    bar = tqdm(total=cfg.steps, initial=step, desc=stage, dynamic_ncols=True)
    while step < cfg.steps:
        # 1. rollout ------------------------------------------------------------------------------------
        t_start = time.time()
        idx = batch_indices(step)
        examples = [train[i] for i in idx for _ in range(G)]
        samples = sampler.generate([prompts[i] for i in idx], G, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
        # 2. reward -------------------------------------------------------------------------------------
        grades = grade(samples.texts, examples, cot, sandbox)
        scores = torch.tensor([reft_reward(g, e.answer_type, cfg.correct_reward, cfg.partial_reward)
                               for g, e in zip(grades, examples)])
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
        # 4. advantages ---------------------------------------------------------------------------------
        beta_reward = cfg.kl_coef if cfg.kl_in == "reward" else 0.0
        token_rewards = algos.kl_penalized_rewards(scores.to(acc.device), old_logp, ref_logp, mask, beta_reward, kl_kind)
        advantages, returns = estimator(token_rewards, mask, values=old_values if use_values else None,
                                        group_ids=group_ids, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = algos.masked_whiten(advantages, mask)
        # 5. update -------------------------------------------------------------------------------------
        t_update = time.time()
        policy.train()
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B)
            for s in range(0, B, mb_size):
                j = perm[s:s + mb_size].to(acc.device)
                with acc.autocast():
                    logp, values, logits = response_logprobs(policy, ids[j], attn[j], P, use_values)
                    pg_loss, pg_stats = algos.clipped_policy_loss(
                        logp, old_logp[j], advantages[j], mask[j], cfg.clip, cfg.clip_high, cfg.loss_agg)
                    loss = pg_loss
                    if use_values:
                        vf_loss, vf_stats = algos.clipped_value_loss(values, old_values[j], returns[j], mask[j],
                                                                     cfg.value_clip, cfg.loss_agg)
                        loss = loss + cfg.vf_coef * vf_loss
                        pg_stats = {**pg_stats, **vf_stats, "value_loss": vf_loss.detach()}
                    if cfg.kl_in == "loss" and ref_logp is not None:
                        kl_term = algos.kl_loss(logp, ref_logp[j], mask[j], kl_kind, cfg.loss_agg)
                        loss = loss + cfg.kl_coef * kl_term
                        pg_stats["kl_loss"] = kl_term.detach()
                check_finite(loss, f"{stage} step {step}")
                acc.backward(loss)
                acc.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
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
            sampler_logp = torch.zeros_like(old_logp)
            for i, lp in enumerate(samples.logprobs):
                sampler_logp[i, :len(lp)] = torch.tensor(lp)
            mismatch = (old_logp - sampler_logp).abs() * mask
        record = {"reward": scores.mean().item(), "accuracy": sum(g.correct for g in grades) / B,
                  "answered": sum(g.pred is not None for g in grades) / B, "kl": kl_seq.item(),
                  "response_length": mask.sum(-1).mean().item(), "rollout_s": t_rollout, "update_s": t_update,
                  "lr": sched.get_last_lr()[0], **{k: sum(v) / len(v) for k, v in stats.items()}}
        if use_values:
            record["explained_variance"] = algos.explained_variance(old_values, returns, mask).item()
        if cfg.temperature == 1.0:  # sampler vs trainer log-probs of the same tokens
            record["logp_mismatch_mean"] = (mismatch.sum() / mask.sum().clamp(min=1)).item()
            record["logp_mismatch_max"] = mismatch.max().item()
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
    bar.close()
    return {"best_val": best_val, "best_step": best_step}
