"""Grading completions and the ReFT reward, shared by RL, evaluation and voting.

`grade` turns completions into (answer, correct) pairs: N-CoT answers are read by `reftune.grading.answers`
after the final-answer marker; P-CoT completions are programs, run in `reftune.grading.sandbox`, whose return
value is the answer. `reft_reward` maps a grade to 1 / 0.1 / 0 as in the paper: the partial reward goes
to a wrong but extracted *numeric* answer (it rewards producing a well-formed answer at all).
"""

from __future__ import annotations

from dataclasses import dataclass

from reftune.grading.answers import answers_match, extract_answer, normalize_answer
from reftune.example import Example


@dataclass
class Grade:
    """pred: the normalised answer (None when nothing could be extracted); error: why a program failed."""

    pred: str | None
    correct: bool
    error: str | None = None


def grade(texts: list[str], examples: list[Example], cot: str = "nl", sandbox=None) -> list[Grade]:
    """Grade completion i against examples[i]. cot="program" executes each completion in `sandbox` (a
    `reftune.grading.sandbox.ProgramSandbox` that the caller opens once and closes).

    An example's meta may say how to read and compare its answer (`data.answer_markers`, `data.answer_backend`,
    put there by `data.splits.load_splits`): "answer_markers" replaces the default markers, "answer_backend" =
    "math_verify" reads the marker's text span and compares it symbolically (numeric and text answers).
    """
    if cot == "program":
        if sandbox is None:
            raise ValueError("grade: cot='program' runs the completions, and needs a sandbox "
                             "(reftune.grading.sandbox.ProgramSandbox, opened once by the caller)")
        results = sandbox.run_many(texts)
        raw = [r.value if r.ok else None for r in results]
        errors = [None if r.ok else r.error for r in results]
    else:
        raw = [extract_answer(t, "text" if _symbolic(ex) else ex.answer_type, ex.meta.get("answer_markers"))
               for t, ex in zip(texts, examples)]
        errors = [None] * len(texts)
    grades = []
    for value, err, ex in zip(raw, errors, examples):
        pred = normalize_answer(value, ex.answer_type) if value is not None else None
        if _symbolic(ex):
            pred = pred if pred is not None else normalize_answer(value, "text")
            ok = value is not None and answers_match(value, ex.answer, "text", backend="math_verify")
        else:
            ok = value is not None and answers_match(value, ex.answer, ex.answer_type,
                                                     options=ex.meta.get("options"))
        grades.append(Grade(pred=pred, correct=ok, error=err))
    return grades


def _symbolic(ex: Example) -> bool:
    """Whether `ex` is compared by Math-Verify (data.answer_backend=math_verify; not for option letters)."""
    return ex.meta.get("answer_backend") == "math_verify" and ex.answer_type != "mcq"


def reft_reward(g: Grade, answer_type: str = "numeric", correct: float = 1.0, partial: float = 0.1) -> float:
    """1 for a correct answer, `partial` for an extracted wrong numeric answer, 0 otherwise."""
    if g.correct:
        return correct
    if g.pred is not None and answer_type == "numeric":
        return partial
    return 0.0
