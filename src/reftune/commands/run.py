"""`reftune run`: the whole method on one dataset, into one run directory.

Stages (each marked done in `stages.json`, so `--resume` skips finished stages and continues an unfinished
one from its `last/` checkpoint):
  data   — build or load the splits, saved as JSONL;
  init   — train the tokenizer and build the tiny model, saved in HF format (or load --model: `init/` then holds
           a reference to it, `source.json`, and its config and tokenizer, not a copy of its weights);
  pretrain — tiny default only: language-model pretraining on `data.n_pretrain` problems disjoint from
           every split (`pretrain/last`), the stand-in for the pretrained LM that ReFT starts from;
  warmup — with `warmup.schedule=own` only: a short SFT run of `warmup_epochs` epochs whose learning rate
           (`warmup.lr`, else `sft.lr`) decays to 0 at its end (`warmup/last`): the warm-up model;
  sft    — one SFT run up to `sft.epochs` (early stopping by `sft.patience`) that keeps the best validation
           checkpoint (`sft/best`): the paper's SFT baseline; with `warmup.schedule=snapshot` (the default) the
           warm-up model is its snapshot after `warmup_epochs` (`sft/epoch-K`), taken mid-schedule;
  reft   — PPO from the warm-up model on the training questions (reference = warm-up model); with
           curriculum=r3, rollouts start from prefixes of the demonstrations (`reftune.rl.curriculum`);
  reft_extra — the same with the answer-only `extra` questions added (when `rl_extra`);
  online_st — online self-training from the warm-up model at the same RL settings (when
           `rl_online_self_training`): ReFT's baseline, NLL on each batch's correct samples and gold CoTs;
  reft_sft — ReFT with `rl.sft_coef=rl_sft_coef` (when that is > 0): PPO plus the NLL of the gold CoTs;
  eval   — greedy accuracy of every model on val and test → `results.json`, `eval/*.jsonl`;
  report — `report.md` with the results table and curves.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from reftune.commands.common import Run, open_run
from reftune.config import RunConfig
from reftune.data.splits import save_splits
from reftune.eval.greedy import evaluate
from reftune.model.checkpoint import is_checkpoint, load_progress, load_rng, rng_state, save_checkpoint, set_rng_state
from reftune.model.modeling import build_tiny_model, is_tiny_default, load_pretrained, train_tokenizer
from reftune.model.source import save_reference
from reftune.model.prompts import build_prompt, build_target, get_template
from reftune.rl.curriculum import from_config as curriculum_from_config
from reftune.rl.loop import needs_reference, train_rl
from reftune.train.accel import is_main, main_first, on_main
from reftune.train.sft import train_sft


class Stages:
    """Which stages of a run are finished, persisted in `stages.json`, and where every RNG stood when each first
    finished (`rng/<stage>.pt`): a resumed run puts them back (`restore_rng`) before the next stage starts, so a
    stage started in a resumed process draws the same numbers as in the uninterrupted run."""

    def __init__(self, run_dir: Path):
        self.path, self.rng_dir = run_dir / "stages.json", run_dir / "rng"
        self.done: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def finish(self, name: str, info: dict | None = None) -> None:
        self.done[name] = info or {}
        on_main(self._write, name)  # every process keeps `done`; the main one writes

    def _write(self, name: str) -> None:
        self.path.write_text(json.dumps(self.done, indent=2))
        snapshot = self.rng_dir / f"{name}.pt"
        if not snapshot.is_file():  # the first finish is the uninterrupted run's; a resumed one re-finishes "init"
            self.rng_dir.mkdir(exist_ok=True)
            torch.save(rng_state(), snapshot)

    def reopen(self, name: str, results: Path) -> None:
        """Mark `name` (and the evaluation) unfinished, its results forgotten: a resume continues the stage."""
        for stage in (name, "eval"):
            self.done.pop(stage, None)
        if not is_main():
            return
        self.path.write_text(json.dumps(self.done, indent=2))
        if results.is_file():
            kept = {k: v for k, v in json.loads(results.read_text()).items() if not k.startswith(f"{name}/")}
            results.write_text(json.dumps(kept, indent=2))

    def restore_rng(self) -> None:
        """Every RNG as it was when the last finished stage first finished (no-op in a fresh run)."""
        snapshot = self.rng_dir / f"{list(self.done)[-1]}.pt" if self.done else None
        if snapshot is not None and snapshot.is_file():
            set_rng_state(load_rng(snapshot))


def init_model(cfg, splits, run_dir: Path):
    """(lm, tokenizer): `run_dir/init` if present, else built (tiny default) and saved there, or loaded (--model,
    or model.gguf_file alone) with a reference to it saved there (`reftune.model.source`: no copy of the weights;
    loading `init/` loads the source, checked unchanged)."""
    init = run_dir / "init"
    if is_checkpoint(init):
        return load_pretrained(str(init))
    if is_tiny_default(cfg.model):
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
        save_checkpoint(init, lm, tokenizer)
    else:
        lm, tokenizer = load_pretrained(cfg.model.name_or_path or "", cfg.model.gguf_file)
        save_reference(init, lm, tokenizer, cfg.model.name_or_path or "", cfg.model.gguf_file)
    return lm, tokenizer


def sft_stage(run: Run, stages: Stages, name: str, start: Path, train, cfg, snapshot_epochs=()) -> None:
    """SFT from `start` (or from `<name>/last` when resuming) into run_dir/<name>. A finished stage is continued
    when a resume raised its epochs and it had not stopped early."""
    if name in stages.done:
        st = load_progress(run.dir / name / "last")
        if st is None or st["epoch"] >= cfg.epochs or (cfg.patience and st["stale"] >= cfg.patience):
            return
        stages.reopen(name, run.dir / "results.json")
    last = run.dir / name / "last"
    if name == "pretrain":  # the tiny base's language-model pretraining is always full
        lm, tokenizer = load_pretrained(str(last if is_checkpoint(last) else start))
    else:
        lm, tokenizer, _ = run.load_trainable(start, last, gguf=False)
    stages.finish(name, train_sft(lm, tokenizer, train, run.splits["val"], cfg, run.context(name, run.dir / name),
                                  snapshot_epochs=snapshot_epochs))


def warmup_and_sft(run: Run, stages: Stages, base: Path) -> Path:
    """The SFT stages from `base`; returns the warm-up model. `warmup.schedule=snapshot`: one SFT run, the warm-up
    is its epoch-`warmup_epochs` snapshot (the lr still near its peak). `own`: a separate `warmup_epochs`-epoch run
    with its own schedule, decaying to 0 at its end, never stopped early; the SFT baseline (with `sft_baseline`)
    is the long run, as before."""
    cfg, train = run.cfg, run.splits["train"]
    if cfg.warmup.schedule == "own":
        warm = replace(cfg.sft, epochs=cfg.warmup_epochs, lr=cfg.warmup.lr or cfg.sft.lr, patience=0)
        sft_stage(run, stages, "warmup", base, train, warm)
        if cfg.sft_baseline:
            sft_stage(run, stages, "sft", base, train, cfg.sft)
        return run.dir / "warmup" / "last"
    epochs = cfg.sft.epochs if cfg.sft_baseline else cfg.warmup_epochs
    sft_stage(run, stages, "sft", base, train, replace(cfg.sft, epochs=max(epochs, cfg.warmup_epochs)),
              snapshot_epochs=(cfg.warmup_epochs,))
    return run.dir / "sft" / f"epoch-{cfg.warmup_epochs}"


def rl_stage(run: Run, stages: Stages, name: str, train, warmup: Path, objective: str | None = None,
             **rl_changes) -> None:
    """PPO (or `objective`) from the warm-up model (or from `<name>/last` when resuming), with `rl_changes` to the
    rl section; reference = warm-up model. A finished stage is continued when a resume raised rl.steps."""
    cfg = run.cfg
    rl_cfg = replace(cfg.rl, **rl_changes, **({"objective": objective} if objective else {}))
    if name in stages.done:
        st = load_progress(run.dir / name / "last")
        if st is None or st["step"] >= cfg.rl.steps:
            return
        stages.reopen(name, run.dir / "results.json")
    policy, tokenizer = run.load_policy(warmup, run.dir / name / "last")
    ref = run.reference(policy, warmup, gguf=False) if needs_reference(rl_cfg) else None
    curriculum = curriculum_from_config(cfg.curriculum, tokenizer, cfg.seed) if objective is None else None
    info = train_rl(policy, ref, tokenizer, train, run.splits["val"], rl_cfg, run.context(name, run.dir / name),
                    curriculum=curriculum)
    stages.finish(name, info)


def evaluate_models(run: Run, models: dict[str, Path], log: bool = True) -> dict:
    """Greedy accuracy of each model on val and test (those already in results.json are kept); log: also in
    metrics.jsonl / TensorBoard (stage "eval", tagged by model and split)."""
    cfg, path = run.cfg, run.dir / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, model_dir in models.items():
        lm, tokenizer = load_pretrained(str(model_dir))
        for split in ("val", "test"):
            if f"{name}/{split}" in results or not run.splits[split]:
                continue
            res = evaluate(lm, tokenizer, run.splits[split], template=cfg.data.template, cot=cfg.data.cot,
                           batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                           sandbox=run.sandbox, out_path=run.dir / "eval" / f"{name}_{split}.jsonl",
                           desc=f"eval {name} {split}")
            results[f"{name}/{split}"] = res
            if log:
                run.logger.log("eval", 0, model=name, split=split, accuracy=res["accuracy"])
            print(f"[eval] {name:>10} {split:>4}: accuracy {res['accuracy']:.3f}")
        path.write_text(json.dumps(results, indent=2))
    return results


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """Run every stage; returns the results dict also written to `results.json`."""
    from reftune.rewards.functions import check_reward_args
    with open_run(cfg, resume, needs_model=False, data_parallel=True) as r:
        stages, splits = Stages(r.dir), r.splits
        check_reward_args(cfg.rl.rewards, splits["train"] + splits["extra"])  # before any training
        if "data" not in stages.done:
            on_main(save_splits, splits, r.dir / "data")
            stages.finish("data", {**{k: len(v) for k, v in splits.items()}, **r.data_report})
        with main_first():  # the main process builds and saves init/, the others load it
            lm, tokenizer = init_model(cfg, splits, r.dir)
        stages.finish("init", {"parameters": sum(p.numel() for p in lm.parameters())})
        stages.restore_rng()
        base = r.dir / "init"
        if is_tiny_default(cfg.model) and splits.get("pretrain"):
            # the tiny default has no pretrained LM to start from: pretrain one on disjoint problems
            sft_stage(r, stages, "pretrain", base, splits["pretrain"], cfg.pretrain)
            base = r.dir / "pretrain" / "last"
        warmup = warmup_and_sft(r, stages, base)
        rl_stage(r, stages, "reft", splits["train"], warmup)
        if cfg.rl_extra and splits["extra"]:
            rl_stage(r, stages, "reft_extra", splits["train"] + splits["extra"], warmup)
        if cfg.rl_online_self_training:
            rl_stage(r, stages, "online_st", splits["train"], warmup, objective="online_self_training", sft_coef=0.0)
        if cfg.rl_sft_coef > 0:
            rl_stage(r, stages, "reft_sft", splits["train"], warmup, sft_coef=cfg.rl_sft_coef)
        models = {"base": base, "warmup": warmup}
        if cfg.sft_baseline:
            models["sft"] = r.dir / "sft" / "best"
        models["reft"] = r.dir / "reft" / "best"
        for extra in ("reft_extra", "online_st", "reft_sft"):
            if extra in stages.done:
                models[extra] = r.dir / extra / "best"
        results = on_main(evaluate_models, r, models)  # the others wait (and return None)
        stages.finish("eval")
        from reftune.train.report import write_report
        on_main(write_report, r.dir)
        return results


def stage_report(run: Run, name: str) -> dict:
    """The end of `reftune sft` / `reftune rl`: greedy accuracy of the chosen checkpoint (`best/`, else `last/`) on
    val and test into results.json (`<name>/<split>`, made afresh: a resumed stage may have moved on) and
    eval/*.jsonl, then report.md with the curves. Not logged to metrics.jsonl, which holds the training alone."""
    from reftune.train.report import write_report
    (run.dir / "results.json").unlink(missing_ok=True)
    chosen = run.dir / "best" if is_checkpoint(run.dir / "best") else run.dir / "last"
    results = evaluate_models(run, {name: chosen}, log=False)
    write_report(run.dir, title=f"reftune {name}: {run.dir.name}")
    return results
