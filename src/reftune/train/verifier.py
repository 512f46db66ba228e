"""Training a verifier (outcome reward model): P(correct | question, solution), for reranking k samples.

Data: the policy's own samples on the training questions, labelled correct/incorrect by the same grader as
evaluation (`grading.grade` through `eval.sampling.sample_and_grade`); the validation questions' samples, never
trained on, measure it (loss, accuracy at 0.5, ROC AUC) and pick the best epoch.

Model: a `PolicyWithValue` started from a policy checkpoint; its value head reads the last hidden state at
the last token of prompt + solution + EOS and gives a logit; sigmoid(logit) = P(correct); the loss is binary
cross-entropy; trunk and head are trained together (`train.scorers.train_scorer`, the loop the Bradley-Terry
reward model of `reftune.train.reward_model` shares). Saved like any policy checkpoint (HF files +
`value_head.safetensors`) plus `reward_model.json` (kind "verifier"), so `load_verifier` is `load_pretrained` +
`load_value_head`.

Simplifications: one label per solution (the final answer's correctness, no step labels); no class
re-weighting — instead the head's bias starts at the logit of the training base rate, so the first steps do
not spend themselves learning the prior; sequences longer than `max_length` keep their last tokens (the
answer), dropping the start of the prompt.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from reftune.config import VerifierConfig
from reftune.errors import UserError
from reftune.example import Example
from reftune.model.modeling import PolicyWithValue
from reftune.model.prompts import build_prompt
from reftune.rewards.scorer import Verifier, encode_solution
from reftune.train.scorers import Objective, train_scorer


def labelled_solutions(tokenizer, examples: list[Example], per_question: list[list[dict]], template: str,
                       max_length: int) -> list[tuple[list[int], float]]:
    """(token ids, label 1.0/0.0) for every graded sample (`eval.sampling.sample_and_grade`) of every example."""
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


def classification_metrics(logits: torch.Tensor, items: list[tuple[list[int], float]]) -> dict:
    """Of logits [N] for N labelled items: {"loss" (BCE), "accuracy" (threshold 0.5), "auc" (None with one
    class), "positive_rate", "n"}."""
    if not items:
        return {"loss": float("nan"), "accuracy": float("nan"), "auc": None, "positive_rate": float("nan"), "n": 0}
    labels = torch.tensor([y for _, y in items])
    return {"loss": F.binary_cross_entropy_with_logits(logits, labels).item(),
            "accuracy": ((logits > 0).float() == labels).float().mean().item(),
            "auc": roc_auc(logits.tolist(), labels.tolist()), "positive_rate": labels.mean().item(), "n": len(items)}


BCE = Objective(
    kind="verifier",
    rows=lambda items: [ids for ids, _ in items],
    loss=lambda logits, items: F.binary_cross_entropy_with_logits(
        logits, torch.tensor([y for _, y in items], device=logits.device)),
    metrics=classification_metrics,
    rank=lambda m: -m["loss"])


def train_verifier(policy: PolicyWithValue, tokenizer, train: list[tuple[list[int], float]],
                   val: list[tuple[list[int], float]], cfg: VerifierConfig, *, out_dir: str | Path, logger,
                   precision: str = "fp32", seed: int = 0, stage: str = "verifier", template: str | None = None,
                   max_length: int | None = None) -> dict:
    """Train `policy` (trunk + value head) in place as a classifier; saves out_dir/best (lowest validation
    loss; the last epoch when there is no validation data). Returns {"best_epoch", "val": metrics of best}."""
    if not train:
        raise UserError("verifier: no labelled training solutions")
    base_rate = min(max(sum(y for _, y in train) / len(train), 1e-3), 1 - 1e-3)
    with torch.no_grad():
        policy.value_head.bias.fill_(math.log(base_rate / (1 - base_rate)))
    logger.log(stage, 0, train_solutions=len(train), train_positive_rate=base_rate, val_solutions=len(val))
    if len({y for _, y in train}) < 2:
        print(f"[{stage}] warning: every training solution is labelled {train[0][1]:g}; the verifier can only "
              f"learn that prior (sample more, or from a stronger model)")
    return train_scorer(Verifier(policy), tokenizer, train, val, cfg, BCE, out_dir=out_dir, logger=logger,
                        precision=precision, seed=seed, stage=stage, template=template, max_length=max_length)
