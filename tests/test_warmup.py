"""`reftune run`'s warm-up model: by default the SFT run's snapshot after `warmup_epochs` (taken while its learning
rate is still near the peak); with `warmup.schedule=own` a separate short SFT run whose learning rate decays to 0 at
its own end. Either way it is RL's start and KL reference, and the SFT baseline is the long run."""

from __future__ import annotations

import importlib

import pytest

from reftune.config import RunConfig, load_config
from reftune.errors import UserError

TINY = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0",
        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "model.vocab_size=280", "sft.epochs=3", "warmup_epochs=1", "sft.batch_size=4", "sft.eval_every_epochs=1",
        "sft.patience=0", "sft.lr=3e-3", "rl.steps=1", "rl.prompts_per_step=4", "rl.num_generations=2",
        "rl.minibatches=2", "rl.max_new_tokens=12", "eval.max_new_tokens=12", "eval.batch_size=8",
        "report_to=none"]
UNTIMED = ("time", "tokens_per_s")
run_module = importlib.import_module("reftune.commands.run")  # the package exports the function `run` too
RL_STAGE = run_module.rl_stage


def test_the_warmup_fields_and_their_checks():
    cfg = load_config(RunConfig)
    assert (cfg.warmup.schedule, cfg.warmup.lr, cfg.warmup_epochs) == ("snapshot", None, 2)
    own = load_config(RunConfig, None, ["warmup.schedule=own", "warmup.lr=1e-4"])
    assert (own.warmup.schedule, own.warmup.lr) == ("own", 1e-4)
    with pytest.raises(UserError, match="warmup.lr"):
        load_config(RunConfig, None, ["warmup.lr=0"])
    with pytest.raises(UserError, match="warmup_epochs"):
        load_config(RunConfig, None, ["warmup_epochs=0"])
    with pytest.raises(UserError, match="warmup.schedule"):
        load_config(RunConfig, None, ["warmup.schedule=best"])


def _run(out, monkeypatch, *extra):
    """`reftune run` in process; returns (records by stage, the warm-up each RL stage started from, results)."""
    starts, rl_stage = [], RL_STAGE
    monkeypatch.setattr(run_module, "rl_stage", lambda *args, **kw:  # rl_stage(run, stages, name, train, warmup)
                        starts.append(args[4]) or rl_stage(*args, **kw))
    results = run_module.run(load_config(RunConfig, None, [f"out_dir={out}", *TINY, *extra]))
    return _records(out), starts, results


def _records(out) -> dict[str, list[dict]]:
    """metrics.jsonl by stage, without the wall-clock fields."""
    from reftune.train.logger import read_metrics
    by_stage: dict[str, list[dict]] = {}
    for r in read_metrics(out):
        by_stage.setdefault(r["stage"], []).append({k: v for k, v in r.items() if k not in UNTIMED})
    return by_stage


@pytest.mark.slow
def test_an_own_warmup_decays_to_zero_and_the_sft_baseline_stays_the_long_run(tmp_path, monkeypatch):
    own, own_starts, own_results = _run(tmp_path / "own", monkeypatch, "warmup.schedule=own", "warmup.lr=1e-3")
    snap, snap_starts, _ = _run(tmp_path / "snapshot", monkeypatch)

    assert own_starts == [tmp_path / "own" / "warmup" / "last"]  # RL (and its KL reference) from the warm-up run
    assert snap_starts == [tmp_path / "snapshot" / "sft" / "epoch-1"]
    lrs = [r["lr"] for r in own["warmup"] if "lr" in r]
    assert lrs[-1] == 0.0 and max(lrs) <= 1e-3  # its own peak, and the schedule ends at its last step
    assert [r["epoch"] for r in own["warmup"] if "val_accuracy" in r] == [1]
    assert own["sft"] == snap["sft"]  # the SFT baseline: the same long run in both
    assert {"warmup/val", "warmup/test", "sft/val", "reft/val"} <= set(own_results)


@pytest.mark.slow
def test_an_own_warmup_without_the_baseline_trains_no_long_run_and_resumes(tmp_path, monkeypatch):
    by_stage, starts, results = _run(tmp_path / "run", monkeypatch, "warmup.schedule=own", "sft_baseline=false")
    assert "sft" not in by_stage and "warmup" in by_stage
    assert not (tmp_path / "run" / "sft").exists() and starts == [tmp_path / "run" / "warmup" / "last"]
    assert not any(k.startswith("sft/") for k in results)

    from reftune.cli import main
    assert main(["run", "--resume", f"out_dir={tmp_path / 'run'}", "rl.steps=2"]) == 0  # one more RL iteration
    again = _records(tmp_path / "run")
    assert again["warmup"] == by_stage["warmup"]  # the finished warm-up is not trained again
    assert [r["step"] for r in again["reft"] if "reward" in r] == [1, 2]
