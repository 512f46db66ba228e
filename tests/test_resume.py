"""Bad input, blow-ups and resume: a clear error every time, and nothing lost.

A `reftune run` of the tiny default killed at a stage boundary or in the middle of a stage, then resumed, ends
exactly where the uninterrupted run does (every metric but the timings, the results, the weights); a resume
takes the run's saved config and refuses what it cannot change; a NaN never reaches a checkpoint; `eval` never
writes into a training run; every bad value is refused at load, before any work.
"""

from __future__ import annotations

import json

import pytest
import torch

import reftune.rl.loop
import reftune.rl.update
from reftune.cli import main
from reftune.data.loaders import load_dataset
from reftune.errors import DataError
from reftune.model.checkpoint import load_state
from reftune.model.modeling import load_pretrained
from reftune.train.state import TrainState
from test_golden import DATA, MODEL, records

RUN = [*DATA, *MODEL, "data.n_pretrain=16", "pretrain.epochs=2", "pretrain.batch_size=4", "sft.epochs=2",
       "sft.batch_size=4", "sft.eval_every_epochs=1", "warmup_epochs=1", "rl.steps=2", "rl.prompts_per_step=4",
       "rl.num_generations=2", "rl.minibatches=2", "rl.max_new_tokens=16", "rl.eval_every=1", "rl.save_every=1",
       "eval.batch_size=8", "eval.max_new_tokens=16"]
WEIGHTS = ["pretrain/last", "sft/epoch-1", "sft/best", "reft/last", "reft/best"]


def cli(*args) -> int:
    return main([str(a) for a in args])


def snapshot(run_dir):
    """Everything a run computed: its metrics (no timings), results and weight files."""
    return (records(run_dir), json.loads((run_dir / "results.json").read_text()),
            {w: (run_dir / w / "model.safetensors").read_bytes() for w in WEIGHTS})


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    assert cli("run", f"out_dir={out}", *RUN) == 0
    return snapshot(out)


class Killed(KeyboardInterrupt):
    """A kill -9 stand-in: raised where the process would die; the CLI's handler leaves the run as it is."""


def kill_after_save(monkeypatch, stage: str, nth: int = 1):
    """Die right after the nth resumable checkpoint of `stage` is written."""
    real, seen = TrainState.save_last, []

    def save_last(self):
        out = real(self)
        if self.out_dir.name == stage:
            seen.append(1)
            if len(seen) == nth:
                raise Killed
        return out

    monkeypatch.setattr(TrainState, "save_last", save_last)


def kill_at_first_rollout(monkeypatch):
    """Die when RL starts its first rollout: no RL checkpoint exists yet."""
    monkeypatch.setattr(reftune.rl.loop, "collect", lambda *a, **k: (_ for _ in ()).throw(Killed()))


def kill_after_stage(monkeypatch, stage: str):
    from reftune.commands.run import Stages
    real = Stages.finish

    def finish(self, name, info=None):
        real(self, name, info)
        if name == stage:
            raise Killed

    monkeypatch.setattr(Stages, "finish", finish)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-pretrain", "after-sft", "before-first-rl-checkpoint", "mid-rl"])
def test_killed_and_resumed_equals_uninterrupted(whole, tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        {"mid-pretrain": lambda: kill_after_save(m, "pretrain"), "after-sft": lambda: kill_after_stage(m, "sft"),
         "before-first-rl-checkpoint": lambda: kill_at_first_rollout(m),
         "mid-rl": lambda: kill_after_save(m, "reft")}[where]()
        assert cli("run", f"out_dir={out}", *RUN) == 130
    assert not (out / "results.json").exists()
    assert cli("run", "--resume", f"out_dir={out}") == 0  # no overrides: the run's saved config
    got, expected = snapshot(out), whole
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    for w in WEIGHTS:
        assert got[2][w] == expected[2][w], w


SFT = [*DATA, *MODEL, "sft.epochs=1", "sft.batch_size=4", "sft.eval_every_epochs=1", "eval.batch_size=8",
       "eval.max_new_tokens=8"]


@pytest.fixture
def sft_run(tmp_path):
    out = tmp_path / "sft"
    assert cli("sft", f"out_dir={out}", *SFT) == 0
    return out


def test_resume_refuses_an_override_it_cannot_honour_and_changes_nothing(sft_run, capsys):
    before = {p: p.read_bytes() for p in (sft_run / "config.yaml", sft_run / "metrics.jsonl")}
    assert cli("sft", "--resume", f"out_dir={sft_run}", "data.n_train=8") == 2
    err = capsys.readouterr().err
    assert "data.n_train" in err and "started with data.n_train=16" in err and "new out_dir" in err
    assert {p: p.read_bytes() for p in before} == before


def test_resume_takes_the_saved_config_and_applies_a_new_lr_and_epochs(sft_run):
    assert cli("sft", "--resume", f"out_dir={sft_run}", "sft.epochs=2", "sft.lr=1e-4") == 0
    epochs = [r["epoch"] for r in records(sft_run) if "val_accuracy" in r]
    assert epochs == [1, 2]  # the saved tiny settings (batch 4 on 16 questions), one more epoch
    change = json.loads((sft_run / "resumes.jsonl").read_text())["changed"]
    assert change == {"sft.epochs": [1, 2], "sft.lr": [3e-4, 1e-4]}
    state = load_state(sft_run / "last")
    assert all(lr == pytest.approx(1e-4) for lr in state["scheduler"]["base_lrs"])
    assert "sft:\n  epochs: 2\n" in (sft_run / "config.yaml").read_text()


def test_resume_of_another_commands_run_is_refused(sft_run, capsys):
    assert cli("rl", "--resume", "--model", sft_run / "last", f"out_dir={sft_run}") == 2
    assert "is a `reftune sft` run" in capsys.readouterr().err


def test_eval_never_writes_into_a_training_run(sft_run, capsys):
    before = sorted(p.name for p in sft_run.iterdir())
    assert cli("eval", "--model", sft_run / "best", f"out_dir={sft_run}", *DATA, "eval.limit=2") == 2
    assert "holds a training run" in capsys.readouterr().err
    assert sorted(p.name for p in sft_run.iterdir()) == before
    own = sft_run.parent / "eval"
    assert cli("eval", "--model", sft_run / "best", f"out_dir={own}", *DATA, "eval.limit=2") == 0
    assert cli("eval", "--model", sft_run / "best", f"out_dir={own}", *DATA, "eval.limit=2") == 2  # not over it
    assert cli("eval", "--resume", "--model", sft_run / "best", f"out_dir={own}", *DATA, "eval.limit=2") == 0


def poison_after_nth_update(monkeypatch, module, name: str, nth: int):
    """After the nth call of module.name (an update), one weight of the model becomes NaN: the loss and the
    gradients of that update were finite, so only the check on the weights can catch it."""
    real, calls = getattr(module, name), []

    def poisoned(*args, **kw):
        out = real(*args, **kw)
        calls.append(1)
        if len(calls) == nth:
            params = (args[0].parameters() if hasattr(args[0], "parameters")  # ppo_update(policy, ...)
                      else (p for g in args[3].param_groups for p in g["params"]))  # optimizer_step(acc, ..., opt)
            with torch.no_grad():
                next(p for p in params if p.ndim == 2)[0, 0] = float("nan")
        return out

    monkeypatch.setattr(module, name, poisoned)


def assert_last_is_finite(run_dir, step: int):
    assert load_state(run_dir / "last")["step"] == step
    lm, _ = load_pretrained(str(run_dir / "last"))
    assert all(torch.isfinite(p).all() for p in lm.parameters())


def test_sft_weights_gone_nan_never_reach_a_checkpoint(tmp_path, monkeypatch, capsys):
    import reftune.train.sft
    poison_after_nth_update(monkeypatch, reftune.train.sft, "optimizer_step", 3)
    out = tmp_path / "sft"
    assert cli("sft", f"out_dir={out}", *SFT, "sft.save_every_steps=1") == 2
    assert "weights are NaN/inf after step 3" in capsys.readouterr().err
    assert_last_is_finite(out, 2)


@pytest.mark.slow
def test_rl_weights_gone_nan_never_reach_a_checkpoint(tmp_path, monkeypatch, capsys):
    start = tmp_path / "start"
    assert cli("sft", f"out_dir={start}", *SFT) == 0
    poison_after_nth_update(monkeypatch, reftune.rl.loop, "ppo_update", 2)
    out = tmp_path / "rl"
    assert cli("rl", "--model", start / "last", f"out_dir={out}", *DATA, "rl.steps=3", "rl.prompts_per_step=4",
               "rl.num_generations=2", "rl.minibatches=2", "rl.max_new_tokens=8", "rl.save_every=1",
               "rl.eval_every=1", "eval.batch_size=8") == 2
    assert "weights are NaN/inf after step 2" in capsys.readouterr().err
    assert_last_is_finite(out, 1)


@pytest.mark.parametrize("override, message", [
    ("pretrain.batch_size=0", "pretrain.batch_size: must be > 0"),
    ("pretrain.epochs=-1", "pretrain.epochs: must be > 0"),
    ("data.n_train=-5", "data.n_train: must be > 0"),
    ("data.n_val=0", "data.n_val: must be > 0"),
    ("data.n_test=-1", "data.n_test: must be ≥ 0"),
    ("data.val_fraction=1", "data.val_fraction: must be in (0, 1)"),
    ("model.hidden_size=0", "model.hidden_size: must be > 0"),
    ("model.num_heads=3", "model.num_heads: 3 does not divide model.hidden_size=128"),
    ("model.num_heads=128", "model.num_heads: head size"),
    ("model.vocab_size=4", "model.vocab_size: must be ≥ 16"),
    ("rl.clip=0", "rl.clip: must be > 0"),
    ("sft.warmup_ratio=1", "sft.warmup_ratio: must be in [0, 1)"),
])
def test_each_bad_value_is_refused_at_load_before_any_work(tmp_path, capsys, override, message):
    assert cli("run", f"out_dir={tmp_path / 'r'}", override) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_number_as_a_question_is_a_data_error_naming_file_and_line(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"question": "What is 1 + 1?", "answer": 2}) + "\n" + json.dumps({"question": 42, "answer": 3}) + "\n")
    with pytest.raises(DataError, match=r"mine.jsonl:2: .*expected a string, got int.*question"):
        load_dataset("json", str(f))
