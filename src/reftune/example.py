"""The one record every stage works on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AnswerType = Literal["numeric", "mcq", "text"]


@dataclass
class Example:
    """One question with its verifiable answer and, optionally, a chain-of-thought demonstration.

    id: stable identifier, unique within a dataset (used to keep splits disjoint and to name outputs).
    question: the problem text shown to the model (MCQ options included in it, as in ReFT's MathQA).
    answer: the gold final answer as a string ("42", "0.5", "c"); compared with `reftune.grading.answers`.
    cot: the demonstration: N-CoT text ending with an answer marker, or a P-CoT program
        (`def solution(): ... return result`); None for answer-only data (usable by RL, not by SFT).
    answer_type: "numeric" (partial reward 0.1 for a wrong number applies), "mcq" (a letter), "text".
    meta: anything else the source carried (equation, type, options, ...), kept for reports.
    """

    id: str
    question: str
    answer: str
    cot: str | None = None
    answer_type: AnswerType = "numeric"
    meta: dict[str, Any] = field(default_factory=dict)
