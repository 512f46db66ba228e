"""The training loop of a scalar score on a policy trunk, shared by the verifier and the Bradley-Terry reward model.

The model is a `rewards.scorer.Verifier`: a `PolicyWithValue` whose value head reads the last token of a left-padded
row and gives one score. What differs between the two is an `Objective`: the token rows a training item
contributes, the loss on their scores, the validation metrics, and which metrics make an epoch the best.
Everything else is here, once: AdamW, linear warm-up (5 % of the steps) then linear decay, gradient clipping,
a seeded shuffle per epoch, one validation per epoch, and the best epoch saved to out_dir/best with
`reward_model.json` (the objective's kind, and the prompt template and max_length it was trained with).

Simplifications: no resumable state (a run re-trains from its cached samples); validation scores every row
in eval mode once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from reftune.train.accel import get_accelerator, optimizer_step, unwrap
from reftune.model.checkpoint import save_checkpoint
from reftune.model.classifier import CLASSIFIER_DIR, export_checkpoint
from reftune.config import VerifierConfig
from reftune.model.batching import left_pad
from reftune.rewards.scorer import score_rows
from reftune.errors import UserError


@dataclass(frozen=True)
class Objective:
    """What the score is trained for.

    kind: written to reward_model.json ("verifier" | "bradley_terry").
    rows: the token rows of a list of items (e.g. both completions of each pair), scored in one batch.
    loss: (scores [len(rows(items))], items) → scalar loss.
    metrics: (scores of rows(val), val items) → validation metrics (must accept no items).
    rank: validation metrics → a sortable value; the epoch with the largest is kept.
    """

    kind: str
    rows: Callable[[list], list[list[int]]]
    loss: Callable[[torch.Tensor, list], torch.Tensor]
    metrics: Callable[[torch.Tensor, list], dict]
    rank: Callable[[dict], object]


def _summary(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def train_scorer(model: torch.nn.Module, tokenizer, train: list, val: list, cfg: VerifierConfig, objective: Objective,
                 *, out_dir: str | Path, logger, precision: str = "fp32", seed: int = 0, stage: str = "verifier",
                 template: str | None = None, max_length: int | None = None) -> dict:
    """Train `model` (a `rewards.scorer.Verifier`: trunk and head together) in place on `train` items.

    cfg: the optimisation fields of a `VerifierConfig` (or its subclass `RewardModelConfig`): epochs, lr,
    weight_decay, batch_size (items per step), grad_clip. template, max_length: how the rows were built, saved
    in reward_model.json so a loader can build its prompts the same way.
    Logs loss, lr, grad_norm every 10 steps, then train_loss (the epoch's mean) and val_<metric> per epoch.
    Saves out_dir/best at the epoch of largest `objective.rank` (the last epoch when `val` is empty), and that
    epoch as a standard HF sequence-classification checkpoint in out_dir/hf_classifier (`model.classifier`).
    Returns {"best_epoch", "val": the metrics of that epoch}.
    """
    out_dir = Path(out_dir)
    if not train:
        raise UserError(f"{stage}: no training data")
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    acc = get_accelerator(precision)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.05 * total), total)
    model, opt = acc.prepare(model, opt)
    core = unwrap(model)
    pad_id = tokenizer.pad_token_id
    info = {"kind": objective.kind, "template": template, "max_length": max_length}

    best_rank, best_epoch, best_metrics, step = None, -1, {}, 0
    bar = tqdm(total=total, desc=stage, dynamic_ncols=True)
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        model.train()
        losses = []
        for s in range(0, len(train), cfg.batch_size):
            batch = [train[j] for j in order[s:s + cfg.batch_size]]
            ids, attn = (t.to(acc.device) for t in left_pad(objective.rows(batch), pad_id))
            with acc.autocast():
                scores = model(ids, attn)
            loss = objective.loss(scores.float(), batch)
            grad_norm = optimizer_step(acc, loss, model.parameters(), opt, cfg.grad_clip, sched, f"{stage} step {step}")
            losses.append(loss.item())
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == total:
                logger.log(stage, step, loss=loss.item(), lr=sched.get_last_lr()[0], grad_norm=float(grad_norm),
                           seconds=time.time() - t0)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        metrics = objective.metrics(score_rows(core, objective.rows(val), pad_id, cfg.batch_size, acc.device), val)
        logger.log(stage, step, epoch=epoch, train_loss=sum(losses) / len(losses),
                   **{f"val_{k}": v for k, v in metrics.items() if v is not None})
        bar.write(f"[{stage}] epoch {epoch}: train loss {sum(losses) / len(losses):.4f}; val {_summary(metrics)}")
        rank = objective.rank(metrics)
        if best_epoch < 0 or not val or rank > best_rank:
            best_rank, best_epoch, best_metrics = rank, epoch, metrics
            save_checkpoint(out_dir / "best", core.policy.lm, tokenizer, value_head=core.policy.value_head,
                            reward_model=info)
    bar.close()
    export_checkpoint(out_dir / "best", out_dir / CLASSIFIER_DIR)  # the best epoch, for HF tools as well
    return {"best_epoch": best_epoch, "val": best_metrics}
