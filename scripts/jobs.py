"""What the experiment scripts share: running `reftune` commands with logs, in parallel, and mean ± sd."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REFTUNE = [sys.executable, "-m", "reftune.cli"]


def run_logged(args: list[str], log: Path, threads: int | None = None) -> int:
    """Run `reftune ARGS`, appending its output to `log`; `threads` caps torch's threads (OMP/MKL). Returns its exit code."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write("+ reftune " + " ".join(args) + "\n")
        f.flush()
        return subprocess.call(REFTUNE + args, stdout=f, stderr=subprocess.STDOUT, env=env)


def parallel_map(fn, items: list, parallel: int) -> list:
    """fn over items, `parallel` at a time (threads: each item's work is a subprocess), results in order."""
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return list(pool.map(fn, items))


def mean_sd(xs: list[float], digits: int = 1) -> str:
    """"m ± sd" (sd 0 for one value), "–" for none."""
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
