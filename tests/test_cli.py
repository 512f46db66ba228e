"""Specification of the `reftune` command line: a user error exits 2 with one line on stderr, no traceback.

Each case runs `python -m reftune.cli` in a subprocess, as a user would. Config errors are found before
torch is imported (fast); the others need the stage code (a few seconds each).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

TINY = ["model.hidden_size=16", "model.num_layers=1", "model.intermediate_size=32", "model.vocab_size=280",
        "data.n_extra=0", "data.n_val=4", "data.n_test=4"]


def reftune(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reftune.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"reftune {command}: error: ")
    for f in fragments:
        assert f in lines[0]
    return lines[0]


def test_unknown_field_suggests_the_close_match():
    assert_user_error(reftune("run", "sft.epocs=3"), "run", "sft.epocs", "did you mean 'sft.epochs'")


@pytest.mark.parametrize("override, field", [
    ("rl.kl_coef=high", "rl.kl_coef"),
    ("data.cot=python", "data.cot"),
    ("rl.lam=2", "rl.lam"),
    ("sft.epochs", "sft.epochs"),  # not key=value
])
def test_bad_values_name_the_field(override, field):
    assert_user_error(reftune("run", override), "run", field)


def test_malformed_yaml_config_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("sft:\n  epochs: [3\n")
    assert_user_error(reftune("sft", "-c", bad), "sft", str(bad), "not valid YAML at line 3")
    assert_user_error(reftune("sft", "-c", tmp_path / "absent.yaml"), "sft", "absent.yaml")


def test_unknown_model_path():
    assert_user_error(reftune("eval", "--model", "/nonexistent"), "eval", "/nonexistent")


def test_rl_without_a_starting_checkpoint(tmp_path):
    assert_user_error(reftune("rl", f"out_dir={tmp_path / 'rl'}"), "rl", "model.name_or_path")
    assert not (tmp_path / "rl").exists()  # refused before creating anything


def test_split_too_small_for_the_batch(tmp_path):
    proc = reftune("sft", "data.n_train=4", "sft.batch_size=32", f"out_dir={tmp_path / 'o'}", *TINY)
    assert_user_error(proc, "sft", "sft.batch_size=32", "4 examples")


def test_non_empty_out_dir_needs_resume(tmp_path):
    (tmp_path / "notes.txt").write_text("earlier run")
    assert_user_error(reftune("sft", f"out_dir={tmp_path}"), "sft", str(tmp_path), "--resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def test_config_lists_every_field_with_its_doc():
    proc = reftune("config")
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    keys = [line.split()[0] for line in lines]
    assert {"out_dir", "sft.epochs", "rl.kl_coef", "rl.lam", "data.cot", "model.name_or_path"} <= set(keys)
    assert any(line.startswith("rl.kl_coef") and "KL" in line for line in lines)
    sft = reftune("config", "sft").stdout.split()
    assert "sft.epochs" in sft and "rl.kl_coef" not in sft  # only the chosen command's fields


def test_usage_errors_come_from_argparse():
    proc = reftune("train")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr


def test_overrides_may_follow_flags():
    # `--resume key=value`: the override after the flag is still read (and here rejected by name)
    assert_user_error(reftune("run", "--resume", "sft.epocs=3"), "run", "sft.epocs", "sft.epochs")
    proc = reftune("run", "--resume", "--bogus-flag")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus-flag" in proc.stderr


def test_rm_malformed_pairs_line_names_file_and_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"question": "Q?", "chosen": "a", "rejected": "b"}\n{"question": "Q?", "chosen": "a"\n')
    proc = reftune("rm", "--model", tmp_path, f"rm.pairs_path={pairs}", f"out_dir={tmp_path / 'rm'}")
    assert_user_error(proc, "rm", f"{pairs}:2:", "malformed JSON line")
    assert not (tmp_path / "rm").exists()  # refused before creating anything


def test_sft_keeps_a_warm_up_snapshot(tmp_path):
    out = tmp_path / "sft"
    proc = reftune("sft", f"out_dir={out}", "snapshot_epoch=1", "sft.epochs=2", "sft.eval_every_epochs=1",
                   "data.n_train=16", "sft.batch_size=8", "data.n_pretrain=0", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "epoch-1" / "config.json").is_file() and (out / "best" / "config.json").is_file()
    assert not (out / "epoch-2").exists()


def test_the_config_reference_in_docs_is_up_to_date():
    from pathlib import Path

    from reftune.cli import config_reference
    docs = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert docs.read_text() == config_reference("all", markdown=True), \
        "docs/config.md is stale: run `reftune config all --markdown > docs/config.md`"
