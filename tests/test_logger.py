"""`report_to`: every logged scalar goes to metrics.jsonl and, through accelerate's trackers, to TensorBoard
(`tb/`), W&B or trackio under the tag `<stage>/<model>/<split>/<metric>`; `none` writes metrics.jsonl only."""

from __future__ import annotations

import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from reftune.train.logger import MetricsLogger, read_metrics


def log_a_run(logger: MetricsLogger) -> None:
    logger.log("reft", 1, reward=0.25, accuracy=0.5, note="text is not a scalar")
    logger.log("reft", 2, reward=0.75, kl=float("nan"))
    logger.log("eval", 0, model="sft", split="test", accuracy=0.4)
    logger.close()


def test_tensorboard_gets_each_scalar_under_its_tag_and_step(tmp_path):
    log_a_run(MetricsLogger(tmp_path, report_to="tensorboard"))
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert set(events.Tags()["scalars"]) == {"reft/reward", "reft/accuracy", "eval/sft/test/accuracy"}  # no NaN
    assert [(e.step, e.value) for e in events.Scalars("reft/reward")] == [(1, 0.25), (2, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("eval/sft/test/accuracy")] == [(0, pytest.approx(0.4))]
    assert [r["stage"] for r in read_metrics(tmp_path)] == ["reft", "reft", "eval"]


def test_none_writes_metrics_jsonl_only(tmp_path):
    log_a_run(MetricsLogger(tmp_path, report_to="none"))
    assert not (tmp_path / "tb").exists() and len(read_metrics(tmp_path)) == 3


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_wandb_and_trackio_get_the_same_tags_with_the_step_as_a_field(tmp_path, monkeypatch, name):
    """A stand-in module with the client's API: init(project, name, ...) -> run with log / finish."""
    calls: dict = {"log": []}

    class Run:
        def log(self, values, step=None, **kw):
            calls["log"].append((values, step))

        def finish(self):
            calls["finished"] = True

    def init(project, **kw):
        calls["init"] = {"project": project, **kw}
        return Run()

    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(init=init))
    log_a_run(MetricsLogger(tmp_path / "run-a", report_to=name))
    assert calls["init"]["project"] == "reftune" and calls["init"]["name"] == "run-a"
    # each stage counts its steps from 0, and these clients drop a step lower than the last: the step is a field
    assert calls["log"] == [({"reft/reward": 0.25, "reft/accuracy": 0.5, "step": 1}, None),
                            ({"reft/reward": 0.75, "step": 2}, None),
                            ({"eval/sft/test/accuracy": 0.4, "step": 0}, None)]
    assert calls["finished"]
