"""Phase 3 of an RL iteration: what the trainer computes of a rollout before updating — the policy's log-probs
(and values) of the sampled tokens, the frozen reference's, and the sampler's own for the mismatch.

Work that cannot change the result is skipped (tests/test_fast_scoring.py compares each shortcut with the plain
padded pass and states the tolerance):
- the LM head runs on the response positions only (`logits_to_keep`), never on the prompt's;
- with one PPO epoch of one minibatch (`reuses_update_forward`), the update's forward *is* the policy's scoring
  pass: it runs here with gradients, its detached log-probs and values are the "old" ones (no optimizer step has
  happened yet, and there is no dropout), and `ppo_update` backpropagates through it instead of running its own;
- every pass — the gradient-free ones (the reference's, and the policy's when it is not reused) and the update's
  forward of each minibatch (`rows_forward`) — encodes each distinct prompt once and reuses its KV cache for the
  rows that continue it (a question's group), as the sampler does, in chunks of rows sorted by length, each padded
  to its own widths rather than to the batch's. Under gradient checkpointing, which turns the KV cache off, the
  update's forward packs each prompt with its rows' responses into one sequence with a block mask instead
  (`packed_logprobs`): the prompt is still computed once.
"""

from __future__ import annotations

import contextlib

import torch

from reftune import algos
from reftune.model.batching import join_prompt_response, left_pad, pad, positions
from reftune.model.lora import is_lora
from reftune.model.sampler import cache_keyword
from reftune.model.sharded import is_sharded
from reftune.rl.batch import Rollout, ScoredBatch

SCORING_ROWS = 64  # rows per gradient-free chunk at most: length buckets pad less, and memory stays bounded
RESPONSE_PASS_ROWS = 16  # rows per response pass of `shared_prompt_logprobs`: buckets of similar length pad little
PACK_TOKENS = 1024  # tokens per packed sequence at most (`packed_logprobs`), unless one row alone is longer


def response_logprobs(model, input_ids, attention_mask, prompt_width: int, with_values: bool,
                      with_entropy: bool = False):
    """Log-probs [B, R] of the response tokens (and values [B, R] of the states before them, or None), and with
    `with_entropy` the entropy [B, R] of each position's distribution (no gradient; else None), in one pass.

    Column P-1+j of the sequence predicts response token j (see `batching.join_prompt_response`); the LM head
    runs on the last R+1 columns only.
    """
    R = input_ids.shape[1] - prompt_width
    logits, values = model(input_ids, attention_mask, positions(attention_mask), with_values=with_values,
                           logits_to_keep=R + 1)
    logits = logits[:, :-1].float()
    logp = algos.gather_logprobs(logits, input_ids[:, prompt_width:])
    values = values[:, prompt_width - 1:-1].float() if values is not None else None
    return logp, values, token_entropy(logits) if with_entropy else None


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy [..., T] of logits [..., T, V], outside the autograd graph (a statistic, never a loss here)."""
    with torch.no_grad():
        return algos.entropy_from_logits(logits.detach())


class ReferenceLM(torch.nn.Module):
    """The frozen reference behind the policy's call signature (no value head): a plain causal LM, or the
    policy's own LoRA model with its adapters disabled (the start model, without a second copy)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def adapters_off(self):
        return self.lm.disable_adapter() if is_lora(self.lm) else contextlib.nullcontext()

    def forward(self, input_ids, attention_mask, position_ids, with_values=False, logits_to_keep: int = 0):
        with self.adapters_off():
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, logits_to_keep=logits_to_keep).logits, None


def needs_reference(cfg) -> bool:
    """Whether the run uses the frozen reference model: a KL term, which online self-training has none of."""
    return cfg.kl_in != "none" and cfg.objective == "ppo"


def reuses_update_forward(cfg) -> bool:
    """Whether the policy's scoring pass can be the update's forward: PPO with one epoch of one minibatch, so the
    update's forward sees the same weights and rows as scoring does."""
    return cfg.objective == "ppo" and cfg.ppo_epochs == 1 and cfg.minibatches == 1


def has_dropout(model) -> bool:
    """Whether train mode would make the forward random (then train- and eval-mode passes differ)."""
    config = getattr(getattr(model, "lm", model), "config", None)
    return (any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
            or any(getattr(config, k, 0) or 0 for k in ("attention_dropout", "hidden_dropout", "dropout")))


def _lm_parts(model):
    """(causal LM, value head or None, context to run it in) of a `PolicyWithValue` or a `ReferenceLM`."""
    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper: no gradients flow here
    if isinstance(model, ReferenceLM):
        return model.lm, None, model.adapters_off()
    return model.lm, model.value_head, contextlib.nullcontext()


def shared_prompt_logprobs(model, prompts: list[list[int]], responses: list[list[int]], owner: list[int],
                           pad_id: int, device, with_values: bool, with_entropy: bool = False):
    """Log-probs [n, R] of `responses` (row i continues prompts[owner[i]]), values [n, R] (None unless
    `with_values`) and each position's entropy [n, R] (None unless `with_entropy`); R the longest response, all
    three 0 after each row's end. Gradients flow into the log-probs and values when enabled (the cache is part of
    the graph: each prompt's pass gets the gradients of all its rows).

    Each prompt is encoded once and its KV cache gathered for its rows: the prompt pass gives the logits (and
    value) of the state before response token 0, the response passes those of the states before tokens 1..R-1,
    the rows in buckets of similar length (`length_buckets`), each padded to its own longest response only; each
    bucket's logits become log-probs (and entropies) before the rows are put back in order, so no [n, R, vocab]
    tensor is assembled. Equal to `response_logprobs` on the joined rows up to float rounding (attention over the
    cache sums in another order)."""
    from transformers import DynamicCache

    lm, head, ctx = _lm_parts(model)
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    kw, hidden = cache_keyword(base), head is not None and with_values
    p_ids, p_attn = (t.to(device) for t in left_pad(prompts, pad_id))
    own = torch.tensor(owner, dtype=torch.long, device=device)
    R = max(1, max(map(len, responses)))
    r_ids = pad([r + [pad_id] * (R - len(r)) for r in responses], pad_id).to(device)
    r_attn = pad([[1] * len(r) + [0] * (R - len(r)) for r in responses], 0).to(device)
    cache = DynamicCache(config=base.config)
    with ctx:
        out = lm(input_ids=p_ids, attention_mask=p_attn, position_ids=positions(p_attn), use_cache=True,
                 logits_to_keep=1, output_hidden_states=hidden, **{kw: cache})
        first_logits = out.logits[:, -1:].float()[own]  # [n, 1, V]: response token 0
        parts = {"logp": [algos.gather_logprobs(first_logits, r_ids[:, :1])], "state": [], "entropy": []}
        if hidden:
            parts["state"].append(out.hidden_states[-1][:, -1:][own])
        if with_entropy:
            parts["entropy"].append(token_entropy(first_logits))
        prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
        rest: dict[str, list[torch.Tensor]] = {"logp": [], "state": [], "entropy": []}  # tokens 1.., bucket order
        order = []
        for rows in length_buckets([len(r) for r in responses], RESPONSE_PASS_ROWS):
            Rb, idx = max(len(responses[i]) for i in rows), torch.tensor(rows, device=device)
            order += rows
            if Rb <= 1:  # no response pass: token 0 came from the prompt pass
                for k in ("logp", "entropy") if with_entropy else ("logp",):
                    rest[k].append(first_logits.new_zeros(len(rows), R - 1))
                if hidden:
                    rest["state"].append(parts["state"][0].new_zeros(len(rows), R - 1, parts["state"][0].shape[-1]))
                continue
            src = own[idx]  # each row's prompt
            rows_cache = DynamicCache(config=base.config)
            for layer, (k, v) in enumerate(prompt_kv):  # each row gets its prompt's keys and values
                rows_cache.update(k.index_select(0, src), v.index_select(0, src), layer)
            attn = torch.cat([p_attn[src], r_attn[idx, :Rb]], 1)
            out = lm(input_ids=r_ids[idx, :Rb - 1], attention_mask=attn[:, :-1],
                     position_ids=positions(attn)[:, p_ids.shape[1]:-1], use_cache=True,
                     output_hidden_states=hidden, **{kw: rows_cache})
            logits = out.logits.float()
            rest["logp"].append(_to_width(algos.gather_logprobs(logits, r_ids[idx, 1:Rb]), R - 1))
            if with_entropy:
                rest["entropy"].append(_to_width(token_entropy(logits), R - 1))
            if hidden:
                rest["state"].append(_to_width(out.hidden_states[-1], R - 1))
    back = torch.argsort(torch.tensor(order, device=device))  # bucket order -> row order
    joined = {k: torch.cat([parts[k][0], torch.cat(rest[k])[back]], 1) for k in parts if parts[k]}
    logp = joined["logp"] * r_attn
    values = head(joined["state"].to(head.weight.dtype)).squeeze(-1).float() * r_attn if hidden else None
    return logp, values, joined["entropy"] * r_attn if with_entropy else None


def length_buckets(lengths: list[int], rows: int) -> list[list[int]]:
    """Row indices sorted by length (longest first, ties in row order), in consecutive buckets of at most `rows`:
    each response pass pads to its own bucket's longest row."""
    ranked = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [ranked[s:s + rows] for s in range(0, len(ranked), rows)]


def packed_logprobs(model, prompts: list[list[int]], responses: list[list[int]], owner: list[int],
                    pad_id: int, device, with_values: bool, with_entropy: bool = False):
    """What `shared_prompt_logprobs` returns, in one forward without a KV cache (so it also runs under gradient
    checkpointing, which turns the cache off): each prompt packed with its rows' responses into one sequence.

    A pack is a prompt followed by some of its rows' response tokens but the last (the inputs that predict tokens
    1..n-1), one block per row; position ids restart after the prompt in every block, and a 4-D mask lets a block
    attend to the prompt and causally to itself only (padding attends to itself). So every token sees what it sees
    in the row's own padded sequence, and the prompt is computed once per pack instead of once per row. Response
    token 0 of every row is predicted at the prompt's last position; token j > 0 at the block's position j - 1.
    Attention runs over the whole pack (masked), so a prompt's rows are split into packs of at most `PACK_TOKENS`
    tokens (a row longer than that gets a pack of its own): long responses do not make it quadratic in the group.
    Needs a model that takes a 4-D boolean mask (`supports_packing`)."""
    head = _lm_parts(model)[1]
    n = len(responses)
    R = max(1, max(map(len, responses)))
    packs: list[tuple[int, list[int]]] = []  # (prompt, its rows in this pack)
    for o in range(len(prompts)):
        length = len(prompts[o])
        for i in (i for i, w in enumerate(owner) if w == o):
            m = max(len(responses[i]) - 1, 0)
            if not packs or packs[-1][0] != o or (length + m > PACK_TOKENS and packs[-1][1]):
                packs.append((o, []))
                length = len(prompts[o])
            packs[-1][1].append(i)
            length += m
    L = max(len(prompts[o]) + sum(max(len(responses[i]) - 1, 0) for i in rows) for o, rows in packs)
    ids = torch.full((len(packs), L), pad_id, dtype=torch.long)
    pos = torch.zeros(len(packs), L, dtype=torch.long)
    mask = torch.zeros(len(packs), 1, L, L, dtype=torch.bool)
    where = torch.zeros(n, R, dtype=torch.long)  # position in its pack of the logits that predict token j of row i
    pack_of = torch.zeros(n, dtype=torch.long)
    for k, (o, rows) in enumerate(packs):
        P = len(prompts[o])
        ids[k, :P], pos[k, :P] = torch.tensor(prompts[o]), torch.arange(P)
        mask[k, 0, :P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
        start = P
        for i in rows:
            m = max(len(responses[i]) - 1, 0)
            ids[k, start:start + m] = torch.tensor(responses[i][:m], dtype=torch.long)
            pos[k, start:start + m] = torch.arange(P, P + m)
            mask[k, 0, start:start + m, :P] = True
            mask[k, 0, start:start + m, start:start + m] = torch.ones(m, m, dtype=torch.bool).tril()
            where[i, 0], where[i, 1:m + 1] = P - 1, torch.arange(start, start + m)
            where[i, m + 1:] = P - 1  # past the row's end: any valid position (masked out below)
            pack_of[i] = k
            start += m
        pad_rows = torch.arange(start, L)
        mask[k, 0, pad_rows, pad_rows] = True
    first = min(len(p) for p in prompts) - 1  # the LM head runs from the first position any row needs
    r_ids = pad([r + [pad_id] * (R - len(r)) for r in responses], pad_id).to(device)
    r_attn = pad([[1] * len(r) + [0] * (R - len(r)) for r in responses], 0).to(device)
    # the root forward (PolicyWithValue / ReferenceLM, or a DDP wrapper), as the padded pass calls it
    logits, values = model(ids.to(device), mask.to(device), pos.to(device),
                           with_values=with_values and head is not None, logits_to_keep=L - first)
    where, pack_of = where.to(device), pack_of.to(device)[:, None]
    logits = logits.float()[pack_of, where - first]  # [n, R, V]
    logp = algos.gather_logprobs(logits, r_ids) * r_attn
    values = values.float()[pack_of, where] * r_attn if values is not None else None
    return logp, values, token_entropy(logits) * r_attn if with_entropy else None


def supports_packing(model) -> bool:
    """Whether `packed_logprobs` can run `model`: its attention takes a 4-D boolean mask as given (sdpa)."""
    lm = _lm_parts(model)[0]
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return getattr(getattr(base, "config", None), "_attn_implementation", None) == "sdpa"


def distinct_prompts(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """(each distinct prompt once, in order of first appearance; owner[i] = the index of row i's prompt)."""
    index: dict[tuple[int, ...], int] = {}
    distinct, owner = [], []
    for p in prompts:
        o = index.setdefault(tuple(p), len(index))
        if o == len(distinct):
            distinct.append(p)
        owner.append(o)
    return distinct, owner


def can_share_prompt_with_grad(model) -> bool:
    """Whether the update's forward can go through `shared_prompt_logprobs`: not under gradient checkpointing
    (which turns the KV cache off) and not behind a DistributedDataParallel wrapper (whose forward syncs the
    gradients)."""
    lm = getattr(model, "lm", None)
    return lm is not None and not any(getattr(m, "gradient_checkpointing", False) is True for m in lm.modules())


def prompt_chunks(prompts: list[list[int]], responses: list[list[int]], max_rows: int) -> list[list[list[int]]]:
    """The rows grouped by prompt ([rows of one prompt], ...), in chunks of at most `max_rows` rows (more only when
    one prompt has more), a prompt's rows never split, prompts sorted by length (prompt + longest response) so each
    chunk pads little."""
    distinct, owner = distinct_prompts(prompts)
    members: list[list[int]] = [[] for _ in distinct]
    for r, o in enumerate(owner):
        members[o].append(r)
    length = [len(distinct[o]) + max(len(responses[r]) for r in members[o]) for o in range(len(distinct))]
    chunks: list[list[list[int]]] = [[]]
    for o in sorted(range(len(distinct)), key=length.__getitem__):
        if chunks[-1] and sum(map(len, chunks[-1])) + len(members[o]) > max_rows:
            chunks.append([])
        chunks[-1].append(members[o])
    return [c for c in chunks if c]


def _to_width(t: torch.Tensor, width: int) -> torch.Tensor:
    """t [B, R, ...] zero-padded along dim 1 to `width` columns."""
    return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]))


def grouped_pass(model, prompts, responses, pad_id: int, device, width: int, with_values: bool, max_rows: int,
                 with_entropy: bool = False, packed: bool = False):
    """`shared_prompt_logprobs` (or with `packed`, `packed_logprobs`) over `prompt_chunks` of at most `max_rows`
    rows, back in row order: log-probs [B, width], values [B, width] (None unless `with_values`) and entropies
    [B, width] (None unless `with_entropy`), zeros where there is no response token; log-probs and values
    differentiable when gradients are enabled. Rows that share a prompt (a question's group) encode it once."""
    parts, order = [], []
    one_chunk = packed_logprobs if packed else shared_prompt_logprobs
    for groups in prompt_chunks(prompts, responses, max_rows):
        rows = [r for g in groups for r in g]
        owner = [k for k, g in enumerate(groups) for _ in g]
        out = one_chunk(model, [prompts[g[0]] for g in groups], [responses[r] for r in rows], owner,
                        pad_id, device, with_values, with_entropy)
        parts.append([None if t is None else _to_width(t, width) for t in out])
        order += rows
    back = torch.argsort(torch.tensor(order, device=device))  # chunk order -> row order
    return tuple(None if part[0] is None else torch.cat(part)[back] for part in zip(*parts))


def update_forward_kind(model) -> str:
    """How the update's forward shares prompts: "cache" (`shared_prompt_logprobs`), else — under gradient
    checkpointing, which turns the KV cache off — "packed" (`packed_logprobs`) where the model takes a 4-D mask and
    is not FSDP-sharded, else "padded" (one padded forward). On the tiny default the two sharing paths take the
    same time (`bench/scoring_bench.py`); packing is what keeps the sharing under checkpointing."""
    if can_share_prompt_with_grad(model):
        return "cache"
    return "packed" if supports_packing(model) and not is_sharded(model) else "padded"


def rows_forward(model, batch: ScoredBatch, rows: torch.Tensor, with_values: bool):
    """The update's forward of `rows` of the batch: (log-probs [n, R], values [n, R] or None, entropies [n, R]).
    Rows that share a prompt encode it once and each chunk of `SCORING_ROWS` rows (sorted by length) pads to its own
    widths (`grouped_pass`), as `update_forward_kind` allows; else one padded forward. An FSDP-sharded model's
    root parameters are unsharded by its own forward only, which the cache path bypasses (it calls the LM inside):
    there the padded forward."""
    kind = "padded" if is_sharded(model) else update_forward_kind(model)
    if batch.prompt_ids is None or kind == "padded":
        return response_logprobs(model, batch.ids[rows], batch.attn[rows], batch.prompt_width, with_values, True)
    r = rows.tolist()
    return grouped_pass(model, [batch.prompt_ids[i] for i in r], [batch.response_ids[i] for i in r], batch.pad_id,
                        batch.ids.device, batch.mask.shape[1], with_values, SCORING_ROWS, with_entropy=True,
                        packed=kind == "packed")


@torch.no_grad()
def score(policy, ref, rollout: Rollout, *, pad_id: int, device, autocast, chunks: int, with_values: bool,
          tis_cap: float | None = None, update_forward: bool = False) -> ScoredBatch:
    """The rollout as a `ScoredBatch`: tensors on `device`, the policy's old log-probs and values (zeros when not
    `with_values`), the reference's log-probs (None when `ref` is None), the sampler's log-probs, and with
    `tis_cap` the truncated importance weights. `autocast` is the trainer's precision context (a callable
    returning a context manager); gradient-free passes go in length-sorted chunks of questions (at least `chunks`).

    With `update_forward` (see `reuses_update_forward`) and a policy without dropout, the policy's pass runs with
    gradients in train mode and is kept on the batch (`ScoredBatch.update_forward`) for `ppo_update`."""
    s = rollout.samples
    ids, attn, mask, P = join_prompt_response(s.prompt_ids, s.response_ids, pad_id)
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device).float()
    B, R = ids.shape[0], mask.shape[1]
    G = len(s.prompt_ids) // max(len(rollout.idx), 1)
    max_rows = min(SCORING_ROWS, -(-B // chunks))  # gradient-free chunks: at least `chunks`, at most SCORING_ROWS rows
    live = None
    with autocast():
        if update_forward and not has_dropout(policy):
            policy.train()
            with torch.enable_grad():
                kind = update_forward_kind(policy)
                if kind == "padded":
                    live = response_logprobs(policy, ids, attn, P, with_values, True)
                else:
                    live = grouped_pass(policy, s.prompt_ids, s.response_ids, pad_id, device, R, with_values,
                                        SCORING_ROWS, with_entropy=True, packed=kind == "packed")
            old_logp = live[0].detach()
            old_values = live[1].detach() if with_values else torch.zeros_like(old_logp)
        else:
            policy.eval()
            old_logp, old_values, _ = grouped_pass(policy, s.prompt_ids, s.response_ids, pad_id, device, R,
                                                   with_values, max_rows)
            old_values = old_values if with_values else torch.zeros_like(old_logp)
        ref_logp = (grouped_pass(ref, s.prompt_ids, s.response_ids, pad_id, device, R, False, max_rows)[0]
                    if ref is not None else None)
    sampler_logp = torch.zeros_like(old_logp)
    for i, lp in enumerate(s.logprobs):
        sampler_logp[i, :len(lp)] = torch.tensor(lp)
    is_weights = None
    if tis_cap is not None:  # truncated IS: the update is on-policy for the trainer, not the sampler
        is_weights = torch.exp(old_logp - sampler_logp).clamp(max=tis_cap) * mask
    return ScoredBatch(ids, attn, mask, P, torch.arange(len(rollout.idx), device=device).repeat_interleave(G),
                       old_logp, old_values, ref_logp, sampler_logp, is_weights, update_forward=live,
                       prompt_ids=s.prompt_ids, response_ids=s.response_ids, pad_id=pad_id)
