"""Specification of answer extraction, normalisation and matching: hand cases, then the real data."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from reftune.grading.answers import (
    DEFAULT_MARKERS,
    answers_match,
    extract_answer,
    mcq_options,
    normalize_answer,
    parse_number,
)
from reftune.errors import UserError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is $1,234.50.", "1,234.50"),
        ("#### -7", "-7"),
        ("Therefore, the answer is <203>.", "203"),  # ReFT SVAMP N-CoT format
        ("Therefore, the answer is: 42", "42"),
        ("so the answer is 5 apples.", "5"),  # case-insensitive marker, units dropped
        ("The answer is -$5.", "-5"),
        ("The answer is −3", "-3"),  # unicode minus
        ("The answer is 3/4 of a cup", "3/4"),
        ("The answer is 1 1/2 cups", "1 1/2"),
        ("The answer is 12%.", "12"),
        ("The answer is .5", ".5"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("We get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("We get \\boxed{1,000}", "1,000"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ],
)
def test_extract_numeric(text, expected):
    assert extract_answer(text) == expected


def test_no_marker_or_nothing_parsable_is_none():
    assert extract_answer("She sold 72 clips in total.") is None
    assert extract_answer("") is None
    assert extract_answer("The answer is unknown.") is None
    assert extract_answer("The answer is\n\nunknown") is None  # only the marker's line is read
    assert extract_answer("\\boxed{12") is None  # braces never close


def test_last_occurrence_wins_and_falls_back_to_earlier_ones():
    assert extract_answer("The answer is 5. Wait, recheck: the answer is 6.") == "6"
    assert extract_answer("The answer is 5. I hope the answer is correct.") == "5"
    assert extract_answer("\\boxed{1} then \\boxed{2}") == "2"


def test_marker_priority_and_custom_markers():
    # "The answer is" outranks "####" wherever each occurs.
    assert extract_answer("The answer is 3.\n#### 4") == "3"
    assert extract_answer("Answer: 9", markers=["Answer:"]) == "9"
    assert extract_answer("The answer is 9", markers=["Answer:"]) is None
    assert extract_answer("\\fbox{7}", markers=["\\fbox{...}"]) == "7"
    assert extract_answer("The answer is 9", markers=[]) is None
    assert DEFAULT_MARKERS[:2] == ("<answer>", "The answer is") and "\\boxed{...}" in DEFAULT_MARKERS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is (b)", "b"),
        ("The answer is b )", "b"),
        ("The answer is B.", "b"),
        ("Therefore, the answer is: E", "e"),
        ("The answer is option c", "c"),
        ("The answer is a ) 38", "a"),
        ("The answer is A because 38 > 30", "a"),
        ("\\boxed{D}", "d"),
        ("The answer is a number near 40", None),  # the article, not option (a)
        ("The answer is 38", None),
        ("The answer is f", None),
    ],
)
def test_extract_mcq(text, expected):
    assert extract_answer(text, "mcq") == expected


def test_extract_text():
    assert extract_answer("The answer is $x^2 + 1$.", "text") == "x^2 + 1"
    assert extract_answer("so \\boxed{\\sqrt{2}}", "text") == "\\sqrt{2}"
    with pytest.raises(UserError, match="answer_type"):
        extract_answer("The answer is 1", "int")


@pytest.mark.parametrize(
    "s, value",
    [
        ("42", 42.0),
        ("1,000", 1000.0),
        ("1,234,567.5", 1234567.5),
        ("$1,234.50", 1234.5),
        ("€3", 3.0),
        ("£ 2.5", 2.5),
        ("12%", 12.0),  # percent units, not 0.12
        ("-7", -7.0),
        ("+7", 7.0),
        ("-$5", -5.0),
        ("$-5", -5.0),
        ("−3", -3.0),
        ("0.50", 0.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("-1 1/2", -1.5),
        ("5 apples", 5.0),
        ("3 km", 3.0),
        ("12.5cm", 12.5),
        ("\\frac{1}{2}", 0.5),
        ("\\dfrac{3}{4}", 0.75),
        ("-\\frac{1}{4}", -0.25),
        ("\\boxed{\\frac{1}{2}}", 0.5),
        ("5\\text{ cm}", 5.0),
        ("1\\,000", 1000.0),
        ("1{,}000", 1000.0),
        ("$\\frac{3}{4}$", 0.75),
        ("1e3", 1000.0),
    ],
)
def test_parse_number(s, value):
    assert parse_number(s) == pytest.approx(value)


@pytest.mark.parametrize("s", ["", "abc", "2x+1", "5 and 6", "1/0", "1,00", "1.2.3", "(5)", "nan", "inf"])
def test_parse_number_rejects(s):
    assert parse_number(s) is None


def test_normalize_numeric():
    assert normalize_answer("1,000") == normalize_answer("1000.0") == normalize_answer("$1000") == "1000"
    assert normalize_answer("0.50") == "0.5"
    assert normalize_answer("-0.0") == "0"
    assert normalize_answer("1/3") == normalize_answer("0.333333") == "0.333333"
    assert normalize_answer("2/3") == "0.666667"
    assert normalize_answer("\\frac{1}{2}") == "0.5"
    assert normalize_answer("18.0000001") == "18"
    assert normalize_answer("twelve") is None
    assert normalize_answer(None) is None


def test_normalize_mcq_and_text():
    assert normalize_answer("(B)", "mcq") == "b"
    assert normalize_answer("c )", "mcq") == "c"
    assert normalize_answer("38", "mcq") is None
    assert normalize_answer("  New   York. ", "text") == "new york"


def test_answers_match_numeric():
    assert answers_match("1,000", "1000.0")
    assert answers_match("0.41666666666666663", "0.4166666666666667")
    assert answers_match("3/4", "0.75")
    assert answers_match("12%", "12")
    assert not answers_match("3.22", "3.2222222222")  # 7e-4 relative: outside the default 1e-4
    assert answers_match("3.22", "3.2222222222", rel_tol=1e-2)
    assert not answers_match("41", "42")
    assert not answers_match(None, "42")
    assert not answers_match("forty-two", "42")


def test_answers_match_mcq_letters_and_option_text():
    options = {"a": "38", "b": "27.675", "c": "30", "d": "data inadequate", "e": "none of these"}
    assert answers_match("a", "a", "mcq")
    assert answers_match("(A)", "a", "mcq")
    assert not answers_match("b", "a", "mcq")
    assert not answers_match("38", "a", "mcq")  # option text needs the options
    assert answers_match("38", "a", "mcq", options=options)
    assert answers_match("38.0", "a", "mcq", options=options)
    assert answers_match("Data inadequate.", "d", "mcq", options=options)
    assert not answers_match("30", "a", "mcq", options=options)
    assert not answers_match("b", "a", "mcq", options=options)


def test_answers_match_text_and_backend_errors():
    assert answers_match("New York", "new york.", "text")
    assert not answers_match("\\frac{1}{2}", "0.5", "text")  # plain text comparison is literal
    with pytest.raises(UserError, match="backend"):
        answers_match("1", "1", "text", backend="sympy")
    with pytest.raises(UserError, match="text"):
        answers_match("1", "1", "numeric", backend="math_verify")


def test_math_verify_backend_in_main_and_worker_threads():
    pytest.importorskip("math_verify")
    assert answers_match("\\frac{1}{2}", "0.5", "text", backend="math_verify")
    assert answers_match("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", "text", backend="math_verify")
    assert not answers_match("\\frac{1}{3}", "0.5", "text", backend="math_verify")
    # signal-based timeouts raise outside the main thread; the backend must turn them off there.
    result: list[bool] = []
    worker = threading.Thread(
        target=lambda: result.append(answers_match("2/4", "\\frac{1}{2}", "text", backend="math_verify"))
    )
    worker.start()
    worker.join(timeout=60)
    assert result == [True]


def test_math_verify_missing_is_a_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name.startswith("math_verify"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    with pytest.raises(UserError, match="pip install"):
        answers_match("1", "1", "text", backend="math_verify")


def test_mcq_options():
    q = "what is 2 + 2 ?\na ) 38 , b ) 27.675 , c ) rs . 1,200 , d ) data inadequate , e ) none of these"
    assert mcq_options(q) == {"a": "38", "b": "27.675", "c": "rs . 1,200", "d": "data inadequate", "e": "none of these"}
    assert mcq_options("pick one: (a) 12 (b) 15 (c) 18") == {"a": "12", "b": "15", "c": "18"}
    assert mcq_options("a shopkeeper sold an article") == {}


# --- real data ---------------------------------------------------------------------------------------


def _need_data():
    if not DATA.is_dir():
        pytest.skip(f"reference data not found at {DATA}")


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_reference_extracts_via_hashes(split):
    _need_data()
    lines = (DATA / "gsm8k" / f"{split}.jsonl").read_text().splitlines()
    failures = []
    for line in lines:
        answer = json.loads(line)["answer"]
        gold = answer.rsplit("####", 1)[1].strip()
        pred = extract_answer(answer)
        if not answers_match(pred, gold) or normalize_answer(pred) != normalize_answer(gold):
            failures.append((gold, pred))
    assert not failures, failures[:10]
    assert len(lines) == {"train": 7473, "test": 1319}[split]


def test_reft_svamp_ncot_extracts_to_answer_value():
    _need_data()
    records = json.loads((DATA / "mwp_reft" / "svamp_nl.json").read_text())
    failures = [
        (r["item_id"], extract_answer(r["answer_cot"]), r["answer_value"])
        for r in records
        if not answers_match(extract_answer(r["answer_cot"]), r["answer_value"])
    ]
    rate = 1 - len(failures) / len(records)
    print(f"SVAMP N-CoT extraction: {rate:.4%} of {len(records)}; failures: {failures}")
    assert rate >= 0.99


def test_reft_mathqa_questions_all_have_five_options():
    _need_data()
    records = json.loads((DATA / "mwp_reft" / "mathqa_test_set.json").read_text())
    assert all(len(mcq_options(r["question"])) == 5 for r in records)
    assert mcq_options(records[0]["question"])["a"] == "38"


def test_r1_answer_tag_outranks_the_think_block():
    r1 = "\nFirst 3 + 2 = 5. The answer is 5\n</think>\n<answer>\n7\n</answer>"
    assert extract_answer(r1) == "7"
    # an empty answer tag falls back to the lower-priority markers
    assert extract_answer("The answer is 5\n</think>\n<answer>\n</answer>") == "5"
    assert extract_answer("<answer> (c) </answer>", "mcq") == "c"
