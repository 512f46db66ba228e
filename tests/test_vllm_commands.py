"""The vLLM backend through the CLI (`rollout.backend=vllm`): 3-iteration PPO, GRPO and LoRA GRPO runs, and `reftune eval`
giving the HF backend's greedy outputs. Runs where vllm imports (`make test-vllm`); skipped elsewhere.

The model is the tiny Llama with head size 32 (vLLM's CPU attention supports no smaller): hidden 64, 2 heads.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from reftune.cli import main  # noqa: E402
from test_golden import DATA, RL, records  # noqa: E402

MODEL = ["model.hidden_size=64", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=128",
         "model.vocab_size=280"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "sft"
    assert cli("sft", f"out_dir={out}", *DATA, *MODEL, "sft.epochs=3", "sft.batch_size=4", "sft.lr=3e-3",
               "sft.eval_every_epochs=3", "eval.batch_size=8", "eval.max_new_tokens=24") == 0
    return out / "last"


@pytest.mark.parametrize("estimator", [["rl.advantage=gae"], ["rl.advantage=grpo", "rl.kl_in=loss", "rl.kl_kind=k3"],
                                       ["rl.advantage=grpo", "rl.kl_in=loss", "rl.kl_kind=k3", "lora.r=4"]],
                         ids=["gae", "grpo", "grpo-lora"])
def test_three_rl_iterations_through_the_vllm_backend(start, tmp_path, estimator):
    out = tmp_path / "rl"
    assert cli("rl", "--model", start, f"out_dir={out}", *DATA, *RL, *estimator, "rl.steps=3", "rl.lr=1e-2",
               "rollout.backend=vllm") == 0
    steps = [r for r in records(out) if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # an fp32 engine samples what the fp32 trainer would: the mismatch stays at rounding level, also after the
    # weights were pushed (iterations 2 and 3 sample from updated weights; with LoRA, the merged W + ΔW)
    assert all(r["logp_mismatch_mean"] < 1e-3 for r in steps), [r["logp_mismatch_mean"] for r in steps]
    assert steps[-1]["kl"] != 0.0  # the policy moved away from its reference


def test_eval_through_vllm_gives_the_hf_greedy_outputs(start, tmp_path):
    outs = {}
    for backend in ("hf", "vllm"):
        d = tmp_path / backend
        assert cli("eval", "--model", start, f"out_dir={d}", *DATA, "eval.split=val", "eval.max_new_tokens=24",
                   f"rollout.backend={backend}") == 0
        outs[backend] = [json.loads(line)["output"] for line in (d / "val.jsonl").read_text().splitlines()]
    assert outs["vllm"] == outs["hf"]


def test_eval_in_bf16_through_vllm_keeps_most_fp32_greedy_outputs(start, tmp_path):
    outs = {}
    for name, extra in (("fp32", []), ("bf16", ["eval.precision=bf16"])):
        d = tmp_path / name
        assert cli("eval", "--model", start, f"out_dir={d}", *DATA, "eval.split=val", "eval.max_new_tokens=24",
                   "rollout.backend=vllm", *extra) == 0
        outs[name] = [json.loads(line)["output"] for line in (d / "val.jsonl").read_text().splitlines()]
    same = sum(a == b for a, b in zip(outs["bf16"], outs["fp32"])) / len(outs["fp32"])
    assert same >= 0.5, same  # bf16 rounding may flip a few greedy choices, not most
