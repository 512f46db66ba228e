"""Train / extra / validation / test splits for any dataset named in `DataConfig`.

The synthetic task generates disjoint splits by question. Real datasets read their training file and hold
out `val_fraction` of it (seeded) as validation, so checkpoints are never chosen on the test set. The test file
is read by the training file's loader (`data.test_format` to change it), with the same field mapping.

How answers are read and compared (`data.answer_markers`, `data.answer_backend`) travels with each example, in
its meta (`grading.grade.grade` reads it there), so every stage grades the same way; the defaults add nothing.
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
        splits = generate_splits(cfg.seed, sizes, cfg.min_steps, cfg.max_steps, cfg.cot, cfg.max_value, exclude,
                                 steps={"pretrain": (cfg.pretrain_min_steps, cfg.pretrain_max_steps)})
        if cfg.n_annotated is not None:  # generated as n_train, then cut: the later splits stay the same
            splits["train"] = splits["train"][:cfg.n_annotated]
        _attach_grading(cfg, splits)
        return splits
    train, val, test, skipped = _real_splits(cfg, log)
    if report is not None:
        report["skipped"] = skipped
    splits = {"train": train, "extra": [], "val": val, "test": test, "pretrain": []}
    _attach_grading(cfg, splits)
    return splits


ANSWER_TYPES = {"number": "numeric", "text": "text", "choice": "mcq"}  # data.answer_type -> Example.answer_type


def _load(cfg: DataConfig, name: str, path: str | None, split: str | None, log) -> tuple[list[Example], int]:
    """(examples, records skipped) of one file (or hub split) through loader `name`; the field mapping and answer
    type apply to json/parquet/hub."""
    from reftune.data.loaders import GENERIC, load_dataset
    generic = name in GENERIC
    fields = {k: v for k, v in asdict(cfg.fields).items() if v is not None} if generic else None
    loaded = load_dataset(name, path, split=split, subset=cfg.subset if name == "hub" else None, fields=fields,
                          answer_type=ANSWER_TYPES[cfg.answer_type] if generic else "numeric",
                          skip_invalid=cfg.skip_invalid)
    if loaded.skipped:
        log(f"skipped {len(loaded.skipped)} invalid records in {path or name} (first: {loaded.skipped[0]})")
    return list(loaded.examples), len(loaded.skipped)


def _real_splits(cfg: DataConfig, log) -> tuple[list[Example], list[Example], list[Example], int]:
    """(train, val, test, records skipped) of a real dataset; see the module docstring."""
    hub = cfg.name == "hub" or (cfg.name == "gsm8k" and cfg.path is None)
    if cfg.path is None and not hub:
        raise UserError(f"data.path: dataset '{cfg.name}' needs its training file (data.path=...)")
    examples, skipped = _load(cfg, cfg.name, cfg.path, cfg.split if hub else None, log)
    random.Random(cfg.seed).shuffle(examples)
    n_val = max(1, int(len(examples) * cfg.val_fraction))
    val, train = examples[:n_val], examples[n_val:]
    test, test_skipped = [], 0
    test_split = cfg.test_split or ("test" if cfg.name == "gsm8k" and cfg.path is None else None)
    if cfg.test_path:
        name = cfg.test_format or ("reft" if cfg.name == "svamp" else cfg.name)
        test, test_skipped = _load(cfg, name, cfg.test_path, test_split if name == "hub" else None, log)
    elif hub and test_split:
        test, test_skipped = _load(cfg, cfg.name, cfg.path, test_split, log)
    n_examples = len(examples)
    train, val, test = _cut(cfg, train, val, test, log)
    if cfg.cot == "program":
        for e in train:
            if e.cot is not None and "def solution" not in e.cot:
                raise UserError(f"data.cot=program but example {e.id} has a natural-language rationale; "
                                f"use a P-CoT file (e.g. svamp_python_sdp.json)")
    if not train:
        raise UserError(f"data.val_fraction: {cfg.path} has {n_examples} valid example(s); holding out "
                        f"{n_val} for validation (data.val_fraction={cfg.val_fraction:g}) leaves none to train on")
    return train, val, test, skipped + test_skipped


def _cut(cfg: DataConfig, train, val, test, log):
    """data.max_examples / max_val / max_test, each cut said in the log (smoke runs on real data)."""
    small = None if cfg.max_examples is None else max(1, cfg.max_examples // 4)
    limits = {"train": cfg.max_examples, "val": cfg.max_val if cfg.max_val is not None else small,
              "test": cfg.max_test if cfg.max_test is not None else small}
    kept = {}
    for name, examples in (("train", train), ("val", val), ("test", test)):
        kept[name] = examples if limits[name] is None else examples[:limits[name]]
    cuts = [f"{name} {len(kept[name])} of {len(ex)}" for name, ex in (("train", train), ("val", val), ("test", test))
            if len(kept[name]) < len(ex)]
    if cuts:
        log(f"data: kept {', '.join(cuts)} (data.max_examples / data.max_val / data.max_test)")
    return kept["train"], kept["val"], kept["test"]


def _attach_grading(cfg: DataConfig, splits: dict[str, list[Example]]) -> None:
    """Put the non-default answer markers / backend in every example's meta, where `grade` reads them."""
    extra = {}
    if cfg.answer_markers is not None:
        from reftune.config.checks import marker_list
        extra["answer_markers"] = marker_list(cfg.answer_markers)
    if cfg.answer_backend != "builtin":
        extra["answer_backend"] = cfg.answer_backend
    for examples in splits.values() if extra else ():
        for e in examples:
            e.meta.update(extra)


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
