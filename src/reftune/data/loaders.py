"""Loaders that turn benchmark files (and a user's own JSON/JSONL) into `Example`s.

One entry point, `load_dataset(name, path, ...)`, for:
- "gsm8k": the authors' JSONL `{question, answer}` (a file, or a folder holding `{split}.jsonl`), or, with
  no path, the hub dataset `openai/gsm8k` through `datasets`. The rationale becomes the N-CoT with its
  final "#### n" line rewritten to "The answer is n." so every N-CoT ends with the marker
  `reftune.grading.answers` reads first; `calculator="strip"` removes the `<<48/2=24>>` annotations ("keep" keeps them).
- "svamp": the challenge set `SVAMP.json` `{ID, Body, Question, Equation, Answer, Type}`; question =
  Body + " " + Question; no CoT.
- "reft": the ReFT release's JSON arrays `{item_id, question, answer_cot?, answer_value}`, N-CoT or P-CoT;
  a cot containing `def solution` is a program (meta["cot_kind"] = "program", else "nl").
- "mathqa": ReFT's multiple-choice MathQA (options inside the question, a letter as answer): answer_type
  "mcq", meta["options"] from `answers.mcq_options`. "mathqa_numeric": the numeric-answer variant.
- "json": any JSON array or JSONL file, keys mapped by `fields` (our name -> the file's key, for
  "question", "answer", "cot", "id"); unmapped keys go to meta. So a user's data needs no code. The question
  may also be a format string over the record's keys ("Premise: {premise}\nHypothesis: {hypothesis}"), for
  tasks whose input spans several columns (NLI); those columns stay in meta.
- "parquet": a Parquet file, and "hub": a Hugging Face dataset id (or a local dataset folder) with `subset`
  and `split`, both read through `datasets` (`pip install 'reftune[hub]'`), then mapped as "json" is.

Numeric gold answers are validated and stored in a canonical exact form ("1,600" -> "1600", 203.0 ->
"203", 0.41666666666666663 kept as is). A bad record raises `DataError` naming the file, the place (the
1-based line of a JSONL file, "item N" (1-based) of a JSON array) and the field; with `skip_invalid=True`
it is skipped and its message kept in `LoadResult.skipped`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reftune.config.schema import DATASET_NAMES
from reftune.grading.answers import mcq_options, parse_number
from reftune.example import Example
from reftune.errors import DataError, UserError

DATASETS = tuple(n for n in DATASET_NAMES if n != "synthetic")
GENERIC = ("json", "parquet", "hub")  # the loaders that take a field mapping and an answer type


@dataclass
class LoadResult:
    """examples: the valid records, in file order. skipped: one message per record left out (skip_invalid)."""

    examples: list[Example]
    skipped: list[str] = field(default_factory=list)


class _Invalid(Exception):
    """A bad record; the caller adds the file and the place."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# --- reading files -------------------------------------------------------------------------------------


def _read_records(path: Path) -> tuple[str, list[tuple[int, Any]]]:
    """("line" or "item", [(1-based place, record dict or _Invalid)]). A JSON array or JSON Lines, by content."""
    if not path.is_file():
        raise UserError(f"{path}: no such data file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not text.strip():
        raise UserError(f"{path}: the data file is empty")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON array ({exc.msg})", path=str(path), line=exc.lineno) from exc
        return "item", [(i, _as_object(item)) for i, item in enumerate(items, 1)]
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((i, _as_object(json.loads(line))))
        except json.JSONDecodeError as exc:
            records.append((i, _Invalid(f"malformed JSON line ({exc.msg})")))
    return "line", records


def _as_object(value: Any) -> Any:
    return value if isinstance(value, dict) else _Invalid(f"expected a JSON object, got {type(value).__name__}")


def _convert_all(
    path: str, unit: str, records: list[tuple[int, Any]], convert: Callable[[dict, int], Example], skip_invalid: bool
) -> LoadResult:
    result, seen = LoadResult(examples=[]), set()
    if not records:
        raise UserError(f"{path}: the data file has no records")
    for place, record in records:
        try:
            if isinstance(record, _Invalid):
                raise record
            example = convert(record, place)
            if example.id in seen:
                raise _Invalid(f"duplicate id {example.id!r}", "id")
            seen.add(example.id)
            result.examples.append(example)
        except _Invalid as bad:
            error = DataError(
                str(bad) if unit == "line" else f"{unit} {place}: {bad}",
                path=path,
                line=place if unit == "line" else None,
                field=bad.field,
            )
            if not skip_invalid:
                raise error from None
            result.skipped.append(str(error))
    if not result.examples:
        raise UserError(f"{path}: no valid records ({len(result.skipped)} skipped; first: {result.skipped[0]})")
    return result


# --- fields --------------------------------------------------------------------------------------------


def _text(record: Mapping, key: str, required: bool = True, numbers: bool = True) -> str | None:
    """The field as stripped text; numbers: a JSON number is accepted too (an answer or a rationale may be
    one, a question may not)."""
    value = record.get(key)
    if value is None:
        if required:
            raise _Invalid("missing field", key)
        return None
    if not numbers and not isinstance(value, str):
        raise _Invalid(f"expected a string, got {type(value).__name__}", key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Invalid(f"expected a string or a number, got {type(value).__name__}", key)
    text = value.strip() if isinstance(value, str) else str(value)
    if required and not text:
        raise _Invalid("empty field", key)
    return text or None


def _numeric_answer(record: Mapping, key: str) -> str:
    raw = _text(record, key)
    value = parse_number(raw)
    if value is None:
        raise _Invalid(f"answer {raw!r} is not a number", key)
    return str(int(value)) if value.is_integer() else repr(value)


def _mcq_answer(record: Mapping, key: str, question: str, question_key: str) -> tuple[str, dict[str, str]]:
    letter = _text(record, key).lower().strip("() .")
    if not re.fullmatch(r"[a-e]", letter):
        raise _Invalid(f"expected an option letter a-e, got {record[key]!r}", key)
    options = mcq_options(question)
    if len(options) < 2:
        raise _Invalid("no options 'a ) ... , b ) ...' found in the question", question_key)
    if letter not in options:
        raise _Invalid(f"answer {letter!r} is not one of the options {sorted(options)}", key)
    return letter, options


# --- the datasets --------------------------------------------------------------------------------------

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"\n?####\s*(?P<value>[^\n]*?)\s*$")


def _gsm8k_converter(split: str, calculator: str) -> Callable[[dict, int], Example]:
    def convert(record: dict, place: int) -> Example:
        question, solution = _text(record, "question", numbers=False), _text(record, "answer")
        final = _FINAL.search(solution)
        if final is None:
            raise _Invalid("no final '#### <answer>' line", "answer")
        answer = _numeric_answer({"answer": final["value"]}, "answer")
        rationale = solution[: final.start()].rstrip()
        if calculator == "strip":
            rationale = _CALCULATOR.sub("", rationale)
        cot = f"{rationale}\nThe answer is {final['value']}.".lstrip()
        return Example(f"gsm8k-{split}-{place}", question, answer, cot, "numeric", {"split": split})

    return convert


def _svamp(record: dict, place: int) -> Example:
    question = f"{_text(record, 'Body', numbers=False)} {_text(record, 'Question', numbers=False)}"
    meta = {"equation": record.get("Equation"), "type": record.get("Type")}
    return Example(_text(record, "ID"), question, _numeric_answer(record, "Answer"), None, "numeric", meta)


def _reft(record: dict, place: int) -> Example:
    question, cot = _text(record, "question", numbers=False), _text(record, "answer_cot", required=False)
    meta = {} if cot is None else {"cot_kind": "program" if "def solution" in cot else "nl"}
    return Example(_text(record, "item_id"), question, _numeric_answer(record, "answer_value"), cot, "numeric", meta)


def _mathqa(record: dict, place: int) -> Example:
    question, cot = _text(record, "question", numbers=False), _text(record, "answer_cot", required=False)
    letter, options = _mcq_answer(record, "answer_value", question, "question")
    return Example(_text(record, "item_id"), question, letter, cot, "mcq", {"options": options})


def _question(record: Mapping, spec: str) -> str:
    """The question: the record's key `spec`, or `spec` as a format string over the record's keys."""
    if "{" not in spec:
        return _text(record, spec, numbers=False)
    try:
        text = spec.replace("\\n", "\n").format(**record).strip()  # "\\n" typed in a shell: a newline
    except KeyError as e:
        raise _Invalid(f"no key {e} for the question format {spec!r}", "question") from None
    except (IndexError, ValueError) as e:
        raise _Invalid(f"bad question format {spec!r} ({e})", "question") from None
    if not text:
        raise _Invalid("empty question", "question")
    return text


def _generic_converter(fields: Mapping[str, str], answer_type: str, stem: str) -> Callable[[dict, int], Example]:
    unknown = set(fields) - {"question", "answer", "cot", "id"}
    if unknown:
        raise UserError(f"unknown keys in fields: {sorted(unknown)}; expected question, answer, cot, id")
    if answer_type not in ("numeric", "mcq", "text"):
        raise UserError(f"unknown answer_type {answer_type!r}: expected 'numeric', 'mcq' or 'text'")
    keys = {name: fields.get(name) or name for name in ("question", "answer", "cot", "id")}
    consumed = {keys["answer"], keys["cot"], keys["id"]}  # a question format's keys stay in meta (reward columns)
    if "{" not in keys["question"]:
        consumed.add(keys["question"])

    def convert(record: dict, place: int) -> Example:
        question = _question(record, keys["question"])
        meta = {k: v for k, v in record.items() if k not in consumed}
        if answer_type == "numeric":
            answer = _numeric_answer(record, keys["answer"])
        elif answer_type == "mcq":
            answer, meta["options"] = _mcq_answer(record, keys["answer"], question, keys["question"])
        else:
            answer = _text(record, keys["answer"])
        example_id = _text(record, keys["id"], required=False) or f"{stem}-{place}"
        return Example(example_id, question, answer, _text(record, keys["cot"], required=False), answer_type, meta)

    return convert


def _resolve(path: str, candidates: list[str]) -> Path:
    """A file path as given; a folder is searched for the first of `candidates`."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in candidates:
            if (p / name).is_file():
                return p / name
        raise UserError(f"{p}: folder has none of {candidates}")
    return p


def _import_datasets(what: str):
    try:
        import datasets
    except ImportError as exc:
        raise UserError(f"{what} needs `datasets` (pip install 'reftune[hub]')") from exc
    return datasets


def _rows(rows) -> list[tuple[int, Any]]:
    """A `datasets.Dataset`'s rows as records numbered from 1."""
    return [(i, dict(row)) for i, row in enumerate(rows, 1)]


def _gsm8k_hub_records(split: str) -> list[tuple[int, Any]]:
    """Rows of `openai/gsm8k` (config "main"), numbered from 1 like lines."""
    return _hub_records("openai/gsm8k", "main", split)


def _hub_records(path: str, subset: str | None, split: str) -> list[tuple[int, Any]]:
    """Rows of a hub dataset (or a local dataset folder / data file that `datasets` reads) at `split`."""
    datasets = _import_datasets(f"loading {path}")
    try:
        rows = datasets.load_dataset(path, subset, split=split)
    except Exception as exc:  # offline, unknown split, hub errors: all fixed by the user the same way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"could not load {path} split {split!r} ({first}); offline? pass a local path") from exc
    return _rows(rows)


def _parquet_records(file: Path) -> list[tuple[int, Any]]:
    if not file.is_file():
        raise UserError(f"{file}: no such data file")
    datasets = _import_datasets(f"reading {file}")
    try:
        rows = datasets.load_dataset("parquet", data_files=str(file), split="train")
    except Exception as exc:  # a corrupt or non-Parquet file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{file}: not a readable Parquet file ({first})") from exc
    return _rows(rows)


def load_dataset(
    name: str,
    path: str | None = None,
    *,
    split: str | None = None,
    fields: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    calculator: str = "strip",
    answer_type: str = "numeric",
    subset: str | None = None,
) -> LoadResult:
    """Load dataset `name` (one of DATASETS) from `path`; see the module docstring for each format.

    split: for a folder path, the file `{split}.jsonl`/`{split}.json` is read (GSM8K default "train");
        for GSM8K without a path and for "hub", the dataset's split (default "train"); subset: "hub" only.
    fields, answer_type: the "json", "parquet" and "hub" loaders only.
    calculator: GSM8K's `<<a*b=c>>` annotations, "strip" or "keep".
    Raises UserError for an unknown name, a missing or empty file; DataError for a bad record unless
    skip_invalid.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if calculator not in ("strip", "keep"):
        raise UserError(f"calculator must be 'strip' or 'keep', not {calculator!r}")
    if name not in GENERIC and (fields is not None or answer_type != "numeric"):
        raise UserError(f"fields and answer_type apply to the 'json' loader only (and 'parquet', 'hub'), "
                        f"not {name!r}")
    if path is None and name != "gsm8k":
        raise UserError(f"dataset {name!r} needs a path to its file")
    by_split = [f"{split}.jsonl", f"{split}.json"] if split else []

    if name == "gsm8k":
        split_name = split or "train"
        if path is None:
            source, unit, records = "openai/gsm8k", "line", _gsm8k_hub_records(split_name)
        else:
            file = _resolve(path, [f"{split_name}.jsonl"])
            split_name = split or file.stem
            source, (unit, records) = str(file), _read_records(file)
        return _convert_all(source, unit, records, _gsm8k_converter(split_name, calculator), skip_invalid)

    if name == "hub":
        convert = _generic_converter(fields or {}, answer_type, Path(path).name)
        return _convert_all(path, "row", _hub_records(path, subset, split or "train"), convert, skip_invalid)
    file = _resolve(path, ["SVAMP.json"] if name == "svamp" else by_split)
    if name in GENERIC:
        convert = _generic_converter(fields or {}, answer_type, file.stem)
        if name == "parquet":
            return _convert_all(str(file), "row", _parquet_records(file), convert, skip_invalid)
    else:
        convert = {"svamp": _svamp, "reft": _reft, "mathqa": _mathqa, "mathqa_numeric": _reft}[name]
    unit, records = _read_records(file)
    return _convert_all(str(file), unit, records, convert, skip_invalid)


__all__ = ["DATASETS", "GENERIC", "LoadResult", "load_dataset"]
