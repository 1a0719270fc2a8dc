"""The host side of a run's files: a private directory per run, and safe output collection.

Layout of one run (``root`` is created with mode 0711 so the unprivileged sandbox uid can reach
its own subdirectories but not list the others):

    root/work/         -> /work      read-write, owned by the sandbox uid (entry file, out/)
    root/work/out/     -> /work/out  what is uploaded after the run
    root/in/           -> /work/in   read-only bind of the downloaded inputs

Everything under ``work/`` was written by untrusted code. Collection therefore never follows a
symlink (``out/x -> /etc/shadow`` would otherwise make the *worker* read and upload a host file),
skips anything that is not a regular file, and enforces the size and count caps itself.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from node_workers.sandbox.limits import ResourceLimits, SandboxConfig

__all__ = [
    "CollectedOutputs",
    "OutputFileOnHost",
    "RunDirectory",
    "collect_outputs",
    "directory_usage",
    "work_overflow",
]


@dataclass(frozen=True, slots=True)
class OutputFileOnHost:
    name: str
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class CollectedOutputs:
    files: list[OutputFileOnHost]
    skipped: list[str]
    """Entries that were not regular files (symlinks, fifos, sockets, devices)."""
    error_class: str | None = None
    message: str | None = None


class RunDirectory:
    """Create, populate and remove one run's directory tree."""

    def __init__(self, config: SandboxConfig) -> None:
        self._owner = (config.uid, config.gid) if os.geteuid() == 0 else None
        root = config.work_root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="reflux-sandbox-", dir=root))
        self.root.chmod(0o711)
        self.work = self.root / "work"
        self.inputs = self.root / "in"
        self.out = self.work / "out"
        for path in (self.work, self.inputs, self.out, self.work / "in"):
            path.mkdir(mode=0o700)
            self._own(path)

    def _own(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner, follow_symlinks=False)

    def _write(self, base: Path, relative: str, data: bytes, mode: int) -> Path:
        path = base / relative
        parent = path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)
            for created in [parent, *parent.parents]:
                if created == base:
                    break
                self._own(created)
        path.write_bytes(data)
        path.chmod(mode)
        self._own(path)
        return path

    def write_entry(self, entry: str, code: bytes) -> Path:
        return self._write(self.work, entry, code, 0o600)

    def write_input(self, name: str, data: bytes) -> Path:
        # Read-only for the sandbox twice over: the bind is read-only and so is the mode.
        return self._write(self.inputs, name, data, 0o400)

    def remove(self) -> None:
        # rmtree never follows symlinks; the tree may hold files of another uid (we are root).
        shutil.rmtree(self.root, ignore_errors=True)


def directory_usage(path: Path, *, stop_after: int | None = None) -> tuple[int, int]:
    """``(bytes, entries)`` under ``path`` without following symlinks; stops early past
    ``stop_after`` entries (the watchdog only needs to know that a cap is exceeded)."""
    total = entries = 0
    stack = [path]
    while stack:
        try:
            iterator = os.scandir(stack.pop())
        except OSError:
            continue
        with iterator:
            for entry in iterator:
                entries += 1
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    stack.append(Path(entry.path))
                else:
                    total += max(info.st_size, info.st_blocks * 512)
                if stop_after is not None and entries > stop_after:
                    return total, entries
    return total, entries


_BLOCK = 4096


def work_overflow(
    work: Path, limits: ResourceLimits, *, baseline: tuple[int, int] = (0, 0)
) -> str | None:
    """The watchdog's check of a running sandbox's ``/work`` (polled: RLIMIT_FSIZE bounds one
    file, not how many): why it must be killed, or ``None``. ``baseline`` is ``(bytes,
    entries)`` that do not count (the inputs, where they live inside ``work``)."""
    # Files are cheap to create and each is an inode: bound the count too.
    max_entries = limits.max_output_files * 10 + 100
    size, entries = directory_usage(work, stop_after=max_entries + baseline[1])
    size, entries = size - baseline[0], entries - baseline[1]
    # Sizes are allocated blocks, so one file at the RLIMIT_FSIZE cap (cap + 1 bytes) and the
    # entry file already count cap + 8 KiB: allow a block per entry, or the watchdog would race
    # the check after the run for a file the rlimit has already stopped (which one reported it
    # depended on whether a poll fell in the program's last milliseconds).
    if size > limits.max_output_bytes + 1 + entries * _BLOCK or entries > max_entries:
        return (
            f"Expected the work directory to stay within {limits.max_output_bytes} bytes and "
            f"{max_entries} entries, but it reached {size} bytes and {entries} entries; the "
            "sandbox was killed"
        )
    return None


def collect_outputs(out: Path, *, max_bytes: int, max_files: int) -> CollectedOutputs:
    """Regular files under ``out`` (names relative to it, sorted), within the caps."""
    files: list[OutputFileOnHost] = []
    skipped: list[str] = []
    total = 0
    stack = [out]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            name = Path(entry.path).relative_to(out).as_posix()
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                stack.append(Path(entry.path))
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append(name)
                continue
            total += info.st_size
            files.append(OutputFileOnHost(name=name, path=Path(entry.path), size=info.st_size))
            if len(files) > max_files:
                return CollectedOutputs(
                    [],
                    skipped,
                    "TooManyOutputs",
                    f"Expected at most {max_files} files in out/, but found more",
                )
            if info.st_size > max_bytes or total > max_bytes:
                return CollectedOutputs(
                    [],
                    skipped,
                    "OutputTooLarge",
                    f"Expected at most {max_bytes} bytes in out/, but {name!r} brings the total "
                    f"to {total} bytes or more",
                )
    files.sort(key=lambda f: f.name)
    return CollectedOutputs(files, skipped)


def read_regular_file(path: Path) -> bytes:
    """The file's bytes, refusing a symlink at the last component (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"Expected a regular file, but {path} is not")
        return handle.read()
