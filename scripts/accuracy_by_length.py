"""Greedy accuracy of a checkpoint on synthetic problems of each chain length (how far a base generalises).

    python scripts/accuracy_by_length.py runs/base/last --exclude runs/base/data --n 200 --seed 99

Problems are generated with data seed `--seed`, skipping every question in `--exclude` (the model's own
training data), for step ranges 2-4, 3-5, 4-6 and 5-6 (intermediate values ≤ 99).
"""

from __future__ import annotations

import argparse
import json

from reftune.data.splits import read_questions
from reftune.eval.greedy import evaluate
from reftune.model.modeling import load_pretrained
from reftune.data.synthetic import generate_splits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--exclude", help="JSONL file or folder of questions to skip")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=99)
    args = p.parse_args()
    lm, tokenizer = load_pretrained(args.checkpoint)
    exclude = read_questions(args.exclude) if args.exclude else None
    rows = {}
    for lo, hi in ((2, 4), (3, 5), (4, 6), (5, 6)):
        examples = generate_splits(args.seed, {"test": args.n}, lo, hi, max_value=99, exclude=exclude)["test"]
        res = evaluate(lm, tokenizer, examples, max_new_tokens=128, batch_size=100, desc=f"{lo}-{hi} steps")
        rows[f"{lo}-{hi}"] = res["accuracy"]
        print(f"{lo}-{hi} steps: accuracy {res['accuracy']:.3f} (n={res['n']})", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
