"""A scalar score of (prompt, completion) read from a policy trunk: the model behind the verifier and the
Bradley-Terry reward model, how it scores, and how a trained one is loaded as a frozen scorer (for reranking
in `reftune eval` and for the `reward_model` reward function in RL).

The model (`Verifier`) is a `PolicyWithValue` whose value head reads the last hidden state at the last token
of prompt + completion + EOS and gives one number: a logit of P(correct) for a verifier (trained by
`reftune.train.verifier`), an unbounded preference score for a Bradley-Terry reward model (trained by
`reftune.train.reward_model`). Checkpoints are policy checkpoints (HF files + `value_head.safetensors`) plus
`reward_model.json` (kind, template, max_length).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reftune.errors import ConfigError
from reftune.model.batching import encode, left_pad, positions
from reftune.model.checkpoint import load_value_head, read_reward_model_info
from reftune.model.modeling import PolicyWithValue, load_pretrained
from reftune.model.prompts import build_prompt

# (full prompt texts, completions) → one score per completion: the `reward_scorer` of the `reward_model` reward.
RewardScorer = Callable[[list[str], list[str]], list[float]]


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


def verifier_scores(model_with_head, tokenizer, prompts: list[str], completions: list[str], *,
                    batch_size: int = 32, max_length: int = 512, squash: bool = True) -> list[float]:
    """P(correct) in [0, 1] of each (prompt text, completion text); `model_with_head` is a PolicyWithValue
    (or a `Verifier`). `prompts` are full prompt texts (`model.prompts.build_prompt`), as in training.
    squash=False: the raw score (the logit; a Bradley-Terry reward model's unbounded score)."""
    verifier = model_with_head if isinstance(model_with_head, Verifier) else Verifier(model_with_head)
    rows = [encode_solution(tokenizer, p, c, max_length) for p, c in zip(prompts, completions)]
    device = next(verifier.parameters()).device
    scores = score_rows(verifier, rows, tokenizer.pad_token_id, batch_size, device)
    return (torch.sigmoid(scores) if squash else scores).tolist()


def load_verifier(path: str | Path, field: str = "eval.verifier") -> tuple[PolicyWithValue, object]:
    """(PolicyWithValue, tokenizer) of a verifier (or reward model) checkpoint, in eval mode; a checkpoint without
    a value head is refused with a ConfigError naming `field`."""
    lm, tokenizer = load_pretrained(str(path))
    policy = PolicyWithValue(lm)
    if not load_value_head(path, policy.value_head):
        raise ConfigError(f"{field}: {path} has no value_head.safetensors; train one with `reftune verifier` "
                          f"or `reftune rm`")
    return policy.eval(), tokenizer


@torch.no_grad()
def score_rows(model: torch.nn.Module, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Scores [N] (float32, on the CPU) of N token rows, left-padded `batch_size` at a time, in eval mode.

    model: forward(input_ids [B, T], attention_mask [B, T]) → scores [B] (a `rewards.scorer.Verifier`); its train/eval
    mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(rows), batch_size):
        ids, attn = (t.to(device) for t in left_pad(rows[s:s + batch_size], pad_id))
        out.append(model(ids, attn).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)



def load_scorer(path: str | Path, template: str = "reft", batch_size: int = 32, max_length: int = 512,
                device: torch.device | str = "cpu"):
    """A scorer (questions, completions) → P(correct) for reranking (`eval.sampling.Scorer`), backed by the
    verifier at `path`: the frozen `load_reward_scorer` (for a Bradley-Terry reward model, sigmoid of its score:
    the same ranking) behind the prompt template."""
    score = load_reward_scorer(path, template=template, sigmoid=True, batch_size=batch_size, device=device,
                               field="eval.verifier", max_length=max_length)

    def scorer(questions: list[str], completions: list[str]) -> list[float]:
        return score([build_prompt(q, template, score.tokenizer) for q in questions], completions)

    return scorer


def load_reward_scorer(path: str | Path, *, template: str | None = None, sigmoid: bool = False, batch_size: int = 32,
                       device: torch.device | str = "cpu", field: str = "rl.reward_model",
                       max_length: int | None = None) -> RewardScorer:
    """A frozen reward model as a function (full prompt texts, completions) → rewards, on `device`.

    A verifier checkpoint gives P(correct) in [0, 1]; a Bradley-Terry one its raw score (unbounded), or
    sigmoid(score) in (0, 1) with `sigmoid`. A checkpoint without reward_model.json (written before it
    existed) is read as a verifier. Rows are cut to `max_length`, by default the one the model was trained with
    (512 when unknown). template: the prompt template of the caller; a reward model trained on another one is
    refused. The scorer's `tokenizer` attribute is the checkpoint's (to build prompts the same way).
    """
    info = read_reward_model_info(path) or {"kind": "verifier"}
    if template is not None and info.get("template") not in (None, template):
        raise ConfigError(f"{field}: {path} was trained on prompts of template '{info['template']}', "
                          f"this run uses '{template}'")
    policy, tokenizer = load_verifier(path, field)
    policy.to(device).requires_grad_(False)
    squash = info["kind"] == "verifier" or sigmoid
    max_length = max_length or info.get("max_length") or 512

    def scorer(prompts: list[str], completions: list[str]) -> list[float]:
        return verifier_scores(policy, tokenizer, prompts, completions, batch_size=batch_size,
                               max_length=max_length, squash=squash)

    scorer.tokenizer = tokenizer
    return scorer
