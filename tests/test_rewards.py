"""Specification of grading and the ReFT reward: 1 correct, 0.1 a wrong but extracted number, 0 otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reftune.example import Example
from reftune.grading.grade import Grade, grade, reft_reward

NUM = Example(id="n", question="Ava has 12 apples and buys 5 more. How many?", answer="17")
MCQ = Example(id="m", question="Pick: a ) 38 , b ) 27 , c ) 12", answer="a", answer_type="mcq")


def reward_of(text: str, ex: Example, **kw) -> float:
    (g,) = grade([text], [ex])
    return reft_reward(g, ex.answer_type, **kw)


@pytest.mark.parametrize("text, expected", [
    ("12 + 5 = 17\nThe answer is 17", 1.0),
    ("The answer is 17.0", 1.0),                      # same number, other spelling
    ("12 + 5 = 18\nThe answer is 18", 0.1),           # wrong number: partial reward
    ("12 + 5 = 17", 0.0),                             # no answer marker: nothing extracted
    ("The answer is seventeen", 0.0),                 # marker but no number
    ("", 0.0),
])
def test_numeric_rewards(text, expected):
    assert reward_of(text, NUM) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is (A)", 1.0),
    ("The answer is b", 0.0),      # a wrong letter gets no partial reward (that is only for numbers)
    ("no idea", 0.0),
])
def test_mcq_rewards(text, expected):
    assert reward_of(text, MCQ) == expected


def test_reward_values_are_configurable():
    assert reward_of("The answer is 17", NUM, correct=2.0, partial=0.5) == 2.0
    assert reward_of("The answer is 16", NUM, correct=2.0, partial=0.5) == 0.5
    assert reward_of("The answer is 16", NUM, partial=0.0) == 0.0


def test_reft_reward_on_grades():
    assert reft_reward(Grade(pred="17", correct=True)) == 1.0
    assert reft_reward(Grade(pred="16", correct=False)) == 0.1
    assert reft_reward(Grade(pred=None, correct=False)) == 0.0
    assert reft_reward(Grade(pred="b", correct=False), "mcq") == 0.0
    assert reft_reward(Grade(pred="x", correct=False), "text") == 0.0


def test_grade_reports_the_normalised_prediction_per_example():
    grades = grade(["The answer is 1,000.", "The answer is 17", "nothing"],
                   [Example("a", "q", "1000"), NUM, NUM])
    assert [(g.pred, g.correct, g.error) for g in grades] == [("1000", True, None), ("17", True, None),
                                                             (None, False, None)]


@dataclass
class _Result:
    ok: bool
    value: str | None = None  # the sandbox renders return values as text
    error: str | None = None


class _FakeSandbox:
    """Stands in for `reftune.grading.sandbox.ProgramSandbox`: returns canned results, records what it ran."""

    def __init__(self, results):
        self.results, self.ran = results, []

    def run_many(self, programs):
        self.ran += programs
        return self.results[:len(programs)]


def test_program_completions_are_graded_by_their_return_value():
    box = _FakeSandbox([_Result(True, "17"), _Result(True, "16.0"), _Result(False, error="ZeroDivisionError")])
    texts = ["def solution():\n    return 17", "def solution():\n    return 16.0", "def solution():\n    1/0"]
    grades = grade(texts, [NUM] * 3, cot="program", sandbox=box)
    assert box.ran == texts
    assert [(g.pred, g.correct) for g in grades] == [("17", True), ("16", False), (None, False)]
    assert grades[2].error == "ZeroDivisionError"
    assert [reft_reward(g) for g in grades] == [1.0, 0.1, 0.0]
