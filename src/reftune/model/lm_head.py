"""The LM head of a Hugging Face causal LM fed a contiguous input (see `contiguous_lm_head_input`)."""

from __future__ import annotations


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
