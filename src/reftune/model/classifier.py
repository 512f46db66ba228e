"""A trained verifier or reward model exported as a standard Hugging Face sequence-classification checkpoint
(`AutoModelForSequenceClassification`, num_labels = 1), so TRL's `RewardTrainer`/`GRPOTrainer(reward_funcs=...)`,
a `pipeline("text-classification")` or any HF tool can load it without reftune.

The trunk's weights are the policy's; the classifier's `score` layer is reftune's value head. HF's score layer has
no bias (`GenericForSequenceClassification`), so the head's bias b is written to the config as
`reftune_score_bias`: the exported logit is reftune's score − b. Rankings, Bradley-Terry preferences and
reranking are unchanged; add b back for a verifier's P(correct) = sigmoid(logit + b).

Score a text as reftune does: prompt + completion + EOS, read at the last token. HF reads the rightmost token that
is not the pad token, so with a tokenizer whose pad token is its EOS token pass unpadded rows (batch of one) or
right-pad with another token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CLASSIFIER_DIR = "hf_classifier"


def save_sequence_classifier(path: str | Path, lm, value_head: torch.nn.Module, tokenizer,
                             reward_model: dict | None = None) -> Path:
    """Write `lm`'s trunk + `value_head` as an HF sequence-classification checkpoint at `path`; returns it.

    lm: a causal LM (`AutoModelForCausalLM`; a peft model is merged into a copy first); value_head: Linear(hidden, 1).
    reward_model: reftune's description (kind, template, max_length), copied into the config as `reftune_reward_model`.
    """
    from transformers import AutoModelForSequenceClassification

    if hasattr(lm, "peft_config"):
        import copy
        lm = copy.deepcopy(lm).merge_and_unload()
    config = lm.config.__class__.from_dict(lm.config.to_dict())
    config.num_labels = 1
    config.architectures = None
    config.reftune_score_bias = float(value_head.bias.detach()) if value_head.bias is not None else 0.0
    config.reftune_reward_model = reward_model or {}
    classifier = AutoModelForSequenceClassification.from_config(config).to(value_head.weight.dtype)
    trunk = getattr(classifier, classifier.base_model_prefix)
    source = getattr(lm, lm.base_model_prefix)
    missing, unexpected = trunk.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"the LM's trunk does not match {type(classifier).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    with torch.no_grad():
        classifier.score.weight.copy_(value_head.weight.detach().to(classifier.score.weight.dtype))
    path = Path(path)
    classifier.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "README.md").write_text(
        "A reftune verifier / reward model as an HF sequence-classification checkpoint (num_labels=1).\n"
        f"Score = logit + reftune_score_bias ({config.reftune_score_bias:.6g}); the text is prompt + completion + EOS.\n"
        f"reftune description: {json.dumps(config.reftune_reward_model)}\n")
    return path


def export_checkpoint(checkpoint: str | Path, path: str | Path | None = None) -> Path:
    """Export a saved reftune verifier / reward-model checkpoint (HF files + value head) to `path`
    (default: checkpoint/../hf_classifier)."""
    from reftune.model.checkpoint import load_value_head, read_reward_model_info
    from reftune.model.modeling import PolicyWithValue, load_pretrained

    checkpoint = Path(checkpoint)
    lm, tokenizer = load_pretrained(str(checkpoint))
    policy = PolicyWithValue(lm)
    if not load_value_head(checkpoint, policy.value_head):
        raise FileNotFoundError(f"{checkpoint} has no value head to export")
    return save_sequence_classifier(path or checkpoint.parent / CLASSIFIER_DIR, lm, policy.value_head, tokenizer,
                                    read_reward_model_info(checkpoint))
