"""Rollout generation behind a small interface, so another backend (vLLM) can plug in.

`HFSampler` is the built-in backend: batched, with a KV cache; each prompt is encoded once and its cache
is shared (repeated) across the group's samples; finished rows are dropped from the batch as they end.
It records the log-probability the sampler gave to each sampled token, so the trainer can measure the
sampler/trainer mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from reftune.model.batching import left_pad, positions


@dataclass
class Samples:
    """Generations for a list of prompts, `num_samples` each, grouped: sample j of prompt i is row i*G+j.

    response_ids: token ids without padding, ending in EOS when `finished`.
    logprobs: the sampler's log-probability of each response token (at the sampling temperature).
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]
    texts: list[str] = field(default_factory=list)


class Sampler(Protocol):
    def generate(self, prompt_ids: list[list[int]], num_samples: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 128) -> Samples: ...


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None):
    """Sample one token per row. logits [B, V] → (tokens [B], log-probs [B] under the sampled distribution).

    temperature 0 means greedy (log-prob then under the unscaled distribution).
    """
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_logp, idx = logp.sort(-1, descending=True)
        cum = sorted_logp.exp().cumsum(-1)
        drop = cum - sorted_logp.exp() > top_p
        sorted_logp = sorted_logp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, idx, sorted_logp)
        logp = torch.log_softmax(logp, -1)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


class HFSampler:
    """Generation with any Hugging Face causal LM (its cache supports batch repeat/select)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, device: torch.device | str = "cpu"):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.device = batch_size, torch.device(device)

    @torch.no_grad()
    def generate(self, prompt_ids, num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=128,
                 generator=None) -> Samples:
        per_chunk = max(1, self.batch_size // num_samples)
        out = Samples([], [], [], [])
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(prompt_ids), per_chunk):
            chunk = prompt_ids[start:start + per_chunk]
            resp, lps, fin = self._generate_chunk(chunk, num_samples, temperature, top_p, max_new_tokens, generator)
            out.prompt_ids += [p for p in chunk for _ in range(num_samples)]
            out.response_ids += resp
            out.logprobs += lps
            out.finished += fin
        self.model.train(was_training)
        out.texts = self.tokenizer.batch_decode(
            [[t for t in r if t != self.tokenizer.eos_token_id] for r in out.response_ids], skip_special_tokens=True)
        return out

    def _generate_chunk(self, prompts, G, temperature, top_p, max_new_tokens, generator):
        eos, pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids, attn = (t.to(self.device) for t in left_pad(prompts, pad_id))
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        if G > 1:  # encode once, share the prompt's cache across the group's samples
            cache.batch_repeat_interleave(G)
            attn, logits = attn.repeat_interleave(G, 0), logits.repeat_interleave(G, 0)
        n = attn.shape[0]
        next_pos = attn.sum(-1, keepdim=True)  # [n, 1]
        rows = torch.arange(n, device=self.device)  # which output row each live batch row is
        tokens_out: list[list[int]] = [[] for _ in range(n)]
        lp_out: list[list[float]] = [[] for _ in range(n)]
        finished = [False] * n
        for step in range(max_new_tokens):
            tok, lp = sample_next(logits, temperature, top_p, generator)
            tok_l, lp_l, rows_l = tok.tolist(), lp.tolist(), rows.tolist()
            alive = []
            for i, r in enumerate(rows_l):
                tokens_out[r].append(tok_l[i])
                lp_out[r].append(lp_l[i])
                if tok_l[i] == eos:
                    finished[r] = True
                else:
                    alive.append(i)
            if not alive or step == max_new_tokens - 1:
                break
            if len(alive) < len(rows_l):  # drop finished rows from the batch and the cache
                keep = torch.tensor(alive, device=self.device)
                cache.batch_select_indices(keep)
                rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1)
            out = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                             past_key_values=cache, use_cache=True)
            cache, logits, next_pos = out.past_key_values, out.logits[:, -1], next_pos + 1
        return tokens_out, lp_out, finished
