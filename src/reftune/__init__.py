"""reftune: reinforced fine-tuning (ReFT, R^3, GRPO) of causal LMs on tasks with verifiable answers."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft and accelerate when installed: `reftune[qlora]`) warns at import on CPUs with
# AVX512-BF16 that it cannot fetch an optional kernel from the hub; reftune never uses that inference path
# (`model.lora.quantize_model`) and runs offline, so the line is noise on every command's stderr.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
