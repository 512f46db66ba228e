"""Range checks on a loaded config that its types alone can't express (a bad value names its dotted field).

`config.load_config` runs `validate` on every config it builds, before any work; the checks read sections by
name, so one function serves every command's config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from reftune import algos
from reftune.config.schema import DATASET_NAMES
from reftune.errors import ConfigError
from reftune.model.prompts import configure_template
from reftune.rewards.functions import NO_REWARD_MODEL, resolve_rewards

# fields that must be > 0 wherever a section has them (eval.num_samples may be 0: greedy only)
POSITIVE = ("lr", "batch_size", "epochs", "steps", "prompts_per_step", "num_generations", "max_new_tokens",
            "ppo_epochs", "minibatches", "gen_batch_size", "max_correct", "max_pairs_per_question", "eval_every",
            "save_every", "eval_every_epochs", "temperature", "grad_clip", "max_length", "clip",
            "gradient_accumulation_steps", "rounds")
NON_NEGATIVE = ("offset", "patience", "save_every_steps", "weight_decay", "warmup_steps", "snapshot_every",
                "max_refill_rounds", "kl_coef", "vf_coef", "sft_coef", "sft_rows", "value_clip", "n_extra", "n_test", "n_pretrain")
SECTIONS = ("pretrain", "sft", "warmup", "rl", "eval", "verifier", "rm", "selftrain")


def positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}: must be > 0, got {value}")


def non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name}: must be ≥ 0, got {value}")


def in_range(name: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False):
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name}: must be in {span}, got {value}")


def check_fields(sec_name: str, sec: Any) -> None:
    """The checks a field's name implies, in any section."""
    for f in dataclasses.fields(sec):
        name, v = f"{sec_name}.{f.name}", getattr(sec, f.name)
        if v is None:
            continue
        if f.name in POSITIVE or (f.name == "num_samples" and sec_name != "eval") or f.name == "limit":
            positive(name, v)
        elif f.name in NON_NEGATIVE or f.name == "num_samples":
            non_negative(name, v)
        if f.name == "top_p":
            in_range(name, v, 0, 1, low_open=True)
        if f.name == "gradient_accumulation_steps" and v > 0 and sec.batch_size % v:
            raise ConfigError(f"{name}: {v} does not divide {sec_name}.batch_size={sec.batch_size}")
        if f.name == "warmup_ratio":
            in_range(name, v, 0, 1, high_open=True)


def check_rl(rl: Any) -> None:
    in_range("rl.gamma", rl.gamma, 0, 1, low_open=True)
    in_range("rl.lam", rl.lam, 0, 1, low_open=True)
    for name, value, valid in (("advantage", rl.advantage, algos.ADVANTAGE_ESTIMATORS),
                               ("kl_kind", rl.kl_kind, algos.KL_KINDS),
                               ("loss_agg", rl.loss_agg, algos.AGGREGATION_MODES)):
        if value not in valid:
            raise ConfigError(f"rl.{name}: '{value}' is not one of {', '.join(valid)}")
    if (rl.prompts_per_step * rl.num_generations) % rl.minibatches:
        raise ConfigError("rl.minibatches must divide rl.prompts_per_step * rl.num_generations")
    names = [n for n, _, _ in resolve_rewards(rl.rewards)]  # names, weights, user functions: fail before training
    if "reward_model" in names and not rl.reward_model:
        raise ConfigError(NO_REWARD_MODEL)
    if rl.reward_model and "reward_model" not in names:
        raise ConfigError(f"rl.reward_model: set, but rl.rewards={rl.rewards!r} does not use it; add it, "
                          f"e.g. rl.rewards=reft:1,reward_model:0.5")
    if rl.reward_model and not (Path(rl.reward_model) / "config.json").is_file():
        raise ConfigError(f"rl.reward_model: {rl.reward_model} is not a checkpoint directory (no config.json)")
    if rl.overlong_penalty is not None and not 0 < rl.overlong_penalty <= rl.max_new_tokens:
        raise ConfigError(f"rl.overlong_penalty: must be in 1..rl.max_new_tokens ({rl.max_new_tokens}), "
                          f"got {rl.overlong_penalty}")
    if rl.dynamic_sampling and rl.num_generations < 2:
        raise ConfigError("rl.dynamic_sampling: needs rl.num_generations ≥ 2 (a group of one never disagrees)")
    if rl.sft_coef > 0 and rl.objective != "ppo":
        raise ConfigError("rl.sft_coef: adds an NLL term to PPO's loss; rl.objective=online_self_training already "
                          "trains on the gold CoTs alone (set rl.sft_coef=0)")
    if rl.sft_rows > 0 and rl.sft_coef <= 0:
        raise ConfigError("rl.sft_rows: sets how many gold CoTs the SFT term of each minibatch takes; it needs "
                          "rl.sft_coef > 0")
    if rl.tis_cap is not None:
        positive("rl.tis_cap", rl.tis_cap)
        if rl.temperature != 1.0 or rl.top_p != 1.0:  # the sampler's log-probs are then of another distribution
            raise ConfigError("rl.tis_cap: needs rl.temperature=1 and rl.top_p=1")


def check_curriculum(cur: Any) -> None:
    positive("curriculum.stages", cur.stages)
    positive("curriculum.token_chunks", cur.token_chunks)
    non_negative("curriculum.steps_per_stage", cur.steps_per_stage)
    if cur.advance_accuracy is not None:
        in_range("curriculum.advance_accuracy", cur.advance_accuracy, 0, 1, low_open=True)
    if cur.schedule == "staged" and cur.steps_per_stage == 0 and cur.advance_accuracy is None:
        raise ConfigError("curriculum.steps_per_stage: 0 (no limit) needs curriculum.advance_accuracy")
    in_range("curriculum.adaptive_threshold", cur.adaptive_threshold, 0, 1, low_open=True)


def check_data(data: Any, trains: bool) -> None:
    """trains: the command trains and picks checkpoints on validation, so it needs training and validation data."""
    if data.min_steps < 1 or data.max_steps < data.min_steps:
        raise ConfigError("data.min_steps must be ≥ 1 and ≤ data.max_steps")
    if data.pretrain_min_steps < 1 or data.pretrain_max_steps < data.pretrain_min_steps:
        raise ConfigError("data.pretrain_min_steps must be ≥ 1 and ≤ data.pretrain_max_steps")
    positive("data.max_value", data.max_value)
    for name in ("n_extra", "n_test", "n_pretrain"):
        non_negative(f"data.{name}", getattr(data, name))
    for name in ("n_train", "n_val"):
        (positive if trains else non_negative)(f"data.{name}", getattr(data, name))
    if data.n_annotated is not None:
        positive("data.n_annotated", data.n_annotated)
        if data.n_annotated > data.n_train:
            raise ConfigError(f"data.n_annotated: {data.n_annotated} is more than data.n_train ({data.n_train})")
    in_range("data.val_fraction", data.val_fraction, 0, 1, low_open=True, high_open=True)
    for name in ("max_examples", "max_val", "max_test"):
        if getattr(data, name) is not None:
            positive(f"data.{name}", getattr(data, name))
    if configure_template(data.template, data.system_prompt, data.chat).think and data.cot == "program":
        raise ConfigError(f"data.template: {data.template} wraps a natural-language chain of thought in <think>; "
                          f"use data.cot=nl")
    check_user_data(data)


GENERIC_LOADERS = ("json", "parquet", "hub")  # the loaders a field mapping and an answer type apply to


def check_user_data(data: Any) -> None:
    """The fields that describe a user's own data: loader names, field mapping, answer markers and backend."""
    for name, value in (("name", data.name), ("test_format", data.test_format)):
        if value is not None and value not in DATASET_NAMES:
            raise ConfigError(f"data.{name}: unknown dataset '{value}' (valid: {', '.join(DATASET_NAMES)})")
    mapped = [f.name for f in dataclasses.fields(data.fields) if getattr(data.fields, f.name) is not None]
    if data.name not in GENERIC_LOADERS:
        if mapped:
            raise ConfigError(f"data.fields.{mapped[0]}: a field mapping applies to data=json|parquet|hub, "
                              f"not data={data.name}")
        if data.answer_type != "number":
            raise ConfigError(f"data.answer_type: applies to data=json|parquet|hub; data={data.name} has its own")
    if data.name == "hub" and not data.path:
        raise ConfigError("data.path: data=hub needs a dataset id (e.g. openai/gsm8k) or a local dataset folder")
    if data.answer_markers is not None:
        marker_list(data.answer_markers)
    if data.answer_backend == "math_verify" and importlib.util.find_spec("math_verify") is None:
        raise ConfigError("data.answer_backend: math_verify needs the math-verify package: "
                          "pip install 'reftune[verify]' (or leave data.answer_backend=builtin)")


def marker_list(markers: Any) -> list[str]:
    """`data.answer_markers` as a list: "a|b" or a YAML list of non-empty texts."""
    if isinstance(markers, str):
        markers = markers.split("|")
    if not isinstance(markers, list) or not markers or not all(isinstance(m, str) and m.strip() for m in markers):
        raise ConfigError(f"data.answer_markers: expected markers separated by |, e.g. "
                          f"data.answer_markers='Answer:|The answer is', got {markers!r}")
    return [m.strip() for m in markers]


def check_model_for_template(model: Any, data: Any) -> None:
    """A chat template needs an instruct model's chat template; the tiny default has none."""
    from reftune.model.prompts import get_template
    if get_template(data.template).chat and not model.name_or_path and not model.gguf_file:
        raise ConfigError(f"data.template: {data.template!r} is a chat template, which the tiny default's "
                          f"tokenizer lacks; give an instruct model (--model DIR or model.gguf_file=...)")


def check_model(model: Any) -> None:
    """The tiny default's shape: every size > 0, heads dividing the hidden size into an even head size (RoPE)."""
    for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "max_length"):
        positive(f"model.{name}", getattr(model, name))
    if model.hidden_size % model.num_heads:
        raise ConfigError(f"model.num_heads: {model.num_heads} does not divide model.hidden_size="
                          f"{model.hidden_size}")
    if (model.hidden_size // model.num_heads) % 2:
        raise ConfigError(f"model.num_heads: head size model.hidden_size / model.num_heads = "
                          f"{model.hidden_size // model.num_heads} must be even (rotary embeddings)")
    if model.vocab_size < 16:
        raise ConfigError(f"model.vocab_size: must be ≥ 16 (the special tokens and the digits), got {model.vocab_size}")


def validate(cfg: Any) -> None:
    """Range checks that types alone can't express; each names its field."""
    for sec_name in SECTIONS:
        if (sec := getattr(cfg, sec_name, None)) is not None:
            check_fields(sec_name, sec)
    if (rl := getattr(cfg, "rl", None)) is not None:
        check_rl(rl)
    if (cur := getattr(cfg, "curriculum", None)) is not None:
        check_curriculum(cur)
        if cur.name == "r3" and cur.schedule == "adaptive" and cfg.rl.dynamic_sampling:
            raise ConfigError("curriculum.schedule: adaptive moves each question by its own results, which "
                              "rl.dynamic_sampling drops for the groups whose samples all agree; use one of them")
    if (rollout := getattr(cfg, "rollout", None)) is not None:
        in_range("rollout.gpu_memory_utilization", rollout.gpu_memory_utilization, 0, 1, low_open=True)
        positive("rollout.tensor_parallel_size", rollout.tensor_parallel_size)
    if (lora := getattr(cfg, "lora", None)) is not None:
        non_negative("lora.r", lora.r)
        if lora.quantize != "none":
            if lora.r == 0:
                raise ConfigError("lora.quantize: quantizes the frozen base under LoRA adapters; set lora.r > 0")
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError("lora.quantize: QLoRA needs bitsandbytes: pip install 'reftune[qlora]'")
            if getattr(getattr(cfg, "rollout", None), "backend", "hf") == "vllm":
                raise ConfigError("lora.quantize: the vllm backend serves full-precision merged weights, not a "
                                  "quantized base; use rollout.backend=hf or lora.quantize=none")
        positive("lora.alpha", lora.alpha)
        in_range("lora.dropout", lora.dropout, 0, 1, high_open=True)
    if hasattr(cfg, "warmup_epochs"):
        positive("warmup_epochs", cfg.warmup_epochs)
    trains = any(hasattr(cfg, s) for s in ("sft", "rl", "verifier", "rm"))
    check_data(cfg.data, trains)
    check_model(cfg.model)
    check_model_for_template(cfg.model, cfg.data)
    report_to = getattr(cfg, "report_to", "none")
    if report_to in ("wandb", "trackio") and importlib.util.find_spec(report_to) is None:
        raise ConfigError(f"report_to: {report_to} is not installed (pip install {report_to}); "
                          f"or report_to=tensorboard")
