"""The commands behind the CLI, one function each: the whole run (`commands.run`), or one stage (SFT, RL, eval,
verifier, rm, selftrain) from its config. Each opens its run with `common.open_run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reftune.config import EvalJob, RLJob, RMJob, SelfTrainJob, SFTJob, VerifierJob
from reftune.data.splits import save_splits
from reftune.errors import UserError
from reftune.eval.greedy import evaluate
from reftune.model.checkpoint import is_checkpoint
from reftune.model.lm_head import fp32_lm_head
from reftune.model.modeling import PolicyWithValue, load_pretrained
from reftune.commands.common import open_run, require_model
from reftune.commands.run import init_model, run, stage_report
from reftune.train.accel import main_first, on_main

__all__ = ["eval", "rl", "rm", "run", "selftrain", "sft", "verifier"]


def _graded_samples(run, sampling, lm, tokenizer, name: str, examples, seed: int) -> list[list[dict]]:
    """`sampling.num_samples` graded samples per example (`eval.sampling.sample_and_grade` with the sampling
    fields of a verifier/rm/selftrain section), kept in run_dir/samples_<name>.jsonl so a resumed run samples
    once."""
    from reftune.eval.sampling import cached_samples, sample_and_grade
    cfg = run.cfg
    return cached_samples(run.dir / f"samples_{name}.jsonl", examples, lambda: sample_and_grade(
        lm, tokenizer, examples, sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens, template=cfg.data.template, cot=cfg.data.cot,
        batch_size=sampling.gen_batch_size, sandbox=run.sandbox, seed=seed, desc=f"sample {name}"))


def _sampling_model(cfg, start: str, gguf: bool = True):
    """The model that samples (verifier, rm, selftrain), on the training device; gguf=False: `start` is a
    checkpoint of this run (model.gguf_file does not apply)."""
    from reftune.train.accel import get_accelerator
    lm, tokenizer = load_pretrained(start, cfg.model.gguf_file if gguf else None)
    return lm.to(get_accelerator(cfg.precision).device), tokenizer


def sft(cfg: SFTJob, resume: bool = False) -> dict:
    from reftune.train.sft import train_sft
    with open_run(cfg, resume, needs_model=False, data_parallel=True) as run:
        on_main(save_splits, run.splits, run.dir / "data")
        last = run.dir / "last"
        if is_checkpoint(last):
            lm, tokenizer = load_pretrained(str(last), lora_trainable=True)
        else:
            with main_first():  # the main process builds and saves init/, the others load it
                lm, tokenizer = init_model(cfg, run.splits, run.dir)
            lm = run.with_lora(lm, run.dir / "init")
        info = train_sft(lm, tokenizer, run.splits["train"], run.splits["val"], cfg.sft, run.context("sft"),
                         snapshot_epochs=(cfg.snapshot_epoch,) if cfg.snapshot_epoch else ())
        on_main(stage_report, run, "sft")
        return info


def rl(cfg: RLJob, resume: bool = False) -> dict:
    from reftune.rl.curriculum import from_config as curriculum_from_config
    from reftune.rl.loop import needs_reference, train_rl
    from reftune.rewards.functions import check_reward_args
    with open_run(cfg, resume, data_parallel=True) as run:
        start = require_model(cfg)
        train = run.splits["train"] + (run.splits["extra"] if cfg.rl.use_extra else [])
        check_reward_args(cfg.rl.rewards, train)  # a missing argument is named before the model loads
        policy, tokenizer = run.load_policy(start, run.dir / "last")
        ref = run.reference(policy, start) if needs_reference(cfg.rl) else None
        info = train_rl(policy, ref, tokenizer, train, run.splits["val"], cfg.rl, run.context("rl"),
                        curriculum=curriculum_from_config(cfg.curriculum, tokenizer, cfg.seed))
        on_main(stage_report, run, "rl")
        return info


def eval(cfg: EvalJob, resume: bool = False) -> dict:  # noqa: A001 - the command's name
    from reftune.eval.sampling import results_table
    from reftune.model.sampler import make_sampler
    from reftune.train.accel import DTYPES, get_accelerator, warn_if_bf16_is_emulated
    path, ev = require_model(cfg), cfg.eval
    if ev.verifier and ev.num_samples < 1:
        raise UserError("eval.verifier: reranking needs samples; set eval.num_samples=k (k >= 1)")
    out = Path(cfg.out_dir)
    if (out / "stages.json").is_file() or any(is_checkpoint(out / d) for d in ("last", "best")):
        raise UserError(f"out_dir: {out} holds a training run; `reftune eval` writes into a directory of its own "
                        f"(e.g. out_dir={out / ('eval_' + ev.split)})")
    with open_run(cfg, resume, logger=False) as run:
        splits = run.splits
        if ev.split not in splits or not splits[ev.split]:
            raise UserError(f"eval.split: split '{ev.split}' is empty or unknown (have: "
                            f"{', '.join(k for k, v in splits.items() if v)})")
        examples = splits[ev.split][ev.offset:None if ev.limit is None else ev.offset + ev.limit]
        if not examples:
            raise UserError(f"eval.offset: {ev.offset} skips all {len(splits[ev.split])} questions of '{ev.split}'")
        lm, tokenizer = load_pretrained(path, cfg.model.gguf_file)
        lm.to(get_accelerator().device, DTYPES[ev.precision])  # no training here: generation in eval.precision
        warn_if_bf16_is_emulated("eval.precision", ev.precision, lm.device.type)
        ro = cfg.rollout
        fp32_head = ro.fp32_lm_head and ev.precision != "fp32"  # the logits in fp32 (see rollout.fp32_lm_head)
        if ro.backend == "hf":  # None: the evaluators' own HFSampler (shared prefixes on)
            sampler = None if ro.shared_prefix else make_sampler(
                "hf", lm, tokenizer, device=lm.device, batch_size=ev.batch_size, shared_prefix=False)
        else:
            sampler = make_sampler(ro.backend, lm, tokenizer, device=lm.device, batch_size=ev.batch_size, seed=cfg.seed,
                                   dtype=DTYPES[ev.precision], gpu_memory_utilization=ro.gpu_memory_utilization,
                                   tensor_parallel_size=ro.tensor_parallel_size, fp32_head=fp32_head)
        try:
            with fp32_lm_head(lm, fp32_head and ro.backend == "hf"):
                res = _evaluate(cfg, run, lm, tokenizer, examples, sampler)
        finally:
            if hasattr(sampler, "close"):
                sampler.close()
        (out / "results.json").write_text(json.dumps(res, indent=2))
        title = f"{path or cfg.model.gguf_file} on {ev.split}"
        (out / "results.md").write_text(results_table(res, res.get("sampling"), title))
        return res


def _evaluate(cfg: EvalJob, run, lm, tokenizer, examples, sampler) -> dict:
    """Greedy accuracy, and with eval.num_samples the sampled metrics, through `sampler` (None: hf)."""
    from reftune.eval.sampling import evaluate_sampling
    ev, out, template, kind = cfg.eval, Path(cfg.out_dir), cfg.data.template, cfg.data.cot
    res = evaluate(lm, tokenizer, examples, template=template, cot=kind, batch_size=ev.batch_size,
                   max_new_tokens=ev.max_new_tokens, sandbox=run.sandbox, out_path=out / f"{ev.split}.jsonl",
                   sampler=sampler)
    if ev.num_samples > 0:  # one sampling pass: pass@k, voting@k and (with a verifier) rerank@k
        scorer = None
        if ev.verifier:
            from reftune.rewards.scorer import load_scorer
            scorer = load_scorer(ev.verifier, template, batch_size=ev.batch_size, max_length=cfg.model.max_length,
                                 device=lm.device)
        res["sampling"] = evaluate_sampling(
            lm, tokenizer, examples, ev.num_samples, temperature=ev.temperature, top_p=ev.top_p,
            max_new_tokens=ev.max_new_tokens, template=template, cot=kind, batch_size=ev.batch_size,
            sandbox=run.sandbox, seed=cfg.seed, scorer=scorer, sampler=sampler,
            out_path=out / f"{ev.split}_samples.jsonl")
    return res


def verifier(cfg: VerifierJob, resume: bool = False) -> dict:
    """Sample and grade solutions on train (and val) questions, then train the P(correct) classifier on them."""
    from reftune.train.report import write_scorer_report
    from reftune.train.verifier import labelled_solutions, train_verifier
    with open_run(cfg, resume) as run:
        v = cfg.verifier
        questions = {"train": run.splits["train"][:v.max_questions], "val": run.splits["val"]}
        lm, tokenizer = _sampling_model(cfg, require_model(cfg))
        per_question = {name: _graded_samples(run, v, lm, tokenizer, name, questions[name], cfg.seed + i)
                        for i, name in enumerate(("train", "val"))}
        if v.init_from:
            lm, tokenizer = load_pretrained(v.init_from)
        items = {name: labelled_solutions(tokenizer, questions[name], per_question[name], cfg.data.template,
                                          cfg.model.max_length) for name in questions}
        info = train_verifier(PolicyWithValue(lm), tokenizer, items["train"], items["val"], v, out_dir=run.dir,
                              logger=run.logger, precision=cfg.precision, seed=cfg.seed,
                              template=cfg.data.template, max_length=cfg.model.max_length)
        info["sample_accuracy"] = {name: sum(y for _, y in items[name]) / max(len(items[name]), 1)
                                   for name in items}
        (run.dir / "results.json").write_text(json.dumps(info, indent=2))
        write_scorer_report(run.dir, info, "verifier")
        return info


def rm(cfg: RMJob, resume: bool = False) -> dict:
    """Train a Bradley-Terry reward model on preference pairs: from rm.pairs_path, or every (correct, incorrect)
    pair of the model's own graded samples per training question; validation pairs likewise from the val split
    (or rm.val_pairs_path), never trained on. Writes the pairs used to run_dir/pairs_<split>.jsonl."""
    from reftune.data.jsonl import write_jsonl
    from reftune.data.pairs import load_pairs, pairs_from_samples
    from reftune.train.report import write_scorer_report
    from reftune.train.reward_model import encode_pairs, train_reward_model
    require_model(cfg)
    r = cfg.rm
    files = {"train": r.pairs_path, "val": r.val_pairs_path}
    pairs = {name: load_pairs(path) for name, path in files.items() if path}  # a bad file fails before any work
    with open_run(cfg, resume) as run:
        questions = {"train": run.splits["train"][:r.max_questions], "val": run.splits["val"]}
        lm, tokenizer = _sampling_model(cfg, require_model(cfg))
        for i, name in enumerate(("train", "val")):
            if name not in pairs:
                per_question = _graded_samples(run, r, lm, tokenizer, name, questions[name], cfg.seed + i)
                pairs[name] = pairs_from_samples(questions[name], per_question, r.max_pairs_per_question,
                                                 cfg.seed + i)
            write_jsonl(run.dir / f"pairs_{name}.jsonl", (p.to_record() for p in pairs[name]))
        if not pairs["train"]:
            raise UserError("rm: no training pairs: no training question has both a correct and an incorrect "
                            "sample; sample more (rm.num_samples), from another model, or give rm.pairs_path")
        if r.init_from:
            lm, tokenizer = load_pretrained(r.init_from)
        items = {name: encode_pairs(tokenizer, pairs[name], cfg.data.template, cfg.model.max_length)
                 for name in pairs}
        info = train_reward_model(PolicyWithValue(lm), tokenizer, items["train"], items["val"], r, out_dir=run.dir,
                                  logger=run.logger, precision=cfg.precision, seed=cfg.seed,
                                  template=cfg.data.template, max_length=cfg.model.max_length)
        info["pairs"] = {name: len(p) for name, p in pairs.items()}
        (run.dir / "results.json").write_text(json.dumps(info, indent=2))
        write_scorer_report(run.dir, info, "rm")
        return info


def selftrain(cfg: SelfTrainJob, resume: bool = False) -> dict:
    """Offline self-training (selftrain.rounds=1), or expert iteration in rounds: each round samples from the
    current model, keeps the distinct correct solutions (pooled with earlier rounds'), and runs SFT again (from the
    start model, or the previous round's: selftrain.round_start). The final model is the round with the best
    validation accuracy, in out_dir/best; per-round results are in rounds.json and metrics.jsonl; the chosen model's
    greedy val and test accuracy in results.json and report.md, as for `sft` and `rl`."""
    from reftune.train.self_training import best_round
    with open_run(cfg, resume) as run:
        st, start = cfg.selftrain, require_model(cfg)
        train = [e for e in run.splits["train"] if e.cot]
        done_path = run.dir / "rounds.json"
        done = json.loads(done_path.read_text()) if done_path.is_file() else []
        pooled, sample_from = [[] for _ in train], None
        for r in range(1, st.rounds + 1):
            pooled, info = _selftrain_round(run, r, train, pooled, sample_from, done[r - 1] if r <= len(done) else None)
            if r > len(done):
                done.append(info)
                done_path.write_text(json.dumps(done, indent=2))
            sample_from = run.dir / f"round-{r}" / "best"  # the next round samples from this round's choice
        chosen = best_round(done)
        if st.rounds > 1:
            shutil.copytree(run.dir / f"round-{chosen + 1}" / "best", run.dir / "best", dirs_exist_ok=True)
            run.logger.log("selftrain", st.rounds, best_round=chosen + 1, best_val=done[chosen]["best_val"])
        stage_report(run, "selftrain")  # the chosen model on val and test: results.json, eval/, report.md
        return {**done[chosen], "rounds": done, "best_round": chosen + 1}


def _selftrain_round(run, r: int, train, pooled, sample_from, finished: dict | None):
    """Round r of `selftrain`: sample from `sample_from` (None: the start model), pool, SFT unless `finished`
    (its info, from rounds.json). Returns (pooled samples, the round's info). With one round, the names and
    layout are those of plain offline self-training (samples_train.jsonl, data/selftrain.jsonl, best/ in out_dir)."""
    from reftune.train.self_training import augment_with_samples, augmentation_stats, pool_rounds
    from reftune.train.sft import train_sft
    cfg, st, start = run.cfg, run.cfg.selftrain, require_model(run.cfg)
    tag = "" if st.rounds == 1 else f"_round{r}"
    lm, tokenizer = _sampling_model(cfg, str(sample_from or start), gguf=sample_from is None)
    pooled = pool_rounds(pooled, _graded_samples(run, st, lm, tokenizer, f"train{tag}", train, cfg.seed + r - 1))
    augmented = augment_with_samples(train, pooled, st.max_correct, cfg.data.template)
    stats = augmentation_stats(train, augmented)
    if finished is not None:
        return pooled, finished
    save_splits({f"selftrain{tag}": augmented}, run.dir / "data")
    out = run.dir / f"round-{r}" if tag else run.dir
    init = sample_from if st.round_start == "previous" and sample_from is not None else start
    if is_checkpoint(out / "last"):
        lm, tokenizer = load_pretrained(str(out / "last"), lora_trainable=True)
    elif init == sample_from or sample_from is None:  # the sampling model is the start: no second load
        lm = run.with_lora(lm, init)
    else:
        lm, tokenizer, _ = run.load_trainable(init)
    run.logger.log("selftrain", r, round=r, **stats)
    info = train_sft(lm, tokenizer, augmented, run.splits["val"], cfg.sft, run.context(f"selftrain{tag}", out))
    run.logger.log("selftrain", r, round=r, best_val=info["best_val"], best_epoch=info["best_epoch"])
    return pooled, {"round": r, "sampled_from": str(sample_from or start), "trained_from": str(init), **info, **stats}
