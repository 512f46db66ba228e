"""Specification of the embedded synthetic task: deterministic, disjoint, and every demonstration is correct."""

from __future__ import annotations

import re

import pytest

from reftune.grading.answers import extract_answer
from reftune.data.synthetic import generate_splits

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



def test_excluded_questions_never_enter_a_split():
    base = generate_splits(7, {"train": 300}, 1, 2, max_value=20)["train"]
    excluded = {e.question for e in base}
    # the same seed would reproduce exactly these questions; exclusion must skip every one of them
    again = generate_splits(7, {"train": 300, "test": 50}, 1, 2, max_value=20, exclude=excluded)
    assert all(e.question not in excluded for split in again.values() for e in split)
    assert len(again["train"]) == 300


def test_exclude_questions_reads_a_folder_of_jsonl(tmp_path):
    from reftune.config import RunConfig, load_config
    from reftune.data.splits import load_splits, read_questions, save_splits
    from reftune.errors import UserError

    base = generate_splits(3, {"train": 40, "val": 10}, 2, 3)
    save_splits(base, tmp_path / "data")
    assert read_questions(tmp_path / "data") == {e.question for v in base.values() for e in v}
    cfg = load_config(RunConfig, None, ["data.seed=3", "data.n_train=40", "data.n_val=10", "data.n_test=5",
                                        "data.n_extra=0", "data.n_pretrain=0", "data.max_value=999",
                                        "data.min_steps=2", "data.max_steps=3",
                                        f"data.exclude_questions={tmp_path / 'data'}"])
    splits = load_splits(cfg.data)
    seen = read_questions(tmp_path / "data")
    assert not any(e.question in seen for v in splits.values() for e in v)
    (tmp_path / "bad.jsonl").write_text('{"q": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        read_questions(tmp_path / "bad.jsonl")


def test_pretrain_split_comes_last_and_leaves_other_splits_unchanged():
    without = generate_splits(11, {"train": 30, "val": 10, "test": 10, "pretrain": 0}, 2, 4)
    with_pre = generate_splits(11, {"train": 30, "val": 10, "test": 10, "pretrain": 50}, 2, 4)
    for split in ("train", "val", "test"):
        assert [e.question for e in without[split]] == [e.question for e in with_pre[split]]
    assert len(with_pre["pretrain"]) == 50 and all(e.cot for e in with_pre["pretrain"])


def test_pretrain_split_can_have_its_own_step_range():
    s = generate_splits(5, {"train": 40, "pretrain": 40}, 3, 5, steps={"pretrain": (1, 2)})
    assert all(3 <= e.meta["steps"] <= 5 for e in s["train"])
    assert all(1 <= e.meta["steps"] <= 2 for e in s["pretrain"])


def test_n_annotated_keeps_a_prefix_of_train_and_leaves_the_other_splits_unchanged():
    from reftune.config import RunConfig, load_config
    from reftune.data.splits import load_splits
    from reftune.errors import ConfigError

    common = ["data.seed=7", "data.n_train=30", "data.n_extra=5", "data.n_val=10", "data.n_test=10", "data.n_pretrain=0"]
    full = load_splits(load_config(RunConfig, None, common).data)
    cut = load_splits(load_config(RunConfig, None, [*common, "data.n_annotated=12"]).data)
    assert [e.question for e in cut["train"]] == [e.question for e in full["train"][:12]]
    for split in ("extra", "val", "test"):
        assert [e.question for e in cut[split]] == [e.question for e in full[split]]
    with pytest.raises(ConfigError, match="data.n_annotated"):
        load_config(RunConfig, None, [*common, "data.n_annotated=31"])
