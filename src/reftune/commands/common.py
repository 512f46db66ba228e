"""What every command does first, in one place: `open_run` — require the model, create (or reuse, with
--resume) the run directory, save the resolved config, seed every RNG from `seed`, load the splits, start the
program sandbox (P-CoT) and the metrics logger — and close them all on every path.

A start that fails before any work worth keeping was written (`_holds_work`) leaves no run directory behind
to block the retry.

With several processes (`torchrun --nproc_per_node N -m reftune.cli ...`) every process opens the same run: all
look at the directory before any writes to it (so all refuse, or all resume, alike), and only the main process
creates it, saves the config and cleans up after a failed start.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from reftune.config import leaves, load_config, save_config
from reftune.data.splits import load_splits
from reftune.errors import UserError
from reftune.model.checkpoint import LEGACY_STATE_FILE, STATE_FILE, is_checkpoint, load_value_head
from reftune.model.lora import apply_lora, is_lora
from reftune.model.modeling import PolicyWithValue, load_pretrained
from reftune.train.accel import is_main, num_processes, on_main, wait
from reftune.train.context import RunContext
from reftune.train.logger import MetricsLogger
from reftune.train.seed import seed_everything


def require_model(cfg) -> str:
    if not cfg.model.name_or_path and not cfg.model.gguf_file:
        raise UserError("model.name_or_path: this command needs a checkpoint (--model DIR)")
    return cfg.model.name_or_path or ""


def prepare_run_dir(out_dir: str, resume: bool) -> Path:
    run_dir = Path(out_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise UserError(f"run directory {run_dir} exists; pass --resume to continue it or set out_dir=...")
    on_main(run_dir.mkdir, parents=True, exist_ok=True)
    return run_dir


def make_sandbox(cfg):
    """The `ProgramSandbox` P-CoT programs run in (data.cot=program), else None."""
    if cfg.data.cot != "program":
        return None
    from reftune.grading.sandbox import ProgramSandbox
    return ProgramSandbox()


def _holds_work(run_dir: Path) -> bool:
    """Whether a run directory holds something a retry would redo: a resumable or best checkpoint, or cached
    samples. A built start model or a reference to one (`init/`), the config and the data splits are cheap to make
    again."""
    return (any(run_dir.rglob(STATE_FILE)) or any(run_dir.rglob(LEGACY_STATE_FILE))
            or any(run_dir.rglob("samples_*.jsonl")) or any(is_checkpoint(p) for p in run_dir.rglob("best")))


def record_resume(cfg, run_dir: Path) -> None:
    """On resume, append what changed against the saved config (the CLI allowed only resumable fields) to
    run_dir/resumes.jsonl: {"time", "changed": {field: [old, new]}}."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        before = leaves(load_config(type(cfg), saved))
    except UserError:  # a config of another command or an older schema: nothing to compare
        return
    changed = {k: [before[k], v] for k, v in leaves(cfg).items() if k in before and before[k] != v}
    if changed:
        with (run_dir / "resumes.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.time(), "changed": changed}) + "\n")


@dataclass
class Run:
    """An open run: its config, directory, splits, sandbox and logger (see `open_run`)."""

    cfg: object
    dir: Path
    splits: dict
    sandbox: object = None
    logger: MetricsLogger | None = None
    data_report: dict = field(default_factory=dict)

    def context(self, stage: str, out_dir: str | Path | None = None) -> RunContext:
        return RunContext.from_config(self.cfg, self.dir if out_dir is None else out_dir, self.logger, self.sandbox,
                                      stage)

    def load_policy(self, start: str | Path, last: Path | None = None) -> tuple[PolicyWithValue, object]:
        """(policy with value head, tokenizer) from `last` when it is a checkpoint (a resumed stage), else from
        `start` (its value head too, when it has one) with fresh LoRA adapters when lora.r > 0. A GGUF file
        (model.gguf_file) applies to `start` only."""
        lm, tokenizer, path = self.load_trainable(start, last)
        policy = PolicyWithValue(lm)
        load_value_head(path, policy.value_head)
        return policy, tokenizer

    def load_trainable(self, start: str | Path, last: Path | None = None, gguf: bool = True):
        """(lm, tokenizer, the path it came from) for a training stage: `last` resumed as saved (LoRA adapters
        kept trainable), else `start` (merged if it is itself a LoRA checkpoint) with this run's LoRA adapters."""
        if last is not None and is_checkpoint(last):
            lm, tokenizer = load_pretrained(str(last), lora_trainable=True)
            return lm, tokenizer, last
        lm, tokenizer = load_pretrained(str(start), self.cfg.model.gguf_file if gguf else None)
        return self.with_lora(lm, start), tokenizer, start

    def reference(self, policy: PolicyWithValue, start: str | Path, gguf: bool = True):
        """RL's frozen KL reference: with LoRA the policy's own LM (its adapters disabled by `ReferenceLM`: no
        second copy), else the start model loaded again."""
        if is_lora(policy.lm):
            return policy.lm
        return load_pretrained(str(start), self.cfg.model.gguf_file if gguf else None)[0].requires_grad_(False)

    def with_lora(self, lm, start: str | Path):
        """`lm` with fresh LoRA adapters when the command's lora.r > 0 (else `lm` itself)."""
        lora = getattr(self.cfg, "lora", None)
        return apply_lora(lm, lora, start) if lora is not None and lora.r > 0 else lm


@contextmanager
def open_run(cfg, resume: bool = False, *, needs_model: bool = True, run_dir: bool = True,
             logger: bool = True, data_parallel: bool = False) -> Iterator[Run]:
    """Open a command's run: see the module docstring. run_dir=False: write into out_dir without the
    run-directory checks or the saved config (a caller that manages its directory itself); logger=False: no
    metrics.jsonl; data_parallel: the command runs in several processes when launched so (sft, rl, run), else a
    multi-process launch is refused."""
    if not data_parallel and num_processes() > 1:
        raise UserError(f"this command runs in one process; it was launched in {num_processes()} (torchrun / "
                        f"accelerate launch): run it without them")
    if needs_model:
        require_model(cfg)
    fresh = not (Path(cfg.out_dir).exists() and any(Path(cfg.out_dir).iterdir()))
    wait()  # every process has looked before the main one writes
    path = prepare_run_dir(cfg.out_dir, resume) if run_dir else Path(cfg.out_dir)
    run = None
    try:
        if run_dir:
            on_main(lambda: (record_resume(cfg, path), save_config(cfg, path / "config.yaml")))
        seed_everything(cfg.seed)
        report: dict = {}
        run = Run(cfg, path, load_splits(cfg.data, report=report), data_report=report)
        run.sandbox = make_sandbox(cfg)
        run.logger = MetricsLogger(path, report_to=getattr(cfg, "report_to", None)) if logger else None
        yield run
    except Exception:  # not KeyboardInterrupt: an interrupted run is resumed, not retried
        if run_dir and fresh and is_main() and path.exists() and not _holds_work(path):
            if run is not None and run.logger is not None:
                run.logger.close()
                run.logger = None
            shutil.rmtree(path, ignore_errors=True)  # nothing worth keeping: let the retry start clean
        raise
    finally:
        if run is not None:
            if run.logger is not None:
                run.logger.close()
            if run.sandbox is not None:
                run.sandbox.close()
