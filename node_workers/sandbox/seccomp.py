"""The sandbox's seccomp filter: one rule table, compiled for both backends (pure).

bubblewrap takes a compiled classic-BPF program (``bwrap --seccomp FD``): :func:`bpf_program`
assembles it here, in Python, with no libseccomp and no compiler on the worker, byte for byte
the same on every run (docs/decisions/0042-sandbox-seccomp-and-maximums.md). Docker takes a
profile in libseccomp's JSON terms (``security_opt=["seccomp=<json>"]``): :func:`docker_profile`
writes the same rules by name and runc compiles them.

The filter is a deny list on top of what the sandbox already removes (capabilities, the user
namespace's lack of host privilege): it shuts the kernel surfaces that have no business in user
code and a history of local privilege escalations -- keyrings, eBPF, perf, io_uring, mounts,
ptrace and cross-process memory access, module and kexec loading, namespaces, userfaultfd,
file handles, clocks, swap, reboot. Everything else is allowed, so interpreters and their
libraries keep working. Rules:

- the names in :data:`DENIED` fail with ``EPERM``;
- ``clone3`` fails with ``ENOSYS``: its flags live in a struct seccomp cannot read, and glibc
  (2.34+) falls back to ``clone`` on ENOSYS, whose flags it can;
- ``clone`` with any ``CLONE_NEW*`` flag fails with ``EPERM`` (threads and forks pass);
- ``personality`` with anything but a plain persona (``PER_LINUX``, ``PER_LINUX32``, optionally
  ``UNAME26``) fails with ``EPERM``: no ``ADDR_NO_RANDOMIZE``, ``READ_IMPLIES_EXEC``,
  ``MMAP_PAGE_ZERO`` ... (the ``0xffffffff`` query too);
- a call of another ABI than the worker's native one (i386 through ``int 0x80``, the x32 ABI's
  numbers with bit 30 set, which share x86_64's audit arch) fails with ``EPERM``: the number
  tables below are the native ones, and a foreign ABI would bypass them.
"""

from __future__ import annotations

import errno
import json
import platform
import struct
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CLONE_NAMESPACE_FLAGS",
    "DENIED",
    "ENOSYS_CALLS",
    "PERSONA_FORBIDDEN_BITS",
    "SUPPORTED_ARCHES",
    "SeccompVerdict",
    "bpf_program",
    "docker_profile",
    "docker_security_opt",
    "evaluate",
    "native_arch",
]

DENIED: Final[tuple[str, ...]] = (
    # kernel keyrings
    "keyctl",
    "add_key",
    "request_key",
    # eBPF programs and maps, perf events (both: frequent privilege-escalation surfaces)
    "bpf",
    "perf_event_open",
    # io_uring: bypasses syscall filtering for the operations it performs
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # mounts (old and new API) and the root
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    # other processes' memory and state
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "move_pages",
    "migrate_pages",
    # kernel code
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    # namespaces: bwrap has set them up before the filter is installed
    "unshare",
    "setns",
    # page-fault handling from user space (widens kernel race windows)
    "userfaultfd",
    # file handles bypass path-based confinement
    "open_by_handle_at",
    "name_to_handle_at",
    "fanotify_init",
    # the machine itself
    "reboot",
    "swapon",
    "swapoff",
    "clock_settime",
    "clock_adjtime",
    "settimeofday",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "acct",
    "quotactl",
    "syslog",
    "vhangup",
    "lookup_dcookie",
    "nfsservctl",
    # x86 only: I/O ports, obsolete module and sysctl interfaces
    "iopl",
    "ioperm",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
)
ENOSYS_CALLS: Final[tuple[str, ...]] = ("clone3",)
# CLONE_NEWTIME | NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NAMESPACE_FLAGS: Final = 0x00000080 | 0x00020000 | 0x7E000000
# Everything but the persona type (low byte) and UNAME26 (0x0020000).
PERSONA_FORBIDDEN_BITS: Final = 0xFFFFFF00 & ~0x0020000

# Native syscall numbers, from the kernel's uapi headers (x86_64: asm/unistd_64.h; aarch64:
# asm-generic/unistd.h). tests/unit/test_sandbox_seccomp.py checks them against the headers
# installed on the machine where they exist.
_X86_64: Final[dict[str, int]] = {
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "bpf": 321,
    "perf_event_open": 298,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "open_tree": 428,
    "move_mount": 429,
    "mount_setattr": 442,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "pidfd_getfd": 438,
    "move_pages": 279,
    "migrate_pages": 256,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "unshare": 272,
    "setns": 308,
    "userfaultfd": 323,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "fanotify_init": 300,
    "reboot": 169,
    "swapon": 167,
    "swapoff": 168,
    "clock_settime": 227,
    "clock_adjtime": 305,
    "settimeofday": 164,
    "adjtimex": 159,
    "sethostname": 170,
    "setdomainname": 171,
    "acct": 163,
    "quotactl": 179,
    "syslog": 103,
    "vhangup": 153,
    "lookup_dcookie": 212,
    "nfsservctl": 180,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "get_kernel_syms": 177,
    "query_module": 178,
    "uselib": 134,
    "ustat": 136,
    "sysfs": 139,
    "_sysctl": 156,
    "clone3": 435,
    "clone": 56,
    "personality": 135,
}
_AARCH64: Final[dict[str, int]] = {
    "keyctl": 219,
    "add_key": 217,
    "request_key": 218,
    "bpf": 280,
    "perf_event_open": 241,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "mount": 40,
    "umount2": 39,
    "pivot_root": 41,
    "chroot": 51,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "open_tree": 428,
    "move_mount": 429,
    "mount_setattr": 442,
    "ptrace": 117,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "pidfd_getfd": 438,
    "move_pages": 239,
    "migrate_pages": 238,
    "kexec_load": 104,
    "kexec_file_load": 294,
    "init_module": 105,
    "finit_module": 273,
    "delete_module": 106,
    "unshare": 97,
    "setns": 268,
    "userfaultfd": 282,
    "open_by_handle_at": 265,
    "name_to_handle_at": 264,
    "fanotify_init": 262,
    "reboot": 142,
    "swapon": 224,
    "swapoff": 225,
    "clock_settime": 112,
    "clock_adjtime": 266,
    "settimeofday": 170,
    "adjtimex": 171,
    "sethostname": 161,
    "setdomainname": 162,
    "acct": 89,
    "quotactl": 60,
    "syslog": 116,
    "vhangup": 58,
    "lookup_dcookie": 18,
    "nfsservctl": 42,
    "clone3": 435,
    "clone": 220,
    "personality": 92,
}


@dataclass(frozen=True, slots=True)
class _Arch:
    audit_arch: int
    """``AUDIT_ARCH_*`` as seccomp_data.arch reports it."""
    numbers: dict[str, int]
    x32_bit: bool
    """Whether the x32 ABI shares this audit arch (numbers with bit 30 set)."""
    docker_name: str


SUPPORTED_ARCHES: Final[dict[str, _Arch]] = {
    "x86_64": _Arch(0xC000003E, _X86_64, True, "SCMP_ARCH_X86_64"),
    "aarch64": _Arch(0xC00000B7, _AARCH64, False, "SCMP_ARCH_AARCH64"),
}
X32_SYSCALL_BIT: Final = 0x40000000

# Classic BPF (linux/filter.h, linux/seccomp.h).
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_JSET_K: Final = 0x45
_RET_K: Final = 0x06
RET_ALLOW: Final = 0x7FFF0000
RET_ERRNO: Final = 0x00050000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_OFFSET_NR: Final = 0
_OFFSET_ARCH: Final = 4
_OFFSET_ARG0_LOW: Final = 16  # little-endian: the low 32 bits of args[0] come first


def native_arch(machine: str | None = None) -> str:
    """``x86_64`` / ``aarch64`` for this machine (or a ``uname -m`` / Docker spelling)."""
    machine = (machine or platform.machine()).lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _supported(arch: str) -> str:
    arch = native_arch(arch)
    if arch not in SUPPORTED_ARCHES:
        raise ValueError(
            f"Expected a machine of {sorted(SUPPORTED_ARCHES)} for the sandbox's seccomp "
            f"filter, but this one is {arch!r} (SandboxConfig.seccomp=False runs without it)"
        )
    return arch


@dataclass(frozen=True, slots=True)
class _Insn:
    code: int
    k: int
    jt: str | int = 0
    jf: str | int = 0


@dataclass(frozen=True, slots=True)
class _Label:
    name: str


def _assemble(items: list[_Insn | _Label]) -> list[tuple[int, int, int, int]]:
    """Resolve label jumps to the relative offsets classic BPF wants (forward, < 256)."""
    labels: dict[str, int] = {}
    index = 0
    for item in items:
        if isinstance(item, _Label):
            labels[item.name] = index
        else:
            index += 1
    out: list[tuple[int, int, int, int]] = []
    for item in items:
        if isinstance(item, _Label):
            continue
        here = len(out)

        def offset(target: str | int, here: int = here) -> int:
            if isinstance(target, int):
                return target
            distance = labels[target] - here - 1
            if not 0 <= distance <= 255:
                raise ValueError(f"BPF jump to {target} out of range ({distance})")
            return distance

        out.append((item.code, offset(item.jt), offset(item.jf), item.k))
    return out


def _instructions(arch: str) -> list[tuple[int, int, int, int]]:
    spec = SUPPORTED_ARCHES[arch]
    numbers = spec.numbers
    items: list[_Insn | _Label] = [
        _Insn(_LD_W_ABS, _OFFSET_ARCH),
        _Insn(_JEQ_K, spec.audit_arch, 0, "foreign"),
        _Insn(_LD_W_ABS, _OFFSET_NR),
    ]
    if spec.x32_bit:
        items.append(_Insn(_JGE_K, X32_SYSCALL_BIT, "foreign", 0))
    items += [_Insn(_JEQ_K, numbers[name], "deny", 0) for name in DENIED if name in numbers]
    items += [_Insn(_JEQ_K, numbers[name], "enosys", 0) for name in ENOSYS_CALLS]
    items += [
        _Insn(_JEQ_K, numbers["clone"], "clone", 0),
        _Insn(_JEQ_K, numbers["personality"], "personality", 0),
        _Insn(_RET_K, RET_ALLOW),
        _Label("clone"),
        _Insn(_LD_W_ABS, _OFFSET_ARG0_LOW),
        _Insn(_JSET_K, CLONE_NAMESPACE_FLAGS, "deny", "allow"),
        _Label("personality"),
        _Insn(_LD_W_ABS, _OFFSET_ARG0_LOW),
        _Insn(_JSET_K, PERSONA_FORBIDDEN_BITS, "deny", "allow"),
        _Label("allow"),
        _Insn(_RET_K, RET_ALLOW),
        _Label("deny"),
        _Insn(_RET_K, RET_ERRNO | errno.EPERM),
        _Label("enosys"),
        _Insn(_RET_K, RET_ERRNO | errno.ENOSYS),
        _Label("foreign"),
        _Insn(_RET_K, RET_ERRNO | errno.EPERM),
    ]
    return _assemble(items)


def bpf_program(arch: str | None = None) -> bytes:
    """The filter as ``struct sock_filter[]`` (what ``bwrap --seccomp FD`` reads)."""
    arch = _supported(arch or native_arch())
    return b"".join(struct.pack("<HBBI", *insn) for insn in _instructions(arch))


@dataclass(frozen=True, slots=True)
class SeccompVerdict:
    allowed: bool
    errno: int | None = None


def evaluate(program: bytes, *, arch: int, nr: int, args: tuple[int, ...] = ()) -> SeccompVerdict:
    """Run ``program`` on one syscall the way the kernel would (the instructions the assembler
    emits only): how the unit tests check the filter without a kernel."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    for _ in range(len(insns) + 1):
        code, jt, jf, k = insns[pc]
        if code == _LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (_JEQ_K, _JGE_K, _JSET_K):
            taken = {_JEQ_K: acc == k, _JGE_K: acc >= k, _JSET_K: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == _RET_K:
            if k == RET_ALLOW:
                return SeccompVerdict(True)
            if k & 0xFFFF0000 == RET_ERRNO:
                return SeccompVerdict(False, k & 0xFFFF)
            raise ValueError(f"unexpected return {k:#x}")
        else:
            raise ValueError(f"unexpected instruction {code:#x}")
    raise ValueError("program did not return")


def docker_profile(arch: str | None = None) -> dict[str, Any]:
    """The same rules as a Docker seccomp profile (allow by default, deny the table) for the
    engine's architecture (``docker info``'s ``Architecture``). Only that one is listed:
    libseccomp gives calls of any other ABI (i386, x32) its bad-architecture action, a
    failure, not an unfiltered pass."""
    arch = _supported(arch or native_arch())
    bit_rules: list[dict[str, Any]] = []
    for name, mask in (("clone", CLONE_NAMESPACE_FLAGS), ("personality", PERSONA_FORBIDDEN_BITS)):
        # libseccomp cannot say "any of these bits": one rule per bit (rules of one call OR).
        for bit in (1 << i for i in range(32)):
            if mask & bit:
                bit_rules.append(
                    {
                        "names": [name],
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": errno.EPERM,
                        "args": [
                            {"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}
                        ],
                    }
                )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [SUPPORTED_ARCHES[arch].docker_name],
        "syscalls": [
            {"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
            {"names": list(ENOSYS_CALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            *bit_rules,
        ],
    }


def docker_security_opt(arch: str | None = None) -> str:
    """``security_opt`` entry carrying the profile (what ``docker run --security-opt
    seccomp=FILE`` sends: the file's content)."""
    return "seccomp=" + json.dumps(docker_profile(arch), separators=(",", ":"))
