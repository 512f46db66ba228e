"""The self-training rows of issue 15's table: offline self-training and expert iteration (`reftune selftrain`) from
each `make paper_long` run's warm-up, on that run's data, so they sit in the same table as SFT and ReFT.

    python scripts/paper_selftrain.py runs/paper_long --sizes 100 --seeds 0 1 2 [--parallel 1]

For each OUT/n<N>/seed-S with a finished warm-up it runs, in OUT/n<N>/seed-S/selftrain-r<R>:
- R = 1, offline self-training (ReFT's baseline): `--samples` (default 100) solutions per annotated question from
  the warm-up, up to 10 distinct correct ones kept beside the gold CoT, then SFT from the warm-up;
- R = `--rounds` (default 3), expert iteration (Havrilla et al. 2024; STaR): the same sampling budget in R rounds
  (samples / R per question per round, each round sampling from the previous round's chosen model, solutions
  pooled), each round's SFT from the warm-up.
The sampling budget is the ReFT rows' (about 100 samples per annotated question). SFT: the run's own SFT settings
with `--sft-epochs` epochs (default 8; 0: the SFT baseline's own 30 epochs, validation every 2, patience 4, into
selftrain-r<R>-sftrun), validation every epoch, patience 3: the augmented set is several times the
gold one. Every choice (epoch, round) is made on validation; test is only reported. Seeds: `seed=S` as the run.
Resumable: a finished job is skipped, an unfinished one resumed. `scripts/paper_long.py` reads the results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs import add_run_args, from_warmup, parallel_map, run_job, warmup_runs


def job_config(run: Path, sft_epochs: int) -> dict:
    """The selftrain config fields taken from the run: its data, model shape, SFT and evaluation settings;
    sft_epochs = 0: the SFT baseline's own schedule (epochs, validation, patience) unchanged."""
    shared, cfg = from_warmup(run)
    short = {"epochs": sft_epochs, "eval_every_epochs": 1, "patience": 3} if sft_epochs else {}
    return {**shared, "sft": {**cfg["sft"], **short}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    p.add_argument("--samples", type=int, default=100, help="sampled solutions per annotated question, all rounds together")
    p.add_argument("--rounds", type=int, default=3, help="expert iteration's rounds (offline self-training is 1)")
    p.add_argument("--sft-epochs", type=int, default=8, help="0: the SFT baseline's own schedule, into "
                   "selftrain-r<R>-sftrun (a row of its own)")
    args = p.parse_args()
    jobs = [(run, rounds) for run in warmup_runs(args.root, args.sizes, args.seeds) for rounds in sorted({1, args.rounds})]

    def name(rounds: int) -> str:
        return f"selftrain-r{rounds}" + ("" if args.sft_epochs else "-sftrun")

    def one(job: tuple[Path, int]) -> int:
        run, rounds = job
        cfg = {**job_config(run, args.sft_epochs), "selftrain": {"num_samples": args.samples // rounds, "rounds": rounds}}
        return run_job("selftrain", cfg, run / name(rounds), "selftrain/test")

    failed = [j for j, rc in zip(jobs, parallel_map(one, jobs, args.parallel)) if rc]
    for run, rounds in failed:
        print(f"failed: {run} rounds={rounds}; see {run}/{name(rounds)}.log", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
