"""Issue 15's lead: ReFT with the answer-only questions, run longer than `make paper_long` runs it.

    python scripts/paper_reft_longer.py runs/paper_long --sizes 100 --seeds 0 1 2 --steps 60 [--eval-every 4]

For each OUT/n<N>/seed-S with a finished warm-up, `reftune rl` from that warm-up with the run's own data, RL and
evaluation settings, rl.use_extra=true (the 4,000 answer-only questions in the pool, as the run's
reft_extra stage) and `--steps` iterations instead of the run's rl.steps, into OUT/n<N>/seed-S/reft_extra_x<steps>.
The checkpoint is chosen on validation (every `--eval-every` iterations); test is only reported. Resumable (an
unfinished job is resumed, a finished one skipped). `scripts/paper_long.py` reads the results as the row
"(d) ... <steps> iterations".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs import add_run_args, from_warmup, parallel_map, run_job, warmup_runs


def job_config(run: Path, steps: int, eval_every: int) -> dict:
    """The `reftune rl` config of the longer stage: the run's data, model shape, RL and evaluation settings."""
    shared, cfg = from_warmup(run)
    return {**shared, "rl": {**cfg["rl"], "steps": steps, "eval_every": eval_every, "use_extra": True}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=4)
    args = p.parse_args()
    runs = warmup_runs(args.root, args.sizes, args.seeds)

    def one(run: Path) -> int:
        return run_job("rl", job_config(run, args.steps, args.eval_every), run / f"reft_extra_x{args.steps}", "rl/test")

    failed = [r for r, rc in zip(runs, parallel_map(one, runs, args.parallel)) if rc]
    for r in failed:
        print(f"failed: {r}; see its reft_extra_x{args.steps}.log", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
