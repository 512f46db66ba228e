"""Models and tokenizers: the tiny default built from scratch, any HF causal LM, and the value head.

Everything is saved and loaded in Hugging Face format, so the tiny default and a real model share one
code path. The value head (ReFT) is a linear layer on the policy's last hidden state: one trunk serves
both the token distribution and the value estimate.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from reftune.errors import UserError
from reftune.model.lm_head import contiguous_lm_head_input
from reftune.model.source import SMOLLM2, read_reference, smollm2_gguf_path

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, digits always split one per token.

    Splitting digits keeps arithmetic learnable by a tiny model (each digit is a token, as in Llama/
    DeepSeek tokenizers); byte-level BPE makes decoding lossless, so extracted answers are exact.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, padding_side="left", clean_up_tokenization_spaces=False)


def build_tiny_model(tokenizer, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                     max_length: int, seed: int):
    """A small Llama-architecture causal LM with random weights (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max(512, max_length), tie_word_embeddings=True, rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return contiguous_lm_head_input(LlamaForCausalLM(config))


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of `model`'s decoder layers (a HF model or a PEFT model around one),
    through `activation_checkpointing_enable` where transformers has it (5.2x; `gradient_checkpointing_enable`
    is its deprecated alias there, warning on every call) and `gradient_checkpointing_enable` before."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def is_tiny_default(model_cfg) -> bool:
    """Whether a `ModelConfig` asks for the tiny default: neither `name_or_path` nor `gguf_file` is set. Every
    command decides with this one test, so `model.gguf_file=smollm2` alone loads SmolLM2 everywhere."""
    return not model_cfg.name_or_path and not model_cfg.gguf_file


def load_pretrained(name_or_path: str, gguf_file: str | None = None, *, lora_trainable: bool = False):
    """(model, tokenizer) in fp32 from a local HF dir, a hub id (where there is internet) or a GGUF file.

    A LoRA checkpoint (`reftune.model.lora`) comes back merged into its start model, or, with `lora_trainable`
    (resuming its own stage), as a peft model whose adapters train. A reference directory (`source.json`, e.g. a
    run's `init/` for a `--model` start; `reftune.model.source`) loads the model it names, once checked unchanged
    (`gguf_file` is then the reference's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reftune.model.lora import is_adapter_dir, load_lora
    kwargs: dict = {}
    shown = f"'{name_or_path}'"
    reference = read_reference(name_or_path)
    if reference is not None:
        ref, (name_or_path, gguf_file, revision) = name_or_path, reference
        kwargs = {"revision": revision} if revision else {}
        shown = f"'{name_or_path or gguf_file}{'@' + revision if revision else ''}' (which {ref} refers to)"
    if not gguf_file and is_adapter_dir(name_or_path):
        return load_lora(name_or_path, load_pretrained, trainable=lora_trainable)

    if gguf_file == SMOLLM2:
        path = smollm2_gguf_path()
        name_or_path, gguf_file = str(path.parent), path.name
    if gguf_file:
        from transformers import GgufConfig
        kwargs["gguf_file"] = gguf_file
        model_kwargs = {**kwargs, "quantization_config": GgufConfig(dequantize=True)}
    else:
        model_kwargs = dict(kwargs)
    local = Path(name_or_path)
    if not local.exists() and (name_or_path.startswith((".", "/", "~")) or local.suffix):
        raise UserError(f"model not found: {name_or_path} (a local directory or a hub id)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32, **model_kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {shown}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return contiguous_lm_head_input(model), tokenizer


class PolicyWithValue(nn.Module):
    """A causal LM plus a linear value head on its last hidden state (shared trunk, as in ReFT)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids=None, with_values: bool = True, logits_to_keep: int = 0):
        """logits [B, T, V] (the last `logits_to_keep` positions only when > 0: the LM head skips the rest) and
        values [B, T] (None when with_values is False)."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=with_values, use_cache=False, logits_to_keep=logits_to_keep)
        values = self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1) if with_values else None
        return out.logits, values
