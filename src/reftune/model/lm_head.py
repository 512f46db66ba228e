"""The LM head of a Hugging Face causal LM: fed a contiguous input (`contiguous_lm_head_input`), computed in
fp32 while sampling in a lower precision (`fp32_lm_head`)."""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_lm_head_input(model):
    """Make the LM head's input contiguous (a forward pre-hook; idempotent; returns `model`).

    With `logits_to_keep`, HF heads read a slice `hidden[:, -k:]`, which is not contiguous. torch.matmul folds
    a 3-D input into one matrix product only when it can do so without a copy or when the weight requires grad;
    otherwise it broadcasts the weight to [B, hidden, vocab] and runs a batched product. For a frozen or no-grad
    head (the bf16 sampling copy, the KL reference, a LoRA base) that materialises B copies of the vocabulary
    matrix: for SmolLM2-135M (vocab 49,152) 32 prompts' prefill copied 1.8 GB and took over half of a rollout.
    Copying the [B, k, hidden] slice instead costs k * hidden per row."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_reftune_contiguous", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._reftune_contiguous = True
    return model


@contextlib.contextmanager
def fp32_lm_head(model, enabled: bool = True):
    """Within the block, `model`'s LM head computes the logits in fp32: its input and its weight as at entry are
    upcast and autocast is off for the product (the weight's bf16/fp16 rounding, if it is stored so, stays).

    What `rollout.fp32_lm_head` does for the hf sampler (vLLM: its `head_dtype`). Part of a bf16 sampler's
    log-prob mismatch with an fp32 trainer is the rounding of the logits themselves: a logit of 8-16 rounded to
    bf16's 8-bit mantissa moves by up to 1/32 nat (MiniMax-M1, 2025, traced its RL's training/inference mismatch
    to the head; bench/mismatch_bench.py measures the share). A head that is not a plain `nn.Linear` (a
    LoRA-adapted head) is left as it is, with a warning."""
    head = model.get_output_embeddings() if enabled and hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield model
        return
    if not isinstance(head, torch.nn.Linear):
        warnings.warn(f"rollout.fp32_lm_head: the LM head is a {type(head).__name__}, not a plain Linear; "
                      "it keeps the sampling precision", stacklevel=3)
        yield model
        return

    # upcast once per block, not at every decode step (a no-op alias for fp32 weights; for a bf16 copy of
    # SmolLM2's head, 113 MB a step); the weights do not change inside a rollout
    weight = head.weight.float()
    bias = None if head.bias is None else head.bias.float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), weight, bias)

    head.forward = forward  # an instance attribute: hooks still run, `del` restores the class's forward
    try:
        yield model
    finally:
        del head.forward
