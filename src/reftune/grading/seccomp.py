"""Seccomp-BPF filters for the program sandbox, assembled here for x86_64 (no libseccomp needed).

Both are deny lists: a refused call fails with EPERM (clone3 with ENOSYS, so that glibc falls back to clone, whose
flags a filter can read), a call from another ABI (i386 `int 0x80`, x32) kills the process.
- `sandbox_filter()`: loaded by bubblewrap (`--seccomp`) on the whole sandbox, worker included, right before it
  starts Python: no ptrace or process_vm_*, no mount / namespaces / keyrings / bpf / perf / userfaultfd /
  io_uring / kernel modules / clock setting / file handles, no pidfd_getfd, no clone with namespace flags.
- `program_filter(pid)`: stacked by the worker's child on itself just before the program runs (filters only add
  up): no new process (clone only with CLONE_THREAD, no fork/vfork/exec), signals and prlimit only to itself
  (nor SIGIO to others: no F_SETOWN / FIOSETOWN), no pidfd, no scheduling of anyone, no sockets, no SysV / POSIX
  IPC objects (they would outlive the program).
`supported()` is False on other architectures; the sandbox then runs without seccomp and says so.
"""

from __future__ import annotations

import os
import struct

_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
_KILL, _ALLOW, _ERRNO = 0x80000000, 0x7FFF0000, 0x00050000  # SECCOMP_RET_KILL_PROCESS / ALLOW / ERRNO
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
CLONE_NEW_ANY = 0x7E020080  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME

NR = {  # asm/unistd_64.h
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "ptrace": 101, "syslog": 103,
    "rt_sigqueueinfo": 129, "uselib": 134, "personality": 135, "setpriority": 141, "sched_setparam": 142,
    "sched_setscheduler": 144, "vhangup": 153, "modify_ldt": 154, "pivot_root": 155, "adjtimex": 159,
    "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "nfsservctl": 180, "tkill": 200, "sched_setaffinity": 203, "lookup_dcookie": 212, "clock_settime": 227,
    "tgkill": 234, "mq_open": 240, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "ioprio_set": 251, "migrate_pages": 256, "unshare": 272, "move_pages": 279, "rt_tgsigqueueinfo": 297,
    "perf_event_open": 298, "fanotify_init": 300, "prlimit64": 302, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "sched_setattr": 314, "kexec_file_load": 320,
    "bpf": 321, "execveat": 322, "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438,
    "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443, "process_mrelease": 448,
    "socket": 41, "shmget": 29, "semget": 64, "msgget": 68, "ioctl": 16, "fcntl": 72,
}
_SANDBOX_DENY = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    "process_mrelease", "migrate_pages", "move_pages", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl", "add_key",
    "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "syslog", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "personality",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "quotactl", "quotactl_fd", "nfsservctl", "uselib",
    "vhangup", "iopl", "ioperm", "modify_ldt", "fanotify_init")
_PROGRAM_DENY = ("fork", "vfork", "execve", "execveat", "tkill", "pidfd_open", "pidfd_send_signal", "setpriority",
                 "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr", "ioprio_set",
                 "socket", "shmget", "semget", "msgget", "mq_open")
_PROGRAM_SELF_ONLY = (("kill", 0), ("rt_sigqueueinfo", 0), ("tgkill", 0), ("rt_tgsigqueueinfo", 0),
                      ("prlimit64", 0))  # (syscall, index of its pid argument)
# who gets SIGIO (or the F_SETSIG signal) when a file is ready: another process, signalled past the kill rules
_PROGRAM_DENY_COMMANDS = (("fcntl", 1, (8, 15)),  # F_SETOWN, F_SETOWN_EX
                          ("ioctl", 1, (0x8901, 0x8902)))  # FIOSETOWN, SIOCSPGRP


def supported() -> bool:
    return os.uname().sysname == "Linux" and os.uname().machine == "x86_64"


def _ld(offset: int) -> tuple:
    return (_LD, 0, 0, offset)


def _ret(value: int) -> tuple:
    return (_RET, 0, 0, value)


def _arg(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of seccomp_data.args[i] (little endian); pids and clone flags live there


def _header() -> list[tuple]:
    return [_ld(4), (_JEQ, 1, 0, _ARCH_X86_64), _ret(_KILL), _ld(0), (_JGE, 0, 1, _X32_BIT), _ret(_KILL)]


def _deny(name: str, errno: int = EPERM) -> list[tuple]:
    return [(_JEQ, 0, 1, NR[name]), _ret(_ERRNO | errno)]


def _guarded(name: str, body: list[tuple]) -> list[tuple]:
    """`body` (which ends in returns) runs for syscall `name` only; it clobbers A, hence the returns."""
    return [(_JEQ, 0, len(body), NR[name]), *body]


def _assemble(blocks: list[tuple]) -> bytes:
    return b"".join(struct.pack("=HBBI", *ins) for ins in blocks)


def sandbox_filter() -> bytes:
    """The raw sock_filter array bubblewrap's --seccomp reads from a file descriptor."""
    prog = _header()
    for name in _SANDBOX_DENY:
        prog += _deny(name)
    prog += _deny("clone3", ENOSYS)
    prog += _guarded("clone", [_ld(_arg(0)), (_JSET, 0, 1, CLONE_NEW_ANY), _ret(_ERRNO | EPERM), _ret(_ALLOW)])
    return _assemble(prog + [_ret(_ALLOW)])


def program_filter(pid: int) -> bytes:
    """The filter a program runs under, for the process `pid` (its own pid, as it sees it)."""
    prog = _header()
    for name in _PROGRAM_DENY:
        prog += _deny(name)
    prog += _deny("clone3", ENOSYS)
    prog += _guarded("clone", [_ld(_arg(0)), (_JSET, 1, 0, CLONE_THREAD), _ret(_ERRNO | EPERM), _ret(_ALLOW)])
    for name, i in _PROGRAM_SELF_ONLY:  # pid 0 means "myself" for prlimit64; for kill it means "my group", alone
        prog += _guarded(name, [_ld(_arg(i)), (_JEQ, 2, 0, pid), (_JEQ, 1, 0, 0), _ret(_ERRNO | EPERM), _ret(_ALLOW)])
    for name, i, commands in _PROGRAM_DENY_COMMANDS:
        tests = [(_JEQ, len(commands) - k, 0, c) for k, c in enumerate(commands)]
        prog += _guarded(name, [_ld(_arg(i)), *tests, _ret(_ALLOW), _ret(_ERRNO | EPERM)])
    return _assemble(prog + [_ret(_ALLOW)])


def _installer(filter_bytes: bytes):
    """A function that sets no_new_privs and stacks the filter held in a ctypes buffer on the calling thread (and
    its future threads; irreversible); and that buffer, which may be patched in place before the call."""
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prctl, ulong = ctypes.CDLL(None, use_errno=True).prctl, ctypes.c_ulong  # unsigned long: prctl is variadic
    buf = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))
    prog = SockFprog(len(filter_bytes) // 8, ctypes.addressof(buf))

    def install(_buf=buf) -> None:  # holding the buffer: the struct only has its address
        if prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:  # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if prctl(22, ulong(2), ctypes.byref(prog), ulong(0), ulong(0)) != 0:  # PR_SET_SECCOMP, MODE_FILTER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return install, buf


def install(filter_bytes: bytes) -> None:
    """Set no_new_privs and stack `filter_bytes` on the calling thread (and its future threads); irreversible."""
    _installer(filter_bytes)[0]()


def program_filter_installer():
    """Prepared once in the worker, called in each child: `install(pid)` stacks `program_filter(pid)` on the
    caller with no more work after the fork than patching the pid into a ready filter (~10 us, not ~100)."""
    marker = 0x7FFFFFF1
    template = program_filter(marker)
    k_offsets = [i + 4 for i in range(0, len(template), 8) if struct.unpack_from("=I", template, i + 4)[0] == marker]
    run, buf = _installer(template)

    def install(pid: int) -> None:
        for offset in k_offsets:
            struct.pack_into("=I", buf, offset, pid)
        run()
    return install
