"""The worker side of `reftune.grading.sandbox` (its docstring says what the sandbox protects against): the
Python that bubblewrap starts, which forks one child per program, and what that child does before and after
running it. Kept apart from the trainer's side, and importing little, because each program's fork copies (and
its exit unmaps) everything this process has in memory: fewer modules here make every program cheaper.

Protocol: one JSON request per line on stdin ({"program": source}), one JSON reply per line on stdout
({"ok", "value", "error", "stdout", "seconds"}, and "retire" when the worker will exit after it).
"""

from __future__ import annotations

import io
import json
import math
import os
import resource  # here, not in the child: an import there would cost every program ~1 ms
import select
import signal
import sys
import time

_PRELOAD = ("math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
            "random", "re", "datetime", "numbers", "operator", "string", "heapq", "bisect")
_PROGRAM_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # a program's whole environment
_CLEAN_S = 0.25  # the worker's budget to empty /tmp after a program, before it retires instead


def _coerce(msg: object, cap: int) -> dict:
    """ProgramResult fields from untrusted JSON: known keys only, right types, strings capped."""
    msg = msg if isinstance(msg, dict) else {}
    text = lambda k: msg[k][:cap] if isinstance(msg.get(k), str) else None  # noqa: E731
    ok, seconds = msg.get("ok") is True, msg.get("seconds")
    return {"ok": ok, "value": text("value") if ok else None, "error": text("error"), "stdout": text("stdout") or "",
            "seconds": float(seconds) if isinstance(seconds, (int, float)) else 0.0}


_write, _exit, _dumps = os.write, os._exit, json.dumps  # bound before any program can patch os or json
_filters = _install_program_filter = None  # the seccomp module (loaded from config["seccomp_py"]) and its installer


def _send(fd: int, msg: dict) -> None:
    data = memoryview((_dumps(msg) + "\n").encode())
    while data:
        data = data[_write(fd, data):]


def _worker_main(config: dict) -> None:
    global _filters, _install_program_filter
    sys.path += config["path"]
    _filters = type(sys)("_reftune_seccomp")  # seccomp.py, loaded by path: its folder stays off sys.path
    with open(config["seccomp_py"]) as f:
        exec(compile(f.read(), config["seccomp_py"], "exec"), _filters.__dict__)
    if config["seccomp"]:
        _install_program_filter = _filters.program_filter_installer()  # ctypes is imported and set up here, once
    for name in _PRELOAD:
        __import__(name)
    if config["sympy"]:
        import sympy
        x = sympy.Symbol("x")  # run sympy's lazy imports once here, not in every child
        sympy.solve(sympy.Eq(2 * x + 1, sympy.Rational(7, 3)), x), sympy.simplify(sympy.sqrt(8) / 2), sympy.N(sympy.pi)
    if config["seccomp"] and config["isolation"] == "process":  # under bwrap, bwrap loaded it before Python
        _filters.install(_filters.sandbox_filter())
    config["rlimits"] = _rlimits(config)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # in the children, a too-big file write raises OSError
    import gc
    gc.collect()
    gc.freeze()  # the children's GC then leaves these objects alone: fewer copy-on-write pages
    _send(1, {"ready": True})
    while line := sys.stdin.buffer.readline():
        try:
            reply = _run_one(json.loads(line)["program"], config)
        except Exception as e:  # a bug here must not kill the worker
            reply = {"ok": False, "error": f"sandbox error: {type(e).__name__}: {e}"}
        if not _clean(config):  # what the program left could not be removed in time: the trainer starts a fresh
            reply["retire"] = True  # worker (its /tmp goes with the old one's mount namespace)
        _send(1, reply)
        if reply.get("retire"):
            _exit(1)


def _clean(config: dict) -> bool:
    """Empty the worker's /tmp (under bwrap it is private to the worker, so all of it was the program's), within
    _CLEAN_S; False if something is left (e.g. half a million empty dirs): the worker then retires."""
    if config["isolation"] != "bwrap":
        return True  # the process mode's temp dir is removed by _run_one; the rest of the host is not ours
    deadline = time.monotonic() + _CLEAN_S

    def remove(path: str) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)  # a program may have made it unreadable or unwritable: it is ours
            for name in os.listdir(path):
                remove(os.path.join(path, name))
            os.rmdir(path)
        else:
            os.unlink(path)

    root = config["tmp_root"]
    try:
        os.chmod(root, 0o755)
        for name in os.listdir(root):
            remove(os.path.join(root, name))
        return not os.listdir(root)
    except (OSError, TimeoutError, RecursionError):
        return False


def _run_one(program: str, config: dict) -> dict:
    if config["isolation"] == "bwrap":  # /tmp is the worker's own and empty: no need for a random name
        tmp = os.path.join(config["tmp_root"], "reftune_sbx")
        os.mkdir(tmp)
    else:
        import tempfile
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
    finally:  # whatever happened: the child is dead and reaped (it cannot fork, so it is alone), its dir gone
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        status = os.waitpid(pid, 0)[1]
        os.close(rfd)
        seconds = time.monotonic() - start
        if config["isolation"] != "bwrap":  # under bwrap _clean empties all of /tmp, within a time budget
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
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
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))  # the worker's request and reply pipes among them
        os.chdir(tmp)
        os.environ.clear()
        os.environ.update(_PROGRAM_ENV)
        if "tempfile" in sys.modules:  # the process mode's worker imported it; under bwrap, /tmp is private anyway
            sys.modules["tempfile"].tempdir = tmp
        out = sys.stdout = sys.stderr = _CappedText(config["max_output_bytes"])
        sys.stdin = io.StringIO()
        for limit, soft, hard in config["rlimits"]:
            resource.setrlimit(limit, (soft, hard))
        if config["seccomp"]:
            _install_program_filter(os.getpid())
        reply = _execute(program, config, out)
    except BaseException as e:  # e.g. the program broke builtins our own code needs
        reply["error"] = f"sandbox error: {type(e).__name__}"
    finally:
        try:
            _send(3, reply)
        finally:
            _exit(0)


def _rlimits(config: dict) -> list[tuple[int, int, int]]:
    """The child's (resource, soft, hard) limits, planned once in the worker: never above the worker's hard ones."""
    cpu = math.ceil(config["timeout_s"]) + 1  # SIGXCPU at cpu seconds, SIGKILL one later
    plan = []
    for limit, soft, hard in ((resource.RLIMIT_AS, config["memory_mb"] << 20, config["memory_mb"] << 20),
                              (resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_FSIZE, 1 << 20, 1 << 20),
                              (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NOFILE, 64, 64),
                              (resource.RLIMIT_MEMLOCK, 0, 0), (resource.RLIMIT_MSGQUEUE, 0, 0)):
        current = resource.getrlimit(limit)[1]
        hard = hard if current == resource.RLIM_INFINITY else min(hard, current)
        plan.append((limit, min(soft, hard), hard))
    return plan


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
