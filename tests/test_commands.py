"""What every command does the same way (`reftune.commands.common.open_run`): seeding from `seed`, refusing bad
estimator names before any work, and leaving nothing behind when a start fails."""

from __future__ import annotations

import json

import pytest
import torch

from reftune.cli import main
from reftune.data.synthetic import generate_splits
from reftune.model.checkpoint import save_checkpoint
from reftune.model.modeling import build_tiny_model, train_tokenizer
from test_golden import DATA, RL, records


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    splits = generate_splits(0, {"train": 16})
    tok = train_tokenizer([e.question + "\n" + e.cot for e in splits["train"]], 280)
    return save_checkpoint(tmp_path_factory.mktemp("start") / "m", build_tiny_model(tok, 32, 1, 2, 64, 320, seed=0), tok)


def rl(start, out, *extra) -> int:
    return main(["rl", "--model", str(start), f"out_dir={out}", *DATA, *RL, "rl.steps=1", "rl.max_new_tokens=8",
                 "rl.rewards=reft", *extra])


@pytest.mark.slow
def test_two_runs_with_the_same_seed_agree_whatever_the_global_rng_held(start, tmp_path):
    torch.manual_seed(123)
    assert rl(start, tmp_path / "a") == 0
    torch.manual_seed(456)
    assert rl(start, tmp_path / "b") == 0
    assert records(tmp_path / "a") == records(tmp_path / "b")
    assert rl(start, tmp_path / "c", "seed=1") == 0
    assert records(tmp_path / "c") != records(tmp_path / "a")  # the seed matters


@pytest.mark.parametrize("field, value, names", [("advantage", "ppo", "gae, grpo"), ("kl_kind", "k9", "k1, k2, k3"),
                                                 ("loss_agg", "foo", "token_mean")])
def test_a_bad_estimator_name_is_refused_at_load_with_the_valid_names(start, tmp_path, capsys, field, value, names):
    assert rl(start, tmp_path / "r", f"rl.{field}={value}") == 2
    err = capsys.readouterr().err
    assert f"rl.{field}: '{value}'" in err and names in err
    assert not (tmp_path / "r").exists()  # refused before the run directory was made


def test_a_failed_start_leaves_no_run_directory_and_the_retry_runs(start, tmp_path, capsys):
    out = tmp_path / "r"
    assert rl(start, out, "rl.prompts_per_step=100", "rl.minibatches=1") == 2  # larger than the 16 questions
    assert "rl.prompts_per_step=100" in capsys.readouterr().err
    assert not out.exists()
    assert rl(start, out) == 0  # no --resume needed: nothing was left to block it
    assert json.loads((out / "last" / "config.json").read_text())


def test_a_failed_start_keeps_a_directory_the_user_already_had(start, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert rl(start, out, "rl.prompts_per_step=100", "rl.minibatches=1", "--resume") == 2
    assert (out / "notes.txt").read_text() == "mine"
