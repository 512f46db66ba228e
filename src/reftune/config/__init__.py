"""Typed configs: one dataclass per command, sections shared between commands, a doc line per field.

Loaded from YAML and `key=value` overrides (`sft.epochs=3`, `data=gsm8k` as a shorthand for
`data.name=gsm8k`). Every value is checked against its field's type; an unknown or bad field raises
`ConfigError` naming the dotted field, so the CLI can say exactly what to fix.

schema.py: the dataclasses; loading.py: YAML, overrides, saving, the reference; checks.py: range checks.
"""

from reftune.config.loading import (SHIPPED_CONFIGS, describe, leaves, load_config, parse_override,
                                    resolve_config_path, resume_config, save_config, saved_command, to_dict)
from reftune.config.schema import (JOBS, CurriculumConfig, DataConfig, EvalConfig, EvalJob, InferenceConfig,
                                   LoraConfig, ModelConfig, RolloutConfig, PretrainConfig, Precision, RewardModelConfig, RLConfig, RLJob,
                                   RMJob, RunConfig, SelfTrainConfig, SelfTrainJob, SFTConfig, SFTJob,
                                   VerifierConfig, VerifierJob, doc, section)

__all__ = ["JOBS", "SHIPPED_CONFIGS", "CurriculumConfig", "DataConfig", "EvalConfig", "EvalJob", "InferenceConfig", "LoraConfig", "RolloutConfig",
           "ModelConfig", "PretrainConfig", "Precision", "RLConfig", "RLJob", "RMJob", "RewardModelConfig",
           "RunConfig", "SFTConfig", "SFTJob", "SelfTrainConfig", "SelfTrainJob", "VerifierConfig", "VerifierJob",
           "describe", "doc", "leaves", "load_config", "resume_config", "saved_command", "parse_override", "resolve_config_path", "save_config", "section",
           "to_dict"]
