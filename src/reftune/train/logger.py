"""Metrics: one JSON line per record in `metrics.jsonl`, and the same scalars in a tracker (`report_to`):
TensorBoard (`tb/`, the default), Weights & Biases, trackio, or none — accelerate's trackers
(`accelerate.tracking`), so each behaves as it does in any accelerate script.

A tracker tag is `<stage>/<metric>`, with the record's model and split in between when it names them
(`eval/sft/test/accuracy`), so each model's and split's evaluation gets a curve of its own. The tracker opens
at the first record, so `report_to` may still be set after the logger is built. With several processes only the
main one writes (the records it logs are already reduced over all processes); the others' `log` does nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from reftune.train.accel import is_main

TRACKERS = ("tensorboard", "wandb", "trackio", "none")
TAG_FIELDS = ("model", "split")  # text fields of a record that name what its numbers are about


def tag(stage: str, key: str, record: dict) -> str:
    """The tracker tag of metric `key` of a record: stage, then its model and split (when given), then the key."""
    parts = [stage] + [record[f] for f in TAG_FIELDS if isinstance(record.get(f), str)] + [key]
    return "/".join(parts)


class MetricsLogger:
    """Append-only metrics for a run. Each record has a `stage` and a `step`; numbers go to the tracker."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, report_to: str | None = None):
        self.run_dir, self.writes = Path(run_dir), is_main()
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.report_to = report_to or ("tensorboard" if tensorboard else "none")
        self._tracker = None

    def set_report_to(self, report_to: str) -> None:
        """Send the scalars to `report_to` (one of TRACKERS) from the next record on."""
        if report_to not in TRACKERS:
            raise ValueError(f"report_to: {report_to!r} is not one of {', '.join(TRACKERS)}")
        if report_to != self.report_to:
            self.close()
            self.report_to = report_to

    def _open(self):
        """The accelerate tracker of `report_to`, started (None for "none"). TensorBoard writes to run_dir/tb;
        W&B and trackio log to project "reftune", a run named after the run directory."""
        from accelerate import tracking
        if self.report_to == "tensorboard":
            tracker = tracking.TensorBoardTracker("tb", self.run_dir)
        elif self.report_to == "wandb":
            tracker = tracking.WandBTracker("reftune", name=self.run_dir.name, dir=str(self.run_dir))
        elif self.report_to == "trackio":
            tracker = tracking.TrackioTracker("reftune", name=self.run_dir.name)
        else:
            return None
        tracker.start()
        return tracker

    def log(self, stage: str, step: int, **metrics) -> None:
        if not self.writes:
            return
        clean = {k: (float(v) if hasattr(v, "item") or isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        record = {"stage": stage, "step": step, "time": round(time.time(), 3), **clean}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tracker is None and self.report_to != "none":
            self._tracker = self._open()
        scalars = {tag(stage, k, clean): v for k, v in clean.items() if isinstance(v, float) and math.isfinite(v)}
        if self._tracker is not None and scalars:
            if self.report_to == "tensorboard":
                self._tracker.log(scalars, step=step)
            else:  # W&B and trackio want a run's steps to increase; each stage counts its own from 0
                self._tracker.log({**scalars, "step": step})

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.finish()
            self._tracker = None


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
