"""Supervised fine-tuning on (question, CoT): the ReFT warm-up, the SFT baseline and the tiny base's pretraining.

Loss on the answer tokens only (the prompt is masked, unless `loss_on_prompt`), AdamW with linear warm-up then
linear decay, gradient clipping, greedy validation accuracy every `eval_every_epochs`. Checkpoints (HF format,
`reftune.train.state.TrainState`): `last/` (resumable, every `save_every_steps` and each epoch), `best/`
(highest validation accuracy), and `epoch-K/` for each K in `snapshot_epochs` (the warm-up model is such a
snapshot).
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from reftune.config import SFTConfig
from reftune.example import Example
from reftune.errors import UserError
from reftune.model.batching import collate_sft, encode_sft
from reftune.model.modeling import enable_activation_checkpointing
from reftune.model.prompts import build_prompt, build_target
from reftune.train.accel import (all_sum, backward, check_finite, get_accelerator, is_main, no_sync, num_processes,
                                 optimizer_step, prepare, shard, unwrap, whole_weights)
from reftune.train.context import RunContext
from reftune.train.state import TrainState


def sft_rows(tokenizer, train: list[Example], ctx: RunContext, loss_on_prompt: bool, batch_size: int):
    """(input ids, labels) of every example with a rationale; those whose prompt fills max_length are skipped."""
    rows = [encode_sft(tokenizer, build_prompt(e.question, ctx.template, tokenizer),
                       build_target(e.cot, ctx.template, e.answer), ctx.max_length, loss_on_prompt)
            for e in train if e.cot]
    if not rows:
        raise UserError("SFT needs examples with a rationale (cot); the training split has none")
    fitting = [r for r in rows if any(label != -100 for label in r[1])]
    if not fitting:
        raise UserError(f"model.max_length={ctx.max_length} leaves no room for any answer after the prompt; raise it")
    if len(fitting) < len(rows):  # a prompt filling max_length has no target token: nothing to learn, NaN loss
        tqdm.write(f"[{ctx.stage}] skipped {len(rows) - len(fitting)} examples whose prompt fills "
                   f"model.max_length={ctx.max_length}")
    if len(fitting) < batch_size:
        raise UserError(f"sft.batch_size={batch_size} is larger than the training split ({len(fitting)} "
                        f"examples with a rationale); lower sft.batch_size")
    return fitting


def accumulated_step(model, acc, micro_batches: list[dict], opt, sched, grad_clip: float, where: str):
    """One optimizer step over a batch given as micro-batches: each micro-batch's token-mean loss is weighted by
    its share of the batch's target tokens and backpropagated on its own, so the gradient is the whole batch's
    (up to float rounding) while only one micro-batch's activations are held. Returns (loss, grad norm).

    With several processes, `micro_batches` are this process's share of the batch: the shares are of all
    processes' target tokens, times N since DDP averages the N gradients (it all-reduces at the last backward
    only), and the loss returned is the whole batch's."""
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches]  # the model shifts labels by one
    n_proc, device = num_processes(), micro_batches[0]["labels"].device
    total = all_sum(torch.tensor(float(sum(counts)), device=device)).item()
    done = []
    for i, (b, n) in enumerate(zip(micro_batches, counts)):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else no_sync(acc, model, opt), acc.autocast():
            loss = model(**b).loss * (n / total * n_proc)
            if not last:
                check_finite(loss.detach(), "loss", where)
                backward(acc, loss, opt)
        done.append(loss.detach())
    grad_norm = optimizer_step(acc, loss, model.parameters(), opt, grad_clip, sched, where)
    return all_sum(sum(done)) / n_proc, grad_norm


def share(picked: list, k: int, tokenizer, device) -> list[dict]:
    """This process's share of a batch's rows (all of them with one process), as k micro-batches on `device`."""
    mine = shard(len(picked))
    rows = picked[mine.start:mine.stop]
    return [{key: v.to(device) for key, v in collate_sft(rows[m::k], tokenizer.pad_token_id).items()}
            for m in range(k)]


def train_sft(model, tokenizer, train: list[Example], val: list[Example], cfg: SFTConfig, ctx: RunContext,
              snapshot_epochs=()) -> dict:
    """Train `model` in place; returns {"best_val", "best_epoch", "epochs_run"}. Resumes from ctx.out_dir/last."""
    rows = sft_rows(tokenizer, train, ctx, cfg.loss_on_prompt, cfg.batch_size)
    if cfg.batch_size < num_processes() * cfg.gradient_accumulation_steps:
        raise UserError(f"sft.batch_size={cfg.batch_size} gives fewer than one row per micro-batch on each of the "
                        f"{num_processes()} processes (sft.gradient_accumulation_steps="
                        f"{cfg.gradient_accumulation_steps}); raise sft.batch_size")
    steps_per_epoch = len(rows) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    acc = get_accelerator(ctx.precision)

    def adamw():
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)

    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model, opt = prepare(acc, model, adamw, cfg.grad_clip)
    sched = get_linear_schedule_with_warmup(getattr(opt, "optimizer", opt), math.ceil(cfg.warmup_ratio * total), total)
    state = TrainState(ctx.out_dir, unwrap(model), tokenizer, opt, sched, unit="epoch")
    state.resume(lr=cfg.lr)
    p = state.progress

    bar = tqdm(total=total, initial=p.step, desc=ctx.stage, dynamic_ncols=True, disable=not is_main())
    tokens, t0 = 0, time.time()
    while p.epoch < cfg.epochs:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(ctx.seed * 100_003 + p.epoch))
        order = order.tolist()
        model.train()
        for i in range(p.step - p.epoch * steps_per_epoch, steps_per_epoch):
            picked = [rows[j] for j in order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
            micro = share(picked, cfg.gradient_accumulation_steps, tokenizer, acc.device)
            loss, grad_norm = accumulated_step(model, acc, micro, opt, sched, cfg.grad_clip, f"{ctx.stage} step {p.step}")
            p.step += 1
            tokens += int(all_sum(sum(b["attention_mask"].sum() for b in micro)))
            bar.update(1)
            if p.step % 10 == 0 or p.step == total:
                dt = time.time() - t0
                ctx.logger.log(ctx.stage, p.step, loss=loss.item(), lr=sched.get_last_lr()[0],
                               grad_norm=float(grad_norm), tokens_per_s=tokens / max(dt, 1e-9),
                               epoch=p.epoch + (i + 1) / steps_per_epoch)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                tokens, t0 = 0, time.time()
            if cfg.save_every_steps and p.step % cfg.save_every_steps == 0:
                state.save_last()
        p.epoch += 1
        if p.epoch in snapshot_epochs:
            state.save(f"epoch-{p.epoch}")
        if p.epoch % cfg.eval_every_epochs == 0 or p.epoch == cfg.epochs:
            with whole_weights(model):  # FSDP / ZeRO-3: the main process validates alone, from whole weights
                res = ctx.validate(unwrap(model), tokenizer, val)
            ctx.logger.log(ctx.stage, p.step, epoch=p.epoch, val_accuracy=res["accuracy"], val_answered=res["answered"])
            if is_main():
                bar.write(f"[{ctx.stage}] epoch {p.epoch}: val accuracy {res['accuracy']:.3f}")
            state.offer_best(res["accuracy"])
        state.save_last()
        if cfg.patience and p.stale >= cfg.patience and p.epoch > max(snapshot_epochs, default=0):
            bar.write(f"[{ctx.stage}] no validation gain for {p.stale} evaluations: stopping at epoch {p.epoch}")
            break
    bar.close()
    return {"best_val": p.best_val, "best_epoch": p.best_at, "epochs_run": p.epoch}
