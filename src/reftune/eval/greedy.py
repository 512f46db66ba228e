"""Greedy evaluation: accuracy on a split, with every question's output saved as JSONL."""

from __future__ import annotations

from pathlib import Path

from reftune.data.jsonl import write_jsonl
from reftune.eval.generation import generate_and_grade
from reftune.example import Example
from reftune.model.sampler import HFSampler, Sampler


def evaluate(model, tokenizer, examples: list[Example], *, template: str = "reft", cot: str = "nl",
             batch_size: int = 128, max_new_tokens: int = 96, sandbox=None, out_path: str | Path | None = None,
             desc: str = "eval", sampler: Sampler | None = None) -> dict:
    """Greedy-decode every example; returns {"accuracy", "n", "answered"}; writes JSONL if `out_path`.
    `sampler` replaces the default `HFSampler(model, ...)` (e.g. a vLLM engine)."""
    sampler = sampler or HFSampler(model, tokenizer, batch_size=batch_size, device=model.device)
    records = []
    for ex, [(text, g, _)] in generate_and_grade(sampler, tokenizer, examples, 1, questions_per_chunk=batch_size,
                                                 temperature=0.0, max_new_tokens=max_new_tokens, template=template,
                                                 cot=cot, sandbox=sandbox, desc=desc):
        records.append({"id": ex.id, "question": ex.question, "gold": ex.answer, "output": text,
                        "pred": g.pred, "correct": g.correct, "error": g.error})
    n = len(records)
    result = {"accuracy": sum(r["correct"] for r in records) / max(n, 1), "n": n,
              "answered": sum(r["pred"] is not None for r in records) / max(n, 1)}
    if out_path is not None:
        write_jsonl(out_path, records)
    return result
