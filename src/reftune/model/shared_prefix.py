"""Decoding a group of samples that share a prompt without copying the prompt's keys and values per sample.

A rollout samples G continuations of each prompt. The plain way (`DynamicCache.batch_repeat_interleave`) gives
each sample its own copy of the prompt's cache, so every decode step reads the prompt's keys and values G
times: on the tiny default (16 prompts × 8 samples, 87-token prompts) attention was half of a decode step, and
it is bound by reading that cache. Here each decode step splits attention in two (the "cascade" of vLLM's and
FlashInfer's shared-prefix kernels):

- the prompt part: the G samples' queries of a prompt, stacked with the query heads that share a KV head, are
  one matrix product against the prompt's keys, stored once per prompt ([prompts, kv heads, P, head dim]);
- the response part: each row's queries against its own generated keys, kept in a buffer written in place
  ([rows, kv heads, capacity, head dim]).

The two score blocks are joined before one softmax, so the result is the same attention (within float
rounding: tests/test_shared_prefix.py compares the logits with those of the plain cache, step by step). Rows
that finish are dropped from the response buffers only; the prompt part stays.

It plugs in through transformers' attention interface: while `decoding(model)` is active the model's
`config._attn_implementation` is `"reftune_shared_prefix"`, and the state travels to each attention call as the
forward keyword `shared_prefix=` (models pass their forward's extra keywords down to attention). The model is
called without a cache or mask; the attention function writes the step's keys and values itself and counts its
calls, so a model that does not route attention through the interface is caught (`check_step`) instead of
silently decoding without its context. `supported(model)` says where it applies: decoder-only models whose
layers are all full attention, without logit soft-capping or attention sinks.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

from reftune.model.kv_cache import moved_rows, select_rows

NAME = "reftune_shared_prefix"


class SharedPrefixState:
    """The prompt's keys/values once per prompt, and each row's generated keys/values.

    prompt_keys / prompt_values: per layer [prompts, kv heads, P, head dim] (the prefill's cache, left-padded);
    prompt_mask [prompts, P] (1 = real token); G: samples per prompt (rows are prompt-major: row i*G+j is
    sample j of prompt i); capacity: most tokens generated per row.
    """

    def __init__(self, prompt_keys: list[torch.Tensor], prompt_values: list[torch.Tensor],
                 prompt_mask: torch.Tensor, G: int, capacity: int):
        self.prompt_keys, self.prompt_values, self.G = prompt_keys, prompt_values, G
        n_prompts = prompt_mask.shape[0]
        self.prompt_bias = torch.zeros(n_prompts, 1, 1, prompt_mask.shape[1], device=prompt_mask.device).masked_fill(
            prompt_mask[:, None, None, :] == 0, float("-inf"))  # [prompts, 1, 1, P], added to fp32 scores
        dev = prompt_mask.device
        # [rows]: each row's place prompt * G + sample in the prompt-major layout; None while that is the identity
        # (every row alive, in order: `_by_prompt` / `_by_row` are then reshapes)
        self.place_of_row: torch.Tensor | None = None
        self.n_prompts = n_prompts
        k = prompt_keys[0]
        self.keys = [k.new_empty(n_prompts * G, k.shape[1], capacity, k.shape[-1]) for _ in prompt_keys]
        self.values = [v.new_empty(n_prompts * G, v.shape[1], capacity, v.shape[-1]) for v in prompt_values]
        self.length = 0  # generated positions held per row
        self.calls = 0  # attention calls since the last `check_step`

    @classmethod
    def from_prefill(cls, cache: DynamicCache, prompt_mask: torch.Tensor, G: int, capacity: int):
        """The state after a prefill of the prompts (one row each) into `cache`."""
        return cls([layer.keys.contiguous() for layer in cache.layers],
                   [layer.values.contiguous() for layer in cache.layers], prompt_mask, G, capacity)

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (row i becomes row keep[i]; any order), e.g. when the others have finished."""
        places = self.place_of_row
        self.place_of_row = keep if places is None else places[keep]
        moved = moved_rows(keep)  # the same for every layer's buffers
        self.keys = [select_rows(buf, keep, self.length, moved) for buf in self.keys]
        self.values = [select_rows(buf, keep, self.length, moved) for buf in self.values]

    def check_step(self, n_layers: int) -> None:
        """After a decode step: every layer must have attended through this state (else the model ignored it)."""
        if self.calls != n_layers:
            raise RuntimeError(f"shared-prefix decoding: {self.calls} of {n_layers} attention layers used the "
                               f"'{NAME}' attention implementation; this model does not route attention through "
                               "transformers' AttentionInterface (HFSampler(shared_prefix=False) decodes without it)")
        self.calls = 0
        self.length += 1

    def _by_prompt(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, kv heads, r, n] → [prompts, kv heads, G * r, n] (slots of finished rows are zero)."""
        if self.place_of_row is not None:
            x = x.new_zeros(self.n_prompts * self.G, *x.shape[1:]).index_copy_(0, self.place_of_row, x)
        return x.view(self.n_prompts, self.G, *x.shape[1:]).transpose(1, 2).reshape(
            self.n_prompts, x.shape[1], self.G * x.shape[2], x.shape[3])

    def _by_row(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """The inverse of `_by_prompt`: [prompts, kv heads, G * r, n] → [rows, kv heads, r, n]."""
        n_prompts, h, _, n = x.shape
        x = x.view(n_prompts, h, self.G, r, n).transpose(1, 2).reshape(n_prompts * self.G, h, r, n)
        return x if self.place_of_row is None else x.index_select(0, self.place_of_row)


def shared_prefix_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0,
                            scaling: float | None = None, shared_prefix: SharedPrefixState | None = None, **kwargs):
    """Attention of one decode step (query [rows, heads, 1, head dim]; key/value [rows, kv heads, 1, head dim],
    the step's own, already rotated) over the prompt (`shared_prefix`'s, once per prompt) and the row's
    generated tokens; returns ([rows, 1, heads, head dim], None) as transformers' attention functions do."""
    st = shared_prefix
    if st is None:
        raise RuntimeError(f"the '{NAME}' attention implementation needs the forward keyword shared_prefix=")
    for k in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(k) is not None:
            raise RuntimeError(f"shared-prefix decoding does not support attention with {k}")
    if query.shape[2] != 1:
        raise RuntimeError("shared-prefix decoding takes one new token per row and step")
    i, s = module.layer_idx, st.length
    st.keys[i][:, :, s:s + 1] = key
    st.values[i][:, :, s:s + 1] = value
    keys, values = st.keys[i][:, :, :s + 1], st.values[i][:, :, :s + 1]
    rows, heads, _, d = query.shape
    kv_heads = keys.shape[1]
    r = heads // kv_heads  # query heads per KV head (GQA): they are extra queries against the same keys
    q = query.view(rows, kv_heads, r, d)
    scaling = d ** -0.5 if scaling is None else scaling
    P = st.prompt_keys[i].shape[2]
    prompt_scores = torch.matmul(st._by_prompt(q), st.prompt_keys[i].transpose(-1, -2)).float() * scaling
    prompt_scores = st._by_row(prompt_scores + st.prompt_bias, r)  # [rows, kv heads, r, P]
    own_scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scaling  # [rows, kv heads, r, s + 1]
    weights = torch.cat([prompt_scores, own_scores], -1).softmax(-1).to(value.dtype)
    out = torch.matmul(weights[..., P:], values)
    out = out + st._by_row(torch.matmul(st._by_prompt(weights[..., :P]), st.prompt_values[i]), r)
    st.calls += 1
    return out.reshape(rows, heads, 1, d).transpose(1, 2), None


def _no_mask(*args, **kwargs):
    return None  # the attention function masks the prompt's padding itself


AttentionInterface.register(NAME, shared_prefix_attention)
AttentionMaskInterface.register(NAME, _no_mask)


def supported(model) -> bool:
    """Whether `model` can decode through shared prefixes: all layers full attention (the cache transformers
    builds for its config has no sliding-window layer), no attention-logit soft-capping, and attention dispatched
    by name (sdpa or eager). Sinks and other extras the attention call receives are refused there."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(config, "attn_logit_softcapping", None):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 — a config the cache cannot read: stay on the plain path
        return False
    return len(layers) > 0 and all(type(layer) is DynamicLayer for layer in layers)


@contextlib.contextmanager
def decoding(model):
    """Route `model`'s attention through `shared_prefix_attention` for the duration (restored after)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
