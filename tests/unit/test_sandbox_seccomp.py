"""The sandbox's seccomp filter (node_workers/sandbox/seccomp.py), without a kernel: the BPF
program run through the module's evaluator, the syscall tables against the kernel headers of
this machine, and the Docker profile's shape. The filter installed for real is tested in
tests/integration/test_code_run.py."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from node_workers.sandbox.seccomp import (
    _AARCH64,
    _X86_64,
    CLONE_NAMESPACE_FLAGS,
    DENIED,
    SUPPORTED_ARCHES,
    bpf_program,
    docker_profile,
    docker_security_opt,
    evaluate,
)

X86 = SUPPORTED_ARCHES["x86_64"].audit_arch
ARM = SUPPORTED_ARCHES["aarch64"].audit_arch
AUDIT_ARCH_I386 = 0x40000003
CLONE_THREAD_FLAGS = 0x3D0F00  # what glibc's pthread_create passes


def _header_numbers(path: Path, pattern: str) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for match in re.finditer(pattern, path.read_text()):
        numbers[match.group(1)] = int(match.group(2))
    return numbers


@pytest.mark.parametrize(
    ("table", "header", "pattern"),
    [
        (
            _X86_64,
            Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
            r"#define __NR_(\w+)\s+(\d+)",
        ),
        (
            _AARCH64,
            Path("/usr/include/asm-generic/unistd.h"),
            r"#define __NR(?:3264)?_(\w+)\s+(\d+)",
        ),
    ],
)
def test_syscall_numbers_match_the_kernel_headers(
    table: dict[str, int], header: Path, pattern: str
) -> None:
    if not header.exists():
        pytest.skip(f"{header} not installed (linux-libc-dev)")
    known = _header_numbers(header, pattern)
    wrong = {name: (nr, known.get(name)) for name, nr in table.items() if known.get(name) != nr}
    assert wrong == {}


def test_every_denied_call_is_in_the_x86_64_table() -> None:
    assert set(DENIED) <= set(_X86_64)
    # aarch64 lacks only x86's legacy calls
    assert set(DENIED) - set(_AARCH64) == {
        "iopl",
        "ioperm",
        "create_module",
        "get_kernel_syms",
        "query_module",
        "uselib",
        "ustat",
        "sysfs",
        "_sysctl",
    }


@pytest.mark.parametrize(
    ("arch", "audit", "table"), [("x86_64", X86, _X86_64), ("aarch64", ARM, _AARCH64)]
)
def test_the_filter_denies_the_table_and_allows_the_rest(
    arch: str, audit: int, table: dict[str, int]
) -> None:
    program = bpf_program(arch)
    assert len(program) % 8 == 0
    for name in DENIED:
        if name in table:
            verdict = evaluate(program, arch=audit, nr=table[name])
            assert (verdict.allowed, verdict.errno) == (False, errno.EPERM), name
    assert evaluate(program, arch=audit, nr=table["clone3"]).errno == errno.ENOSYS
    denied = {table[name] for name in DENIED if name in table} | {table["clone3"]}
    special = {table["clone"], table["personality"]}
    for nr in range(0, 460):
        if nr not in denied | special:
            assert evaluate(program, arch=audit, nr=nr).allowed, nr


def test_clone_with_namespace_flags_is_denied_threads_and_forks_pass() -> None:
    program, clone = bpf_program("x86_64"), _X86_64["clone"]
    assert evaluate(program, arch=X86, nr=clone, args=(CLONE_THREAD_FLAGS,)).allowed
    assert evaluate(program, arch=X86, nr=clone, args=(0x01200011,)).allowed  # fork() via clone
    for bit in range(32):
        flag = 1 << bit
        verdict = evaluate(program, arch=X86, nr=clone, args=(CLONE_THREAD_FLAGS | flag,))
        assert verdict.allowed == (not flag & CLONE_NAMESPACE_FLAGS), hex(flag)
    user_ns = evaluate(program, arch=X86, nr=clone, args=(0x10000000,))
    assert (user_ns.allowed, user_ns.errno) == (False, errno.EPERM)


def test_personality_allows_plain_personas_only() -> None:
    program, nr = bpf_program("x86_64"), _X86_64["personality"]
    for allowed in (0, 8, 0x20000, 0x20008):
        assert evaluate(program, arch=X86, nr=nr, args=(allowed,)).allowed, hex(allowed)
    # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, the query
    for trick in (0x0040000, 0x0400000, 0x0100000, 0xFFFFFFFF, 0x80040000):
        assert not evaluate(program, arch=X86, nr=nr, args=(trick,)).allowed, hex(trick)


def test_foreign_abis_are_denied() -> None:
    program = bpf_program("x86_64")
    getpid = 39
    assert evaluate(program, arch=X86, nr=getpid).allowed
    # x32 shares x86_64's audit arch; its numbers carry bit 30
    x32 = evaluate(program, arch=X86, nr=0x40000000 | getpid)
    assert (x32.allowed, x32.errno) == (False, errno.EPERM)
    # i386 through int 0x80: another audit arch, other numbers (20 is its getpid)
    i386 = evaluate(program, arch=AUDIT_ARCH_I386, nr=20)
    assert (i386.allowed, i386.errno) == (False, errno.EPERM)
    assert not evaluate(bpf_program("aarch64"), arch=X86, nr=getpid).allowed


def test_the_program_is_reproducible_and_unknown_arches_are_refused() -> None:
    assert bpf_program("x86_64") == bpf_program("x86_64")
    with pytest.raises(ValueError, match="riscv64"):
        bpf_program("riscv64")
    assert bpf_program("amd64") == bpf_program("x86_64")


def test_docker_profile_carries_the_same_rules() -> None:
    profile = docker_profile("x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"]
    rules = profile["syscalls"]
    assert rules[0]["names"] == list(DENIED) and rules[0]["errnoRet"] == errno.EPERM
    assert rules[1] == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}
    clone_bits = [r["args"][0]["value"] for r in rules if r["names"] == ["clone"]]
    assert sum(clone_bits) == CLONE_NAMESPACE_FLAGS
    for rule in rules[2:]:
        (condition,) = rule["args"]
        assert condition["op"] == "SCMP_CMP_MASKED_EQ"
        assert condition["value"] == condition["valueTwo"]  # "this bit is set"
    assert docker_profile("arm64")["architectures"] == ["SCMP_ARCH_AARCH64"]
    option = docker_security_opt("x86_64")
    assert option.startswith("seccomp=") and json.loads(option[8:]) == profile
