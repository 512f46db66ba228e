"""The ReFT paper's Tables 4 and 2, in shape, on the embedded default: inference-time scaling and baselines.

    python scripts/inference_table.py --runs runs/paper --seeds 0 1 2 --out runs/inference --parallel 2 \\
        [key=value overrides for every command: the data settings of the paper runs]

From each finished `make paper` run (RUNS/seed-S: the warm-up `sft/epoch-K`, the SFT baseline `sft/best`
and ReFT `reft/best`, all chosen on validation), for every seed:
  Table 4 — for SFT and ReFT: a verifier trained on that model's own graded samples of the training
            questions (validated on the validation questions), then one sampling pass of k solutions per test
            question: greedy, voting@k, rerank@k (the verifier's pick), pass@k.
  Table 2 — the paper's self-training baselines from the same warm-up model, greedy on test:
            offline self-training (`reftune selftrain`: k samples per training question, up to 10 distinct
            correct ones + the gold CoT, SFT again, best validation epoch) and online self-training (the RL
            loop's rollouts, NLL on the correct samples + gold CoTs, no KL; best validation iteration).
The SFT / ReFT greedy numbers come from the same test subset as the rest of the table.
Writes OUT/table.md and OUT/table.json (mean ± sd over seeds) and each command's output under OUT/seed-S.
Checkpoints are never chosen on test; `--limit` (test questions) keeps the sampling pass affordable on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs import mean_sd, parallel_map, run_logged, write_table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/paper", help="dir with the paper runs seed-S/")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--warmup-epoch", type=int, default=2, help="the warm-up checkpoint is RUNS/seed-S/sft/epoch-K")
    p.add_argument("--out", default="runs/inference")
    p.add_argument("--k", type=int, default=16, help="samples per test question (voting@k, rerank@k, pass@k)")
    p.add_argument("--limit", type=int, default=500, help="first N test questions")
    p.add_argument("--verifier-samples", type=int, default=4, help="graded samples per question to train the verifier")
    p.add_argument("--selftrain-samples", type=int, default=8, help="offline self-training: samples per training question")
    p.add_argument("--selftrain-epochs", type=int, default=4, help="offline self-training: SFT epochs (best on validation)")
    p.add_argument("--online-steps", type=int, default=60, help="online self-training: RL-loop iterations (ReFT's default)")
    p.add_argument("--online-lr", type=float, default=3e-4, help="online self-training: lr (an NLL objective: the SFT lr)")
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (each single-threaded when > 1)")
    p.add_argument("--aggregate-only", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value for every command (data.*, eval.*)")
    args = p.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    threads = 1 if args.parallel > 1 else None
    missing = [str(runs / f"seed-{s}") for s in args.seeds if not (runs / f"seed-{s}" / "reft" / "best").is_dir()]
    if missing:
        print(f"inference_table: no finished paper run at {', '.join(missing)}; run `make paper` first", file=sys.stderr)
        return 2
    data = [o for o in args.overrides if o.startswith("data.")]
    test = ["eval.split=test", f"eval.limit={args.limit}", *args.overrides]

    def chain(job: tuple[int, str]) -> int:
        """One seed's commands for one row; each skipped when its output exists (resumable)."""
        s, row = job
        src, d = runs / f"seed-{s}", out / f"seed-{s}" / row
        log = out / f"seed-{s}-{row}.log"
        steps: list[tuple[Path, list[str]]] = []
        if row in ("sft", "reft"):
            model = src / row / "best"
            steps.append((d / "verifier" / "results.json",
                          ["verifier", f"out_dir={d / 'verifier'}", f"model.name_or_path={model}", f"seed={s}",
                           f"verifier.num_samples={args.verifier_samples}", *data]))
            steps.append((d / "eval" / "results.json",
                          ["eval", f"out_dir={d / 'eval'}", f"model.name_or_path={model}", f"seed={s}",
                           f"eval.num_samples={args.k}", f"eval.verifier={d / 'verifier' / 'best'}", *test]))
        else:
            warmup = src / "sft" / f"epoch-{args.warmup_epoch}"
            if row == "offline_st":
                steps.append((d / "train" / "best" / "config.json",
                               ["selftrain", f"out_dir={d / 'train'}", f"model.name_or_path={warmup}", f"seed={s}",
                                f"selftrain.num_samples={args.selftrain_samples}",
                                f"sft.epochs={args.selftrain_epochs}", "sft.eval_every_epochs=1", *data]))
            else:
                steps.append((d / "train" / "best" / "config.json",
                              ["rl", f"out_dir={d / 'train'}", f"model.name_or_path={warmup}", f"seed={s}",
                               "rl.objective=online_self_training", f"rl.steps={args.online_steps}",
                               f"rl.lr={args.online_lr}", *data]))
            steps.append((d / "eval" / "results.json",
                          ["eval", f"out_dir={d / 'eval'}", f"model.name_or_path={d / 'train' / 'best'}", f"seed={s}",
                           *test]))
        for done, cmd in steps:
            if done.exists() or args.aggregate_only:
                continue
            run_dir = Path(next(c for c in cmd if c.startswith("out_dir="))[len("out_dir="):])
            resume = ["--resume"] if (run_dir / "config.yaml").exists() else []
            rc = run_logged([cmd[0], *resume, *cmd[1:]], log, threads)
            if rc:
                print(f"inference_table: `reftune {cmd[0]}` failed for seed {s} ({row}); see {log}", file=sys.stderr)
                return rc
        return 0

    rows = ["sft", "reft", "offline_st", "online_st"]
    codes = parallel_map(chain, [(s, r) for s in args.seeds for r in rows], args.parallel)  # seed by seed: partial results are whole seeds
    result: dict[str, dict[str, list[float]]] = {}
    for s in args.seeds:
        for row in rows:
            res = out / f"seed-{s}" / row / "eval" / "results.json"
            if not res.is_file():
                continue
            r = json.loads(res.read_text())
            cols = result.setdefault(row, {})
            cols.setdefault("greedy", []).append(100 * r["accuracy"])
            for name, value in (r.get("sampling") or {}).items():
                if name.startswith(("voting@", "rerank@")) or name == f"pass@{args.k}":
                    cols.setdefault(name.split("@")[0], []).append(100 * value)
    labels = {"sft": "SFT (best val epoch)", "reft": "ReFT (PPO, best val iteration)",
              "offline_st": "Offline self-training", "online_st": "Online self-training"}
    n = {row: len(cols["greedy"]) for row, cols in result.items()}
    lines = [f"Test accuracy %, first {args.limit} test questions, mean ± sd over seeds; k = {args.k} samples at "
             f"temperature 1.\n",
             f"| model | greedy | voting@{args.k} | rerank@{args.k} | pass@{args.k} | seeds |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row in result:
            c = result[row]
            lines.append(f"| {labels[row]} | {mean_sd(c['greedy'])} | {mean_sd(c.get('voting', []))} | "
                         f"{mean_sd(c.get('rerank', []))} | {mean_sd(c.get('pass', []))} | {n[row]} |")
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, "\n".join(lines), {"k": args.k, "limit": args.limit, "seeds": args.seeds, "accuracy": result})
    print("\n".join(lines))
    return 1 if any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
