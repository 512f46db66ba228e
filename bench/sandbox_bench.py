"""Throughput and latency of reftune.grading.sandbox on typical P-CoT programs, whether it agrees with plain
exec() on every one of the ReFT release's SVAMP P-CoT programs, and how many return their gold answer. Not a
test: prints and writes bench/results/sandbox.json.

    python bench/sandbox_bench.py [--data PATH] [--workers N] [--repeats 3]

Programs: the `answer_cot` field of shared/data/mwp_reft/svamp_python_sdp.json when present, else a small
built-in list. Throughput is run_many over all of them on one pool (best of --repeats, all reported);
latency is one program at a time, compared with exec() in this process (the overhead is the difference).
Agreement: the sandbox's value against the same rendering of what exec() in this process returns. CPU time is
summed over this process and every process of the pool's sandboxes (read from /proc, outside the namespaces).
The machine may be shared: the load average at the start and at the end is recorded next to the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from reftune.grading.sandbox import ProgramSandbox, pool_pids, _render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mwp_reft" / "svamp_python_sdp.json"
BUILTIN = [  # (program, gold) used when the release's data is absent
    ('def solution():\n    """Tyler has 29 species with 7 pairs each. How many pairs?"""\n'
     '    num_species = 29\n    pairs = 7\n    result = num_species * pairs\n    return result', "203"),
    ('def solution():\n    """344 books, 136 about school. How many about sports?"""\n'
     '    total = 344\n    school = 136\n    result = total - school\n    return result', "208"),
    ('def solution():\n    """A cake is cut into 8 pieces; 3 friends eat 2 each. Fraction left?"""\n'
     '    left = 8 - 3 * 2\n    result = left / 8\n    return result', "0.25"),
    ('import math\ndef solution():\n    """Area of a circle of radius 3, floored."""\n'
     '    result = math.floor(math.pi * 3 ** 2)\n    return result', "28"),
]
SYMPY_PROGRAM = ('from sympy import symbols, Eq, solve\ndef solution():\n    """x + y = 10, x - y = 2. x?"""\n'
                 '    x, y = symbols("x y")\n    s = solve([Eq(x + y, 10), Eq(x - y, 2)], [x, y])\n    return s[x]')


def load(path: Path) -> list[tuple[str, str, str]]:
    """(item_id, program, gold) triples."""
    if path.exists():
        rows = json.loads(path.read_text())
        return [(r.get("item_id", str(i)), r["answer_cot"], r["answer_value"]) for i, r in enumerate(rows)
                if r.get("answer_cot")]
    return [(f"builtin_{i}", p, g) for i, (p, g) in enumerate(BUILTIN)] * 250


def matches(value: str | None, gold: str) -> bool:
    try:
        return math.isclose(float(value), float(gold), rel_tol=1e-4, abs_tol=1e-9)
    except (TypeError, ValueError):
        return value is not None and value.strip() == gold.strip()


def in_process(program: str) -> tuple[bool, str]:
    """(ok, what the program returns when exec'd here, rendered as the sandbox renders it; else the exception)."""
    try:
        ns: dict = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(program, "<program>", "exec"), ns)
            return True, _render(ns["solution"]())
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"


def in_process_seconds(programs: list[str]) -> float:
    """Mean time to exec + call solution() in this process: the floor the sandbox is compared with."""
    start = time.perf_counter()
    for p in programs:
        ns: dict = {}
        exec(compile(p, "<program>", "exec"), ns)
        ns["solution"]()
    return (time.perf_counter() - start) / len(programs)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of this process, of the given processes and of the children they reaped (Linux /proc)."""
    usage = os.times()
    total = usage.user + usage.system
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, default=None, help="plain workers; default: two per CPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency-programs", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sandbox.json")
    args = ap.parse_args()

    items = load(args.data)
    programs = [p for _, p, _ in items]
    load_at_start = os.getloadavg()
    t0 = time.perf_counter()
    sandbox = ProgramSandbox(workers=args.workers)
    startup_s = time.perf_counter() - t0
    with sandbox:
        sandbox.run_many(programs[:100])  # warm-up
        runs, pids = [], pool_pids(sandbox)
        cpu_start = cpu_seconds(pids)
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = sandbox.run_many(programs)
            runs.append(len(programs) / (time.perf_counter() - start))
        cpu_per_program = (cpu_seconds(pids) - cpu_start) / (args.repeats * len(programs))
        sympy_start = time.perf_counter()
        sympy_results = sandbox.run_many([SYMPY_PROGRAM] * 200)
        sympy_rate = 200 / (time.perf_counter() - sympy_start)
        sample = programs[: args.latency_programs]
        latencies, cpu_start_one = [], cpu_seconds(pids)
        for p in sample:
            start = time.perf_counter()
            sandbox.run(p)
            latencies.append(time.perf_counter() - start)
        cpu_one_at_a_time = (cpu_seconds(pids) - cpu_start_one) / len(sample)
        child_seconds = [r.seconds for r in results]
        workers = {kind: sum(w.config["sympy"] == (kind == "sympy") for w in sandbox._workers)
                   for kind in ("plain", "sympy")}
        network_isolated = sandbox.network_isolated
        isolation = {"mode": sandbox.isolation, "seccomp": sandbox.seccomp, "network_isolated": network_isolated,
                     "host_uid_of_programs": sandbox.host_uid}
    load_at_end = os.getloadavg()
    base = in_process_seconds(sample)
    sympy_base = in_process_seconds([SYMPY_PROGRAM] * 20)

    execs = [in_process(p) for p in programs]  # agree: the same value, or both fail
    disagreements = [{"item_id": i, "sandbox": r.value if r.ok else r.error, "exec": v}
                     for (i, _, _), r, (ok, v) in zip(items, results, execs) if r.ok != ok or (ok and r.value != v)]
    failures = [{"item_id": i, "gold": g, "value": r.value, "error": r.error, "in_process": in_process(p)[1]}
                for (i, p, g), r in zip(items, results) if not matches(r.value, g)]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hardware": {"platform": platform.platform(), "machine": platform.machine(),
                     "python": platform.python_version(),
                     "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                     "load_average_at_start": [round(x, 2) for x in load_at_start],
                     "load_average_at_end": [round(x, 2) for x in load_at_end]},
        "data": str(args.data) if args.data.exists() else "built-in programs",
        "workers": workers, "isolation": isolation, "network_isolated": network_isolated,
        "startup_s": round(startup_s, 3),
        "programs": len(programs),
        "throughput_programs_per_s": round(max(runs), 1),
        "throughput_runs_programs_per_s": [round(r, 1) for r in runs],
        # load-independent: CPU time (trainer + workers + children) per program, and the rate that implies
        # when all usable CPUs are free for the sandbox
        "cpu_ms_per_program": round(1e3 * cpu_per_program, 3),
        "implied_programs_per_s_on_idle_cpus": round(len(os.sched_getaffinity(0)) / cpu_per_program, 1),
        "cpu_ms_per_program_one_at_a_time": round(1e3 * cpu_one_at_a_time, 3),  # no contention between workers
        "sympy_throughput_programs_per_s": round(sympy_rate, 1),
        "sympy_ok": sum(r.value == "6" for r in sympy_results),
        "sympy_in_process_ms": round(1e3 * sympy_base, 3),
        "latency_ms": {"sandbox_mean": round(1e3 * statistics.mean(latencies), 3),
                       "sandbox_p50": round(1e3 * statistics.median(latencies), 3),
                       "sandbox_p99": round(1e3 * sorted(latencies)[int(0.99 * (len(latencies) - 1))], 3),
                       "in_process_mean": round(1e3 * base, 4),
                       "overhead_mean": round(1e3 * (statistics.mean(latencies) - base), 3),
                       "child_wall_mean": round(1e3 * statistics.mean(child_seconds), 3)},
        "agreement_with_exec": {"agree": len(items) - len(disagreements), "total": len(items),
                                "rate": round(1 - len(disagreements) / len(items), 5), "disagreements": disagreements},
        "pass_rate": round(1 - len(failures) / len(items), 5),
        "passed": len(items) - len(failures),
        "failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
