"""What the experiment scripts (and benches) share: the presets, running `reftune` commands with logs, in parallel,
and mean ± sd."""

from __future__ import annotations

import json
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


def write_table(out: Path, markdown: str, data) -> None:
    """OUT/table.md (the markdown) and OUT/table.json (the data behind it): every script's results."""
    (out / "table.md").write_text(markdown.rstrip("\n") + "\n")
    (out / "table.json").write_text(json.dumps(data, indent=2))


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


def warmup_runs(root: Path, sizes: list[int], seeds: list[int]) -> list[Path]:
    """The `make paper_long` runs ROOT/n<N>/seed-S with a finished warm-up (the others named on stderr)."""
    runs = [root / f"n{n}" / f"seed-{s}" for n in sizes for s in seeds]
    for r in runs:
        if not (r / "warmup" / "last").is_dir():
            print(f"skipped {r}: no finished warm-up", file=sys.stderr)
    return [r for r in runs if (r / "warmup" / "last").is_dir()]


def run_job(command: str, cfg: dict, out: Path, done_key: str) -> int:
    """`reftune COMMAND -c OUT.yaml` for the config `cfg` (out_dir = OUT), logged to OUT.log, one thread: skipped
    when OUT/results.json already holds `done_key`, resumed when OUT holds an unfinished run."""
    results = out / "results.json"
    if results.is_file() and done_key in yaml.safe_load(results.read_text()):
        return 0
    config = out.with_name(out.name + ".yaml")
    config.write_text(yaml.safe_dump({**cfg, "out_dir": str(out)}, sort_keys=False))
    resume = ["--resume"] if (out / "config.yaml").exists() else []
    return run_logged([command, "-c", str(config), *resume], out.with_name(out.name + ".log"), threads=1)


def add_run_args(p) -> None:
    """The arguments of the scripts that add rows to `make paper_long`'s runs: ROOT, --sizes, --seeds, --parallel."""
    p.add_argument("root", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (each on one thread)")


def from_warmup(run: Path) -> tuple[dict, dict]:
    """(the fields a job started from `run`'s warm-up shares with the run: data, model shape, evaluation, precision,
    seed; the run's whole config)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return ({"data": cfg["data"], "model": {**cfg["model"], "name_or_path": str(run / "warmup" / "last")},
             "eval": cfg["eval"], "precision": cfg["precision"], "seed": cfg["seed"]}, cfg)
