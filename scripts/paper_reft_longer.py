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

import yaml

from jobs import parallel_map, run_logged


def job_config(run: Path, steps: int, eval_every: int) -> dict:
    """The `reftune rl` config of the longer stage: the run's data, model shape, RL and evaluation settings."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rl = {**cfg["rl"], "steps": steps, "eval_every": eval_every, "use_extra": True}
    return {"data": cfg["data"], "model": {**cfg["model"], "name_or_path": str(run / "warmup" / "last")},
            "rl": rl, "eval": cfg["eval"], "precision": cfg["precision"], "seed": cfg["seed"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (each on one thread)")
    args = p.parse_args()
    runs = [args.root / f"n{n}" / f"seed-{s}" for n in args.sizes for s in args.seeds]
    runs = [r for r in runs if (r / "warmup" / "last").is_dir() or print(f"skipped {r}: no warm-up", file=sys.stderr)]

    def one(run: Path) -> int:
        name = f"reft_extra_x{args.steps}"
        out = run / name
        if (out / "results.json").is_file() and "rl/test" in yaml.safe_load((out / "results.json").read_text()):
            return 0
        (run / f"{name}.yaml").write_text(yaml.safe_dump({**job_config(run, args.steps, args.eval_every),
                                                          "out_dir": str(out)}, sort_keys=False))
        resume = ["--resume"] if (out / "config.yaml").exists() else []
        return run_logged(["rl", "-c", str(run / f"{name}.yaml"), *resume], run / f"{name}.log", threads=1)

    failed = [r for r, rc in zip(runs, parallel_map(one, runs, args.parallel)) if rc]
    for r in failed:
        print(f"failed: {r}; see its reft_extra_x{args.steps}.log", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
