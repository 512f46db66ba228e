"""The paper's claim on the embedded default: `reftune run` for several seeds, then mean ± sd per model.

    python scripts/paper_table.py --seeds 0 1 2 --out runs/paper --parallel 2 [key=value overrides for every run]

Each seed is a full run in OUT/seed-S (resumed if it exists). The data split seed (data.seed) is the
same for all runs; only the training seed changes. Writes OUT/table.md and OUT/table.json. Checkpoints
are chosen on validation inside each run; test accuracy is only reported.

`--parallel N` runs N seeds at once, each on one thread (OMP_NUM_THREADS=1): the tiny model's matrices are
too small for two threads to pay off, and two 2-thread processes on 2 cores stall each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs import mean_sd, parallel_map, run_logged, write_table
from reftune.train.report import LABELS


def aggregate(out: Path, seeds: list[int]) -> dict:
    per_model: dict[str, dict[str, list[float]]] = {}
    for s in seeds:
        path = out / f"seed-{s}" / "results.json"
        if not path.is_file():
            continue
        for key, res in json.loads(path.read_text()).items():
            model, split = key.split("/")
            per_model.setdefault(model, {}).setdefault(split, []).append(100 * res["accuracy"])
    return per_model


def table(per_model: dict) -> str:
    def cell(xs: list[float]) -> str:
        return f"{mean_sd(xs)} (n={len(xs)})" if xs else "–"

    lines = ["| model | val acc % | test acc % |", "|---|---|---|"]
    for model in [m for m in LABELS if m in per_model]:
        lines.append(f"| {LABELS[model]} | {cell(per_model[model].get('val', []))} | {cell(per_model[model].get('test', []))} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/paper")
    p.add_argument("--parallel", type=int, default=1, help="seeds run at once (each single-threaded when > 1)")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out)
    if not args.aggregate_only:
        out.mkdir(parents=True, exist_ok=True)

        def run(seed: int) -> int:
            run_dir = out / f"seed-{seed}"
            resume = ["--resume"] if run_dir.exists() else []
            return run_logged(["run", f"out_dir={run_dir}", f"seed={seed}", *args.overrides, *resume],
                              out / f"seed-{seed}.log", threads=1 if args.parallel > 1 else None)

        failed = [s for s, rc in zip(args.seeds, parallel_map(run, args.seeds, args.parallel)) if rc]
        if failed:
            print(f"seed(s) {failed} failed; see their logs in {out}", file=sys.stderr)
            return 1
    per_model = aggregate(out, args.seeds)
    md = table(per_model)
    write_table(out, md, per_model)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
