"""The commands behind the CLI: the whole run, or one stage (SFT, RL, eval, verifier, rm, selftrain) from a config."""

from __future__ import annotations

import json
from pathlib import Path

from reftune.checkpoint import is_checkpoint, load_value_head
from reftune.config import EvalJob, RLJob, RMJob, RunConfig, SelfTrainJob, SFTJob, VerifierJob, save_config
from reftune.data.splits import load_splits, save_splits
from reftune.errors import UserError
from reftune.evaluate import evaluate
from reftune.logger import MetricsLogger
from reftune.modeling import PolicyWithValue, load_pretrained
from reftune.pipeline import init_model, prepare_run_dir
from reftune.pipeline import run as run_pipeline


def _sandbox(cfg):
    if cfg.data.cot != "program":
        return None
    from reftune.sandbox import ProgramSandbox
    return ProgramSandbox()


def _require_model(cfg) -> str:
    if not cfg.model.name_or_path and not cfg.model.gguf_file:
        raise UserError("model.name_or_path: this command needs a checkpoint (--model DIR)")
    return cfg.model.name_or_path or ""


def _graded_samples(cfg, sampling, lm, tokenizer, run_dir: Path, name: str, examples, seed: int,
                    sandbox) -> list[list[dict]]:
    """`sampling.num_samples` graded samples per example (`inference.sample_and_grade` with the sampling fields of
    a verifier/rm/selftrain section), kept in run_dir/samples_<name>.jsonl so a resumed run samples once."""
    from reftune.inference import cached_samples, sample_and_grade
    return cached_samples(run_dir / f"samples_{name}.jsonl", examples, lambda: sample_and_grade(
        lm, tokenizer, examples, sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens, template=cfg.data.template, cot=cfg.data.cot,
        batch_size=sampling.gen_batch_size, sandbox=sandbox, seed=seed, desc=f"sample {name}"))


def run(cfg: RunConfig, resume: bool = False) -> dict:
    return run_pipeline(cfg, resume=resume)


def sft(cfg: SFTJob, resume: bool = False) -> dict:
    from reftune.sft import train_sft
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    splits = load_splits(cfg.data)
    save_splits(splits, run_dir / "data")
    last = run_dir / "last"
    lm, tokenizer = load_pretrained(str(last)) if is_checkpoint(last) else init_model(cfg, splits, run_dir)
    logger = MetricsLogger(run_dir)
    info = train_sft(lm, tokenizer, splits["train"], splits["val"], cfg.sft, out_dir=run_dir, logger=logger,
                     template=cfg.data.template, cot=cfg.data.cot, max_length=cfg.model.max_length,
                     precision=cfg.precision, seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
                     max_new_tokens=cfg.eval.max_new_tokens, sandbox=_sandbox(cfg),
                     snapshot_epochs=(cfg.snapshot_epoch,) if cfg.snapshot_epoch else ())
    logger.close()
    return info


def rl(cfg: RLJob, resume: bool = False) -> dict:
    from reftune.curriculum import from_config as curriculum_from_config
    from reftune.rl import needs_reference, train_rl
    start = _require_model(cfg)
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    splits = load_splits(cfg.data)
    last = run_dir / "last"
    lm, tokenizer = load_pretrained(str(last) if is_checkpoint(last) else start, cfg.model.gguf_file)
    policy = PolicyWithValue(lm)
    load_value_head(last if is_checkpoint(last) else start, policy.value_head)
    ref = None
    if needs_reference(cfg.rl):
        ref = load_pretrained(start, cfg.model.gguf_file)[0].eval().requires_grad_(False)
    train = splits["train"] + (splits["extra"] if cfg.rl.use_extra else [])
    logger = MetricsLogger(run_dir)
    info = train_rl(policy, ref, tokenizer, train, splits["val"], cfg.rl, out_dir=run_dir, logger=logger,
                    template=cfg.data.template, cot=cfg.data.cot, precision=cfg.precision, seed=cfg.seed,
                    eval_batch_size=cfg.eval.batch_size, sandbox=_sandbox(cfg),
                    curriculum=curriculum_from_config(cfg.curriculum, tokenizer, cfg.seed))
    logger.close()
    return info


def eval(cfg: EvalJob, resume: bool = False) -> dict:  # noqa: A001 - the command's name
    path = _require_model(cfg)
    splits = load_splits(cfg.data)
    if cfg.eval.split not in splits or not splits[cfg.eval.split]:
        raise UserError(f"eval.split: split '{cfg.eval.split}' is empty or unknown (have: "
                        f"{', '.join(k for k, v in splits.items() if v)})")
    if cfg.eval.verifier and cfg.eval.num_samples < 1:
        raise UserError("eval.verifier: reranking needs samples; set eval.num_samples=k (k >= 1)")
    from reftune.accel import get_accelerator
    from reftune.inference import evaluate_sampling, results_table
    start = cfg.eval.offset
    examples = splits[cfg.eval.split][start:None if cfg.eval.limit is None else start + cfg.eval.limit]
    if not examples:
        raise UserError(f"eval.offset: {start} skips all {len(splits[cfg.eval.split])} questions of '{cfg.eval.split}'")
    lm, tokenizer = load_pretrained(path, cfg.model.gguf_file)
    lm.to(get_accelerator().device)
    out, sandbox, ev = Path(cfg.out_dir), _sandbox(cfg), cfg.eval
    res = evaluate(lm, tokenizer, examples, template=cfg.data.template, cot=cfg.data.cot,
                   batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, sandbox=sandbox,
                   out_path=out / f"{ev.split}.jsonl")
    if ev.num_samples > 0:  # one sampling pass: pass@k, voting@k and (with a verifier) rerank@k
        scorer = None
        if ev.verifier:
            from reftune.verifier import load_scorer
            scorer = load_scorer(ev.verifier, cfg.data.template, batch_size=ev.batch_size,
                                 max_length=cfg.model.max_length, device=lm.device)
        res["sampling"] = evaluate_sampling(
            lm, tokenizer, examples, ev.num_samples, temperature=ev.temperature, top_p=ev.top_p,
            max_new_tokens=ev.max_new_tokens, template=cfg.data.template, cot=cfg.data.cot, batch_size=ev.batch_size,
            sandbox=sandbox, seed=cfg.seed, scorer=scorer, out_path=out / f"{ev.split}_samples.jsonl")
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(results_table(res, res.get("sampling"), f"{path or cfg.model.gguf_file} on {ev.split}"))
    return res


def verifier(cfg: VerifierJob, resume: bool = False) -> dict:
    """Sample and grade solutions on train (and val) questions, then train the P(correct) classifier on them."""
    from reftune.accel import get_accelerator
    from reftune.verifier import labelled_solutions, train_verifier
    start = _require_model(cfg)
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    splits = load_splits(cfg.data)
    v, sandbox = cfg.verifier, _sandbox(cfg)
    questions = {"train": splits["train"][:v.max_questions], "val": splits["val"]}
    lm, tokenizer = load_pretrained(start, cfg.model.gguf_file)
    lm.to(get_accelerator(cfg.precision).device)

    per_question = {name: _graded_samples(cfg, v, lm, tokenizer, run_dir, name, questions[name], cfg.seed + i, sandbox)
                    for i, name in enumerate(("train", "val"))}
    if v.init_from:
        lm, tokenizer = load_pretrained(v.init_from)
    items = {name: labelled_solutions(tokenizer, questions[name], per_question[name], cfg.data.template,
                                      cfg.model.max_length) for name in questions}
    logger = MetricsLogger(run_dir)
    info = train_verifier(PolicyWithValue(lm), tokenizer, items["train"], items["val"], v, out_dir=run_dir,
                          logger=logger, precision=cfg.precision, seed=cfg.seed, template=cfg.data.template,
                          max_length=cfg.model.max_length)
    logger.close()
    info["sample_accuracy"] = {name: sum(y for _, y in items[name]) / max(len(items[name]), 1) for name in items}
    (run_dir / "results.json").write_text(json.dumps(info, indent=2))
    return info


def rm(cfg: RMJob, resume: bool = False) -> dict:
    """Train a Bradley-Terry reward model on preference pairs: from rm.pairs_path, or every (correct, incorrect)
    pair of the model's own graded samples per training question; validation pairs likewise from the val split
    (or rm.val_pairs_path), never trained on. Writes the pairs used to run_dir/pairs_<split>.jsonl."""
    from reftune.accel import get_accelerator
    from reftune.data.pairs import load_pairs, pairs_from_samples
    from reftune.jsonl import write_jsonl
    from reftune.reward_model import encode_pairs, train_reward_model
    start = _require_model(cfg)
    r, sandbox = cfg.rm, _sandbox(cfg)
    files = {"train": r.pairs_path, "val": r.val_pairs_path}
    pairs = {name: load_pairs(path) for name, path in files.items() if path}  # a bad file fails before any work
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    splits = load_splits(cfg.data)
    questions = {"train": splits["train"][:r.max_questions], "val": splits["val"]}
    lm, tokenizer = load_pretrained(start, cfg.model.gguf_file)
    lm.to(get_accelerator(cfg.precision).device)
    for i, name in enumerate(("train", "val")):
        if name not in pairs:
            per_question = _graded_samples(cfg, r, lm, tokenizer, run_dir, name, questions[name], cfg.seed + i, sandbox)
            pairs[name] = pairs_from_samples(questions[name], per_question, r.max_pairs_per_question, cfg.seed + i)
        write_jsonl(run_dir / f"pairs_{name}.jsonl", (p.to_record() for p in pairs[name]))
    if not pairs["train"]:
        raise UserError("rm: no training pairs: no training question has both a correct and an incorrect sample; "
                        "sample more (rm.num_samples), from another model, or give rm.pairs_path")
    if r.init_from:
        lm, tokenizer = load_pretrained(r.init_from)
    items = {name: encode_pairs(tokenizer, pairs[name], cfg.data.template, cfg.model.max_length) for name in pairs}
    logger = MetricsLogger(run_dir)
    info = train_reward_model(PolicyWithValue(lm), tokenizer, items["train"], items["val"], r, out_dir=run_dir,
                              logger=logger, precision=cfg.precision, seed=cfg.seed, template=cfg.data.template,
                              max_length=cfg.model.max_length)
    logger.close()
    info["pairs"] = {name: len(p) for name, p in pairs.items()}
    (run_dir / "results.json").write_text(json.dumps(info, indent=2))
    return info


def selftrain(cfg: SelfTrainJob, resume: bool = False) -> dict:
    """Offline self-training: sample from the warm-up model, keep distinct correct solutions, SFT again."""
    from reftune.accel import get_accelerator
    from reftune.data.splits import save_splits
    from reftune.self_training import augment_with_samples, augmentation_stats
    from reftune.sft import train_sft
    start = _require_model(cfg)
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    splits = load_splits(cfg.data)
    st, sandbox = cfg.selftrain, _sandbox(cfg)
    train = [e for e in splits["train"] if e.cot]
    lm, tokenizer = load_pretrained(start, cfg.model.gguf_file)
    lm.to(get_accelerator(cfg.precision).device)
    per_question = _graded_samples(cfg, st, lm, tokenizer, run_dir, "train", train, cfg.seed, sandbox)
    augmented = augment_with_samples(train, per_question, st.max_correct, cfg.data.template)
    stats = augmentation_stats(train, augmented)
    save_splits({"selftrain": augmented}, run_dir / "data")
    last = run_dir / "last"
    if is_checkpoint(last):
        lm, tokenizer = load_pretrained(str(last))
    logger = MetricsLogger(run_dir)
    logger.log("selftrain", 0, **stats)
    info = train_sft(lm, tokenizer, augmented, splits["val"], cfg.sft, out_dir=run_dir, logger=logger,
                     template=cfg.data.template, cot=cfg.data.cot, max_length=cfg.model.max_length,
                     precision=cfg.precision, seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
                     max_new_tokens=cfg.eval.max_new_tokens, sandbox=sandbox, stage="selftrain")
    logger.close()
    return {**info, **stats}
