"""Run model-written P-CoT programs (`def solution(): ... return result`) behind an operating-system boundary, so
that one bad or hostile program costs the RL trainer at most `timeout_s`: never a hang, a crash, a leaked secret,
a changed file or a poisoned result for another program.

Design. Each worker is a pre-forked Python started by bubblewrap (`bwrap`, Debian's package) in its own user,
mount, pid, net, ipc, uts and cgroup namespaces: uid/gid 65534 with no capabilities, `--disable-userns`,
no_new_privs, an empty environment, the seccomp filter `seccomp.sandbox_filter()`, and a root that is read-only
and holds only the shared libraries (/usr/lib/<multiarch>), the Python executable, its stdlib, the packages in
`_PACKAGES` (sympy, mpmath, numpy) under /sandbox/site, and the worker's code (sandbox_worker.py, seccomp.py);
/dev is bubblewrap's minimal read-only one, /tmp a 64 MiB tmpfs, and there is no /proc, /sys, /etc, /home or
/run. The workers preload `sandbox_worker._PRELOAD` (math, fractions, decimal...): `workers` plain ones (default
2 per CPU) and half as many that also hold sympy and get the programs whose text mentions sympy. A worker never
runs a program itself: per program it forks a child that calls setsid(), keeps one fd (a fresh pipe for its
reply; stdin/stdout/stderr are /dev/null, the worker's request and reply pipes are closed), sets the
environment to `sandbox_worker._PROGRAM_ENV`, enters a fresh dir in /tmp, sets rlimits, stacks
`seccomp.program_filter(pid)` on itself and runs the program. At the reply or the wall timeout the worker
SIGKILLs the child, reaps it, empties /tmp and only then answers the trainer (one JSON line, the value already
rendered; nothing is unpickled), then reads the next request: so the next program is never in a worker's
memory while a program runs.

Protects against (tests/hostile_programs.py attacks each):
- hangs (wall timeout + RLIMIT_CPU), memory (RLIMIT_AS, "memory"), disk (RLIMIT_FSIZE, the /tmp size), output
  floods (captured, capped: "output too large"), exits, signals and crashes (they end only the child);
- new processes: fork, vfork, exec, spawn and clone without CLONE_THREAD are refused by seccomp, so no orphan
  can outlive the program (and the pid namespace kills whatever is left when the pool closes);
- the trainer and other processes: none is visible (pid namespace, no /proc); signals (kill, sigqueue, SIGIO
  through F_SETOWN) and prlimit reach only the program itself; no pidfd, ptrace, process_vm_*, kcmp, renice or
  CPU pinning of anyone;
- files: the trainer's files are not in the mount namespace at all (canaries, /etc/passwd, /etc/shadow, $HOME,
  existence tests included); the root is read-only; /tmp is private to the worker and emptied after each program;
- secrets: the trainer's environment is never inherited (bwrap --clearenv, `python -I`); a program's holds only
  OMP/OPENBLAS_NUM_THREADS=1 (numpy's OpenBLAS would otherwise start a thread per CPU);
- the network: an empty network namespace (no TCP/UDP, no abstract or filesystem unix sockets outside), and
  socket() is refused anyway;
- other programs: each runs in a throw-away fork of a worker it cannot signal, trace or write to, whose request
  and reply channels it does not hold and cannot reopen; files it leaves are removed before the next program;
  SysV and POSIX IPC objects (which would outlive it) are refused;
- kernel attack surface: mount, namespaces, keyrings, bpf, perf, userfaultfd, io_uring, modules, clocks, file
  handles and foreign syscall ABIs are refused by seccomp for the whole sandbox.

Does NOT protect against: kernel bugs reachable through the syscalls still allowed; CPU, cache and timing side
channels; reading what is in the sandbox (the stdlib, the bound packages, the worker's code and memory,
which the child inherits: its config and the current program, no secret); the trainer being slowed down by a
program that uses its CPU share until the timeout, or by one that leaves so many files that its worker must be
replaced (a restart, ~1 s). The uid on the host: where the trainer runs as root and every bound path is
readable by others, bubblewrap runs as `nobody` (65534) and so do the programs; where the Python installation
is not (e.g. pyenv under /root, as on the dev machine), bubblewrap can only map the sandbox's uid 65534 to the
trainer's own, so a program runs as host root without any capability (`host_uid` says which): a kernel escape
would then act as root. Run the trainer as a normal user, or from a Python readable by all, for a
host-unprivileged sandbox. Seccomp is x86_64 only (`seccomp` is False elsewhere).

Where bubblewrap is missing or the kernel refuses user namespaces, `ProgramSandbox()` raises a one-line
RuntimeError. `isolation="process"` (or REFTUNE_SANDBOX=process) is a documented weaker mode for such hosts:
the same workers, forks, rlimits and both seccomp filters (no processes, signals or sockets), but no
namespaces: a program can read and write whatever the trainer's user can and sees the host's processes; use it
only for programs you trust.

Entry: `solution()`, called without arguments; failing that, a top-level variable `result` (else `answer`).
Values: ints (sympy/numpy integers too) -> str(int); other reals (float, Fraction, Decimal, sympy Rational,
sqrt(2), pi) -> repr(float); anything else -> str(), e.g. "x + 1" or "[1, 2]". Linux only.
"""

from __future__ import annotations

import _thread
import atexit
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from reftune.errors import UserError
from reftune.grading import seccomp
from reftune.grading.sandbox_worker import _coerce, _render  # noqa: F401  (_render: how values are shown)

_PACKAGES = ("sympy", "mpmath", "numpy", "gmpy2")  # bound read-only into the sandbox when installed
_SANDBOX_UID = 65534  # "nobody": the uid inside the namespace, and on the host when the trainer is root
_TMP_BYTES = 64 << 20
_GRACE_S, _STARTUP_S = 5.0, 120.0  # the parent's patience with a worker: per program on top of timeout_s; to start
_HERE = os.path.dirname(os.path.abspath(__file__))


class SandboxUnavailable(UserError, RuntimeError):
    """The isolation cannot be set up on this host: the CLI prints the one-line reason (a UserError)."""


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




# ------------------------------------------------------------------------------------------------ parent side

def _readable_by_others(path: str) -> bool:
    """Could uid 65534 bind `path`: readable by others, and every directory on the way searchable by others."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        while True:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                return False
            if path == "/":
                return True
            path = os.path.dirname(path)
    except OSError:
        return False


def _sandbox_layout() -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
    """(read-only binds (host path, sandbox path), symlinks (target, path), the Python executable)."""
    import importlib.util
    import sysconfig
    python = os.path.realpath(sys.executable)
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    libs = [d for d in (f"/usr/lib/{multiarch}" if multiarch else "/usr/lib", "/usr/lib64") if os.path.isdir(d)]
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    dynload = [os.path.realpath(p) for p in sys.path if p.endswith("lib-dynload") and os.path.isdir(p)]
    libpython = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or "")
    binds = [(d, d) for d in libs] + [(python, python), (stdlib, stdlib)]
    binds += [(d, d) for d in dynload if not d.startswith(stdlib + "/")]
    if os.path.isfile(libpython) and not any(libpython.startswith(d + "/") for d in libs):
        binds.append((os.path.realpath(libpython), libpython))
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not (spec.submodule_search_locations or spec.origin):
            continue
        where = list(spec.submodule_search_locations or [spec.origin])[0]
        binds.append((where, f"/sandbox/site/{os.path.basename(where)}"))
        wheel_libs = os.path.join(os.path.dirname(where), name + ".libs")  # a wheel's bundled shared libraries
        if os.path.isdir(wheel_libs):
            binds.append((wheel_libs, f"/sandbox/site/{name}.libs"))
    binds += [(os.path.join(_HERE, "sandbox_worker.py"), "/sandbox/worker.py"),
              (os.path.join(_HERE, "seccomp.py"), "/sandbox/seccomp.py")]
    links = [(os.readlink(p), p) for p in ("/lib", "/lib64") if os.path.islink(p)]
    binds += [(p, p) for p in ("/lib", "/lib64") if os.path.isdir(p) and not os.path.islink(p)]
    return binds, links, python


def _bwrap_launch() -> tuple[list[str], list[str], dict]:
    """(bwrap's options, the worker's command inside, Popen kwargs) for a sandbox of this interpreter."""
    binds, links, python = _sandbox_layout()
    args = ["bwrap", "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--new-session",
            "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID), "--hostname", "sandbox", "--clearenv"]
    for src, dest in binds:
        args += ["--ro-bind", src, dest]
    for target, path in links:
        args += ["--symlink", target, path]
    args += ["--dev", "/dev", "--remount-ro", "/dev", "--size", str(_TMP_BYTES), "--tmpfs", "/tmp",
             "--remount-ro", "/", "--chdir", "/tmp"]
    as_nobody = os.geteuid() == 0 and all(_readable_by_others(src) for src, _ in binds)
    kwargs = {"user": _SANDBOX_UID, "group": _SANDBOX_UID, "extra_groups": []} if as_nobody else {}
    return args, [python, "-I", "-S", "/sandbox/worker.py"], kwargs


_probed: dict[tuple, str | None] = {}


def _seccomp_pipe(args: list[str]) -> tuple[list[str], list[int]]:
    """bwrap's options with `--seccomp FD` added, and FD: a pipe holding the sandbox filter."""
    r, w = os.pipe()
    os.write(w, seccomp.sandbox_filter())  # a few hundred bytes: fits in the pipe
    os.close(w)
    return args + ["--seccomp", str(r)], [r]


def _probe(args: list[str], python: list[str], kwargs: dict, with_seccomp: bool) -> None:
    """Raise a one-line RuntimeError if bubblewrap cannot start this sandbox here (once per process)."""
    key = (shutil.which("bwrap"), with_seccomp, *args)
    if key not in _probed:
        args, fds = _seccomp_pipe(args) if with_seccomp else (args, [])
        try:
            if key[0] is None:
                raise OSError("bwrap not found")
            done = subprocess.run(args + [python[0], "-I", "-S", "-c", "import math"], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=60, cwd="/", pass_fds=fds, **kwargs)
            _probed[key] = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
        except (OSError, subprocess.SubprocessError) as e:
            _probed[key] = str(e)
        finally:
            for fd in fds:
                os.close(fd)
    if _probed[key] is not None:
        raise SandboxUnavailable(f"sandbox: bubblewrap cannot start here ({_probed[key]}); install it (apt-get install "
                           f"bubblewrap) on a kernel that allows user namespaces, or set REFTUNE_SANDBOX=process "
                           f"for the weaker process-only sandbox (see reftune.grading.sandbox)")


class _Worker:
    """One worker process (bwrap and the Python in it); requests and replies are single JSON lines on its
    stdin/stdout."""

    def __init__(self, config: dict, launch: tuple[list[str], list[str], dict]):
        self.config, self.buf, self.cap = config, b"", 8 * config["max_output_bytes"] + (1 << 20)
        self.retired = False  # it said it would exit after its last reply
        args, python, kwargs = launch
        with_seccomp = config["isolation"] == "bwrap" and config["seccomp"]
        args, fds = _seccomp_pipe(args) if with_seccomp else (args, [])
        try:
            self.proc = subprocess.Popen(args + python + ["--worker", json.dumps(config)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, pass_fds=fds, env={},
                                         cwd=config["cwd"], start_new_session=True, **kwargs)
        finally:
            for fd in fds:
                os.close(fd)

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
        """Let the worker exit (EOF on its stdin); SIGKILL its process group if asked or if it does not. Killing
        bwrap kills the whole sandbox: its init dies with it (--die-with-parent) and the pid namespace with it."""
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
    """A pool of sandbox workers, created once and reused for every batch. Thread-safe (calls serialize).

    isolation: "bwrap" (the default; REFTUNE_SANDBOX overrides it) or "process" (the weaker mode in the module
    docstring). After construction: `isolation`, `seccomp` (filters in force), `network_isolated`, and `host_uid`
    (the uid the programs have on the host)."""

    def __init__(self, workers: int | None = None, timeout_s: float = 3.0, memory_mb: int = 1024,
                 max_output_bytes: int = 16384, entry: str = "solution", isolation: str | None = None):
        isolation = isolation or os.environ.get("REFTUNE_SANDBOX") or "bwrap"
        if timeout_s <= 0 or memory_mb < 64 or max_output_bytes < 1 or not entry.isidentifier() \
                or isolation not in ("bwrap", "process"):
            raise ValueError("sandbox: need timeout_s > 0, memory_mb >= 64, max_output_bytes >= 1, entry a name, "
                             "isolation 'bwrap' or 'process'")
        n = workers or 2 * len(os.sched_getaffinity(0))
        config = {"timeout_s": timeout_s, "memory_mb": memory_mb, "max_output_bytes": max_output_bytes,
                  "entry": entry, "isolation": isolation, "seccomp": seccomp.supported()}
        if isolation == "bwrap":
            launch = _bwrap_launch()
            _probe(*launch, with_seccomp=config["seccomp"])
            config.update(tmp_root="/tmp", cwd="/", seccomp_py="/sandbox/seccomp.py", path=["/sandbox/site"])
            self.host_uid = launch[2].get("user", os.geteuid())
        else:
            shm = "/dev/shm"  # tmpfs: the per-program mkdtemp + rmtree is ~100x cheaper there than on ext4
            tmp_root = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else tempfile.gettempdir()
            launch = ([], [sys.executable, "-I", os.path.join(_HERE, "sandbox_worker.py")], {})
            config.update(tmp_root=tmp_root, cwd=tmp_root, seccomp_py=os.path.join(_HERE, "seccomp.py"), path=[])
            self.host_uid = os.geteuid()
        self.isolation, self.seccomp, self.network_isolated = isolation, config["seccomp"], isolation == "bwrap"
        self.timeout_s, self.max_output_bytes, self._lock = timeout_s, max_output_bytes, _thread.allocate_lock()
        self._launch = launch
        self._workers = [_Worker({**config, "sympy": False}, launch) for _ in range(n)]
        self._workers += [_Worker({**config, "sympy": True}, launch) for _ in range(max(1, n // 2))]
        try:
            for worker in self._workers:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    def _replace(self, slot: int) -> _Worker:
        self._workers[slot].close(kill=True)
        self._workers[slot] = _Worker(self._workers[slot].config, self._launch)
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
                        if worker.retired or worker.proc.poll() is not None:
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
                        self._workers[slot].retired = msg.get("retire") is True
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


def descendants(pid: int) -> list[int]:
    """Host pids below `pid`, read from the host's /proc (the trainer sees every sandbox's pid namespace from
    outside): how the tests and the bench count a pool's processes."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit():
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass  # exited meanwhile
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [p for p, parent in parents.items() if parent == pid]
        found += kids
        todo += kids
    return found


def pool_pids(sandbox: ProgramSandbox) -> list[int]:
    """Every host process of a pool: each worker's bubblewrap and all its descendants."""
    return [pid for w in sandbox._workers for pid in [w.proc.pid, *descendants(w.proc.pid)]]

