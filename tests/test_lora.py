"""LoRA through `peft` (`lora.r > 0`): adapters are what trains and what is saved, the base stays frozen, RL's
reference is the policy with its adapters disabled, and a LoRA checkpoint loads back merged for evaluation."""

from __future__ import annotations

import importlib.util
import json
import math

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


def test_merged_state_dict_is_a_plain_model_computing_what_the_adapted_one_does(tmp_path):
    """What the vLLM backend serves for a LoRA policy: W + ΔW under the base names, loadable by the base
    architecture (also from the folder the engine is built from), the peft model itself untouched."""
    import copy

    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from reftune.model.lora import merged_state_dict
    from reftune.model.modeling import build_tiny_model, train_tokenizer
    from reftune.model.vllm_sampler import save_for_vllm

    tokenizer = train_tokenizer([f"{a} plus {b} is {a + b}." for a in range(30) for b in range(5)], 280)
    base = build_tiny_model(tokenizer, 32, 1, 2, 64, 128, seed=0).eval()
    adapted = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, w in adapted.named_parameters():
            if "lora_B" in name:
                w.normal_(generator=torch.Generator().manual_seed(1), std=0.3)
    before = {k: v.clone() for k, v in adapted.state_dict().items()}
    ids = tokenizer("3 plus 4 is 7.", add_special_tokens=False)["input_ids"]
    plain = copy.deepcopy(base)
    plain.load_state_dict(merged_state_dict(adapted))
    assert not torch.allclose(logits(plain, ids), logits(base, ids), atol=1e-3)  # the adapters change the output
    assert torch.allclose(logits(plain, ids), logits(adapted, ids), atol=1e-5)
    assert all(torch.equal(v, adapted.state_dict()[k]) for k, v in before.items())  # no merge/unmerge drift
    save_for_vllm(adapted, tokenizer, tmp_path)
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(tmp_path).eval(), ids), logits(adapted, ids),
                          atol=1e-5)


def test_qlora_trains_adapters_on_a_4bit_base_and_resumes_on_it(tmp_path, monkeypatch):
    """lora.quantize=4bit (QLoRA through bitsandbytes, on CPU here): SFT then GRPO train adapters over NF4 linear
    layers; a killed SFT resumes on the base quantized the same way and ends where the uninterrupted run does;
    the adapters merge into the full-precision start for evaluation."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from reftune.model.modeling import PolicyWithValue

    whole, part, rl, base = tmp_path / "whole", tmp_path / "part", tmp_path / "rl", tmp_path / "base"
    qlora = ["lora.r=4", "lora.quantize=4bit"]
    wide = ["model.hidden_size=64", "model.intermediate_size=128"]  # the CPU 4-bit kernel needs widths of 64k
    assert cli("sft", f"out_dir={base}", *SFT, *wide, "sft.epochs=1") == 0
    full_start = base / "last"
    assert cli("sft", "--model", full_start, f"out_dir={whole}", *SFT, "sft.epochs=2", *qlora) == 0
    with monkeypatch.context() as m:
        kill_after_save(m, "part")
        assert cli("sft", "--model", full_start, f"out_dir={part}", *SFT, "sft.epochs=2", *qlora) == 130
    assert cli("sft", "--resume", f"out_dir={part}") == 0
    assert records(part) == records(whole)  # bit for bit (quantize_model keeps bitsandbytes from repacking)
    last = whole / "last"
    assert json.loads((last / "lora_start.json").read_text())["quantize"] == "4bit"
    trainable, _ = load_pretrained(str(last), lora_trainable=True)
    layers = [m for m in trainable.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(not p.requires_grad for m in layers for p in m.parameters(recurse=False))
    merged, _ = load_pretrained(str(last))
    start, _ = load_pretrained(str(full_start))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    ids = [5, 6, 7, 8, 9]
    assert not torch.allclose(logits(merged, ids), logits(start, ids), atol=1e-4)  # the adapters learned
    # NF4 rounding: the adapters were fit over the quantized base; merged into full precision they stay close
    assert torch.allclose(logits(merged, ids), logits(trainable, ids), atol=0.5)
    assert cli("rl", "--model", full_start, f"out_dir={rl}", *DATA, *MODEL, *RL, "rl.steps=2", "rl.advantage=grpo",
               "rl.kl_in=loss", "rl.kl_kind=k3", *qlora) == 0
    steps = [r for r in records(rl) if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["policy_loss"]) for r in steps)
    assert steps[-1]["kl"] != 0.0  # the adapters moved the policy away from its (quantized) reference


def test_qlora_config_errors_name_the_field(full_start, tmp_path, capsys):
    from reftune.config import RLJob, load_config
    from reftune.errors import ConfigError
    with pytest.raises(ConfigError, match="lora.quantize: quantizes the frozen base"):
        load_config(RLJob, None, ["lora.quantize=4bit"])
    if importlib.util.find_spec("bitsandbytes") is not None:
        with pytest.raises(ConfigError, match="lora.quantize: the vllm backend"):
            load_config(RLJob, None, ["lora.r=4", "lora.quantize=4bit", "rollout.backend=vllm"])
        assert cli("sft", "--model", full_start, f"out_dir={tmp_path / 'q'}", *SFT, "lora.r=4",
                   "lora.quantize=4bit") == 2  # hidden 32
        assert "lora.quantize: 4-bit on CPU needs layer input widths" in capsys.readouterr().err
