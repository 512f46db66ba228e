"""The RL algorithms against numbers worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch
from torch.testing import assert_close

from reftune.algos import (
    ADVANTAGE_ESTIMATORS,
    aggregate_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gather_logprobs,
    get_advantage_estimator,
    kl_estimate,
    kl_loss,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    register_advantage,
)

NAN = float("nan")
T = torch.tensor


# ---- masked statistics ----------------------------------------------------------------------------------------


def test_masked_sum_mean_var_on_a_ragged_mask():
    x = T([[1.0, 2.0, 3.0], [4.0, 5.0, NAN]])
    mask = T([[1, 1, 0], [1, 0, 0]])  # counted entries: 1, 2, 4
    assert_close(masked_sum(x, mask), T(7.0))
    assert_close(masked_sum(x, mask, dim=-1), T([3.0, 4.0]))
    assert_close(masked_mean(x, mask), T(7 / 3))
    assert_close(masked_mean(x, mask.bool(), dim=-1), T([1.5, 4.0]))
    # deviations from 7/3: -4/3, -1/3, 5/3; squares sum to (16 + 1 + 25)/9 = 14/3
    assert_close(masked_var(x, mask), T(7 / 3))  # / (3 - 1)
    assert_close(masked_var(x, mask, unbiased=False), T(14 / 9))  # / 3


def test_masked_mean_of_an_empty_mask_is_zero_not_nan():
    assert_close(masked_mean(T([[5.0, 6.0]]), T([[0, 0]])), T(0.0))
    assert_close(masked_mean(T([[5.0, 6.0], [1.0, 2.0]]), T([[0, 0], [1, 1]]), dim=-1), T([0.0, 1.5]))


def test_masked_whiten_by_hand():
    x, mask = T([[1.0, 2.0, 3.0, 99.0]]), T([[1, 1, 1, 0]])
    # mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    assert_close(masked_whiten(x, mask), T([[-1.0, 0.0, 1.0, 0.0]]))
    assert_close(masked_whiten(x, mask, shift_mean=False), T([[1.0, 2.0, 3.0, 0.0]]))


def test_masked_whiten_gives_mean_zero_std_one_on_masked_entries_and_zero_elsewhere():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 5 + 3
    mask = T([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    w = masked_whiten(x, mask)
    assert_close(w[mask].mean(), T(0.0), atol=1e-6, rtol=0)
    assert_close(w[mask].std(), T(1.0))
    assert torch.equal(w[~mask], torch.zeros((~mask).sum()))


def test_explained_variance():
    returns, mask = T([[1.0, 2.0, 3.0, 4.0, NAN]]), T([[1, 1, 1, 1, 0]])
    # residual 0, 0, 0, 1: mean 1/4, var (3 * 1/16 + 9/16) / 4 = 3/16; Var(returns) = (9/4 + 1/4 + 1/4 + 9/4) / 4 = 5/4
    assert_close(explained_variance(T([[1.0, 2.0, 3.0, 3.0, 0.0]]), returns, mask), T(1 - (3 / 16) / (5 / 4)))
    assert_close(explained_variance(returns, returns, mask), T(1.0))
    assert_close(explained_variance(torch.full((1, 5), 2.5), returns, mask), T(0.0))  # a constant explains nothing
    # constant returns: the ratio is undefined; documented choice is 0
    assert_close(explained_variance(T([[0.0, 1.0]]), T([[1.0, 1.0]]), T([[1, 1]])), T(0.0))


def test_entropy_from_logits():
    logits = T([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -1e4, -1e4]]])
    # uniform over 4 -> ln 4; p = (1/4, 3/4, 0, 0) -> 1/4 ln 4 + 3/4 ln(4/3)
    assert_close(entropy_from_logits(logits), T([[math.log(4), 0.25 * math.log(4) + 0.75 * math.log(4 / 3)]]))
    # logits past exp's overflow point (float64 so the expected ln 2 is representable next to 1000)
    huge = T([[[1000.0, 1000.0]]], dtype=torch.float64)
    assert_close(entropy_from_logits(huge), T([[math.log(2)]], dtype=torch.float64))


def test_gather_logprobs():
    logits = T([[[0.0, math.log(3)], [-1e4, 0.0]]])  # p = (1/4, 3/4); then (0, 1)
    assert_close(gather_logprobs(logits, T([[1, 1]])), T([[math.log(3 / 4), 0.0]]))
    assert_close(gather_logprobs(logits, T([[0, 1]])), T([[math.log(1 / 4), 0.0]]))
    huge = T([[[1000.0, 1000.0]]], dtype=torch.float64)  # no overflow: ln(1/2)
    assert_close(gather_logprobs(huge, T([[0]])), T([[math.log(0.5)]], dtype=torch.float64))


# ---- KL ---------------------------------------------------------------------------------------------------------

LOGP, REF_LOGP = T([[0.0, -1.0, -2.0]]), T([[-0.5, 0.0, -2.0]])  # d = logp - ref = 0.5, -1, 0


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("k1", [0.5, -1.0, 0.0]),
        ("k2", [0.125, 0.5, 0.0]),  # d^2 / 2
        ("k3", [math.exp(-0.5) - 0.5, math.exp(1) - 2, 0.0]),  # e^-d + d - 1 = 0.10653, 0.71828, 0
        ("abs", [0.5, 1.0, 0.0]),
    ],
)
def test_kl_estimate_each_kind(kind, expected):
    assert_close(kl_estimate(LOGP, REF_LOGP, kind), T([expected]))


def test_k3_is_never_negative_and_unknown_kind_names_the_valid_ones():
    g = torch.Generator().manual_seed(0)
    assert (kl_estimate(torch.randn(64, 32, generator=g) * 3, torch.randn(64, 32, generator=g) * 3, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        kl_estimate(LOGP, REF_LOGP, "k4")


def test_kl_penalized_rewards_put_the_score_on_the_last_masked_token():
    scores = T([1.0, 0.1, 1.0])
    mask = T([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])  # row 1 starts with an R^3 prompt prefix; row 2 empty
    logp = T([[0.5, -1.0, 0.0, 9.0], [7.0, 0.2, 0.4, 9.0], [1.0, 1.0, 1.0, 1.0]])
    rewards = kl_penalized_rewards(scores, logp, torch.zeros_like(logp), mask, beta=0.1, kind="k1")
    # -0.1 * kl on masked tokens; last one also gets the score: -0.1 * 0 + 1 = 1, -0.1 * 0.4 + 0.1 = 0.06
    assert_close(rewards, T([[-0.05, 0.1, 1.0, 0.0], [0.0, -0.02, 0.06, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    score_only = T([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert_close(kl_penalized_rewards(scores, logp, torch.zeros_like(logp), mask, beta=0.0), score_only)
    assert_close(kl_penalized_rewards(scores, None, None, mask, beta=0.1), score_only)


# ---- advantages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gamma, expected_adv",
    [
        # deltas: 1 - 0.7 = 0.3; 0.7 - 0.6 = 0.1; 0.6 - 0.5 = 0.1
        # A2 = 0.3; A1 = 0.1 + 0.95 * 0.3 = 0.385; A0 = 0.1 + 0.95 * 0.385 = 0.46575
        (1.0, [0.46575, 0.385, 0.3]),
        # deltas: 0.3; 0.9 * 0.7 - 0.6 = 0.03; 0.9 * 0.6 - 0.5 = 0.04; gamma * lam = 0.855
        # A2 = 0.3; A1 = 0.03 + 0.855 * 0.3 = 0.2865; A0 = 0.04 + 0.855 * 0.2865 = 0.2849575
        (0.9, [0.2849575, 0.2865, 0.3]),
    ],
)
def test_gae_by_hand_ignores_padding_and_prompt_prefixes(gamma, expected_adv):
    rewards, values = [0.0, 0.0, 1.0], [0.5, 0.6, 0.7]
    # row 0: the response then two padded positions; row 1: a prompt-prefix position, the response, one pad
    token_rewards = T([rewards + [5.0, NAN], [NAN] + rewards + [5.0]])
    values = T([values + [NAN, 100.0], [100.0] + values + [NAN]])
    mask = T([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    adv, ret = get_advantage_estimator("gae")(token_rewards, mask, values=values, gamma=gamma, lam=0.95)
    expected_ret = [a + v for a, v in zip(expected_adv, [0.5, 0.6, 0.7])]
    assert_close(adv, T([expected_adv + [0.0, 0.0], [0.0] + expected_adv + [0.0]]))
    assert_close(ret, T([expected_ret + [0.0, 0.0], [0.0] + expected_ret + [0.0]]))


def test_gae_needs_values():
    with pytest.raises(ValueError, match="values"):
        get_advantage_estimator("gae")(T([[1.0]]), T([[1]]))


# Five responses to two prompts (ids 7 and 3, interleaved): scores on the last masked token, garbage in the padding.
GROUP_IDS = T([7, 3, 7, 7, 3])
GROUP_MASK = T([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 0, 0]])
GROUP_REWARDS = T([[0.0, 1.0, NAN], [0.0, 0.0, 0.1], [0.0, 9.0, 9.0], [0.0, 0.0, 0.0], [0.1, NAN, 5.0]])
# scores: prompt 7 -> 1, 0, 0; prompt 3 -> 0.1, 0.1 (all equal)


def _per_token(seq_adv):
    return torch.where(GROUP_MASK.bool(), T(seq_adv)[:, None], 0.0)


def test_grpo_by_hand():
    adv, ret = get_advantage_estimator("grpo")(GROUP_REWARDS, GROUP_MASK, group_ids=GROUP_IDS, eps=1e-6)
    # prompt 7: mean 1/3, deviations 2/3, -1/3, -1/3; unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3, std = 1/sqrt(3)
    std = 3**-0.5 + 1e-6
    assert_close(adv, _per_token([(2 / 3) / std, 0.0, (-1 / 3) / std, (-1 / 3) / std, 0.0]))
    assert torch.equal(ret, adv)


def test_grpo_group_of_equal_rewards_is_exactly_zero():
    # a group of 8 (the usual GRPO size) all scoring 0.1: in float32 a plain sum / 8 is 0.1 - 7.5e-9, which
    # divided by a std of the same size would give an advantage of about -0.007 instead of 0
    adv, _ = get_advantage_estimator("grpo")(torch.full((8, 1), 0.1), torch.ones(8, 1), group_ids=torch.full((8,), 4))
    assert torch.equal(adv, torch.zeros(8, 1))


def test_dr_grpo_subtracts_the_group_mean_only():
    adv, ret = get_advantage_estimator("dr_grpo")(GROUP_REWARDS, GROUP_MASK, group_ids=GROUP_IDS)
    assert_close(adv, _per_token([2 / 3, 0.0, -1 / 3, -1 / 3, 0.0]))
    assert torch.equal(ret, adv)


def test_rloo_baseline_excludes_the_sample_itself():
    ids = T([5, 2, 5, 5, 9])  # prompt 5: scores 1, 0, 0; prompt 2: 0.1 and 0.1; prompt 9: one sample
    mask = T([[1], [1], [1], [1], [1]])
    adv, ret = get_advantage_estimator("rloo")(T([[1.0], [0.1], [0.0], [0.0], [1.0]]), mask, group_ids=ids)
    # 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5 (twice); 0.1 - 0.1 = 0; a group of one has no baseline -> 0
    assert_close(adv, T([[1.0], [0.0], [-0.5], [-0.5], [0.0]]))
    assert torch.equal(ret, adv)


def test_reinforce_pp_whitens_discounted_returns_over_the_batch():
    token_rewards, mask = T([[0.0, 2.0, NAN], [0.0, 7.0, 7.0]]), T([[1, 1, 0], [1, 0, 0]])
    adv, ret = get_advantage_estimator("reinforce_pp")(token_rewards, mask, gamma=0.5)
    # return-to-go: row 0: G1 = 2, G0 = 0 + 0.5 * 2 = 1; row 1: G0 = 0
    assert_close(ret, T([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))
    # masked returns 1, 2, 0: mean 1, unbiased var (0 + 1 + 1) / 2 = 1
    assert_close(adv, T([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_every_estimator_ignores_appended_padding(name):
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    estimator = get_advantage_estimator(name)
    base = estimator(rewards, GROUP_MASK, values=values, group_ids=GROUP_IDS, gamma=0.9)
    garbage = torch.full((5, 2), NAN)
    padded_mask = torch.cat([GROUP_MASK, torch.zeros(5, 2, dtype=GROUP_MASK.dtype)], dim=1)
    padded_rewards, padded_values = torch.cat([rewards, garbage], 1), torch.cat([values, garbage], 1)
    padded = estimator(padded_rewards, padded_mask, values=padded_values, group_ids=GROUP_IDS, gamma=0.9)
    for before, after in zip(base, padded):
        assert_close(after, torch.cat([before, torch.zeros(5, 2)], dim=1))


def test_registry_lookup_and_registration():
    with pytest.raises(ValueError, match="dr_grpo, gae, grpo, reinforce_pp, rloo"):
        get_advantage_estimator("ppo2")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("gae")(lambda *a, **k: None)
    try:
        fn = register_advantage("test_zero")(lambda r, m, **kw: (torch.zeros_like(r), torch.zeros_like(r)))
        assert get_advantage_estimator("test_zero") is fn
    finally:
        ADVANTAGE_ESTIMATORS.pop("test_zero", None)


# ---- losses -----------------------------------------------------------------------------------------------------

RAGGED_LOSS = T([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
RAGGED_MASK = T([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize(
    "mode, norm_const, expected",
    [
        ("token_mean", None, (1 + 2 + 3 + 5) / 4),  # 2.75
        ("seq_mean_token_mean", None, (2 + 5) / 2),  # row means 2 and 5 -> 3.5
        ("seq_sum_norm", None, (6 / 4 + 5 / 4) / 2),  # row sums 6 and 5, over T = 4 -> 1.375
        ("seq_sum_norm", 2.0, (6 / 2 + 5 / 2) / 2),  # 2.75
    ],
)
def test_aggregate_loss_modes_on_a_ragged_mask(mode, norm_const, expected):
    assert_close(aggregate_loss(RAGGED_LOSS, RAGGED_MASK, mode, norm_const), T(expected))


def test_aggregate_loss_unknown_mode():
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean, seq_sum_norm"):
        aggregate_loss(RAGGED_LOSS, RAGGED_MASK, "sum")


# Tokens: (A=+1, r=1.5) (A=+1, r=0.5) (A=-1, r=1.5) (A=-1, r=0.5), then a padded position full of NaN.
RATIOS, ADVANTAGES = T([[1.5, 0.5, 1.5, 0.5, NAN]]), T([[1.0, 1.0, -1.0, -1.0, NAN]])
POLICY_MASK = T([[1, 1, 1, 1, 0]])


def test_clipped_policy_loss_above_and_below_the_clip_for_both_signs():
    logp = RATIOS.log().requires_grad_()
    loss, stats = clipped_policy_loss(logp, torch.zeros(1, 5), ADVANTAGES, POLICY_MASK, clip_low=0.2)
    # -min(rA, clip(r, 0.8, 1.2)A): max(-1.5, -1.2) = -1.2 clipped; max(-0.5, -0.8) = -0.5;
    # max(1.5, 1.2) = 1.5; max(0.5, 0.8) = 0.8 clipped. Mean (-1.2 - 0.5 + 1.5 + 0.8) / 4 = 0.15
    assert_close(loss, T(0.15))
    assert_close(stats["clipfrac"], T(0.5))  # 2 of 4 tokens
    assert_close(stats["ratio_mean"], T(1.0))  # (1.5 + 0.5 + 1.5 + 0.5) / 4
    # (r - 1) - ln r: 0.5 - ln 1.5 = 0.094535 and -0.5 + ln 2 = 0.193147, twice each
    assert_close(stats["approx_kl"], T((0.5 - math.log(1.5) - 0.5 + math.log(2)) / 2))
    loss.backward()
    # d/dlogp of -A r is -A r (clipped tokens: 0), over 4 tokens: -0.5 / 4, 1.5 / 4; the NaN padding gets 0
    assert_close(logp.grad, T([[0.0, -0.125, 0.375, 0.0, 0.0]]))


def test_clipped_policy_loss_asymmetric_clip_and_importance_weights():
    logp, adv, mask = T([[1.25, 0.75]]).log(), T([[1.0, -1.0]]), T([[1, 1]])
    # symmetric 0.2: max(-1.25, -1.2) = -1.2 and max(0.75, 0.8) = 0.8, both clipped -> -0.2
    loss, stats = clipped_policy_loss(logp, torch.zeros(1, 2), adv, mask, clip_low=0.2)
    assert_close((loss, stats["clipfrac"]), (T(-0.2), T(1.0)))
    # clip-higher 0.28: 1.25 stays inside (0.8, 1.28) -> -1.25; the low side still clips -> (-1.25 + 0.8) / 2
    loss, stats = clipped_policy_loss(logp, torch.zeros(1, 2), adv, mask, clip_low=0.2, clip_high=0.28)
    assert_close((loss, stats["clipfrac"]), (T(-0.225), T(0.5)))
    # weights 2, 0.5 on the clip-higher per-token losses: (-2.5 + 0.4) / 2
    loss, _ = clipped_policy_loss(logp, torch.zeros(1, 2), adv, mask, 0.2, 0.28, is_weights=T([[2.0, 0.5]]))
    assert_close(loss, T(-1.05))


def test_clipped_policy_loss_passes_the_aggregation_through():
    old_logp = torch.zeros(1, 5)
    loss, _ = clipped_policy_loss(RATIOS.log(), old_logp, ADVANTAGES, POLICY_MASK, agg="seq_sum_norm", norm_const=2)
    assert_close(loss, T(0.3))  # the row's sum 0.6 (first test) / 2


def test_clipped_value_loss():
    values, old_values = T([[1.0, 0.625, 0.0, NAN]]), T([[0.5, 0.5, 0.5, NAN]])
    returns, mask = T([[1.0, 1.0, 1.0, NAN]]), T([[1, 1, 1, 0]])
    loss, stats = clipped_value_loss(values, old_values, returns, mask, clip=0.25)
    # v=1: clipped to 0.75 -> max(0, 0.0625) = 0.0625, clipped term active
    # v=0.625: inside the range -> 0.140625 either way; v=0: clipped to 0.25 -> max(1, 0.5625) = 1
    assert_close(loss, T(0.5 * (0.0625 + 0.140625 + 1.0) / 3))
    assert_close(stats["vf_clipfrac"], T(1 / 3))


def test_kl_loss():
    logp, ref_logp = torch.cat([LOGP, T([[NAN]])], 1), torch.cat([REF_LOGP, T([[NAN]])], 1)
    # k3 per token (see test_kl_estimate_each_kind): 0.10653, 0.71828, 0 -> mean over 3
    expected = (math.exp(-0.5) - 0.5 + math.exp(1) - 2) / 3
    assert_close(kl_loss(logp, ref_logp, T([[1, 1, 1, 0]])), T(expected))
    assert_close(kl_loss(logp, ref_logp, T([[1, 1, 1, 0]]), kind="k1"), T(-0.5 / 3))
