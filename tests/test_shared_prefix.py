"""Shared-prefix decoding (`reftune.model.shared_prefix`) computes the attention the repeated cache computes.

A group's samples read their prompt's keys/values once per prompt instead of once per sample. Against the plain
path (the prompt's cache repeated per sample, `preallocated_cache`), on random tiny models of three families
(Llama with grouped-query attention, Qwen2 with biased projections, Qwen3 with normalised queries/keys):
left-padded prompts of different lengths, rows dropped as they finish, the logits of every decode step within
1e-5 in fp32; and `HFSampler` draws the same tokens and log-probs with it as without it.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import transformers

from reftune.model import shared_prefix
from reftune.model.batching import left_pad, positions
from reftune.model.kv_cache import fill_holes, preallocated_cache
from reftune.model.sampler import HFSampler, cache_keyword

PAD, EOS, G, VOCAB = 0, 1, 3, 40
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]


def tiny(family: str = "llama", seed: int = 0, **kw):
    torch.manual_seed(seed)
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                             "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
                             "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
                             "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM)}[family]
    config = config_cls(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
                        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2, **kw)
    return model_cls(config).eval()


def decode_both(lm, steps: int = 7, drop_at=(2, 4)):
    """Logits [rows, V] of every step, (plain, shared): prefill, G samples per prompt, forced tokens,
    row 1 dropped at the steps in `drop_at`."""
    ids, attn0 = left_pad(PROMPTS, PAD)
    kw = cache_keyword(lm)
    outs = []
    for shared in (False, True):
        cache = preallocated_cache(lm.config, ids.shape[1] + (0 if shared else steps))
        logits = lm(input_ids=ids, attention_mask=attn0, position_ids=positions(attn0), use_cache=True,
                    **{kw: cache}).logits[:, -1]
        pos = attn0.sum(-1, keepdim=True)
        if shared:
            state = shared_prefix.SharedPrefixState.from_prefill(cache, attn0, G, steps)
        else:
            cache.batch_repeat_interleave(G)
        logits, attn, pos = (t.repeat_interleave(G, 0) for t in (logits, attn0, pos))
        got = []
        for step in range(steps):
            got.append(logits)
            tok = (torch.arange(attn.shape[0]) * 7 + step * 3) % (VOCAB - 3) + 3  # the same tokens both ways
            if step in drop_at:  # a middle row finishes: the last live row takes its place
                keep = fill_holes(torch.arange(attn.shape[0]) == 1)
                (state.select_rows if shared else cache.batch_select_indices)(keep)
                tok, attn, pos = tok[keep], attn[keep], pos[keep]
            if shared:
                with shared_prefix.decoding(lm):
                    logits = lm(input_ids=tok[:, None], position_ids=pos, use_cache=False,
                                shared_prefix=state).logits[:, -1]
                state.check_step(lm.config.num_hidden_layers)
            else:
                attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], 1)
                logits = lm(input_ids=tok[:, None], attention_mask=attn, position_ids=pos, use_cache=True,
                            **{kw: cache}).logits[:, -1]
            pos = pos + 1
        outs.append(got + [logits])
    return outs


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_shared_prefix_decoding_gives_the_logits_of_the_repeated_cache(family):
    lm = tiny(family)
    assert shared_prefix.supported(lm)
    plain, shared = decode_both(lm)
    assert len(plain) == len(shared) == 8
    for a, b in zip(plain, shared):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert lm.config._attn_implementation == "sdpa"  # restored after decoding


@torch.no_grad()
def test_the_prompt_padding_is_masked():
    """A prompt's pad positions get no attention: changing the keys/values stored there changes nothing."""
    lm = tiny()
    ids, attn = left_pad(PROMPTS, PAD)
    cache = preallocated_cache(lm.config, ids.shape[1])
    lm(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=True,
       **{cache_keyword(lm): cache})
    outs = []
    for poison in (False, True):
        state = shared_prefix.SharedPrefixState.from_prefill(cache, attn, G, 2)
        if poison:
            for k, v in zip(state.prompt_keys, state.prompt_values):
                k.transpose(1, 2)[attn == 0], v.transpose(1, 2)[attn == 0] = 1e3, -1e3
        tok = torch.full((len(PROMPTS) * G, 1), 7)
        with shared_prefix.decoding(lm):
            outs.append(lm(input_ids=tok, position_ids=attn.sum(-1, keepdim=True).repeat_interleave(G, 0),
                           shared_prefix=state, use_cache=False).logits)
    assert (attn == 0).any() and torch.equal(outs[0], outs[1])


@torch.no_grad()
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_sampler_draws_the_same_samples_with_and_without_shared_prefixes(dtype):
    """Temperature-1 samples from each prompt's own stream, rows ending at EOS at different steps: the same
    tokens, finish flags and (within 1e-5 in fp32, 2e-2 in bf16) log-probs."""
    lm = tiny(seed=3)
    with torch.no_grad():  # make EOS likely enough that rows end early, at different steps
        lm.lm_head.weight[EOS] += 0.6 * lm.model.norm.weight / lm.model.norm.weight.norm()
    tokenizer = type("Tok", (), {"eos_token_id": EOS, "pad_token_id": PAD,
                                 "batch_decode": lambda self, rows, **kw: [" ".join(map(str, r)) for r in rows]})()
    outs = [HFSampler(lm, tokenizer, batch_size=64, dtype=dtype, shared_prefix=sp).generate(
        PROMPTS, num_samples=4, max_new_tokens=12, seeds=[0, 1, 2]) for sp in (False, True)]
    lengths = [len(r) for r in outs[0].response_ids]
    assert max(lengths) == 12 and any(1 < n < 12 for n in lengths) and any(outs[0].finished)
    assert outs[0].response_ids == outs[1].response_ids and outs[0].finished == outs[1].finished
    tol = 1e-5 if dtype is None else 2e-2
    assert all(abs(a - b) <= tol for r, s in zip(outs[0].logprobs, outs[1].logprobs) for a, b in zip(r, s))


@torch.no_grad()
def test_a_model_that_bypasses_the_attention_interface_is_caught(monkeypatch):
    """Were the implementation switch ignored, the model would decode without its prompt: that raises."""
    monkeypatch.setattr(shared_prefix, "decoding", lambda model: contextlib.nullcontext())
    lm = tiny()
    tokenizer = type("Tok", (), {"eos_token_id": EOS, "pad_token_id": PAD})()
    with pytest.raises(RuntimeError, match="attention layers used"):
        HFSampler(lm, tokenizer).generate(PROMPTS, num_samples=2, max_new_tokens=3, seeds=[0, 1, 2])


def test_supported_only_where_every_layer_attends_to_the_whole_context():
    assert shared_prefix.supported(tiny("llama"))
    assert not shared_prefix.supported(tiny("mistral", sliding_window=4))  # sliding-window layers
    assert not shared_prefix.supported(tiny("gemma2"))  # soft-capped logits, sliding layers


@pytest.mark.parametrize("value", [True, False])
def test_rollout_shared_prefix_reaches_the_rl_sampler(tmp_path, value):
    from reftune.config import RLJob, load_config
    from reftune.config.schema import RolloutConfig
    from reftune.data.synthetic import generate_splits
    from reftune.model.modeling import PolicyWithValue, build_tiny_model, train_tokenizer
    from reftune.rl.loop import rollout_setup
    from reftune.train.context import RunContext
    from reftune.train.logger import MetricsLogger

    train = generate_splits(0, {"train": 4})["train"]
    tok = train_tokenizer([e.question + "\n" + e.cot for e in train], 280)
    cfg = load_config(RLJob, None, ["rl.prompts_per_step=2", "rl.num_generations=2"]).rl
    ctx = RunContext(tmp_path, MetricsLogger(tmp_path, tensorboard=False), stage="rl",
                     rollout=RolloutConfig(shared_prefix=value))
    setup = rollout_setup(PolicyWithValue(build_tiny_model(tok, 32, 1, 2, 64, 320, seed=0)), tok, train, cfg, ctx,
                          torch.device("cpu"), None)
    assert isinstance(setup.sampler, HFSampler) and setup.sampler.shared_prefix is value
