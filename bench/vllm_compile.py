"""Does vLLM's compiled mode speed up the CPU engine's rollout of the tiny default? Eager against compiled.

    .venv-vllm/bin/python bench/vllm_compile.py [--warmup runs/bench_warmup/last] [--rounds 2]

The TRL benchmark's rollout (16 questions x 8 samples, up to 96 new tokens, temperature 1, fp32) through
`VLLMSampler` takes ~2 s on one thread where `HFSampler` takes ~0.9 s: vLLM's per-step work (scheduling, input
preparation, sampling) dominates at this model size. `VLLMSampler` runs the CPU engine eager (`enforce_eager=True`)
by default; this builds it both ways (`enforce_eager=False`: vLLM compiles the model with inductor), each in its
own process (one engine per process), alternated `--rounds` times, and times 4 rollouts of 16 training questions
each, with the weights pushed after each (`load_weights`) as RL does. Reported: the engine's build seconds, each
rollout's seconds and completion tokens (the first includes warm-up), the median of rollouts 2-4. Same requests,
same seeds in both modes: the completion tokens show whether they sampled the same. Writes
bench/results/vllm_compile.json. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "vllm_compile.json"


def worker(warmup: str, eager: bool) -> dict:
    import torch
    torch.set_num_threads(1)  # before the engine: vLLM's worker makes set_num_threads a no-op afterwards
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reftune.model.batching import encode
    from reftune.model.prompts import build_prompt
    from reftune.model.vllm_sampler import VLLMSampler

    lm, tok = AutoModelForCausalLM.from_pretrained(warmup, dtype=torch.float32), AutoTokenizer.from_pretrained(warmup)
    lines = (Path(warmup).parent / "data" / "train.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in lines[:64]]
    prompts = [encode(tok, build_prompt(q, "reft", tok)) for q in questions]
    t0 = time.perf_counter()
    sampler = VLLMSampler(lm, tok, dtype="fp32", batch_size=128, enforce_eager=eager)
    out = {"enforce_eager": eager, "build_s": time.perf_counter() - t0, "rollouts": []}
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        t0 = time.perf_counter()
        s = sampler.generate(prompts[16 * i:16 * i + 16], 8, 1.0, 1.0, 96, generator=g)
        t1 = time.perf_counter()
        sampler.load_weights(lm)
        out["rollouts"].append({"seconds": t1 - t0, "completion_tokens": sum(map(len, s.response_ids)),
                                "load_weights_s": time.perf_counter() - t1})
    sampler.close()
    out["median_s"] = statistics.median(r["seconds"] for r in out["rollouts"][1:])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", default="runs/bench_warmup/last")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--worker", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.warmup, args.worker == "eager")))
        return 0
    runs = []
    for r in range(args.rounds):
        for mode in ("eager", "compiled"):
            proc = subprocess.run([sys.executable, __file__, "--warmup", args.warmup, "--worker", mode],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            runs.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "round": r + 1})
            print(mode, r + 1, runs[-1]["median_s"], flush=True)
    summary = {m: statistics.median(x["median_s"] for x in runs if x["enforce_eager"] == (m == "eager"))
               for m in ("eager", "compiled")}
    import vllm
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                   "cpu_count": os.cpu_count(), "threads": 1, "vllm": vllm.__version__,
                                   "warmup": args.warmup, "runs": runs, "median_rollout_s": summary}, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
