"""Temporal's server as a local benchmark peer: ``python -m infra.peers.temporal ACTION``.

WHY the server binary and not ``temporal server start-dev``: the ``temporal`` CLI (newest served
version v1.9.1) cannot be built from the Go module proxy. Its go.mod replaces the nested module
``github.com/temporalio/cli/cliext`` with ``./cliext``, so ``go install ...@v1.9.1`` is refused
("contains one or more replace directives"), and the nested module is not served on its own, so
a wrapper module cannot supply it either. The dev server inside that CLI is Temporal's server
(``go.temporal.io/server`` v1.32.0) run in one process on SQLite with one history shard; this
module builds that same server version from the proxy (``go.temporal.io/server/cmd/server``,
no replace directives) and runs it with a configuration that mirrors what ``start-dev
--db-filename`` sets: all four services in one process, one SQLite file for both the main and
the visibility store, ``numHistoryShards: 1``, archival off, no UI, the dev server's two
dynamic-config overrides, and the ``default`` namespace registered at start.

Idempotent like ``infra.stack``: ``build`` is a no-op when the binary of the pinned version exists,
``up`` starts the server only when it is not running and waits until the frontend answers gRPC
health checks and the namespace is usable. Everything lives under ``var/peers/``; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from foundation.settings import Settings, get_settings
from infra.peers.cli import ACTIONS, run_action
from infra.services.base import Service, ServiceError, log, port_open, tail_of, wait_until

SERVER_MODULE = "go.temporal.io/server/cmd/server"
# The server version embedded by temporal CLI v1.9.1's `server start-dev` (its go.mod pins it).
SERVER_VERSION = "v1.32.0"
BUILD_TIMEOUT_S = 45 * 60.0
NAMESPACE = "default"
HOST = "127.0.0.1"
DEFAULT_FRONTEND_PORT = 17233


@dataclass(frozen=True)
class TemporalPorts:
    """Loopback ports, all derived from the frontend port so one number moves the whole server.

    Non-default (Temporal's own defaults start at 7233) so a developer's own dev server on the
    usual ports does not collide with the benchmark's.
    """

    frontend: int = DEFAULT_FRONTEND_PORT

    @property
    def frontend_http(self) -> int:
        return self.frontend + 10

    @property
    def history(self) -> int:
        return self.frontend + 1

    @property
    def matching(self) -> int:
        return self.frontend + 2

    @property
    def worker(self) -> int:
        return self.frontend + 6

    def membership(self, grpc_port: int) -> int:
        # Ringpop membership ports sit 300 below each gRPC port (Temporal uses 7233 -> 6933).
        return grpc_port - 300

    def all(self) -> list[int]:
        grpc = [self.frontend, self.history, self.matching, self.worker]
        return [*grpc, self.frontend_http, *(self.membership(p) for p in grpc)]


def render_config(ports: TemporalPorts, db_file: Path, dynamic_config_file: Path) -> dict[str, Any]:
    """The server's static configuration, mirroring ``temporal server start-dev --db-filename``."""
    sqlite_store = {
        "sql": {
            "pluginName": "sqlite",
            "databaseName": str(db_file),
            "connectAddr": "localhost",
            "connectProtocol": "tcp",
            # mode=rwc is what start-dev uses for a file; setup=true creates the schema on first
            # start (start-dev does the same through the schema package before starting).
            "connectAttributes": {"mode": "rwc", "setup": "true"},
            "maxConns": 1,
            "maxIdleConns": 1,
            "maxConnLifetime": "1h",
        }
    }

    def service(grpc_port: int, http_port: int | None = None) -> dict[str, Any]:
        rpc: dict[str, Any] = {
            "grpcPort": grpc_port,
            "membershipPort": ports.membership(grpc_port),
            "bindOnIP": HOST,
        }
        if http_port is not None:
            rpc["httpPort"] = http_port
        return {"rpc": rpc}

    frontend_address = f"{HOST}:{ports.frontend}"
    return {
        "log": {"stdout": True, "level": "warn"},
        "persistence": {
            "defaultStore": "sqlite-default",
            "visibilityStore": "sqlite-default",
            "numHistoryShards": 1,
            "datastores": {"sqlite-default": sqlite_store},
        },
        # No metrics section and pprof port 0: nothing listens beyond the service ports.
        "global": {
            "membership": {"maxJoinDuration": "30s", "broadcastAddress": HOST},
            "pprof": {"port": 0},
        },
        "services": {
            "frontend": service(ports.frontend, ports.frontend_http),
            "history": service(ports.history),
            "matching": service(ports.matching),
            "worker": service(ports.worker),
        },
        "clusterMetadata": {
            "enableGlobalNamespace": False,
            "failoverVersionIncrement": 10,
            "masterClusterName": "active",
            "currentClusterName": "active",
            "clusterInformation": {
                "active": {
                    "enabled": True,
                    "initialFailoverVersion": 1,
                    "rpcName": "frontend",
                    "rpcAddress": frontend_address,
                    "httpAddress": f"{HOST}:{ports.frontend_http}",
                }
            },
        },
        "dcRedirectionPolicy": {"policy": "noop"},
        "archival": {"history": {"state": "disabled"}, "visibility": {"state": "disabled"}},
        "namespaceDefaults": {
            "archival": {"history": {"state": "disabled"}, "visibility": {"state": "disabled"}}
        },
        "publicClient": {"hostPort": frontend_address},
        "dynamicConfigClient": {"filepath": str(dynamic_config_file), "pollInterval": "60s"},
    }


# The overrides `start-dev` applies on top of the server defaults (CHASM and standalone
# activities, which it also enables, are on by default from server v1.32).
DYNAMIC_CONFIG: dict[str, list[dict[str, Any]]] = {
    "history.hostLevelCacheMaxSize": [{"value": 8096, "constraints": {}}],
    "frontend.namespaceRPS.visibility": [{"value": 100, "constraints": {}}],
}


def go_env(bin_dir: Path) -> dict[str, str]:
    # GOFLAGS from the machine (e.g. -buildvcs=false) is kept; GOBIN puts the binary in var/.
    return {**os.environ, "GOBIN": str(bin_dir)}


class TemporalServer(Service):
    """Temporal's server (one process, SQLite file) on loopback, for the peer benchmark."""

    name = "temporal"

    def __init__(self, settings: Settings, ports: TemporalPorts | None = None) -> None:
        super().__init__(settings)
        self.ports = ports or TemporalPorts()
        peers = settings.data_dir / "peers"
        self.root = peers / "temporal"
        self.log_file = self.root / "server.log"
        self.pid_file = self.root / "server.pid"
        self.bin_dir = peers / "bin" / f"temporal-server-{SERVER_VERSION}"
        self.binary = self.bin_dir / "server"
        self.build_log = self.root / f"build-{SERVER_VERSION}.log"
        self.build_info = self.bin_dir / "build.json"
        self.db_file = self.root / "temporal.db"
        self.config_file = self.root / "config.yaml"
        self.dynamic_config_file = self.root / "dynamicconfig.yaml"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports.frontend}"

    # -- build ---------------------------------------------------------------------------
    def install(self) -> None:
        self.build()

    def build(self) -> float:
        """Builds the server with ``go install`` unless present; returns the build seconds."""
        if self.binary.exists():
            return 0.0
        if shutil.which("go") is None:
            raise ServiceError(
                "Expected the Go toolchain ('go' on PATH) to build Temporal's server, but it is "
                "missing. Install Go >= 1.26 (the server's go.mod requires it)."
            )
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        target = f"{SERVER_MODULE}@{SERVER_VERSION}"
        log(f"temporal: building {target} with `go install` (several minutes on 2 cores)")
        started = time.monotonic()
        packages = 0
        last_report = started
        with self.build_log.open("w") as out:
            proc = subprocess.Popen(
                ["go", "install", "-v", target],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env=go_env(self.bin_dir),
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                # `-v` prints one line per package compiled; downloads are prefixed "go: ".
                if not line.startswith("go: "):
                    packages += 1
                now = time.monotonic()
                if now - last_report >= 20:
                    log(f"temporal: still building: {packages} packages, {now - started:.0f}s")
                    last_report = now
                if now - started > BUILD_TIMEOUT_S:
                    proc.kill()
                    break
            code = proc.wait()
        seconds = time.monotonic() - started
        if code != 0 or not self.binary.exists():
            raise ServiceError(
                f"Expected `go install {target}` to produce {self.binary}, but it exited with "
                f"{code} after {seconds:.0f}s. Full output: {self.build_log}"
                f"{tail_of(self.build_log, 15)}"
            )
        info = {"module": target, "seconds": round(seconds, 1), "version": self.version()}
        self.build_info.write_text(json.dumps(info, indent=2))
        log(f"temporal: built {info['version']} in {seconds:.0f}s ({packages} packages)")
        return seconds

    def version(self) -> str:
        result = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return (result.stdout or result.stderr).strip()

    # -- run -----------------------------------------------------------------------------
    def start_timeout(self) -> float:
        return 90.0

    def port_in_use(self) -> bool:
        return any(port_open(HOST, port) for port in self.ports.all())

    def reset(self) -> None:
        """Deletes the SQLite database so the next start is from an empty history."""
        if self.is_running():
            raise ServiceError(f"Expected {self.name} to be stopped before reset, but it runs.")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.db_file}{suffix}").unlink(missing_ok=True)
        log(f"temporal: removed {self.db_file}")

    def launch(self) -> None:
        config = render_config(self.ports, self.db_file, self.dynamic_config_file)
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.dynamic_config_file.write_text(yaml.safe_dump(DYNAMIC_CONFIG, sort_keys=False))
        self.spawn(
            [
                str(self.binary),
                "--allow-no-auth",
                "--config-file",
                str(self.config_file),
                "start",
            ],
            cwd=self.root,
        )

    @property
    def http_api(self) -> str:
        return f"http://{HOST}:{self.ports.frontend_http}/api/v1"

    def is_ready(self) -> bool:
        """The frontend serves requests (it answers Unavailable while it is starting)."""
        try:
            with _http(timeout=2) as http:
                return http.get(f"{self.http_api}/system-info").status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> float:
        """Starts the server and registers the namespace; returns the seconds spent starting."""
        seconds = super().start()
        began = time.monotonic()
        wait_until(
            self.namespace_ready,
            self.start_timeout(),
            f"{self.name} namespace '{NAMESPACE}'",
            self.log_file,
        )
        return seconds + (time.monotonic() - began if seconds else 0.0)

    def namespace_ready(self) -> bool:
        """Registers the namespace if missing; True once frontend, history and matching know it.

        A namespace registered through the API is in the database at once, but each service of
        the single process keeps its own namespace cache, refreshed every 10 s; until history
        and matching have it, starting a workflow or polling its task queue fails with
        NamespaceNotFound. (start-dev avoids this by writing namespaces into SQLite before it
        starts.) Uses the frontend's HTTP API so that readiness needs no Temporal SDK.
        """
        api = f"{self.http_api}/namespaces"
        try:
            with _http(timeout=5) as http:
                described = http.get(f"{api}/{NAMESPACE}")
                if described.status_code == 404:
                    body = {"namespace": NAMESPACE, "workflowExecutionRetentionPeriod": "86400s"}
                    http.post(api, json=body)
                    return False  # the services' caches learn it on a later poll
                if described.status_code != 200:
                    return False
                # A workflow that does not exist: history must say "workflow not found", not
                # "namespace not found"; matching must describe an (empty) task queue.
                history = http.get(f"{api}/{NAMESPACE}/workflows/reflux-readiness-probe")
                matching = http.get(f"{api}/{NAMESPACE}/task-queues/reflux-readiness-probe")
        except httpx.HTTPError:
            return False
        return (
            history.status_code == 404
            and "NamespaceNotFound" not in history.text
            and matching.status_code == 200
        )

    def detail(self) -> str:
        built = "built" if self.binary.exists() else "not built"
        return f"{SERVER_VERSION} ({built}), db {self.db_file}"


def _http(timeout: float) -> httpx.Client:
    # Loopback only: never route through a proxy configured in the environment.
    return httpx.Client(timeout=timeout, trust_env=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.peers.temporal", description=__doc__)
    parser.add_argument("action", choices=["build", *ACTIONS])
    parser.add_argument("--port", type=int, default=DEFAULT_FRONTEND_PORT, help="frontend port")
    args = parser.parse_args(argv)
    server = TemporalServer(get_settings(), TemporalPorts(args.port))

    def build() -> str:
        server.build()
        return server.build_info.read_text()

    return run_action("temporal", server, args.action, install=build)


if __name__ == "__main__":
    sys.exit(main())
