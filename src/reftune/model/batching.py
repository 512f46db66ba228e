"""Tokenisation and padding, in one place: SFT pairs, prompts, and (prompt, response) sequences."""

from __future__ import annotations

import torch


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` exactly as written (no special tokens added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_target(tokenizer, target: str) -> list[int]:
    """Token ids of an SFT target: the text, then EOS (the model learns to stop)."""
    return encode(tokenizer, target) + [tokenizer.eos_token_id]


def encode_sft(tokenizer, prompt: str, target: str, max_length: int,
               loss_on_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(input ids, labels) for prompt + target + EOS; labels are -100 on the prompt (loss on the answer only)
    unless `loss_on_prompt` (plain language modelling of the whole text, for pretraining a base model).

    Too-long pairs are cut from the right: the prompt is kept whole when it fits.
    """
    p, t = encode(tokenizer, prompt), encode_target(tokenizer, target)
    ids = (p + t)[:max_length]
    labels = ((p if loss_on_prompt else [-100] * len(p)) + t)[:max_length]
    return ids, labels


def pad(seqs: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """[B, max_len] long tensor."""
    width = max(len(s) for s in seqs)
    rows = [(s + [value] * (width - len(s))) if side == "right" else ([value] * (width - len(s)) + s) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, max_len], attention mask [B, max_len]) with padding on the left: prompts for generation."""
    return pad(rows, pad_id, side="left"), pad([[1] * len(r) for r in rows], 0, side="left")


def collate_sft(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    ids = pad([b[0] for b in batch], pad_id)
    labels = pad([b[1] for b in batch], -100)
    mask = pad([[1] * len(b[0]) for b in batch], 0)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on the first real token of each (left-padded) row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def join_prompt_response(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Left-pad prompts and right-pad responses so every response starts at the same column.

    Returns input_ids [B, P+R], attention_mask [B, P+R], response_mask [B, R] and P (the prompt width):
    logits at column P-1+j predict response token j. One layout for the trainer's forward passes.
    """
    prompt, pmask = left_pad(prompts, pad_id)
    resp = pad(responses, pad_id, side="right") if max(map(len, responses)) else torch.full((len(responses), 1), pad_id)
    rmask = pad([[1] * len(r) for r in responses], 0, side="right") if max(map(len, responses)) else torch.zeros_like(resp)
    return torch.cat([prompt, resp], 1), torch.cat([pmask, rmask], 1), rmask, prompt.shape[1]
