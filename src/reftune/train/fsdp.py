"""FSDP2: parameters, gradients and optimizer state sharded across the processes of a launch (ZeRO-3 / ZeRO-2).

Chosen at launch, not in the run's config: `accelerate launch --config_file examples/accelerate/fsdp2.yaml ...`
(which sets `ACCELERATE_USE_FSDP=true` and the `FSDP_*` variables), or those variables with `torchrun`. With
one process there is nothing to shard and the run is the plain one.

reftune applies torch's `fully_shard` itself — to each transformer block (the model's `_no_split_modules`, or
`FSDP_TRANSFORMER_CLS_TO_WRAP`) and then to the whole policy — instead of handing the model to
`accelerator.prepare`: accelerate drops FSDP when there is no GPU (so that path could never run in CI), and the
loops need something its wrapper does not give them:

- **Whole weights where they are read, not trained** (`gathered`): sampling, the scoring passes, validation,
  saving and the push into a vLLM engine run inside `gathered(model)`, which all-gathers every block once and keeps
  it whole until the block ends. Forwards inside make no collective call, so processes may run different numbers
  of them (generating to different lengths, validating on the main process only). The memory of that moment is
  the full weights, as with a vLLM engine beside the trainer or DeepSpeed's gathered generation.
- **Sharded training**: the update's forward and backward gather each block for its own computation and free it
  after (`FSDP_RESHARD_AFTER_FORWARD=true`, ZeRO-3; `false` keeps blocks whole between forward and backward,
  ZeRO-2-like), gradients are reduce-scattered (averaged, as DDP averages them), AdamW's moments live on the
  shards: 1/N of the weights' gradients and optimizer state per process.
- **The single-process checkpoint format**: weights saved from inside `gathered` (HF files) and the optimizer
  state gathered to full tensors keyed as `optimizer.state_dict()` keys them (`full_optimizer_state`), put back
  onto the shards on resume (`load_full_optimizer_state`). A run saved sharded resumes in one process and the
  other way round.

The frozen reference model (the KL's) is not sharded: it has no gradients or optimizer state, and a LoRA policy
needs no second copy at all (its reference is the policy with the adapters off).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

from reftune.errors import UserError
from reftune.model.sharded import full_state_dict, fsdp_modules, is_dtensor, is_sharded  # noqa: F401 (re-exported)

TRUE = {"1", "true", "yes", "on"}


def world_size() -> int:
    """The launch's process count (torchrun and accelerate launch set WORLD_SIZE). Read from the environment, not
    from `reftune.train.accel`, which imports this module."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def requested() -> bool:
    """Whether the launch asks for FSDP (accelerate's launch config sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in TRUE


def enabled() -> bool:
    """FSDP for this process: requested, and more than one process to shard over."""
    return requested() and world_size() > 1


def reshard_after_forward() -> bool:
    """FSDP_RESHARD_AFTER_FORWARD (accelerate writes true/false, or FSDP1's FULL_SHARD): default true, ZeRO-3."""
    return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower() in TRUE | {"full_shard"}


def _check_version() -> None:
    version = os.environ.get("FSDP_VERSION", "2").strip()
    if version != "2":
        raise UserError(f"FSDP_VERSION={version}: reftune shards with FSDP2 (torch's fully_shard) only; set "
                        f"fsdp_version: 2 in the accelerate config (examples/accelerate/fsdp2.yaml)")


def block_classes(model: nn.Module) -> set[str]:
    """The class names of the modules sharded on their own: FSDP_TRANSFORMER_CLS_TO_WRAP (comma-separated), else
    every `_no_split_modules` a Hugging Face model inside `model` declares (its decoder layer)."""
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").strip()
    if names:
        return {n.strip() for n in names.split(",") if n.strip()}
    found: set[str] = set()
    for m in model.modules():
        found.update(getattr(m, "_no_split_modules", None) or [])
    return found


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard `model` in place over every process (one group per transformer block, the rest in the root group);
    returns it. Build the optimizer afterwards: sharding replaces the parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    _check_version()
    if any(type(m).__name__.startswith("Peft") for m in model.modules()):
        raise UserError("FSDP with LoRA (model.lora) is not supported yet: launch LoRA runs data-parallel (DDP) — "
                        "its optimizer state is already small — or shard a full fine-tune")
    name = type(model).__name__  # fully_shard renames the class (FSDP<name>)
    mesh = init_device_mesh(device.type, (world_size(),))
    reshard = reshard_after_forward()
    offload = CPUOffloadPolicy() if os.environ.get("FSDP_OFFLOAD_PARAMS", "").strip().lower() in TRUE else OffloadPolicy()
    classes = block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in classes]
    if not blocks:
        raise UserError(f"FSDP: no module of the classes to shard ({sorted(classes) or 'none declared'}) in the "
                        f"model; name them in FSDP_TRANSFORMER_CLS_TO_WRAP")
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, offload_policy=offload)
    # FSDP2 takes the first module to run a forward as the root; sampling runs the LM (inside the policy) first,
    # so the policy is made the root now
    model._get_fsdp_state()._lazy_init()
    local = sum(p.to_local().numel() if is_dtensor(p) else p.numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    if mesh.get_rank() == 0:
        print(f"[fsdp] sharded {name}: {len(blocks)} blocks + the rest, over {world_size()} "
              f"processes (reshard after forward: {reshard}); process 0 holds {local:,} of its {total:,} "
              f"parameters ({100 * local / total:.1f} %), and their gradients and optimizer state", flush=True)
    return model


@contextlib.contextmanager
def gathered(model: nn.Module | None) -> Iterator[None]:
    """Every sharded block of `model` whole on every process for the duration of the block (a no-op for a model
    that is not sharded). All processes must enter it together (the all-gathers are collective); inside, a
    forward is a local computation and `model.parameters()` are plain full tensors."""
    modules = fsdp_modules(model) if model is not None else []
    if not modules:
        yield
        return
    for m in modules:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        reshard = reshard_after_forward()
        for m in modules:
            m.set_reshard_after_forward(reshard, recurse=False)
            m.reshard()


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded tensor gathered whole (collective: every process calls it,
    every process gets the full state): the format a one-process run saves."""
    state = optimizer.state_dict()
    full = {}
    for idx in sorted(state["state"]):
        full[idx] = {k: v.full_tensor() if is_dtensor(v) else v for k, v in state["state"][idx].items()}
    return {"state": full, "param_groups": state["param_groups"]}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Put a full `optimizer.state_dict()` (from `full_optimizer_state` or a one-process run) back into an
    optimizer over sharded parameters: each process keeps its own shard of every tensor shaped like its
    parameter (no communication: every process read the same file)."""
    from torch.distributed.tensor import distribute_tensor
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sharded = {}
    for idx, values in state["state"].items():
        p = params[int(idx)]
        sharded[idx] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                        if is_dtensor(p) and torch.is_tensor(v) and v.shape == p.shape else v
                        for k, v in values.items()}
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})
