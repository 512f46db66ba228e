"""Specification of rollout generation: the KV-cached, batched, left-padded sampler must produce exactly what
a plain no-cache loop over one prompt produces, grouped per prompt, with the log-probs a full forward gives."""

from __future__ import annotations

import math

import pytest
import torch

from reftune.model.batching import encode
from reftune.model.modeling import build_tiny_model, train_tokenizer
from reftune.model.sampler import HFSampler, sample_next
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
