"""Variants of the RL stage side by side on the embedded default, at equal rollout tokens and equal wall-clock.

    python scripts/compare_rl.py --preset estimators --warmups runs/paper --seeds 0 1 2 --out runs/estimators \\
        --parallel 2 [key=value overrides for every RL run]

Presets (scripts/presets.yaml): `estimators` = PPO-ReFT vs GRPO vs RLOO vs REINFORCE++ (each with its usual KL
placement); `precision` = fp32 vs bf16 vs fp16 (training / rollout precision), with the sampler-trainer
log-prob mismatch; `reft` = PPO-ReFT with the paper table's settings (32 x 4 samples, 2 epochs x 4 minibatches,
lr 3e-5) and with 64 questions x 8 samples, one pass in 2 minibatches, lr 1e-4 (fewer, less noisy updates);
`r3` = R^3 mixed / staged / adaptive (AdaBack) vs ReFT on a long-chain task (the table adds each run's training
accuracy per start state, first vs last iterations); `whitening` = group estimators with and without batch
whitening. `--variants` picks a subset.

For each seed S and variant V, one `reftune rl` run starts from the same warm-up checkpoint
(WARMUPS/seed-S/sft/epoch-K, written by `make paper`; `--start RELPATH` picks another checkpoint of the seed's
run, e.g. the SFT baseline sft/best) on the same training questions, with the same number of
samples per iteration; only the variant's settings differ. Each run logs its rollout tokens and seconds per
iteration, validation accuracy every `rl.eval_every` iterations, and keeps its weights every
`rl.snapshot_every` iterations.

Budgets: T = the fewest rollout tokens any run generated in total, W = the least training wall-clock
(rollout + update seconds, evaluation excluded) any run spent. For each run, the last snapshot within the
budget is evaluated greedily on the test split (no choice is made on test: the snapshot is fixed by the
budget alone); its validation accuracy comes from the run's own log. Writes OUT/table.md, OUT/table.json and
OUT/curves.png (validation accuracy against rollout tokens and against wall-clock, mean ± sd over seeds,
the warm-up at 0).

`--parallel N` runs N jobs at once, each on one thread; wall-clock is then measured under the same
contention for every run (each job shares the machine with N-1 others of the same kind).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from jobs import for_command, load_presets, mean_sd, parallel_map, run_logged, write_table

PRESETS, DEFAULT_VARIANTS = load_presets()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def curve(run: Path) -> list[dict]:
    """Per evaluated iteration: step, cumulative rollout tokens and training seconds, validation accuracy, and
    the sampler-trainer log-prob mismatch so far (mean of the per-iteration means, max of the maxima)."""
    tokens = seconds = 0.0
    mismatch: list[float] = []
    mismatch_max = 0.0
    at: dict[int, tuple[float, float, float, float]] = {}
    out = []
    for r in read_jsonl(run / "metrics.jsonl"):
        if "rollout_tokens" in r:
            tokens += r["rollout_tokens"]
            seconds += r["rollout_s"] + r["update_s"]
            mismatch.append(r.get("logp_mismatch_mean", float("nan")))
            mismatch_max = max(mismatch_max, r.get("logp_mismatch_max", float("nan")))
            at[r["step"]] = (tokens, seconds, sum(mismatch) / len(mismatch), mismatch_max)
        elif "val_accuracy" in r and r["step"] in at:
            t, sec, mm, mx = at[r["step"]]
            out.append({"step": r["step"], "tokens": t, "seconds": sec, "val": r["val_accuracy"],
                        "mismatch_mean": mm, "mismatch_max": mx})
    return out


def by_start_state(run: Path, window: int) -> dict[str, list[float]]:
    """Sampled (training) accuracy per start state over the run's first and last `window` iterations: "k=<k>" (steps
    of the demonstration given) -> [first, last], each the mean of `acc_k/<k>` over the iterations that drew k
    (None: none did; a run without a curriculum starts every sample at k = 0: its `accuracy`). Also `start_k` (mean
    k drawn), for the adaptive schedule `adaptive_max_k` (mean upper end of the questions' ranges), and `kl` (the
    KL to the reference per sequence)."""
    its = [r for r in read_jsonl(run / "metrics.jsonl") if "rollout_tokens" in r]
    its = list({r["step"]: r for r in its}.values())  # a resumed run may repeat a step: its last record counts
    first, last = its[:window], its[-window:]
    keys = sorted({k for r in its for k in r if k.startswith("acc_k/")}, key=lambda k: int(k.split("/")[1])) or ["accuracy"]
    out = {}
    for key in keys + ["start_k", "adaptive_max_k", "kl"]:
        pair = [[r[key] for r in part if key in r] for part in (first, last)]
        if any(pair):  # None at an end where no iteration drew k (e.g. staged: near the answer first, the question last)
            out[key.replace("acc_k/", "k=").replace("accuracy", "k=0")] = [statistics.mean(v) if v else None for v in pair]
    return out


def last_within(points: list[dict], key: str, budget: float) -> dict | None:
    """The last evaluated point whose cumulative `key` is within the budget (None: none is)."""
    inside = [p for p in points if p[key] <= budget * (1 + 1e-9)]
    return inside[-1] if inside else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmups", default="runs/paper", help="dir with seed-S/sft/epoch-K warm-up checkpoints")
    p.add_argument("--warmup-epoch", type=int, default=2)
    p.add_argument("--start", metavar="RELPATH", help="RL starts from WARMUPS/seed-S/RELPATH instead of the "
                   "warm-up sft/epoch-K (also the KL reference); its curve point at 0 comes from an --also row "
                   "with the same RELPATH")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", choices=list(PRESETS), default="estimators")
    p.add_argument("--variants", nargs="+", help="a subset of the preset's variants (default: DEFAULT_VARIANTS)")
    p.add_argument("--out", default=None, help="default: runs/<preset>")
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (each single-threaded when > 1)")
    p.add_argument("--start-window", type=int, default=8, help="iterations at each end of a run for the "
                   "sampled accuracy per start state (curriculum runs)")
    p.add_argument("--test-best-only", action="store_true", help="score only each run's best-validation checkpoint "
                   "on test (the budget columns keep their validation accuracy)")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--make-warmups", metavar="BASE", help="train missing warm-ups: `reftune sft` from BASE "
                   "(snapshot_epoch=K, continued to the best validation epoch: the SFT baseline sft/best)")
    p.add_argument("--warmup-schedule", choices=["snapshot", "own"], default="snapshot",
                   help="with --make-warmups: snapshot = the warm-up is the SFT run's epoch-K snapshot (sft/epoch-K), "
                   "its lr still near the peak; own = a separate K-epoch SFT run whose lr decays to 0 (warmup/last, "
                   "as `reftune run warmup.schedule=own`) and the SFT baseline a run of its own (sft/best)")
    p.add_argument("--also", action="append", default=[], metavar="LABEL=RELPATH",
                   help="extra rows: WARMUPS/seed-S/RELPATH evaluated on val and test, e.g. 'SFT baseline=sft/best' "
                   "(an absolute path is the same model for every seed, e.g. the base)")
    p.add_argument("overrides", nargs="*", help="key=value for every command (data.*, model.*, rl.*, sft.*, ...)")
    args = p.parse_args()
    if args.variants:  # `--variants a b key=value ...`: nargs="+" also swallows the overrides that follow it
        args.overrides = args.overrides + [v for v in args.variants if "=" in v]
        args.variants = [v for v in args.variants if "=" not in v]
    variants = PRESETS[args.preset]
    args.variants = args.variants or DEFAULT_VARIANTS[args.preset]
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)} for preset {args.preset} (have: {', '.join(variants)})")
    out, warmups = Path(args.out or f"runs/{args.preset}"), Path(args.warmups)
    out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.parallel > 1 else None
    runs = {(e, s): out / e / f"seed-{s}" for e in args.variants for s in args.seeds}

    own = args.warmup_schedule == "own"
    start_rel = args.start or ("warmup/last" if own else f"sft/epoch-{args.warmup_epoch}")

    def warmup(s: int) -> Path:
        return warmups / f"seed-{s}" / start_rel

    def sft_run(s: int, name: str, settings: list[str]) -> int:
        """`reftune sft` from the base into WARMUPS/seed-S/NAME (resumed when started), unless finished."""
        run_dir = warmups / f"seed-{s}" / name
        if "sft/test" in json.loads(res.read_text() if (res := run_dir / "results.json").is_file() else "{}"):
            return 0  # finished: results.json's test entry is the command's last write
        resume = ["--resume"] if (run_dir / "config.yaml").is_file() else []
        return run_logged(["sft", *resume, f"out_dir={run_dir}", f"seed={s}", f"model.name_or_path={args.make_warmups}",
                           *for_command("sft", args.overrides), *settings], warmups / f"seed-{s}-{name}.log", threads)

    def make_warmup(s: int) -> int:
        if not own:
            sft_dir = warmups / f"seed-{s}" / "sft"
            if (sft_dir / f"epoch-{args.warmup_epoch}" / "config.json").is_file() and (sft_dir / "best" / "config.json").is_file():
                return 0
            return sft_run(s, "sft", [f"snapshot_epoch={args.warmup_epoch}"])
        # the warm-up's own schedule: warmup_epochs at sft.lr decaying to 0, never stopped early
        return sft_run(s, "warmup", [f"sft.epochs={args.warmup_epoch}", "sft.patience=0",
                                     f"sft.eval_every_epochs={args.warmup_epoch}"]) or sft_run(s, "sft", [])

    if args.make_warmups and not args.aggregate_only:
        parallel_map(make_warmup, args.seeds, args.parallel)
    missing = [str(warmup(s)) for s in args.seeds if not (warmup(s) / "config.json").is_file()]
    if missing:
        print(f"compare_rl: no warm-up checkpoint at {', '.join(missing)}; run `make paper` first", file=sys.stderr)
        return 2

    # weights kept at every validation point, so each budget's point (a validated iteration) has a test checkpoint
    eval_every = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("rl.eval_every=")), "10")

    def train(key) -> int:
        e, s = key
        run = runs[key]
        if (run / "results.done").is_file():
            return 0
        resume = ["--resume"] if (run / "last" / "config.json").is_file() else []
        opts = [f"{k}={v}" for k, v in variants[e][1].items()]
        cmd = ["rl", *resume, f"out_dir={run}", f"seed={s}", f"model.name_or_path={warmup(s)}",
               f"rl.snapshot_every={eval_every}", *opts, *for_command("rl", args.overrides)]
        run.mkdir(parents=True, exist_ok=True)
        rc = run_logged(cmd, out / f"{e}-seed-{s}.log", threads)
        if rc == 0:
            (run / "results.done").write_text("ok\n")
        return rc

    if not args.aggregate_only:
        codes = parallel_map(train, list(runs), args.parallel)
        if any(codes):
            print(f"compare_rl: {sum(1 for c in codes if c)} run(s) failed; see {out}/*.log", file=sys.stderr)

    curves = {k: curve(r) for k, r in runs.items() if (r / "results.done").is_file()}
    curves = {k: c for k, c in curves.items() if c}
    if not curves:
        print("compare_rl: no finished run", file=sys.stderr)
        return 1
    T = min(c[-1]["tokens"] for c in curves.values())
    W = min(c[-1]["seconds"] for c in curves.values())
    points = {k: {"tokens": last_within(c, "tokens", T), "seconds": last_within(c, "seconds", W)} for k, c in curves.items()}

    def accuracy(model: Path, split: str, res: Path, log: Path, seed: int) -> float | None:
        """Greedy accuracy of `model` on `split`, cached in `res` (results.json of `reftune eval`)."""
        if not res.is_file() and not args.aggregate_only:
            run_logged(["eval", *(["--resume"] if res.parent.exists() else []), f"out_dir={res.parent}", f"model.name_or_path={model}", f"eval.split={split}",
                        f"seed={seed}", *for_command("eval", args.overrides)], log, threads)
        return json.loads(res.read_text())["accuracy"] if res.is_file() else None

    def test_accuracy(key, budget) -> float | None:
        """Test accuracy of run `key` at a budget point ("tokens" / "seconds"), or of its best-validation checkpoint."""
        run, log = runs[key], out / f"{key[0]}-seed-{key[1]}.log"
        if budget == "best":
            return accuracy(run / "best", "test", run / "test-best" / "results.json", log, key[1])
        point = points[key][budget]
        if point is None:
            return None
        step = point["step"]
        return accuracy(run / f"step-{step}", "test", run / f"test-step-{step}" / "results.json", log, key[1])

    jobs = [(k, b) for k in points for b in (("best",) if args.test_best_only else ("tokens", "seconds", "best"))]
    accs = dict(zip(jobs, parallel_map(lambda kb: test_accuracy(*kb), jobs, args.parallel)))
    also = [a.split("=", 1) for a in args.also]
    also_jobs = [(label, rel, s, split) for label, rel in also for s in args.seeds for split in ("val", "test")]
    also_accs = dict(zip(also_jobs, parallel_map(
        lambda j: accuracy(warmups / f"seed-{j[2]}" / j[1], j[3], out / "also" / j[1].replace("/", "_") / f"seed-{j[2]}-{j[3]}"
                           / "results.json", out / "also.log", j[2]), also_jobs, args.parallel)))

    rows, data = [], {"tokens_budget": T, "seconds_budget": W, "runs": {}}
    rows.append(f"Budgets: T = {T:,.0f} rollout tokens, W = {W:,.0f} s of training (rollout + update) per run. "
                f"Mean ± sd over seeds {', '.join(map(str, args.seeds))}; accuracy in %.\n")
    rows.append("| variant | settings | val @T | test @T | val @W | test @W | test, best-val checkpoint (val; iteration) "
                "| iterations @T ; @W | tokens per iteration | s per iteration "
                "| mean / max \\|Δ log p\\| sampler vs trainer |")
    rows.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, rel in also:
        val = [100 * also_accs[(label, rel, s, "val")] for s in args.seeds if also_accs[(label, rel, s, "val")] is not None]
        test = [100 * also_accs[(label, rel, s, "test")] for s in args.seeds if also_accs[(label, rel, s, "test")] is not None]
        rows.append(f"| {label} | `{rel}` | {mean_sd(val)} | {mean_sd(test)} | | | | | | | |")
        data.setdefault("also", {})[label] = {"path": rel, "val": val, "test": test}
    for e in args.variants:
        keys = [k for k in curves if k[0] == e]
        if not keys:
            continue
        col = {b: {"val": [100 * points[k][b]["val"] for k in keys if points[k][b]],
                   "test": [100 * accs[(k, b)] for k in keys if accs.get((k, b)) is not None],
                   "step": [points[k][b]["step"] for k in keys if points[k][b]]} for b in ("tokens", "seconds")}
        last = [curves[k][-1] for k in keys]
        per_it_tokens = statistics.mean(c["tokens"] / c["step"] for c in last)
        per_it_s = statistics.mean(c["seconds"] / c["step"] for c in last)
        settings = " ".join(f"{k}={v}" for k, v in variants[e][1].items())
        mismatch = f"{statistics.mean(c['mismatch_mean'] for c in last):.2g} / {max(c['mismatch_max'] for c in last):.2g}"
        steps = f"{'/'.join(map(str, col['tokens']['step']))} ; {'/'.join(map(str, col['seconds']['step']))}"
        best = [100 * accs[(k, "best")] for k in keys if accs.get((k, "best")) is not None]
        best_val = [100 * max(p["val"] for p in curves[k]) for k in keys]
        best_step = [max(curves[k], key=lambda p: (p["val"], -p["step"]))["step"] for k in keys]  # the first best
        rows.append(f"| {variants[e][0]} | {settings} | {mean_sd(col['tokens']['val'])} | {mean_sd(col['tokens']['test'])} | "
                    f"{mean_sd(col['seconds']['val'])} | {mean_sd(col['seconds']['test'])} | "
                    f"{mean_sd(best)} ({mean_sd(best_val)}; it. {'/'.join(map(str, best_step))}) | {steps} | "
                    f"{per_it_tokens:,.0f} | {per_it_s:.1f} | {mismatch} |")
        data["runs"][e] = {"seeds": [k[1] for k in keys], "at_tokens": col["tokens"], "at_seconds": col["seconds"],
                           "best_val_checkpoint_test": best, "best_val_step": best_step,
                           "curves": {str(k[1]): curves[k] for k in keys}}
    starts = {k: by_start_state(runs[k], args.start_window) for k in curves}
    if starts:  # how the training samples fared, by start state (a curriculum's), and how far the policy moved
        rows += ["", f"Training samples, mean over the first → last {args.start_window} iterations, mean over seeds: "
                 "accuracy (%) by start state k (demonstration steps given; without a curriculum k = 0); start_k: mean k "
                 "drawn; adaptive_max_k: mean upper end of the questions' ranges; kl: KL to the reference per "
                 "sequence (nats).", ""]
        cols = sorted({c for v in starts.values() for c in v}, key=lambda c: (not c.startswith("k="), int(c[2:]) if c.startswith("k=") else 0, c))
        rows += ["| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for e in args.variants:
            keys = [k for k in starts if k[0] == e]
            cells = []
            for c in cols:
                pairs = [starts[k][c] for k in keys if c in starts[k]]
                scale = 1 if c in ("start_k", "adaptive_max_k", "kl") else 100
                ends = [[p[i] for p in pairs if p[i] is not None] for i in (0, 1)]
                cells.append(" → ".join(f"{statistics.mean(v) * scale:.{0 if scale == 100 else 1}f}" if v else "–"
                                        for v in ends) if pairs else "")
            if keys:
                rows.append(f"| {variants[e][0]} | " + " | ".join(cells) + " |")
                data["runs"][e]["by_start_state"] = {str(k[1]): starts[k] for k in keys}
    write_table(out, "\n".join(rows), data)
    start = {}  # the warm-up's validation accuracy per seed: the curves' point at 0
    for s in args.seeds:
        res = warmups / f"seed-{s}" / "results.json"
        if not args.start and res.is_file() and "warmup/val" in (r := json.loads(res.read_text())):
            start[s] = r["warmup/val"]["accuracy"]
        elif (label := next((lab for lab, rel in also if rel == start_rel), None)) is not None:
            acc = also_accs.get((label, start_rel, s, "val"))
            if acc is not None:
                start[s] = acc
    plot(curves, start, args, {v: lab for v, (lab, _) in variants.items()}, out / "curves.png")
    print("\n".join(rows))
    return 0


def plot(curves: dict, start: dict[int, float], args, labels: dict[str, str], path: Path) -> None:
    """Validation accuracy against rollout tokens and training seconds, mean ± sd over seeds; start: the
    warm-up's accuracy per seed (plotted at 0), may be empty."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in ((axes[0], "tokens", "rollout tokens"), (axes[1], "seconds", "training wall-clock (s)")):
        for e in args.variants:
            keys = [k for k in curves if k[0] == e]
            if not keys:
                continue
            n = min(len(curves[k]) for k in keys)
            xs = [0.0] + [statistics.mean(curves[k][i][key] for k in keys) for i in range(n)]
            ys = [[100 * start[k[1]] for k in keys if k[1] in start]] + [[100 * curves[k][i]["val"] for k in keys] for i in range(n)]
            if not ys[0]:
                xs, ys = xs[1:], ys[1:]
            m = [statistics.mean(y) for y in ys]
            sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            ax.plot(xs, m, marker="o", label=labels[e])
            ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.15)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].legend()
    fig.suptitle(f"RL from {args.start or 'the warm-up model'}, seeds {', '.join(map(str, args.seeds))} (mean ± sd)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
