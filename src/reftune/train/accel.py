"""The one `accelerate.Accelerator` of a process, precision helpers, and the few collectives the loops use.

A plain `reftune ...` is one process. `torchrun --nproc_per_node N -m reftune.cli ...` or `accelerate launch
--multi_gpu ...` starts N, and the same loops then run data-parallel: DDP all-reduces the gradients, and the
helpers here sum partial statistics across processes (`all_sum`), hand the main process's values to the others
(`broadcast`), and let only the main process write (`is_main`, `on_main`, `wait`). With one process every helper
is the identity, so a single-process run computes exactly what it computed before. Without a GPU, a
multi-process launch gets gloo on CPU (accelerate's MULTI_CPU). Accelerate keeps global state, so the
accelerator is created once per process with the job's precision. An FSDP launch shards the model instead of
wrapping it in DDP, a DeepSpeed launch hands it to a ZeRO engine (`prepare`, `reftune.train.fsdp`,
`reftune.train.zero`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from datetime import timedelta
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, broadcast_object_list

from reftune.errors import ConfigError
from reftune.train import fsdp, zero

_ACCELERATOR: Accelerator | None = None
WAIT_LIMIT = timedelta(hours=6)  # how long a process waits for the others at a collective before failing
MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16_matmul(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU multiplies bf16 matrices in hardware (the avx512_bf16 or amx_bf16 flag); None where the
    flags cannot be read (not Linux)."""
    try:
        flags = set(next(line for line in open(cpuinfo) if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def warn_if_bf16_is_emulated(field: str, precision: str, device_type: str = "cpu") -> None:
    """A warning when `field` asks for bf16 on a CPU without bf16 matrix instructions: torch then converts every
    operand, and small matmuls run about 10x slower than fp32 (measured on a 2-core AMD EPYC, AVX2 only)."""
    if precision == "bf16" and device_type == "cpu" and cpu_has_bf16_matmul() is False:
        warnings.warn(f"{field}=bf16 on a CPU without bf16 matrix instructions (no avx512_bf16 or amx_bf16): bf16 "
                      f"matmuls are emulated here and much slower than fp32; fp32 is the faster choice on this "
                      f"machine", stacklevel=2)


def get_accelerator(precision: str = "fp32") -> Accelerator:
    global _ACCELERATOR
    if precision not in MIXED:
        raise ConfigError(f"precision: '{precision}' is not one of fp32, bf16, fp16")
    if precision == "fp16" and not torch.cuda.is_available():
        # On CPU, accelerate accepts fp16 but neither autocasts nor scales the loss: the run would silently be fp32.
        raise ConfigError("precision: fp16 training needs a GPU (no fp16 autocast or loss scaling on CPU); "
                          "use bf16 or fp32 (rl.rollout_precision=fp16 works on CPU)")
    if _ACCELERATOR is None:
        if not torch.cuda.is_available():
            warn_if_bf16_is_emulated("precision", precision)
        # buffers (RoPE frequencies) are not trained: no broadcast at every forward, which would also make
        # a forward a collective (scoring does a rank-dependent number of them)
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        with _own_deepspeed():
            _ACCELERATOR = Accelerator(mixed_precision=MIXED[precision], cpu=_cpu_only(), kwargs_handlers=[ddp])
    elif _ACCELERATOR.mixed_precision != MIXED[precision]:
        raise ConfigError(f"precision: this process already runs in {_ACCELERATOR.mixed_precision}; "
                          f"start a new process for {precision}")
    return _ACCELERATOR


def prepare(acc: Accelerator, model: torch.nn.Module, make_optimizer: Callable[[], torch.optim.Optimizer],
            grad_clip: float):
    """(model, optimizer) ready for this launch: as they are with one process, the model DDP-wrapped with
    several; in an FSDP launch (`reftune.train.fsdp`) the model sharded in place and the optimizer built over its
    shards (so it is built here, by `make_optimizer`, after sharding replaced the parameters); in a DeepSpeed
    launch (`reftune.train.zero`) the DeepSpeed engine and its ZeRO optimizer (clipping at `grad_clip`)."""
    if zero.enabled():
        return zero.initialize(model, make_optimizer(), grad_clip)
    if fsdp.enabled():
        fsdp.shard_model(model, acc.device)
        return model, acc.prepare_optimizer(make_optimizer())
    return acc.prepare(model, make_optimizer())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module itself inside a DDP wrapper or a DeepSpeed engine (both keep it as `.module`). Not
    `accelerator.unwrap_model`: with deepspeed installed, that imports it (4 s, and a warning) in every run."""
    from torch.nn.parallel import DistributedDataParallel
    while isinstance(model, DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    return model


@contextlib.contextmanager
def whole_weights(model):
    """A block in which `model`'s weights are whole on every process and its forwards make no collective call:
    FSDP2's gathered blocks (`fsdp.gathered`), DeepSpeed ZeRO-3's gathered parameters with its hooks off
    (`zero.gathered`); a no-op otherwise. Sampling, scoring, validation and the vLLM push run inside one; every
    process must enter it."""
    with fsdp.gathered(unwrap(model)), zero.gathered(model):
        yield


def backward(acc: Accelerator, loss: torch.Tensor, opt) -> None:
    """loss.backward() as the launch wants it (the DeepSpeed engine's, accelerate's otherwise)."""
    engine = zero.engine_of(opt)
    engine.backward(loss) if engine is not None else acc.backward(loss)


def no_sync(acc: Accelerator, model, opt):
    """A context for a micro-batch that is not the step's last: its backward adds to the gradients without
    synchronising them (DDP's no_sync; DeepSpeed: not an accumulation boundary)."""
    return zero.accumulating(opt) if zero.engine_of(opt) is not None else acc.no_sync(model)


@contextlib.contextmanager
def _own_deepspeed():
    """Accelerate's state and accelerator built as for a plain launch even in a DeepSpeed launch: reftune creates
    the engine itself (`reftune.train.zero`), and accelerate's own plugin would validate (and reject) the
    variables `accelerate launch` exports for it."""
    saved = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = saved


def _cpu_only() -> bool:
    """A multi-process launch on a machine without CUDA: accelerate then needs cpu=True to use gloo (MULTI_CPU);
    without it, each process would run alone, unaware of the others."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state() -> PartialState:
    """This process's place in the launch (process_index, num_processes), set up once per process; the
    accelerator built later shares it. The others wait at a barrier while the main process validates and
    evaluates, which may take long: the collectives' timeout is WAIT_LIMIT, not torch's 30 minutes."""
    with _own_deepspeed():
        return PartialState(cpu=_cpu_only(), timeout=WAIT_LIMIT)


def num_processes() -> int:
    return process_state().num_processes


def process_index() -> int:
    return process_state().process_index


def is_main() -> bool:
    """Whether this is the process that writes: the run directory, metrics, checkpoints, reports."""
    return process_state().is_main_process


def wait() -> None:
    """A barrier: every process gets here before any goes on (no-op with one process)."""
    if num_processes() > 1:
        process_state().wait_for_everyone()


def on_main(fn: Callable, *args, **kwargs) -> Any:
    """`fn(*args, **kwargs)` on the main process only, the others waiting until it is done; returns its result
    (None on the other processes)."""
    result = fn(*args, **kwargs) if is_main() else None
    wait()
    return result


def main_first():
    """A context: the main process runs the block first (e.g. builds and saves a model), then the others do
    (finding it saved)."""
    return process_state().main_process_first()


def broadcast(obj: Any) -> Any:
    """The main process's `obj` on every process (e.g. a validation accuracy all must act on alike)."""
    if num_processes() == 1:
        return obj
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `x` over all processes (a new tensor; `x` itself with one process)."""
    return _all_reduce(x, "SUM")


def all_max(x: torch.Tensor) -> torch.Tensor:
    """The elementwise max of `x` over all processes."""
    return _all_reduce(x, "MAX")


def all_weighted_means(values: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each value's mean over all processes, weighted by its weight on each process (e.g. a per-token mean by the
    process's token count), in one all-reduce; a key whose weights sum to 0 gets 0."""
    names = list(values)
    w = torch.stack([torch.as_tensor(weights[k]).float() for k in names])
    v = torch.stack([torch.as_tensor(values[k]).float().to(w.device) for k in names]) * w
    summed = all_sum(torch.cat([v, w]))
    return {k: float(summed[i] / summed[len(names) + i].clamp(min=1e-12)) for i, k in enumerate(names)}


def _all_reduce(x: torch.Tensor, op: str) -> torch.Tensor:
    if num_processes() == 1:
        return x
    out = x.detach().clone()
    torch.distributed.all_reduce(out, op=getattr(torch.distributed.ReduceOp, op))
    return out


def gather_lists(items: list) -> list:
    """Every process's `items` (picklable), concatenated in process order: with contiguous shards, the whole
    batch's list as one process has it."""
    if num_processes() == 1:
        return items
    from accelerate.utils import gather_object
    return gather_object(items)


def counts_by_process(counts: list[int]) -> list[list[int]]:
    """Every process's `counts` (the same length on all), by process index, in one all-reduce."""
    state = process_state()
    table = torch.zeros(state.num_processes, len(counts), dtype=torch.long, device=state.device)
    table[state.process_index] = torch.tensor(counts, dtype=torch.long)
    return all_sum(table).tolist()


def shard(n: int) -> range:
    """This process's contiguous share of n items (the first n % N processes get one more)."""
    state = process_state()
    size, extra = divmod(n, state.num_processes)
    start = state.process_index * size + min(state.process_index, extra)
    return range(start, start + size + (state.process_index < extra))


def row_span(n: int) -> tuple[int, int]:
    """(offset, total): where this process's n rows start among all processes' rows, laid out by process
    index, and how many rows there are in all."""
    state = process_state()
    if state.num_processes == 1:
        return 0, n
    sizes = all_sum(torch.zeros(state.num_processes, dtype=torch.long, device=state.device)
                    .index_fill_(0, torch.tensor([state.process_index], device=state.device), n)).tolist()
    return sum(sizes[:state.process_index]), sum(sizes)


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
    if (engine := zero.engine_of(opt)) is not None:  # DeepSpeed clips and steps inside engine.step()
        engine.backward(loss)
        engine.step()
        grad_norm = engine.get_global_grad_norm()
        check_finite(torch.as_tensor(grad_norm).detach(), "gradient norm (after the DeepSpeed step)", where)
        if sched is not None:
            sched.step()
        return float(grad_norm)
    acc.backward(loss)
    grad_norm = acc.clip_grad_norm_(params, grad_clip)
    check_finite(torch.as_tensor(grad_norm).detach(), "gradient norm", where)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    return float(grad_norm)


def shutdown() -> None:
    """End a launch of several processes cleanly once the command is done: wait for every process, then destroy the
    process group. Left to the interpreter's exit, gloo's threads can abort a process that had finished its work
    ("terminate called without an active exception", seen once in a two-process test). No-op in one process."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
