"""The sandbox that runs P-CoT programs: correct values for normal programs, and containment of hostile ones
(tests/hostile_programs.py): each one ends within the timeout, leaves the test process (the "trainer"), its
files and the Python installation alone, leaks no secret, leaves no process behind, and the same pool still
answers the next programs correctly. Needs bubblewrap (`make install` installs it)."""

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

from reftune.grading.sandbox import ProgramResult, ProgramSandbox, descendants, execute_program
from reftune.errors import UserError

TIMEOUT = 1.0
MARGIN = 3.0  # seconds on top of the timeout, for a loaded 2-core machine
NORMAL = "def solution():\n    a = 40\n    b = 2\n    return a + b"
SYMPY_NORMAL = "from sympy import symbols, solve, Integer\ndef solution():\n    x = symbols('x')\n" \
               "    return solve(2 * x - Integer(84), x)[0]"
SECRET_VAR = "REFTUNE_CANARY_SECRET"
TRAINER_SCHEDULING = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0))
_CORPUS = runpy.run_path(str(Path(__file__).with_name("hostile_programs.py")))
HOSTILE, NEW = _CORPUS["HOSTILE"], _CORPUS["NEW"]


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
    ("import subprocess\ndef solution():\n    subprocess.run(['true'])",
     "exception: PermissionError: [Errno 1] Operation not permitted"),
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


def test_each_program_gets_a_fresh_private_tmp():
    with ProgramSandbox(workers=1, timeout_s=TIMEOUT) as sb:
        first, second = sb.run_many([  # one plain worker: the second program runs in the same one, after the first
            "import os, tempfile\ndef solution():\n    open('a.txt', 'w').write('hi')\n    os.mkdir('d')\n"
            "    tempfile.mkstemp()\n    open('/tmp/left_behind', 'w').write('x')\n    os.chmod('d', 0)\n"
            "    return os.getcwd()",
            "import os\ndef solution():\n    return sorted(os.listdir('/tmp')) + sorted(os.listdir('.'))"])
        assert first.ok and second.ok, (first, second)
        assert first.value == "/tmp/reftune_sbx" and not Path(first.value, "a.txt").exists()
        assert second.value == "['reftune_sbx']"


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

AFTER = [(NORMAL, "42"), (SYMPY_NORMAL, "42"),  # what must still work after each hostile program, in its pool
         ("import math\ndef solution():\n    return math.isqrt(16) + len('ab')", "6"),
         ("def solution():\n    open('f.txt', 'w').write('7')\n    return int(open('f.txt').read())", "7")]


def _file_state(path: Path) -> tuple:
    st = path.stat()
    return path.read_bytes(), st.st_mode, st.st_mtime_ns, st.st_uid


def _pool_processes(sb: ProgramSandbox) -> list[int]:
    """How many processes each worker's sandbox holds: 2 (bubblewrap's init and the Python worker) when idle."""
    return [len(descendants(w.proc.pid)) for w in sb._workers]


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """A one-worker sandbox (so each hostile program is followed by normal ones in the same worker), canary files
    (one of the test's, two in the Python installation the sandbox sees read-only), the secret and a SIGUSR1 trap
    in this, the "trainer", process."""
    import sympy
    secret = f"secret-{uuid.uuid4().hex}"
    os.environ[SECRET_VAR] = secret
    canary_dir = tmp_path_factory.mktemp("canary")
    canary = canary_dir / "canary.txt"
    canary.write_text("precious")
    canaries = [canary, Path(os.__file__), Path(sympy.__file__)]
    name = f"reftune_pwned_{uuid.uuid4().hex[:12]}"
    signals = []
    old_handler = signal.signal(signal.SIGUSR1, lambda *_: signals.append(1))
    tokens = {"__PWNED_NAME__": name, "__PWNED__": os.path.join(tempfile.gettempdir(), name),
              "__CANARY_DIR__": str(canary_dir), "__CANARY__": str(canary), "__SECRET_VAR__": SECRET_VAR,
              "__TEST_PID__": str(os.getpid())}
    with ProgramSandbox(workers=1, timeout_s=TIMEOUT) as sb:
        states = {c: _file_state(c) for c in canaries}
        yield sb, tokens, secret, states, signals
    signal.signal(signal.SIGUSR1, old_handler)
    os.environ.pop(SECRET_VAR, None)


def _pwned_files(name: str, canary_dir: Path) -> list[str]:
    places = {tempfile.gettempdir(), "/tmp", "/dev/shm", str(Path.home()), os.getcwd(), str(canary_dir)}
    return [p for d in places for p in glob.glob(os.path.join(d, f"{name}*"))]


def test_hostile_corpus_is_large_and_named_uniquely():
    names = [name for name, _ in HOSTILE]
    assert len(NEW) >= 60 and len(HOSTILE) >= 102 + len(NEW) and len(set(names)) == len(names)


@pytest.mark.parametrize("name, source", HOSTILE, ids=[name for name, _ in HOSTILE])
def test_hostile_program_is_contained(attack, name, source):
    sb, tokens, secret, states, signals = attack
    for token, value in tokens.items():
        source = source.replace(token, value)
    workers = [w.proc.pid for w in sb._workers]
    start = time.monotonic()
    res = sb.run(source)
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT + MARGIN and res.seconds < TIMEOUT + MARGIN, res
    # its worker was neither killed nor stopped (only a worker that retires itself, e.g. after half a million
    # files it could not remove in time, may exit, and only after its reply)
    assert res.error not in ("sandbox worker died", "sandbox worker stuck"), res
    assert [w.proc.pid for w in sb._workers] == workers
    assert all(w.retired or w.proc.poll() is None for w in sb._workers), "a worker died"
    shown = f"{res.value} {res.stdout} {res.error}"
    assert "PWNED" not in shown and secret not in shown, res
    assert len(res.stdout.encode()) <= sb.max_output_bytes
    assert {c: _file_state(c) for c in states} == states, "a canary file changed"
    assert _pwned_files(tokens["__PWNED_NAME__"], Path(tokens["__CANARY__"]).parent) == []
    assert signals == [], "the program signalled the trainer"
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0)) == TRAINER_SCHEDULING
    # the same worker answers normal programs correctly afterwards (no leaked state, no forged reply, no dead pool)
    after = sb.run_many([program for program, _ in AFTER])
    assert [r.value for r in after] == [value for _, value in AFTER], after
    assert _pool_processes(sb) == [2] * len(sb._workers), "a process was left behind"
    assert all(w.proc.poll() is None for w in sb._workers)


def test_monkey_patching_does_not_leak_to_the_next_program(attack):
    sb = attack[0]
    sb.run("import builtins, math\nbuiltins.abs = lambda x: -1\nmath.floor = None\ndef solution():\n    return 0")
    assert sb.run("import math\ndef solution():\n    return abs(-3) + math.floor(2.5)").value == "5"


def test_a_program_cannot_read_the_next_one(attack):
    """The thief keeps looking for the next program (stdin, the worker's objects and streams, every fd) from a
    thread after it returned; the worker reads the next request only once the thief is dead."""
    sb = attack[0]
    marker = f"MARKER_{uuid.uuid4().hex}"
    thief = ("import gc, os, sys, threading\nfound = []\ndef look():\n    for _ in range(200):\n"
             "        for fd in range(64):\n            try:\n                found.append(os.read(fd, 1 << 16))\n"
             "            except OSError:\n                pass\n"
             "        for o in gc.get_objects():\n            if isinstance(o, (bytes, str)) and 'MARK' + 'ER_' in o:\n"
             "                found.append(o)\ndef solution():\n    look()\n    threading.Thread(target=look).start()\n"
             "    return repr(found)")
    victim = f"def solution():\n    '{marker}'\n    return 7"
    stolen, result = sb.run_many([thief, victim])
    assert marker not in f"{stolen.value} {stolen.stdout} {stolen.error}"
    assert result.value == "7"


def test_what_a_program_sees(attack):
    """An unprivileged uid without capabilities, no_new_privs, seccomp filter mode, an environment that holds only
    the BLAS thread count, no /proc, a read-only root, its own hostname, and no other process but its worker and
    bubblewrap's init."""
    sb = attack[0]
    assert sb.isolation == "bwrap" and sb.seccomp and sb.network_isolated
    program = ("import ctypes, os, socket\ndef solution():\n    libc = ctypes.CDLL(None)\n"
               "    caps = (ctypes.c_uint32 * 6)()\n    header = (ctypes.c_uint32 * 2)(0x20080522, 0)\n"
               "    libc.capget(header, caps)\n"
               "    try:\n        open('/x', 'w')\n        root = 'writable'\n    except OSError as e:\n"
               "        root = e.errno\n"
               "    alive = [p for p in range(1, 100) if p != os.getpid() and libc.getpgid(p) >= 0]\n"
               "    return [os.getuid(), os.getgid(), os.geteuid(), list(caps), libc.prctl(39, 0, 0, 0, 0),\n"
               "            libc.prctl(21, 0, 0, 0, 0), dict(os.environ), os.path.exists('/proc/self'), root,\n"
               "            socket.gethostname(), alive]")
    res = sb.run(program)
    assert res.ok, res
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert res.value == str([65534, 65534, 65534, [0] * 6, 1, 2, env, False, 30, "sandbox", [1, 2]])


def test_a_missing_bubblewrap_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError) as e:
        ProgramSandbox(workers=1)
    assert "bubblewrap" in str(e.value) and "REFTUNE_SANDBOX=process" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UserError)  # the CLI prints it as one line, no traceback


def test_the_weaker_process_mode_still_runs_programs_and_filters_syscalls():
    with ProgramSandbox(workers=1, timeout_s=TIMEOUT, isolation="process") as sb:
        assert (sb.isolation, sb.network_isolated) == ("process", False)
        ok, forked, killed = sb.run_many([NORMAL, "import os\ndef solution():\n    return os.fork()",
                                          "import os\ndef solution():\n    os.kill(os.getppid(), 19)"])
        assert ok.value == "42"
        if sb.seccomp:
            assert forked.error == killed.error == "exception: PermissionError: [Errno 1] Operation not permitted"
        assert sb.run(NORMAL).value == "42"


def test_network_isolation_is_reported(sandbox):
    assert sandbox.network_isolated is True
