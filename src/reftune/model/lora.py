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
from reftune.model.lm_head import contiguous_lm_head_input

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
    """`lm` with fresh LoRA adapters per `cfg` (a `LoraConfig` with r > 0), the base frozen — and quantized by
    bitsandbytes with cfg.quantize (QLoRA); `start` (the checkpoint `lm` was loaded from) is recorded so that the
    adapters can be loaded back on top of it."""
    peft = _peft()
    quantize = getattr(cfg, "quantize", "none")
    if quantize != "none":
        lm = quantize_model(lm, quantize)
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                             task_type="CAUSAL_LM")
    try:
        model = peft.get_peft_model(lm, config)
    except ValueError as e:
        raise UserError(f"lora.target_modules: {e}") from None
    model.reftune_start = str(Path(start).resolve()) if Path(start).exists() else str(start)
    model.reftune_quantize = quantize
    return model


def quantize_model(lm, quantize: str):
    """A copy of `lm` whose linear layers are bitsandbytes' 4-bit NF4 (double-quantized, computing in `lm`'s dtype)
    or 8-bit ones, on this process's device, prepared for training adapters on top (peft's
    `prepare_model_for_kbit_training`, without its gradient checkpointing: that is `*.gradient_checkpointing`).
    The weights go through a temporary HF directory (the one loading path bitsandbytes supports), so any start
    model works, a dequantized GGUF included."""
    import os
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("lora.quantize: QLoRA needs bitsandbytes: pip install 'reftune[qlora]'") from None
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    narrow = sorted({m.in_features for m in lm.modules() if isinstance(m, torch.nn.Linear) and m.in_features % 64})
    if quantize == "4bit" and device == "cpu" and narrow:  # bitsandbytes 0.50's CPU kernel fails on these
        raise UserError(f"lora.quantize: 4-bit on CPU needs layer input widths that are multiples of 64; this model "
                        f"has {narrow}; use lora.quantize=8bit or a wider model")
    dtype = next(lm.parameters()).dtype
    config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=dtype) if quantize == "4bit" else
              BitsAndBytesConfig(load_in_8bit=True))
    with tempfile.TemporaryDirectory(prefix="reftune-qlora-") as tmp:
        lm.save_pretrained(tmp)
        quantized = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, quantization_config=config,
                                                         device_map={"": device})
    if lm.generation_config is not None:
        quantized.generation_config = lm.generation_config
    for module in quantized.modules():
        # bitsandbytes' CPU inference path repacks the NF4 weights at the first no-grad eval forward and rounds
        # their scales to bf16 for good: the trainer would then see other weights after each validation. Off.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return _peft().prepare_model_for_kbit_training(contiguous_lm_head_input(quantized), use_gradient_checkpointing=False)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def save_start(model, path: Path) -> None:
    """Record beside saved adapters the checkpoint they sit on (see `apply_lora`)."""
    (path / START_FILE).write_text(json.dumps({"start": getattr(model, "reftune_start", None),
                                               "quantize": getattr(model, "reftune_quantize", "none")}))


def load_lora(path: str | Path, load_start, trainable: bool):
    """(model, tokenizer) of a LoRA checkpoint: its start model (`load_start(start_path)` -> (lm, tokenizer),
    merged if itself a LoRA checkpoint) with the adapters on top — merged into it unless `trainable`. Adapters
    trained on a quantized base (QLoRA) resume on the base quantized the same way; merged, they go into the
    full-precision start model (what inference and the next stage load)."""
    peft = _peft()
    path = Path(path)
    start_file = path / START_FILE
    saved = json.loads(start_file.read_text()) if start_file.is_file() else {}
    start, quantize = saved.get("start"), saved.get("quantize", "none")
    if not start:
        raise UserError(f"{path}: LoRA adapters without {START_FILE}: the checkpoint they were trained on is unknown")
    base, tokenizer = load_start(start)
    if trainable and quantize != "none":
        base = quantize_model(base, quantize)
    model = peft.PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
    model.reftune_start, model.reftune_quantize = start, quantize
    return (model if trainable else model.merge_and_unload()), tokenizer


def merged_state_dict(model) -> dict:
    """The weights a LoRA model computes with, under the base model's own names (what a plain HF model of the
    same architecture loads): W + ΔW (`get_delta_weight` of the active adapters) for every adapted layer, the
    base weights elsewhere; adapters and dropout excluded. `model` itself is not changed (no merge/unmerge, whose
    round trip would drift the base weights in floating point). For a model without adapters, its state dict."""
    if not is_lora(model):
        from reftune.model.sharded import full_state_dict
        return full_state_dict(model)  # FSDP-sharded: gathered whole (every process calls this)
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    out = {}
    for name, t in base.state_dict().items():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = t
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.disable_adapters:
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
            out[f"{name}.weight"] = module.get_base_layer().weight + delta
    return out
