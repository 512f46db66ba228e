"""Specification of checkpoint I/O: an HF-format round trip with value head and trainer state, written atomically."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reftune.model.checkpoint import (
    STATE_FILE,
    VALUE_HEAD_FILE,
    is_checkpoint,
    load_state,
    load_value_head,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from reftune.model.modeling import PolicyWithValue, build_tiny_model, load_pretrained, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Question:\nAva has 12 apples.\nThe answer is 12"] * 4, 270)


@pytest.fixture
def policy(tokenizer):
    policy = PolicyWithValue(build_tiny_model(tokenizer, 16, 1, 2, 32, 64, seed=0))
    torch.nn.init.normal_(policy.value_head.weight)  # non-zero, so a failed load would show
    torch.nn.init.constant_(policy.value_head.bias, 0.5)
    return policy


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_model_tokenizer_value_head_and_state(tmp_path, tokenizer, policy):
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy(torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.long))[1].sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": rng_state(), "step": 7, "best_val": 0.25}
    path = save_checkpoint(tmp_path / "last", policy.lm, tokenizer, value_head=policy.value_head, state=state)

    assert path == tmp_path / "last" and is_checkpoint(path)
    lm, tok = load_pretrained(str(path))
    assert _same_weights(lm, policy.lm)
    assert tok("The answer is 12")["input_ids"] == tokenizer("The answer is 12")["input_ids"]
    assert (tok.pad_token_id, tok.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)

    restored = PolicyWithValue(lm)
    assert load_value_head(path, restored.value_head) is True
    assert _same_weights(restored.value_head, policy.value_head)

    loaded = load_state(path)
    assert (loaded["step"], loaded["best_val"]) == (7, 0.25)
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_rng_state_restores_every_generator():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_checkpoint_without_value_head_or_state(tmp_path, tokenizer, policy):
    path = save_checkpoint(tmp_path / "best", policy.lm, tokenizer)
    assert is_checkpoint(path)
    assert not (path / VALUE_HEAD_FILE).exists() and not (path / STATE_FILE).exists()
    assert load_state(path) is None
    head = torch.nn.Linear(16, 1)
    before = head.weight.clone()
    assert load_value_head(path, head) is False
    assert torch.equal(head.weight, before)


def test_saving_again_replaces_the_whole_directory(tmp_path, tokenizer, policy):
    save_checkpoint(tmp_path / "last", policy.lm, tokenizer, value_head=policy.value_head, state={"step": 1})
    with torch.no_grad():
        policy.lm.lm_head.weight.add_(1.0)
    save_checkpoint(tmp_path / "last", policy.lm, tokenizer)
    assert load_state(tmp_path / "last") is None          # no stale state from the earlier save
    assert not (tmp_path / "last" / VALUE_HEAD_FILE).exists()
    assert _same_weights(load_pretrained(str(tmp_path / "last"))[0], policy.lm)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .tmp / .old left behind


def test_leftover_tmp_dir_does_not_break_a_later_save(tmp_path, tokenizer, policy):
    junk = tmp_path / "last.tmp"
    junk.mkdir()
    (junk / "half-written.bin").write_bytes(b"\0" * 10)
    (tmp_path / "last.old").mkdir()
    save_checkpoint(tmp_path / "last", policy.lm, tokenizer, state={"step": 2})
    assert is_checkpoint(tmp_path / "last") and load_state(tmp_path / "last")["step"] == 2
    assert not (tmp_path / "last" / "half-written.bin").exists()
    assert not junk.exists()


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, tokenizer, policy, monkeypatch):
    save_checkpoint(tmp_path / "last", policy.lm, tokenizer, state={"step": 3})

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path / "last", policy.lm, tokenizer, state={"step": 4})
    assert load_state(tmp_path / "last")["step"] == 3
    assert _same_weights(load_pretrained(str(tmp_path / "last"))[0], policy.lm)


def test_is_checkpoint(tmp_path):
    assert not is_checkpoint(tmp_path / "missing")
    assert not is_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert is_checkpoint(tmp_path)
