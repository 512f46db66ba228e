"""Specification of the embedded synthetic task: deterministic, disjoint, and every demonstration is correct."""

from __future__ import annotations

import re

import pytest

from reftune.answers import extract_answer
from reftune.tasks.synthetic import generate_splits

SIZES = {"train": 120, "extra": 60, "val": 40, "test": 40}
LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def splits():
    return generate_splits(seed=11, sizes=SIZES, min_steps=2, max_steps=4)


def _questions(splits):
    return {name: [e.question for e in exs] for name, exs in splits.items()}


def test_same_seed_same_splits_different_seed_different(splits):
    again = generate_splits(seed=11, sizes=SIZES, min_steps=2, max_steps=4)
    assert _questions(again) == _questions(splits)
    assert [e.cot for e in again["train"]] == [e.cot for e in splits["train"]]
    other = generate_splits(seed=12, sizes=SIZES, min_steps=2, max_steps=4)
    assert _questions(other)["train"] != _questions(splits)["train"]


def test_split_sizes_ids_and_disjointness(splits):
    assert {k: len(v) for k, v in splits.items()} == SIZES
    all_questions = [e.question for exs in splits.values() for e in exs]
    assert len(set(all_questions)) == len(all_questions)  # disjoint across splits, no duplicates within
    ids = [e.id for exs in splits.values() for e in exs]
    assert len(set(ids)) == len(ids)
    assert splits["val"][3].id == "val-3"


def test_nl_cot_is_correct_arithmetic_ending_with_the_answer(splits):
    for ex in splits["train"] + splits["val"] + splits["test"]:
        *steps, last = ex.cot.split("\n")
        assert last == f"The answer is {ex.answer}"
        assert extract_answer(ex.cot) == ex.answer
        value = None
        for line in steps:
            m = LINE.fullmatch(line)
            assert m, f"{ex.id}: not 'a op b = c': {line!r}"
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            if value is not None:
                assert a == value, f"{ex.id}: step does not continue from the previous result"
            if op == "/":
                assert a % b == 0, f"{ex.id}: inexact division {line!r}"
            assert c == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op], f"{ex.id}: {line!r}"
            assert 0 <= c <= 999
            value = c
        assert str(value) == ex.answer
        # the question states the start value and every operand
        numbers = set(re.findall(r"\d+", ex.question))
        assert LINE.fullmatch(steps[0])[1] in numbers
        assert {LINE.fullmatch(s)[3] for s in steps} <= numbers


def test_program_cot_returns_the_answer(splits):
    """Our own generated programs, so exec in-process is fine here (model outputs go through the sandbox)."""
    for ex in splits["train"] + splits["extra"]:
        prog = ex.meta["program"]
        assert prog.startswith("def solution():") and prog.endswith("return result")
        scope: dict = {}
        exec(prog, scope)  # noqa: S102
        assert scope["solution"]() == int(ex.answer), ex.id


def test_steps_within_bounds():
    for lo, hi in [(1, 1), (2, 4), (5, 6)]:
        out = generate_splits(seed=3, sizes={"train": 80}, min_steps=lo, max_steps=hi)["train"]
        counts = [e.meta["steps"] for e in out]
        assert all(lo <= c <= hi for c in counts), (lo, hi, counts)
        assert all(len(e.cot.split("\n")) == c + 1 for e, c in zip(out, counts))
        if lo < hi:
            assert len(set(counts)) > 1  # the range is actually used


def test_extra_split_is_answer_only(splits):
    assert all(e.cot is None for e in splits["extra"])
    assert all(e.answer.isdigit() for e in splits["extra"])
    assert all(e.cot for e in splits["train"])


def test_program_cot_puts_the_program_in_cot():
    out = generate_splits(seed=11, sizes={"train": 20, "extra": 5}, cot="program")
    nl = generate_splits(seed=11, sizes={"train": 20, "extra": 5}, cot="nl")
    for p, n in zip(out["train"], nl["train"]):
        assert p.question == n.question           # same problems, only the demonstration differs
        assert p.cot == p.meta["program"] and p.cot.startswith("def solution():")
        assert p.meta["nl_cot"] == n.cot
    assert all(e.cot is None for e in out["extra"])
    with pytest.raises(ValueError, match="cot"):
        generate_splits(seed=1, sizes={"train": 1}, cot="python")

