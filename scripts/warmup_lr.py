"""The warm-up's learning rate against the base's accuracy, on validation only (issue 15 probe).

    python scripts/warmup_lr.py --base runs/base/last --out runs/warmup_lr --lrs 1e-5 3e-5 1e-4 3e-4 \\
        --seeds 0 1 2 --parallel 2 [key=value overrides for every command, e.g. data.n_annotated=100]

For each learning rate and seed, `reftune sft` from the base for `--epochs` epochs with its own schedule (linear
warm-up, decay to 0 at the end: what `reftune run warmup.schedule=own warmup.lr=LR` trains), validation after every
epoch; and the base itself on validation (`reftune eval`). No test split is read. Writes OUT/table.md and
OUT/table.json: validation accuracy after each epoch, mean ± sd over seeds, next to the base's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs import for_command, mean_sd, parallel_map, run_logged


def val_by_epoch(run: Path) -> dict[int, float]:
    """epoch -> validation accuracy, from the run's metrics.jsonl (the last record of an epoch counts)."""
    path = run / "metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {int(r["epoch"]): r["val_accuracy"] for r in recs if "val_accuracy" in r and "epoch" in r}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base model's checkpoint")
    p.add_argument("--out", default="runs/warmup_lr")
    p.add_argument("--lrs", nargs="+", default=["1e-5", "3e-5", "1e-4", "3e-4"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (each single-threaded when > 1)")
    p.add_argument("overrides", nargs="*", help="key=value for every command (data.*, sft.*, eval.*)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.parallel > 1 else None
    data = [*for_command("eval", args.overrides), "data.n_test=0"]  # validation only: no test split is built

    def job(key) -> int:
        lr, seed = key
        if key == ("base", 0):
            if (out / "base" / "results.json").is_file():
                return 0
            return run_logged(["eval", f"out_dir={out / 'base'}", f"model.name_or_path={args.base}", "eval.split=val",
                               *data], out / "base.log", threads)
        run = out / f"lr{lr}" / f"seed-{seed}"
        if args.epochs in val_by_epoch(run):
            return 0
        return run_logged(["sft", *(["--resume"] if (run / "config.yaml").is_file() else []), f"out_dir={run}",
                           f"seed={seed}", f"model.name_or_path={args.base}", *for_command("sft", args.overrides),
                           "data.n_test=0", f"sft.epochs={args.epochs}", f"sft.lr={lr}", "sft.patience=0",
                           "sft.eval_every_epochs=1"], out / f"lr{lr}-seed-{seed}.log", threads)

    keys = [("base", 0)] + [(lr, s) for lr in args.lrs for s in args.seeds]
    codes = parallel_map(job, keys, args.parallel)
    if any(codes):
        print(f"warmup_lr: {sum(1 for c in codes if c)} job(s) failed; see {out}/*.log", file=sys.stderr)
    base = json.loads((out / "base" / "results.json").read_text())["accuracy"] if (out / "base" / "results.json").is_file() else None
    epochs = list(range(1, args.epochs + 1))
    rows = [f"Validation accuracy % after each epoch of the warm-up's own schedule (mean ± sd over seeds "
            f"{', '.join(map(str, args.seeds))}); the base model: {100 * base:.1f} %." if base is not None else "",
            "", "| peak lr | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
    table = {"base": base, "lrs": {}}
    for lr in args.lrs:
        curves = {s: val_by_epoch(out / f"lr{lr}" / f"seed-{s}") for s in args.seeds}
        cells = [[100 * c[e] for c in curves.values() if e in c] for e in epochs]
        rows.append(f"| {lr} | " + " | ".join(mean_sd(v) for v in cells) + " |")
        table["lrs"][lr] = {str(s): c for s, c in curves.items()}
    (out / "table.md").write_text("\n".join(rows) + "\n")
    (out / "table.json").write_text(json.dumps(table, indent=2))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
