"""Checkpoint I/O, in one place: HF-format model + tokenizer, value head, and resumable trainer state.

A checkpoint directory holds `save_pretrained` files (loadable by any HF tool), `value_head.safetensors`
when a value head exists, `trainer_state.pt` (optimizer, scheduler, RNG states, counters) when the
run can resume from it, and `reward_model.json` when the value head is a reward model's score head (its kind:
"verifier", a logit of P(correct), or "bradley_terry", an unbounded preference score). Writes go to a temporary sibling directory renamed into place, so a run killed
mid-write keeps its previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.pt"
VALUE_HEAD_FILE = "value_head.safetensors"
REWARD_MODEL_FILE = "reward_model.json"


def rng_state() -> dict[str, Any]:
    """Every RNG a loop draws from: Python's, NumPy's, torch's CPU one and (on a GPU) every CUDA device's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, model, tokenizer, value_head: torch.nn.Module | None = None,
                    state: dict[str, Any] | None = None, reward_model: dict[str, Any] | None = None) -> Path:
    """Atomically write a checkpoint directory (model in HF format + optional value head, state and
    reward-model description, see `read_reward_model_info`)."""
    path = recover(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)  # a peft model saves its adapters only
    if hasattr(model, "peft_config"):
        from reftune.model.lora import save_start
        save_start(model, tmp)
    tokenizer.save_pretrained(tmp)
    if value_head is not None:
        save_file({k: v.detach().contiguous() for k, v in value_head.state_dict().items()}, tmp / VALUE_HEAD_FILE)
    if state is not None:
        torch.save(state, tmp / STATE_FILE)
    if reward_model is not None:
        (tmp / REWARD_MODEL_FILE).write_text(json.dumps(reward_model, indent=2))
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


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


def load_state(path: str | Path) -> dict[str, Any] | None:
    f = recover(path) / STATE_FILE
    return torch.load(f, weights_only=False) if f.is_file() else None


def is_checkpoint(path: str | Path) -> bool:
    """A model checkpoint: HF files (config.json) or LoRA adapters (adapter_config.json)."""
    path = recover(path)
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
