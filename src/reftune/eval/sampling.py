"""Evaluation with k samples per question: pass@k, majority voting@k and verifier reranking@k.

One sampling pass serves every metric: each question gets k samples (one `Sampler.generate` call with
num_samples=k per chunk of questions), they are graded once, and
  pass@j     — the unbiased estimator over the k samples (`voting.pass_at_k`), for j = 1, 2, 4, ..., k;
               pass@1 is the mean accuracy of single samples, pass@k the share of questions with any
               correct sample (an upper bound for any way of choosing among them);
  voting@k   — the majority answer is correct (Wang et al.'s self-consistency);
  rerank@k   — the answer of the sample a verifier scores highest is correct (only with a `scorer`).
A chosen answer counts as correct when a sample giving that (normalised) answer was graded correct, so
voting and reranking use exactly the grader's judgement.

`sample_and_grade` is also how the verifier and offline self-training collect their labelled samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from reftune.data.jsonl import write_jsonl
from reftune.eval.generation import generate_and_grade
from reftune.eval.voting import majority_vote, pass_at_k, rerank
from reftune.example import Example
from reftune.grading.answers import normalize_answer
from reftune.model.sampler import HFSampler, Sampler

# (questions, completions) -> P(correct) per completion; see `reftune.rewards.scorer.load_scorer`.
Scorer = Callable[[list[str], list[str]], list[float]]


def sample_and_grade(model, tokenizer, examples: list[Example], num_samples: int, *, temperature: float = 1.0,
                     top_p: float = 1.0, max_new_tokens: int = 96, template: str = "reft", cot: str = "nl",
                     batch_size: int = 128, sandbox=None, seed: int = 0, sampler: Sampler | None = None,
                     desc: str = "sample") -> list[list[dict]]:
    """`num_samples` graded samples per example: out[i][j] = {"text", "pred", "correct", "finished"} of sample j
    of example i ("finished": it ended with EOS rather than at `max_new_tokens`).

    Questions go `batch_size // num_samples` at a time, so one generation batch holds about `batch_size`
    rows. Sampling draws from a generator seeded with `seed`, so the same call gives the same samples.
    `sampler` replaces the default `HFSampler(model, ...)` (another backend, or a scripted one in tests).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if sampler is None:
        sampler = HFSampler(model, tokenizer, batch_size=batch_size, device=model.device)
    device = model.device if model is not None else torch.device("cpu")
    generator = torch.Generator(device=device).manual_seed(seed)
    return [[{"text": text, "pred": g.pred, "correct": g.correct, "finished": done} for text, g, done in rows]
            for _, rows in generate_and_grade(sampler, tokenizer, examples, num_samples,
                                              questions_per_chunk=max(1, batch_size // num_samples),
                                              temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                              template=template, cot=cot, sandbox=sandbox, generator=generator,
                                              desc=desc)]


def cached_samples(path: str | Path, examples: list[Example], make: Callable[[], list[list[dict]]]) -> list[list[dict]]:
    """`make()`'s per-question samples, saved to `path` as JSONL ({"id", "samples"} per line); read back
    instead when `path` already holds samples for exactly these example ids (a resumed run samples once)."""
    path = Path(path)
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if [r["id"] for r in rows] == [e.id for e in examples]:
            return [r["samples"] for r in rows]
    per_question = make()
    write_jsonl(path, ({"id": e.id, "samples": samples} for e, samples in zip(examples, per_question)))
    return per_question


def _chosen_is_correct(answer: str | None, samples: list[dict], answer_type: str) -> bool:
    return answer is not None and any(
        s["correct"] for s in samples if s["pred"] is not None and normalize_answer(s["pred"], answer_type) == answer)


def evaluate_sampling(model, tokenizer, examples: list[Example], num_samples: int, *, temperature: float = 1.0,
                      top_p: float = 1.0, max_new_tokens: int = 96, template: str = "reft", cot: str = "nl",
                      batch_size: int = 128, sandbox=None, seed: int = 0, scorer: Scorer | None = None,
                      sampler: Sampler | None = None, out_path: str | Path | None = None,
                      desc: str = "sample") -> dict:
    """pass@j, voting@k (and rerank@k with a `scorer`) from k = `num_samples` samples per question.

    Returns {"n", "k", "temperature", "top_p", "answered", "pass@1", "pass@2", ..., "pass@k", "voting@k"
    [, "rerank@k"]}; "answered" is the share of samples with an extracted answer. Writes one JSONL line
    per question to `out_path`: id, gold, samples [{text, pred, correct, score}], vote, correct_vote
    [, rerank, correct_rerank].
    """
    k = num_samples
    per_question = sample_and_grade(model, tokenizer, examples, k, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, template=template, cot=cot,
                                    batch_size=batch_size, sandbox=sandbox, seed=seed, sampler=sampler, desc=desc)
    if scorer is not None:
        flat = scorer([e.question for e in examples for _ in range(k)],
                      [s["text"] for samples in per_question for s in samples])
        for i, samples in enumerate(per_question):
            for j, s in enumerate(samples):
                s["score"] = float(flat[i * k + j])
    ladder = sorted({2 ** p for p in range(k.bit_length()) if 2 ** p <= k} | {k})
    totals = {f"pass@{j}": 0.0 for j in ladder} | {f"voting@{k}": 0.0, "answered": 0.0}
    if scorer is not None:
        totals[f"rerank@{k}"] = 0.0
    records = []
    for ex, samples in zip(examples, per_question):
        preds = [s["pred"] for s in samples]
        c = sum(s["correct"] for s in samples)
        for j in ladder:
            totals[f"pass@{j}"] += pass_at_k(k, c, j)
        vote = majority_vote(preds, ex.answer_type)
        record = {"id": ex.id, "gold": ex.answer,
                  "samples": [{**s, "score": s.get("score")} for s in samples],
                  "vote": vote, "correct_vote": _chosen_is_correct(vote, samples, ex.answer_type)}
        totals[f"voting@{k}"] += record["correct_vote"]
        totals["answered"] += sum(p is not None for p in preds) / k
        if scorer is not None:
            record["rerank"] = rerank(preds, [s["score"] for s in samples], ex.answer_type)
            record["correct_rerank"] = _chosen_is_correct(record["rerank"], samples, ex.answer_type)
            totals[f"rerank@{k}"] += record["correct_rerank"]
        records.append(record)
    n = len(records)
    result = {"n": n, "k": k, "temperature": temperature, "top_p": top_p,
              **{key: value / max(n, 1) for key, value in totals.items()}}
    if out_path is not None:
        write_jsonl(out_path, records)
    return result


def results_table(greedy: dict | None, sampling: dict | None, title: str = "Evaluation") -> str:
    """A markdown table of accuracies (percent): greedy, then pass@1, voting@k, rerank@k and pass@k."""
    lines = [f"# {title}", "", "| method | accuracy (%) | questions |", "|---|---|---|"]
    if greedy is not None:
        lines.append(f"| greedy | {greedy['accuracy'] * 100:.1f} | {greedy['n']} |")
    if sampling is not None:
        k, n = sampling["k"], sampling["n"]
        how = f"k={k}, T={sampling['temperature']:g}, top_p={sampling['top_p']:g}"
        rows = [("pass@1 (one sample)", "pass@1"), (f"majority voting@{k}", f"voting@{k}"),
                (f"verifier rerank@{k}", f"rerank@{k}")]
        rows += [(f"pass@{k} (oracle: any sample correct)", f"pass@{k}")] if k > 1 else []
        for label, key in rows:
            if key in sampling:
                lines.append(f"| {label} | {sampling[key] * 100:.1f} | {n} |")
        lines += ["", f"Sampling: {how}; every sampled metric is computed from the same k samples per question."]
    return "\n".join(lines) + "\n"
