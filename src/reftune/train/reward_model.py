"""Training a Bradley-Terry reward model (InstructGPT style): a scalar r(prompt, completion) fitted to preference
pairs.

P(chosen ≻ rejected) = σ(r_chosen − r_rejected); the loss is −log σ(r_chosen − r_rejected), averaged over pairs.
The model is the verifier's (`rewards.scorer.Verifier`: a `PolicyWithValue` read at the last token of prompt +
completion + EOS by its value head) and so is the training loop (`train.scorers.train_scorer`); only the
objective differs. Validation: the pairs' loss, pairwise accuracy (share of pairs with r_chosen > r_rejected,
ties counting 1/2) and mean margin r_chosen − r_rejected; the epoch of highest validation pairwise accuracy is
kept (lower loss breaks ties). Saved like the verifier, with reward_model.json of kind "bradley_terry".

The score is unbounded and only differences mean anything (adding a constant changes no probability), so as a
reward it is used raw or squashed by sigmoid (`rewards.scorer.load_reward_scorer`); a verifier's score is a logit of P(correct).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from reftune.config import RewardModelConfig
from reftune.data.pairs import Pair
from reftune.errors import UserError
from reftune.model.modeling import PolicyWithValue
from reftune.model.prompts import build_prompt
from reftune.rewards.scorer import Verifier, encode_solution
from reftune.train.scorers import Objective, train_scorer


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean over N pairs of −log σ(r_c − r_r); chosen, rejected: scores [N] → scalar.

    Written softplus(r_r − r_c), which equals −log σ(r_c − r_r) and stays finite for large margins.
    """
    return F.softplus(rejected - chosen).mean()


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """Of scores [N] of N pairs: {"loss" (Bradley-Terry), "accuracy" (r_c > r_r; a tie counts 1/2), "margin"
    (mean r_c − r_r), "n"}; NaN (n = 0) without pairs."""
    if chosen.numel() == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "margin": float("nan"), "n": 0}
    diff = chosen - rejected
    return {"loss": bradley_terry_loss(chosen, rejected).item(),
            "accuracy": ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item(),
            "margin": diff.mean().item(), "n": chosen.numel()}


def encode_pairs(tokenizer, pairs: list[Pair], template: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(chosen row, rejected row) token ids per pair, each `rewards.scorer.encode_solution` of prompt + completion;
    the prompt is the pair's `prompt` as is, or its question through `template`."""
    items = []
    for p in pairs:
        prompt = p.prompt if p.prompt is not None else build_prompt(p.question, template, tokenizer)
        items.append((encode_solution(tokenizer, prompt, p.chosen, max_length),
                      encode_solution(tokenizer, prompt, p.rejected, max_length)))
    return items


def _split(scores: torch.Tensor, items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [2N] of rows(items) → (chosen [N], rejected [N])."""
    return scores[:len(items)], scores[len(items):]


BRADLEY_TERRY = Objective(
    kind="bradley_terry",
    rows=lambda items: [c for c, _ in items] + [r for _, r in items],
    loss=lambda scores, items: bradley_terry_loss(*_split(scores, items)),
    metrics=lambda scores, items: pairwise_metrics(*_split(scores, items)),
    rank=lambda m: (m["accuracy"], -m["loss"]))


def train_reward_model(policy: PolicyWithValue, tokenizer, train: list[tuple[list[int], list[int]]],
                       val: list[tuple[list[int], list[int]]], cfg: RewardModelConfig, *, out_dir: str | Path,
                       logger, precision: str = "fp32", seed: int = 0, stage: str = "rm",
                       template: str | None = None, max_length: int | None = None) -> dict:
    """Fit `policy` (trunk + value head) in place to the encoded pairs (`encode_pairs`); saves out_dir/best.
    Returns {"best_epoch", "val": pairwise metrics of that epoch}."""
    if not train:
        raise UserError(f"{stage}: no training pairs")
    logger.log(stage, 0, train_pairs=len(train), val_pairs=len(val))
    return train_scorer(Verifier(policy), tokenizer, train, val, cfg, BRADLEY_TERRY, out_dir=out_dir, logger=logger,
                        precision=precision, seed=seed, stage=stage, template=template, max_length=max_length)
