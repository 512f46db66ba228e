"""Seconds per RL iteration for each variant of a `scripts/compare_rl.py` preset, one job at a time.

    .venv/bin/python bench/rl_step_bench.py --preset estimators --warmup runs/paper/seed-0/sft/epoch-2 \\
        [--iters 4] [--threads 1] [key=value overrides, as for compare_rl]

compare_rl measures wall-clock while two jobs share the machine (and whatever else runs), so its
seconds per iteration move with the load. Here each variant runs alone, `--iters` iterations from the same
warm-up on the same questions; the first iteration (allocations, warm caches) is dropped and the median of
the rest is reported, split into rollout and update. Writes bench/results/rl_step_<preset>.json with the
load average at the start of each job.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from jobs import cpu_name, for_command, load_presets, run_logged  # noqa: E402  (the scripts' shared helpers)

PRESETS, DEFAULT_VARIANTS = load_presets()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="estimators")
    p.add_argument("--warmup", default="runs/paper/seed-0/sft/epoch-2", help="the checkpoint every variant starts from")
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if not (Path(args.warmup) / "config.json").is_file():
        print(f"rl_step_bench: no checkpoint at {args.warmup}; run `make paper` first", file=sys.stderr)
        return 2
    variants = PRESETS[args.preset]
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "hardware": {"processor": cpu_name(), "cpu_count": os.cpu_count(),
                        "torch_threads": args.threads},
           "settings": {"warmup": args.warmup, "iters": args.iters, "overrides": args.overrides,
                        "timed": "median over iterations 2..iters"}, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in DEFAULT_VARIANTS[args.preset]:
            label, settings = variants[name]
            run = Path(tmp) / name
            load = os.getloadavg()[0]
            rc = run_logged(["rl", f"out_dir={run}", f"model.name_or_path={args.warmup}", f"rl.steps={args.iters}",
                             f"rl.eval_every={args.iters}", *[f"{k}={v}" for k, v in settings.items()],
                             *for_command("rl", args.overrides)], Path(tmp) / f"{name}.log", args.threads)
            if rc:
                print((Path(tmp) / f"{name}.log").read_text()[-2000:], file=sys.stderr)
                return rc
            recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "rollout_tokens" in line]
            timed = recs[1:] or recs
            roll, upd = statistics.median(r["rollout_s"] for r in timed), statistics.median(r["update_s"] for r in timed)
            out["variants"][name] = {"label": label, "rollout_s": round(roll, 2), "update_s": round(upd, 2),
                                     "iteration_s": round(roll + upd, 2),
                                     "rollout_tokens": round(statistics.median(r["rollout_tokens"] for r in timed)),
                                     "load_average_1m_at_start": round(load, 2)}
            print(name, out["variants"][name], flush=True)
    path = ROOT / "bench" / "results" / f"rl_step_{args.preset}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
