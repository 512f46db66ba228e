"""The RL loop's family of methods, one config away: GRPO with the KL in the loss, RLOO, REINFORCE++, Dr. GRPO,
DAPO's dynamic sampling and overlong penalty, truncated importance sampling, a low-precision sampler, and the
R1 rewards. Each is a 1-step smoke run of a tiny random model (hidden size 32) whose metrics must carry the
option's keys, all finite; the pure pieces they add are checked by hand first.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from reftune import algos, commands
from reftune.train.accel import get_accelerator
from reftune.model.checkpoint import save_checkpoint
from reftune.config import RLJob, load_config
from reftune.config.schema import RolloutConfig
from reftune.errors import ConfigError
from reftune.train.logger import MetricsLogger, read_metrics
from reftune.model.modeling import PolicyWithValue, build_tiny_model, train_tokenizer
from reftune.rewards.functions import REWARD_FUNCTIONS
from reftune.rl.batch import Rollout, informative_groups
from reftune.rl.loop import train_rl
from reftune.rl.update import self_training_rows
from reftune.train.context import RunContext
from reftune.model.sampler import Samples
from reftune.data.synthetic import generate_splits

COMMON = {"reward", "accuracy", "answered", "kl", "entropy", "clipfrac", "approx_kl", "policy_loss",
          "response_length", "logp_mismatch_mean", "logp_mismatch_max", "seq_ratio_mean", "seq_ratio_max"}
TINY = {"steps": 1, "prompts_per_step": 4, "num_generations": 2, "minibatches": 2, "ppo_epochs": 1,
        "max_new_tokens": 8, "eval_every": 1, "save_every": 1}


@pytest.fixture(scope="module")
def tiny():
    splits = generate_splits(0, {"train": 16, "val": 4})
    tok = train_tokenizer([e.question + "\n" + e.cot for e in splits["train"]], 280)
    return splits, tok


def rl_records(tiny, out, template: str = "reft", rollout=None, **options) -> list[dict]:
    """The RL records of a tiny run with TINY + `options` as rl.* overrides (validated like the CLI's);
    rollout: a RolloutConfig (None: the built-in hf sampler's defaults)."""
    splits, tok = tiny
    cfg = load_config(RLJob, None, [f"rl.{k}={v}" for k, v in {**TINY, **options}.items()]).rl
    lm = build_tiny_model(tok, 32, 1, 2, 64, 320, seed=0)
    ref = copy.deepcopy(lm).eval().requires_grad_(False) if cfg.kl_in != "none" else None
    torch.manual_seed(0)
    train_rl(PolicyWithValue(lm), ref, tok, splits["train"], splits["val"], cfg,
             RunContext(out, MetricsLogger(out, tensorboard=False), stage="rl", template=template, eval_batch_size=8,
                        rollout=rollout))
    records = [r for r in read_metrics(out) if "reward" in r]
    assert [r["step"] for r in records] == list(range(1, cfg.steps + 1))
    return records


def assert_keys(records, keys, absent=()):
    for r in records:
        assert keys <= set(r), keys - set(r)
        assert all(math.isfinite(r[k]) for k in keys), {k: r[k] for k in keys}
        assert not set(absent) & set(r), set(absent) & set(r)


# --- pure pieces -------------------------------------------------------------------------------------

def test_informative_groups_are_those_whose_rewards_differ():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.1, 0.1, 0.0, 0.1])
    assert informative_groups(scores, 2) == [1, 3]
    assert informative_groups(scores, 4) == [0, 1]
    assert informative_groups(torch.zeros(6), 3) == []


def test_seq_sum_norm_divides_by_the_constant_it_is_given():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    ref = torch.zeros_like(logp)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # k1 per token = logp - ref; row sums -3 and -1; / 8 each; mean over the 2 rows = -0.25
    assert algos.kl_loss(logp, ref, mask, "k1", "seq_sum_norm", norm_const=8).item() == pytest.approx(-0.25)
    assert algos.kl_loss(logp, ref, mask, "k1", "seq_sum_norm").item() == pytest.approx((-3 / 3 + -1 / 3) / 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, fp16 training is supported")
def test_fp16_training_on_cpu_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match="fp16 training needs a GPU"):
        get_accelerator("fp16")


@pytest.mark.parametrize("override, message", [
    ("rl.overlong_penalty=0", "rl.overlong_penalty"), ("rl.overlong_penalty=200", "rl.overlong_penalty"),
    ("rl.tis_cap=0", "rl.tis_cap"), ("rl.rollout_precision=fp8", "rl.rollout_precision"),
    ("rl.max_refill_rounds=-1", "rl.max_refill_rounds"), ("rl.sft_coef=-0.5", "rl.sft_coef"),
    ("rl.sft_rows=-1", "rl.sft_rows"),
])
def test_option_ranges_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLJob, None, [override])


def test_options_that_need_other_settings_say_which():
    with pytest.raises(ConfigError, match="rl.dynamic_sampling: needs rl.num_generations"):
        load_config(RLJob, None, ["rl.dynamic_sampling=true", "rl.num_generations=1", "rl.minibatches=1"])
    with pytest.raises(ConfigError, match="rl.tis_cap: needs rl.temperature=1"):
        load_config(RLJob, None, ["rl.tis_cap=2", "rl.temperature=0.7"])
    with pytest.raises(ConfigError, match="rl.sft_coef: adds an NLL term to PPO"):
        load_config(RLJob, None, ["rl.sft_coef=1", "rl.objective=online_self_training"])
    with pytest.raises(ConfigError, match="rl.sft_rows: .* needs rl.sft_coef > 0"):
        load_config(RLJob, None, ["rl.sft_rows=8"])


# --- smoke runs --------------------------------------------------------------------------------------

def test_grpo_with_the_kl_in_the_loss(tiny, tmp_path):
    records = rl_records(tiny, tmp_path, advantage="grpo", kl_in="loss", kl_kind="k3", whiten_advantages="false")
    assert_keys(records, COMMON | {"kl_loss", "reward/reft"}, absent={"value_loss", "explained_variance"})


@pytest.mark.parametrize("advantage", ["rloo", "reinforce_pp"])
def test_critic_free_estimators_without_a_reference(tiny, tmp_path, advantage):
    records = rl_records(tiny, tmp_path, advantage=advantage, kl_in="none")
    assert_keys(records, COMMON, absent={"kl_loss", "value_loss"})
    assert all(r["kl"] == 0.0 for r in records)


def test_dr_grpo_with_seq_sum_norm(tiny, tmp_path):
    records = rl_records(tiny, tmp_path, advantage="dr_grpo", loss_agg="seq_sum_norm", kl_in="loss")
    assert_keys(records, COMMON | {"kl_loss"})


def test_dynamic_sampling_keeps_the_groups_whose_rewards_differ(tiny, tmp_path, monkeypatch):
    # A random model answers nothing. Score the parity of the text on odd-numbered questions (their groups
    # mostly disagree) and 0 on the others (their groups always agree): about half of each round is dropped.
    def parity(prompts, completions, examples, **kw):
        return [float(len(c) % 2) if int(e.id.split("-")[1]) % 2 else 0.0 for c, e in zip(completions, examples)]

    monkeypatch.setitem(REWARD_FUNCTIONS, "parity", parity)
    records = rl_records(tiny, tmp_path, advantage="grpo", rewards="parity", num_generations=4,
                         dynamic_sampling="true", max_refill_rounds=3)
    assert_keys(records, COMMON | {"kept_fraction", "reward/parity"})
    assert all(0 < r["kept_fraction"] < 1 for r in records)
    assert all(0 < r["reward/parity"] < 1 for r in records)  # every kept group has both a 0 and a 1


def test_scored_rollouts_select_and_concatenate_whole_groups():
    def batch(idx, scores):
        rows = len(scores)
        samples = Samples([[i] for i in range(rows)], [[10 + i] for i in range(rows)], [[-1.0]] * rows,
                          [True] * rows, [f"t{i}" for i in range(rows)])
        return Rollout(idx, None, samples, [None] * rows, torch.tensor(scores), {"f": list(scores)},
                             [None] * rows)

    a, b = batch([7, 8], [0.0, 1.0, 1.0, 1.0]), batch([9], [0.0, 0.5])
    kept = (a.groups([0], 2) + b).groups([1, 0], 2)  # question 9 first, then question 7
    assert kept.idx == [9, 7] and kept.scores.tolist() == [0.0, 0.5, 0.0, 1.0]
    assert kept.samples.texts == ["t0", "t1", "t0", "t1"] and kept.parts == {"f": [0.0, 0.5, 0.0, 1.0]}


def test_dynamic_sampling_when_no_group_ever_differs_trains_on_the_first_batch(tiny, tmp_path):
    records = rl_records(tiny, tmp_path, advantage="grpo", rewards="accuracy", dynamic_sampling="true",
                         max_refill_rounds=1)
    assert_keys(records, COMMON | {"kept_fraction"})
    assert [r["kept_fraction"] for r in records] == [0.0]


def test_overlong_penalty(tiny, tmp_path):
    records = rl_records(tiny, tmp_path, overlong_penalty=4)
    assert_keys(records, COMMON | {"reward/overlong", "value_loss"})
    assert all(-1 <= r["reward/overlong"] <= 0 for r in records)


def test_truncated_importance_sampling(tiny, tmp_path):
    records = rl_records(tiny, tmp_path, advantage="grpo", tis_cap=1.5)
    assert_keys(records, COMMON | {"tis_weight_mean"})
    assert all(0 < r["tis_weight_mean"] <= 1.5 for r in records)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_low_precision_sampler_shows_in_the_mismatch(tiny, tmp_path, precision):
    records = rl_records(tiny, tmp_path, advantage="grpo", rollout_precision=precision, tis_cap=2)
    assert_keys(records, COMMON | {"tis_weight_mean"})
    assert all(r["logp_mismatch_mean"] > 0 for r in records)
    head = rl_records(tiny, tmp_path / "low_precision_head", advantage="grpo", rollout_precision=precision, tis_cap=2,
                      rollout=RolloutConfig(fp32_lm_head=False))
    # rollout.fp32_lm_head (on by default) under this fp32 trainer: the same first rollout with the head in the
    # sampler's precision is further off (measured 4.7x for bf16, 5.8x for fp16)
    assert head[0]["logp_mismatch_mean"] > 2 * records[0]["logp_mismatch_mean"]


def test_the_r1_rewards_on_the_r1_template(tiny, tmp_path):
    records = rl_records(tiny, tmp_path, "r1", advantage="grpo", kl_in="loss", kl_kind="k3",
                         rewards="r1_format_strict:0.2,r1_format_soft:0.5,r1_accuracy:1,language_consistency:0.1")
    keys = {f"reward/{n}" for n in ("r1_format_strict", "r1_format_soft", "r1_accuracy")}
    assert_keys(records, COMMON | keys)


def test_snapshots_and_rollout_token_counts(tiny, tmp_path):
    records = rl_records(tiny, tmp_path, steps=2, snapshot_every=1)
    for r in records:  # 4 questions x 2 samples, each response 1..max_new_tokens tokens
        assert 8 <= r["rollout_tokens"] <= 8 * 8
        assert r["rollout_tokens"] == pytest.approx(8 * r["response_length"])
    assert (tmp_path / "step-1" / "config.json").is_file() and (tmp_path / "step-2" / "config.json").is_file()


def test_snapshot_every_must_not_be_negative():
    with pytest.raises(ConfigError, match="rl.snapshot_every"):
        load_config(RLJob, None, ["rl.snapshot_every=-1"])
    with pytest.raises(ConfigError, match="rl.eval_every"):
        load_config(RLJob, None, ["rl.eval_every=0"])


# --- a trained reward model as the reward ---------------------------------------------------------------

def test_a_verifier_checkpoint_as_a_reward_beside_the_rule_based_one(tiny, tmp_path):
    _, tok = tiny
    verifier = PolicyWithValue(build_tiny_model(tok, 16, 1, 2, 32, 320, seed=1))
    torch.nn.init.normal_(verifier.value_head.weight)
    path = save_checkpoint(tmp_path / "verifier", verifier.lm, tok, value_head=verifier.value_head,
                           reward_model={"kind": "verifier", "template": "reft", "max_length": 320})
    records = rl_records(tiny, tmp_path / "rl", rewards="reft:1,reward_model:0.5", reward_model=str(path))
    assert_keys(records, COMMON | {"reward/reft", "reward/reward_model"})
    assert all(0.0 <= r["reward/reward_model"] <= 1.0 for r in records)
    assert all(r["reward"] == pytest.approx(r["reward/reft"] + 0.5 * r["reward/reward_model"], abs=1e-5)
               for r in records)


# --- online self-training (ReFT's baseline) ---------------------------------------------------------------

def test_self_training_rows_are_the_correct_finished_samples_and_the_gold_cots():
    # two questions, three samples each: rows 0-2 of question A, rows 3-5 of question B (answer-only)
    prompt_ids = [[1]] * 3 + [[2]] * 3
    response_ids = [[10], [11], [12], [20], [21], [22]]
    correct = [True, False, True, True, True, False]
    finished = [True, True, False, True, True, True]  # row 2 is correct but was cut at max_new_tokens
    rows = self_training_rows(prompt_ids, response_ids, correct, finished, [[1], [2]], [[99, 0], None])
    assert rows == [([1], [10]), ([2], [20]), ([2], [21]), ([1], [99, 0])]
    assert self_training_rows([[1]], [[10]], [False], [True], [[1]], [None]) == []


def test_online_self_training_through_reftune_rl(tiny, tmp_path, monkeypatch):
    """`reftune rl rl.objective=online_self_training`, 2 steps: loads no reference model, logs the rows it
    trained on (a random model gets nothing right: the 4 questions' gold CoTs only) and no PPO quantities."""
    _, tok = tiny
    start = save_checkpoint(tmp_path / "start", build_tiny_model(tok, 32, 1, 2, 64, 320, seed=0), tok)
    loads = []
    real_load = commands.load_pretrained
    for module in (commands, commands.common):  # the command and the prologue's `load_policy`
        monkeypatch.setattr(module, "load_pretrained", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    cfg = load_config(RLJob, None, [
        f"out_dir={tmp_path / 'rl'}", f"model.name_or_path={start}", "data.n_train=16", "data.n_val=4",
        "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0", "eval.max_new_tokens=8",
        "rl.objective=online_self_training", *[f"rl.{k}={v}" for k, v in {**TINY, "steps": 2}.items()]])
    info = commands.rl(cfg)
    assert len(loads) == 1 and info["best_step"] in (1, 2)         # the policy only: no reference model
    records = [r for r in read_metrics(tmp_path / "rl") if "reward" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert_keys(records, {"reward", "accuracy", "nll_loss", "self_train_samples", "self_train_gold"},
                absent={"policy_loss", "value_loss", "kl_loss", "clipfrac", "explained_variance"})
    for r in records:
        assert (r["self_train_samples"], r["self_train_gold"], r["kl"]) == (0, 4, 0)


def test_bf16_on_a_cpu_without_bf16_matmuls_warns(tmp_path, monkeypatch):
    """The flag test reads /proc/cpuinfo's flags; a CPU without avx512_bf16/amx_bf16 gets a warning naming the
    field (bf16 matmuls are emulated there, ~10x slower than fp32 at the tiny model's sizes); one with them, none."""
    from reftune.train import accel
    (tmp_path / "avx2").write_text("processor : 0\nflags\t\t: fpu sse2 avx2 fma\n")
    (tmp_path / "amx").write_text("processor : 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert accel.cpu_has_bf16_matmul(str(tmp_path / "avx2")) is False
    assert accel.cpu_has_bf16_matmul(str(tmp_path / "amx")) is True
    assert accel.cpu_has_bf16_matmul(str(tmp_path / "missing")) is None
    monkeypatch.setattr(accel, "cpu_has_bf16_matmul", lambda: False)
    with pytest.warns(UserWarning, match="rl.rollout_precision=bf16 on a CPU without bf16 matrix"):
        accel.warn_if_bf16_is_emulated("rl.rollout_precision", "bf16", "cpu")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accel.warn_if_bf16_is_emulated("rl.rollout_precision", "fp32", "cpu")
        accel.warn_if_bf16_is_emulated("precision", "bf16", "cuda")
        monkeypatch.setattr(accel, "cpu_has_bf16_matmul", lambda: True)
        accel.warn_if_bf16_is_emulated("precision", "bf16", "cpu")
