"""Data parallelism: two processes on one global batch compute what one process computes.

`torchrun --standalone --nproc_per_node 2 -m reftune.cli ...` starts two CPU processes (gloo). Each process takes
half of every batch (SFT rows; RL questions, whole groups), the losses are normalised by the whole batch's token
count, DDP averages the gradients, batch-wide statistics (whitening, metrics) are summed over both, and only the
main process writes. So a 2-process run must give the losses, metrics and final weights of the 1-process run
with the same settings, up to float rounding (sums are taken in another order, and rows are padded in other
batches): here within rel 1e-4 or 1e-5 absolute for the metrics (a sequence KL of ~5e-3 sums ~30 tokens' rounding)
and 1e-5 absolute for every weight (measured: about 1e-7 for SFT and GRPO, 5e-7 for PPO with GAE, 3e-6 for GAE
with one minibatch). Metrics that *are* float noise (the sampler/trainer log-prob mismatch, ~1e-7) are compared in
absolute terms only; `vf_clipfrac` counts ties of the value clip (values == old values up to rounding in
the first minibatch), which rounding breaks either way, so it is not compared.

Sampling does not depend on the sharding: each question of a step samples from its own stream, seeded from
(seed, step, position in the batch) (`rollout.sample_seed`), tested directly below.

The same equalities hold for the features that decide per batch (R^3 start states, online self-training's NLL
rows, DAPO's refills), for FSDP2 (`ACCELERATE_USE_FSDP=true`: weights, gradients and optimizer state sharded) and
for DeepSpeed ZeRO-2 (`ACCELERATE_USE_DEEPSPEED=true`), each launched as a user would, with the environment that
`accelerate launch --config_file examples/accelerate/...` sets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reftune.algos import AGGREGATION_MODES, aggregate_loss, aggregation_count, masked_whiten
from reftune.cli import main
from reftune.model.modeling import load_pretrained
from reftune.model.sampler import HFSampler
from reftune.rl.update import minibatch_rows
from test_golden import DATA, ESTIMATORS, MODEL, RL, cli, records

ROOT = Path(__file__).resolve().parents[1]
SFT = ["sft.epochs=2", "sft.batch_size=4", "sft.lr=3e-3", "sft.eval_every_epochs=1", "eval.batch_size=8",
       "eval.max_new_tokens=40"]
NOISE = {"logp_mismatch_mean", "logp_mismatch_max", "seq_ratio_mean", "seq_ratio_max"}
NOT_COMPARED = {"vf_clipfrac"}


FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}  # what `accelerate launch --config_file fsdp2.yaml` sets


def torchrun(*args: str, env: dict[str, str] | None = None) -> str:
    """`reftune` in two processes, as a user launches it on CPU (tests/ on the path for the golden reward);
    returns its stdout and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "reftune.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def assert_same_run(one: Path, two: Path) -> None:
    """Same records (one line per step and kind in both), same metrics, same final weights."""
    a, b = records(one), records(two)
    assert [(r["stage"], r["step"], sorted(r)) for r in a] == [(r["stage"], r["step"], sorted(r)) for r in b]
    for x, y in zip(a, b):
        for k, v in x.items():
            if k in NOT_COMPARED or not isinstance(v, float):
                assert k in NOT_COMPARED or y[k] == v, (x["step"], k, v, y[k])
            elif k in NOISE:
                assert y[k] == pytest.approx(v, abs=1e-5), (x["step"], k, v, y[k])
            else:
                assert y[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (x["step"], k, v, y[k])
    for name in ("model.safetensors", "value_head.safetensors"):
        if (one / "last" / name).is_file():
            wa, wb = load_file(one / "last" / name), load_file(two / "last" / name)
            assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5, name


@pytest.fixture(scope="module")
def warmup(tmp_path_factory) -> Path:
    """A 2-epoch SFT of the golden tests' tiny model in one process: the reference run and every RL run's start."""
    out = tmp_path_factory.mktemp("dp") / "sft1"
    cli("sft", f"out_dir={out}", *DATA, *MODEL, *SFT)
    return out


def rl_args(out: Path, warmup: Path, estimator: str, steps: int) -> list[str]:
    return ["rl", "--model", str(warmup / "last"), f"out_dir={out}", *DATA, *MODEL, *RL, *ESTIMATORS[estimator],
            f"rl.steps={steps}"]


@pytest.mark.slow
def test_sft_in_two_processes_equals_one(warmup, tmp_path):
    torchrun("sft", f"out_dir={tmp_path}", *DATA, *MODEL, *SFT)
    assert_same_run(warmup, tmp_path)
    losses = [r for r in records(tmp_path) if "loss" in r]
    assert [r["step"] for r in losses] == [8]  # 2 epochs of 16 rows / batch 4: logged every 10 steps and at the end
    assert [r["epoch"] for r in records(tmp_path) if "val_accuracy" in r] == [1, 2]
    assert (tmp_path / "best" / "model.safetensors").is_file() and (tmp_path / "results.json").is_file()


@pytest.mark.slow
def test_ppo_in_two_processes_equals_one(warmup, tmp_path):
    cli(*rl_args(tmp_path / "one", warmup, "gae", 2))
    torchrun(*rl_args(tmp_path / "two", warmup, "gae", 2))
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert [r["step"] for r in records(tmp_path / "two") if "reward" in r] == [1, 2]


@pytest.mark.slow
def test_grpo_in_two_processes_resumed_equals_one_uninterrupted(warmup, tmp_path):
    cli(*rl_args(tmp_path / "one", warmup, "grpo", 2))
    two = tmp_path / "two"
    torchrun(*rl_args(two, warmup, "grpo", 1))
    torchrun(*rl_args(two, warmup, "grpo", 2), "--resume")
    assert_same_run(tmp_path / "one", two)
    assert [r["step"] for r in records(two) if "reward" in r] == [1, 2]


@pytest.mark.slow
def test_online_self_training_in_two_processes_equals_one(warmup, tmp_path):
    """Each process's NLL rows (its correct samples, then its gold CoTs) take their places in the one-process
    order, so the shuffled minibatches, and the steps, are the one-process ones."""
    cli(*rl_args(tmp_path / "one", warmup, "online_self_training", 2))
    torchrun(*rl_args(tmp_path / "two", warmup, "online_self_training", 2))
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert [r["self_train_gold"] for r in records(tmp_path / "two") if "self_train_gold" in r] == [4, 4]


@pytest.mark.slow
@pytest.mark.parametrize("rows", [[], ["rl.sft_rows=3"]], ids=["minibatch", "pool"])
def test_ppo_with_the_gold_cots_nll_in_two_processes_equals_one(warmup, tmp_path, rows):
    """rl.sft_coef: each epoch deals all processes' questions into the minibatches in one order (or, rl.sft_rows,
    draws the minibatch's gold CoTs from all annotated questions in one order), each process adds its gold CoTs'
    share of the minibatch's token-mean NLL, so the steps are the one-process ones."""
    cli(*rl_args(tmp_path / "one", warmup, "gae", 2), "rl.sft_coef=0.5", *rows)
    torchrun(*rl_args(tmp_path / "two", warmup, "gae", 2), "rl.sft_coef=0.5", *rows)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert all(r["sft_loss"] > 0 for r in records(tmp_path / "two") if "reward" in r)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["staged", "adaptive"])
def test_r3_curriculum_in_two_processes_equals_one(warmup, tmp_path, schedule):
    """R^3: start states drawn for the whole batch (each process keeps its shard's), and every process's schedule
    updated from all processes' samples, so the stages / per-question ranges move as in one process."""
    r3 = ["curriculum.name=r3", f"curriculum.schedule={schedule}", "curriculum.stages=2",
          "curriculum.steps_per_stage=1", "curriculum.adaptive_threshold=0.5"]
    cli(*rl_args(tmp_path / "one", warmup, "grpo", 3), *r3)
    torchrun(*rl_args(tmp_path / "two", warmup, "grpo", 3), *r3)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert any(k.startswith("acc_k/") for r in records(tmp_path / "two") for k in r)
    a, b = (torch.load(d / "last" / "extras.pt", weights_only=True)["curriculum"] for d in (tmp_path / "one",
                                                                                            tmp_path / "two"))
    assert a == b


def digit_early(prompts, completions, examples, **kw) -> list[float]:
    """A 0/1 reward on which some groups agree and some do not: whether a digit comes in the first 6 characters."""
    return [float(any(c.isdigit() for c in text[:6])) for text in completions]


@pytest.mark.slow
def test_dynamic_sampling_in_two_processes_equals_one(warmup, tmp_path):
    """DAPO's refills: the processes count the kept groups together, refill with the same questions (sharded),
    then exchange the kept groups and each trains on its share of the batch one process keeps."""
    dapo = ["rl.dynamic_sampling=true", "rl.max_refill_rounds=2", "rl.rewards=test_distributed:digit_early:1"]
    cli(*rl_args(tmp_path / "one", warmup, "grpo", 3), *dapo)
    torchrun(*rl_args(tmp_path / "two", warmup, "grpo", 3), *dapo)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    fractions = [r["kept_fraction"] for r in records(tmp_path / "two") if "kept_fraction" in r]
    assert len(fractions) == 3 and min(fractions) < 1  # groups were dropped and refilled


@pytest.mark.slow
def test_sft_sharded_with_fsdp_in_two_processes_equals_one(warmup, tmp_path):
    """FSDP2: each process holds half of every sharded tensor, yet losses, weights and the saved optimizer state
    (gathered whole, in the one-process format) are the one-process run's."""
    log = torchrun("sft", f"out_dir={tmp_path}", *DATA, *MODEL, *SFT, env=FSDP)
    share = float(re.search(r"\[fsdp\] sharded .* \(([\d.]+) %\)", log).group(1))
    assert 45 < share < 55  # half of every tensor (dim 0 split in two; odd sizes round up on process 0)
    assert_same_run(warmup, tmp_path)
    one = torch.load(warmup / "last" / "optimizer.pt", weights_only=True)
    two = torch.load(tmp_path / "last" / "optimizer.pt", weights_only=True)
    assert one["param_groups"] == two["param_groups"] and one["state"].keys() == two["state"].keys()
    for i, s in one["state"].items():
        assert type(two["state"][i]["exp_avg"]) is torch.Tensor  # whole tensors, not shards (DTensor)
        assert two["state"][i]["exp_avg"].shape == s["exp_avg"].shape
        assert (two["state"][i]["exp_avg"] - s["exp_avg"]).abs().max() < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("estimator, resume_sharded", [("gae", False), ("grpo", True)])
def test_rl_sharded_with_fsdp_resumed_equals_one_uninterrupted(warmup, tmp_path, estimator, resume_sharded):
    """RL under FSDP2 (sampling, scoring and validation from the gathered weights, the update sharded), stopped
    after one iteration and resumed sharded again (each process takes its shards of the saved whole state) or in
    a single unsharded process (the checkpoint is the one-process format)."""
    cli(*rl_args(tmp_path / "one", warmup, estimator, 2))
    two = tmp_path / "two"
    assert "[fsdp] sharded" in torchrun(*rl_args(two, warmup, estimator, 1), env=FSDP)
    first = records(two)
    if resume_sharded:
        torchrun(*rl_args(two, warmup, estimator, 2), "--resume", env=FSDP)
    else:
        cli(*rl_args(two, warmup, estimator, 2), "--resume")
    assert_same_run(tmp_path / "one", two)
    assert records(two)[:len(first)] == first


ZERO2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ROOT / "examples" / "deepspeed" /
                                                                               "zero2.json")}


ZERO3 = {**ZERO2, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ROOT / "examples" / "deepspeed" / "zero3.json")}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_sft_with_deepspeed_zero_in_two_processes_equals_one(warmup, tmp_path, stage):
    """ZeRO-2: the engine reduce-scatters each step's gradients (two micro-batches, the boundary at the second)
    into each process's partition and steps AdamW there; ZeRO-3 also partitions the weights (validation and saving
    from gathered ones). The result is the one-process run's."""
    pytest.importorskip("deepspeed")
    log = torchrun("sft", f"out_dir={tmp_path}", *DATA, *MODEL, *SFT, "sft.gradient_accumulation_steps=2",
                   env=ZERO2 if stage == 2 else ZERO3)
    assert f"[deepspeed] ZeRO stage {stage}" in log
    assert_same_run(warmup, tmp_path)
    parts = torch.load(tmp_path / "last" / "zero_optimizer.pt", weights_only=False)
    assert len(parts) == 2 and not (tmp_path / "last" / "optimizer.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("estimator, stage", [("grpo", 2), ("grpo", 3), ("gae", 3)])
def test_rl_with_deepspeed_zero_resumed_equals_one_uninterrupted(warmup, tmp_path, capsys, estimator, stage):
    """ZeRO-3: sampling, scoring and validation inside the gathered weights with DeepSpeed's hooks off (processes
    generate to different lengths), the update partitioned; with GAE the value head is partitioned too."""
    pytest.importorskip("deepspeed")
    env = ZERO2 if stage == 2 else ZERO3
    cli(*rl_args(tmp_path / "one", warmup, estimator, 2))
    two = tmp_path / "two"
    torchrun(*rl_args(two, warmup, estimator, 1), env=env)
    torchrun(*rl_args(two, warmup, estimator, 2), "--resume", env=env)
    assert_same_run(tmp_path / "one", two)
    assert main([*rl_args(two, warmup, estimator, 3), "--resume"]) == 2  # its optimizer state is DeepSpeed's
    assert "saved with DeepSpeed ZeRO; resume it the same way" in capsys.readouterr().err


def test_a_prompts_samples_do_not_depend_on_the_other_prompts_of_the_call(warmup):
    """What lets N processes sample what one samples: a prompt's samples come from its own seed alone."""
    lm, tokenizer = load_pretrained(str(warmup / "last"))
    sampler = HFSampler(lm, tokenizer, batch_size=64)
    prompts = [tokenizer.encode("Tom has 3 apples"), tokenizer.encode("A shop sells 12 pens and 7 more")]
    both = sampler.generate(prompts, 3, 1.0, 1.0, 12, seeds=[11, 22])
    torch.manual_seed(123)  # the global RNG plays no part
    alone = sampler.generate(prompts[1:], 3, 1.0, 1.0, 12, seeds=[22])
    assert both.response_ids[3:] == alone.response_ids
    assert sum(both.logprobs[3:], []) == pytest.approx(sum(alone.logprobs, []), abs=1e-5)
    other = sampler.generate(prompts[1:], 3, 1.0, 1.0, 12, seeds=[23])
    assert other.response_ids != alone.response_ids


def test_whitening_over_two_equal_shards_is_whitening_over_their_concatenation():
    """`all_sum` stands for the all-reduce: two processes holding the same shard sum to twice its sums."""
    x, mask = torch.randn(3, 5), torch.rand(3, 5) > 0.3
    sharded = masked_whiten(x, mask, all_sum=lambda t: 2 * t)
    whole = masked_whiten(torch.cat([x, x]), torch.cat([mask, mask]))
    assert torch.allclose(sharded, whole[:3], atol=1e-6)
    assert not torch.allclose(sharded, masked_whiten(x, mask), atol=1e-3)  # Bessel's n - 1 over 2n, not n


def test_each_process_takes_its_rows_of_a_global_minibatch_in_order():
    perm = torch.tensor([5, 0, 7, 2, 3, 6, 1, 4])
    assert minibatch_rows(perm[:4], 0, 4).tolist() == [0, 2]  # process 0 holds global rows 0-3
    assert minibatch_rows(perm[:4], 4, 4).tolist() == [1, 3]  # process 1 holds 4-7: rows 5, 7 -> local 1, 3
    assert minibatch_rows(torch.tensor([4, 5]), 0, 4).tolist() == []  # none here: a zero-weighted stand-in row


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_shards_losses_times_their_counts_add_up_to_the_whole_batchs(mode):
    """What `data_parallel_scale` relies on: loss(shard) * count(shard) summed over shards = loss(all) * count(all)."""
    loss, mask = torch.rand(5, 4), torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    assert aggregation_count(mask, mode) == (10 if mode == "token_mean" else 5)
    whole = aggregate_loss(loss, mask, mode, 4) * aggregation_count(mask, mode)
    shards = sum(aggregate_loss(loss[r], mask[r], mode, 4) * aggregation_count(mask[r], mode)
                 for r in (slice(0, 2), slice(2, 5)))
    assert torch.allclose(shards, whole)
