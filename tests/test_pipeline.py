"""End-to-end specification of `reftune run` at a tiny size: every artefact of a run directory, resuming, and
stopping on a NaN loss with the last good checkpoint kept.

One full run (about a minute on two CPU cores) is shared by the tests below; the resume test works on a copy.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from reftune.model.checkpoint import is_checkpoint, load_state
from reftune.config import RunConfig, SFTConfig, load_config
from reftune.errors import TrainingDiverged, UserError
from reftune.train.logger import MetricsLogger, read_metrics
from reftune.model.modeling import build_tiny_model, load_pretrained, train_tokenizer
from reftune.commands.run import run
from reftune.train.context import RunContext
from reftune.train.sft import train_sft
from reftune.data.synthetic import generate_splits

TINY = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "data.n_extra=64", "model.hidden_size=32",
        "model.num_layers=2", "model.intermediate_size=64", "sft.epochs=2", "warmup_epochs=1", "sft.batch_size=16",
        "sft.eval_every_epochs=1", "sft.patience=0",
        "rl.steps=2", "rl.prompts_per_step=8", "rl.num_generations=2", "rl.minibatches=2", "rl.eval_every=1",
        "rl.max_new_tokens=16", "eval.max_new_tokens=16", "rl_extra=true", "data.n_pretrain=32", "pretrain.epochs=1",
        "pretrain.batch_size=16"]
MODELS = ["base", "warmup", "sft", "reft", "reft_extra"]
RL_KEYS = {"reward", "accuracy", "kl", "entropy", "clipfrac", "approx_kl", "value_loss", "explained_variance",
           "response_length", "rollout_s", "update_s"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(run dir, config, results) of one complete tiny run."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    cfg = load_config(RunConfig, None, [f"out_dir={out}", *TINY])
    return out, cfg, run(cfg)


def _rl_steps(records, stage):
    return [r["step"] for r in records if r["stage"] == stage and "reward" in r]


@pytest.mark.slow
def test_results_cover_every_model_and_split(finished):
    out, cfg, results = finished
    assert set(results) == {f"{m}/{s}" for m in MODELS for s in ("val", "test")}
    for key, res in results.items():
        assert res["n"] == 32, key
        assert 0.0 <= res["accuracy"] <= res["answered"] + 1e-9 <= 1.0 + 1e-9
    assert json.loads((out / "results.json").read_text()) == results
    assert set(json.loads((out / "stages.json").read_text())) == {"data", "init", "pretrain", "sft", "reft", "reft_extra", "eval"}


@pytest.mark.slow
def test_eval_outputs_are_saved_per_question(finished):
    out, cfg, results = finished
    files = sorted(p.name for p in (out / "eval").glob("*.jsonl"))
    assert files == sorted(f"{m}_{s}.jsonl" for m in MODELS for s in ("val", "test"))
    for m in MODELS:
        for split in ("val", "test"):
            rows = [json.loads(line) for line in (out / "eval" / f"{m}_{split}.jsonl").read_text().splitlines()]
            assert [r["id"] for r in rows] == [f"{split}-{i}" for i in range(32)]
            assert all({"id", "output", "pred", "correct"} <= set(r) for r in rows)
            assert all(isinstance(r["output"], str) and isinstance(r["correct"], bool) for r in rows)
            assert sum(r["correct"] for r in rows) / 32 == results[f"{m}/{split}"]["accuracy"]
    data = sorted(p.name for p in (out / "data").glob("*.jsonl"))
    assert data == ["extra.jsonl", "pretrain.jsonl", "test.jsonl", "train.jsonl", "val.jsonl"]


@pytest.mark.slow
def test_report_has_the_table_and_the_curves(finished):
    out, _, results = finished
    report = (out / "report.md").read_text()
    assert "| model | val | test |" in report
    for label in ("warm-up", "SFT baseline", "ReFT from warm-up", "answer-only"):
        assert label in report
    row = next(line for line in report.splitlines() if "ReFT from warm-up" in line)
    assert f"{results['reft/test']['accuracy'] * 100:.1f}" in row
    for name in ("reward", "kl", "val_accuracy"):
        png = out / "plots" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"plots/{name}.png" in report


@pytest.mark.slow
def test_metrics_log_every_rl_step_with_all_keys(finished):
    out, cfg, _ = finished
    records = read_metrics(out)
    for stage in ("reft", "reft_extra"):
        rl = [r for r in records if r["stage"] == stage and "reward" in r]
        assert [r["step"] for r in rl] == [1, 2]
        for r in rl:
            assert RL_KEYS <= set(r), RL_KEYS - set(r)
            assert all(math.isfinite(r[k]) for k in RL_KEYS)
            assert 0 < r["response_length"] <= cfg.rl.max_new_tokens
        vals = [r for r in records if r["stage"] == stage and "val_accuracy" in r]
        assert [r["step"] for r in vals] == [0, 1, 2]  # the start model (rl.eval_at_start), then rl.eval_every=1
    sft_vals = [r for r in records if r["stage"] == "sft" and "val_accuracy" in r]
    assert [r["epoch"] for r in sft_vals] == [1, 2]


@pytest.mark.slow
def test_checkpoints_and_config_are_kept(finished):
    out, cfg, _ = finished
    assert load_config(RunConfig, out / "config.yaml") == cfg
    for ckpt in ("init", "sft/epoch-1", "sft/best", "sft/last", "reft/best", "reft/last", "reft_extra/best"):
        assert is_checkpoint(out / ckpt), ckpt
    assert load_state(out / "reft" / "last")["step"] == cfg.rl.steps
    assert (out / "reft" / "last" / "value_head.safetensors").is_file()
    assert load_state(out / "sft" / "last")["epoch"] == cfg.sft.epochs
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.old"))


@pytest.mark.slow
def test_resume_redoes_only_the_unfinished_stages(finished, tmp_path):
    """Forget that reft_extra and eval finished, and allow one more RL step: --resume continues reft_extra from
    its last/ checkpoint (step 2), and reft (finished at 2 steps) too, with step 3 only; trains nothing else,
    and re-evaluates."""
    src, cfg, results = finished
    out = tmp_path / "run"
    shutil.copytree(src, out)
    stages = json.loads((out / "stages.json").read_text())
    del stages["reft_extra"], stages["eval"]
    (out / "stages.json").write_text(json.dumps(stages))
    (out / "results.json").unlink()
    shutil.rmtree(out / "eval")
    before = read_metrics(out)

    resumed = run(load_config(RunConfig, None, [f"out_dir={out}", *TINY, "rl.steps=3"]), resume=True)
    after = read_metrics(out)
    new = after[len(before):]
    assert after[:len(before)] == before                                 # appended, not rewritten
    assert {r["stage"] for r in new} == {"reft", "reft_extra", "eval"}   # sft did not train again
    assert _rl_steps(after, "reft_extra") == [1, 2, 3]                    # continued, not restarted at 1
    assert _rl_steps(after, "reft") == [1, 2, 3]                          # a finished stage given more steps
    assert load_state(out / "reft_extra" / "last")["step"] == 3 and load_state(out / "reft" / "last")["step"] == 3
    assert set(resumed) == set(results)
    for m in ("base", "warmup", "sft"):  # untouched checkpoints evaluate exactly as before
        assert resumed[f"{m}/val"] == results[f"{m}/val"] and resumed[f"{m}/test"] == results[f"{m}/test"]
    assert json.loads((out / "results.json").read_text()) == resumed
    assert "reft_extra" in json.loads((out / "stages.json").read_text())
    assert len(list((out / "eval").glob("*.jsonl"))) == 2 * len(MODELS)

    again = run(load_config(RunConfig, None, [f"out_dir={out}", *TINY, "rl.steps=3"]), resume=True)
    assert again == resumed and read_metrics(out) == after  # a finished run resumed as it is: nothing to do


def test_a_used_run_dir_needs_resume(tmp_path):
    (tmp_path / "stages.json").write_text("{}")
    with pytest.raises(UserError, match="--resume"):
        run(load_config(RunConfig, None, [f"out_dir={tmp_path}", *TINY]))
    assert [p.name for p in tmp_path.iterdir()] == ["stages.json"]


# --- divergence ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    splits = generate_splits(0, {"train": 16, "val": 4})
    tok = train_tokenizer([e.question + "\n" + e.cot for e in splits["train"]], 280)
    return splits, tok


def test_nan_loss_stops_sft_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    """The loss turns NaN at training step 5 (epoch 3; two steps per epoch): TrainingDiverged names the step, and
    last/ still holds the end of epoch 2 with finite weights, ready for --resume."""
    splits, tok = tiny
    lm = build_tiny_model(tok, 16, 1, 2, 32, 320, seed=0)
    calls = []

    def poison(module, args, kwargs, output):
        if "labels" in kwargs:  # training forwards only, not generation during validation
            calls.append(1)
            if len(calls) == 5:
                output.loss = output.loss * float("nan")
        return output

    lm.register_forward_hook(poison, with_kwargs=True)
    cfg = SFTConfig(epochs=4, batch_size=8, save_every_steps=0)
    with pytest.raises(TrainingDiverged, match="sft step 4"):
        train_sft(lm, tok, splits["train"], splits["val"], cfg,
                  RunContext(tmp_path, MetricsLogger(tmp_path, tensorboard=False), eval_max_new_tokens=8))
    state = load_state(tmp_path / "last")
    assert (state["epoch"], state["step"]) == (2, 4)
    saved, _ = load_pretrained(str(tmp_path / "last"))
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert not (tmp_path / "last.tmp").exists()


def test_a_huge_learning_rate_is_caught_as_divergence(tiny, tmp_path):
    splits, tok = tiny
    lm = build_tiny_model(tok, 16, 1, 2, 32, 320, seed=0)
    cfg = SFTConfig(epochs=2, batch_size=8, lr=1e30, warmup_ratio=0.0, grad_clip=1e30)
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        train_sft(lm, tok, splits["train"], splits["val"], cfg,
                  RunContext(tmp_path, MetricsLogger(tmp_path, tensorboard=False), eval_max_new_tokens=8))


def test_sft_skips_examples_whose_prompt_fills_max_length(tmp_path):
    splits = generate_splits(0, {"train": 16, "val": 4}, 2, 3)
    tok = train_tokenizer([e.question + "\n" + e.cot for e in splits["train"]], 300)
    lm = build_tiny_model(tok, 16, 1, 2, 32, 512, seed=0)
    cfg = SFTConfig(epochs=1, batch_size=4, eval_every_epochs=1, save_every_steps=0)
    splits["train"][0].question = "word " * 400  # longer than max_length on its own: no answer token fits
    info = train_sft(lm, tok, splits["train"], splits["val"], cfg,
                     RunContext(tmp_path / "a", MetricsLogger(tmp_path / "a", tensorboard=False), max_length=200,
                                eval_max_new_tokens=8))
    assert info["epochs_run"] == 1  # trained on the 15 that fit instead of producing a NaN loss
    with pytest.raises(UserError, match="model.max_length"):
        train_sft(lm, tok, splits["train"], splits["val"], cfg,
                  RunContext(tmp_path / "b", MetricsLogger(tmp_path / "b", tensorboard=False), max_length=8,
                             eval_max_new_tokens=8))


@pytest.mark.slow
def test_online_self_training_is_a_stage_a_finished_run_can_add(finished, tmp_path):
    """rl_online_self_training=true on resume: only the new stage trains (online self-training from the warm-up,
    the RL stage's budget: NLL rows, no KL or value loss) and only it is evaluated; the rest stays as it was."""
    src, cfg, results = finished
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = read_metrics(out)
    resumed = run(load_config(RunConfig, None, [f"out_dir={out}", *TINY, "rl_online_self_training=true"]), resume=True)
    new = read_metrics(out)[len(before):]
    assert {r["stage"] for r in new} == {"online_st", "eval"}
    steps = [r for r in new if r["stage"] == "online_st" and "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all("self_train_gold" in r and "value_loss" not in r and r["kl"] == 0.0 for r in steps)  # no reference
    assert set(resumed) == set(results) | {"online_st/val", "online_st/test"}
    assert all(resumed[k] == v for k, v in results.items())
    assert "(e) online self-training" in (out / "report.md").read_text()


@pytest.mark.slow
def test_reft_with_the_gold_cots_nll_is_a_stage_a_finished_run_can_add(finished, tmp_path):
    """rl_sft_coef=0.5 on resume: only the new stage (reft_sft) trains, PPO with the gold CoTs' NLL (sft_loss logged,
    the reference's KL and the value loss still there); the reft stage's records and results stay as they were."""
    src, cfg, results = finished
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = read_metrics(out)
    resumed = run(load_config(RunConfig, None, [f"out_dir={out}", *TINY, "rl_sft_coef=0.5"]), resume=True)
    new = read_metrics(out)[len(before):]
    assert {r["stage"] for r in new} == {"reft_sft", "eval"}
    steps = [r for r in new if r["stage"] == "reft_sft" and "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["sft_loss"] > 0 and "value_loss" in r for r in steps)
    assert not any("sft_loss" in r for r in before)
    assert set(resumed) == set(results) | {"reft_sft/val", "reft_sft/test"}
    assert all(resumed[k] == v for k, v in results.items())
    assert "(h) ReFT + NLL on the gold CoTs" in (out / "report.md").read_text()
