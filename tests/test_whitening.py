"""`rl.whiten_advantages`: true | false | auto (the default), on a batch written out by hand.

auto whitens as each estimator is published: GAE's advantages over the batch (PPO); the group estimators not at
all (GRPO divides by its group's std, Dr. GRPO and RLOO use the raw deviation from the group); REINFORCE++ is
whitened over the batch inside its estimator, so not again. Batch whitening on top of a group estimator is what
`true` still gives: a group whose rewards all agree then gets a non-zero advantage when the batch's responses
differ in length."""

from __future__ import annotations

import pytest
import torch

from reftune import algos
from reftune.config import RLConfig, RLJob, load_config
from reftune.errors import ConfigError
from reftune.rl.batch import ScoredBatch
from reftune.rl.update import advantages, whitens_over_batch

# rows 0-1 answer question 0 (right, wrong), rows 2-3 question 1 (both 0.1: a group that agrees); 3, 2, 1, 4 tokens
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
SCORES = torch.tensor([1.0, 0.0, 0.1, 0.1])


def batch() -> ScoredBatch:
    zeros = torch.zeros(4, 4)
    return ScoredBatch(ids=torch.zeros(4, 6, dtype=torch.long), attn=torch.ones(4, 6), mask=MASK, prompt_width=2,
                       group_ids=torch.tensor([0, 0, 1, 1]), old_logp=zeros, old_values=zeros, ref_logp=zeros,
                       sampler_logp=zeros)


def test_auto_whitens_gae_only():
    assert whitens_over_batch(RLConfig())  # the default: auto, with gae
    assert RLConfig().whiten_advantages == "auto"
    for advantage in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        assert not whitens_over_batch(RLConfig(advantage=advantage))
        assert whitens_over_batch(RLConfig(advantage=advantage, whiten_advantages=True))
    assert not whitens_over_batch(RLConfig(advantage="gae", whiten_advantages=False))


def test_under_auto_a_grpo_group_that_agrees_gets_zero_but_batch_whitening_moves_it():
    auto = advantages(batch(), SCORES, RLConfig(advantage="grpo", kl_in="loss"))[0]
    z = 0.5 / (0.5 ** 0.5 + 1e-6)  # group 0: scores 1, 0 -> deviation +-0.5, unbiased std sqrt(0.5)
    assert torch.allclose(auto[0], z * MASK[0]) and torch.allclose(auto[1], -z * MASK[1])
    assert (auto[2:] == 0).all()
    whitened = advantages(batch(), SCORES, RLConfig(advantage="grpo", kl_in="loss", whiten_advantages=True))[0]
    # 10 tokens: 3 of +z, 2 of -z, 5 of 0 -> mean z/10, unbiased variance 4.9 z^2 / 9; the agreeing group's tokens
    # become (0 - z/10) / sqrt(4.9 z^2 / 9) = -0.3 / sqrt(4.9), for no difference between its two answers
    assert torch.allclose(whitened[2:][MASK[2:].bool()], torch.tensor(-0.3 / 4.9 ** 0.5), atol=1e-5)


@pytest.mark.parametrize("advantage", ["dr_grpo", "rloo"])
def test_under_auto_the_other_group_estimators_are_their_raw_deviations(advantage):
    adv = advantages(batch(), SCORES, RLConfig(advantage=advantage, kl_in="none"))[0]
    half = 0.5 if advantage == "dr_grpo" else 1.0  # RLOO: n / (n - 1) times the deviation from the group mean
    assert torch.allclose(adv[0], half * MASK[0]) and torch.allclose(adv[1], -half * MASK[1])
    assert (adv[2:] == 0).all()


def test_reinforce_pp_is_whitened_once_inside_its_estimator():
    adv = advantages(batch(), SCORES, RLConfig(advantage="reinforce_pp", kl_in="none"))[0]
    m = MASK.bool()
    assert abs(adv[m].mean().item()) < 1e-6 and adv[m].std().item() == pytest.approx(1.0, abs=1e-4)
    expected = algos.masked_whiten(SCORES[:, None] * MASK, MASK, eps=1e-6)  # return-to-go = the score, gamma 1
    assert torch.allclose(adv, expected, atol=1e-6)


def test_gae_under_auto_is_whitened_as_before():
    cfg = RLConfig(advantage="gae", lam=1.0, kl_in="none")
    adv = advantages(batch(), SCORES, cfg)[0]
    same = advantages(batch(), SCORES, RLConfig(advantage="gae", lam=1.0, kl_in="none", whiten_advantages=True))[0]
    assert torch.equal(adv, same)
    assert abs(adv[MASK.bool()].mean().item()) < 1e-6


def test_the_field_takes_auto_true_or_false_and_nothing_else():
    assert load_config(RLJob).rl.whiten_advantages == "auto"
    assert load_config(RLJob, None, ["rl.whiten_advantages=true"]).rl.whiten_advantages is True
    assert load_config(RLJob, None, ["rl.whiten_advantages=false"]).rl.whiten_advantages is False
    with pytest.raises(ConfigError, match="rl.whiten_advantages"):
        load_config(RLJob, None, ["rl.whiten_advantages=sometimes"])
