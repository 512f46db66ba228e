"""The sandbox that runs P-CoT programs: correct values for normal programs, and containment of hostile ones
(tests/hostile_programs.py): each one ends within the timeout, leaves the test process (the "trainer") and
its files alone, leaks no secret, and the pool still answers correctly afterwards."""

from __future__ import annotations

import glob
import os
import runpy
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from reftune.grading.sandbox import ProgramResult, ProgramSandbox, execute_program

TIMEOUT = 1.0
MARGIN = 3.0  # seconds on top of the timeout, for a loaded 2-core machine
NORMAL = "def solution():\n    a = 40\n    b = 2\n    return a + b"
SYMPY_NORMAL = "from sympy import symbols, solve, Integer\ndef solution():\n    x = symbols('x')\n" \
               "    return solve(2 * x - Integer(84), x)[0]"
SECRET_VAR = "REFTUNE_CANARY_SECRET"
TRAINER_SCHEDULING = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0))
HOSTILE = runpy.run_path(str(Path(__file__).with_name("hostile_programs.py")))["HOSTILE"]


@pytest.fixture(scope="module")
def sandbox():
    with ProgramSandbox(workers=2, timeout_s=TIMEOUT) as sb:
        yield sb


# ------------------------------------------------------------------------------------------ normal programs

@pytest.mark.parametrize("program, value", [
    (NORMAL, "42"),
    ("def solution():\n    return 7 / 2", "3.5"),
    ("def solution():\n    return 0.1 + 0.2", "0.30000000000000004"),
    ("def solution():\n    return 10 // 3", "3"),
    ("def solution():\n    return True", "True"),
    ("def solution():\n    return 'c'", "c"),
    ("import math\ndef solution():\n    return math.sqrt(16)", "4.0"),
    ("import math\ndef solution():\n    return math.floor(math.pi * 100)", "314"),
    ("from fractions import Fraction\ndef solution():\n    return Fraction(1, 3) + Fraction(1, 6)", "0.5"),
    ("from decimal import Decimal\ndef solution():\n    return Decimal('2.50') * 2", "5.0"),
    (SYMPY_NORMAL, "42"),
    ("from sympy import Rational\ndef solution():\n    return Rational(1, 4) * 2", "0.5"),
    ("import sympy\ndef solution():\n    return sympy.sqrt(2)", "1.4142135623730951"),
    ("from sympy import symbols, Eq, solve\ndef solution():\n    x, y = symbols('x y')\n"
     "    s = solve([Eq(x + y, 10), Eq(x - y, 2)], [x, y])\n    return s[x]", "6"),
    ("import sympy\ndef solution():\n    return sympy.Symbol('x') + 1", "x + 1"),
    ("import numpy as np\ndef solution():\n    return np.int64(6) * 7", "42"),
    ("def solution():\n    return [1, 2]", "[1, 2]"),
    ("result = 5 * 3", "15"),
    ("answer = 2.5", "2.5"),
])
def test_normal_programs_return_their_value(sandbox, program, value):
    res = sandbox.run(program)
    assert res.ok and res.error is None, res
    assert res.value == value


def test_svamp_style_program_with_docstring_and_print(sandbox):
    program = ('def solution():\n    """Iesha has 344 books. 136 are about school. How many about sports?"""\n'
               '    total = 344\n    school = 136\n    print("thinking")\n'
               '    result = total - school\n    return result')
    res = sandbox.run(program)
    assert (res.ok, res.value, res.stdout) == (True, "208", "thinking\n")
    assert 0 < res.seconds < TIMEOUT


@pytest.mark.parametrize("program, error", [
    ("def solution():\n    return 1 / 0", "exception: ZeroDivisionError: division by zero"),
    ("x = 1", "no solution()"),
    ("def solution(:\n    return 1", "exception: SyntaxError"),
    ("def solution():\n    while True:\n        pass", "timeout"),
    ("def solution():\n    return len(bytearray(10**11))", "memory"),
    ("def solution():\n    print('x' * 10**6)", "output too large"),
    ("import os\ndef solution():\n    os._exit(0)", "exited with code 0 before returning"),
    ("import faulthandler\ndef solution():\n    faulthandler._sigsegv()", "crashed: SIGSEGV"),
    ("import os\ndef solution():\n    os.system('true')", "exception: PermissionError: sandbox: os.system is blocked"),
])
def test_failures_say_why(sandbox, program, error):
    res = sandbox.run(program)
    assert not res.ok and res.value is None
    assert res.error.startswith(error), res


def test_stdout_is_capped(sandbox):
    res = sandbox.run("def solution():\n    print('y' * 10**6)")
    assert res.error == "output too large" and len(res.stdout.encode()) <= sandbox.max_output_bytes
    assert res.stdout.startswith("yyyy")


def test_bad_arguments_are_refused():
    for bad in ({"timeout_s": 0}, {"memory_mb": 1}, {"max_output_bytes": 0}, {"entry": "not a name"}):
        with pytest.raises(ValueError):
            ProgramSandbox(**bad)


def test_other_entry_name():
    with ProgramSandbox(workers=1, timeout_s=TIMEOUT, entry="main") as sb:
        assert sb.run("def main():\n    return 3").value == "3"
        assert sb.run("def solution():\n    return 3").error == "no main()"


# ------------------------------------------------------------------------------------------ the pool

def test_run_many_preserves_order(sandbox):
    programs = [f"import time\ndef solution():\n    time.sleep({(7 * i) % 5 / 100})\n    return {i}" for i in range(20)]
    programs[3] = "from sympy import Integer\ndef solution():\n    return Integer(3)"
    programs[11] = "def solution():\n    return 1 / 0"
    results = sandbox.run_many(programs)
    assert [r.value for r in results] == [str(i) if i != 11 else None for i in range(20)]
    assert isinstance(results[0], ProgramResult) and results[11].error.startswith("exception: ZeroDivisionError")
    assert sandbox.run_many([]) == []


def test_run_many_is_parallel(sandbox):
    start = time.monotonic()
    results = sandbox.run_many(["import time\ndef solution():\n    time.sleep(0.5)\n    return 1"] * 2)
    assert [r.value for r in results] == ["1", "1"]
    assert time.monotonic() - start < 0.95  # two workers: both sleeps overlap


def test_a_dead_worker_is_replaced(sandbox):
    for worker in sandbox._workers:
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
    assert [r.value for r in sandbox.run_many([NORMAL, SYMPY_NORMAL] * 3)] == ["42"] * 6


def test_temp_dirs_are_removed_and_files_stay_inside():
    with ProgramSandbox(workers=1, timeout_s=TIMEOUT) as sb:
        res = sb.run("import os, tempfile\ndef solution():\n    open('a.txt', 'w').write('hi')\n"
                     "    os.mkdir('d')\n    tempfile.mkstemp()\n    return os.getcwd()")
        assert res.ok, res
        tmp = Path(res.value)
        assert tmp.name.startswith("reftune_sbx_") and not tmp.exists()


def test_nothing_reaches_the_trainers_stdout_or_stderr(capfd):
    with ProgramSandbox(workers=1, timeout_s=TIMEOUT) as sb:  # made inside capfd: workers inherit its fds
        results = sb.run_many([
            "import os, sys\ndef solution():\n    os.write(1, b'FLOOD' * 1000)\n    os.write(2, b'FLOOD' * 1000)\n"
            "    sys.__stdout__.write('FLOOD')\n    sys.__stderr__.write('FLOOD')\n    return 1",
            "def solution():\n    print('FLOOD' * 10**6)",
            "import faulthandler\ndef solution():\n    faulthandler.enable()\n    faulthandler._sigsegv()",
        ])
    assert [r.value for r in results] == ["1", None, None]
    out, err = capfd.readouterr()
    assert "FLOOD" not in out + err and "Fatal Python error" not in err


def test_close_stops_the_workers():
    sb = ProgramSandbox(workers=1, timeout_s=TIMEOUT)
    procs = [w.proc for w in sb._workers]
    assert sb.run(NORMAL).value == "42"
    sb.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError):
        sb.run(NORMAL)


def test_execute_program_uses_a_default_sandbox():
    assert execute_program(NORMAL).value == "42"
    assert execute_program("def solution():\n    while True:\n        pass", timeout_s=0.5).error == "timeout"


# ------------------------------------------------------------------------------------------ hostile programs

@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """A one-worker sandbox (so each hostile program is followed by a normal one in the same worker), the
    canary file, the secret and a SIGUSR1 trap in this, the "trainer", process."""
    secret = f"secret-{uuid.uuid4().hex}"
    os.environ[SECRET_VAR] = secret
    canary_dir = tmp_path_factory.mktemp("canary")
    canary = canary_dir / "canary.txt"
    canary.write_text("precious")
    name = f"reftune_pwned_{uuid.uuid4().hex[:12]}"
    signals = []
    old_handler = signal.signal(signal.SIGUSR1, lambda *_: signals.append(1))
    tokens = {"__PWNED_NAME__": name, "__PWNED__": os.path.join(tempfile.gettempdir(), name),
              "__CANARY_DIR__": str(canary_dir), "__CANARY__": str(canary), "__SECRET_VAR__": SECRET_VAR,
              "__TEST_PID__": str(os.getpid())}
    with ProgramSandbox(workers=1, timeout_s=TIMEOUT) as sb:
        yield sb, tokens, secret, canary, signals
    signal.signal(signal.SIGUSR1, old_handler)
    os.environ.pop(SECRET_VAR, None)


def _pwned_files(name: str, canary_dir: Path) -> list[str]:
    places = {tempfile.gettempdir(), "/tmp", "/dev/shm", str(Path.home()), os.getcwd(), str(canary_dir)}
    return [p for d in places for p in glob.glob(os.path.join(d, f"{name}*"))]


def test_hostile_corpus_is_large_and_named_uniquely():
    names = [name for name, _ in HOSTILE]
    assert len(names) >= 40 and len(set(names)) == len(names)


@pytest.mark.parametrize("name, source", HOSTILE, ids=[name for name, _ in HOSTILE])
def test_hostile_program_is_contained(attack, name, source):
    sb, tokens, secret, canary, signals = attack
    for token, value in tokens.items():
        source = source.replace(token, value)
    start = time.monotonic()
    res = sb.run(source)
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT + MARGIN and res.seconds < TIMEOUT + MARGIN, res
    shown = f"{res.value} {res.stdout} {res.error}"
    assert "PWNED" not in shown and secret not in shown, res
    assert len(res.stdout.encode()) <= sb.max_output_bytes
    assert canary.exists() and canary.read_text() == "precious" and os.access(canary, os.R_OK | os.W_OK)
    assert _pwned_files(tokens["__PWNED_NAME__"], canary.parent) == []
    assert signals == [], "the program signalled the trainer"
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0)) == TRAINER_SCHEDULING
    # the same worker answers a normal program correctly afterwards (no leaked state, no dead pool)
    after = sb.run_many([NORMAL, SYMPY_NORMAL, "import math\ndef solution():\n    return math.isqrt(16) + len('ab')"])
    assert [r.value for r in after] == ["42", "42", "6"], after


def test_monkey_patching_does_not_leak_to_the_next_program(attack):
    sb = attack[0]
    sb.run("import builtins, math\nbuiltins.abs = lambda x: -1\nmath.floor = None\ndef solution():\n    return 0")
    assert sb.run("import math\ndef solution():\n    return abs(-3) + math.floor(2.5)").value == "5"


def test_network_isolation_is_reported(sandbox):
    assert isinstance(sandbox.network_isolated, bool)  # True where the worker may unshare(CLONE_NEWNET)
