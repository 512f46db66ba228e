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
with `--sft-epochs` epochs (default 8), validation every epoch, patience 3: the augmented set is several times the
gold one. Every choice (epoch, round) is made on validation; test is only reported. Seeds: `seed=S` as the run.
Resumable: a finished job is skipped, an unfinished one resumed. `scripts/paper_long.py` reads the results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from jobs import parallel_map, run_logged


def job_config(run: Path, sft_epochs: int) -> dict:
    """The selftrain config fields taken from the run: its data, model shape, SFT and evaluation settings."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    sft = {**cfg["sft"], "epochs": sft_epochs, "eval_every_epochs": 1, "patience": 3}
    return {"data": cfg["data"], "model": {**cfg["model"], "name_or_path": str(run / "warmup" / "last")},
            "sft": sft, "eval": cfg["eval"], "precision": cfg["precision"], "seed": cfg["seed"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=100, help="sampled solutions per annotated question, all rounds together")
    p.add_argument("--rounds", type=int, default=3, help="expert iteration's rounds (offline self-training is 1)")
    p.add_argument("--sft-epochs", type=int, default=8)
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (each on one thread)")
    args = p.parse_args()
    jobs = []
    for n in args.sizes:
        for s in args.seeds:
            run = args.root / f"n{n}" / f"seed-{s}"
            if not (run / "warmup" / "last").is_dir():
                print(f"skipped {run}: no finished warm-up", file=sys.stderr)
                continue
            for rounds in sorted({1, args.rounds}):
                jobs.append((run, rounds))

    def one(job: tuple[Path, int]) -> int:
        run, rounds = job
        out = run / f"selftrain-r{rounds}"
        if (out / "results.json").is_file() and "selftrain/test" in yaml.safe_load((out / "results.json").read_text()):
            return 0
        cfg = {**job_config(run, args.sft_epochs), "out_dir": str(out),
               "selftrain": {"num_samples": args.samples // rounds, "rounds": rounds}}
        out.mkdir(parents=True, exist_ok=True)
        (out.parent / f"selftrain-r{rounds}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        resume = ["--resume"] if (out / "stages.json").exists() or (out / "config.yaml").exists() else []
        return run_logged(["selftrain", "-c", str(out.parent / f"selftrain-r{rounds}.yaml"), *resume],
                          out.parent / f"selftrain-r{rounds}.log", threads=1)

    failed = [j for j, rc in zip(jobs, parallel_map(one, jobs, args.parallel)) if rc]
    for run, rounds in failed:
        print(f"failed: {run} rounds={rounds}; see {run}/selftrain-r{rounds}.log", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
