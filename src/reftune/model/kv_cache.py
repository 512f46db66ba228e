"""A KV cache that is written in place: the HF sampler's cache for a rollout of known length.

Transformers' `DynamicCache` appends each decode step's keys and values with `torch.cat`, which copies the
whole cache of every layer at every step: for SmolLM2 at 32 rows that was about half of the 17 % of a bf16
decode step spent in `cat` (`bench/decode_profile.py`). `preallocated_cache` is a `DynamicCache` whose full-attention
layers keep their keys and values in a buffer with room for the whole rollout (prompt + new tokens) and write
each step's positions into it; attention reads a view of the filled part. Everything else — the mask sizes,
`get_seq_length`, dropping finished rows, sharing a prompt across its group — behaves as in `DynamicCache`, so
the model computes the same logits (tests/test_fast_scoring.py). Sliding-window layers stay as they are.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def moved_rows(indices: torch.Tensor) -> torch.Tensor:
    """The positions i where indices[i] != i: the rows `select_rows` copies (compute once for many buffers)."""
    return (indices != torch.arange(len(indices), device=indices.device)).nonzero().squeeze(-1)


def select_rows(buf: torch.Tensor, indices: torch.Tensor, filled: int,
                moved: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `indices` of a [rows, heads, capacity, head dim] buffer whose first `filled` positions hold keys or
    values, in place: row i becomes row indices[i], only the rows whose index changes are copied (their filled
    positions; `moved`: `moved_rows(indices)`, if already computed), and the result is a view of the buffer's
    first len(indices) rows. With `fill_holes`' order (finished rows replaced by the last live ones) a step that
    drops k rows copies k rows, not the whole cache."""
    moved = moved_rows(indices) if moved is None else moved
    if len(moved):  # the right side is gathered before anything is written: any order of indices is safe
        buf[moved, ..., :filled, :] = buf[indices[moved], ..., :filled, :]
    return buf[:len(indices)]


def fill_holes(ended: torch.Tensor) -> torch.Tensor:
    """The rows to keep when the rows where `ended` [rows] (bool) is true leave a batch, as indices for
    `select_rows`: the live rows, each finished row among the first n_live positions replaced by a live row from
    beyond them (in order), the others left in place, so the fewest rows move."""
    live = ~ended
    m = int(live.sum())
    keep = torch.arange(m, device=ended.device)
    holes = ended[:m].nonzero().squeeze(-1)
    keep[holes] = live[m:].nonzero().squeeze(-1) + m
    return keep


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are the first `length` positions of buffers of `capacity` positions
    (grown, by copying once, if a call ever needs more)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self._len, key_states.shape[-2]
        if self._k is None or n + t > self._k.shape[-2]:
            cap = max(self.capacity, n + t)
            k = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
            if n:
                k[..., :n, :], v[..., :n, :] = self._k[..., :n, :], self._v[..., :n, :]
            self._k, self._v = k, v
        self._k[..., n:n + t, :] = key_states
        self._v[..., n:n + t, :] = value_states
        self._len = n + t
        return self._views()

    def _views(self):
        self.keys, self.values = self._k[..., :self._len, :], self._v[..., :self._len, :]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._len:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._len:
            self._k, self._v = select_rows(self._k, indices, self._len), select_rows(self._v, indices, self._len)
            self._views()

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized and self.keys is not None and self._k is not None:
            self._len = self.keys.shape[-2]


def preallocated_cache(config, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `config` whose full-attention layers are `PreallocatedLayer(capacity)`."""
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
