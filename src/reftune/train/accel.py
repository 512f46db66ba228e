"""The one `accelerate.Accelerator` of a process, and precision helpers.

One process on CPU here; `accelerate launch` spreads the same loops over GPUs. Accelerate keeps global
state, so the accelerator is created once per process with the job's precision.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from reftune.errors import ConfigError

_ACCELERATOR: Accelerator | None = None
MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def get_accelerator(precision: str = "fp32") -> Accelerator:
    global _ACCELERATOR
    if precision not in MIXED:
        raise ConfigError(f"precision: '{precision}' is not one of fp32, bf16, fp16")
    if precision == "fp16" and not torch.cuda.is_available():
        # On CPU, accelerate accepts fp16 but neither autocasts nor scales the loss: the run would silently be fp32.
        raise ConfigError("precision: fp16 training needs a GPU (no fp16 autocast or loss scaling on CPU); "
                          "use bf16 or fp32 (rl.rollout_precision=fp16 works on CPU)")
    if _ACCELERATOR is None:
        _ACCELERATOR = Accelerator(mixed_precision=MIXED[precision])
    elif _ACCELERATOR.mixed_precision != MIXED[precision]:
        raise ConfigError(f"precision: this process already runs in {_ACCELERATOR.mixed_precision}; "
                          f"start a new process for {precision}")
    return _ACCELERATOR


DIVERGED_HINT = ("the last good checkpoint (last/) is kept; continue with --resume and a lower learning rate "
                 "(e.g. rl.lr=... or sft.lr=...), or use fp32")


def check_finite(value: torch.Tensor, what: str, where: str) -> None:
    from reftune.errors import TrainingDiverged
    if not torch.isfinite(value).all():
        raise TrainingDiverged(f"{where}: {what} is {value.item() if value.numel() == 1 else 'not finite'} "
                               f"(NaN/inf), so the weights were not updated; {DIVERGED_HINT}")


def optimizer_step(acc: Accelerator, loss: torch.Tensor, params, opt, grad_clip: float, sched=None,
                   where: str = "update") -> float:
    """backward → clip → step (→ scheduler step) → zero grad, the same in every loop; returns the grad norm.

    A non-finite loss or gradient norm raises `TrainingDiverged` before the weights change (`where` names the
    step in the message)."""
    check_finite(loss.detach(), "loss", where)
    acc.backward(loss)
    grad_norm = acc.clip_grad_norm_(params, grad_clip)
    check_finite(torch.as_tensor(grad_norm).detach(), "gradient norm", where)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm)
