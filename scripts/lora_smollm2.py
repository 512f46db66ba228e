"""SmolLM2-135M-Instruct through SFT -> RL -> eval with LoRA and with full fine-tuning: a few steps each, and what
each stage held in memory.

    .venv/bin/python scripts/lora_smollm2.py [--out runs/lora_smollm2] [--modes lora full]

Each stage is one `reftune` command under `/usr/bin/time -v` on one thread: `sft` (16 synthetic questions, chat
template, 1 epoch of batch 4), `rl --model <sft>/last` (GRPO, 2 iterations of 2 questions x 2 samples), `eval --model
<rl>/best` (greedy, 8 test questions). LoRA: `lora.r=16` on all linear layers in both training stages (the RL
reference is the policy with its adapters off). Writes OUT/<mode>/... and bench/results/lora_smollm2.json: per
stage its exit code, wall seconds, peak RSS (MiB) and checkpoint size on disk, and the eval's accuracy (a few
steps on a few questions: a smoke run of the pipeline, not a result). Not a test: numbers depend on the machine
and its load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "lora_smollm2.json"
COMMON = ["model.gguf_file=smollm2", "data.template=chat", "data.n_train=16", "data.n_val=4", "data.n_test=8",
          "data.n_extra=0", "data.n_pretrain=0", "eval.max_new_tokens=48", "eval.batch_size=8"]
SFT = ["sft.epochs=1", "sft.batch_size=4", "sft.eval_every_epochs=1", "sft.patience=0"]
RL = ["rl.advantage=grpo", "rl.steps=2", "rl.prompts_per_step=2", "rl.num_generations=2", "rl.minibatches=1",
      "rl.max_new_tokens=48", "rl.eval_every=2"]


def timed(args: list[str], log: Path) -> dict:
    """Run `reftune ARGS` under /usr/bin/time -v (one thread); its exit code, wall seconds and peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "reftune.cli", *args]
    with log.open("a") as f:
        f.write("+ reftune " + " ".join(args) + "\n")
        f.flush()
        out = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=env)
        f.write(out.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", out.stderr)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.group(1).split(":")))) if wall else None
    return {"exit": out.returncode, "seconds": round(secs, 1) if secs else None,
            "peak_rss_mib": round(int(rss.group(1)) / 1024, 1) if rss else None}


def disk_mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 2) if path.exists() else 0.0


def pipeline(out: Path, mode: str) -> dict:
    lora = ["lora.r=16"] if mode == "lora" else []
    d = out / mode
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log = d / "log.txt"
    res = {"mode": mode}
    res["sft"] = timed(["sft", f"out_dir={d / 'sft'}", *COMMON, *SFT, *lora], log)
    res["sft"]["checkpoint_mib"] = disk_mib(d / "sft" / "last")
    if res["sft"]["exit"]:
        return res
    res["rl"] = timed(["rl", "--model", str(d / "sft" / "last"), f"out_dir={d / 'rl'}", *COMMON, *RL, *lora], log)
    res["rl"]["checkpoint_mib"] = disk_mib(d / "rl" / "last")
    if res["rl"]["exit"]:
        return res
    res["eval"] = timed(["eval", "--model", str(d / "rl" / "best"), f"out_dir={d / 'eval'}", *COMMON,
                         "eval.split=test"], log)
    if not res["eval"]["exit"]:
        res["eval"]["accuracy"] = json.loads((d / "eval" / "results.json").read_text())["accuracy"]
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/lora_smollm2"))
    p.add_argument("--modes", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for mode in args.modes:
        rows.append(pipeline(args.out, mode))
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/lora_smollm2.py --modes " + " ".join(args.modes),
        "load_average_1m": {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)},
        "settings": {"common": COMMON, "sft": SFT, "rl": RL, "lora": "lora.r=16 (all linear layers)"},
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0 if all(r.get("eval", {}).get("exit") == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
