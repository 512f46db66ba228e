"""Specification of the typed configs: defaults, YAML + `key=value` overrides, and errors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

from reftune.config import EvalJob, RLJob, RunConfig, SFTJob, describe, load_config, save_config
from reftune.errors import ConfigError

COMMANDS = [RunConfig, SFTJob, RLJob, EvalJob]


@pytest.mark.parametrize("cls", COMMANDS)
def test_defaults_load_and_validate(cls):
    cfg = load_config(cls)
    assert cfg == cls()
    assert cfg.data.name == "synthetic"


def test_yaml_then_overrides_later_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\nsft:\n  epochs: 5\n  lr: 0.01\nrl:\n  kl_coef: 0.5\n")
    cfg = load_config(RunConfig, path, ["sft.epochs=9", "rl.kl_coef=0.05", "rl.kl_coef=0.07"])
    assert cfg.seed == 7                      # from the file
    assert cfg.sft.lr == 0.01                 # from the file, untouched by overrides
    assert cfg.sft.epochs == 9                # override beats the file
    assert cfg.rl.kl_coef == 0.07             # the last override wins
    assert cfg.rl.steps == RunConfig().rl.steps  # default where nobody set it


def test_override_values_are_parsed_as_yaml():
    cfg = load_config(RunConfig, None, ["sft.lr=1e-4", "rl.clip_high=0.28", "rl.use_extra=true",
                                        "model.name_or_path=null", "eval.limit=10"])
    assert cfg.sft.lr == pytest.approx(1e-4) and isinstance(cfg.sft.lr, float)
    assert cfg.rl.clip_high == 0.28
    assert cfg.rl.use_extra is True
    assert cfg.model.name_or_path is None
    assert cfg.eval.limit == 10
    # an int is accepted where a float is expected, and stored as a float
    assert isinstance(load_config(RunConfig, None, ["sft.lr=1"]).sft.lr, float)


def test_exponent_without_dot_is_a_float(tmp_path):
    """PyYAML reads `1e-4` as a string (YAML 1.1); a float field still accepts it, in a file or an override."""
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  lr: 3e-4\n")
    assert load_config(RunConfig, path).sft.lr == pytest.approx(3e-4)
    assert load_config(RunConfig, None, ["rl.kl_coef=5E-2"]).rl.kl_coef == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="sft.epochs"):  # ints stay strict
        load_config(RunConfig, None, ["sft.epochs=1e1"])


def test_section_shorthand_sets_name():
    assert load_config(RunConfig, None, ["data=gsm8k"]).data.name == "gsm8k"
    with pytest.raises(ConfigError, match=r"^sft: is a section"):  # no `name` field, so no shorthand
        load_config(RunConfig, None, ["sft=3"])


def test_section_as_mapping_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: svamp, cot: program}\n")
    cfg = load_config(RunConfig, path)
    assert (cfg.data.name, cfg.data.cot) == ("svamp", "program")


def test_unknown_field_names_dotted_field_and_suggests_close_match():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, ["sft.epocs=3"])
    assert "sft.epocs" in str(e.value)
    assert "did you mean 'sft.epochs'" in str(e.value)


def test_unknown_top_level_field_and_unknown_yaml_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config field 'sed'.*'seed'"):
        load_config(RunConfig, None, ["sed=1"])
    path = tmp_path / "c.yaml"
    path.write_text("rl:\n  kl_coeff: 0.1\n")
    with pytest.raises(ConfigError, match=r"rl\.kl_coeff.*rl\.kl_coef"):
        load_config(RunConfig, path)


def test_field_below_a_leaf_is_unknown():
    with pytest.raises(ConfigError, match=r"'seed' is not a section"):
        load_config(RunConfig, None, ["seed.x=1"])


@pytest.mark.parametrize("override, field", [
    ("sft.epochs=three", "sft.epochs"),
    ("sft.epochs=2.5", "sft.epochs"),
    ("sft.lr=fast", "sft.lr"),
    ("rl.use_extra=maybe", "rl.use_extra"),
    ("sft.epochs=true", "sft.epochs"),   # a bool is not an int
    ("seed=[1, 2]", "seed"),
])
def test_wrong_type_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, [override])
    assert str(e.value).startswith(f"{field}:")


def test_literal_violation_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, ["data.cot=python"])
    assert str(e.value).startswith("data.cot:") and "nl" in str(e.value) and "program" in str(e.value)
    with pytest.raises(ConfigError, match="precision"):
        load_config(RunConfig, None, ["precision=fp8"])


@pytest.mark.parametrize("override, field", [
    ("rl.lam=2", "rl.lam"),
    ("rl.gamma=0", "rl.gamma"),
    ("sft.lr=0", "sft.lr"),
    ("sft.batch_size=-1", "sft.batch_size"),
    ("rl.num_generations=0", "rl.num_generations"),
    ("rl.minibatches=3", "rl.minibatches"),  # 32 * 4 rollouts do not split into 3 minibatches
    ("data.min_steps=0", "data.min_steps"),
    ("data.max_steps=1", "data.max_steps"),  # below min_steps=2
])
def test_range_checks_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, [override])
    assert field in str(e.value)


def test_malformed_override_and_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(RunConfig, None, ["sft.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nsft: b: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, bad)
    assert str(e.value).startswith(f"{bad}: not valid YAML at line 2, column 7: ")
    assert "\n" not in str(e.value)  # one line, for the CLI
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunConfig, tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(RunConfig, listy)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(RunConfig, None, ["seed=3", "rl.clip_high=0.3", "data.cot=program", "eval.limit=5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(RunConfig, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("cls", COMMANDS)
def test_describe_documents_every_field(cls):
    """The config reference (`reftune config`) is complete: every leaf field, each with a doc line."""
    rows = describe(cls)

    def leaves(c, prefix=""):
        for f in dataclasses.fields(c):
            default = getattr(c(), f.name)
            if dataclasses.is_dataclass(default):
                yield from leaves(type(default), f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    assert [r[0] for r in rows] == list(leaves(cls))
    undocumented = [key for key, _, text in rows if not text.strip()]
    assert undocumented == []
    # sections are documented too
    assert all(f.metadata.get("doc") for f in dataclasses.fields(cls))


def test_a_recipe_file_serves_every_command(tmp_path):
    from reftune.config import JOBS, SFTJob, RLJob
    for job in JOBS:  # the shipped recipes load for every command; sections it lacks are skipped
        for name in ("r1", "r3_long"):
            load_config(job, name)
    sft = load_config(SFTJob, "r1")
    assert sft.data.template == "r1" and not hasattr(sft, "rl")
    assert load_config(RLJob, "r1").rl.advantage == "grpo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl:\n  advantage: grpo\nrll:\n  lr: 1\n")  # a typo is still an error
    with pytest.raises(ConfigError, match="rll"):
        load_config(SFTJob, bad)
