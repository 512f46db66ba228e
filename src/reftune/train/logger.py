"""Metrics: one JSON line per record in `metrics.jsonl` and the same scalars in TensorBoard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricsLogger:
    """Append-only metrics for a run. Each record has a `stage` and a `step`; numbers go to TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, stage: str, step: int, **metrics) -> None:
        clean = {k: (float(v) if hasattr(v, "item") or isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        record = {"stage": stage, "step": step, "time": round(time.time(), 3), **clean}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{stage}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
