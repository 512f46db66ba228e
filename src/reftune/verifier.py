"""A verifier (outcome reward model): P(correct | question, solution), for reranking k samples.

Data: the policy's own samples on the training questions, labelled correct/incorrect by the same grader as
evaluation (`rewards.grade` through `inference.sample_and_grade`); the validation questions' samples, never
trained on, measure it (loss, accuracy at 0.5, ROC AUC) and pick the best epoch.

Model: a `PolicyWithValue` started from a policy checkpoint; its value head reads the last hidden state at
the last token of prompt + solution + EOS and gives a logit; sigmoid(logit) = P(correct); the loss is binary
cross-entropy; trunk and head are trained together. Saved like any policy checkpoint (HF files +
`value_head.safetensors`), so `load_verifier` is `load_pretrained` + `load_value_head`.

Simplifications: one label per solution (the final answer's correctness, no step labels); no class
re-weighting — instead the head's bias starts at the logit of the training base rate, so the first steps do
not spend themselves learning the prior; sequences longer than `max_length` keep their last tokens (the
answer), dropping the start of the prompt.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from reftune.accel import check_finite, get_accelerator, optimizer_step
from reftune.batching import encode, left_pad, positions
from reftune.checkpoint import load_value_head, save_checkpoint
from reftune.config import VerifierConfig
from reftune.data.example import Example
from reftune.errors import UserError
from reftune.modeling import PolicyWithValue, load_pretrained
from reftune.prompts import build_prompt


class Verifier(nn.Module):
    """A `PolicyWithValue` read at the last position: forward(input_ids, attention_mask) → logits [B].

    Rows must be left-padded (so the last column is every row's last token). Only the last position's LM
    logits are computed (`logits_to_keep=1`): the verifier never needs the vocabulary distribution.
    """

    def __init__(self, policy: PolicyWithValue):
        super().__init__()
        self.policy = policy

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.policy.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                             output_hidden_states=True, use_cache=False, logits_to_keep=1)
        last = out.hidden_states[-1][:, -1]
        return self.policy.value_head(last.to(self.policy.value_head.weight.dtype)).squeeze(-1)


def encode_solution(tokenizer, prompt: str, completion: str, max_length: int) -> list[int]:
    """Token ids of prompt + completion + EOS, its last `max_length` tokens (the answer end is kept)."""
    ids = encode(tokenizer, prompt) + encode(tokenizer, completion) + [tokenizer.eos_token_id]
    return ids[-max_length:]


@torch.no_grad()
def _logits(verifier: Verifier, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    was_training = verifier.training
    verifier.eval()
    out = []
    for s in range(0, len(rows), batch_size):
        ids, attn = (t.to(device) for t in left_pad(rows[s:s + batch_size], pad_id))
        out.append(verifier(ids, attn).float().cpu())
    verifier.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def verifier_scores(model_with_head, tokenizer, prompts: list[str], completions: list[str], *,
                    batch_size: int = 32, max_length: int = 512) -> list[float]:
    """P(correct) in [0, 1] of each (prompt text, completion text); `model_with_head` is a PolicyWithValue
    (or a `Verifier`). `prompts` are full prompt texts (`prompts.build_prompt`), as in training."""
    verifier = model_with_head if isinstance(model_with_head, Verifier) else Verifier(model_with_head)
    rows = [encode_solution(tokenizer, p, c, max_length) for p, c in zip(prompts, completions)]
    device = next(verifier.parameters()).device
    return torch.sigmoid(_logits(verifier, rows, tokenizer.pad_token_id, batch_size, device)).tolist()


def load_verifier(path: str | Path) -> tuple[PolicyWithValue, object]:
    """(PolicyWithValue, tokenizer) of a verifier checkpoint; a checkpoint without a value head is refused."""
    lm, tokenizer = load_pretrained(str(path))
    policy = PolicyWithValue(lm)
    if not load_value_head(path, policy.value_head):
        raise UserError(f"eval.verifier: {path} has no value_head.safetensors; train one with `reftune verifier`")
    return policy.eval(), tokenizer


def load_scorer(path: str | Path, template: str = "reft", batch_size: int = 32, max_length: int = 512,
                device: torch.device | str = "cpu"):
    """A `inference.Scorer` (questions, completions) → P(correct) backed by the verifier at `path`."""
    policy, tokenizer = load_verifier(path)
    policy.to(device)

    def scorer(questions: list[str], completions: list[str]) -> list[float]:
        prompts = [build_prompt(q, template, tokenizer) for q in questions]
        return verifier_scores(policy, tokenizer, prompts, completions, batch_size=batch_size, max_length=max_length)

    return scorer


def labelled_solutions(tokenizer, examples: list[Example], per_question: list[list[dict]], template: str,
                       max_length: int) -> list[tuple[list[int], float]]:
    """(token ids, label 1.0/0.0) for every graded sample (`inference.sample_and_grade`) of every example."""
    items = []
    for ex, samples in zip(examples, per_question):
        prompt = build_prompt(ex.question, template, tokenizer)
        items += [(encode_solution(tokenizer, prompt, s["text"], max_length), float(s["correct"])) for s in samples]
    return items


def roc_auc(scores: list[float], labels: list[float]) -> float | None:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties counting 1/2.

    Computed from ranks (Mann-Whitney U) with tied scores given their average rank. None when one class
    is absent (AUC is undefined).
    """
    n_pos = sum(1 for y in labels if y > 0.5)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1  # 1-based average rank of the tie block
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y > 0.5)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def validation_metrics(verifier: Verifier, items: list[tuple[list[int], float]], pad_id: int, batch_size: int,
                       device) -> dict:
    """{"loss" (BCE), "accuracy" (threshold 0.5), "auc" (None with one class), "positive_rate", "n"}."""
    if not items:
        return {"loss": float("nan"), "accuracy": float("nan"), "auc": None, "positive_rate": float("nan"), "n": 0}
    logits = _logits(verifier, [ids for ids, _ in items], pad_id, batch_size, device)
    labels = torch.tensor([y for _, y in items])
    return {"loss": F.binary_cross_entropy_with_logits(logits, labels).item(),
            "accuracy": ((logits > 0).float() == labels).float().mean().item(),
            "auc": roc_auc(logits.tolist(), labels.tolist()), "positive_rate": labels.mean().item(), "n": len(items)}


def train_verifier(policy: PolicyWithValue, tokenizer, train: list[tuple[list[int], float]],
                   val: list[tuple[list[int], float]], cfg: VerifierConfig, *, out_dir: str | Path, logger,
                   precision: str = "fp32", seed: int = 0, stage: str = "verifier") -> dict:
    """Train `policy` (trunk + value head) in place as a classifier; saves out_dir/best (lowest validation
    loss; the last epoch when there is no validation data). Returns {"best_epoch", "val": metrics of best}."""
    out_dir = Path(out_dir)
    if not train:
        raise UserError("verifier: no labelled training solutions")
    base_rate = min(max(sum(y for _, y in train) / len(train), 1e-3), 1 - 1e-3)
    with torch.no_grad():
        policy.value_head.bias.fill_(math.log(base_rate / (1 - base_rate)))
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    acc = get_accelerator(precision)
    verifier = Verifier(policy)
    opt = torch.optim.AdamW(verifier.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.05 * total), total)
    verifier, opt = acc.prepare(verifier, opt)
    core = acc.unwrap_model(verifier)
    pad_id = tokenizer.pad_token_id
    logger.log(stage, 0, train_solutions=len(train), train_positive_rate=base_rate, val_solutions=len(val))
    if len({y for _, y in train}) < 2:
        print(f"[{stage}] warning: every training solution is labelled {train[0][1]:g}; the verifier can only "
              f"learn that prior (sample more, or from a stronger model)")

    best_loss, best_epoch, best_metrics, step = float("inf"), -1, {}, 0
    bar = tqdm(total=total, desc=stage, dynamic_ncols=True)
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        verifier.train()
        for s in range(0, len(train), cfg.batch_size):
            batch = [train[j] for j in order[s:s + cfg.batch_size]]
            ids, attn = (t.to(acc.device) for t in left_pad([b[0] for b in batch], pad_id))
            labels = torch.tensor([b[1] for b in batch], device=acc.device)
            with acc.autocast():
                logits = verifier(ids, attn)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            check_finite(loss, f"{stage} step {step}")
            grad_norm = optimizer_step(acc, loss, verifier.parameters(), opt, cfg.grad_clip, sched)
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == total:
                logger.log(stage, step, loss=loss.item(), lr=sched.get_last_lr()[0], grad_norm=float(grad_norm),
                           seconds=time.time() - t0)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        metrics = validation_metrics(core, val, pad_id, cfg.batch_size, acc.device)
        logger.log(stage, step, epoch=epoch, **{f"val_{k}": v for k, v in metrics.items() if v is not None})
        auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
        bar.write(f"[{stage}] epoch {epoch}: val loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.3f}, AUC {auc}")
        if best_epoch < 0 or not val or metrics["loss"] < best_loss:
            best_loss, best_epoch, best_metrics = metrics["loss"], epoch, metrics
            save_checkpoint(out_dir / "best", core.policy.lm, tokenizer, value_head=core.policy.value_head)
    bar.close()
    return {"best_epoch": best_epoch, "val": best_metrics}
