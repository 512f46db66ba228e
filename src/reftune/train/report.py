"""`report.md` for a run directory (`reftune run`, `sft`, `rl`): the results table and PNG curves (reward, KL,
validation accuracy from the start model's (step 0, RL's `rl.eval_at_start`) on, the best validation point marked)."""

from __future__ import annotations

import json
from pathlib import Path

from reftune.train.logger import read_metrics

LABELS = {"base": "base model (before SFT)", "warmup": "(a) warm-up (SFT, few epochs)", "sft": "(b) SFT baseline (best val epoch)",
          "reft": "(c) ReFT from warm-up", "reft_extra": "(d) ReFT + answer-only questions",
          "online_st": "(e) online self-training from warm-up (best val step)",
          "reft_sft": "(h) ReFT + NLL on the gold CoTs (rl.sft_coef)",
          "rl": "RL (best val step)", "selftrain": "offline self-training / expert iteration (best val round)"}


def _plot(records: list[dict], key: str, path: Path, title: str) -> bool:
    """One panel per stage (each stage counts its own steps: SFT optimizer steps, RL iterations), shared y axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if key in r and r.get("stage") != "eval":
            series.setdefault(r["stage"], []).append((r["step"], r[key]))
    if not series:
        return False
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series) + 1.5, 3.5), sharey=True, squeeze=False)
    for ax, (stage, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
        if key == "val_accuracy":  # the checkpoint kept in best/: the first highest point after the start (step 0)
            best = max([p for p in pts if p[0] > 0] or pts, key=lambda p: p[1])
            ax.plot([best[0]], [best[1]], marker="*", markersize=14, color="tab:red", linestyle="none", label="best")
            ax.legend(loc="lower right")
        unit = "iteration" if stage.startswith(("reft", "rl")) else "step"
        ax.set_xlabel(f"{stage} {unit}")
        ax.set_title(stage)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(key)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    records = read_metrics(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    lines = [f"# {title or f'reftune run: {run_dir.name}'}", "", "Greedy accuracy (checkpoints chosen on validation, never on test).", "",
             "| model | val | test |", "|---|---|---|"]
    names = sorted({k.split("/")[0] for k in results}, key=lambda n: list(LABELS).index(n) if n in LABELS else 99)
    for name in names:
        cells = [f"{results[f'{name}/{s}']['accuracy'] * 100:.1f}" if f"{name}/{s}" in results else "–" for s in ("val", "test")]
        lines.append(f"| {LABELS.get(name, name)} | {cells[0]} | {cells[1]} |")
    lines += ["", "Config: `config.yaml`. Metrics: `metrics.jsonl` (also in TensorBoard under `tb/`).", ""]
    parts = sorted({k for r in records for k in r if k.startswith("reward/") and not k.endswith("/missing")})
    curves = [("reward", "RL reward (mean over rollouts)"), ("kl", "KL to the reference (per sequence)"),
              ("val_accuracy", "validation accuracy")]
    if len(parts) > 1:  # several reward functions: each one's curve too (e.g. R1 format and accuracy)
        curves[1:1] = [(k, f"reward function {k.split('/', 1)[1]} (mean over rollouts)") for k in parts]
    for key, title in curves:
        name = key.replace("/", "_")
        if _plot(records, key, plots / f"{name}.png", title):
            lines += [f"![{title}](plots/{name}.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_scorer_report(run_dir: str | Path, info: dict, stage: str) -> Path:
    """`report.md` of `reftune verifier` / `reftune rm`: the chosen epoch's validation metrics and the per-epoch
    curves (train and validation loss, validation accuracy, AUC for a verifier); `info` is their results.json."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    lines = [f"# reftune {stage}: {run_dir.name}", "",
             f"Best epoch (on validation): {info.get('best_epoch')}. Checkpoint: `best/` (reftune) and "
             f"`hf_classifier/` (AutoModelForSequenceClassification).", "", "| validation metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in (info.get("val") or {}).items() if v is not None]
    lines += ["", "Config: `config.yaml`. Metrics: `metrics.jsonl`.", ""]
    for key, title in [("train_loss", "training loss (epoch mean)"), ("val_loss", "validation loss"),
                       ("val_accuracy", "validation accuracy"), ("val_auc", "validation AUC")]:
        if _plot([r for r in records if "epoch" in r], key, plots / f"{key}.png", title):
            lines += [f"![{title}](plots/{key}.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
