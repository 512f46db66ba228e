"""JSON Lines files: one place that writes the run directory's per-example records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write one JSON object per line, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path
