"""What the model code needs to know of a module sharded by FSDP2 (`reftune.train.fsdp`) or partitioned by
DeepSpeed ZeRO-3 (`reftune.train.zero`): whether it is, and its state dict with every FSDP shard gathered whole."""

from __future__ import annotations

import torch
from torch import nn


def is_dtensor(x) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(x, DTensor)


def fsdp_modules(model: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: nn.Module) -> bool:
    """Whether `module` holds FSDP-sharded blocks (also inside `fsdp.gathered`, where its parameters are whole)."""
    return bool(fsdp_modules(module))


def is_zero3(module: nn.Module) -> bool:
    """Whether `module`'s parameters are ZeRO-3 partitions (DeepSpeed marks them with `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def is_partitioned(module: nn.Module) -> bool:
    """Whether `module`'s weights are split over processes (FSDP2 or ZeRO-3): not copyable as they are."""
    return is_sharded(module) or is_zero3(module)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with every sharded tensor gathered whole, detached (collective when `module` is
    sharded: every process calls it; the plain state dict otherwise)."""
    return {k: (v.full_tensor() if is_dtensor(v) else v).detach() for k, v in module.state_dict().items()}
