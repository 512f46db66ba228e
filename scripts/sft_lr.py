"""SFT from the base at several peak learning rates, chosen on validation (issue 15).

    # the warm-up: a short run with its own schedule, validation only (no test split is built)
    python scripts/sft_lr.py --base runs/base/last --out runs/sft_lr/warmup --lrs 1e-5 3e-5 1e-4 3e-4 \\
        --epochs 2 --seeds 0 1 2 --parallel 2 [key=value overrides for every command, e.g. data.n_annotated=100]
    # the SFT baseline: up to 30 epochs, early stopping, the best validation epoch also scored on test
    python scripts/sft_lr.py ... --epochs 30 --patience 4 --eval-every 2 --test

For each learning rate and seed, `reftune sft` from the base for `--epochs` epochs (linear warm-up, decay to 0 at
the last epoch: with --epochs 2 what `reftune run warmup.schedule=own warmup.lr=LR` trains), validation every
`--eval-every` epochs, stopped after `--patience` evaluations without a better one (0: never), its best validation
epoch kept; and the base itself on validation (`reftune eval`). Writes OUT/table.md and OUT/table.json: per
learning rate, validation after each evaluated epoch (the first and last few in the table), the best validation
accuracy and, with --test, the test accuracy of that checkpoint; mean ± sd over seeds, next to the base's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs import for_command, mean_sd, parallel_map, run_logged, write_table
from reftune.train.logger import read_metrics


def val_by_epoch(run: Path) -> dict[int, float]:
    """epoch -> validation accuracy, from the run's metrics.jsonl (the last record of an epoch counts)."""
    return {int(r["epoch"]): r["val_accuracy"] for r in read_metrics(run) if "val_accuracy" in r and "epoch" in r}


def run_summary(run: Path) -> dict:
    """A run's validation curve, its best validation accuracy and epoch (the checkpoint `reftune sft` keeps:
    the first of the best) and that checkpoint's test accuracy (None without a test split or while unfinished)."""
    val = val_by_epoch(run)
    best_epoch = max(val, key=lambda e: (val[e], -e)) if val else None
    res = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    return {"val": val, "best_val": val.get(best_epoch), "best_epoch": best_epoch,
            "test": res["sft/test"]["accuracy"] if "sft/test" in res else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base model's checkpoint")
    p.add_argument("--out", default="runs/sft_lr")
    p.add_argument("--lrs", nargs="+", default=["1e-5", "3e-5", "1e-4", "3e-4"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--patience", type=int, default=0, help="sft.patience (0: run every epoch)")
    p.add_argument("--eval-every", type=int, default=1, help="sft.eval_every_epochs")
    p.add_argument("--test", action="store_true", help="build the test split and score each run's best checkpoint "
                   "on it (reported, never used for a choice)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (each single-threaded when > 1)")
    p.add_argument("overrides", nargs="*", help="key=value for every command (data.*, sft.*, eval.*)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.parallel > 1 else None
    no_test = [] if args.test else ["data.n_test=0"]  # validation only: no test split is built
    data = [*for_command("eval", args.overrides), *no_test]

    def job(key) -> int:
        lr, seed = key
        if key == ("base", 0):
            if (out / "base" / "results.json").is_file():
                return 0
            return run_logged(["eval", f"out_dir={out / 'base'}", f"model.name_or_path={args.base}", "eval.split=val",
                               *data], out / "base.log", threads)
        run = out / f"lr{lr}" / f"seed-{seed}"
        if (run / "results.json").is_file():
            return 0  # finished: `reftune sft` writes results.json last
        return run_logged(["sft", *(["--resume"] if (run / "config.yaml").is_file() else []), f"out_dir={run}",
                           f"seed={seed}", f"model.name_or_path={args.base}", *for_command("sft", args.overrides),
                           *no_test, f"sft.epochs={args.epochs}", f"sft.lr={lr}", f"sft.patience={args.patience}",
                           f"sft.eval_every_epochs={args.eval_every}"], out / f"lr{lr}-seed-{seed}.log", threads)

    keys = [("base", 0)] + [(lr, s) for lr in args.lrs for s in args.seeds]
    codes = parallel_map(job, keys, args.parallel)
    if any(codes):
        print(f"sft_lr: {sum(1 for c in codes if c)} job(s) failed; see {out}/*.log", file=sys.stderr)
    base = json.loads((out / "base" / "results.json").read_text())["accuracy"] if (out / "base" / "results.json").is_file() else None
    rows = [f"Validation accuracy % of SFT from the base by peak learning rate (mean ± sd over seeds "
            f"{', '.join(map(str, args.seeds))}); the base model: {100 * base:.1f} %." if base is not None else "", ""]
    table = {"base": base, "lrs": {}}
    per_lr = {lr: {s: run_summary(out / f"lr{lr}" / f"seed-{s}") for s in args.seeds} for lr in args.lrs}
    epochs = sorted({e for runs in per_lr.values() for r in runs.values() for e in r["val"]})
    shown = epochs if len(epochs) <= 6 else epochs[:3] + epochs[-3:]
    rows += ["| peak lr | " + " | ".join(f"epoch {e}" for e in shown) + " | best val (epoch) | test of the best |",
             "|---|" + "---|" * (len(shown) + 2)]
    for lr, runs in per_lr.items():
        cells = [mean_sd([100 * r["val"][e] for r in runs.values() if e in r["val"]]) for e in shown]
        best = mean_sd([100 * r["best_val"] for r in runs.values() if r["best_val"] is not None])
        at = "/".join(str(r["best_epoch"]) for r in runs.values() if r["best_epoch"] is not None)
        test = mean_sd([100 * r["test"] for r in runs.values() if r["test"] is not None])
        rows.append(f"| {lr} | " + " | ".join(cells) + f" | {best} ({at}) | {test} |")
        table["lrs"][lr] = {str(s): r for s, r in runs.items()}
    write_table(out, "\n".join(rows), table)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
