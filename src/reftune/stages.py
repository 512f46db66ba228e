"""The commands behind the CLI: the whole run, or one stage (SFT, RL, eval) from a config."""

from __future__ import annotations

import json
from pathlib import Path

from reftune.checkpoint import is_checkpoint, load_value_head
from reftune.config import EvalJob, RLJob, RunConfig, SFTJob, save_config
from reftune.data.splits import load_splits
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


def run(cfg: RunConfig, resume: bool = False) -> dict:
    return run_pipeline(cfg, resume=resume)


def sft(cfg: SFTJob, resume: bool = False) -> dict:
    from reftune.sft import train_sft
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    splits = load_splits(cfg.data)
    last = run_dir / "last"
    lm, tokenizer = load_pretrained(str(last)) if is_checkpoint(last) else init_model(cfg, splits, run_dir)
    logger = MetricsLogger(run_dir)
    info = train_sft(lm, tokenizer, splits["train"], splits["val"], cfg.sft, out_dir=run_dir, logger=logger,
                     template=cfg.data.template, cot=cfg.data.cot, max_length=cfg.model.max_length,
                     precision=cfg.precision, seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
                     max_new_tokens=cfg.eval.max_new_tokens, sandbox=_sandbox(cfg))
    logger.close()
    return info


def rl(cfg: RLJob, resume: bool = False) -> dict:
    from reftune.rl import train_rl
    start = _require_model(cfg)
    run_dir = prepare_run_dir(cfg.out_dir, resume)
    save_config(cfg, run_dir / "config.yaml")
    splits = load_splits(cfg.data)
    last = run_dir / "last"
    lm, tokenizer = load_pretrained(str(last) if is_checkpoint(last) else start, cfg.model.gguf_file)
    policy = PolicyWithValue(lm)
    load_value_head(last if is_checkpoint(last) else start, policy.value_head)
    ref = None
    if cfg.rl.kl_in != "none":
        ref = load_pretrained(start, cfg.model.gguf_file)[0].eval().requires_grad_(False)
    train = splits["train"] + (splits["extra"] if cfg.rl.use_extra else [])
    logger = MetricsLogger(run_dir)
    info = train_rl(policy, ref, tokenizer, train, splits["val"], cfg.rl, out_dir=run_dir, logger=logger,
                    template=cfg.data.template, cot=cfg.data.cot, precision=cfg.precision, seed=cfg.seed,
                    eval_batch_size=cfg.eval.batch_size, sandbox=_sandbox(cfg))
    logger.close()
    return info


def eval(cfg: EvalJob, resume: bool = False) -> dict:  # noqa: A001 - the command's name
    path = _require_model(cfg)
    splits = load_splits(cfg.data)
    if cfg.eval.split not in splits or not splits[cfg.eval.split]:
        raise UserError(f"eval.split: split '{cfg.eval.split}' is empty or unknown (have: "
                        f"{', '.join(k for k, v in splits.items() if v)})")
    examples = splits[cfg.eval.split][:cfg.eval.limit]
    lm, tokenizer = load_pretrained(path, cfg.model.gguf_file)
    out = Path(cfg.out_dir)
    res = evaluate(lm, tokenizer, examples, template=cfg.data.template, cot=cfg.data.cot,
                   batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens, sandbox=_sandbox(cfg),
                   out_path=out / f"{cfg.eval.split}.jsonl")
    (out / "results.json").write_text(json.dumps(res, indent=2))
    return res
