"""DeepSpeed ZeRO-1/2/3: gradients and AdamW's state (ZeRO-3: the weights too) partitioned over the processes.

Chosen at launch: `accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml ...` (or `..._zero3.yaml`;
they set `ACCELERATE_USE_DEEPSPEED=true` and `ACCELERATE_DEEPSPEED_CONFIG_FILE`), or those variables with
`torchrun`. With one process the run is the plain one. `pip install 'reftune[deepspeed]'`.

reftune calls `deepspeed.initialize` itself (as it calls `fully_shard` itself for FSDP, `reftune.train.fsdp`) with
the optimizer the loop built, and keeps driving the step: `backward` and `step` go to the DeepSpeed engine, which
reduce-scatters the gradients into each process's partition, clips them (`gradient_clipping` = the loop's
`grad_clip`) and steps AdamW on the partition; the loop's learning-rate schedule moves the optimizer's lr as before.
With ZeRO-1/2 the weights stay whole on every process, so sampling, scoring, validation and saving are unchanged.
With ZeRO-3 they run inside `gathered` (DeepSpeed's `unwrap_model_for_generation`: every parameter gathered, the
engine's fetch/release hooks off, so forwards make no collective call and processes may generate to different
lengths), and checkpoints are written from gathered weights (`whole_state_dict`). What the DeepSpeed config may
set: `zero_optimization` (stage, bucket sizes, overlap, offload), `communication_data_type`; batch sizes and
accumulation are the loop's own (the engine is told 1 and 1, micro-batch boundaries are set by the loop),
precision is reftune's `precision=` (autocast), the optimizer and schedule are reftune's.

Differences from the one-process step: DeepSpeed checks nothing before it steps, so a non-finite gradient norm is
found after the step (a non-finite loss is still caught before backward, and non-finite weights are never
saved); and the resumable optimizer state is DeepSpeed's own, one partition per process
(`zero_optimizer.pt`): a ZeRO run resumes under ZeRO.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from pathlib import Path

import torch

from reftune.errors import UserError
from reftune.model.sharded import is_zero3  # noqa: F401 (re-exported)
from reftune.train.fsdp import world_size

TRUE = {"1", "true", "yes", "on"}
ENGINE_ATTR = "_reftune_engine"  # the engine, on the ZeRO optimizer the loop holds
_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> its engine (not an attribute:
# an engine is an nn.Module, and assigning it to the model would make it a submodule of what it wraps)


def requested() -> bool:
    """Whether the launch asks for DeepSpeed (accelerate's launch config sets ACCELERATE_USE_DEEPSPEED)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in TRUE


def enabled() -> bool:
    return requested() and world_size() > 1


def ds_config(grad_clip: float) -> dict:
    """The DeepSpeed config: ACCELERATE_DEEPSPEED_CONFIG_FILE (a JSON file) if set, else ZeRO stage
    ACCELERATE_DEEPSPEED_ZERO_STAGE (default 2); with reftune's batch, clipping and precision put in."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    if path and path.lower() != "none":
        try:
            cfg = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"ACCELERATE_DEEPSPEED_CONFIG_FILE={path}: cannot read it as JSON ({e})") from e
    else:
        cfg = {"zero_optimization": {"stage": int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))}}
    stage = int(cfg.get("zero_optimization", {}).get("stage", 0))
    if stage not in (1, 2, 3):
        raise UserError(f"DeepSpeed zero_optimization.stage={stage}: expected 1, 2 or 3")
    for key in ("optimizer", "scheduler", "fp16", "bf16"):
        if key in cfg and cfg[key] not in (None, "auto") and not (isinstance(cfg[key], dict) and
                                                                   cfg[key].get("enabled") in (False, "auto")):
            raise UserError(f"DeepSpeed config: '{key}' is reftune's own (the optimizer and schedule of the "
                            f"run's config, `precision=`); remove it from the DeepSpeed config")
    cfg = {k: v for k, v in cfg.items() if k not in ("optimizer", "scheduler", "fp16", "bf16")}
    cfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, gradient_clipping=grad_clip,
               steps_per_print=2 ** 62)
    cfg.pop("train_batch_size", None)
    return cfg


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float):
    """(engine, ZeRO optimizer) for `model` and the loop's `optimizer` (collective: every process calls it)."""
    try:
        import deepspeed
    except ImportError as e:
        raise UserError("a DeepSpeed launch needs deepspeed: pip install 'reftune[deepspeed]'") from e
    if any(type(m).__name__.startswith("Peft") for m in model.modules()):
        raise UserError("DeepSpeed with LoRA (model.lora) is not supported: launch LoRA runs data-parallel (DDP)")
    from reftune.train import fsdp
    if fsdp.requested():
        raise UserError("the launch asks for both FSDP and DeepSpeed; choose one")
    engine, zero_opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(grad_clip),
                                                  dist_init_required=False)
    setattr(zero_opt, ENGINE_ATTR, engine)
    _ENGINES[model] = engine
    if engine.global_rank == 0:
        stage = engine.zero_optimization_stage()
        print(f"[deepspeed] ZeRO stage {stage}: {'weights, ' if stage == 3 else ''}gradients and optimizer state "
              f"partitioned over {engine.dp_world_size} processes", flush=True)
    return engine, zero_opt


def engine_of(optimizer):
    """The DeepSpeed engine behind a ZeRO optimizer, or None for any other optimizer."""
    return getattr(optimizer, ENGINE_ATTR, None)


@contextlib.contextmanager
def accumulating(optimizer):
    """Backward passes inside add to the step's gradients without ending it (DeepSpeed's accumulation
    boundary off); a no-op for other optimizers."""
    engine = engine_of(optimizer)
    if engine is None:
        yield
        return
    engine.set_gradient_accumulation_boundary(False)
    try:
        yield
    finally:
        engine.set_gradient_accumulation_boundary(True)


def engine_for(model):
    """The DeepSpeed engine of `model` (the engine itself or the module it wraps), or None."""
    if type(model).__name__ == "DeepSpeedEngine":
        return model
    return _ENGINES.get(model) if model is not None else None


@contextlib.contextmanager
def gathered(model):
    """ZeRO-3: every parameter of `model` whole on every process for the block, and the engine's fetch/release
    hooks off, so that forwards inside are local computations (processes may run different numbers of them). All
    processes enter it together. A no-op for a model that is not ZeRO-3."""
    engine = engine_for(model)
    if engine is None or engine.zero_optimization_stage() != 3:
        yield
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation
    with unwrap_model_for_generation(engine):
        yield


def whole_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with ZeRO-3 partitions gathered whole (collective: every process calls it)."""
    import deepspeed
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
