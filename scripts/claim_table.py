"""Issue 15's summary: the best RL recipe against the SFT baseline by number of annotated questions, one table.

    python scripts/claim_table.py scripts/claim_rows.yaml --out runs/claim [--plot docs/claim_hybrid.png]

The rows come from runs that other targets made (`make paper_ptx`, `paper_ptx_pool_long`, `paper_ptx_pool_n100`,
`paper_ptx_pool_n500`), each a folder per seed; the spec file (scripts/claim_rows.yaml) names, per number of
annotated questions and model, the folder pattern ({s}: the seed) and the stage of its results.json that holds the
model (`reftune run`: base, warmup, sft, reft, ...; `reftune sft`: sft; `reftune rl`: rl), or with `checkpoint: last`
the stage's last validation record (a warm-up from `scripts/sft_lr.py`, whose results.json holds its best epoch
while RL starts from its last), or `candidates` (folders by name, e.g. by learning rate: the one with the best mean
validation accuracy is the row). Per row: validation and
test accuracy (mean ± sd over the seeds found), the paired difference to the same size's SFT row (mean ± sd over
the seeds both have, and on how many seeds the row is ahead), and the compute that produced it, averaged over
seeds, from the run's metrics.jsonl (`paper_long.stage_compute`): optimiser steps, RL samples drawn (tokens),
wall-clock minutes of the stage on one thread, and seconds per RL iteration (rollout + scoring + update). The
warm-up's compute is its own row: an RL row's minutes do not include it.

Checkpoints were chosen on validation inside each run; test accuracy is only reported. The splits (validation 500,
test 1,000) are the same for every size and seed (data.seed is fixed; data.n_annotated only changes the train
split). Writes OUT/table.md and OUT/table.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from jobs import mean_sd, write_table
from paper_long import stage_compute
from reftune.train.logger import read_metrics


def run_start(run: Path, records: list[dict]) -> float:
    """When a run's work began: the writing of its training data (`reftune run`: just before its first stage) or
    else of its config file, or, for a folder copied from another run and resumed (both then newer than the copied
    records), the start of its first RL iteration."""
    data = run / "data" / "train.jsonl"
    start = (data if data.is_file() else run / "config.yaml").stat().st_mtime
    for r in records:
        if "rollout_s" in r and "time" in r:
            return min(start, r["time"] - sum(r.get(k, 0.0) for k in ("rollout_s", "scoring_s", "update_s")))
    return start


def row_of(spec: dict, n_annotated: int, seeds: list[int]) -> dict:
    """{"acc": {split: {seed: %}}, "compute": {key: [per seed]}, "curves": {seed: {step: validation %}}} for one row
    of the spec."""
    acc: dict[str, dict[int, float]] = {}
    compute: dict[str, list[float]] = {}
    curves: dict[int, dict[int, float]] = {}
    for s in seeds:
        run = Path(spec["run"].format(s=s))
        res = run / "results.json"
        if not res.is_file():
            continue
        results = json.loads(res.read_text())
        records = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
        curves[s] = {r["step"]: 100 * r["val_accuracy"] for r in records
                     if r["stage"] == spec["stage"] and "val_accuracy" in r}
        if spec.get("checkpoint") == "last":  # the run's last checkpoint (what RL started from): its last validation
            last = [r["val_accuracy"] for r in records if r["stage"] == spec["stage"] and "val_accuracy" in r]
            results = {f"{spec['stage']}/val": {"accuracy": last[-1]}} if last else {}
        for split in ("val", "test"):
            if f"{spec['stage']}/{split}" in results:
                acc.setdefault(split, {})[s] = 100 * results[f"{spec['stage']}/{split}"]["accuracy"]
        if records and (run / "config.yaml").is_file():
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            c = stage_compute(records, cfg, n_annotated, run_start(run, records), stages=(spec["stage"],))
            for k, v in c.get(spec["stage"], {}).items():
                compute.setdefault(k, []).append(v)
    return {"acc": acc, "compute": compute, "curves": curves}


def paired(row: dict, sft: dict, split: str) -> str:
    """row − SFT on the seeds both have: "+m ± sd (k/n ahead)", "–" without a common seed."""
    a, b = row["acc"].get(split, {}), sft["acc"].get(split, {})
    diffs = [a[s] - b[s] for s in sorted(a) if s in b]
    if not diffs:
        return "–"
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.1f} ± {sd:.1f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"


def chosen(spec: dict, n_annotated: int, seeds: list[int]) -> dict:
    """A row; with `candidates` ({name: folder pattern}, e.g. one per learning rate) the candidate with the highest
    mean validation accuracy over its seeds (a tie keeps the one listed first: list the default first), its name
    appended to the label ("{label}, {name}") and every candidate's mean validation kept under "candidates"."""
    if "candidates" not in spec:
        return {**row_of(spec, n_annotated, seeds), "label": spec["label"]}
    rows = {name: row_of({**spec, "run": run}, n_annotated, seeds) for name, run in spec["candidates"].items()}
    means = {name: statistics.mean(r["acc"]["val"].values()) for name, r in rows.items() if r["acc"].get("val")}
    if not means:
        return {"acc": {}, "compute": {}, "curves": {}, "label": spec["label"], "candidates": {}}
    best = next(iter(means))  # the first listed (the default) unless another is better on validation: ties keep it
    for name, v in means.items():
        if v > means[best] + 1e-6:
            best = name
    return {**rows[best], "label": f"{spec['label']}, {best}", "candidates": means}


def collect(spec: dict, seeds: list[int]) -> dict:
    """{size: {model: row}} for every size of the spec ("base": the untouched base model, shared by all sizes)."""
    return {int(size): {model: chosen(r, int(size), seeds) for model, r in rows.items()}
            for size, rows in spec["sizes"].items()}


def table(found: dict, base: dict | None) -> str:
    lines = ["| annotated questions | model | seeds | val acc % | test acc % "
             "| − SFT, paired: val / test (seeds ahead) "
             "| optimiser steps | RL samples (tokens) | minutes (1 thread) | s / RL iteration |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| all | {base['label']} | | {mean_sd(list(base['acc'].get('val', {}).values()))} "
                     f"| {mean_sd(list(base['acc'].get('test', {}).values()))} | | | | | |")
    for size, rows in found.items():
        sft = rows.get("sft")
        for model, row in rows.items():
            c = row["compute"]

            def avg(k, fmt="{:,.0f}"):
                xs = [x for x in c.get(k, []) if x == x]  # not NaN
                return fmt.format(statistics.mean(xs)) if xs else "–"

            diff = ("–" if sft is None or model in ("sft", "warmup") else
                    f"{paired(row, sft, 'val')} / {paired(row, sft, 'test')}")
            samples = (f"{statistics.mean(c['rl_epochs']) * size:,.0f} ({avg('rollout_tokens')})"
                       if c.get("rl_epochs") else "–")
            seeds = sorted(set(row["acc"].get("val", {})) | set(row["acc"].get("test", {})))
            lines.append(f"| {size} | {row['label']} | {', '.join(map(str, seeds)) or '–'} "
                         f"| {mean_sd(list(row['acc'].get('val', {}).values()))} "
                         f"| {mean_sd(list(row['acc'].get('test', {}).values()))} | {diff} | {avg('optimizer_steps')} "
                         f"| {samples} | {avg('minutes', '{:.1f}')} | {avg('iteration_s', '{:.1f}')} |")
    for size, rows in found.items():  # the candidates a row was chosen from, by mean validation accuracy
        for row in rows.values():
            if row.get("candidates"):
                lines.append(f"\n{size} annotated questions, {row['label'].rsplit(', ', 1)[0]}: mean validation "
                             + ", ".join(f"{name} {v:.1f}" for name, v in row["candidates"].items()) + ".")
    return "\n".join(lines)


def plot(found: dict, spec: dict, model: str, path: Path) -> None:
    """Validation accuracy against RL iterations of `model` at each size (mean ± sd over seeds), the same size's
    SFT baseline (best validation epoch) dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for color, (size, rows) in zip(("C0", "C1", "C2", "C3"), found.items()):
        per_seed = list(rows[model]["curves"].values()) if model in rows else []
        steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
        if not steps:
            continue
        mean = [statistics.mean(p[t] for p in per_seed) for t in steps]
        sd = [statistics.stdev(p[t] for p in per_seed) if len(per_seed) > 1 else 0.0 for t in steps]
        ax.plot(steps, mean, color=color, label=f"{size} annotated: {spec.get('curves_label', rows[model]['label'])}")
        ax.fill_between(steps, [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)], color=color,
                        alpha=0.2)
        sft = list(rows.get("sft", {}).get("acc", {}).get("val", {}).values())
        if sft:
            ax.axhline(statistics.mean(sft), color=color, linestyle="--", linewidth=1,
                       label=f"{size} annotated: SFT baseline (best epoch, lr chosen on val)")
    ax.set_xlabel("RL iteration")
    ax.set_ylabel("validation accuracy % (greedy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="the rows: scripts/claim_rows.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/claim"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--plot", type=Path, default=None, help="the curves of the spec's `curves` model at each size")
    args = p.parse_args()
    spec = yaml.safe_load(args.spec.read_text())
    spec["sizes"] = {int(k): v for k, v in spec["sizes"].items()}
    found = collect(spec, args.seeds)
    base = ({**row_of(spec["base"], 0, args.seeds), "label": spec["base"]["label"]} if "base" in spec else None)
    md = table(found, base)
    args.out.mkdir(parents=True, exist_ok=True)
    write_table(args.out, md, {"base": base, "sizes": found})
    if args.plot and spec.get("curves"):
        plot(found, spec, spec["curves"], args.plot)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
