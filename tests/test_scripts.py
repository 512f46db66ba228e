"""The experiment scripts' own logic (their runs are experiments, not tests)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from jobs import for_command, load_presets  # noqa: E402
from sliced_eval import pooled  # noqa: E402


def test_chunks_pool_to_question_weighted_means():
    a = {"n": 3, "accuracy": 1 / 3, "answered": 1.0,
         "sampling": {"n": 3, "k": 8, "temperature": 1.0, "top_p": 1.0, "voting@8": 2 / 3, "pass@8": 1.0}}
    b = {"n": 1, "accuracy": 1.0, "answered": 0.0,
         "sampling": {"n": 1, "k": 8, "temperature": 1.0, "top_p": 1.0, "voting@8": 0.0, "pass@8": 0.0}}
    p = pooled([a, b])
    assert p["n"] == 4 and p["accuracy"] == pytest.approx(0.5) and p["answered"] == pytest.approx(0.75)
    s = p["sampling"]
    assert s["n"] == 4 and s["k"] == 8 and s["temperature"] == 1.0
    assert s["voting@8"] == pytest.approx(0.5) and s["pass@8"] == pytest.approx(0.75)
    assert "sampling" not in pooled([a, {k: v for k, v in b.items() if k != "sampling"}])  # greedy-only chunk


def test_each_command_gets_only_the_overrides_it_accepts():
    over = ["data.min_steps=3", "rl.lr=1e-4", "sft.epochs=2", "model.name_or_path=x", "model.max_length=64"]
    assert for_command("eval", over) == ["data.min_steps=3", "model.max_length=64"]
    assert for_command("rl", over) == ["data.min_steps=3", "rl.lr=1e-4", "model.max_length=64"]
    assert for_command("sft", over) == ["data.min_steps=3", "sft.epochs=2", "model.max_length=64"]


def test_every_presets_default_variants_exist_and_settings_are_strings():
    presets, defaults = load_presets()
    assert set(presets) == set(defaults) >= {"estimators", "precision", "reft", "r3"}
    for name, variants in presets.items():
        assert defaults[name] and set(defaults[name]) <= set(variants), name
        for label, settings in variants.values():
            assert label and all(isinstance(v, str) for v in settings.values())
    assert presets["reft"]["big_lr1e-4_extra"][1] == {**presets["reft"]["big_lr1e-4"][1], "rl.use_extra": "true"}
