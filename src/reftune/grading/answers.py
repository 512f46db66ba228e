"""Final-answer extraction, normalisation and comparison: the one place every stage asks "is this right?".

Rewards, evaluation, majority voting and data loading all call these functions, so a fix here fixes them all.

Extraction is *anchored*: an answer is only read after a final-answer marker ("The answer is", "####",
"\\boxed{...}", ...), never guessed from the last number in the text. A completion without a marker has no
answer (None), which is what the RL reward needs to tell "no answer" from "wrong answer".

Assumptions and simplifications:
- Markers are matched case-insensitively ("so the answer is 5" counts) and tried in priority order; within
  one marker the LAST occurrence wins (a model may restate or correct itself). When that occurrence has
  nothing parsable after it, earlier occurrences and then lower-priority markers are tried.
- "<answer>" (the DeepSeek-R1 format's answer tag) comes first: an R1-style completion states its final
  answer there, and its think block may say "The answer is" about an intermediate result. Only the first
  non-empty line after the tag is read ("<answer>\n42\n</answer>" -> 42).
- After a plain marker only the rest of its line is read; a marker ending in "{...}" (like "\\boxed{...}")
  reads its brace-balanced argument instead.
- Percent: "12%" parses to 12.0, not 0.12, because GSM8K, SVAMP and MathQA state percentage answers in
  percent units (the ReFT SVAMP file has "<25%>" with answer_value 25.0).
- Number words ("five") and European decimal commas ("1,5") are not numbers here.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping, Sequence

from reftune.errors import UserError

DEFAULT_MARKERS: tuple[str, ...] = (
    "<answer>",
    "The answer is",
    "Therefore, the answer is:",
    "Therefore, the answer is",
    "####",
    "\\boxed{...}",
    # what instruct models write ("The final answer is 42", "Final answer: 42", "Answer: 42", "**Answer:** 42"),
    # after the markers above so a ReFT-style completion reads as before
    "The final answer is",
    "Final answer:",
    "Answer:",
)

_MINUS = str.maketrans({"−": "-", "–": "-"})

# A number-like token inside free text: optional sign and currency, then a LaTeX fraction, a (mixed)
# fraction, a plain number with optional thousands separators, or a bare decimal.
_TOKEN = re.compile(
    r"(?P<sign>[-+])?\s*(?:[$€£¥]\s*|\\\$\s*)?(?P<sign2>-)?"
    r"(?P<num>\\[dt]?frac\{[^{}]*\}\{[^{}]*\}"
    r"|(?:\d+\s+)?\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?"
    r"|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    r"|\.\d+)"
)
_PLAIN = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
_FRACTION = re.compile(r"([-+]?)(?:(\d+)\s+)?(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")
_LATEX_FRAC = re.compile(r"([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_LATEX_UNITS = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{[^{}]*\}|\^\{?\\circ\}?")
_LATEX_SPACING = re.compile(r"\\[,;:!]|\\left|\\right|\{(?=,\})|(?<=,)\}")
_MCQ = re.compile(r"[\s:*]*(?:(?:option|choice)\s+)?(\()?\s*([a-e])\s*(\))?(?![a-z0-9])", re.IGNORECASE)


def _unknown_type(answer_type: str) -> UserError:
    return UserError(f"unknown answer_type {answer_type!r}: expected 'numeric', 'mcq' or 'text'")


def _ends_of(text: str, marker: str) -> list[int]:
    """End offsets of every case-insensitive occurrence of `marker`, last first."""
    hay, needle = text.lower(), marker.lower()
    ends, at = [], hay.rfind(needle)
    while at >= 0:
        ends.append(at + len(needle))
        at = hay.rfind(needle, 0, at)
    return ends


def _brace_argument(text: str, open_at: int) -> str | None:
    """Content of the balanced {...} whose '{' is at `open_at`; None when the braces never close."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def _candidates(text: str, marker: str):
    """The text spans a marker points at, last occurrence first."""
    if marker.endswith("{...}"):
        for end in _ends_of(text, marker[:-4]):
            arg = _brace_argument(text, end - 1)
            if arg is not None:
                yield arg
    else:
        for end in _ends_of(text, marker):
            yield text[end:].lstrip().split("\n", 1)[0]


def _number_token(span: str) -> str | None:
    m = _TOKEN.search(span.translate(_MINUS))
    if m is None:
        return None
    sign = "-" if "-" in ((m.group("sign") or "") + (m.group("sign2") or "")) else ""
    return sign + m.group("num")


def _mcq_letter(span: str) -> str | None:
    m = _MCQ.match(span)
    if m is None:
        return None
    paren_open, letter, paren_close = m.groups()
    # "the answer is a number ..." uses the English article, not option (a).
    if letter == "a" and not (paren_open or paren_close) and re.match(r"\s+[a-z]", span[m.end() :], re.I):
        return None
    return letter.lower()


def _text_span(span: str) -> str | None:
    # markdown emphasis and a colon around the answer ("**Answer:** yes", "The answer is: **no**.")
    span = span.strip().lstrip(":*_ ").rstrip(".*_ ").strip()
    if len(span) >= 2 and span[0] == span[-1] == "$":
        span = span[1:-1].strip()
    return span or None


def extract_answer(text: str, answer_type: str = "numeric", markers: Sequence[str] | None = None) -> str | None:
    """The raw answer span after the final-answer marker, or None when there is no marker or nothing parsable.

    numeric: the first number-like token after the marker, sign kept, currency dropped:
        "The answer is $1,234.50." -> "1,234.50"; "#### -7" -> "-7"; "the answer is <203>." -> "203";
        "\\boxed{\\frac{1}{2}}" -> "\\frac{1}{2}". Feed it to `parse_number` / `normalize_answer`.
    mcq: an option letter a-e, lowercased: "(b)", "b )", "B." -> "b".
    text: the rest of the marker's line (or the boxed argument), stripped of a trailing period and $...$.
    markers: priority-ordered; a marker ending in "{...}" means a LaTeX command with a braced argument.
    """
    if not text:
        return None
    read = {"numeric": _number_token, "mcq": _mcq_letter, "text": _text_span}.get(answer_type)
    if read is None:
        raise _unknown_type(answer_type)
    for marker in DEFAULT_MARKERS if markers is None else markers:
        for span in _candidates(text, marker):
            answer = read(span)
            if answer is not None:
                return answer
    return None


def _strip_decorations(s: str) -> str:
    """Remove currency, percent, LaTeX spacing ("1\\,000", "1{,}000"), \\text{} units and math delimiters."""
    s = _LATEX_SPACING.sub("", _LATEX_UNITS.sub(" ", s.translate(_MINUS)))
    for junk in ("\\%", "%", "\\$", "$", "€", "£", "¥"):
        s = s.replace(junk, "")
    s = s.strip()
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[len("\\boxed{") : -1].strip()
    return s


def _plain_float(s: str) -> float | None:
    m = _PLAIN.fullmatch(s.strip())
    if m is None:
        return None
    value = float(m.group(0).replace(",", ""))
    return value if math.isfinite(value) else None


def parse_number(s: str) -> float | None:
    """The number a short answer string denotes, or None.

    Accepts signs, decimals (".5", "5."), thousands separators ("1,000"), currency ($ € £ ¥, "-$5"),
    percent ("12%" -> 12.0: percent units, see the module docstring), trailing units or words without
    digits ("5 apples", "3 km", "12.5cm"), simple and mixed fractions ("3/4", "-1 1/2"), LaTeX
    \\frac / \\dfrac / \\tfrac, \\text{...} units and \\boxed{...}. A second number ("2x+1", "5 and 6")
    makes it None: this parses an answer, it does not search text (that is `extract_answer`).
    """
    if not isinstance(s, str):
        return None
    s = _strip_decorations(s)
    if not s:
        return None
    # Sign written before a stripped currency sign leaves "- 5".
    s = re.sub(r"^([-+])\s+", r"\1", s)
    m = _LATEX_FRAC.match(s)
    if m:
        rest = s[m.end() :]
        num, den = _plain_float(m.group(2)), _plain_float(m.group(3))
        if num is None or den is None or den == 0 or not _is_unit_tail(rest):
            return None
        return (-1 if m.group(1) == "-" else 1) * num / den
    m = _FRACTION.match(s)
    if m and _is_unit_tail(s[m.end() :]):
        whole = float(m.group(2)) if m.group(2) else 0.0
        den = float(m.group(4))
        if den == 0:
            return None
        return (-1 if m.group(1) == "-" else 1) * (whole + float(m.group(3)) / den)
    m = _PLAIN.match(s)
    if m and _is_unit_tail(s[m.end() :]):
        return _plain_float(m.group(0))
    return None


def _is_unit_tail(rest: str) -> bool:
    """What may follow a number in an answer: nothing, or words/units that contain no digit."""
    if not rest or rest.isspace():
        return True
    return not re.search(r"\d", rest) and (rest[0].isspace() or rest[0].isalpha() or rest[0] in "°²³.")


def _canonical_number(value: float) -> str:
    # Six decimal places: "1/3" and a model's "0.333333" vote together; below 5e-7 everything is 0.
    r = round(value, 6)
    if r == int(r):
        return str(int(r))
    return f"{r:.6f}".rstrip("0")


def normalize_answer(s: str | None, answer_type: str = "numeric") -> str | None:
    """A canonical string, equal for answers that mean the same thing; the key majority voting counts.

    numeric: shortest exact form rounded to 6 decimals ("1,000", "1000.0" -> "1000"; "0.50" -> "0.5";
        "1/3" -> "0.333333"); None when `s` is not a number.
    mcq: the lowercase option letter ("(B)" -> "b"), None when there is none.
    text: stripped, lowercased, inner whitespace collapsed, trailing period dropped.
    """
    if s is None:
        return None
    if answer_type == "numeric":
        value = parse_number(s)
        return None if value is None else _canonical_number(value)
    if answer_type == "mcq":
        return _mcq_letter(s.strip())
    if answer_type == "text":
        return " ".join(s.split()).rstrip(".").lower() or None
    raise _unknown_type(answer_type)


def answers_match(
    pred: str | None,
    gold: str,
    answer_type: str = "numeric",
    rel_tol: float = 1e-4,
    abs_tol: float = 1e-6,
    *,
    options: Mapping[str, str] | None = None,
    backend: str | None = None,
) -> bool:
    """Whether a predicted answer span equals the gold answer.

    numeric: both parse (`parse_number`) and agree within math.isclose(rel_tol, abs_tol). The relative
        tolerance absorbs float noise in references (ReFT writes 0.41666666666666663 for 0.4166666666666667).
    mcq: same letter; or, given `options` (letter -> option text, see `mcq_options`), `pred` is the gold
        option's text (compared as numbers when both parse, else as normalised text).
    text: normalised equality; backend="math_verify" compares LaTeX/symbolic answers with Math-Verify.
    A None prediction never matches.
    """
    if pred is None:
        return False
    if backend not in (None, "math_verify"):
        raise UserError(f"unknown answer backend {backend!r}: expected None or 'math_verify'")
    if backend == "math_verify" and answer_type != "text":
        raise UserError("backend='math_verify' applies to answer_type='text' only")
    if answer_type == "numeric":
        p, g = parse_number(pred), parse_number(gold)
        return p is not None and g is not None and math.isclose(p, g, rel_tol=rel_tol, abs_tol=abs_tol)
    if answer_type == "mcq":
        gold_letter = normalize_answer(gold, "mcq")
        if gold_letter is not None and normalize_answer(pred, "mcq") == gold_letter:
            return True
        option = (options or {}).get(gold_letter or "")
        if option is None:
            return False
        p, g = parse_number(pred), parse_number(option)
        if p is not None and g is not None:
            return math.isclose(p, g, rel_tol=rel_tol, abs_tol=abs_tol)
        return normalize_answer(pred, "text") == normalize_answer(option, "text")
    if answer_type == "text":
        if backend == "math_verify":
            return _math_verify_match(pred, gold)
        return normalize_answer(pred, "text") == normalize_answer(gold, "text")
    raise _unknown_type(answer_type)


def _math_verify_match(pred: str, gold: str) -> bool:
    """Symbolic equality through Math-Verify (`pip install 'reftune[verify]'`).

    Math-Verify's own extraction needs LaTeX delimiters, so bare spans are wrapped in $...$. Its timeouts
    use signal.alarm, which raises outside the main thread; there we pass parsing_timeout=None and
    timeout_seconds=None (Math-Verify's documented way to turn them off), so a pathological expression can
    then hang that thread: callers running rewards in threads should bound them themselves.
    """
    try:
        from math_verify import parse, verify
    except ImportError as exc:
        raise UserError("backend='math_verify' needs the math-verify package: pip install 'reftune[verify]'") from exc
    in_main = threading.current_thread() is threading.main_thread()
    limit = 5 if in_main else None

    def wrap(s: str) -> str:
        return s if "$" in s or "\\boxed" in s else f"${s}$"

    gold_parsed = parse(wrap(gold), parsing_timeout=limit)
    pred_parsed = parse(wrap(pred), parsing_timeout=limit)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))


def mcq_options(question: str) -> dict[str, str]:
    """MathQA-style options "a ) 12 , b ) 15 , c ) ..." (also "(a) 12 (b) 15") -> {"a": "12", "b": "15", ...}.

    Letters must appear in order a, b, c, ...; the search starts on the last line that begins with option
    (a) when there is one (ReFT puts the options on the question's last line), else at the start. Fewer
    than two options found -> {}.
    """
    start = 0
    for line in re.finditer(r"^\s*\(?a\s*\)", question, re.I | re.M):
        start = line.start()
    found: list[tuple[str, int, int]] = []
    pos = start
    for letter in "abcde":
        m = re.compile(rf"(?<![a-z0-9])\(?{letter}\s*\)\s*", re.I).search(question, pos)
        if m is None:
            break
        found.append((letter, m.start(), m.end()))
        pos = m.end()
    if len(found) < 2:
        return {}
    options = {}
    for i, (letter, _, end) in enumerate(found):
        stop = found[i + 1][1] if i + 1 < len(found) else len(question)
        text = question[end:stop].split("\n", 1)[0] if i + 1 == len(found) else question[end:stop]
        options[letter] = text.strip().rstrip(",").strip()
    return options


__all__ = ["DEFAULT_MARKERS", "extract_answer", "parse_number", "normalize_answer", "answers_match", "mcq_options"]
