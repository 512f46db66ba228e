"""Range checks on a loaded config that its types alone can't express (a bad value names its dotted field).

`config.load_config` runs `validate` on every config it builds; the checks read sections by name, so one
function serves every command's config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from reftune import algos
from reftune.errors import ConfigError
from reftune.rewards.functions import NO_REWARD_MODEL, resolve_rewards


def validate(cfg: Any) -> None:
    """Range checks that types alone can't express; each names its field."""
    def positive(name: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{name}: must be > 0, got {value}")

    for sec_name in ("sft", "rl", "eval", "verifier", "rm", "selftrain"):
        sec = getattr(cfg, sec_name, None)
        if sec is None:
            continue
        for f in dataclasses.fields(sec):
            v = getattr(sec, f.name)
            if f.name in ("lr", "batch_size", "epochs", "steps", "prompts_per_step", "num_generations",
                          "max_new_tokens", "ppo_epochs", "minibatches", "gen_batch_size", "max_correct",
                          "max_pairs_per_question", "eval_every", "save_every", "eval_every_epochs") or (
                    f.name == "num_samples" and sec_name != "eval"):  # eval.num_samples=0 means greedy only
                positive(f"{sec_name}.{f.name}", v)
            if f.name == "offset" and v < 0:
                raise ConfigError(f"{sec_name}.offset: must be >= 0, got {v}")
            if f.name == "limit" and v is not None:
                positive(f"{sec_name}.limit", v)
            if f.name == "num_samples" and v < 0:
                raise ConfigError(f"{sec_name}.num_samples: must be >= 0, got {v}")
            if f.name == "top_p" and not 0 < v <= 1:
                raise ConfigError(f"{sec_name}.top_p: must be in (0, 1], got {v}")
    rl = getattr(cfg, "rl", None)
    if rl is not None:
        if not 0 < rl.lam <= 1 or not 0 < rl.gamma <= 1:
            raise ConfigError("rl.gamma and rl.lam must be in (0, 1]")
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
        if rl.snapshot_every < 0:
            raise ConfigError(f"rl.snapshot_every: must be ≥ 0, got {rl.snapshot_every}")
        if rl.max_refill_rounds < 0:
            raise ConfigError(f"rl.max_refill_rounds: must be ≥ 0, got {rl.max_refill_rounds}")
        if rl.tis_cap is not None:
            positive("rl.tis_cap", rl.tis_cap)
            if rl.temperature != 1.0 or rl.top_p != 1.0:  # the sampler's log-probs are then of another distribution
                raise ConfigError("rl.tis_cap: needs rl.temperature=1 and rl.top_p=1")
    cur = getattr(cfg, "curriculum", None)
    if cur is not None:
        positive("curriculum.stages", cur.stages)
        positive("curriculum.token_chunks", cur.token_chunks)
        if cur.steps_per_stage < 0:
            raise ConfigError(f"curriculum.steps_per_stage: must be ≥ 0, got {cur.steps_per_stage}")
        if cur.advance_accuracy is not None and not 0 < cur.advance_accuracy <= 1:
            raise ConfigError(f"curriculum.advance_accuracy: must be in (0, 1], got {cur.advance_accuracy}")
        if cur.schedule == "staged" and cur.steps_per_stage == 0 and cur.advance_accuracy is None:
            raise ConfigError("curriculum.steps_per_stage: 0 (no limit) needs curriculum.advance_accuracy")
    data = cfg.data
    if data.min_steps < 1 or data.max_steps < data.min_steps:
        raise ConfigError("data.min_steps must be ≥ 1 and ≤ data.max_steps")
    if data.pretrain_min_steps < 1 or data.pretrain_max_steps < data.pretrain_min_steps:
        raise ConfigError("data.pretrain_min_steps must be ≥ 1 and ≤ data.pretrain_max_steps")
    if data.template in ("r1", "r1_compact") and data.cot == "program":
        raise ConfigError(f"data.template: {data.template} wraps a natural-language chain of thought in <think>; "
                          f"use data.cot=nl")
