"""The bubblewrap backend: unprivileged namespaces, a minimal read-only root, rlimits.

The command (built by the pure :func:`build_command`) is

    setpriv --reuid U --regid G --clear-groups --no-new-privs --   (only when the worker is root)
    bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session
          --ro-bind /usr /usr  (+ /bin, /lib* as on the host)  --ro-bind-try <a few /etc files>
          --proc /proc --dev /dev --size S --tmpfs /dev/shm --remount-ro /dev --size N --tmpfs /tmp
          --seccomp FD   (the filter of seccomp.py, read from a pipe)
          --bind <run>/work /work --ro-bind <run>/in /work/in --chdir /work --clearenv ...
          -- prlimit <limits> -- nice -n 10 -- <interpreter> <entry>

Why each part:

- ``setpriv`` to a dedicated uid: RLIMIT_NPROC never binds root (the kernel exempts it), so a
  fork bomb is only contained when the sandbox's host uid is not 0. bubblewrap then creates the
  user namespace unprivileged, and nothing inside has a capability on the host.
- ``--unshare-all`` without ``--share-net``: a fresh network namespace with only a loopback
  interface (down), so nothing, not even the host's 127.0.0.1 services, is reachable.
- Only /usr, the /bin and /lib links, and a short list of /etc files exist: the host's /root,
  /home, /work (the project), /var, /run are absent, not merely read-only.
- ``prlimit`` runs *inside* the new user namespace, so RLIMIT_NPROC counts this sandbox's
  processes only (per-namespace ucounts), not every process of the uid.
- ``--die-with-parent`` + the pid namespace: killing the outer bwrap on a timeout kills the
  sandbox's pid 1, and with it every process the code started.
- ``/dev/shm`` is a tmpfs of its own with a size: under ``--dev`` alone it is a folder of
  /dev's tmpfs, which has none (tmpfs pages are not counted by RLIMIT_DATA); /dev itself is
  then remounted read-only (it was writable by the sandbox user, and as unsized).
- ``--seccomp``: bwrap installs the filter (with no_new_privs) right before it executes the
  command, after its own namespace and mount set-up, which the filter would refuse.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from node_workers.sandbox.backend import BackendName, RawRun, SandboxJob
from node_workers.sandbox.cgroups import CgroupV1, RunCgroup, cgroup_join_prefix
from node_workers.sandbox.errors import SandboxFailedError
from node_workers.sandbox.limits import SandboxConfig
from node_workers.sandbox.logs import HeadTailBuffer
from node_workers.sandbox.models import Lang
from node_workers.sandbox.seccomp import bpf_program
from node_workers.sandbox.workdir import work_overflow

__all__ = [
    "ETC_FILES",
    "LAUNCHER",
    "BubblewrapBackend",
    "bubblewrap_problem",
    "build_command",
    "interpreter_command",
    "program_command",
    "sandbox_env",
]

# Enough for the dynamic loader, TLS certificates, time zones and MIME types; deliberately no
# passwd/group/shadow (host user names are none of the code's business).
ETC_FILES: Final = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
)
NETWORK_ETC_FILES: Final = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf")
# The sandbox's private tmpfs, not the host's /tmp.
SANDBOX_TMP: Final = "/tmp"  # noqa: S108
SANDBOX_SHM: Final = "/dev/shm"  # noqa: S108  # the sandbox's own, sized tmpfs
ROOT_LINKS: Final = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
log = logging.getLogger(__name__)


# Runs inside the sandbox as the parent of the user's program, so the run's peak memory can be
# measured: wait4() reports the largest RSS in the program's process tree. Measuring from the
# worker does not work: bwrap's monitor never reaps its pid 1 (the rusage is lost), and a direct
# child of the worker reports the worker's own RSS (inherited across fork and exec). The floor
# is this launcher's own ~5 MB. The program could forge the number (same uid): it is a metric,
# not a limit. The report goes to file descriptor argv[1]: a pipe under bubblewrap; 2 under
# Docker, where the program's stderr is then joined to its stdout (one ordered log, as under
# bubblewrap) and the container's stderr carries only the report. "FD:SECONDS" also arms an
# alarm that ends the launcher (Docker: and with it the container) if nobody else has by then.
LAUNCHER: Final = """
import json, os, signal, sys
fd, _, alarm = sys.argv[1].partition(":")
fd = int(fd)
pid = os.fork()
if pid == 0:
    if fd == 2:
        os.dup2(1, 2)
    else:
        os.close(fd)
    os.execv(sys.argv[2], sys.argv[2:])
if alarm:
    signal.alarm(int(alarm))
_, status, usage = os.wait4(pid, 0)
os.write(fd, json.dumps({"maxrss_kib": usage.ru_maxrss}).encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""


def sandbox_env(job: SandboxJob) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/work",
        "TMPDIR": SANDBOX_TMP,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "REFLUX_IN": "/work/in",
        "REFLUX_OUT": "/work/out",
    }
    if job.packages and job.lang == "python":
        env["PYTHONPATH"] = "/work/.packages"
    env.update(job.env)
    return env


def interpreter_command(lang: Lang, entry: str, config: SandboxConfig) -> list[str]:
    interpreter = config.interpreters[lang]
    if lang == "python":
        return [interpreter, "-s", entry]  # -s: no user site-packages
    return [interpreter, entry]


def program_command(job: SandboxJob, config: SandboxConfig) -> list[str]:
    """The interpreter running the entry; with ``packages``, one shell under the same limits
    that installs them, then replaces itself with the interpreter."""
    run = interpreter_command(job.lang, job.entry, config)
    install = _install_script(job, config)
    if install is None:
        return run
    return ["/bin/sh", "-c", f'set -e; {install}; exec "$@"', "sh", *run]


def _install_script(job: SandboxJob, config: SandboxConfig) -> str | None:
    """Shell code installing ``job.packages`` into /work before the entry runs."""
    if not job.packages:
        return None
    specs = " ".join(shlex.quote(spec) for spec in job.packages)
    if job.lang == "python":
        python = shlex.quote(config.interpreters["python"])
        return (
            f"{python} -m pip install --quiet --no-cache-dir --disable-pip-version-check "
            f"--no-input --target /work/.packages -- {specs}"
        )
    if job.lang == "node":
        return f"npm install --silent --no-audit --no-fund --prefix /work -- {specs}"
    return None


def _root_entries() -> list[str]:
    """Recreate the host's top-level /bin, /lib... as they are: merged-/usr symlinks or dirs."""
    args: list[str] = []
    for path in ROOT_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def build_command(
    job: SandboxJob,
    config: SandboxConfig,
    *,
    as_root: bool,
    status_fd: int | None = None,
    usage_fd: int | None = None,
    seccomp_fd: int | None = None,
    root_entries: list[str] | None = None,
) -> list[str]:
    """The full argv for one run (pure given ``root_entries``; see the module docstring)."""
    limits = job.limits
    command: list[str] = []
    if as_root:
        command += [
            config.setpriv_path,
            f"--reuid={config.uid}",
            f"--regid={config.gid}",
            "--clear-groups",
            "--no-new-privs",
            "--",
        ]
    command += [
        config.bwrap_path,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    command += _root_entries() if root_entries is None else root_entries
    etc = ETC_FILES + (NETWORK_ETC_FILES if job.network != "off" else ())
    for path in etc:
        command += ["--ro-bind-try", path, path]
    if job.network != "off":
        command.append("--share-net")
    command += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.shm_size_bytes),
        "--tmpfs",
        SANDBOX_SHM,
        # /dev's own tmpfs (device nodes, the shm folder) has no size and is writable by the
        # sandbox user: read-only, or it would be an unsized /dev/shm under another name.
        "--remount-ro",
        "/dev",
        "--size",
        str(limits.tmp_size_bytes),
        "--tmpfs",
        SANDBOX_TMP,
        "--bind",
        str(job.host_work),
        "/work",
        "--ro-bind",
        str(job.host_inputs),
        "/work/in",
    ]
    for host, inside in job.binds:
        command += ["--bind", str(host), inside]
    command += [
        # bwrap builds the root on a private tmpfs (where it creates /etc for the binds above);
        # make it read-only so only /work and /tmp are writable.
        "--remount-ro",
        "/",
        "--chdir",
        "/work",
        "--clearenv",
    ]
    for name, value in sorted(sandbox_env(job).items()):
        command += ["--setenv", name, value]
    if status_fd is not None:
        command += ["--json-status-fd", str(status_fd)]
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
    command.append("--")
    if usage_fd is not None:
        command += [config.launcher_python, "-I", "-S", "-c", LAUNCHER, str(usage_fd)]
    command += limits.prlimit_args(config.prlimit_path)
    command += [config.nice_path, "-n", str(limits.nice), "--"]
    command += program_command(job, config)
    return command


def bubblewrap_problem(config: SandboxConfig) -> str | None:
    """Why bubblewrap cannot be used here, or ``None`` when it can."""
    needed = [config.bwrap_path, config.prlimit_path, config.nice_path, config.launcher_python]
    if os.geteuid() == 0:
        needed.append(config.setpriv_path)
    missing = [path for path in needed if not os.access(path, os.X_OK)]
    if missing:
        return f"missing executables: {', '.join(missing)}"
    if config.seccomp:
        try:
            bpf_program()
        except ValueError as exc:
            return str(exc)
    return None


def _parse_status(raw: bytes) -> dict[str, int]:
    """bwrap's --json-status-fd lines (``{"child-pid": N, ...}``, ``{"exit-code": N}``) and the
    launcher's ``{"maxrss_kib": N}``, merged."""
    merged: dict[str, int] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                merged.update({k: v for k, v in value.items() if isinstance(v, int)})
    return merged


class _Collector:
    """Reads a file descriptor to EOF in a daemon thread (into a log buffer or a byte list)."""

    def __init__(self, fd: int, buffer: HeadTailBuffer | None = None) -> None:
        self.fd = fd
        self.buffer = buffer
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, name="sandbox-io", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := os.read(self.fd, 65536):
            if self.buffer is not None:
                self.buffer.write(chunk)
            else:
                self.chunks.append(chunk)

    def finish(self, timeout: float) -> bytes:
        self.thread.join(timeout)
        # A reader still blocked (a process outlived the kill) keeps its fd: never close it
        # under a running os.read. Every sandboxed process holds the log pipe; EOF means
        # they are all gone, which --die-with-parent and the pid namespace guarantee.
        if not self.thread.is_alive():
            os.close(self.fd)
        return b"".join(self.chunks)


def _await_exit(pid: int, timeout: float) -> None:
    """Wait until the sandbox's pid 1 (a host pid) is gone or a zombie: the kernel ends every
    other process of its pid namespace first, so after this nothing of the run is alive and its
    directory can be read and removed without racing a writer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in {"Z", "X"}:
            return
        time.sleep(0.01)


@dataclass(slots=True)
class _Outcome:
    wait_status: int
    timed_out: bool = False
    cancelled: bool = False
    killed_reason: str | None = None
    killed_message: str | None = None


class BubblewrapBackend:
    name: BackendName = "bubblewrap"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        # Assembled once per backend (a few hundred bytes); a machine without a syscall table
        # fails here, before any run, unless the operator turned the filter off.
        self._filter = bpf_program() if config.seccomp else None
        self._cgroups: CgroupV1 | None = None
        if config.cgroups:
            cgroups = CgroupV1(config.cgroup_root)
            if cgroups.available:
                self._cgroups = cgroups
            else:
                log.info("bubblewrap sandbox without cgroup limits: %s", cgroups.problem)

    def _cgroup(self, job: SandboxJob) -> RunCgroup | None:
        if self._cgroups is None:
            return None
        try:
            return self._cgroups.create(job.limits)
        except OSError as exc:  # e.g. a controller refusing a value: rlimits still hold
            log.warning("sandbox cgroup not created (%s); running with rlimits only", exc)
            return None

    def _seccomp_pipe(self) -> int | None:
        """A pipe holding the filter, its read end for bwrap (it reads to EOF)."""
        if self._filter is None:
            return None
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, self._filter)  # far below the pipe's buffer: never blocks
        finally:
            os.close(write_end)
        return read_end

    def run(self, job: SandboxJob, cancel: threading.Event) -> RawRun:
        group = self._cgroup(job)
        try:
            return self._run(job, cancel, group)
        finally:
            if group is not None:
                group.remove()

    def _run(self, job: SandboxJob, cancel: threading.Event, group: RunCgroup | None) -> RawRun:
        seccomp_read = self._seccomp_pipe()
        status_read, status_write = os.pipe()
        usage_read, usage_write = os.pipe()
        log_read, log_write = os.pipe()
        command = build_command(
            job,
            self.config,
            as_root=os.geteuid() == 0,
            status_fd=status_write,
            usage_fd=usage_write,
            seccomp_fd=seccomp_read,
        )
        if group is not None:  # joined by a root shell before setpriv: no process escapes
            command = cgroup_join_prefix(group.procs_files) + command
        passed = (status_write, usage_write) + (() if seccomp_read is None else (seccomp_read,))
        started = time.monotonic()
        try:
            process = subprocess.Popen(  # argv list, no shell; see build_command
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_write,
                stderr=log_write,  # one pipe: stdout and stderr stay in order
                pass_fds=passed,
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin"},
                cwd=job.host_work.parent,
            )
        except OSError as exc:
            for fd in (status_read, usage_read, log_read):
                os.close(fd)
            raise SandboxFailedError(f"Could not start bubblewrap: {exc}") from exc
        finally:
            for fd in (*passed, log_write):
                os.close(fd)
        buffer = HeadTailBuffer(self.config.log_cap_bytes)
        logs, status, usage = (
            _Collector(log_read, buffer),
            _Collector(status_read),
            _Collector(usage_read),
        )
        outcome = self._supervise(process, job, cancel, started)
        duration_ms = round((time.monotonic() - started) * 1000, 3)
        logs.finish(timeout=5)
        reported = _parse_status(status.finish(timeout=1) + b"\n" + usage.finish(timeout=1))
        exit_code = os.waitstatus_to_exitcode(outcome.wait_status)
        if outcome.timed_out or outcome.cancelled or outcome.killed_reason:
            exit_code = -1
        elif "exit-code" in reported:
            exit_code = reported["exit-code"]
        elif exit_code < 0:  # bwrap itself died of a signal
            exit_code = 128 - exit_code
        else:
            # bwrap exited without reporting the child's exit: the sandbox never started.
            raise SandboxFailedError(
                f"bubblewrap could not set up the sandbox (exit {exit_code}): "
                f"{buffer.text().strip()[-2000:]}"
            )
        if "child-pid" in reported:
            _await_exit(reported["child-pid"], timeout=5)
        peak_kib = reported.get("maxrss_kib", 0)
        return RawRun(
            exit_code=exit_code,
            duration_ms=duration_ms,
            peak_mem_mb=round(peak_kib / 1024, 3) if peak_kib else None,
            logs=buffer.text(),
            logs_truncated=buffer.truncated,
            timed_out=outcome.timed_out,
            cancelled=outcome.cancelled,
            killed_reason=outcome.killed_reason,
            killed_message=outcome.killed_message,
        )

    def _supervise(
        self,
        process: subprocess.Popen[bytes],
        job: SandboxJob,
        cancel: threading.Event,
        started: float,
    ) -> _Outcome:
        """Wait for the sandbox; kill it on the wall clock, on cancel, or when /work outgrows
        its cap (polled: RLIMIT_FSIZE bounds one file, not how many)."""
        limits, interval = job.limits, self.config.watchdog_interval_s
        deadline = started + limits.wall_timeout_s
        next_check = started + interval
        outcome: _Outcome | None = None
        killed = False
        while True:
            pid, wait_status = os.waitpid(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(wait_status)
                if outcome is None:
                    return _Outcome(wait_status)
                outcome.wait_status = wait_status
                return outcome
            now = time.monotonic()
            if not killed:
                if cancel.is_set():
                    outcome = _Outcome(0, cancelled=True)
                elif now >= deadline:
                    outcome = _Outcome(0, timed_out=True)
                elif now >= next_check:
                    next_check = now + interval
                    overflow = work_overflow(job.host_work, limits)
                    if overflow is not None:
                        outcome = _Outcome(
                            0, killed_reason="OutputTooLarge", killed_message=overflow
                        )
                if outcome is not None:
                    self._kill(process)
                    killed = True
            cancel.wait(0.02)

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        # setpriv/bwrap lead our new session's group; the sandbox's own session dies with them
        # (--die-with-parent kills its pid 1, and the pid namespace takes everything else).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
