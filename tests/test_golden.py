"""Golden numbers of the loops: what a 3-step tiny run computes is pinned, and a resumed run equals an uninterrupted one.

Every run goes through the CLI (`reftune sft`, `reftune rl`), in process, on the embedded synthetic task with a
1-layer, hidden-32 model, so a change anywhere on the path (data, tokenizer, rollout, scoring, advantages, losses,
update, logging, checkpointing) that moves a number fails here. `metrics.jsonl` is compared record by record with
its time fields dropped.

The pinned values live in tests/golden/*.json. After a change that is *meant* to move them, regenerate with
    REFTUNE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
and say why in the commit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from reftune.cli import main

GOLDEN = Path(__file__).parent / "golden"
TIME_FIELDS = {"time", "rollout_s", "scoring_s", "update_s", "tokens_per_s", "seconds"}
DATA = ["data.n_train=16", "data.n_val=4", "data.n_test=4", "data.n_extra=0", "data.n_pretrain=0"]
MODEL = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
         "model.vocab_size=280"]
RL = ["rl.prompts_per_step=4", "rl.num_generations=2", "rl.minibatches=2", "rl.max_new_tokens=40",
      "rl.eval_every=1", "rl.save_every=1", "rl.warmup_steps=1", "rl.lr=1e-3", "eval.batch_size=8",
      "rl.rewards=reft:1,test_golden:digit_share:1"]
ESTIMATORS = {
    "gae": ["rl.advantage=gae"],
    # batch whitening on top of GRPO (the loop's default before rl.whiten_advantages=auto), pinned explicitly so
    # the numbers of tests/golden/rl_grpo.json still hold the whitening step of the loop
    "grpo": ["rl.advantage=grpo", "rl.kl_in=loss", "rl.kl_kind=k3", "rl.whiten_advantages=true"],
    "online_self_training": ["rl.objective=online_self_training"],
}


def digit_share(prompts, completions, examples, **kw) -> list[float]:
    """A reward that differs between samples even when no answer is right yet: the share of digits written."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def cli(*args: str) -> None:
    torch.manual_seed(0)  # the commands seed themselves from `seed`; this pins runs of code that did not
    assert main(list(args)) == 0


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_FIELDS} for line in lines if line.strip()]


def assert_same(actual: list[dict], expected: list[dict], rel: float = 1e-4) -> None:
    """Record by record, every key; floats within `rel` (and 1e-6 absolute). The thread count changes the matmuls'
    reduction order: between 1 and 2 threads, differences of near-equal numbers (KL estimates, approx-KL,
    explained variance) moved by up to 2.4e-4 relative / 1.2e-6 absolute, everything else by < 1e-5 relative.
    rel=0: the same run twice, compared to 1e-9."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert set(a) == set(e), (a, e)
        for k in e:
            if isinstance(e[k], float) and not (math.isnan(e[k]) and math.isnan(a[k])):
                tol = 1e-6 if rel else 1e-9
                assert a[k] == pytest.approx(e[k], rel=rel, abs=tol), (a["stage"], a["step"], k, a[k], e[k])
            elif not isinstance(e[k], float):
                assert a[k] == e[k], (k, a[k], e[k])


def check_golden(name: str, actual: list[dict]) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("REFTUNE_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1) + "\n")
    assert_same(actual, json.loads(path.read_text()))


@pytest.fixture(scope="module")
def warmup(tmp_path_factory) -> Path:
    """A 6-epoch SFT of the tiny model: the start of every RL run below (its metrics are pinned too)."""
    out = tmp_path_factory.mktemp("golden") / "sft"
    cli("sft", f"out_dir={out}", *DATA, *MODEL, "sft.epochs=6", "sft.batch_size=4", "sft.lr=3e-3",
        "sft.eval_every_epochs=1", "eval.batch_size=8", "eval.max_new_tokens=40")
    check_golden("sft", records(out))
    return out / "last"


def rl_run(out: Path, warmup: Path, estimator: str, steps: int, *extra: str) -> Path:
    cli("rl", "--model", str(warmup), f"out_dir={out}", *extra, *DATA, *RL, *ESTIMATORS[estimator],
        f"rl.steps={steps}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_three_rl_steps_compute_the_pinned_metrics(warmup, tmp_path, estimator):
    run = rl_run(tmp_path / estimator, warmup, estimator, 3)
    got = records(run)
    assert [r["step"] for r in got if "reward" in r] == [1, 2, 3]
    check_golden(f"rl_{estimator}", got)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_two_steps_then_resume_to_three_equals_three(warmup, tmp_path, estimator):
    whole = rl_run(tmp_path / "whole", warmup, estimator, 3)
    part = rl_run(tmp_path / "part", warmup, estimator, 2)
    rl_run(part, warmup, estimator, 3, "--resume")
    assert_same(records(part), records(whole), rel=0)
    for name in ("model.safetensors", "value_head.safetensors"):
        assert (part / "last" / name).read_bytes() == (whole / "last" / name).read_bytes(), name
