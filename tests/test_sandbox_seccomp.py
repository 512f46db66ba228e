"""The sandbox's seccomp filters, read by a small classic-BPF interpreter (the subset they use): what each one
answers for a given syscall, its arguments and the calling ABI. No kernel involved; tests/test_sandbox.py shows
the same rules at work in the sandbox."""

from __future__ import annotations

import struct

import pytest

from reftune.grading import seccomp
from reftune.grading.seccomp import NR as _NR

NR = {**_NR, "read": 0}
ALLOW, KILL = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38
X86_64, I386 = 0xC000003E, 0x40000003
SIGCHLD, THREAD = 17, 0x003D0F00  # fork's flags; pthread_create's (CLONE_VM | ... | CLONE_THREAD | ...)


def run(filter_bytes: bytes, nr: int, *args: int, arch: int = X86_64) -> int:
    """What the filter returns for the syscall `nr` with these arguments (seccomp_data: nr, arch, ip, args)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    prog = [struct.unpack_from("=HBBI", filter_bytes, i) for i in range(0, len(filter_bytes), 8)]
    a, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:  # A = 32-bit word at offset k
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:
            return k
        else:
            taken = {0x15: a == k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if taken else jf
        pc += 1


@pytest.mark.parametrize("call, answer", [
    (("read", 0, 0, 100), ALLOW),
    (("clone", SIGCHLD), EPERM),  # fork
    (("clone", THREAD), ALLOW),  # a thread
    (("clone3",), ENOSYS),
    (("fork",), EPERM), (("vfork",), EPERM), (("execve",), EPERM),
    (("kill", 4242, 9), ALLOW), (("kill", 0, 9), ALLOW),  # itself; its own group (it is alone in it)
    (("kill", 2, 19), EPERM), (("kill", 1, 9), EPERM), (("kill", 2**32 - 1, 9), EPERM),  # the worker, init, -1
    (("tgkill", 4242, 4243, 6), ALLOW), (("tgkill", 2, 2, 19), EPERM), (("tkill", 2, 19), EPERM),
    (("rt_sigqueueinfo", 2, 19, 0), EPERM), (("prlimit64", 0, 7), ALLOW), (("prlimit64", 2, 0), EPERM),
    (("fcntl", 3, 8, 2), EPERM), (("fcntl", 3, 15, 0), EPERM), (("fcntl", 3, 3), ALLOW),  # F_SETOWN(_EX); F_GETFL
    (("ioctl", 3, 0x8901, 0), EPERM), (("ioctl", 3, 0x5401, 0), ALLOW),  # FIOSETOWN; TCGETS
    (("socket", 1, 1, 0), EPERM), (("shmget", 1, 4096, 0), EPERM), (("pidfd_open", 2, 0), EPERM),
    (("setpriority", 0, 0, 19), EPERM),
])
def test_program_filter(call, answer):
    name, *args = call
    assert run(seccomp.program_filter(4242), NR[name], *args) == answer


@pytest.mark.parametrize("call, answer", [
    (("read", 0, 0, 100), ALLOW),
    (("clone", SIGCHLD), ALLOW),  # the worker forks its children
    (("clone", SIGCHLD | 0x10000000), EPERM), (("clone", SIGCHLD | 0x40000000), EPERM),  # NEWUSER, NEWNET
    (("clone3",), ENOSYS),
    (("kill", 3, 9), ALLOW),  # the worker kills its children
    (("ptrace", 16, 2), EPERM), (("mount",), EPERM), (("unshare", 0x10000000), EPERM), (("setns", 3, 0), EPERM),
    (("bpf",), EPERM), (("perf_event_open",), EPERM), (("userfaultfd",), EPERM), (("io_uring_setup",), EPERM),
    (("keyctl",), EPERM), (("process_vm_writev", 2), EPERM), (("pidfd_getfd", 3, 1), EPERM),
])
def test_sandbox_filter(call, answer):
    name, *args = call
    assert run(seccomp.sandbox_filter(), NR[name], *args) == answer


@pytest.mark.parametrize("filter_bytes", [seccomp.sandbox_filter(), seccomp.program_filter(4242)])
def test_other_abis_are_killed(filter_bytes):
    assert run(filter_bytes, 2, arch=I386) == KILL  # int 0x80: i386 fork
    assert run(filter_bytes, 0x40000000 + 57) == KILL  # x32 fork
    assert run(filter_bytes, 0x40000000) == KILL


def test_the_prepared_installer_patches_only_the_pid():
    marker, pid = 0x7FFFFFF1, 4242
    assert seccomp.program_filter(marker).replace(struct.pack("=I", marker), struct.pack("=I", pid)) == \
        seccomp.program_filter(pid)
