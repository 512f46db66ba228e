"""Checkpoint I/O, in one place: HF-format model + tokenizer, value head, and resumable trainer state.

A checkpoint directory holds `save_pretrained` files (loadable by any HF tool), `value_head.safetensors`
when a value head exists, and `reward_model.json` when the value head is a reward model's score head (its kind:
"verifier", a logit of P(correct), or "bradley_terry", an unbounded preference score).

A checkpoint the run can resume from (`last/`) also holds its trainer state, in the files Hugging Face's
Trainer uses: `trainer_state.json` (the counters: step, epoch, best_val, ...; plain JSON), `optimizer.pt` and
`scheduler.pt` (the `state_dict()`s, loadable with `torch.load(..., weights_only=True)`; a DeepSpeed ZeRO run
writes `zero_optimizer.pt` instead, its processes' optimizer partitions), `rng_state.pth`
(every RNG, see `rng_state`) and `extras.pt` (the loop's other resumable objects' `state_dict()`s, e.g. the R^3
curriculum). Runs written before this layout have one pickle, `trainer_state.pt`; `load_state` still reads it.

A start directory may also be a reference instead of a copy (`init/` of a run from `--model`): `source.json`
names the model it stands for, and `reftune.model.source` loads that (see there).

Writes go to a temporary sibling directory renamed into place, so a run killed mid-write keeps its previous
checkpoint intact.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"  # the counters: its presence marks a resumable checkpoint
OPTIMIZER_FILE = "optimizer.pt"
ZERO_OPTIMIZER_FILE = "zero_optimizer.pt"  # a DeepSpeed ZeRO run's: one optimizer partition per process (a list)
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pth"
EXTRAS_FILE = "extras.pt"
LEGACY_STATE_FILE = "trainer_state.pt"  # the whole state in one pickle (runs written by earlier versions)
STATE_FILES = (STATE_FILE, OPTIMIZER_FILE, ZERO_OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, EXTRAS_FILE, LEGACY_STATE_FILE)
VALUE_HEAD_FILE = "value_head.safetensors"
REWARD_MODEL_FILE = "reward_model.json"
SOURCE_FILE = "source.json"  # a reference to the model a directory stands for (reftune.model.source)


def rng_state() -> dict[str, Any]:
    """Every RNG a loop draws from: Python's, NumPy's, torch's CPU one and (on a GPU) every CUDA device's. Only
    tensors and plain Python values (NumPy's key array as a tensor), so `torch.load(..., weights_only=True)`
    reads it back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back a `rng_state()` (or an older one, whose NumPy state is `np.random.get_state()`'s tuple)."""
    random.setstate(state["python"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
               npy["cached_gaussian"])
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_rng(f: str | Path) -> dict[str, Any]:
    """A `rng_state()` saved with torch.save. Read with weights_only=True; a file from an earlier version (NumPy's
    state as a pickled ndarray, which weights_only refuses) falls back to a full unpickle: it is this program's
    own output, in a run directory the user trusts as much as the code it runs."""
    try:
        return torch.load(f, weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(f, weights_only=False)


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill directory `path` by `write(tmp)` on a temporary sibling, then rename it into place: a run killed
    mid-write keeps the previous `path` (see `recover`)."""
    path = recover(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def save_checkpoint(path: str | Path, model, tokenizer, value_head: torch.nn.Module | None = None,
                    state: dict[str, Any] | None = None, reward_model: dict[str, Any] | None = None,
                    weights: dict[str, torch.Tensor] | None = None,
                    value_head_weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write a checkpoint directory (model in HF format + optional value head, trainer state (see
    `save_state`) and reward-model description, see `read_reward_model_info`). weights / value_head_weights:
    the state dicts to write instead of the modules' own (a sharded model's, gathered whole)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)  # peft: the adapters only
        if hasattr(model, "peft_config"):
            from reftune.model.lora import save_start
            save_start(model, tmp)
        tokenizer.save_pretrained(tmp)
        if value_head is not None:
            head = value_head_weights if value_head_weights is not None else value_head.state_dict()
            save_file({k: v.detach().contiguous() for k, v in head.items()}, tmp / VALUE_HEAD_FILE)
        if state is not None:
            save_state(tmp, state)
        if reward_model is not None:
            (tmp / REWARD_MODEL_FILE).write_text(json.dumps(reward_model, indent=2))

    return write_atomically(path, write)


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write a trainer state dict into `folder`: "optimizer" → optimizer.pt, "scheduler" → scheduler.pt, "rng" →
    rng_state.pth, plain numbers/strings/None (the counters) → trainer_state.json, anything else (the extras'
    state dicts) → extras.pt. `load_state` puts the same dict back together."""
    state = dict(state)
    for key, name in (("optimizer", OPTIMIZER_FILE), ("zero_optimizer", ZERO_OPTIMIZER_FILE),
                      ("scheduler", SCHEDULER_FILE), ("rng", RNG_FILE)):
        if state.get(key) is not None:
            torch.save(state.pop(key), folder / name)
    counters = {k: v for k, v in state.items() if _is_scalar(v)}
    extras = {k: v for k, v in state.items() if k not in counters}
    if extras:
        torch.save(extras, folder / EXTRAS_FILE)
    (folder / STATE_FILE).write_text(json.dumps(counters, indent=2) + "\n")


def recover(path: str | Path) -> Path:
    """Undo a save interrupted between its two renames: `X.old` exists but `X` does not."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.is_dir():
        old.rename(path)
    return path


def load_value_head(path: str | Path, value_head: torch.nn.Module) -> bool:
    """Load the value head saved next to a model, if any. Returns whether one was found."""
    f = Path(path) / VALUE_HEAD_FILE
    if not f.is_file():
        return False
    value_head.load_state_dict(load_file(f))
    return True


def read_reward_model_info(path: str | Path) -> dict[str, Any] | None:
    """The reward-model description saved with a checkpoint ({"kind", "template", "max_length"}), or None."""
    f = recover(path) / REWARD_MODEL_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def has_state(path: str | Path) -> bool:
    """Whether a checkpoint holds a resumable trainer state (either layout)."""
    path = recover(path)
    return (path / STATE_FILE).is_file() or (path / LEGACY_STATE_FILE).is_file()


def load_progress(path: str | Path) -> dict[str, Any] | None:
    """The counters of a checkpoint's trainer state (step, epoch, best_val, ...) without the optimizer: cheap."""
    path = recover(path)
    if (path / STATE_FILE).is_file():
        return json.loads((path / STATE_FILE).read_text())
    return load_state(path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The trainer state saved with a checkpoint, as one dict (the one `save_state` was given: "optimizer",
    "scheduler", "rng", the counters and the extras by name), or None. Every file but the RNG state is read with
    weights_only=True; an old single-pickle `trainer_state.pt` is unpickled whole (reftune's own output)."""
    path = recover(path)
    if not (path / STATE_FILE).is_file():
        legacy = path / LEGACY_STATE_FILE
        return torch.load(legacy, weights_only=False) if legacy.is_file() else None
    state = json.loads((path / STATE_FILE).read_text())
    for key, name in (("optimizer", OPTIMIZER_FILE), ("scheduler", SCHEDULER_FILE)):
        if (path / name).is_file():
            state[key] = torch.load(path / name, weights_only=True)
    if (path / ZERO_OPTIMIZER_FILE).is_file():  # DeepSpeed's partitions hold its loss-scaler object: a full unpickle
        state["zero_optimizer"] = torch.load(path / ZERO_OPTIMIZER_FILE, weights_only=False)  # of reftune's output
    if (path / RNG_FILE).is_file():
        state["rng"] = load_rng(path / RNG_FILE)
    if (path / EXTRAS_FILE).is_file():
        state.update(torch.load(path / EXTRAS_FILE, weights_only=True))
    return state


def is_checkpoint(path: str | Path) -> bool:
    """A model checkpoint: HF files (config.json), LoRA adapters (adapter_config.json) or a reference to a model
    (source.json)."""
    path = recover(path)
    return any((path / f).is_file() for f in ("config.json", "adapter_config.json", SOURCE_FILE))
