"""Memory knobs that must not change what is learned: gradient accumulation (micro-batches) and gradient
checkpointing give the same step as the plain one, up to float rounding."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from reftune.cli import main
from reftune.data.synthetic import generate_splits
from reftune.model.batching import collate_sft, encode_sft
from reftune.model.modeling import enable_activation_checkpointing
from reftune.model.modeling import build_tiny_model, train_tokenizer
from reftune.model.prompts import build_prompt, build_target
from reftune.train.accel import get_accelerator
from reftune.train.sft import accumulated_step
from test_golden import DATA, ESTIMATORS, GOLDEN, MODEL, RL, assert_same, records


@pytest.fixture(scope="module")
def batch_and_model():
    splits = generate_splits(0, {"train": 8})
    tok = train_tokenizer([e.question + "\n" + e.cot for e in splits["train"]], 280)
    rows = [encode_sft(tok, build_prompt(e.question, "reft", tok), build_target(e.cot, "reft", e.answer), 320, False)
            for e in splits["train"]]
    return rows, tok, build_tiny_model(tok, 32, 1, 2, 64, 320, seed=0)


def one_step(model, rows, pad_id, k: int, checkpointing: bool = False):
    model = copy.deepcopy(model).train()
    if checkpointing:
        enable_activation_checkpointing(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    micro = [collate_sft(rows[m::k], pad_id) for m in range(k)]
    loss, _ = accumulated_step(model, get_accelerator("fp32"), micro, opt, None, 1e9, "test")
    return loss.item(), torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("k", [2, 4, 8])
def test_micro_batches_give_the_full_batch_step(batch_and_model, k):
    rows, tok, model = batch_and_model
    loss1, after1 = one_step(model, rows, tok.pad_token_id, 1)
    loss_k, after_k = one_step(model, rows, tok.pad_token_id, k)
    assert loss_k == pytest.approx(loss1, rel=1e-5)
    assert torch.allclose(after_k, after1, atol=1e-6)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(after1, before)  # the step moved the weights


def test_gradient_checkpointing_gives_the_same_step(batch_and_model):
    rows, tok, model = batch_and_model
    assert torch.allclose(one_step(model, rows, tok.pad_token_id, 1, checkpointing=True)[1],
                          one_step(model, rows, tok.pad_token_id, 1)[1], atol=1e-6)


@pytest.mark.slow
def test_rl_with_gradient_checkpointing_computes_the_pinned_metrics(tmp_path):
    """The golden PPO-GAE run, its update under gradient checkpointing: the same numbers (tests/golden)."""
    warm = tmp_path / "sft"
    assert main(["sft", f"out_dir={warm}", *DATA, *MODEL, "sft.epochs=6", "sft.batch_size=4", "sft.lr=3e-3",
                 "sft.eval_every_epochs=1", "eval.batch_size=8", "eval.max_new_tokens=40"]) == 0
    out = tmp_path / "rl"
    torch.manual_seed(0)
    assert main(["rl", "--model", str(warm / "last"), f"out_dir={out}", *DATA, *RL, *ESTIMATORS["gae"], "rl.steps=3",
                 "rl.gradient_checkpointing=true"]) == 0
    noise = ("logp_mismatch", "seq_ratio")  # sampler vs trainer log-probs: rounding-level by definition

    def kept(rs):
        return [{k: v for k, v in r.items() if not k.startswith(noise)} for r in rs]

    assert_same(kept(records(out)), kept(json.loads((GOLDEN / "rl_gae.json").read_text())), rel=1e-4)


def test_accumulation_must_divide_the_batch(tmp_path, capsys):
    assert main(["sft", f"out_dir={tmp_path / 's'}", "sft.batch_size=32", "sft.gradient_accumulation_steps=5"]) == 2
    assert "sft.gradient_accumulation_steps: 5 does not divide sft.batch_size=32" in capsys.readouterr().err
