"""Would `torch.compile` speed up the tiny default's decode step? The sampler's step against a compiled one.

    OMP_NUM_THREADS=1 .venv/bin/python bench/decode_compile.py [--warmup runs/bench_warmup/last] [--rows 128]
        [--prompt 87] [--steps 60]

The tiny default's rollout (16 questions x 8 samples, the TRL benchmark's) spends most of its time in decode steps
of ~128 rows whose matrices are small: per-op overhead, not FLOPs, sets the step's time. Three ways to run the same
steps after a prefill of `--rows` random prompts of `--prompt` tokens, each timed per step (median of the steps
after the fifth):
- `sampler`: what `HFSampler` runs (reftune's in-place cache, attention over the filled positions only);
- `static_eager`: transformers' `StaticCache` (attention over the whole preallocated length, masked), eager;
- `static_compiled`: the same step under `torch.compile` (inductor; shapes static, so one compilation), with the
  compile time (the first step) reported apart.
A compiled step needs every shape fixed: rows that finish could no longer be dropped from the batch (the sampler
drops them), and a new batch size or length recompiles. Writes bench/results/decode_compile.json. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "decode_compile.json"


def steps_ms(step, n: int) -> tuple[list[float], float]:
    """(milliseconds of each of n calls of step(i)), seconds of the first call."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    return [1e3 * t for t in times], times[0]


def main() -> int:
    from transformers import StaticCache

    from reftune.model.batching import positions
    from reftune.model.kv_cache import preallocated_cache
    from reftune.model.modeling import load_pretrained

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", default="runs/bench_warmup/last")
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--prompt", type=int, default=87)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    lm, _ = load_pretrained(args.warmup)
    lm.eval()
    B, P, N = args.rows, args.prompt, args.steps
    ids = torch.randint(10, lm.config.vocab_size - 10, (B, P), generator=torch.Generator().manual_seed(0))
    attn = torch.ones(B, P + N, dtype=torch.long)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "threads": torch.get_num_threads(), "load_average_1m_start": round(os.getloadavg()[0], 2),
           "rows": B, "prompt_tokens": P, "steps": N, "arms": {}}
    tok = ids[:, -1:]
    with torch.no_grad():
        cache = preallocated_cache(lm.config, P + N)
        lm(input_ids=ids, attention_mask=attn[:, :P], position_ids=positions(attn[:, :P]), use_cache=True,
           logits_to_keep=1, cache=cache)
        ms, _ = steps_ms(lambda i: lm(input_ids=tok, attention_mask=attn[:, :P + i + 1],
                                      position_ids=torch.full((B, 1), P + i), use_cache=True, logits_to_keep=1,
                                      cache=cache), N)
        res["arms"]["sampler"] = {"median_step_ms": round(statistics.median(ms[5:]), 2)}
        for name, fn in (("static_eager", lm.forward), ("static_compiled", torch.compile(lm.forward))):
            cache = StaticCache(config=lm.config, max_cache_len=P + N)
            lm(input_ids=ids, attention_mask=attn[:, :P], use_cache=True, logits_to_keep=1, cache=cache,
               cache_position=torch.arange(P))
            ms, first = steps_ms(lambda i: fn(input_ids=tok, attention_mask=attn, use_cache=True, logits_to_keep=1,
                                              cache=cache, cache_position=torch.tensor([P + i]),
                                              position_ids=torch.full((B, 1), P + i)), N)
            res["arms"][name] = {"median_step_ms": round(statistics.median(ms[5:]), 2), "first_step_s": round(first, 2)}
    res["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
