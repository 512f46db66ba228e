"""LoRA adapters through `peft`: put them on a model, save them without the base weights, load them back.

A LoRA checkpoint directory holds peft's `adapter_config.json` + `adapter_model.safetensors`, the tokenizer, the
value head (RL) and `lora_start.json` naming the checkpoint the adapters were trained on top of (a full model or,
recursively, another LoRA checkpoint). Loading one for inference or as the start of a new stage merges the
adapters into that start model (a plain HF model again); loading it to resume its own stage keeps them separate
and trainable. The frozen start model is what RL's reference is: the policy with its adapters disabled, so no
second copy of the weights is held.
"""

from __future__ import annotations

import json
from pathlib import Path

from reftune.errors import UserError

START_FILE = "lora_start.json"
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("lora.r: LoRA needs the peft package: pip install 'reftune[lora]'") from None
    return peft


def apply_lora(lm, cfg, start: str | Path):
    """`lm` with fresh LoRA adapters per `cfg` (a `LoraConfig` with r > 0), the base frozen; `start` (the
    checkpoint `lm` was loaded from) is recorded so that the adapters can be loaded back on top of it."""
    peft = _peft()
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                             task_type="CAUSAL_LM")
    try:
        model = peft.get_peft_model(lm, config)
    except ValueError as e:
        raise UserError(f"lora.target_modules: {e}") from None
    model.reftune_start = str(Path(start).resolve()) if Path(start).exists() else str(start)
    return model


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def save_start(model, path: Path) -> None:
    """Record beside saved adapters the checkpoint they sit on (see `apply_lora`)."""
    (path / START_FILE).write_text(json.dumps({"start": getattr(model, "reftune_start", None)}))


def load_lora(path: str | Path, load_start, trainable: bool):
    """(model, tokenizer) of a LoRA checkpoint: its start model (`load_start(start_path)` -> (lm, tokenizer),
    merged if itself a LoRA checkpoint) with the adapters on top — merged into it unless `trainable`."""
    peft = _peft()
    path = Path(path)
    start_file = path / START_FILE
    start = json.loads(start_file.read_text())["start"] if start_file.is_file() else None
    if not start:
        raise UserError(f"{path}: LoRA adapters without {START_FILE}: the checkpoint they were trained on is unknown")
    base, tokenizer = load_start(start)
    model = peft.PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
    model.reftune_start = start
    return (model if trainable else model.merge_and_unload()), tokenizer
