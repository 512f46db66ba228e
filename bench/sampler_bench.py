"""Rollout throughput of the sampler backends: HF (fp32 and bf16 weights) against vLLM (bf16 and fp32).

    .venv-vllm/bin/python bench/sampler_bench.py          # -> bench/results/sampler_bench.json
    .venv/bin/python bench/sampler_bench.py               # HF rows only (vllm is not installed there)
    .venv-vllm/bin/python bench/sampler_bench.py --model tiny --backend vllm-bf16    # one worker, JSON to stdout

Each (model, backend) pair runs in its own subprocess on `--threads` torch threads (default 1): vLLM keeps one
engine per process and, on CPU, disables torch.set_num_threads once its engine exists. The load average at
the start and end of every worker is recorded: on a shared machine the numbers move with it.

What is timed: `generate` at temperature 1 with a fixed `max_new_tokens`, seeded, for (prompts x samples)
rollouts; tokens/s = generated tokens / wall time, prefill included; the fastest of `--iters` calls after one
untimed warm-up (a random tiny model rarely samples EOS, so its rows run to the limit; SmolLM2 stops some rows
early at EOS: fewer tokens, same formula). FLOP utilisation: the rollout's model FLOPs per second over a
torch.matmul peak measured in the same worker at the same precision (bf16 rows: bf16 peak; fp32 rows: fp32).
Model FLOPs (`rollout_flops`): each prompt prefilled once per group (both backends share it), 2 FLOPs per
weight per token (the LM head only for the last prompt position) plus attention, 4*layers*hidden*context
per token; each generated token 2 FLOPs per weight plus attention over its context. `decode_matmul_gflops`: the
GFLOP/s of a decode step's MLP matmul at the rollout's row count, measured alone in the same worker: the
ceiling a decode step's weight matmuls can reach at that batch size (skinny matmuls run far below the square
peak), to read `flop_utilisation` against.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from jobs import matmul_gflops, matmul_peak  # noqa: E402  (the scripts' and benches' shared helpers)

RESULTS = Path(__file__).parent / "results" / "sampler_bench.json"
GSM8K = "/work/shared/data/gsm8k/test.jsonl"
# hf*: shared-prefix decoding where a prompt has several samples (the default); hf*-repeat: the prompt's cache
# repeated per sample (HFSampler(shared_prefix=False)), the path before it
BACKENDS = ["hf", "hf-bf16", "hf-repeat", "hf-bf16-repeat", "vllm-bf16", "vllm-fp32"]
SETTINGS = {  # per model: prompt template, rollout length, (prompts, samples per prompt) shapes, timed calls
    "tiny": {"template": "reft", "max_new_tokens": 64, "rollouts": [(32, 1), (8, 4), (16, 8)], "iters": 3},
    "smollm2": {"template": "chat", "max_new_tokens": 32, "rollouts": [(32, 1), (8, 4)], "iters": 1},
}


def load(name: str):
    """(model in fp32, tokenizer, questions)."""
    from reftune.data.synthetic import generate_splits
    from reftune.model.modeling import build_tiny_model, load_pretrained, train_tokenizer

    train = generate_splits(1234, {"train": 600}, 2, 4)["train"]
    if name == "tiny":  # the tiny default: 4 layers, hidden 128, 4 heads, BPE vocabulary 600
        corpus = [e.question + "\n" + e.cot for e in train]
        corpus += [e.meta["nl_cot"] + "\n" + e.meta["program"] for e in train]
        tok = train_tokenizer(corpus, 600)
        return build_tiny_model(tok, 128, 4, 4, 512, 320, 0), tok, [e.question for e in train]
    model, tok = load_pretrained(".", gguf_file="smollm2")
    if Path(GSM8K).is_file():
        from reftune.data.loaders import load_dataset
        return model, tok, [e.question for e in load_dataset("gsm8k", GSM8K).examples]
    return model, tok, [e.question for e in train]


def make(backend: str, model, tok, rows: int):
    from reftune.model.sampler import make_sampler

    if backend.startswith("hf"):
        return make_sampler("hf", model, tok, batch_size=rows, dtype=torch.bfloat16 if "bf16" in backend else None,
                            shared_prefix=not backend.endswith("-repeat"))
    return make_sampler("vllm", model, tok, batch_size=rows, dtype=backend.removeprefix("vllm-"),
                        kv_cache_memory_bytes=1 << 30)


def rollout_flops(model, prompt_lens: list[int], response_lens: list[list[int]]) -> float:
    """Model FLOPs of prefilling each prompt once and decoding its rows' tokens (see the module docstring).

    Weights: all parameters bar the input embedding (unless it is tied to the LM head)."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n = sum(p.numel() for p in model.parameters()) - (0 if emb is head else emb.numel())
    attn = 4 * model.config.num_hidden_layers * model.config.hidden_size  # per token per token of context
    total = 0.0
    for p, rows in zip(prompt_lens, response_lens):
        total += 2 * (n - head.numel()) * p + 2 * head.numel() + attn * p * (p + 1) / 2
        total += sum(2 * n * r + attn * (p * r + r * (r + 1) / 2) for r in rows)
    return total


def worker(name: str, backend: str, iters: int | None) -> dict:
    from reftune.model.batching import encode
    from reftune.model.prompts import build_prompt

    s = SETTINGS[name]
    iters = iters or s["iters"]
    load_start = round(os.getloadavg()[0], 2)
    # measured first: once the vLLM engine exists, torch.set_num_threads is a no-op
    dtype = torch.bfloat16 if "bf16" in backend else torch.float32
    peak = matmul_peak(dtype, n=1024)
    torch.manual_seed(0)
    model, tok, questions = load(name)
    model.eval()
    biggest = max(p * g for p, g in s["rollouts"])
    prompts = [encode(tok, build_prompt(q, s["template"], tok)) for q in questions[:biggest]]
    t0 = time.perf_counter()
    sampler = make(backend, model, tok, biggest)
    res = {"model": name, "backend": backend, "threads": torch.get_num_threads(), "iters": iters,
           "max_new_tokens": s["max_new_tokens"], "sampler_setup_s": round(time.perf_counter() - t0, 1),
           "matmul_peak_gflops": peak, "load_average_1m": {"start": load_start}, "rollouts": []}
    sampler.generate(prompts[:2], 2, max_new_tokens=4, generator=torch.Generator().manual_seed(0))  # warm-up
    for n_prompts, group in s["rollouts"]:
        gen, runs = torch.Generator().manual_seed(0), []
        for _ in range(iters):
            t0 = time.perf_counter()
            out = sampler.generate(prompts[:n_prompts], group, 1.0, 1.0, s["max_new_tokens"], generator=gen)
            secs, lens = time.perf_counter() - t0, [len(r) for r in out.response_ids]
            flops = rollout_flops(model, [len(p) for p in prompts[:n_prompts]],
                                  [lens[i * group:(i + 1) * group] for i in range(n_prompts)])
            runs.append((sum(lens), secs, flops))
        tokens, secs, flops = max(runs, key=lambda r: r[0] / r[1])
        gflops = flops / secs / 1e9
        res["rollouts"].append({"prompts": n_prompts, "samples_per_prompt": group, "tokens": tokens,
                                "mean_prompt_tokens": round(sum(map(len, prompts[:n_prompts])) / n_prompts, 1),
                                "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1),
                                "model_gflops_per_s": round(gflops, 2), "flop_utilisation": round(gflops / peak, 4),
                                "decode_matmul_gflops": decode_matmul(model, n_prompts * group, dtype)})
        print(f"  {name} {backend} {n_prompts}x{group}: {tokens / secs:,.0f} tok/s", file=sys.stderr)
    res["load_average_1m"]["end"] = round(os.getloadavg()[0], 2)
    if hasattr(sampler, "close"):
        sampler.close()
    return res


def decode_matmul(model, rows: int, dtype) -> float:
    """GFLOP/s of one decode step's MLP matmul ([rows, hidden] @ [hidden, intermediate]) at this batch's row
    count: what the weights' matmuls of a decode step can reach on this CPU, whatever the sampler does around
    them (a skinny matmul runs far below the square peak)."""
    c = model.config
    return matmul_gflops(dtype, rows, c.hidden_size, c.intermediate_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["all", *SETTINGS], default="all")
    ap.add_argument("--backend", choices=["all", *BACKENDS], default="all")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per shape (default: per model)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model != "all" and args.backend != "all":
        print(json.dumps(worker(args.model, args.backend, args.iters)))
        return
    has_vllm = importlib.util.find_spec("vllm") is not None
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
              "threads": args.threads, "torch": torch.__version__, "python": sys.executable, "runs": []}
    for name in SETTINGS if args.model == "all" else [args.model]:
        for backend in BACKENDS if args.backend == "all" else [args.backend]:
            if backend.startswith("vllm") and not has_vllm:
                report["runs"].append({"model": name, "backend": backend, "skipped": "vllm is not installed"})
                continue
            cmd = [sys.executable, __file__, "--model", name, "--backend", backend, "--threads", str(args.threads)]
            cmd += ["--iters", str(args.iters)] if args.iters else []
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            report["runs"].append(json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else
                                  {"model": name, "backend": backend, "error": f"worker exit status {proc.returncode}"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in report["runs"]:
        rows = ", ".join(f"{x['prompts']}x{x['samples_per_prompt']} {x['tokens_per_s']:,.0f} tok/s "
                         f"({x['flop_utilisation']:.0%})" for x in r.get("rollouts", []))
        print(f"{r['model']:8} {r['backend']:10} {rows or r.get('skipped') or r.get('error')}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
