"""What every local service has in common: a data folder, a pid file, a log, readiness.

Services run as detached processes (their own session, so a Ctrl-C in the shell that started
them does not stop them) and are found again through ``var/run/<name>.pid``. Every operation is
idempotent: ``start`` on a running service only checks readiness, ``stop`` on a stopped one does
nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from foundation.errors import NonRetryableError
from foundation.settings import PROJECT_ROOT, Settings


class ServiceError(NonRetryableError):
    """A service could not be installed, started or reached; the message says what to do."""

    error_class = "ServiceError"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    ready: bool
    endpoint: str
    pid: int | None
    detail: str


def log(message: str) -> None:
    print(f"[infra] {message}", flush=True)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log_file: Path | None = None,
    last_error: Callable[[], str | None] = lambda: None,
) -> float:
    """Polls ``check`` until it holds; returns the seconds waited or raises with the last probe
    error and the log tail."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            tail = tail_of(log_file) if log_file else ""
            probe = last_error()
            because = f" Last probe: {probe}." if probe else ""
            raise ServiceError(f"{what} not ready after {timeout:.0f}s.{because}{tail}")
        time.sleep(0.2)


def tail_of(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.exists():
        return ""
    content = path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {path} ---\n" + "\n".join(content)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state so a dead child is reported dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def require_command(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"'{name}' is not on PATH. {hint}")
    return path


def find_command(name: str) -> str | None:
    """``name`` on PATH or in the sbin folders (daemons such as dockerd live there, and a
    non-login shell's PATH may lack them)."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


_apt_updated = False
_apt_lock = threading.Lock()  # dpkg takes one install at a time; services start in threads


def ensure_debian_packages(commands: dict[str, str]) -> None:
    """Installs Debian packages for missing commands (``{command: package}``) with apt-get."""
    with _apt_lock:
        _install_debian_packages(commands)


def _install_debian_packages(commands: dict[str, str]) -> None:
    global _apt_updated  # noqa: PLW0603 - apt-get update once per process
    missing = {cmd: pkg for cmd, pkg in commands.items() if find_command(cmd) is None}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0:
        raise ServiceError(
            f"Missing {', '.join(missing)}; install the Debian packages {' '.join(packages)} "
            "(apt-get install) or run `make up` as root."
        )
    log(f"installing Debian packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


class Service(ABC):
    """A local service with a data folder under ``settings.data_dir``."""

    name: str
    debian_packages: ClassVar[dict[str, str]] = {}
    """``{command: Debian package}`` the service needs; ``stack up`` installs every service's
    at once (one apt-get run) before starting any."""
    background: ClassVar[bool] = False
    """Slow to install and needed by no other service: ``stack up`` starts it in a thread
    beside the others (on a fresh machine the Docker sandbox image takes ~100 s)."""
    deferred: ClassVar[bool] = False
    """Needed only by a few tests and minutes to build: ``stack up`` (all services) only
    begins its install (:meth:`prepare`) and does not wait; ``stack up NAME`` and the tests
    that use it start it (waiting for the install)."""

    def prepare(self) -> None:  # noqa: B027 - a hook: only deferred services begin anything
        """Begins a deferred service's install without waiting for it (a no-op by default)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.data_dir / self.name
        self.log_file = settings.data_dir / "log" / f"{self.name}.log"
        self.pid_file = settings.data_dir / "run" / f"{self.name}.pid"
        self.last_probe_error: str | None = None
        """Why the last readiness probe failed, when the service can tell (quoted on timeout)."""

    # -- what each service defines -------------------------------------------------------
    @property
    @abstractmethod
    def endpoint(self) -> str: ...

    @abstractmethod
    def install(self) -> None:
        """Fetches or builds whatever the service needs; a no-op when already done."""

    @abstractmethod
    def launch(self) -> None:
        """Starts the process (it is known not to be running)."""

    @abstractmethod
    def is_ready(self) -> bool:
        """True when the service answers its own protocol, not merely an open port."""

    def start_timeout(self) -> float:
        return 60.0

    # -- shared behaviour ----------------------------------------------------------------
    def read_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.read_pid() is not None

    def start(self) -> float:
        """Installs, starts and waits for readiness; returns the seconds spent starting."""
        self.install()
        started = time.monotonic()
        if not self.begin():
            wait_until(
                self.is_ready,
                self.start_timeout(),
                self.name,
                self.log_file,
                lambda: self.last_probe_error,
            )
            return 0.0
        wait_until(
            self._ready_or_died,
            self.start_timeout(),
            self.name,
            self.log_file,
            lambda: self.last_probe_error,
        )
        return time.monotonic() - started

    def begin(self) -> bool:
        """Launches the process unless it runs (no waiting); False if it was running. Services
        that are ready only together (a Kafka cluster's quorum) begin all, then wait."""
        if self.is_running():
            return False
        if self.port_in_use():
            raise ServiceError(
                f"{self.name}: {self.endpoint} is already in use by a process this project did "
                f"not start (no live pid in {self.pid_file}). Stop it or set another port."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.launch()
        return True

    def statuses(self) -> list[ServiceStatus]:
        """One row per process for ``stack status`` (a cluster: one per node)."""
        return [self.status()]

    def _ready_or_died(self) -> bool:
        """Readiness, but a process that exited (a port taken, a bad config) fails at once
        with its log instead of after the whole start timeout."""
        if self.is_ready():
            return True
        if not self.is_running():
            time.sleep(0.5)  # a last look: the pid file may be written a moment after start
            if not self.is_running() and not self.is_ready():
                raise ServiceError(f"{self.name} exited during start.{tail_of(self.log_file)}")
        return False

    def port_in_use(self) -> bool:
        return False

    def stop(self, timeout: float = 30.0) -> bool:
        """Stops the process (TERM, then KILL after ``timeout``); False if it was not running."""
        pid = self.read_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            log(f"{self.name} did not stop in {timeout:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ServiceStatus:
        pid = self.read_pid()
        ready = self.is_ready() if pid is not None else False
        return ServiceStatus(self.name, pid is not None, ready, self.endpoint, pid, self.detail())

    def detail(self) -> str:
        return f"data {self.root}"

    def spawn(
        self, argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> int:
        """Runs ``argv`` detached, logging to the service log, and records its pid."""
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd or PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid
