"""Restate's server and a Python service endpoint as a local benchmark peer.

``python -m infra.peers.restate install|up|down|status|reset``.

Two processes, both on loopback with non-default ports, both logging under
``var/peers/restate/``:

- the server, Restate 1.7.12 (one Rust binary with its own embedded log and RocksDB state), from
  npm: ``@restatedev/restate-server`` pulls the platform binary in as an optional dependency
  (``@restatedev/restate-server-linux-x64``); there is no crate on crates.io. It runs from a TOML
  file that moves its three listeners (ingress, admin, node-to-node "fabric") off the defaults
  (8080, 9070, 5122), with ``--listen-mode tcp`` so it creates no Unix sockets. The recipe in
  peers.md also sets ``[admin.query-engine] pgsql-bind-address``; 1.7.12 has no such listener
  (``--dump-config`` drops the key, nothing listens on its default 9071), so it is not set.
  It also sets ``disable-telemetry = true``; even so, the server checks GitHub for a newer
  release at start and logs a harmless connect error here (no internet). Everything else
  is the server's default: one node with all roles, 24 partitions, the replicated loglet on
  the node's own log server, whose RocksDB WAL is fsynced (``rocksdb-disable-wal-fsync =
  false``);
- the service endpoint: the Python SDK (``restate-sdk``) app in
  ``benchmarks.peers.restate_services``, served by Hypercorn in its own virtualenv
  (``var/peers/restate/venv``, pins in ``infra/peers/restate-requirements.txt``), because the
  SDK's dependencies must not meet temporalio's or another peer's in the project's ``.venv``.
  Restate pushes work to an endpoint over HTTP, so the endpoint is a server the Restate server
  calls, registered once with ``POST <admin>/deployments``; the server discovers it as a
  bidirectional stream over HTTP/2 (h2c), one stream per invocation.

Idempotent like ``infra.peers.temporal``: ``install`` is a no-op when the pinned server and the
venv with the pinned requirements are there; ``up`` starts only what is not running, waits for
each on its health endpoint, then registers the endpoint (re-registering the same endpoint is
accepted by the server).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from foundation.settings import PROJECT_ROOT, Settings, get_settings
from infra.services.base import (
    Service,
    ServiceError,
    log,
    pid_alive,
    port_open,
    tail_of,
    wait_until,
)

SERVER_VERSION = "1.7.12"
NPM_PACKAGE = "@restatedev/restate-server"
# npm installs the binary for this platform as an optional dependency of the package above.
NPM_BINARY_PACKAGE = "@restatedev/restate-server-linux-x64"
REQUIREMENTS_FILE = Path(__file__).with_name("restate-requirements.txt")
SERVICES_APP = "benchmarks.peers.restate_services:app"
HOST = "127.0.0.1"
DEFAULT_INGRESS_PORT = 18780
NODE_NAME = "reflux-peer"
INSTALL_TIMEOUT_S = 15 * 60.0


@dataclass(frozen=True)
class RestatePorts:
    """Loopback ports, all derived from the ingress port so one number moves the whole peer.

    Non-default (Restate's own are 8080, 9070 and 5122, and its SDK examples serve on 9080)
    so a developer's own Restate on the usual ports does not collide with the benchmark's.
    """

    ingress: int = DEFAULT_INGRESS_PORT

    @property
    def admin(self) -> int:
        return self.ingress + 1

    @property
    def fabric(self) -> int:
        return self.ingress + 2

    @property
    def endpoint(self) -> int:
        """The Python service endpoint (Hypercorn), not a port of the server."""
        return self.ingress + 3

    def server_ports(self) -> list[int]:
        return [self.ingress, self.admin, self.fabric]


def toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same quotes, same escapes).
    return json.dumps(value)


def render_config(ports: RestatePorts, base_dir: Path) -> str:
    """The server's TOML configuration: data under ``base_dir``, every listener on loopback."""

    def address(port: int) -> str:
        return toml_string(f"{HOST}:{port}")

    return "\n".join(
        [
            f"base-dir = {toml_string(str(base_dir))}",
            # A fixed node name: the data folder is <base-dir>/<node-name>, not the host name.
            f"node-name = {toml_string(NODE_NAME)}",
            'listen-mode = "tcp"',
            # Telemetry off. (A start-up check for a newer release still runs and fails offline.)
            "disable-telemetry = true",
            f"bind-address = {address(ports.fabric)}",
            f"advertised-address = {toml_string(f'http://{HOST}:{ports.fabric}')}",
            "",
            "[ingress]",
            f"bind-address = {address(ports.ingress)}",
            "",
            "[admin]",
            f"bind-address = {address(ports.admin)}",
            "",
        ]
    )


def registration_body(endpoint_url: str) -> dict[str, Any]:
    """The admin API request that registers (discovers) a service endpoint."""
    return {"uri": endpoint_url}


def pinned_version(requirements: str, package: str) -> str:
    """The version ``package==X`` pins in a requirements text (names compared as pip does)."""

    def canonical(name: str) -> str:
        return name.strip().lower().replace("_", "-").replace(".", "-")

    for line in requirements.splitlines():
        name, sep, version = line.split("#", 1)[0].partition("==")
        if sep and canonical(name) == canonical(package):
            return version.strip()
    raise ValueError(f"Expected {package} to be pinned with ==, but it is not in the requirements")


def requirements_digest(text: str) -> str:
    """What the venv was installed from; a changed requirements file reinstalls it."""
    return hashlib.sha256(text.encode()).hexdigest()


def installed_npm_version(package_json: Path) -> str | None:
    try:
        version = json.loads(package_json.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version if isinstance(version, str) else None


def _http(timeout: float) -> httpx.Client:
    # Loopback only: never route through a proxy configured in the environment.
    return httpx.Client(timeout=timeout, trust_env=False)


def _healthy(url: str) -> bool:
    try:
        with _http(timeout=2) as http:
            return http.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _run_logged(argv: list[str], log_file: Path, what: str) -> float:
    """Runs an install command, its output appended to ``log_file``; returns its seconds or
    raises with the log's tail."""
    started = time.monotonic()
    with log_file.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            code = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    seconds = time.monotonic() - started
    if code != 0:
        raise ServiceError(
            f"Expected {what} to succeed, but `{' '.join(argv)}` exited with {code} after "
            f"{seconds:.0f}s. Full output: {log_file}{tail_of(log_file, 15)}"
        )
    return seconds


class RestateServer(Service):
    """Restate's server binary from npm, one node, on loopback."""

    name = "restate"

    def __init__(self, settings: Settings, ports: RestatePorts | None = None) -> None:
        super().__init__(settings)
        self.ports = ports or RestatePorts()
        self.root = settings.data_dir / "peers" / "restate"
        self.log_file = self.root / "server.log"
        self.pid_file = self.root / "server.pid"
        self.npm_dir = self.root / "npm"
        self.install_log = self.root / f"npm-install-{SERVER_VERSION}.log"
        self.config_file = self.root / "restate.toml"
        self.base_dir = self.root / "data"

    @property
    def modules(self) -> Path:
        return self.npm_dir / "node_modules"

    @property
    def binary(self) -> Path:
        return self.modules / NPM_BINARY_PACKAGE / "bin" / "restate-server"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports.ingress}"

    @property
    def ingress_url(self) -> str:
        return f"http://{HOST}:{self.ports.ingress}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.ports.admin}"

    # -- install -------------------------------------------------------------------------
    def installed_version(self) -> str | None:
        if not self.binary.exists():
            return None
        return installed_npm_version(self.modules / NPM_BINARY_PACKAGE / "package.json")

    def install(self) -> None:
        self.install_server()

    def install_server(self) -> float:
        """Installs the pinned server with npm unless present; returns the install seconds."""
        if self.installed_version() == SERVER_VERSION:
            return 0.0
        npm = shutil.which("npm")
        if npm is None:
            raise ServiceError(
                "Expected npm on PATH to install Restate's server (it ships as an npm package), "
                "but it is missing. Install Node.js with npm (Debian: apt-get install npm)."
            )
        self.npm_dir.mkdir(parents=True, exist_ok=True)
        target = f"{NPM_PACKAGE}@{SERVER_VERSION}"
        log(f"restate: installing {target} with npm into {self.npm_dir}")
        seconds = _run_logged(
            [npm, "install", "--prefix", str(self.npm_dir), "--no-audit", "--no-fund", target],
            self.install_log,
            f"npm install {target}",
        )
        found = self.installed_version()
        if found != SERVER_VERSION:
            raise ServiceError(
                f"Expected npm to install {NPM_BINARY_PACKAGE} {SERVER_VERSION} with "
                f"{self.binary}, but found version {found}. Output: {self.install_log}"
                f"{tail_of(self.install_log, 15)}"
            )
        log(f"restate: installed {self.version()} in {seconds:.0f}s")
        return seconds

    def version(self) -> str:
        result = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return (result.stdout or result.stderr).strip()

    # -- run -----------------------------------------------------------------------------
    def port_in_use(self) -> bool:
        return any(port_open(HOST, port) for port in self.ports.server_ports())

    def reset(self) -> None:
        """Deletes the server's data (log, state, registered deployments)."""
        if self.is_running():
            raise ServiceError(f"Expected {self.name} to be stopped before reset, but it runs.")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def launch(self) -> None:
        self.config_file.write_text(render_config(self.ports, self.base_dir))
        self.spawn(
            [str(self.binary), "--config-file", str(self.config_file), "--listen-mode", "tcp"],
            cwd=self.root,
        )

    def is_ready(self) -> bool:
        """Admin and ingress both answer their health endpoints."""
        return _healthy(f"{self.admin_url}/health") and _healthy(
            f"{self.ingress_url}/restate/health"
        )

    def detail(self) -> str:
        installed = self.installed_version() or "not installed"
        return f"{SERVER_VERSION} ({installed}), admin {self.admin_url}, data {self.base_dir}"


class RestateEndpoint(Service):
    """The benchmark's Restate services (Python SDK) served by Hypercorn from the peer venv."""

    name = "restate-endpoint"

    def __init__(self, settings: Settings, ports: RestatePorts | None = None) -> None:
        super().__init__(settings)
        self.ports = ports or RestatePorts()
        self.root = settings.data_dir / "peers" / "restate"
        self.log_file = self.root / "endpoint.log"
        self.pid_file = self.root / "endpoint.pid"
        self.venv = self.root / "venv"
        self.venv_log = self.root / "venv-install.log"
        self.venv_marker = self.venv / "reflux-requirements.sha256"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports.endpoint}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.ports.endpoint}"

    # -- install -------------------------------------------------------------------------
    def install(self) -> None:
        self.install_venv()

    def venv_current(self) -> bool:
        wanted = requirements_digest(REQUIREMENTS_FILE.read_text())
        try:
            return self.python.exists() and self.venv_marker.read_text().strip() == wanted
        except OSError:
            return False

    def install_venv(self) -> float:
        """Creates the venv and installs the pinned SDK unless current; returns the seconds.

        A venv installed from other pins is created anew rather than upgraded in place, so no
        package that the requirements no longer name stays behind.
        """
        if self.venv_current():
            return 0.0
        if self.is_running():
            raise ServiceError(
                f"Expected {self.name} to be stopped before its venv is rebuilt, but it runs."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        shutil.rmtree(self.venv, ignore_errors=True)
        log(f"restate: creating the SDK's virtualenv {self.venv}")
        # The interpreter running this module: the project's Python version.
        _run_logged([sys.executable, "-m", "venv", str(self.venv)], self.venv_log, "venv")
        log(f"restate: installing {REQUIREMENTS_FILE.name} into {self.venv}")
        _run_logged(
            [str(self.python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS_FILE)],
            self.venv_log,
            "pip install of the Restate SDK",
        )
        self.venv_marker.write_text(requirements_digest(REQUIREMENTS_FILE.read_text()))
        seconds = time.monotonic() - started
        log(f"restate: SDK virtualenv ready in {seconds:.0f}s")
        return seconds

    # -- run -----------------------------------------------------------------------------
    def port_in_use(self) -> bool:
        return port_open(HOST, self.ports.endpoint)

    def launch(self) -> None:
        self.spawn(
            [
                str(self.python),
                "-m",
                "hypercorn",
                # 0 workers: serve in this process (the default, 1, starts a worker process),
                # so the pid we record is the one doing the work, and its CPU is the endpoint's.
                "--workers",
                "0",
                "--bind",
                self.endpoint,
                SERVICES_APP,
            ],
            env={"PYTHONPATH": str(PROJECT_ROOT)},
        )

    def is_ready(self) -> bool:
        return _healthy(f"{self.url}/health")

    def stop(self, timeout: float = 30.0) -> bool:
        """Interrupts Hypercorn (Ctrl-C), then falls back to TERM and KILL.

        WHY: the SDK's ASGI app (restate-sdk 1.3.0, ``restate/server.py``), on its first
        request, installs its own SIGTERM handler on the event loop, which replaces
        Hypercorn's: SIGTERM then only asks in-flight invocations to drain and the server
        stays up (observed: still up 30 s later; a trivial ASGI app under the same Hypercorn
        stops on SIGTERM). SIGINT is still Hypercorn's. The endpoint holds no state, so the
        fallback to KILL is harmless.
        """
        pid = self.read_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGINT)
            deadline = time.monotonic() + min(timeout, 10.0)
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        return super().stop(timeout) or pid is not None

    def detail(self) -> str:
        state = "venv ready" if self.venv_current() else "venv missing or stale"
        return f"{SERVICES_APP} ({state})"


class RestatePeer:
    """The server plus the endpoint, registered with each other."""

    def __init__(self, settings: Settings, ports: RestatePorts | None = None) -> None:
        self.ports = ports or RestatePorts()
        self.server = RestateServer(settings, self.ports)
        self.services = RestateEndpoint(settings, self.ports)

    def install(self) -> dict[str, float]:
        return {
            "server_install_s": self.server.install_server(),
            "venv_install_s": self.services.install_venv(),
        }

    def up(self) -> float:
        """Starts what is not running and registers the endpoint; returns the seconds taken."""
        began = time.monotonic()
        self.server.start()
        self.services.start()
        wait_until(
            self.register,
            60.0,
            "restate deployment registration",
            self.server.log_file,
            lambda: self.server.last_probe_error,
        )
        return time.monotonic() - began

    def register(self) -> bool:
        body = registration_body(self.services.url)
        try:
            with _http(timeout=30) as http:
                response = http.post(f"{self.server.admin_url}/deployments", json=body)
        except httpx.HTTPError as exc:
            self.server.last_probe_error = repr(exc)
            return False
        if response.status_code in (200, 201):
            return True
        self.server.last_probe_error = f"{response.status_code} {response.text[:300]}"
        return False

    def down(self) -> list[str]:
        """Stops both; returns the names of those that were running."""
        stopped = [svc.name for svc in (self.services, self.server) if svc.stop()]
        return stopped

    def is_running(self) -> bool:
        return self.server.is_running() or self.services.is_running()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.peers.restate", description=__doc__)
    parser.add_argument("action", choices=["install", "up", "down", "status", "reset"])
    parser.add_argument("--port", type=int, default=DEFAULT_INGRESS_PORT, help="ingress port")
    args = parser.parse_args(argv)
    peer = RestatePeer(get_settings(), RestatePorts(args.port))
    try:
        if args.action == "install":
            print(json.dumps(peer.install(), indent=2))
        elif args.action == "up":
            log(f"restate: starting (ingress {peer.server.ingress_url})")
            seconds = peer.up()
            log(f"restate: ready and registered in {seconds:.1f}s")
        elif args.action == "down":
            stopped = peer.down()
            log(f"restate: stopped {', '.join(stopped)}" if stopped else "restate: not running")
        elif args.action == "reset":
            peer.server.reset()
            log(f"restate: removed {peer.server.base_dir}")
        else:
            rows = [peer.server.status(), peer.services.status()]
            for row in rows:
                state = "ready" if row.ready else ("starting" if row.running else "stopped")
                pid = row.pid or "-"
                print(f"{row.name:<17} {state:<9} {pid:<8} {row.endpoint:<16} {row.detail}")
            return 0 if all(row.ready for row in rows) else 3
        return 0
    except ServiceError as exc:
        print(f"[infra] error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
