"""Supervised fine-tuning on (question, CoT): the ReFT warm-up and the SFT baseline.

Loss on the answer tokens only (the prompt is masked), AdamW with linear warm-up then linear decay,
gradient clipping, greedy validation accuracy every `eval_every_epochs`. Checkpoints (HF format):
`last/` (resumable, every `save_every_steps` and each epoch), `best/` (highest validation accuracy),
and `epoch-K/` for each K in `snapshot_epochs` (the warm-up model is such a snapshot).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from reftune.accel import check_finite, get_accelerator, optimizer_step
from reftune.batching import collate_sft, encode_sft
from reftune.checkpoint import load_state, rng_state, save_checkpoint, set_rng_state
from reftune.config import SFTConfig
from reftune.data.example import Example
from reftune.errors import UserError
from reftune.evaluate import evaluate
from reftune.prompts import build_prompt, build_target


def train_sft(model, tokenizer, train: list[Example], val: list[Example], cfg: SFTConfig, *, out_dir: str | Path,
              logger, template: str = "reft", cot: str = "nl", max_length: int = 320, precision: str = "fp32",
              seed: int = 0, eval_batch_size: int = 128, max_new_tokens: int = 96, snapshot_epochs=(),
              sandbox=None, stage: str = "sft") -> dict:
    """Train `model` in place; returns {"best_val", "best_epoch", "epochs_run"}. Resumes from out_dir/last."""
    out_dir = Path(out_dir)
    pairs = [encode_sft(tokenizer, build_prompt(e.question, template, tokenizer),
                        build_target(e.cot, template, e.answer), max_length, cfg.loss_on_prompt)
             for e in train if e.cot]
    if not pairs:
        raise UserError("SFT needs examples with a rationale (cot); the training split has none")
    fitting = [p for p in pairs if any(label != -100 for label in p[1])]
    if not fitting:
        raise UserError(f"model.max_length={max_length} leaves no room for any answer after the prompt; raise it")
    if len(fitting) < len(pairs):  # a prompt filling max_length has no target token: nothing to learn, NaN loss
        tqdm.write(f"[{stage}] skipped {len(pairs) - len(fitting)} examples whose prompt fills "
                   f"model.max_length={max_length}")
    pairs = fitting
    if len(pairs) < cfg.batch_size:
        raise UserError(f"sft.batch_size={cfg.batch_size} is larger than the training split ({len(pairs)} "
                        f"examples with a rationale); lower sft.batch_size")
    steps_per_epoch = len(pairs) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    acc = get_accelerator(precision)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)
    model, opt = acc.prepare(model, opt)

    epoch, step, best_val, best_epoch, stale = 0, 0, -1.0, -1, 0
    state = load_state(out_dir / "last")
    if state is not None:  # resume: weights were loaded by the caller from out_dir/last
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        epoch, step = state["epoch"], state["step"]
        best_val, best_epoch, stale = state["best_val"], state["best_epoch"], state["stale"]

    def checkpoint(path: Path, with_state: bool) -> None:
        st = None
        if with_state:
            st = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
                  "epoch": epoch, "step": step, "best_val": best_val, "best_epoch": best_epoch, "stale": stale}
        save_checkpoint(path, acc.unwrap_model(model), tokenizer, state=st)

    bar = tqdm(total=total, initial=step, desc=stage, dynamic_ncols=True)
    tokens, t0 = 0, time.time()
    while epoch < cfg.epochs:
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        model.train()
        for i in range(step - epoch * steps_per_epoch, steps_per_epoch):
            batch = collate_sft([pairs[j] for j in order[i * cfg.batch_size:(i + 1) * cfg.batch_size]],
                                tokenizer.pad_token_id)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.autocast():
                loss = model(**batch).loss
            check_finite(loss, f"{stage} step {step}")
            grad_norm = optimizer_step(acc, loss, model.parameters(), opt, cfg.grad_clip, sched)
            step += 1
            tokens += int(batch["attention_mask"].sum())
            bar.update(1)
            if step % 10 == 0 or step == total:
                dt = time.time() - t0
                logger.log(stage, step, loss=loss.item(), lr=sched.get_last_lr()[0], grad_norm=float(grad_norm),
                           tokens_per_s=tokens / max(dt, 1e-9), epoch=epoch + (i + 1) / steps_per_epoch)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                tokens, t0 = 0, time.time()
            if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                checkpoint(out_dir / "last", True)
        epoch += 1
        if epoch in snapshot_epochs:
            checkpoint(out_dir / f"epoch-{epoch}", False)
        if epoch % cfg.eval_every_epochs == 0 or epoch == cfg.epochs:
            res = evaluate(acc.unwrap_model(model), tokenizer, val, template=template, cot=cot,
                           batch_size=eval_batch_size, max_new_tokens=max_new_tokens, sandbox=sandbox,
                           desc=f"{stage} val")
            logger.log(stage, step, epoch=epoch, val_accuracy=res["accuracy"], val_answered=res["answered"])
            bar.write(f"[{stage}] epoch {epoch}: val accuracy {res['accuracy']:.3f}")
            if res["accuracy"] > best_val:
                best_val, best_epoch, stale = res["accuracy"], epoch, 0
                checkpoint(out_dir / "best", False)
            else:
                stale += 1
        checkpoint(out_dir / "last", True)
        if cfg.patience and stale >= cfg.patience and epoch > max(snapshot_epochs, default=0):
            bar.write(f"[{stage}] no validation gain for {stale} evaluations: stopping at epoch {epoch}")
            break
    bar.close()
    return {"best_val": best_val, "best_epoch": best_epoch, "epochs_run": epoch}
