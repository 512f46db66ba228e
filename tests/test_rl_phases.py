"""The RL loop's phases alone, on batches written out by hand (`reftune.rl.scoring.score`,
`reftune.rl.update.advantages`, `reftune.rl.update.ppo_update`): what each computes, checked against numbers
worked out here."""

from __future__ import annotations

import pytest
import torch

from reftune.config import RLConfig
from reftune.data.synthetic import generate_splits
from reftune.grading.grade import Grade
from reftune.model.modeling import PolicyWithValue, build_tiny_model, train_tokenizer
from reftune.model.sampler import Samples
from reftune.rl.batch import Rollout, ScoredBatch
from reftune.rl.scoring import ReferenceLM, score
from reftune.rl.update import advantages, gold_minibatches, pool_minibatches, ppo_update
from reftune.train.accel import get_accelerator

# two questions, two samples each: rows 0-1 answer question 0, rows 2-3 question 1
PROMPTS = [[5, 6, 7], [8, 9]]
RESPONSES = [[10, 11, 12], [13, 14], [15], [16, 17, 18, 19]]
LENGTHS = [3, 2, 1, 4]


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    splits = generate_splits(0, {"train": 16})
    tok = train_tokenizer([e.question + "\n" + e.cot for e in splits["train"]], 280)
    torch.manual_seed(0)
    return PolicyWithValue(build_tiny_model(tok, 32, 1, 2, 64, 320, seed=0)), tok


def rollout(scores=(1.0, 0.0, 0.1, 0.1)) -> Rollout:
    prompt_ids = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    sampler_logp = [[-0.5 - j for j in range(n)] for n in LENGTHS]
    samples = Samples(prompt_ids, RESPONSES, sampler_logp, [True] * 4, ["a"] * 4)
    return Rollout([0, 1], None, samples, [None] * 4, torch.tensor(scores), {}, [Grade(None, False)] * 4)


def direct_logprobs(lm, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Log-probs of `response` after `prompt`, from one unpadded forward pass."""
    ids = torch.tensor([prompt + response])
    logits = lm(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def score_batch(policy, tok, with_ref: bool = False, chunks: int = 2) -> ScoredBatch:
    ref = ReferenceLM(policy.lm).eval() if with_ref else None
    return score(policy, ref, rollout(), pad_id=tok.pad_token_id, device=torch.device("cpu"),
                 autocast=_no_autocast,
                 chunks=chunks, with_values=True)


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_score_gives_each_rows_logprobs_as_an_unpadded_forward_would(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    batch = score_batch(policy, tok, with_ref=True)
    assert batch.mask.sum(-1).tolist() == LENGTHS
    assert batch.group_ids.tolist() == [0, 0, 1, 1]
    rows = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(rows, RESPONSES)):
            expected = direct_logprobs(policy.lm, p, r)
            assert torch.allclose(batch.old_logp[i, :len(r)], expected, atol=1e-5), i
            assert torch.equal(batch.sampler_logp[i, :len(r)], torch.tensor([-0.5 - j for j in range(len(r))]))
            assert (batch.sampler_logp[i, len(r):] == 0).all()
    assert torch.equal(batch.ref_logp, batch.old_logp)  # the reference is the same LM here: KL 0
    assert batch.old_values.shape == batch.old_logp.shape and (batch.old_values * (1 - batch.mask) == 0).all()


def test_score_does_not_depend_on_how_the_batch_is_chunked(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    one, four = score_batch(policy, tok, chunks=1), score_batch(policy, tok, chunks=4)
    assert torch.allclose(one.old_logp, four.old_logp, atol=1e-6)
    assert torch.allclose(one.old_values, four.old_values, atol=1e-6)


def handmade(kl: float = 0.0) -> ScoredBatch:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    zeros = torch.zeros(4, 4)
    return ScoredBatch(ids=torch.zeros(4, 6, dtype=torch.long), attn=torch.ones(4, 6), mask=mask, prompt_width=2,
                       group_ids=torch.tensor([0, 0, 1, 1]), old_logp=zeros + kl * mask, old_values=zeros,
                       ref_logp=zeros, sampler_logp=zeros)


SCORES = torch.tensor([1.0, 0.0, 0.1, 0.1])


def test_gae_advantages_are_the_return_to_go_with_the_kl_penalty_by_hand():
    cfg = RLConfig(advantage="gae", gamma=1.0, lam=1.0, kl_coef=0.1, kl_in="reward", kl_kind="k1",
                   whiten_advantages=False)
    adv, returns = advantages(handmade(kl=0.5), SCORES, cfg)
    # per-token reward -0.1 * 0.5 = -0.05, plus the score on the last token; A_t = sum of rewards from t on
    expected = torch.tensor([[0.85, 0.90, 0.95, 0.0],
                             [-0.10, -0.05, 0.0, 0.0],
                             [0.05, 0.0, 0.0, 0.0],
                             [-0.10, -0.05, 0.0, 0.05]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(returns, expected, atol=1e-6)  # values are 0


def test_grpo_advantages_are_the_group_z_scores_by_hand():
    cfg = RLConfig(advantage="grpo", kl_in="loss", kl_kind="k3", whiten_advantages=False)
    adv, _ = advantages(handmade(kl=0.5), SCORES, cfg)  # kl_in="loss": the KL is not in the reward
    # group 0: scores 1, 0 -> mean 0.5, unbiased std sqrt(0.5) -> +-0.5 / 0.7071; group 1: equal -> exactly 0
    z = 0.5 / 0.5 ** 0.5
    mask = handmade().mask
    assert torch.allclose(adv[0], z * mask[0], atol=1e-5) and torch.allclose(adv[1], -z * mask[1], atol=1e-5)
    assert (adv[2:] == 0).all()


def test_whitening_centres_and_scales_over_the_response_tokens():
    cfg = RLConfig(advantage="gae", gamma=1.0, lam=1.0, kl_in="none", whiten_advantages=True)
    adv, _ = advantages(handmade(), SCORES, cfg)
    m = handmade().mask.bool()
    assert abs(adv[m].mean().item()) < 1e-5 and abs(adv[m].var().item() - 1) < 0.1
    assert (adv[~m] == 0).all()


def test_one_ppo_minibatch_raises_the_logprobs_of_positive_advantage_tokens(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    batch = score_batch(policy, tok)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None] * batch.mask
    cfg = RLConfig(ppo_epochs=1, minibatches=1, kl_in="none", lr=1e-2, clip=10.0, grad_clip=10.0)
    saved = {k: v.clone() for k, v in policy.state_dict().items()}
    opt = torch.optim.SGD(policy.parameters(), lr=0.05)
    stats = ppo_update(policy, opt, get_accelerator("fp32"), batch, adv, adv, cfg, use_values=False, where="test")
    after = score_batch(policy, tok)
    policy.load_state_dict(saved)  # leave the module fixture as it was
    change = ((after.old_logp - batch.old_logp) * batch.mask).sum(-1)
    assert len(stats["policy_loss"]) == 1
    assert change[0] > 0 and change[2] > 0, change
    assert change[1] < 0 and change[3] < 0, change


def test_gold_cots_are_dealt_to_the_minibatches_in_the_epochs_question_order():
    """Four questions (q1 answer-only) in the order 2, 0, 3, 1, two minibatches: the first takes questions 2 and 0,
    the second 3 and 1; a process holding questions 2-3 keeps its own gold rows of each minibatch."""
    A, C, D = ([1], [10]), ([3], [30]), ([4], [40])
    order = torch.tensor([2, 0, 3, 1])
    assert gold_minibatches(order, 2, 0, [A, None, C, D]) == [[C, A], [D]]
    assert gold_minibatches(order, 2, 2, [C, D]) == [[C], [D]]
    assert gold_minibatches(order, 2, 0, [A, None]) == [[A], []]
    assert gold_minibatches(torch.tensor([0, 1, 2]), 2, 0, [A, C, D]) == [[A, C], [D]]


def test_pool_minibatches_draw_distinct_gold_rows_and_split_them_over_processes(monkeypatch):
    """rl.sft_rows: each minibatch draws min(rows, pool) distinct pool entries from the global RNG (so every process
    draws the same), and a process keeps its contiguous share: two processes' shares joined are one process's."""
    pool = [([i], [10 * i]) for i in range(5)]
    torch.manual_seed(0)
    one = pool_minibatches(pool, 3, 4)
    assert [len(m) for m in one] == [3, 3, 3, 3]
    assert all(len({p[0][0] for p in m}) == 3 for m in one)  # distinct within a minibatch
    assert len({tuple(p[0][0] for p in m) for m in one}) > 1  # drawn anew for each
    torch.manual_seed(0)
    assert [sorted(m) for m in pool_minibatches(pool, 9, 2)] == [pool, pool]  # more rows than the pool: each once
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr("reftune.rl.update.shard", lambda n, r=rank: range(0, 2) if r == 0 else range(2, n))
        torch.manual_seed(0)
        shares.append(pool_minibatches(pool, 3, 4))
    assert [a + b for a, b in zip(*shares)] == one


@pytest.mark.parametrize("gold_source", ["minibatch", "pool"])
def test_sft_coef_adds_the_token_mean_nll_of_the_gold_cots_to_the_ppo_loss(policy_and_tokenizer, gold_source):
    """With zero advantages the policy loss has no gradient, so one SGD step of PPO with rl.sft_coef=0.5 is one
    SGD step on 0.5 x the token-mean NLL of the gold CoTs (question 1 answer-only: none), worked out here on the
    unpadded sequence. With rl.sft_rows the gold CoT comes from the pool of annotated questions instead, though
    both of the minibatch's questions are answer-only."""
    policy, tok = policy_and_tokenizer
    gold_prompt, gold_target = [5, 6, 7], [20, 21, 22, 23]
    saved = {k: v.clone() for k, v in policy.state_dict().items()}
    batch = score_batch(policy, tok)
    pool = gold_source == "pool"
    cfg = RLConfig(ppo_epochs=1, minibatches=1, kl_in="none", num_generations=2, sft_coef=0.5, grad_clip=100.0,
                   sft_rows=4 if pool else 0)
    stats = ppo_update(policy, torch.optim.SGD(policy.parameters(), lr=0.1), get_accelerator("fp32"), batch,
                       torch.zeros_like(batch.mask), torch.zeros_like(batch.mask), cfg, use_values=False,
                       where="test", gold=[None, None] if pool else [(gold_prompt, gold_target), None],
                       gold_pool=[(gold_prompt, gold_target)] if pool else None)
    ours = {k: v.clone() for k, v in policy.state_dict().items()}
    policy.load_state_dict(saved)
    policy.train()
    nll = -direct_logprobs(policy.lm, gold_prompt, gold_target).mean()
    policy.zero_grad()
    (0.5 * nll).backward()
    with torch.no_grad():
        expected = {n: p - 0.1 * p.grad if p.grad is not None else p.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    policy.load_state_dict(saved)  # leave the module fixture as it was
    assert stats["sft_loss"] == [pytest.approx(nll.item(), abs=1e-5)]
    moved = 0
    for name, value in expected.items():
        assert torch.allclose(ours[name], value, atol=1e-6), name
        moved += not torch.equal(value, saved[name])
    assert moved > 0
