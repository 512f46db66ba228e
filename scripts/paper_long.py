"""Issue 15's table: `make paper_long`'s runs (OUT/n<N>/seed-S, one `reftune run` each) as one table with each row's
compute, and the validation curves against RL epochs.

    python scripts/paper_long.py runs/paper_long --seeds 0 1 2 [--plot docs/paper_long.png]

Per annotated-set size N (the folders OUT/n<N>) and model: val / test accuracy (mean ± sd over the seeds found),
and the compute that produced it, averaged over seeds: optimiser steps, rollout tokens (RL), and wall-clock
minutes of the stage (from metrics.jsonl: its last record's time minus the preceding record's, so loading and
validation are included; the first stage's from when the run wrote its data). RL epochs = samples drawn / annotated questions (rl.steps x prompts x samples / N).
RL stages also get their mean seconds per iteration (rollout + scoring + update; each phase apart in table.json).
Also the self-training rows of `scripts/paper_selftrain.py` (OUT/n<N>/seed-S/selftrain-r<R>[-sftrun]), with the
same columns (their samples per annotated question and sampled tokens are those of their sampling rounds), and the
longer RL rows of `scripts/paper_reft_longer.py` (OUT/n<N>/seed-S/reft_extra_x<steps>), with their curves.
A folder OUT/n<N>_<tag> (the same size, other settings) gets rows of its own, labelled "N, tag".
Writes OUT/table.md and OUT/table.json; checkpoints were chosen on validation inside each run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

import yaml

from jobs import mean_sd, write_table
from paper_table import aggregate
from reftune.train.logger import read_metrics
from reftune.train.report import LABELS

RL_STAGES = ("reft", "reft_extra", "online_st", "reft_sft")
STAGE_OF = {"warmup": "warmup", "sft": "sft", **{st: st for st in RL_STAGES}}  # model -> its stage
# `scripts/paper_selftrain.py`'s runs, in OUT/n<N>/seed-S/selftrain-r<R>: R = 1 offline self-training, R > 1 expert
# iteration
SELFTRAIN = {"offline_st": "(f) offline self-training from warm-up (best val epoch)",
             "offline_st_sftrun": "(f) the same, with the SFT baseline's schedule (30 epochs, patience 4)",
             "expert_iter": "(g) expert iteration from warm-up (best val round)",
             "expert_iter_sftrun": "(g) the same, with the SFT baseline's schedule (30 epochs, patience 4)"}
ROWS = {**LABELS, **SELFTRAIN}


def stage_compute(records: list[dict], cfg: dict, n_annotated: int, start: float | None = None,
                  stages=tuple(STAGE_OF.values())) -> dict[str, dict]:
    """{stage: {"optimizer_steps", "minutes"} (+ "rollout_tokens", "rl_epochs" for RL)} of one run's metrics.jsonl;
    start: when the run began (the first stage's start). A stage runs from the previous record to its last one; an
    RL stage whose first record comes long after the previous one (added by a later `--resume`) starts at its first
    iteration instead, and a pause inside an RL stage (stopped, resumed later) is not counted; an iteration redone
    after a resume counts its rollout tokens once."""
    out: dict[str, dict] = {}
    prev_time = start
    for r in records:
        st = r["stage"]
        if st not in stages:
            prev_time = r.get("time", prev_time)
            continue
        c = out.setdefault(st, {"start": prev_time, "end": None, "optimizer_steps": 0, "tokens_by_step": {},
                                "secs_by_step": {}, "rl_steps": 0, "paused": 0.0, "last_secs": 0.0})
        secs = sum(r.get(k, 0.0) for k in ("rollout_s", "scoring_s", "update_s"))  # this iteration's (0: not one)
        if "rollout_s" in r and "first" not in c and None not in (c["start"], r.get("time")):
            c["first"] = True
            if r["time"] - c["start"] > 2 * secs + 120:  # a stage added on a later resume: not the gap before
                c["start"] = r["time"] - secs
        elif "first" in c and None not in (c["end"], r.get("time")):
            # stopped, later resumed (a validation record can be the first after the restart): not counted
            if r["time"] - c["end"] > 2 * max(secs, c["last_secs"]) + 120:
                c["paused"] += r["time"] - c["end"] - secs
        c["last_secs"] = secs or c["last_secs"]
        c["end"] = r.get("time", c["end"])
        if "rollout_tokens" in r:  # an iteration redone after a resume counts once (its last record)
            c["tokens_by_step"][r["step"]] = r["rollout_tokens"]
            c["secs_by_step"][r["step"]] = [r.get(k, 0.0) for k in ("rollout_s", "scoring_s", "update_s")]
            c["rl_steps"] = max(c["rl_steps"], r["step"])
        else:  # SFT: loss records every few steps, validation records at the epoch's last step
            c["optimizer_steps"] = max(c["optimizer_steps"], r["step"])
        prev_time = r.get("time", prev_time)
    rl = cfg.get("rl")  # only RL stages use it (`reftune sft` configs have none)
    for st, c in out.items():
        if c["rl_steps"]:
            c["optimizer_steps"] = c["rl_steps"] * rl["ppo_epochs"] * rl["minibatches"]
            c["rl_epochs"] = c["rl_steps"] * rl["prompts_per_step"] * rl["num_generations"] / n_annotated
            c["rollout_tokens"] = sum(c["tokens_by_step"].values())
            secs = list(c["secs_by_step"].values())  # mean seconds of an iteration, and of each of its phases
            for i, k in enumerate(("rollout_s", "scoring_s", "update_s")):
                c[k] = statistics.mean(x[i] for x in secs)
            c["iteration_s"] = statistics.mean(map(sum, secs))
        c["minutes"] = ((c["end"] - c["start"] - c["paused"]) / 60 if None not in (c["start"], c["end"])
                        else math.nan)
        for k in ("start", "end", "rl_steps", "first", "paused", "last_secs", "tokens_by_step", "secs_by_step"):
            c.pop(k, None)
    return out


def selftrain_runs(run: Path) -> dict[str, Path]:
    """{"offline_st": run/selftrain-r1, "expert_iter": run/selftrain-r<R>} for the finished ones (R > 1: the most rounds)."""
    done = {}
    named = [(d, *d.name[len("selftrain-r"):].partition("-")[::2]) for d in run.glob("selftrain-r*") if d.is_dir()]
    for d, rounds, tag in sorted(named, key=lambda x: (x[2], int(x[1]))):  # per tag, the most rounds last
        res = d / "results.json"
        if res.is_file() and "selftrain/test" in json.loads(res.read_text()):
            done[("offline_st" if rounds == "1" else "expert_iter") + (f"_{tag}" if tag else "")] = d
    return done


def selftrain_compute(d: Path, n_annotated: int) -> dict:
    """One `reftune selftrain` run's compute: optimiser steps (every round's SFT), sampled tokens (the kept sample
    files re-tokenized with the warm-up's tokenizer, + EOS for finished ones), samples per annotated question, and
    minutes from its config file's writing to its last record before the final evaluation."""
    from transformers import AutoTokenizer

    from reftune.model.batching import encode
    records = [r for r in read_metrics(d) if r["stage"] != "eval"]
    steps: dict[str, int] = {}
    for r in records:  # SFT records (loss, validation): stage selftrain_round<r>, or selftrain with one round
        if "loss" in r or "epoch" in r:
            steps[r["stage"]] = max(steps.get(r["stage"], 0), r["step"])
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    tok = AutoTokenizer.from_pretrained(cfg["model"]["name_or_path"])
    tokens = samples = 0
    for f in d.glob("samples_train*.jsonl"):
        for line in f.read_text().splitlines():
            for smp in json.loads(line)["samples"]:
                tokens += len(encode(tok, smp["text"])) + bool(smp["finished"])
                samples += 1
    start = (d / "config.yaml").stat().st_mtime
    return {"optimizer_steps": sum(steps.values()), "rollout_tokens": tokens, "rl_epochs": samples / n_annotated,
            "minutes": (records[-1]["time"] - start) / 60 if records else math.nan}


def curves(records: list[dict], cfg: dict, n_annotated: int, rename: dict[str, str] | None = None
           ) -> dict[str, list[tuple[float, float]]]:
    """{RL stage: [(RL epochs, val accuracy %), ...]} (step 0 = the warm-up), and {RL stage + "/train": [(RL epochs,
    sampled training accuracy %), ...]} (each iteration's rollouts). rename: {stage in the records: its key}."""
    rl = cfg["rl"]
    per_step = rl["prompts_per_step"] * rl["num_generations"] / n_annotated
    out: dict[str, list] = {}
    rename = rename or {st: st for st in RL_STAGES}
    for r in records:
        st = rename.get(r["stage"])
        if st is not None and "val_accuracy" in r:
            out.setdefault(st, []).append((r["step"] * per_step, 100 * r["val_accuracy"]))
        elif st is not None and "accuracy" in r:
            out.setdefault(st + "/train", []).append((r["step"] * per_step, 100 * r["accuracy"]))
    return out


def longer_runs(run: Path) -> dict[str, Path]:
    """{"reft_extra_x<steps>": its folder} for `scripts/paper_reft_longer.py`'s finished runs in `run`."""
    return {d.name: d for d in sorted(run.glob("reft_extra_x*"))
            if (d / "results.json").is_file() and "rl/test" in json.loads((d / "results.json").read_text())}


def add_row(entry: dict, model: str, run_dir: Path, compute: dict) -> None:
    """A separate run's row (self-training, longer RL) into `entry`: its results.json accuracies (%) and compute."""
    for key, res in json.loads((run_dir / "results.json").read_text()).items():
        entry["acc"].setdefault(model, {}).setdefault(key.split("/")[1], []).append(100 * res["accuracy"])
    for k, v in compute.items():
        entry["compute"].setdefault(model, {}).setdefault(k, []).append(v)


def sizes(root: Path) -> list[tuple[Path, int, str]]:
    """The run folders OUT/n<N> and their variants OUT/n<N>_<tag> (the same size with other settings, e.g.
    n100_warmup3e-5): (folder, N, tag or "")."""
    found = []
    for d in root.glob("n*"):
        m = re.fullmatch(r"n(\d+)(?:_(.+))?", d.name)
        if m and d.is_dir():
            found.append((d, int(m.group(1)), m.group(2) or ""))
    return found


def collect(root: Path, seeds: list[int]) -> dict:
    """{N or "N, tag": {"acc": {model: {split: [..]}}, "compute": {stage: {key: [..]}}, "curves": {stage: [per-seed lists]},
    "seeds": [...]}} for every OUT/n<N> with at least one finished seed."""
    found = {}
    for d, n, tag in sorted(sizes(root), key=lambda x: (x[1], x[2])):
        entry = {"acc": aggregate(d, seeds), "compute": {}, "curves": {}, "seeds": []}
        for s in seeds:
            run = d / f"seed-{s}"
            if not (run / "results.json").is_file():
                continue
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            n_ann = len((run / "data" / "train.jsonl").read_text().splitlines())
            entry["seeds"].append(s)
            records = read_metrics(run)
            began = (run / "data" / "train.jsonl").stat().st_mtime  # written just before the first stage
            for st, c in stage_compute(records, cfg, n_ann, began).items():
                for k, v in c.items():
                    entry["compute"].setdefault(st, {}).setdefault(k, []).append(v)
            for st, pts in curves(records, cfg, n_ann).items():
                entry["curves"].setdefault(st, []).append(pts)
            for model, rl_dir in longer_runs(run).items():  # RL epochs per *annotated* question, as reft_extra's
                rl_cfg = yaml.safe_load((rl_dir / "config.yaml").read_text())
                rl_records = read_metrics(rl_dir)
                compute = stage_compute(rl_records, rl_cfg, n_ann, (rl_dir / "config.yaml").stat().st_mtime,
                                        stages=("rl",)).get("rl", {})
                add_row(entry, model, rl_dir, compute)
                for st, pts in curves(rl_records, rl_cfg, n_ann, rename={"rl": model}).items():
                    entry["curves"].setdefault(st, []).append(pts)
            for model, st_dir in selftrain_runs(run).items():
                add_row(entry, model, st_dir, selftrain_compute(st_dir, n_ann))
        if entry["seeds"]:
            found[f"{n}, {tag}" if tag else n] = entry
    return found


def table(found: dict) -> str:
    lines = ["| annotated questions | model | val acc % | test acc % | optimiser steps | samples per annotated q. (RL epochs) | sampled tokens | "
             "minutes (1 thread) | s / RL iteration |", "|---|---|---|---|---|---|---|---|---|"]
    for n, e in found.items():
        longer = sorted((m for m in e["acc"] if m.startswith("reft_extra_x")), key=lambda m: int(m[12:]))
        for model in [m for m in ROWS if m in e["acc"]] + longer:
            acc = e["acc"][model]
            c = e["compute"].get(STAGE_OF.get(model, model), {})

            def avg(k, fmt="{:.0f}"):
                xs = [x for x in c.get(k, []) if not math.isnan(x)]
                return fmt.format(statistics.mean(xs)) if xs else "–"

            label = ROWS.get(model) or f"(d) ReFT + answer-only questions, {model[12:]} iterations"
            lines.append(f"| {n} | {label} | {mean_sd(acc.get('val', []))} | {mean_sd(acc.get('test', []))} "
                         f"| {avg('optimizer_steps')} | {avg('rl_epochs')} | {avg('rollout_tokens')} "
                         f"| {avg('minutes', '{:.1f}')} | {avg('iteration_s', '{:.1f}')} |")
        lines.append(f"| {n} | (seeds) | {', '.join(map(str, e['seeds']))} | | | | | | |")
    return "\n".join(lines)


def plot(found: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 3.8), squeeze=False)
    for ax, (n, e) in zip(axes[0], found.items()):
        longer = sorted(k for k in e["curves"] if k.startswith("reft_extra_x") and "/" not in k)
        for st, color in zip([*RL_STAGES, *longer], ("C0", "C2", "C3", "C5", "C1", "C4")):
            runs = e["curves"].get(st, [])
            label = LABELS.get(st) or f"(d) ReFT + answer-only, {st[12:]} iterations"
            if not runs:
                continue
            xs = [x for x, _ in runs[0]]
            ys = [[pts[i][1] for pts in runs if i < len(pts)] for i in range(len(xs))]
            mean = [statistics.mean(y) for y in ys]
            sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            ax.plot(xs, mean, color=color, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=color,
                            alpha=0.2)
            train = e["curves"].get(st + "/train", [])
            if train:  # mean over seeds, then a running mean over 5 iterations (one iteration is 512 samples)
                steps = min(len(t) for t in train)
                ys = [statistics.mean(t[i][1] for t in train) for i in range(steps)]
                smooth = [statistics.mean(ys[max(0, i - 4):i + 1]) for i in range(steps)]
                ax.plot([train[0][i][0] for i in range(steps)], smooth, color=color, linestyle=":", linewidth=1,
                        label=f"{label}: sampled training accuracy")
        for model, style in (("sft", "--"), ("base", ":")):
            vals = e["acc"].get(model, {}).get("val", [])
            if vals:
                ax.axhline(statistics.mean(vals), color="k", linestyle=style, label=f"{LABELS[model]} (val)")
        size, _, tag = str(n).partition(", ")
        ax.set_title(f"{size} annotated questions{', ' + tag if tag else ''} ({len(e['seeds'])} seed"
                     f"{'s' if len(e['seeds']) > 1 else ''})")
        ax.set_xlabel("RL epochs (samples per annotated question)")
        ax.set_ylabel("accuracy % (validation: greedy)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--plot", type=Path, default=Path("docs/paper_long.png"))
    args = p.parse_args()
    found = collect(args.root, args.seeds)
    if not found:
        print(f"no finished run under {args.root}/n*/seed-*")
        return 1
    md = table(found)
    write_table(args.root, md, found)
    plot(found, args.plot)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
