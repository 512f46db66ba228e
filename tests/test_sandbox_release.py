"""The sandbox agrees with plain exec() on every P-CoT program of the ReFT release's SVAMP training file (3,043
programs, ../shared/data; skipped where that folder is absent): same rendered value, or both fail."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from reftune.grading.sandbox import ProgramSandbox, _render

RELEASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mwp_reft" / "svamp_python_sdp.json"


def _exec(program: str) -> str | None:
    """The rendered value of solution() when the program is exec'd in this process; None if it raises."""
    try:
        namespace: dict = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(program, "<program>", "exec"), namespace)
            return _render(namespace["solution"]())
    except Exception:
        return None


@pytest.mark.skipif(not RELEASE.exists(), reason="the ReFT release data is not in ../shared/data")
def test_sandbox_agrees_with_exec_on_the_svamp_release_programs():
    programs = [row["answer_cot"] for row in json.loads(RELEASE.read_text()) if row.get("answer_cot")]
    assert len(programs) == 3043
    with ProgramSandbox(timeout_s=5.0) as sb:
        results = sb.run_many(programs)
    expected = [_exec(p) for p in programs]
    disagreements = [(i, r.value if r.ok else r.error, e) for i, (r, e) in enumerate(zip(results, expected))
                     if (r.value if r.ok else None) != e]
    assert disagreements == []
