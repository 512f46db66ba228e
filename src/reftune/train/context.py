"""`RunContext`: the settings every loop of one run shares, passed as one object instead of ten keywords."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reftune.example import Example
from reftune.eval.greedy import evaluate
from reftune.train.accel import broadcast, is_main


@dataclass(frozen=True)
class RunContext:
    """Where a stage writes and how the run prompts, grades, evaluates and seeds.

    out_dir: the stage's directory (its `last/`, `best/`, snapshots); logger: the run's `MetricsLogger`;
    stage: the name its metrics are logged under ("sft", "reft", "pretrain", ...); template / cot: the prompt
    preset and the chain-of-thought kind (`data.template`, `data.cot`); sandbox: the `ProgramSandbox` that P-CoT
    programs run in (None for N-CoT); precision: the trainer's (`precision`); seed: the training seed;
    eval_batch_size / eval_max_new_tokens: greedy validation decoding (`eval.*`); max_length: the longest
    prompt + response (`model.max_length`); rollout: the `RolloutConfig` of RL's sampler (None: the built-in
    hf backend).
    """

    out_dir: Path
    logger: Any
    stage: str = "sft"
    template: str = "reft"
    cot: str = "nl"
    sandbox: Any = None
    precision: str = "fp32"
    seed: int = 0
    eval_batch_size: int = 128
    eval_max_new_tokens: int = 96
    max_length: int = 320
    rollout: Any = None

    @classmethod
    def from_config(cls, cfg, out_dir: str | Path, logger, sandbox=None, stage: str = "sft") -> RunContext:
        """The context of a command's config (any job with `data`, `model`, `eval`, `seed`, `precision`)."""
        return cls(out_dir=Path(out_dir), logger=logger, stage=stage, template=cfg.data.template, cot=cfg.data.cot,
                   sandbox=sandbox, precision=getattr(cfg, "precision", "fp32"), seed=cfg.seed,
                   eval_batch_size=cfg.eval.batch_size, eval_max_new_tokens=cfg.eval.max_new_tokens,
                   max_length=cfg.model.max_length, rollout=getattr(cfg, "rollout", None))

    def at(self, stage: str, out_dir: str | Path) -> RunContext:
        """The same run, another stage writing to another directory."""
        return replace(self, stage=stage, out_dir=Path(out_dir))

    def validate(self, model, tokenizer, examples: list[Example], max_new_tokens: int | None = None) -> dict:
        """Greedy accuracy on `examples` (the validation split): {"accuracy", "n", "answered"}. With several
        processes the main one evaluates while the others wait, and all get its result (they act on it alike:
        best/, early stopping)."""
        res = None
        if is_main():
            res = evaluate(model, tokenizer, examples, template=self.template, cot=self.cot,
                           batch_size=self.eval_batch_size, sandbox=self.sandbox, desc=f"{self.stage} val",
                           max_new_tokens=self.eval_max_new_tokens if max_new_tokens is None else max_new_tokens)
        return broadcast(res)
