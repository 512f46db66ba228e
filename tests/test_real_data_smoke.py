"""SFT → PPO → eval from the CLI on a small slice of the ReFT release's SVAMP files, N-CoT and P-CoT.

A smoke test: the tiny model learns nothing in two steps; what is checked is that real data flows through
every stage (loading, prompt building, answer extraction or sandboxed execution, reward, evaluation).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mwp_reft"
TINY = ["data.max_examples=32", "model.hidden_size=32", "model.num_layers=2", "model.intermediate_size=64",
        "model.vocab_size=400", "sft.epochs=2", "warmup_epochs=1", "sft.batch_size=16", "rl.steps=2",
        "rl.prompts_per_step=8", "rl.num_generations=2", "rl.minibatches=2", "rl.eval_every=1",
        "rl.max_new_tokens=48", "eval.max_new_tokens=48"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/mwp_reft is not available")]


def run_cli(out: Path, *overrides: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "reftune.cli", "run", f"out_dir={out}", *TINY, *overrides],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("cot, train_file", [("nl", "svamp_nl.json"), ("program", "svamp_python_sdp.json")])
def test_svamp_sft_then_ppo_from_the_cli(tmp_path, cot, train_file):
    out = tmp_path / cot
    results = run_cli(out, "data=reft", f"data.path={DATA / train_file}", f"data.cot={cot}",
                      f"data.test_path={DATA / 'svamp_test_set.json'}")
    stages = json.loads((out / "stages.json").read_text())
    assert stages["data"]["train"] == 32 and stages["data"]["test"] == 8
    assert "pretrain" not in stages  # real data: no synthetic base-model pretraining
    for model in ("warmup", "sft", "reft"):
        assert results[f"{model}/test"]["n"] == 8
    rows = [json.loads(line) for line in (out / "eval" / "reft_test.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] and all(r["output"] is not None for r in rows)
    if cot == "program":  # every completion went through the sandbox: a value or a reason
        assert all((r["pred"] is not None) or r["error"] for r in rows)
    rl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rl if r["stage"] == "reft" and "reward" in r] == [1, 2]


def test_malformed_line_is_named_and_skip_invalid_counts_it(tmp_path):
    bad = tmp_path / "train.jsonl"
    good = {"question": "Tom has 3 apples and buys 2 more. How many?", "answer": "It is 5.\n#### 5"}
    lines = [json.dumps(good).replace("3 apples", f"{i} apples") for i in range(40)]
    lines.insert(7, '{"question": "broken"')
    bad.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "reftune.cli", "run", f"out_dir={tmp_path / 'a'}", "data=gsm8k",
                           f"data.path={bad}", *TINY], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "train.jsonl:8" in proc.stderr and "Traceback" not in proc.stderr
    results = run_cli(tmp_path / "b", "data=gsm8k", f"data.path={bad}", "--skip-invalid")
    stages = json.loads((tmp_path / "b" / "stages.json").read_text())
    assert stages["data"]["skipped"] == 1 and "reft/val" in results
