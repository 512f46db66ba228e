"""The RL loop: PPO as in ReFT, the other estimators of `reftune.algos`, and online self-training, in one
function that reads as a table of contents. Each iteration is

  1. collect    — `rollout.collect`: G samples per question (temperature, top-p, KV cache) in
                  `rl.rollout_precision`, R^3 start states with a curriculum; rewards from `rl.rewards` (ReFT's
                  1 correct / 0.1 wrong number / 0 no answer by default) and DAPO's overlong penalty;
  2. keep       — `rollout.dynamic_sampling` (DAPO, `rl.dynamic_sampling`): groups whose rewards all agree are
                  dropped and refilled with new questions;
  3. score      — `scoring.score`: the policy's log-probs and values of the sampled tokens, the frozen
                  reference's (the warm-up model) for the KL, the sampler's for the mismatch;
  4. advantages — `update.advantages`: ReFT's per-token KL penalty inside the reward, then GAE (or the group
                  estimator of `rl.advantage`), whitened with `rl.whiten_advantages`;
  5. update     — `update.ppo_update`: `ppo_epochs` passes of `minibatches` with the clipped policy and value
                  losses (`tis_cap`: truncated importance weights p_trainer / p_sampler; `sft_coef`: plus the NLL
                  of the minibatch's questions' gold CoTs, or of `sft_rows` drawn from all of them); or, with
                  `rl.objective=online_self_training` (ReFT's baseline), `update.nll_update` on the batch's
                  correct finished samples plus its gold CoTs — no KL, reference, value loss or advantages;
  6. record     — `metrics.iteration_record`; validation every `eval_every`, `best/` kept, `last/` resumable
                  (`reftune.train.state.TrainState`), `step-N/` snapshots.

A trained reward model (`rl.reward_model`, for the `reward_model` reward function) is loaded once, frozen, on
the training device, and reaches the reward functions as `reward_scorer`.

Launched in N processes (README, Scaling), each rolls out, rewards and scores its contiguous share of the step's
questions (`accel.shard`); advantages, losses and the record are made whole-batch by the all-reduces in
`update` and `metrics`, DDP all-reduces the gradients, and process 0 alone validates and writes.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from reftune.config import RLConfig
from reftune.example import Example
from reftune.errors import UserError
from reftune.model.batching import encode_target
from reftune.model.modeling import enable_activation_checkpointing
from reftune.model.prompts import build_target
from reftune.model.sampler import make_sampler
from reftune.rewards.scorer import load_reward_scorer
from reftune.rewards.functions import resolve_rewards
from reftune.rl.metrics import iteration_record
from reftune.rl.rollout import RolloutSetup, batch_indices, collect, dynamic_sampling, release_engine, sync_engine
from reftune.rl.scoring import ReferenceLM, needs_reference, reuses_update_forward, score
from reftune.rl.update import advantages, ppo_update, self_training_update
from reftune.train.accel import (gather_lists, get_accelerator, is_main, num_processes, prepare, shard, unwrap,
                                 warn_if_bf16_is_emulated, whole_weights)
from reftune.train.context import RunContext
from reftune.train.state import TrainState

__all__ = ["needs_reference", "train_rl"]


def check_rl_split(train: list[Example], cfg: RLConfig) -> None:
    if not train:
        raise UserError("RL needs training questions; the training split is empty")
    if len(train) < cfg.prompts_per_step:
        raise UserError(f"rl.prompts_per_step={cfg.prompts_per_step} is larger than the training split "
                        f"({len(train)} questions); lower rl.prompts_per_step")
    if cfg.sft_rows and cfg.sft_coef > 0 and not any(e.cot for e in train):
        raise UserError("rl.sft_rows: no training question has a gold CoT to draw (answer-only data)")


def check_data_parallel(cfg: RLConfig) -> None:
    """Every process needs at least one question of each iteration."""
    n = num_processes()
    if cfg.prompts_per_step < n:
        raise UserError(f"rl.prompts_per_step={cfg.prompts_per_step} leaves a process without questions ({n} "
                        f"processes); raise it to at least {n}")


def rollout_setup(core, tokenizer, train: list[Example], cfg: RLConfig, ctx: RunContext, device,
                  curriculum) -> RolloutSetup:
    """The sampler on the policy's LM, the prompts, the reward functions and the reward model (if used)."""
    warn_if_bf16_is_emulated("rl.rollout_precision", cfg.rollout_precision, device.type)
    reward_fns = resolve_rewards(cfg.rewards)
    scorer = None
    if cfg.reward_model and any(name == "reward_model" for name, _, _ in reward_fns):
        scorer = load_reward_scorer(cfg.reward_model, template=ctx.template, sigmoid=cfg.reward_model_sigmoid,
                                    batch_size=ctx.eval_batch_size, device=device)
    backend = ctx.rollout.backend if ctx.rollout is not None else "hf"
    fp32_head = ((ctx.rollout is None or ctx.rollout.fp32_lm_head) and ctx.precision == "fp32"
                 and cfg.rollout_precision != "fp32")  # the trainer's logits are fp32: so are the sampler's
    options = {"shared_prefix": ctx.rollout is None or ctx.rollout.shared_prefix} if backend == "hf" else {
        "dtype": cfg.rollout_precision, "seed": ctx.seed, "gpu_memory_utilization": ctx.rollout.gpu_memory_utilization,
        "tensor_parallel_size": ctx.rollout.tensor_parallel_size, "enable_sleep_mode": ctx.rollout.sleep}
    sampler = make_sampler(backend, core.lm, tokenizer, device=device, fp32_head=fp32_head,
                           batch_size=max(cfg.prompts_per_step * cfg.num_generations, 64), **options)
    return RolloutSetup.build(sampler, tokenizer, train, cfg, ctx, reward_fns=reward_fns, reward_scorer=scorer,
                              curriculum=curriculum, device_type=device.type)


def validate_and_save(state: TrainState, policy, tokenizer, val: list[Example], cfg: RLConfig, ctx: RunContext) -> None:
    """The end of an iteration: validation every `eval_every` (a new best saved to best/), last/ every
    `save_every`, step-N/ every `snapshot_every`, and all of them after the last step."""
    p = state.progress
    if p.step % cfg.eval_every == 0 or p.step == cfg.steps:
        with whole_weights(policy):  # FSDP / ZeRO-3: the main process validates alone, from whole weights
            res = ctx.validate(policy.lm, tokenizer, val, max_new_tokens=cfg.max_new_tokens)
        ctx.logger.log(ctx.stage, p.step, val_accuracy=res["accuracy"], val_answered=res["answered"])
        if is_main():
            tqdm.write(f"[{ctx.stage}] step {p.step}: val accuracy {res['accuracy']:.3f}")
        state.offer_best(res["accuracy"])
    if p.step % cfg.save_every == 0 or p.step == cfg.steps:
        state.save_last()
    if cfg.snapshot_every and p.step % cfg.snapshot_every == 0:
        state.save(f"step-{p.step}")


def train_rl(policy, ref_lm, tokenizer, train: list[Example], val: list[Example], cfg: RLConfig, ctx: RunContext,
             curriculum=None) -> dict:
    """Train `policy` (a `PolicyWithValue`) in place from ctx.out_dir/last if it is resumable; returns
    {"best_val", "best_step"} and writes ctx.out_dir/best (highest validation accuracy) and ctx.out_dir/last.

    ref_lm: the frozen reference LM (only used, and only needed, when `needs_reference(cfg)`); curriculum: a
    `reftune.rl.curriculum.Curriculum` (R^3) or None. Validation always starts from the question.
    """
    check_rl_split(train, cfg)
    check_data_parallel(cfg)
    use_values = cfg.advantage == "gae" and cfg.objective == "ppo"
    acc = get_accelerator(ctx.precision)
    if not use_values:  # out of DDP's graph: it would wait for the unused head's gradients (and no step moves it)
        policy.value_head.requires_grad_(False)
    if cfg.gradient_checkpointing:  # only in train mode: rollouts and scoring keep their KV cache / speed
        enable_activation_checkpointing(policy.lm)
    policy, opt = prepare(acc, policy, lambda: torch.optim.AdamW(policy.parameters(), lr=cfg.lr,
                                                                  weight_decay=cfg.weight_decay), cfg.grad_clip)
    sched = torch.optim.lr_scheduler.LambdaLR(getattr(opt, "optimizer", opt),
                                              lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    core = unwrap(policy)
    ref = ReferenceLM(ref_lm).eval() if ref_lm is not None and needs_reference(cfg) else None
    setup = rollout_setup(core, tokenizer, train, cfg, ctx, acc.device, curriculum)
    gold = ([encode_target(tokenizer, build_target(e.cot, ctx.template, e.answer)) if e.cot else None for e in train]
            if cfg.objective == "online_self_training" or cfg.sft_coef > 0 else [])
    gold_pool = [(setup.prompt_ids[i], g) for i, g in enumerate(gold) if g] if cfg.sft_rows else None
    state = TrainState(ctx.out_dir, core.lm, tokenizer, opt, sched, value_head=core.value_head, unit="step",
                       extras={"curriculum": curriculum})
    state.resume(lr=cfg.lr)
    p, pad_id = state.progress, tokenizer.pad_token_id

    # the curves' step-0 point (never a candidate for best/), logged with step 1: a run killed before then redoes it
    start = None
    if p.step == 0 and cfg.eval_at_start:
        with whole_weights(core):
            start = ctx.validate(core.lm, tokenizer, val, max_new_tokens=cfg.max_new_tokens)
    bar = tqdm(total=cfg.steps, initial=p.step, desc=ctx.stage, dynamic_ncols=True, disable=not is_main())
    while p.step < cfg.steps:
        where, t0 = f"{ctx.stage} step {p.step}", time.time()
        idx, mine = batch_indices(p.step, len(train), cfg.prompts_per_step, ctx.seed), shard(cfg.prompts_per_step)
        with whole_weights(core):  # FSDP / ZeRO-3: whole weights while only read (no collective per forward)
            rollout, kept = collect(setup, idx[mine.start:mine.stop], p.step, first=mine.start, batch=idx), None
            if cfg.dynamic_sampling:
                rollout, kept = dynamic_sampling(setup, rollout, p.step)
            t_rollout = time.time() - t0
            batch = score(policy, ref, rollout, pad_id=pad_id, device=acc.device, autocast=acc.autocast,
                          chunks=cfg.minibatches, with_values=use_values, tis_cap=cfg.tis_cap,
                          update_forward=reuses_update_forward(cfg))
        t1, returns = time.time(), None
        t_scoring = t1 - t0 - t_rollout
        release_engine(setup)  # vllm on GPU with rollout.sleep: its memory is the update's until the next rollout
        if cfg.objective == "ppo":
            adv, returns = advantages(batch, rollout.scores, cfg)
            stats = ppo_update(policy, opt, acc, batch, adv, returns, cfg, use_values, where,
                               gold=[(setup.prompt_ids[i], gold[i]) if gold[i] else None for i in rollout.idx]
                               if gold and gold_pool is None else None, gold_pool=gold_pool)
        else:
            stats = self_training_update(policy, opt, acc, rollout, setup.prompt_ids, gold, pad_id, cfg, where)
        sync_engine(setup, core.lm)  # a separate engine (vllm) samples the next rollout from the new weights
        sched.step()
        p.step += 1
        record = iteration_record(rollout, batch, stats, cfg, lr=sched.get_last_lr()[0], rollout_s=t_rollout,
                                  update_s=time.time() - t1, returns=returns if use_values else None,
                                  kept_fraction=kept, scoring_s=t_scoring)
        if rollout.starts:  # R^3: accuracy per start state; the schedule may move (a stage, each question's range)
            G = cfg.num_generations  # every process updates its copy of the schedule alike, from all samples
            record.update(curriculum.update(p.step, gather_lists([st.k for st in rollout.starts for _ in range(G)]),
                                            gather_lists([g.correct for g in rollout.grades]),
                                            gather_lists([st.key for st in rollout.starts for _ in range(G)])))
        if start is not None:
            ctx.logger.log(ctx.stage, 0, val_accuracy=start["accuracy"], val_answered=start["answered"])
            start = None
        ctx.logger.log(ctx.stage, p.step, **record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}", kl=f"{record['kl']:.3f}")
        bar.update(1)
        validate_and_save(state, core, tokenizer, val, cfg, ctx)
    bar.close()
    if hasattr(setup.sampler, "close"):
        setup.sampler.close()  # one vLLM engine per process: the next stage builds its own
    return {"best_val": p.best_val, "best_step": p.best_at}
