"""LoRA through `peft` (`lora.r > 0`): adapters are what trains and what is saved, the base stays frozen, RL's
reference is the policy with its adapters disabled, and a LoRA checkpoint loads back merged for evaluation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from reftune.cli import main
from reftune.model.checkpoint import load_state
from reftune.model.modeling import load_pretrained
from reftune.rl.scoring import ReferenceLM
from test_golden import DATA, MODEL, RL, records
from test_resume import kill_after_save

pytest.importorskip("peft")
SFT = [*DATA, *MODEL, "sft.batch_size=4", "sft.lr=3e-3", "sft.eval_every_epochs=1", "eval.batch_size=8",
       "eval.max_new_tokens=16"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def full_start(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "full"
    assert cli("sft", f"out_dir={out}", *SFT, "sft.epochs=2") == 0
    return out / "last"


def logits(lm, text_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lm(input_ids=torch.tensor([text_ids])).logits


@pytest.mark.slow
def test_lora_sft_saves_adapters_only_and_resumes_bit_for_bit(full_start, tmp_path, monkeypatch):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli("sft", "--model", full_start, f"out_dir={whole}", *SFT, "sft.epochs=2", "lora.r=4") == 0
    with monkeypatch.context() as m:
        kill_after_save(m, "part")  # killed once epoch 1's checkpoint is written
        assert cli("sft", "--model", full_start, f"out_dir={part}", *SFT, "sft.epochs=2", "lora.r=4") == 130
    assert cli("sft", "--resume", f"out_dir={part}") == 0
    last = whole / "last"
    assert (last / "adapter_model.safetensors").is_file() and not (last / "model.safetensors").exists()
    assert records(part) == records(whole)
    assert load_file(part / "last" / "adapter_model.safetensors").keys() == load_file(
        last / "adapter_model.safetensors").keys()
    assert (part / "last" / "adapter_model.safetensors").read_bytes() == (last / "adapter_model.safetensors").read_bytes()

    start, _ = load_pretrained(str(whole / "init"))
    trainable, _ = load_pretrained(str(last), lora_trainable=True)
    merged, _ = load_pretrained(str(last))
    assert hasattr(trainable, "peft_config") and not hasattr(merged, "peft_config")
    ids = [5, 6, 7, 8, 9]
    assert torch.allclose(logits(merged, ids), logits(trainable, ids), atol=1e-5)  # merging changes nothing
    assert not torch.allclose(logits(merged, ids), logits(start, ids), atol=1e-4)  # the adapters learned
    with trainable.disable_adapter():  # the base under the adapters is the start, untouched
        assert torch.equal(logits(trainable, ids), logits(start, ids))


@pytest.mark.slow
def test_lora_rl_reference_is_the_policy_with_adapters_disabled(full_start, tmp_path):
    out = tmp_path / "rl"
    assert cli("rl", "--model", full_start, f"out_dir={out}", *DATA, *RL, "rl.steps=2", "rl.advantage=grpo",
               "rl.kl_in=loss", "rl.kl_kind=k3", "rl.lr=1e-2", "lora.r=4") == 0
    kl = [r["kl"] for r in records(out) if "kl" in r]
    assert kl[0] == 0.0 and kl[1] != 0.0  # the policy equals its reference until the first update
    assert (out / "last" / "value_head.safetensors").is_file() and not (out / "last" / "model.safetensors").exists()
    assert load_state(out / "last")["step"] == 2
    policy, _ = load_pretrained(str(out / "last"), lora_trainable=True)
    start, _ = load_pretrained(str(full_start))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    ref_logits, _ = ReferenceLM(policy)(ids, torch.ones_like(ids), torch.arange(5)[None])
    with torch.no_grad():
        assert torch.allclose(ref_logits, start(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(policy(input_ids=ids).logits, ref_logits, atol=1e-5)
