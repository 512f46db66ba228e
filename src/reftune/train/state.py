"""`TrainState`: resume, save `last/`, keep `best/`, and snapshots — for SFT and RL alike.

A loop creates one after its optimizer and scheduler, calls `resume()` once, and then only `save(...)` and
`offer_best(...)`. The resumable state in `last/` is the optimizer (`optimizer.pt`), the scheduler
(`scheduler.pt`), every RNG (`rng_state.pth`), the loop's `Progress` (`trainer_state.json`) and each `extras`
object's `state_dict()` (`extras.pt`, e.g. the R^3 curriculum; file layout: `reftune.model.checkpoint`), so a run
resumed from `last/` continues exactly as the uninterrupted run would (tests/test_golden.py checks it bit for bit).

With several processes (data parallelism) every process keeps the same state (DDP keeps the weights, the
optimizer and the RNG in step): all resume from the same `last/`, and only the main process writes, the others
waiting until the checkpoint is complete. Sharded with FSDP (`reftune.train.fsdp`), every process first gathers
the whole weights and optimizer state, so the files are those of a one-process run, and on resume each process
takes its shards of them.

On disk the counters keep the names they had before this class existed (SFT: `epoch, step, best_val,
best_epoch, stale`; RL: `step, best_val, best_step`), and a `last/trainer_state.pt` of an earlier version (the
whole state in one pickle) is still read, so older runs still resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from reftune.errors import TrainingDiverged, UserError
from reftune.model.checkpoint import load_state, rng_state, save_checkpoint, set_rng_state
from reftune.train import fsdp, zero
from reftune.train.accel import DIVERGED_HINT, gather_lists, on_main


@dataclass
class Progress:
    """How far a loop got. `best_at` is an epoch (SFT) or an iteration (RL), as the state's `unit` says."""

    step: int = 0  # optimizer steps (SFT) or RL iterations done
    epoch: int = 0  # SFT epochs done
    best_val: float = -1.0  # highest validation accuracy so far (-1: none yet)
    best_at: int = -1  # the epoch / iteration of best_val
    stale: int = 0  # evaluations since best_val last improved


class TrainState:
    """Checkpoints of one training loop in `out_dir`.

    model: the (unwrapped) module saved in HF format; value_head: saved beside it when given; optimizer /
    scheduler: their states go in `last/`; unit: "epoch" (SFT: best by epoch) or "step" (RL: best by
    iteration); extras: named objects with state_dict() / load_state_dict() saved with the state.
    """

    def __init__(self, out_dir: str | Path, model, tokenizer, optimizer, scheduler, *, value_head=None,
                 unit: Literal["epoch", "step"] = "epoch", extras: dict[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        self.model, self.tokenizer, self.value_head = model, tokenizer, value_head
        self.optimizer, self.scheduler, self.unit = optimizer, scheduler, unit
        self.extras = {k: v for k, v in (extras or {}).items()}
        self.progress = Progress()

    def resume(self, lr: float | None = None) -> bool:
        """Load `out_dir/last`'s optimizer, scheduler, RNG, progress and extras, if it has a state.

        The weights themselves were loaded by the caller (the model is built from `last/`). lr: the run's
        learning rate now; when it differs from the saved one (a resume that lowers it after a divergence), the
        restored schedule continues from the new peak."""
        state = load_state(self.out_dir / "last")
        if state is None:
            return False
        if (zero.engine_of(self.optimizer) is not None) != ("zero_optimizer" in state):
            raise UserError(f"{self.out_dir / 'last'}: its optimizer state was saved "
                            f"{'with' if 'zero_optimizer' in state else 'without'} DeepSpeed ZeRO; resume it the "
                            f"same way")
        if "zero_optimizer" in state:
            self.optimizer.load_state_dict(state["zero_optimizer"], load_optimizer_states=True)
        elif fsdp.is_sharded(self.model):
            fsdp.load_full_optimizer_state(self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if lr is not None and any(base != lr for base in self.scheduler.base_lrs):
            self._set_peak_lr(lr)
        set_rng_state(state["rng"])
        self.progress = Progress(step=state["step"], epoch=state.get("epoch", 0), best_val=state["best_val"],
                                 best_at=state[f"best_{self.unit}"], stale=state.get("stale", 0))
        for name, obj in self.extras.items():
            if obj is not None and state.get(name) is not None:
                obj.load_state_dict(state[name])
        return True

    def _set_peak_lr(self, lr: float) -> None:
        """Rescale a restored LambdaLR schedule to peak `lr`: base lrs, and the current lr at its step."""
        sched = self.scheduler
        sched.base_lrs = [lr] * len(sched.base_lrs)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
        current = [lr * fn(sched.last_epoch) for fn in sched.lr_lambdas]
        for group, value in zip(self.optimizer.param_groups, current):
            group["lr"] = value
        sched._last_lr = current

    def _state(self) -> dict[str, Any]:
        p = self.progress
        if zero.engine_of(self.optimizer) is not None:  # every process's partition, in process order
            optimizer = {"zero_optimizer": gather_lists([self.optimizer.state_dict()])}
        elif fsdp.is_sharded(self.model):
            optimizer = {"optimizer": fsdp.full_optimizer_state(self.optimizer)}
        else:
            optimizer = {"optimizer": self.optimizer.state_dict()}
        state = {**optimizer, "scheduler": self.scheduler.state_dict(),
                 "rng": rng_state(), "step": p.step, "best_val": p.best_val, f"best_{self.unit}": p.best_at}
        if self.unit == "epoch":
            state.update(epoch=p.epoch, stale=p.stale)
        for name, obj in self.extras.items():
            state[name] = obj.state_dict() if obj is not None else None
        return state

    def save(self, name: str, resumable: bool = False) -> Path:
        """Write the weights to `out_dir/name` (e.g. "last", "epoch-2", "step-30"); with the resumable state
        when `resumable`. Non-finite weights are never saved: `TrainingDiverged`, and the previous checkpoint of
        that name stays as it was."""
        # FSDP / ZeRO-3: every process gathers the whole weights, the main one saves them
        whole = fsdp.full_state_dict if fsdp.is_sharded(self.model) else (
            zero.whole_state_dict if zero.is_zero3(self.model) else None)
        sharded = whole is not None
        weights = whole(self.model) if sharded else None
        head = whole(self.value_head) if sharded and self.value_head is not None else None
        tensors = (list(weights.values()) + list((head or {}).values()) if sharded else
                   [t for m in (self.model, self.value_head) if m is not None for t in m.parameters()])
        if not all(torch.isfinite(t).all() for t in tensors):
            raise TrainingDiverged(f"{self.out_dir}: the weights are NaN/inf after step {self.progress.step}, so "
                                   f"{name}/ was not written; {DIVERGED_HINT}")
        path = self.out_dir / name
        on_main(save_checkpoint, path, self.model, self.tokenizer, value_head=self.value_head,
                state=self._state() if resumable else None, weights=weights, value_head_weights=head)
        return path

    def save_last(self) -> Path:
        return self.save("last", resumable=True)

    def offer_best(self, accuracy: float) -> bool:
        """Record a validation accuracy at the current epoch / iteration; a new best is saved to `best/`."""
        p = self.progress
        if accuracy > p.best_val:
            p.best_val, p.best_at, p.stale = accuracy, p.epoch if self.unit == "epoch" else p.step, 0
            self.save("best")
            return True
        p.stale += 1
        return False
