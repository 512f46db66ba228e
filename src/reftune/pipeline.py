"""`reftune run`: the whole method on one dataset, into one run directory.

Stages (each marked done in `stages.json`, so `--resume` skips finished stages and continues an unfinished
one from its `last/` checkpoint):
  data   — build or load the splits, saved as JSONL;
  init   — train the tokenizer and build the tiny model (or load --model), saved in HF format;
  pretrain — tiny default only: language-model pretraining on `data.n_pretrain` problems disjoint from
           every split (`pretrain/last`), the stand-in for the pretrained LM that ReFT starts from;
  sft    — one SFT run: the warm-up model is its snapshot after `warmup_epochs` (`sft/epoch-K`); it goes
           on to `sft.epochs` (early stopping by `sft.patience`) and keeps the best validation
           checkpoint (`sft/best`): the paper's SFT baseline;
  reft   — PPO from the warm-up model on the training questions (reference = warm-up model); with
           curriculum=r3, rollouts start from prefixes of the demonstrations (`reftune.curriculum`);
  reft_extra — the same with the answer-only `extra` questions added (when `rl_extra`);
  eval   — greedy accuracy of every model on val and test → `results.json`, `eval/*.jsonl`;
  report — `report.md` with the results table and curves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from reftune.checkpoint import is_checkpoint, load_value_head, save_checkpoint
from reftune.config import RunConfig, save_config
from reftune.curriculum import from_config as curriculum_from_config
from reftune.data.splits import load_splits, save_splits
from reftune.errors import UserError
from reftune.evaluate import evaluate
from reftune.logger import MetricsLogger
from reftune.modeling import PolicyWithValue, build_tiny_model, load_pretrained, train_tokenizer
from reftune.prompts import build_prompt, build_target, get_template
from reftune.rl import needs_reference, train_rl
from reftune.sft import train_sft


class Stages:
    """Which stages of a run are finished, persisted in `stages.json`."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "stages.json"
        self.done: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def finish(self, name: str, info: dict | None = None) -> None:
        self.done[name] = info or {}
        self.path.write_text(json.dumps(self.done, indent=2))


def prepare_run_dir(out_dir: str, resume: bool) -> Path:
    run_dir = Path(out_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise UserError(f"run directory {run_dir} exists; pass --resume to continue it or set out_dir=...")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def init_model(cfg, splits, run_dir: Path):
    """(lm, tokenizer): `run_dir/init` if present, else built (tiny default) or loaded (--model) and saved there."""
    init = run_dir / "init"
    if is_checkpoint(init):
        return load_pretrained(str(init))
    if cfg.model.name_or_path is None:
        texts = splits["train"] + splits.get("pretrain", [])
        corpus = [e.question + "\n" + (e.cot or "") for e in texts]
        corpus += [e.meta.get("nl_cot", "") + "\n" + e.meta.get("program", "") for e in texts]
        if get_template(cfg.data.template).think:  # R1 instruction and tags in every sequence: learn them as tokens
            corpus += [build_prompt(e.question, cfg.data.template) + build_target(e.cot, cfg.data.template, e.answer)
                       for e in splits["train"] if e.cot]
        tokenizer = train_tokenizer(corpus, cfg.model.vocab_size)
        m = cfg.model
        lm = build_tiny_model(tokenizer, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size,
                              m.max_length, cfg.seed)
    else:
        lm, tokenizer = load_pretrained(cfg.model.name_or_path, cfg.model.gguf_file)
    save_checkpoint(init, lm, tokenizer)
    return lm, tokenizer


def run_rl_stage(cfg: RunConfig, name: str, train, val, warmup: Path, run_dir: Path, logger, stages: Stages, sandbox):
    """PPO from the warm-up model (or from `<name>/last` when resuming); reference = warm-up model."""
    if name in stages.done:
        return
    last = run_dir / name / "last"
    lm, tokenizer = load_pretrained(str(last if is_checkpoint(last) else warmup))
    policy = PolicyWithValue(lm)
    if is_checkpoint(last):
        load_value_head(last, policy.value_head)
    ref = None
    if needs_reference(cfg.rl):
        ref = load_pretrained(str(warmup))[0].eval().requires_grad_(False)
    info = train_rl(policy, ref, tokenizer, train, val, cfg.rl, out_dir=run_dir / name, logger=logger,
                    template=cfg.data.template, cot=cfg.data.cot, precision=cfg.precision, seed=cfg.seed,
                    eval_batch_size=cfg.eval.batch_size, sandbox=sandbox, stage=name,
                    curriculum=curriculum_from_config(cfg.curriculum, tokenizer, cfg.seed))
    stages.finish(name, info)


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """Run every stage; returns the results dict also written to `results.json`."""
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    stages = Stages(run_dir)
    logger = MetricsLogger(run_dir)
    data_report: dict = {}
    splits = load_splits(cfg.data, report=data_report)
    if "data" not in stages.done:
        save_splits(splits, run_dir / "data")
        stages.finish("data", {**{k: len(v) for k, v in splits.items()}, **data_report})
    sandbox = None
    if cfg.data.cot == "program":
        from reftune.sandbox import ProgramSandbox
        sandbox = ProgramSandbox()
    lm, tokenizer = init_model(cfg, splits, run_dir)
    stages.finish("init", {"parameters": sum(p.numel() for p in lm.parameters())})

    base = run_dir / "init"
    if cfg.model.name_or_path is None and splits.get("pretrain"):
        # the tiny default has no pretrained LM to start from: pretrain one on disjoint problems
        base = run_dir / "pretrain" / "last"
        if "pretrain" not in stages.done:
            if is_checkpoint(base):
                lm, tokenizer = load_pretrained(str(base))
            info = train_sft(lm, tokenizer, splits["pretrain"], splits["val"], cfg.pretrain,
                             out_dir=run_dir / "pretrain", logger=logger, template=cfg.data.template,
                             cot=cfg.data.cot, max_length=cfg.model.max_length, precision=cfg.precision,
                             seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
                             max_new_tokens=cfg.eval.max_new_tokens, sandbox=sandbox, stage="pretrain")
            stages.finish("pretrain", info)

    sft_dir = run_dir / "sft"
    if "sft" not in stages.done:
        last = sft_dir / "last"
        lm, tokenizer = load_pretrained(str(last if is_checkpoint(last) else base))
        epochs = cfg.sft.epochs if cfg.sft_baseline else cfg.warmup_epochs
        sft_cfg = type(cfg.sft)(**{**cfg.sft.__dict__, "epochs": max(epochs, cfg.warmup_epochs)})
        info = train_sft(lm, tokenizer, splits["train"], splits["val"], sft_cfg, out_dir=sft_dir, logger=logger,
                         template=cfg.data.template, cot=cfg.data.cot, max_length=cfg.model.max_length,
                         precision=cfg.precision, seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
                         max_new_tokens=cfg.eval.max_new_tokens, snapshot_epochs=(cfg.warmup_epochs,),
                         sandbox=sandbox)
        stages.finish("sft", info)
    warmup = sft_dir / f"epoch-{cfg.warmup_epochs}"

    run_rl_stage(cfg, "reft", splits["train"], splits["val"], warmup, run_dir, logger, stages, sandbox)
    if cfg.rl_extra and splits["extra"]:
        run_rl_stage(cfg, "reft_extra", splits["train"] + splits["extra"], splits["val"], warmup, run_dir,
                     logger, stages, sandbox)

    models = {"base": base, "warmup": warmup}
    if cfg.sft_baseline:
        models["sft"] = sft_dir / "best"
    models["reft"] = run_dir / "reft" / "best"
    if "reft_extra" in stages.done:
        models["reft_extra"] = run_dir / "reft_extra" / "best"
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    for name, path in models.items():
        lm, tokenizer = load_pretrained(str(path))
        for split in ("val", "test"):
            if f"{name}/{split}" in results or not splits[split]:
                continue
            res = evaluate(lm, tokenizer, splits[split], template=cfg.data.template, cot=cfg.data.cot,
                           batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                           sandbox=sandbox, out_path=run_dir / "eval" / f"{name}_{split}.jsonl",
                           desc=f"eval {name} {split}")
            results[f"{name}/{split}"] = res
            logger.log("eval", 0, model=name, split=split, accuracy=res["accuracy"])
            print(f"[eval] {name:>10} {split:>4}: accuracy {res['accuracy']:.3f}")
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    stages.finish("eval")
    from reftune.report import write_report
    write_report(run_dir)
    logger.close()
    if sandbox is not None:
        sandbox.close()
    return results
