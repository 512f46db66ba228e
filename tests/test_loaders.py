"""Specification of the dataset loaders: the real benchmark files, then small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reftune.grading.answers import answers_match, extract_answer
from reftune.data.loaders import DATASETS, LoadResult, load_dataset
from reftune.errors import DataError, UserError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"reference data not found at {DATA}")
    return DATA


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# --- real data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, rel, count",
    [
        ("gsm8k", "gsm8k/train.jsonl", 7473),
        ("gsm8k", "gsm8k/test.jsonl", 1319),
        ("svamp", "svamp/SVAMP.json", 1000),
        ("reft", "mwp_reft/svamp_nl.json", 3076),
        ("reft", "mwp_reft/svamp_python_sdp.json", 3043),
        ("reft", "mwp_reft/gsm8k_test_set.json", 1319),
        ("reft", "mwp_reft/svamp_test_set.json", 1000),
        ("mathqa", "mwp_reft/mathqa_test_set.json", 1605),
        ("mathqa_numeric", "mwp_reft/mathqa-numeric_test_set.json", 1605),
    ],
)
def test_real_counts(data, name, rel, count):
    result = load_dataset(name, str(data / rel))
    assert isinstance(result, LoadResult)
    assert len(result.examples) == count and result.skipped == []
    assert len({e.id for e in result.examples}) == count


def test_gsm8k_folder_split_and_cot(data):
    result = load_dataset("gsm8k", str(data / "gsm8k"), split="test")
    assert len(result.examples) == 1319
    first = load_dataset("gsm8k", str(data / "gsm8k")).examples[0]  # default split: train
    assert first.id == "gsm8k-train-1" and first.question.startswith("Natalia sold clips")
    assert first.answer == "72" and first.answer_type == "numeric" and first.meta == {"split": "train"}
    assert first.cot == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is 72."
    )
    kept = load_dataset("gsm8k", str(data / "gsm8k"), calculator="keep").examples[0]
    assert "<<48/2=24>>" in kept.cot and kept.cot.endswith("The answer is 72.")


def test_every_gsm8k_cot_ends_with_an_extractable_answer(data):
    for split in ("train", "test"):
        for ex in load_dataset("gsm8k", str(data / "gsm8k"), split=split).examples:
            assert "####" not in ex.cot and "<<" not in ex.cot
            assert answers_match(extract_answer(ex.cot), ex.answer), ex.id


def test_svamp_fields(data):
    first = load_dataset("svamp", str(data / "svamp")).examples[0]
    assert first.id == "chal-1"
    assert first.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert first.answer == "51" and first.cot is None
    assert first.meta == {"equation": "( 76.0 - 25.0 )", "type": "Subtraction"}


def test_reft_ncot_pcot_and_test_sets(data):
    ncot = load_dataset("reft", str(data / "mwp_reft" / "svamp_nl.json")).examples
    assert ncot[0].id == "svamp_0" and ncot[0].answer == "203" and ncot[0].meta == {"cot_kind": "nl"}
    assert ncot[0].cot.endswith("Therefore, the answer is <203>.")
    pcot = load_dataset("reft", str(data / "mwp_reft" / "svamp_python_sdp.json")).examples
    assert all(e.meta["cot_kind"] == "program" and e.cot.startswith("def solution():") for e in pcot)
    test = load_dataset("reft", str(data / "mwp_reft" / "gsm8k_test_set.json")).examples
    assert test[0].cot is None and test[0].meta == {} and test[0].answer == "18"


def test_mathqa_mcq_and_numeric(data):
    mcq = load_dataset("mathqa", str(data / "mwp_reft" / "mathqa_test_set.json")).examples[0]
    assert mcq.answer_type == "mcq" and mcq.answer == "a"
    assert mcq.meta["options"] == {"a": "38", "b": "27.675", "c": "30", "d": "data inadequate", "e": "none of these"}
    numeric = load_dataset("mathqa_numeric", str(data / "mwp_reft" / "mathqa-numeric_test_set.json")).examples[0]
    assert numeric.answer_type == "numeric" and numeric.answer == "38"
    assert answers_match(numeric.answer, mcq.answer, "mcq", options=mcq.meta["options"])


# --- small files -------------------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_line_and_field(tmp_path):
    f = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"question": "q1", "answer": "so\n#### 3"},
            "{not json",
            {"question": "q3"},
            {"question": "q4", "answer": "#### many"},
            "",
            {"question": "q6", "answer": "no final line"},
            {"question": "q7", "answer": "x\n#### 1,600"},
        ],
    )
    with pytest.raises(DataError) as err:
        load_dataset("gsm8k", str(f))
    assert "mine.jsonl:2:" in str(err.value) and "malformed JSON" in str(err.value)
    assert err.value.line == 2

    result = load_dataset("gsm8k", str(f), skip_invalid=True)
    assert [e.answer for e in result.examples] == ["3", "1600"]
    assert [e.id for e in result.examples] == ["gsm8k-mine-1", "gsm8k-mine-7"]
    assert len(result.skipped) == 4
    missing, not_number, no_final = result.skipped[1:]
    assert "mine.jsonl:3:" in missing and "missing field" in missing and "(field 'answer')" in missing
    assert "mine.jsonl:4:" in not_number and "'many' is not a number" in not_number and "'answer'" in not_number
    assert "mine.jsonl:6:" in no_final and "####" in no_final


def test_json_array_errors_name_the_item(tmp_path):
    f = tmp_path / "arr.json"
    f.write_text(json.dumps([
        {"item_id": "a", "question": "q", "answer_value": "1.0"},
        {"item_id": "b", "question": "q", "answer_value": "one"},
        {"item_id": "c", "answer_value": "2"},
        ["not", "an", "object"],
    ]))
    with pytest.raises(DataError) as err:
        load_dataset("reft", str(f))
    message = str(err.value)
    assert "arr.json" in message and "item 2" in message and "(field 'answer_value')" in message
    result = load_dataset("reft", str(f), skip_invalid=True)
    assert [e.id for e in result.examples] == ["a"]
    assert len(result.skipped) == 3
    assert "item 2" in result.skipped[0]
    assert "item 3" in result.skipped[1] and "'question'" in result.skipped[1]
    assert "item 4" in result.skipped[2] and "JSON object" in result.skipped[2]


def test_broken_json_array_reports_the_line(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('[\n {"question": "q", "answer": "1"},\n {"question": \n]')
    with pytest.raises(DataError, match=r"broken.json:4: malformed JSON array"):
        load_dataset("json", str(f))


def test_mathqa_bad_letter_and_missing_options(tmp_path):
    f = tmp_path / "mq.json"
    f.write_text(json.dumps([
        {"item_id": "1", "question": "q ?\na ) 1 , b ) 2", "answer_value": "b"},
        {"item_id": "2", "question": "q ?\na ) 1 , b ) 2", "answer_value": "z"},
        {"item_id": "3", "question": "no options here", "answer_value": "a"},
        {"item_id": "4", "question": "q ?\na ) 1 , b ) 2", "answer_value": "e"},
    ]))
    result = load_dataset("mathqa", str(f), skip_invalid=True)
    assert [e.answer for e in result.examples] == ["b"]
    assert "letter" in result.skipped[0] and "'question'" in result.skipped[1] and "options" in result.skipped[2]


def test_generic_loader_with_field_mapping(tmp_path):
    f = _write_jsonl(
        tmp_path / "own.jsonl",
        [
            {"problem": "2+2?", "solution": "4", "steps": "2+2=4. The answer is 4.", "source": "me"},
            {"problem": "3+3?", "solution": 6.0},
        ],
    )
    fields = {"question": "problem", "answer": "solution", "cot": "steps"}
    examples = load_dataset("json", str(f), fields=fields).examples
    assert [(e.id, e.question, e.answer, e.cot) for e in examples] == [
        ("own-1", "2+2?", "4", "2+2=4. The answer is 4."),
        ("own-2", "3+3?", "6", None),
    ]
    assert examples[0].meta == {"source": "me"}

    text = _write_jsonl(tmp_path / "t.jsonl", [{"id": "x", "question": "capital of France?", "answer": "Paris"}])
    (ex,) = load_dataset("json", str(text), answer_type="text").examples
    assert (ex.id, ex.answer, ex.answer_type) == ("x", "Paris", "text")
    with pytest.raises(DataError, match="not a number"):
        load_dataset("json", str(text))
    with pytest.raises(UserError, match="unknown keys in fields"):
        load_dataset("json", str(f), fields={"prompt": "problem"})


def test_duplicate_ids_are_invalid(tmp_path):
    f = _write_jsonl(tmp_path / "d.jsonl", [{"id": "1", "question": "q", "answer": "1"}] * 2)
    with pytest.raises(DataError, match=r"d.jsonl:2: duplicate id"):
        load_dataset("json", str(f))


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'gsm9k'.*gsm8k, svamp, reft, mathqa, mathqa_numeric, json"):
        load_dataset("gsm9k", "x")
    with pytest.raises(UserError, match="no such data file"):
        load_dataset("reft", str(tmp_path / "missing.json"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="empty"):
        load_dataset("json", str(tmp_path / "empty.jsonl"))
    (tmp_path / "none.json").write_text("[]")
    with pytest.raises(UserError, match="no records"):
        load_dataset("reft", str(tmp_path / "none.json"))
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("svamp")
    with pytest.raises(UserError, match="calculator"):
        load_dataset("gsm8k", str(tmp_path), calculator="drop")
    with pytest.raises(UserError, match="'json' loader only"):
        load_dataset("reft", str(tmp_path / "none.json"), fields={"question": "q"})
    with pytest.raises(UserError, match="has none of"):
        load_dataset("gsm8k", str(tmp_path), split="dev")
    bad = _write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(UserError, match="no valid records"):
        load_dataset("json", str(bad), skip_invalid=True)
    assert DATASETS == ("gsm8k", "svamp", "reft", "mathqa", "mathqa_numeric", "json", "parquet", "hub")
