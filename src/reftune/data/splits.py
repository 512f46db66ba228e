"""Train / extra / validation / test splits for any dataset named in `DataConfig`.

The synthetic task generates disjoint splits by question. Real datasets read their training file and hold
out `val_fraction` of it (seeded) as validation, so checkpoints are never chosen on the test set.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

from reftune.config import DataConfig
from reftune.example import Example
from reftune.errors import UserError
from reftune.data.jsonl import write_jsonl


def load_splits(cfg: DataConfig, log=print, report: dict | None = None) -> dict[str, list[Example]]:
    """{"train", "extra", "val", "test", "pretrain"}: lists of Examples ("extra" is answer-only, possibly empty;
    "pretrain" is the synthetic base model's corpus, empty for real data).

    report: if given, receives {"skipped": number of invalid records skipped} (with data.skip_invalid).
    """
    if cfg.name == "synthetic":
        from reftune.data.synthetic import generate_splits
        # "pretrain" comes last, so the other splits are the same whatever its size
        sizes = {"train": cfg.n_train, "extra": cfg.n_extra, "val": cfg.n_val, "test": cfg.n_test,
                 "pretrain": cfg.n_pretrain}
        exclude = read_questions(cfg.exclude_questions) if cfg.exclude_questions else None
        return generate_splits(cfg.seed, sizes, cfg.min_steps, cfg.max_steps, cfg.cot, cfg.max_value, exclude,
                               steps={"pretrain": (cfg.pretrain_min_steps, cfg.pretrain_max_steps)})
    from reftune.data.loaders import load_dataset
    if cfg.path is None:
        raise UserError(f"data.path: dataset '{cfg.name}' needs its training file (data.path=...)")
    loaded = load_dataset(cfg.name, cfg.path, skip_invalid=cfg.skip_invalid)
    if report is not None:
        report["skipped"] = len(loaded.skipped)
    if loaded.skipped:
        log(f"skipped {len(loaded.skipped)} invalid records in {cfg.path} (first: {loaded.skipped[0]})")
    examples = list(loaded.examples)
    random.Random(cfg.seed).shuffle(examples)
    n_val = max(1, int(len(examples) * cfg.val_fraction))
    val, train = examples[:n_val], examples[n_val:]
    if cfg.max_examples is not None:
        train, val = train[:cfg.max_examples], val[:max(1, cfg.max_examples // 4)]
    test: list[Example] = []
    if cfg.test_path:
        test = list(load_dataset("mathqa" if cfg.name == "mathqa" else ("gsm8k" if cfg.name == "gsm8k" else "reft"),
                                 cfg.test_path, skip_invalid=cfg.skip_invalid).examples)
        if cfg.max_examples is not None:
            test = test[:max(1, cfg.max_examples // 4)]
    if cfg.cot == "program":
        for e in train:
            if e.cot is not None and "def solution" not in e.cot:
                raise UserError(f"data.cot=program but example {e.id} has a natural-language rationale; "
                                f"use a P-CoT file (e.g. svamp_python_sdp.json)")
    if not train:
        raise UserError(f"data.val_fraction: {cfg.path} has {len(examples)} valid example(s); holding out "
                        f"{n_val} for validation (data.val_fraction={cfg.val_fraction:g}) leaves none to train on")
    return {"train": train, "extra": [], "val": val, "test": test, "pretrain": []}


def read_questions(path: str | Path) -> set[str]:
    """The `question` field of every line of a JSONL file, or of every `*.jsonl` file in a folder."""
    p = Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"data.exclude_questions: no JSONL file at {p}")
    questions = set()
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                try:
                    questions.add(json.loads(line)["question"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{f}:{n}: not a JSON object with a 'question' field") from None
    return questions


def save_splits(splits: dict[str, list[Example]], folder: str | Path) -> None:
    for name, examples in splits.items():
        write_jsonl(Path(folder) / f"{name}.jsonl", (asdict(e) for e in examples))
