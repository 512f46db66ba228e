"""`reftune eval` over a fixed slice of a split, in resumable chunks, with the wall-clock time it took.

    python scripts/sliced_eval.py --out runs/smollm2_gsm8k --limit 200 --chunk 25 --threads 2 \\
        model.gguf_file=smollm2 data=gsm8k data.path=../shared/data/gsm8k/train.jsonl \\
        data.test_path=../shared/data/gsm8k/test.jsonl data.template=chat eval.split=test \\
        eval.num_samples=8 eval.max_new_tokens=256

For a slow model on a CPU (SmolLM2-135M: about an hour for 200 GSM8K questions with 8 samples each), the slice
[0, LIMIT) runs as `reftune eval eval.offset=O eval.limit=CHUNK out_dir=OUT/chunk-O`, one chunk after another.
A killed run re-runs only the chunks without a results.json. Each chunk's wall-clock seconds (model loading
included) go to OUT/chunk-O/seconds.json. The chunks are then pooled: every metric is a mean over questions,
so the pooled value is the question-weighted mean. Written to OUT/table.md and OUT/table.json, with the
hardware and the total time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from jobs import cpu_name, run_logged, write_table


def pooled(parts: list[dict]) -> dict:
    """Question-weighted means of every numeric metric of `reftune eval` results (greedy and "sampling")."""
    n = sum(p["n"] for p in parts)
    out: dict = {"n": n}
    for key in ("accuracy", "answered"):
        out[key] = sum(p[key] * p["n"] for p in parts) / n
    if all("sampling" in p for p in parts):
        first = parts[0]["sampling"]
        out["sampling"] = {k: v for k, v in first.items() if k in ("k", "temperature", "top_p")}
        for key, value in first.items():
            if key not in out["sampling"] and key != "n" and isinstance(value, (int, float)):
                out["sampling"][key] = sum(p["sampling"][key] * p["sampling"]["n"] for p in parts) / n
        out["sampling"]["n"] = n
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, required=True, help="the slice is the first N questions of eval.split")
    p.add_argument("--chunk", type=int, default=25, help="questions per `reftune eval` call")
    p.add_argument("--threads", type=int, default=None, help="torch threads (OMP/MKL); default: torch's own")
    p.add_argument("overrides", nargs="*", help="key=value for `reftune eval` (model, data, eval.*)")
    args = p.parse_args()
    if any(o.startswith(("eval.offset=", "eval.limit=", "out_dir=")) for o in args.overrides):
        p.error("eval.offset, eval.limit and out_dir are set per chunk; use --limit, --chunk and --out")
    out = Path(args.out)
    parts, seconds = [], []
    for offset in range(0, args.limit, args.chunk):
        d = out / f"chunk-{offset:05d}"
        if not (d / "results.json").is_file():
            t0 = time.time()
            rc = run_logged(["eval", *(["--resume"] if d.exists() else []), *args.overrides, f"eval.offset={offset}",
                             f"eval.limit={min(args.chunk, args.limit - offset)}", f"out_dir={d}"],
                            out / "eval.log", args.threads)
            if rc:
                print(f"sliced_eval: chunk at offset {offset} failed; see {out / 'eval.log'}", file=sys.stderr)
                return rc
            (d / "seconds.json").write_text(json.dumps({"seconds": time.time() - t0, "threads": args.threads}))
        parts.append(json.loads((d / "results.json").read_text()))
        seconds.append(json.loads((d / "seconds.json").read_text())["seconds"])
    res = pooled(parts)
    res.update(seconds=sum(seconds), chunk=args.chunk, overrides=args.overrides, threads=args.threads,
               hardware=f"{cpu_name()}, {os.cpu_count()} cores")
    lines = [f"First {res['n']} questions; wall-clock {res['seconds'] / 60:.1f} min in {len(parts)} chunks "
             f"(model loading included), {res['hardware']}, torch threads {args.threads or 'default'}.\n",
             "| decoding | accuracy % | answer extracted % |", "|---|---|---|",
             f"| greedy | {100 * res['accuracy']:.1f} | {100 * res['answered']:.1f} |"]
    if "sampling" in res:
        s = res["sampling"]
        k = s["k"]
        lines += [f"| majority voting@{k} (T={s['temperature']}, top-p {s['top_p']}) | {100 * s[f'voting@{k}']:.1f} | "
                  f"{100 * s['answered']:.1f} |",
                  f"| pass@1 (one sample) | {100 * s['pass@1']:.1f} | |",
                  f"| pass@{k} | {100 * s[f'pass@{k}']:.1f} | |"]
    write_table(out, "\n".join(lines), res)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
