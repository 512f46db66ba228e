"""FSDP2 against one process: what each process holds when full fine-tuning is sharded over 2 processes.

    .venv/bin/python bench/fsdp_bench.py [--model tiny|smollm2] [--steps 3]

Runs the same full fine-tuning (AdamW steps on a global 8 x 128-token batch) once in one process and once under
`torchrun --nproc_per_node 2` with reftune's FSDP2 sharding (`reftune.train.fsdp.shard_model`, each process its
4 rows), each process on one torch thread (gloo on CPU). Per process: the weights it holds between steps (MiB,
its shards), its optimizer state (MiB), its peak RSS (MiB: includes loading the whole model before sharding)
and seconds per step. Writes bench/results/fsdp.json. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fsdp.json"


def worker(model: str, steps: int) -> dict:
    import torch
    from torch.distributed.tensor import DTensor

    from reftune.model.modeling import build_tiny_model, load_pretrained, train_tokenizer
    from reftune.train import fsdp
    from reftune.train.accel import num_processes, process_state

    torch.set_num_threads(1)
    torch.manual_seed(0)
    state = process_state()
    if model == "tiny":
        tok = train_tokenizer([f"question {i} answer {i * 7}" for i in range(200)], 600)
        lm = build_tiny_model(tok, 128, 4, 4, 512, 320, seed=0)
    else:
        lm, tok = load_pretrained("", "smollm2")
    if fsdp.enabled():
        fsdp.shard_model(lm, torch.device("cpu"))
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    ids = torch.randint(4, min(lm.config.vocab_size, 500), (8, 128), generator=torch.Generator().manual_seed(0))
    n, r = num_processes(), state.process_index
    mine = ids[r * 8 // n:(r + 1) * 8 // n]
    t0 = time.time()
    for _ in range(steps):
        loss = lm(input_ids=mine, labels=mine).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = (time.time() - t0) / steps

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    weights = sum(local(p).numel() * p.element_size() for p in lm.parameters())
    opt_bytes = sum(local(t).numel() * t.element_size() for s in opt.state.values() for t in s.values()
                    if torch.is_tensor(t))
    return {"model": model, "processes": n, "rank": r, "sharded": fsdp.enabled(),
            "weights_mib": round(weights / 2**20, 2), "optimizer_state_mib": round(opt_bytes / 2**20, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "seconds_per_step": round(seconds, 3), "loss": round(float(loss), 4)}


def run(model: str, steps: int, processes: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--steps", str(steps)]
    if processes > 1:
        env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *cmd[1:]]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(res.stdout[-2000:] + res.stderr[-3000:])
    return [json.loads(line[len("ROW "):]) for line in res.stdout.splitlines() if line.startswith("ROW ")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("ROW " + json.dumps(worker(args.model, args.steps)), flush=True)
        return 0
    rows = run(args.model, args.steps, 1) + sorted(run(args.model, args.steps, 2), key=lambda r: r["rank"])
    for r in rows:
        print(r, flush=True)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "load_average_1m": round(os.getloadavg()[0], 2), "torch_threads_per_process": 1,
           "batch": "8 x 128 tokens (global)", "steps": args.steps, "rows": rows}
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    out["rows"] = [r for r in old.get("rows", []) if r["model"] != args.model] + rows
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
