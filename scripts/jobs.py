"""What the experiment scripts (and benches) share: the presets, running `reftune` commands with logs, in parallel,
and mean ± sd."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REFTUNE = [sys.executable, "-m", "reftune.cli"]
PRESETS_FILE = Path(__file__).with_name("presets.yaml")
# which key=value overrides each command accepts (by section); model.name_or_path is always set per command
ACCEPTS = {"sft": ("data.", "model.", "sft.", "eval."), "rl": ("data.", "model.", "rl.", "curriculum.", "eval."),
           "eval": ("data.", "model.", "eval.")}


def load_presets(path: Path = PRESETS_FILE) -> tuple[dict[str, dict[str, tuple[str, dict[str, str]]]], dict[str, list[str]]]:
    """(preset -> variant -> (label, settings as key -> string value), preset -> default variants)."""
    raw = yaml.safe_load(path.read_text())
    presets = {name: {v: (d["label"], {k: str(x) for k, x in (d["settings"] or {}).items()})
                      for v, d in p["variants"].items()} for name, p in raw.items()}
    return presets, {name: list(p["default"]) for name, p in raw.items()}


def for_command(command: str, overrides: list[str]) -> list[str]:
    """The overrides `command` accepts, without model.name_or_path (set per command by the script)."""
    return [o for o in overrides if o.startswith(ACCEPTS[command]) and not o.startswith("model.name_or_path=")]


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


def matmul_peak(dtype, n: int = 2048, reps: int = 5) -> float:
    """Measured GFLOP/s of an n x n torch.matmul of `dtype` (best of `reps`, after one warm-up): the benches'
    FLOP-utilisation denominator."""
    return matmul_gflops(dtype, n, n, n, reps)


def matmul_gflops(dtype, m: int, k: int, n: int, reps: int = 5) -> float:
    """Measured GFLOP/s of an [m, k] @ [k, n] torch.matmul of `dtype` (best of `reps` timed calls, each repeated
    until it takes ~20 ms, after one warm-up): e.g. a decode step's matmul at its batch's row count."""
    import time

    import torch
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.matmul(a, b)
    t0 = time.perf_counter()
    torch.matmul(a, b)
    inner = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        best = min(best, (time.perf_counter() - t0) / inner)
    return round(2 * m * k * n / best / 1e9, 1)

