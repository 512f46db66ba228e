"""LoRA against full fine-tuning: what one SFT configuration holds in memory and writes to disk.

    .venv/bin/python bench/lora_bench.py [--model tiny|smollm2|both] [--steps 3] [--rank 16]

For each model and mode (full, LoRA r=RANK on all linear layers, QLoRA: the same over a 4-bit NF4 base), in its own
subprocess (one torch thread): trainable parameters, the model's weights in memory (MiB, after quantization), optimizer state (MiB after the steps), the saved checkpoint (MiB on disk: HF weights for
full, adapters for LoRA), peak RSS (MiB, the whole process) and seconds per step of `--steps` AdamW steps on an
8 x 128-token batch. Writes bench/results/lora.json. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "lora.json"


def measure(model: str, rank: int, steps: int, quantize: str = "none") -> dict:
    import torch

    from reftune.config import LoraConfig
    from reftune.model.checkpoint import save_checkpoint
    from reftune.model.lora import apply_lora
    from reftune.model.modeling import build_tiny_model, load_pretrained, train_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if model == "tiny":
        tok = train_tokenizer([f"question {i} answer {i * 7}" for i in range(200)], 600)
        lm = build_tiny_model(tok, 128, 4, 4, 512, 320, seed=0)
    else:
        lm, tok = load_pretrained("", "smollm2")
    start = tempfile.mkdtemp()
    if rank:
        lm = apply_lora(lm, LoraConfig(r=rank, quantize=quantize), start)
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(4, min(lm.config.vocab_size, 500), (8, 128))
    t0 = time.time()
    for _ in range(steps):
        loss = lm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = (time.time() - t0) / steps
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t))
    out = Path(tempfile.mkdtemp()) / "ckpt"
    save_checkpoint(out, lm, tok)
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and "tokenizer" not in f.name)
    weights = sum(t.numel() * t.element_size() for t in [*lm.parameters(), *lm.buffers()])
    mode = (f"qlora r={rank} ({quantize})" if quantize != "none" else f"lora r={rank}") if rank else "full"
    return {"model": model, "mode": mode, "weights_mib": round(weights / 2**20, 2),
            "params": sum(p.numel() for p in lm.parameters()), "trainable_params": trainable,
            "optimizer_state_mib": round(state_bytes / 2**20, 2), "checkpoint_mib": round(disk / 2**20, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "seconds_per_step": round(seconds, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2", "both"], default="tiny")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--one", nargs=3, metavar=("MODEL", "RANK", "QUANTIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.one[2])))
        return 0
    models = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    rows = []
    for m in models:
        for rank, quantize in ((0, "none"), (args.rank, "none"), (args.rank, "4bit")):
            res = subprocess.run([sys.executable, __file__, "--one", m, str(rank), quantize, "--steps", str(args.steps)],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if res.returncode:
                print(res.stderr[-2000:], file=sys.stderr)
                return res.returncode
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "load_average_1m": round(os.getloadavg()[0], 2), "torch_threads": 1, "batch": "8 x 128 tokens",
           "rows": rows}
    if args.model == "both" or not RESULTS.is_file():
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    else:  # one model: keep the other's rows
        old = json.loads(RESULTS.read_text())
        out["rows"] = [r for r in old["rows"] if r["model"] not in models] + rows
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
