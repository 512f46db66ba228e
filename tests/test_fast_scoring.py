"""The trainer's shortcuts give the plain computation's numbers (`reftune.rl.scoring`).

Each shortcut is compared with the plain path it replaces, on a random tiny Llama with a random value head, groups
of G samples of different lengths, and prompts of different lengths:
- the LM head on the response positions only (`logits_to_keep`) against the head on every position;
- each prompt encoded once, its KV cache shared by the group, in length-sorted chunks (the responses in
  length buckets), against one padded forward per row (`response_logprobs` on `join_prompt_response`): log-probs and values within 1e-5 in fp32;
- the update's forward of a minibatch of shuffled rows (`rows_forward`: each distinct prompt once, its cache
  gathered for its rows) against the padded forward of those rows: the same losses and gradients;
- with one PPO epoch of one minibatch, the update reusing the scoring pass's forward against scoring and
  updating separately: the same old log-probs, values, advantages, losses and gradients (within 1e-5).
"""

from __future__ import annotations

import copy

import pytest
import torch

from reftune.config import RLConfig
from reftune.grading.grade import Grade
from reftune.model.batching import join_prompt_response, positions
from reftune.model.modeling import enable_activation_checkpointing
from reftune.model.modeling import PolicyWithValue
from reftune.model.sampler import Samples
from reftune.rl import scoring
from reftune.rl.batch import Rollout
from reftune.rl.scoring import (ReferenceLM, distinct_prompts, grouped_pass, has_dropout, prompt_chunks,
                                response_logprobs, reuses_update_forward, score)
from reftune.rl.update import advantages, ppo_update
from reftune.train.accel import get_accelerator

PAD, G = 0, 3
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14, 15, 16, 17, 18, 19]]
LENGTHS = [[3, 1, 6], [5, 5, 2], [1, 1, 1], [7, 4, 6]]  # response lengths per question and sample
TOL = 1e-5


def tiny_policy(dropout: float = 0.0, seed: int = 0) -> PolicyWithValue:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         attention_dropout=dropout, pad_token_id=PAD)
    policy = PolicyWithValue(LlamaForCausalLM(config))
    torch.nn.init.normal_(policy.value_head.weight, std=0.5)  # a zero-initialised head would hide a wrong state
    return policy


def make_rollout(seed: int = 1) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    prompts = [p for p in PROMPTS for _ in range(G)]
    responses = [torch.randint(1, 40, (n,), generator=g).tolist() for ns in LENGTHS for n in ns]
    logprobs = [[-1.0] * len(r) for r in responses]
    scores = torch.rand(len(responses), generator=g)
    return Rollout(list(range(len(PROMPTS))), None, Samples(prompts, responses, logprobs, [True] * len(prompts),
                                                            ["x"] * len(prompts)),
                   [None] * len(prompts), scores, {}, [Grade(None, False)] * len(prompts))


def plain_pass(model, rollout: Rollout, with_values: bool):
    """The reference computation: one padded forward of every row, the LM head on every position."""
    s = rollout.samples
    ids, attn, mask, P = join_prompt_response(s.prompt_ids, s.response_ids, PAD)
    logits, values = model(ids, attn, positions(attn), with_values=with_values)
    logits = logits[:, P - 1:-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
    return logp, values[:, P - 1:-1] if values is not None else None, mask.float(), ids, attn, P


@torch.no_grad()
def plain_entropy(model, rollout: Rollout) -> torch.Tensor:
    """Each response position's entropy [B, R] from the padded forward, by its definition -sum p log p."""
    s = rollout.samples
    ids, attn, _, P = join_prompt_response(s.prompt_ids, s.response_ids, PAD)
    logp = torch.log_softmax(model(ids, attn, positions(attn))[0][:, P - 1:-1].float(), -1)
    return -(logp.exp() * logp).sum(-1)


def no_autocast():
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def test_the_lm_head_on_response_positions_only_gives_the_same_logprobs():
    policy, rollout = tiny_policy().eval(), make_rollout()
    logp, values, mask, ids, attn, P = plain_pass(policy, rollout, True)
    fast_logp, fast_values, entropy = response_logprobs(policy, ids, attn, P, True, with_entropy=True)
    assert (fast_logp - logp).abs().max() <= TOL
    assert (fast_values - values).abs().max() <= TOL
    assert (entropy - plain_entropy(policy, rollout)).abs().max() <= TOL
    assert response_logprobs(policy, ids, attn, P, True)[2] is None


@pytest.mark.parametrize("packed,response_rows", [(False, 16), (False, 3), (True, 16)])
@pytest.mark.parametrize("rows_per_chunk", [64, G, 2 * G, 1])
@torch.no_grad()
def test_a_shared_prompt_pass_gives_the_padded_forwards_logprobs_and_values(monkeypatch, rows_per_chunk, packed,
                                                                            response_rows):
    # one chunk; one question each; two questions; one question each (a chunk never splits a prompt's rows);
    # through the prompt's KV cache gathered per row (its rows' response passes in length buckets of 16 rows, or
    # of 3: [7, 6, 6], [5, 5, 4], [3, 2, 1], [1, 1, 1], the last with no response pass), and packed with its rows
    monkeypatch.setattr(scoring, "RESPONSE_PASS_ROWS", response_rows)
    policy, rollout = tiny_policy().eval(), make_rollout()
    s = rollout.samples
    logp, values, mask, *_ = plain_pass(policy, rollout, True)
    fast_logp, fast_values, entropy = grouped_pass(policy, s.prompt_ids, s.response_ids, PAD, "cpu", mask.shape[1],
                                                   True, rows_per_chunk, packed=packed)
    assert entropy is None  # not computed unless asked
    assert (fast_logp - logp).mul(mask).abs().max() <= TOL
    assert (fast_values - values).mul(mask).abs().max() <= TOL
    assert (fast_logp * (1 - mask)).abs().max() == 0  # nothing written outside the responses
    entropy = grouped_pass(policy, s.prompt_ids, s.response_ids, PAD, "cpu", mask.shape[1], True, rows_per_chunk,
                           with_entropy=True, packed=packed)[2]
    assert (entropy - plain_entropy(policy, rollout)).mul(mask).abs().max() <= TOL
    assert (entropy * (1 - mask)).abs().max() == 0
    ref_logp, ref_values, _ = grouped_pass(ReferenceLM(policy.lm), s.prompt_ids, s.response_ids, PAD, "cpu",
                                           mask.shape[1], False, rows_per_chunk, packed=packed)
    assert ref_values is None and (ref_logp - logp).mul(mask).abs().max() <= TOL


def test_rows_share_a_prompt_pass_exactly_when_their_prompts_are_equal():
    assert distinct_prompts([[1, 2], [3], [1, 2], [1, 3], [3]]) == ([[1, 2], [3], [1, 3]], [0, 1, 0, 2, 1])
    prompts, responses = [[1, 2], [3], [1, 2], [1, 3], [3]], [[5] * 4, [5], [5] * 6, [5] * 2, [5] * 2]
    # by length (prompt + longest response): [3] (3), [1, 3] (4), [1, 2] (8); a prompt's rows stay together
    assert prompt_chunks(prompts, responses, 2) == [[[1, 4]], [[3]], [[0, 2]]]
    assert prompt_chunks(prompts, responses, 3) == [[[1, 4], [3]], [[0, 2]]]
    assert prompt_chunks(prompts, responses, 1) == [[[1, 4]], [[3]], [[0, 2]]]  # more than max_rows: one prompt's rows


def test_only_one_epoch_of_one_minibatch_without_dropout_reuses_the_scoring_forward():
    assert reuses_update_forward(RLConfig(ppo_epochs=1, minibatches=1))
    assert not reuses_update_forward(RLConfig(ppo_epochs=2, minibatches=1))
    assert not reuses_update_forward(RLConfig(ppo_epochs=1, minibatches=2))
    assert not reuses_update_forward(RLConfig(ppo_epochs=1, minibatches=1, objective="online_self_training"))
    assert has_dropout(tiny_policy(dropout=0.1)) and not has_dropout(tiny_policy())
    batch = score(tiny_policy(dropout=0.1), None, make_rollout(), pad_id=PAD, device="cpu", autocast=no_autocast,
                  chunks=1, with_values=True, update_forward=True)
    assert batch.update_forward is None  # train-mode dropout would make "old" differ from the eval-mode pass


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it stepped with."""

    def step(self, closure=None):
        self.grads = [p.grad.detach().clone() for p in self.param_groups[0]["params"]]
        return super().step(closure)


def one_iteration(policy, ref, cfg: RLConfig, update_forward: bool):
    rollout = make_rollout()
    torch.manual_seed(7)  # ppo_update's minibatch permutation
    batch = score(policy, ref, rollout, pad_id=PAD, device="cpu", autocast=no_autocast, chunks=cfg.minibatches,
                  with_values=True, update_forward=update_forward)
    old = (batch.old_logp.clone(), batch.old_values.clone())
    adv, returns = advantages(batch, rollout.scores, cfg)
    opt = RecordingSGD(policy.parameters(), lr=0.1)
    stats = ppo_update(policy, opt, get_accelerator("fp32"), batch, adv, returns, cfg, True, "test")
    return batch, old, adv, stats, opt.grads


@pytest.mark.parametrize("kl_in,rows_per_chunk", [("reward", 64), ("loss", 64), ("reward", 2 * G)])
def test_reusing_the_scoring_forward_gives_the_same_update(monkeypatch, kl_in, rows_per_chunk):
    monkeypatch.setattr(scoring, "SCORING_ROWS", rows_per_chunk)
    cfg = RLConfig(ppo_epochs=1, minibatches=1, kl_in=kl_in, kl_coef=0.1)
    plain_policy = tiny_policy()
    fast_policy = copy.deepcopy(plain_policy)
    ref = ReferenceLM(tiny_policy(seed=3).lm).eval()  # a reference that differs: the KL is not zero
    plain = one_iteration(plain_policy, ref, cfg, update_forward=False)
    fast = one_iteration(fast_policy, ref, cfg, update_forward=True)
    assert plain[0].update_forward is None and fast[0].update_forward is None  # used up by the update
    mask = plain[0].mask
    for a, b in zip(plain[1], fast[1]):  # old log-probs and values: what advantages see
        assert (a - b).mul(mask).abs().max() <= TOL
    assert (plain[0].ref_logp - fast[0].ref_logp).mul(mask).abs().max() <= TOL
    assert (plain[2] - fast[2]).mul(mask).abs().max() <= TOL
    assert set(plain[3]) == set(fast[3])
    for k in plain[3]:
        assert plain[3][k] == pytest.approx(fast[3][k], abs=TOL), k
    assert fast[3]["clipfrac"] == [0.0] and fast[3]["ratio_mean"] == pytest.approx([1.0], abs=TOL)
    assert max((g1 - g2).abs().max().item() for g1, g2 in zip(plain[4], fast[4])) <= TOL
    assert sum(g.abs().sum().item() for g in fast[4]) > 0  # a gradient flowed through the reused forward
    for p1, p2 in zip(plain_policy.parameters(), fast_policy.parameters()):
        assert (p1 - p2).abs().max() <= TOL


@pytest.mark.parametrize("rows_per_chunk", [64, 2 * G])
def test_an_update_of_shuffled_minibatches_through_shared_prompts_gives_the_padded_update(monkeypatch, rows_per_chunk):
    """Two PPO epochs of two minibatches: each minibatch holds some rows of a question, not all; its forward encodes
    each of their prompts once (`rows_forward`) against one padded forward of the rows (prompt_ids=None)."""
    monkeypatch.setattr(scoring, "SCORING_ROWS", rows_per_chunk)
    assert scoring.update_forward_kind(tiny_policy()) == "cache"
    cfg = RLConfig(ppo_epochs=2, minibatches=2, kl_in="loss", kl_coef=0.1)
    ref = ReferenceLM(tiny_policy(seed=3).lm).eval()
    results = []
    for shared in (False, True):
        policy, rollout = tiny_policy(), make_rollout()
        batch = score(policy, ref, rollout, pad_id=PAD, device="cpu", autocast=no_autocast, chunks=2,
                      with_values=True)
        if not shared:
            batch.prompt_ids = batch.response_ids = None  # the padded forward of the minibatch's rows
        adv, returns = advantages(batch, rollout.scores, cfg)
        opt = RecordingSGD(policy.parameters(), lr=0.1)
        torch.manual_seed(7)  # the minibatch permutations
        stats = ppo_update(policy, opt, get_accelerator("fp32"), batch, adv, returns, cfg, True, "test")
        results.append((stats, opt.grads, list(policy.parameters())))
    (plain, plain_grads, plain_params), (fast, fast_grads, fast_params) = results
    assert set(plain) == set(fast) and len(fast["policy_loss"]) == 4
    for k in plain:
        assert plain[k] == pytest.approx(fast[k], abs=TOL), k
    assert abs(fast["ratio_mean"][-1] - 1) > 1e-4  # later minibatches moved off the old policy: ratios not all 1
    assert max((g1 - g2).abs().max().item() for g1, g2 in zip(plain_grads, fast_grads)) <= TOL
    assert max((p1 - p2).abs().max().item() for p1, p2 in zip(plain_params, fast_params)) <= TOL


def test_response_passes_take_rows_of_similar_length():
    assert scoring.length_buckets([3, 1, 6, 5, 5, 2], 4) == [[2, 3, 4, 0], [5, 1]]
    assert scoring.length_buckets([2, 2], 1) == [[0], [1]]
    assert scoring.length_buckets([], 4) == []


@pytest.mark.parametrize("response_rows", [16, 3])
def test_a_shared_prompt_forward_gives_the_padded_forwards_gradients(monkeypatch, response_rows):
    from reftune.rl.scoring import shared_prompt_logprobs

    monkeypatch.setattr(scoring, "RESPONSE_PASS_ROWS", response_rows)
    rollout = make_rollout()
    s = rollout.samples
    grads = []
    for shared in (False, True):
        policy = tiny_policy().train()
        if shared:
            owner = [q for q in range(len(PROMPTS)) for _ in range(G)]
            logp, values, _ = shared_prompt_logprobs(policy, s.prompt_ids[::G], s.response_ids, owner, PAD, "cpu",
                                                     True)
            mask = (logp != 0).float()  # the log-probs are 0 after each row's end
        else:
            logp, values, mask, *_ = plain_pass(policy, rollout, True)
        loss = ((logp * mask).sum() + (values * mask).pow(2).sum()) / mask.sum()  # a token mean, as the losses
        loss.backward()
        grads.append([p.grad.clone() for p in policy.parameters()])
    assert max((a - b).abs().max().item() for a, b in zip(*grads)) <= TOL
    assert min(g.abs().max().item() for g in grads[1]) > 0  # every parameter got a gradient


@pytest.mark.parametrize("rows_per_chunk,pack_tokens", [(64, 1024), (G, 1024), (1, 1024), (64, 9)])
def test_a_packed_forward_gives_the_padded_forwards_logprobs_values_and_gradients(monkeypatch, rows_per_chunk,
                                                                                  pack_tokens):
    """Each prompt and its rows' responses in one sequence with a block mask (`packed_logprobs`; rows of one token
    included; pack_tokens 9: a prompt's rows split over several packs): the padded forward's log-probs and values,
    and the gradients of a loss on them, within 1e-5."""
    monkeypatch.setattr(scoring, "PACK_TOKENS", pack_tokens)
    rollout = make_rollout()
    s = rollout.samples
    results = []
    for packed in (False, True):
        policy = tiny_policy().train()
        if packed:
            logp, values, entropy = grouped_pass(policy, s.prompt_ids, s.response_ids, PAD, "cpu",
                                                 max(map(len, s.response_ids)), True, rows_per_chunk,
                                                 with_entropy=True, packed=True)
            mask = (logp != 0).float()
            assert (entropy - plain_entropy(policy, rollout)).mul(mask).abs().max() <= TOL
        else:
            logp, values, mask, *_ = plain_pass(policy, rollout, True)
        loss = ((logp * mask).sum() + (values * mask).pow(2).sum()) / mask.sum()
        loss.backward()
        results.append((logp.detach(), values.detach(), mask, [p.grad.clone() for p in policy.parameters()]))
    (lp0, v0, m0, g0), (lp1, v1, m1, g1) = results
    assert torch.equal(m0, m1)
    assert (lp0 - lp1).mul(m0).abs().max() <= TOL and (v0 - v1).mul(m0).abs().max() <= TOL
    assert max((a - b).abs().max().item() for a, b in zip(g0, g1)) <= TOL
    assert min(g.abs().max().item() for g in g1) > 0
    with torch.no_grad():  # the reference's pass packs too
        ref_logp, ref_values, _ = grouped_pass(ReferenceLM(tiny_policy().lm).eval(), s.prompt_ids, s.response_ids, PAD,
                                               "cpu", lp0.shape[1], False, rows_per_chunk, packed=True)
    assert ref_values is None and (ref_logp - lp0).mul(m0).abs().max() <= TOL


def test_under_gradient_checkpointing_the_update_packs_prompts_and_gives_the_padded_update(monkeypatch):
    """Checkpointing turns the KV cache off, so the update's forward packs each prompt with its rows
    (`update_forward_kind` "packed"): two epochs of two shuffled minibatches give the padded update's numbers."""
    cfg = RLConfig(ppo_epochs=2, minibatches=2, kl_in="loss", kl_coef=0.1)
    ref = ReferenceLM(tiny_policy(seed=3).lm).eval()
    results = []
    for packed in (False, True):
        policy, rollout = tiny_policy(), make_rollout()
        enable_activation_checkpointing(policy.lm)
        assert scoring.update_forward_kind(policy) == "packed"
        batch = score(policy, ref, rollout, pad_id=PAD, device="cpu", autocast=no_autocast, chunks=2,
                      with_values=True)
        if not packed:
            batch.prompt_ids = batch.response_ids = None
        adv, returns = advantages(batch, rollout.scores, cfg)
        opt = RecordingSGD(policy.parameters(), lr=0.1)
        torch.manual_seed(7)
        stats = ppo_update(policy, opt, get_accelerator("fp32"), batch, adv, returns, cfg, True, "test")
        results.append((stats, opt.grads, list(policy.parameters())))
    (plain, plain_grads, plain_params), (fast, fast_grads, fast_params) = results
    for k in plain:
        assert plain[k] == pytest.approx(fast[k], abs=TOL), k
    assert max((g1 - g2).abs().max().item() for g1, g2 in zip(plain_grads, fast_grads)) <= TOL
    assert max((p1 - p2).abs().max().item() for p1, p2 in zip(plain_params, fast_params)) <= TOL
    assert scoring.update_forward_kind(tiny_policy()) == "cache"  # without checkpointing: the KV cache
    monkeypatch.setattr(scoring, "supports_packing", lambda model: False)  # a model without 4-D masks
    assert scoring.update_forward_kind(policy) == "padded"  # ... under checkpointing


def test_the_lm_head_reads_a_contiguous_input_in_every_pass():
    """`logits_to_keep` slices the hidden states; a frozen head fed that slice makes torch.matmul broadcast the
    vocabulary matrix over the batch (B copies of it). Every model reftune builds or loads copies the slice instead."""
    from reftune.model.lm_head import contiguous_lm_head_input
    from reftune.model.modeling import build_tiny_model, train_tokenizer
    from reftune.model.sampler import HFSampler
    tok = train_tokenizer([f"{a} plus {b} is {a + b}" for a in range(10) for b in range(10)], 60)
    lm = build_tiny_model(tok, 32, 1, 2, 64, 64, seed=0).requires_grad_(False)
    seen = []
    lm.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 40, (4, 12))
    before = lm(input_ids=ids, logits_to_keep=3).logits
    assert seen == [True]                                  # build_tiny_model's hook ran first
    assert contiguous_lm_head_input(lm) is lm and len(lm.get_output_embeddings()._forward_pre_hooks) == 2  # once
    sampler = HFSampler(lm, tok, batch_size=8, dtype=torch.bfloat16)
    sampler.generate([[5, 6, 7], [8, 9]], num_samples=2, max_new_tokens=3, seeds=[0, 1])
    assert len(seen) > 1 and all(seen)                     # the bf16 copy keeps the hook (prefill + decode)
    assert torch.equal(lm(input_ids=ids, logits_to_keep=3).logits, before)


@torch.no_grad()
@pytest.mark.parametrize("capacity", [40, 7])  # 7: smaller than the prompt, so the buffer grows once
def test_a_preallocated_cache_decodes_the_logits_of_a_dynamic_cache(capacity):
    """Prefill a left-padded batch, share each prompt across a group of 2, decode, drop rows as they finish:
    the cache written in place gives the logits that DynamicCache's concatenation gives, step by step."""
    from transformers import DynamicCache

    from reftune.model.batching import left_pad
    from reftune.model.kv_cache import PreallocatedLayer, fill_holes, preallocated_cache
    lm = tiny_policy().lm.eval()
    ids, attn0 = left_pad([[5, 6, 7, 8, 9, 10], [11, 12, 13]], PAD)
    caches = [DynamicCache(config=lm.config), preallocated_cache(lm.config, capacity)]
    assert all(isinstance(layer, PreallocatedLayer) for layer in caches[1].layers)
    outs = []
    for cache in caches:
        attn, pos, steps = attn0, positions(attn0), []
        logits = lm(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache,
                    use_cache=True).logits[:, -1]
        cache.batch_repeat_interleave(2)
        logits, attn = logits.repeat_interleave(2, 0), attn.repeat_interleave(2, 0)
        pos = attn.sum(-1, keepdim=True)
        for step in range(6):
            steps.append(logits)
            tok = logits.argmax(-1) % 37 + 1 + step
            if step in (2, 4):  # rows finish (a middle one and the first): the others move into their places
                keep = fill_holes(torch.arange(attn.shape[0]) == (1 if step == 2 else 0))
                cache.batch_select_indices(keep)
                tok, attn, pos = tok[keep], attn[keep], pos[keep]
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1)
            logits = lm(input_ids=tok[:, None], attention_mask=attn, position_ids=pos, past_key_values=cache,
                        use_cache=True).logits[:, -1]
            pos = pos + 1
        assert cache.get_seq_length() == ids.shape[1] + 6
        outs.append(steps + [logits])
    for a, b in zip(*outs):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_fill_holes_moves_the_last_live_rows_into_the_finished_rows_places():
    from reftune.model.kv_cache import fill_holes
    ended = torch.tensor([False, True, False, True, False, False, True])  # live rows 0, 2, 4, 5
    assert fill_holes(ended).tolist() == [0, 4, 2, 5]  # hole 1 <- 4, hole 3 <- 5
    assert fill_holes(torch.tensor([False, False, True])).tolist() == [0, 1]  # nothing moves
    assert fill_holes(torch.tensor([True, True])).tolist() == []


def test_select_rows_copies_only_the_rows_that_move_and_keeps_their_filled_positions():
    from reftune.model.kv_cache import select_rows
    buf = torch.arange(5 * 2 * 4 * 3, dtype=torch.float).view(5, 2, 4, 3)  # rows, heads, capacity, head dim
    before = buf.clone()
    out = select_rows(buf, torch.tensor([0, 4, 1]), filled=2)
    assert out.shape == (3, 2, 4, 3) and out.data_ptr() == buf.data_ptr()  # in place: a view of the first rows
    assert torch.equal(out[0], before[0])
    assert torch.equal(out[1, :, :2], before[4, :, :2]) and torch.equal(out[2, :, :2], before[1, :, :2])
    assert torch.equal(out[1, :, 2:], before[1, :, 2:])  # the unfilled positions are not copied
    buf = before.clone()
    assert torch.equal(select_rows(buf, torch.tensor([3, 2, 1, 0]), filled=4), before[[3, 2, 1, 0]])  # any order
