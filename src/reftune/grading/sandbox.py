"""Run model-written P-CoT programs (`def solution(): ... return result`) out of process, so that one bad
program costs the RL trainer at most `timeout_s`: never a hang, a crash or a clobbered file.

Design: long-lived workers (`python -I`, empty environment; started once, reused across batches) pre-import
math, fractions, decimal, statistics...: `workers` plain ones (default 2 per CPU, so that a CPU whose worker
waits for the parent has another to run) and half as many that also hold sympy and get the programs whose
text mentions sympy (forking a process holding sympy costs ~3x more). Per program a worker forks a child
(patched builtins and leaked state die with it) that calls setsid(), enters a fresh temp dir (on /dev/shm when
usable; removed after), points fds 0/1/2 at /dev/null, sets rlimits, installs the guard, runs the program and
sends back one JSON line with the value already rendered as a string (nothing is unpickled). At the wall
timeout the worker SIGKILLs the child's whole process group.

Protects against accidents and sloppy or mildly hostile programs:
- hangs: wall timeout + RLIMIT_CPU; memory: RLIMIT_AS ("memory"); disk: RLIMIT_FSIZE, <= 32 file changes;
  output floods: stdout+stderr captured and capped ("output too large");
- processes: fork/system/exec/spawn/Popen are refused by a Python audit hook (which, unlike a monkey-patch, the
  program cannot undo); subprocess, multiprocessing, pty, ctypes, socket cannot be imported; RLIMIT_NPROC=0
  (kernel-enforced, except for root);
- files: writes, deletes, renames, mkdir only inside the temp dir; links, chmod, mknod, chdir refused; reads
  only in the temp dir and the Python installation (so /etc/shadow, /proc, $HOME, the trainer's files are refused);
- secrets: workers get an empty environment. Network: socket cannot be imported, socket.* events are refused,
  and where the worker may unshare(CLONE_NEWNET) (root, CAP_SYS_ADMIN) children get an empty network
  namespace from the kernel (`ProgramSandbox.network_isolated`); elsewhere the block is Python-level only;
- the trainer: kill, killpg, pidfd signals, renice/affinity of other processes, setting the clock and signal.*
  are refused; children live in their own session; exits, signals and crashes end only the child; a dead or
  stuck worker is killed and replaced.

Does NOT protect against a determined attacker: it is Python-level guarding plus rlimits, with no seccomp, no
namespaces besides the network one, no uid drop. Code that gains raw memory access can remove the hook and
then acts as the trainer's user (often root in containers); e.g. the ctypes that sympy loads into the worker
is reachable by introspection, and calls through its function objects are not audited in Python 3.11. Nor
against CPU/cache side channels, reading the Python installation or listing processes. For untrusted code at
scale, run the trainer in a container or VM as well.

Entry: `solution()`, called without arguments; failing that, a top-level variable `result` (else `answer`).
Values: ints (sympy/numpy integers too) -> str(int); other reals (float, Fraction, Decimal, sympy Rational,
sqrt(2), pi) -> repr(float); anything else -> str(), e.g. "x + 1" or "[1, 2]". Linux only (fork, /proc, rlimits).
"""

from __future__ import annotations

import _thread  # not threading: its at-fork hook would make every fork in the workers dearer
import atexit
import io
import json
import math
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

_PRELOAD = ("math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
            "random", "re", "datetime", "numbers", "operator", "string", "heapq", "bisect")
_BLOCKED_MODULES = ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing", "subprocess", "_posixsubprocess",
                    "socket", "_socket", "ssl", "_ssl", "pty", "asyncio")
_DENY_EVENTS = {"os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "subprocess.Popen",
                "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "os.link",
                "os.symlink", "os.chmod", "os.chown", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr",
                "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.chdir"}
_DENY_PREFIXES = ("socket.", "ctypes.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "sqlite3.")
# calls with no audit event that reach beyond the child (or, for signal.*, tamper with it), replaced by a refusal;
# os/signal re-export posix/_signal, so both are patched
_POSIX_REFUSED = ("mkfifo", "mknod", "chroot", "fchdir", "pidfd_open", "sched_setaffinity", "sched_setscheduler",
                  "sched_setparam", "setpriority")
_SIGNAL_REFUSED = ("signal", "alarm", "setitimer", "siginterrupt", "pthread_sigmask", "pidfd_send_signal")
_REFUSED = {"os": _POSIX_REFUSED, "posix": _POSIX_REFUSED, "signal": _SIGNAL_REFUSED, "_signal": _SIGNAL_REFUSED,
            "_posixsubprocess": ("fork_exec",), "subprocess": ("_fork_exec",),
            "time": ("clock_settime", "clock_settime_ns")}
# audit events that change the filesystem: (indices of path arguments, indices of dir_fd arguments)
_WRITE_EVENTS = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.rename": ((0, 1), (2, 3)),
                 "os.mkdir": ((0,), (2,)), "shutil.rmtree": ((0,), (1,)), "os.truncate": ((0,), ()),
                 "os.utime": ((0,), (3,))}
_READ_EVENTS = ("os.listdir", "os.scandir")  # path is argument 0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_MAX_FILE_WRITES = 32
_GRACE_S, _STARTUP_S = 5.0, 120.0  # the parent's patience with a worker: per program on top of timeout_s; to start


@dataclass
class ProgramResult:
    """ok: the entry returned; value: its rendering (None unless ok); error: why not ("timeout", "memory",
    "exception: ZeroDivisionError: division by zero", "no solution()", "output too large", "crashed: SIGSEGV",
    "exited with code 0 before returning", ...); stdout: stdout+stderr, capped; seconds: wall time of the child."""

    ok: bool
    value: str | None
    error: str | None
    stdout: str
    seconds: float


def _coerce(msg: object, cap: int) -> dict:
    """ProgramResult fields from untrusted JSON: known keys only, right types, strings capped."""
    msg = msg if isinstance(msg, dict) else {}
    text = lambda k: msg[k][:cap] if isinstance(msg.get(k), str) else None  # noqa: E731
    ok, seconds = msg.get("ok") is True, msg.get("seconds")
    return {"ok": ok, "value": text("value") if ok else None, "error": text("error"), "stdout": text("stdout") or "",
            "seconds": float(seconds) if isinstance(seconds, (int, float)) else 0.0}


# ------------------------------------------------------------------------------------------------ parent side

class _Worker:
    """One worker process; requests and replies are single JSON lines on its stdin/stdout."""

    def __init__(self, config: dict):
        import subprocess  # here, not at the top: the workers run this file and must not import threading
        self.config, self.buf, self.cap = config, b"", 8 * config["max_output_bytes"] + (1 << 20)
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "--worker", json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=config["tmp_root"],
                                     start_new_session=True)

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def wait_ready(self) -> dict:
        deadline, msg = time.monotonic() + _STARTUP_S, None
        while msg is None:
            if not select.select([self], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise RuntimeError("sandbox worker did not start")
            msg = self.poll()
        return msg

    def send(self, program: str) -> None:
        self.proc.stdin.write(json.dumps({"program": program}).encode() + b"\n")
        self.proc.stdin.flush()

    def poll(self) -> dict | None:
        """Call when readable: the reply once a whole line is in, else None; EOFError if the worker died."""
        data = os.read(self.fileno(), 1 << 16)
        if not data or len(self.buf) + len(data) > self.cap:
            raise EOFError("sandbox worker died")
        line, newline, self.buf = (self.buf + data).partition(b"\n")
        if not newline:
            self.buf = line
        return json.loads(line) if newline else None

    def close(self, kill: bool = False) -> None:
        """Let the worker exit (EOF on its stdin); SIGKILL its process group if asked or if it does not."""
        try:
            if not kill:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
                return
        except Exception:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()


class ProgramSandbox:
    """A pool of sandbox workers, created once and reused for every batch. Thread-safe (calls serialize)."""

    def __init__(self, workers: int | None = None, timeout_s: float = 3.0, memory_mb: int = 1024,
                 max_output_bytes: int = 16384, entry: str = "solution"):
        if timeout_s <= 0 or memory_mb < 64 or max_output_bytes < 1 or not entry.isidentifier():
            raise ValueError("sandbox: need timeout_s > 0, memory_mb >= 64, max_output_bytes >= 1, entry a name")
        n = workers or 2 * len(os.sched_getaffinity(0))
        shm = "/dev/shm"  # tmpfs: the per-program mkdtemp + rmtree is ~100x cheaper there than on ext4
        tmp_root = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else tempfile.gettempdir()
        config = {"timeout_s": timeout_s, "memory_mb": memory_mb, "max_output_bytes": max_output_bytes,
                  "entry": entry, "tmp_root": tmp_root}
        self.timeout_s, self.max_output_bytes, self._lock = timeout_s, max_output_bytes, _thread.allocate_lock()
        self._workers = [_Worker({**config, "sympy": False}) for _ in range(n)]
        self._workers += [_Worker({**config, "sympy": True}) for _ in range(max(1, n // 2))]
        try:
            self.network_isolated = all([w.wait_ready().get("netns") is True for w in self._workers])
        except BaseException:
            self.close()
            raise

    def _replace(self, slot: int) -> _Worker:
        self._workers[slot].close(kill=True)
        self._workers[slot] = _Worker(self._workers[slot].config)
        self._workers[slot].wait_ready()
        return self._workers[slot]

    def run(self, program: str) -> ProgramResult:
        return self.run_many([program])[0]

    def run_many(self, programs: Sequence[str]) -> list[ProgramResult]:
        """Run the programs in parallel over the pool; results in input order."""
        results: list = [None] * len(programs)
        todo = {kind: [i for i in reversed(range(len(programs))) if ("sympy" in programs[i]) == kind]
                for kind in (False, True)}
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (program index, start time)
        with self._lock:
            if not self._workers:
                raise RuntimeError("sandbox is closed")
            while todo[False] or todo[True] or busy:
                for slot, worker in enumerate(self._workers):
                    queue = todo[worker.config["sympy"]]
                    if queue and slot not in busy:
                        if worker.proc.poll() is not None:
                            worker = self._replace(slot)
                        try:
                            worker.send(programs[queue[-1]])
                        except OSError:  # it died since the poll() above
                            self._replace(slot).send(programs[queue[-1]])
                        busy[slot] = (queue.pop(), time.monotonic())
                patience = self.timeout_s + _GRACE_S
                wait = max(0.0, min(start for _, start in busy.values()) + patience - time.monotonic())
                ready = select.select([self._workers[slot] for slot in busy], [], [], wait)[0]
                for slot, (i, start) in list(busy.items()):
                    try:
                        msg = self._workers[slot].poll() if self._workers[slot] in ready else None
                        if msg is None and time.monotonic() < start + patience:
                            continue
                        if msg is None:
                            raise EOFError("sandbox worker stuck")
                        results[i] = ProgramResult(**_coerce(msg, self.max_output_bytes))
                    except (EOFError, ValueError) as e:
                        results[i] = ProgramResult(False, None, str(e), "", time.monotonic() - start)
                        self._replace(slot)
                    del busy[slot]
        return results

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.close()
            self._workers = []

    def __enter__(self) -> ProgramSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_defaults: dict[tuple, ProgramSandbox] = {}
_defaults_lock = _thread.allocate_lock()


def execute_program(program: str, **kwargs) -> ProgramResult:
    """Run one program in a module-level sandbox made on first use (one per distinct ProgramSandbox kwargs)
    and closed at interpreter exit."""
    key = tuple(sorted(kwargs.items()))
    with _defaults_lock:
        if not _defaults:
            atexit.register(lambda: [sandbox.close() for sandbox in _defaults.values()])
        if key not in _defaults:
            _defaults[key] = ProgramSandbox(**kwargs)
    return _defaults[key].run(program)


# ------------------------------------------------------------------------------------------------ worker side

_write, _exit, _dumps = os.write, os._exit, json.dumps  # bound before any program can patch os or json


def _send(fd: int, msg: dict) -> None:
    data = memoryview((_dumps(msg) + "\n").encode())
    while data:
        data = data[_write(fd, data):]


def _worker_main(config: dict) -> None:
    try:  # a new, empty network namespace for this worker and its children, where permitted
        import ctypes
        netns = ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0  # CLONE_NEWNET
    except (OSError, AttributeError):
        netns = False
    for name in _PRELOAD:
        __import__(name)
    if config["sympy"]:
        import sympy
        x = sympy.Symbol("x")  # run sympy's lazy imports once here, not in every child
        sympy.solve(sympy.Eq(2 * x + 1, sympy.Rational(7, 3)), x), sympy.simplify(sympy.sqrt(8) / 2), sympy.N(sympy.pi)
    roots = {os.path.realpath(p) for p in (*sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix) if os.path.isdir(p)}
    config["read_roots"] = [r for r in roots if r != "/"] + ["/dev/null", "/dev/urandom"]
    import gc
    gc.collect()
    gc.freeze()  # the children's GC then leaves these objects alone: fewer copy-on-write pages
    _send(1, {"ready": True, "netns": netns})
    while line := sys.stdin.buffer.readline():
        try:
            reply = _run_one(json.loads(line)["program"], config)
        except Exception as e:  # a bug here must not kill the worker
            reply = {"ok": False, "error": f"sandbox error: {type(e).__name__}: {e}"}
        _send(1, reply)


def _run_one(program: str, config: dict) -> dict:
    tmp = tempfile.mkdtemp(prefix="reftune_sbx_", dir=config["tmp_root"])
    rfd, wfd = os.pipe()
    start = time.monotonic()
    try:
        pid = os.fork()
    except OSError:
        for fd in (rfd, wfd):
            os.close(fd)
        os.rmdir(tmp)
        raise
    if pid == 0:
        os.close(rfd)
        _child(program, config, tmp, wfd)  # never returns
    os.close(wfd)
    raw, error, cap = b"", "timeout", 8 * config["max_output_bytes"] + 65536
    try:
        while (left := start + config["timeout_s"] - time.monotonic()) > 0:
            if select.select([rfd], [], [], left)[0]:
                chunk = os.read(rfd, 1 << 16)
                raw += chunk
                if not chunk or b"\n" in chunk or len(raw) > cap:
                    error = "output too large" if len(raw) > cap else None
                    break
    finally:  # whatever happened: no child left behind, no temp dir left behind
        for kill in (os.killpg, os.kill):  # the whole group; os.kill if the child never reached setsid()
            try:
                kill(pid, signal.SIGKILL)
                break
            except OSError:
                pass
        status = os.waitpid(pid, 0)[1]
        os.close(rfd)
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - start
    line, newline, _ = raw.partition(b"\n")  # the reply is the first line; the program may write more
    if error is None and newline:
        try:
            return {**_coerce(json.loads(line), config["max_output_bytes"]), "seconds": seconds}
        except ValueError:
            error = "malformed reply"
    elif error is None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        error = "timeout" if sig == signal.SIGXCPU else f"crashed: {signal.Signals(sig).name}"
    elif error is None:
        error = f"exited with code {os.waitstatus_to_exitcode(status)} before returning"
    return {"ok": False, "value": None, "error": error, "stdout": "", "seconds": seconds}


class _OutputTooLarge(BaseException):
    """A BaseException, so that a program's `except Exception` does not swallow it."""


class _CappedText(io.StringIO):
    """The child's sys.stdout and sys.stderr: keeps the first `cap` characters, then raises."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap, self.overflow = cap, False

    def write(self, s: str) -> int:
        if self.tell() + len(s) > self.cap:
            super().write(s[: max(0, self.cap - self.tell())])
            self.overflow = True
            raise _OutputTooLarge
        return super().write(s)


def _child(program: str, config: dict, tmp: str, wfd: int) -> None:
    reply = {"ok": False, "value": None, "error": "sandbox error", "stdout": ""}
    try:
        os.setsid()
        os.dup2(wfd, 3)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        os.chdir(tmp)
        out = sys.stdout = sys.stderr = _CappedText(config["max_output_bytes"])
        sys.stdin = io.StringIO()
        _limit_resources(config)
        _guard(tmp, config["read_roots"])
        reply = _execute(program, config, out)
    except BaseException as e:  # e.g. the program broke builtins our own code needs
        reply["error"] = f"sandbox error: {type(e).__name__}"
    finally:
        try:
            _send(3, reply)
        finally:
            _exit(0)


def _limit_resources(config: dict) -> None:
    import resource
    cpu = math.ceil(config["timeout_s"]) + 1  # SIGXCPU at cpu seconds, SIGKILL one later
    for limit, soft, hard in ((resource.RLIMIT_AS, config["memory_mb"] << 20, config["memory_mb"] << 20),
                              (resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_FSIZE, 1 << 20, 1 << 20),
                              (resource.RLIMIT_NPROC, 0, 0), (resource.RLIMIT_CORE, 0, 0),
                              (resource.RLIMIT_NOFILE, 64, 64)):
        current = resource.getrlimit(limit)[1]
        hard = hard if current == resource.RLIM_INFINITY else min(hard, current)  # never raise a hard limit
        resource.setrlimit(limit, (min(soft, hard), hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file write raises OSError instead of killing


def _guard(tmp: str, read_roots: list[str]) -> None:
    """Refuse what has no audit event, then install the audit hook (irreversible for this child). Paths are
    checked after realpath() against the cwd, which stays the temp dir (chdir refused), and no directory outside
    it can be opened: so a dir_fd, which the "open" event does not show, cannot reach outside either."""
    def refusal(what: str):
        def refuse(*_args, **_kwargs):
            raise PermissionError(f"sandbox: {what} is blocked")
        return refuse

    for module, names in _REFUSED.items():
        for name in names:
            if hasattr(sys.modules.get(module), name):
                setattr(sys.modules[module], name, refusal(f"{module}.{name}"))
    sys.modules.update(dict.fromkeys(_BLOCKED_MODULES))
    tempfile.tempdir = tmp
    tmp = os.path.realpath(tmp)
    writable, readable, writes = (tmp,), (tmp, *read_roots), [0]

    def outside(path, roots: tuple) -> bool:
        if isinstance(path, int):
            return False  # an fd: it was opened under this policy
        path = os.path.realpath(os.fsdecode(path))
        return not any(path == r or path.startswith(r + "/") for r in roots)

    def hook(event: str, args: tuple) -> None:
        if event in _DENY_EVENTS or event.startswith(_DENY_PREFIXES):
            raise PermissionError(f"sandbox: {event} is blocked")
        writing = event in _WRITE_EVENTS or (event == "open" and bool((args[2] or 0) & _WRITE_FLAGS))
        writes[0] += writing
        if writes[0] > _MAX_FILE_WRITES:
            raise PermissionError("sandbox: too many file writes")
        if event == "open" and args[0] is not None:
            if outside(args[0], writable if writing else readable) or (
                    outside(args[0], writable) and os.path.isdir(args[0])):
                raise PermissionError(f"sandbox: {'writing' if writing else 'opening'} {args[0]!r} is blocked")
        elif event in _WRITE_EVENTS:
            paths, dir_fds = _WRITE_EVENTS[event]
            if any(args[i] not in (None, -1) for i in dir_fds) or any(outside(args[i], writable) for i in paths):
                raise PermissionError(f"sandbox: {event} outside the sandbox is blocked")
        elif event in _READ_EVENTS and args[0] is not None and outside(args[0], readable):
            raise PermissionError(f"sandbox: {event} outside the sandbox is blocked")
        elif event == "import" and str(args[0]).partition(".")[0] in _BLOCKED_MODULES:
            raise ImportError(f"sandbox: import of {args[0]} is blocked")

    sys.addaudithook(hook)


def _execute(program: str, config: dict, out: _CappedText) -> dict:
    import builtins
    value, error = None, None
    try:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(compile(program, "<program>", "exec"), namespace)
        entry = namespace.get(config["entry"])
        if callable(entry):
            value = _render(entry())
        elif "result" in namespace or "answer" in namespace:
            value = _render(namespace["result"] if "result" in namespace else namespace["answer"])
        else:
            error = f"no {config['entry']}()"
    except _OutputTooLarge:
        error = "output too large"
    except MemoryError:
        error = "memory"
    except BaseException as e:  # SystemExit and KeyboardInterrupt too; a hostile __str__ is caught in _child
        error = f"exception: {type(e).__name__}: {e}"[:1000]
    if out.overflow:
        error = "output too large"
    elif value is not None and len(value) > config["max_output_bytes"]:
        error = "value too large"
    text = out.getvalue().encode("utf-8", "replace")[: out.cap].decode("utf-8", "ignore")
    return {"ok": error is None, "value": value if error is None else None, "error": error, "stdout": text}


def _render(value: object) -> str:
    import decimal
    import numbers
    if isinstance(value, (bool, str)):
        return str(value)
    try:
        if isinstance(value, numbers.Integral):
            return str(int(value))
        if isinstance(value, (numbers.Real, decimal.Decimal)) or (getattr(value, "is_number", False) and value.is_real):
            return repr(float(value))  # sympy numbers included: Rational, Float, sqrt(2), pi
    except (TypeError, ValueError, OverflowError):
        pass
    return str(value)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(json.loads(sys.argv[2]))
