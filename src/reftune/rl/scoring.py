"""Phase 3 of an RL iteration: what the trainer computes of a rollout before updating — the policy's log-probs
(and values) of the sampled tokens, the frozen reference's, and the sampler's own for the mismatch."""

from __future__ import annotations

import contextlib

import torch

from reftune import algos
from reftune.model.batching import join_prompt_response, positions
from reftune.model.lora import is_lora
from reftune.rl.batch import Rollout, ScoredBatch


def response_logprobs(model, input_ids, attention_mask, prompt_width: int, with_values: bool):
    """Log-probs [B, R] of the response tokens (and values [B, R] of the states before them, or None), and the
    logits [B, R, V] that give them, in one pass.

    Column P-1+j of the logits predicts response token j (see `batching.join_prompt_response`).
    """
    logits, values = model(input_ids, attention_mask, positions(attention_mask), with_values=with_values)
    logits = logits[:, prompt_width - 1:-1].float()
    logp = algos.gather_logprobs(logits, input_ids[:, prompt_width:])
    values = values[:, prompt_width - 1:-1].float() if values is not None else None
    return logp, values, logits


class ReferenceLM(torch.nn.Module):
    """The frozen reference behind the policy's call signature (no value head): a plain causal LM, or the
    policy's own LoRA model with its adapters disabled (the start model, without a second copy)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, position_ids, with_values=False):
        adapters_off = self.lm.disable_adapter() if is_lora(self.lm) else contextlib.nullcontext()
        with adapters_off:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).logits, None


def needs_reference(cfg) -> bool:
    """Whether the run uses the frozen reference model: a KL term, which online self-training has none of."""
    return cfg.kl_in != "none" and cfg.objective == "ppo"


@torch.no_grad()
def score(policy, ref, rollout: Rollout, *, pad_id: int, device, autocast, chunks: int, with_values: bool,
          tis_cap: float | None = None) -> ScoredBatch:
    """The rollout as a `ScoredBatch`: tensors on `device`, the policy's old log-probs and values (zeros when not
    `with_values`), the reference's log-probs (None when `ref` is None), the sampler's log-probs, and with
    `tis_cap` the truncated importance weights. Passes go in `chunks` slices; `autocast` is the trainer's
    precision context (a callable returning a context manager)."""
    s = rollout.samples
    ids, attn, mask, P = join_prompt_response(s.prompt_ids, s.response_ids, pad_id)
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device).float()
    B, G = ids.shape[0], len(s.prompt_ids) // max(len(rollout.idx), 1)
    size = -(-B // chunks)
    old_logp, old_values, ref_logp = [], [], []
    policy.eval()
    with autocast():
        for i in range(0, B, size):
            lp, v, _ = response_logprobs(policy, ids[i:i + size], attn[i:i + size], P, with_values)
            old_logp.append(lp)
            old_values.append(v if v is not None else torch.zeros_like(lp))
            if ref is not None:
                ref_logp.append(response_logprobs(ref, ids[i:i + size], attn[i:i + size], P, False)[0])
    old_logp = torch.cat(old_logp)
    sampler_logp = torch.zeros_like(old_logp)
    for i, lp in enumerate(s.logprobs):
        sampler_logp[i, :len(lp)] = torch.tensor(lp)
    is_weights = None
    if tis_cap is not None:  # truncated IS: the update is on-policy for the trainer, not the sampler
        is_weights = torch.exp(old_logp - sampler_logp).clamp(max=tis_cap) * mask
    return ScoredBatch(ids, attn, mask, P, torch.arange(len(rollout.idx), device=device).repeat_interleave(G),
                       old_logp, torch.cat(old_values), torch.cat(ref_logp) if ref is not None else None,
                       sampler_logp, is_weights)
