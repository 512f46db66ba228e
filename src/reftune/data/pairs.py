"""Preference pairs for the Bradley-Terry reward model: read from JSONL, or built from a model's graded samples.

A pair says that `chosen` is a better completion than `rejected` for one prompt. The prompt is either a
question (templated with `data.template` when the pair is encoded) or a full `prompt` text used as is.
File format, one JSON object per line: {"question": ..., "chosen": ..., "rejected": ...} or
{"prompt": ..., "chosen": ..., "rejected": ...}; other keys are ignored. `reftune rm` writes the pairs it
trained on in the same format (run_dir/pairs_train.jsonl), so they can be read back.

From samples (`pairs_from_samples`): every (correct, incorrect) pair of samples of the same question, as graded
by the task's grader; a question whose samples are all correct or all wrong gives none. Simplification: a
correct sample cut at max_new_tokens still counts as chosen (it is judged by its answer, as the verifier is).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from reftune.example import Example
from reftune.errors import DataError, UserError


@dataclass(frozen=True)
class Pair:
    """chosen ≻ rejected for one prompt: the `question` (to be templated) or a full `prompt` text, exactly one."""

    chosen: str
    rejected: str
    question: str | None = None
    prompt: str | None = None

    def to_record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def load_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a JSONL file. A malformed line raises `DataError` naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such pairs file")
    pairs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON line ({exc.msg})", path=str(path), line=i) from None
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", path=str(path), line=i)
        keys = [k for k in ("question", "prompt") if k in record]
        if len(keys) != 1:
            raise DataError("needs exactly one of 'question' and 'prompt'", path=str(path), line=i)
        if not isinstance(record[keys[0]], str) or not record[keys[0]].strip():
            raise DataError("empty or not a string", path=str(path), line=i, field=keys[0])
        for key in ("chosen", "rejected"):  # an empty completion is a completion (the model stopped at once)
            if not isinstance(record.get(key), str):
                raise DataError("missing or not a string", path=str(path), line=i, field=key)
        pairs.append(Pair(record["chosen"], record["rejected"], **{keys[0]: record[keys[0]]}))
    if not pairs:
        raise UserError(f"{path}: the pairs file has no pairs")
    return pairs


def pairs_from_samples(examples: list[Example], per_question: list[list[dict]], max_per_question: int,
                       seed: int = 0) -> list[Pair]:
    """Every (correct, incorrect) pair of samples of the same question, at most `max_per_question` each.

    per_question[i]: the graded samples of examples[i] ({"text", "correct"}, as from `eval.sampling.sample_and_grade`).
    Above the cap, a question's pairs are drawn without replacement by a generator seeded with `seed` (the same
    call gives the same pairs), kept in (correct sample, incorrect sample) order.
    """
    rng = random.Random(seed)
    pairs = []
    for ex, samples in zip(examples, per_question):
        good = [s["text"] for s in samples if s["correct"]]
        bad = [s["text"] for s in samples if not s["correct"]]
        grid = [(c, r) for c in good for r in bad]
        if len(grid) > max_per_question:
            grid = [grid[k] for k in sorted(rng.sample(range(len(grid)), max_per_question))]
        pairs += [Pair(c, r, question=ex.question) for c, r in grid]
    return pairs
