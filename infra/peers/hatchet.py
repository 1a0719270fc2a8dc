"""Hatchet (hatchet-lite) as a local benchmark peer: ``python -m infra.peers.hatchet ACTION``.

Hatchet v0.104.7 is a Go server whose only store is PostgreSQL (its queue and pub/sub run on
Postgres too: ``hatchet-lite`` sets ``SERVER_MSGQUEUE_KIND=postgres`` when no RabbitMQ is given).
It runs here on the project's own Postgres, in a database of its own (``hatchet_bench``), so no
other database server is needed.

WHY a wrapper module and ``go build`` instead of ``go install``: ``go install ...@v0.104.7`` is
refused because the Go module proxy will not list the module's versions. A throw-away module
under ``var/peers/hatchet/src`` that ``go get``s the three commands at the pinned version and
builds them works. The binaries are linked like upstream's release images
(``build/package/servers.dockerfile``: ``-ldflags "-w -s -X main.Version=<tag>"``): without the
version the engine reports ``v0.1.0-alpha.0`` and the Python SDK falls back to its legacy
worker protocol (it compares the engine's version with the first one that has slot configs).

What ``up`` does, in upstream's order (``hack/lite/start.sh`` of the hatchet-lite image):
create the database (owned by the platform role, as the bootstrap superuser, because the
platform role may not create databases), ``hatchet-migrate``, ``hatchet-admin quickstart --skip
certs --overwrite=false`` (generates the encryption keys and seeds the default tenant once),
``hatchet-admin token create`` once (an API token for the SDK, kept 0600 next to the config),
then ``hatchet-lite``, ready when its engine's health endpoint answers ``/ready``.

Deviations from the recipe in ../shared/peers.md and from "loopback only": gRPC binds
127.0.0.1 (Hatchet's default), but hatchet-lite's HTTP listeners (API, health, static files,
its reverse proxy) bind every interface; their addresses are hard-coded as ``:<port>`` in
v0.104.7 and cannot be configured. The benchmark contacts only 127.0.0.1. The database pool is
capped at ``DATABASE_MAX_CONNS`` (default 50 upstream) because the Postgres server is shared
with REFLUX's own services and tests (``max_connections=200``).

Idempotent like ``infra.stack``: ``install`` is a no-op when the pinned binaries and the SDK's
virtualenv exist; ``up`` starts the server only when it is not running; ``reset`` drops the
database and the generated config. Everything lives under ``var/peers/hatchet/``.
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
from urllib.parse import urlsplit, urlunsplit

import httpx

from foundation.redact import redact_credentials
from foundation.settings import PROJECT_ROOT, Settings, get_settings
from infra.peers.cli import ACTIONS, run_action
from infra.services.base import Service, ServiceError, log, port_open, tail_of
from infra.services.credentials import write_private
from infra.services.postgres import Postgres

MODULE = "github.com/hatchet-dev/hatchet"
VERSION = "v0.104.7"
COMMANDS = ("hatchet-lite", "hatchet-migrate", "hatchet-admin")
# Upstream's release flags: strip debug info, stamp the version the SDK checks.
LDFLAGS = f"-w -s -X main.Version={VERSION}"
BUILD_TIMEOUT_S = 30 * 60.0
DATABASE = "hatchet_bench"
HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 17470
# Upstream's default pool is 50 connections; the shared server allows 200 in all.
DATABASE_MAX_CONNS = 30
REQUIREMENTS = PROJECT_ROOT / "infra" / "peers" / "hatchet-requirements.txt"
VENV_TIMEOUT_S = 10 * 60.0
ADMIN_TIMEOUT_S = 5 * 60.0


@dataclass(frozen=True)
class HatchetPorts:
    """Loopback ports, all derived from the gRPC port so one number moves the whole server.

    Non-default (Hatchet's defaults are 7070 gRPC, 8080 API, 8733 health, 8888 lite) so a
    developer's own Hatchet does not collide with the benchmark's.
    """

    grpc: int = DEFAULT_GRPC_PORT

    @property
    def api(self) -> int:
        return self.grpc + 1

    @property
    def health(self) -> int:
        return self.grpc + 2

    @property
    def frontend(self) -> int:
        return self.grpc + 3

    @property
    def runtime(self) -> int:
        return self.grpc + 4

    def all(self) -> list[int]:
        return [self.grpc, self.api, self.health, self.frontend, self.runtime]


def database_url(platform_dsn: str, database: str = DATABASE) -> str:
    """The platform role's DSN pointed at ``database``: same role, host, port and options.

    The password stays in the libpq password file the DSN names (``passfile=``), which pgx,
    Hatchet's driver, reads too; so no secret is put in the environment or the logs.
    """
    parts = urlsplit(platform_dsn)
    if parts.scheme not in {"postgresql", "postgres"} or not parts.hostname:
        raise ServiceError(
            f"Expected a postgresql:// URL as the project's Postgres DSN, but got "
            f"{redact_credentials(platform_dsn)!r}"
        )
    query = parts.query
    if "sslmode=" not in query:
        # The local server has no TLS; pgx's default (prefer) would try it first on every dial.
        query = f"{query}&sslmode=disable" if query else "sslmode=disable"
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", query, ""))


def render_env(ports: HatchetPorts, db_url: str, static_dir: Path) -> dict[str, str]:
    """The environment of every Hatchet command: database, ports, insecure loopback gRPC.

    Names as read by v0.104.7 (``pkg/config/server/server.go``, ``pkg/config/database``,
    ``cmd/hatchet-lite/main.go``); the auth cookie settings are upstream's hatchet-lite ones.
    """
    grpc_address = f"{HOST}:{ports.grpc}"
    return {
        "DATABASE_URL": db_url,
        "DATABASE_MAX_CONNS": str(DATABASE_MAX_CONNS),
        "SERVER_PORT": str(ports.api),
        "SERVER_URL": f"http://{HOST}:{ports.api}",
        "SERVER_HEALTHCHECK_PORT": str(ports.health),
        "SERVER_GRPC_PORT": str(ports.grpc),
        "SERVER_GRPC_BIND_ADDRESS": HOST,
        "SERVER_GRPC_BROADCAST_ADDRESS": grpc_address,
        "SERVER_INTERNAL_CLIENT_INTERNAL_GRPC_BROADCAST_ADDRESS": grpc_address,
        "SERVER_GRPC_INSECURE": "t",
        "SERVER_AUTH_COOKIE_DOMAIN": HOST,
        "SERVER_AUTH_COOKIE_INSECURE": "t",
        "SERVER_AUTH_SET_EMAIL_VERIFIED": "t",
        "SERVER_MSGQUEUE_KIND": "postgres",
        "LITE_STATIC_ASSET_DIR": str(static_dir),
        "LITE_FRONTEND_PORT": str(ports.frontend),
        "LITE_RUNTIME_PORT": str(ports.runtime),
    }


def client_env(ports: HatchetPorts, token: str) -> dict[str, str]:
    """What the Python SDK needs to reach this server (``hatchet_sdk.config``'s names)."""
    return {
        "HATCHET_CLIENT_TOKEN": token,
        "HATCHET_CLIENT_TLS_STRATEGY": "none",
        "HATCHET_CLIENT_HOST_PORT": f"{HOST}:{ports.grpc}",
        "HATCHET_CLIENT_SERVER_URL": f"http://{HOST}:{ports.api}",
    }


def wrapper_go_mod() -> str:
    """go.mod of the wrapper module that ``go get``s the commands (see the module docstring)."""
    return "module reflux.local/peers/hatchet\n\ngo 1.26\n"


def parse_token(output: str) -> str:
    """The API token ``hatchet-admin token create`` prints: the last line that is a JWT.

    The command may log before it (config loading); a JWT is three base64url parts.
    """
    for line in reversed(output.strip().splitlines()):
        candidate = line.strip()
        parts = candidate.split(".")
        if len(parts) == 3 and all(parts) and " " not in candidate:
            return candidate
    raise ServiceError(
        "Expected `hatchet-admin token create` to print a token (a JWT), but its output has "
        f"none: {redact_credentials(output[-500:])!r}"
    )


class HatchetServer(Service):
    """hatchet-lite (engine, API, static files in one process) on the project's Postgres."""

    name = "hatchet"

    def __init__(self, settings: Settings, ports: HatchetPorts | None = None) -> None:
        super().__init__(settings)
        self.ports = ports or HatchetPorts()
        self.root = settings.data_dir / "peers" / "hatchet"
        self.log_file = self.root / "server.log"
        self.pid_file = self.root / "server.pid"
        self.src_dir = self.root / "src"
        self.bin_dir = self.root / "bin" / VERSION
        self.build_log = self.root / f"build-{VERSION}.log"
        self.build_info = self.bin_dir / "build.json"
        self.config_dir = self.root / "config"
        self.static_dir = self.root / "static"
        self.token_file = self.config_dir / "token"
        self.venv = self.root / "venv"
        self.postgres = Postgres(settings)

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports.grpc}"

    def binary(self, command: str) -> Path:
        return self.bin_dir / command

    @property
    def venv_python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict[str, str]:
        db_url = database_url(self.settings.postgres_dsn)
        return render_env(self.ports, db_url, self.static_dir)

    # -- install -------------------------------------------------------------------------
    def install(self) -> None:
        self.build()
        self.ensure_venv()

    def build(self) -> float:
        """Builds the three commands unless present; returns the build seconds."""
        if all(self.binary(c).exists() for c in COMMANDS):
            return 0.0
        if shutil.which("go") is None:
            raise ServiceError(
                "Expected the Go toolchain ('go' on PATH) to build Hatchet, but it is missing. "
                "Install Go >= 1.26."
            )
        self.src_dir.mkdir(parents=True, exist_ok=True)
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        (self.src_dir / "go.mod").write_text(wrapper_go_mod())
        (self.src_dir / "go.sum").unlink(missing_ok=True)
        packages = [f"{MODULE}/cmd/{c}" for c in COMMANDS]
        log(f"hatchet: building {MODULE}@{VERSION} (a few minutes on 2 cores)")
        started = time.monotonic()
        with self.build_log.open("w") as out:
            for argv in (
                ["go", "get", *(f"{p}@{VERSION}" for p in packages)],
                ["go", "build", "-ldflags", LDFLAGS, "-o", f"{self.bin_dir}/", *packages],
            ):
                out.write(f"$ {' '.join(argv)}\n")
                out.flush()
                left = BUILD_TIMEOUT_S - (time.monotonic() - started)
                try:
                    code = subprocess.run(
                        argv,
                        cwd=self.src_dir,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        timeout=max(left, 1.0),
                        check=False,
                        # Like the Jaeger build: the installed Go, never a downloaded toolchain.
                        env={**os.environ, "GOTOOLCHAIN": "local"},
                    ).returncode
                except subprocess.TimeoutExpired:
                    code = -1
                if code != 0:
                    raise ServiceError(
                        f"Expected `{' '.join(argv[:2])}` of {MODULE}@{VERSION} to succeed, but "
                        f"it exited with {code}. Full output: {self.build_log}"
                        f"{tail_of(self.build_log, 15)}"
                    )
        seconds = time.monotonic() - started
        info = {"module": f"{MODULE}@{VERSION}", "seconds": round(seconds, 1)}
        self.build_info.write_text(json.dumps(info, indent=2))
        log(f"hatchet: built {', '.join(COMMANDS)} in {seconds:.0f}s")
        return seconds

    def ensure_venv(self) -> float:
        """Creates the SDK's virtualenv from the pinned requirements unless it has them.

        Its own virtualenv, not the project's: the SDK pins grpcio/protobuf versions that
        clash with other peers' SDKs. A copy of the requirements inside marks it complete.
        """
        stamp = self.venv / "requirements.txt"
        wanted = REQUIREMENTS.read_text()
        if self.venv_python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return 0.0
        started = time.monotonic()
        log(f"hatchet: creating the SDK's virtualenv {self.venv}")
        shutil.rmtree(self.venv, ignore_errors=True)
        # The base interpreter, not this venv's: a venv made from a venv still works, but
        # this keeps the peer's site-packages independent of the project's.
        base = Path(sys.base_prefix) / "bin" / "python3"
        python = str(base if base.exists() else sys.executable)
        install_log = self.root / "venv-install.log"
        with install_log.open("w") as out:
            for argv in (
                [python, "-m", "venv", str(self.venv)],
                [str(self.venv_python), "-m", "pip", "install", "-r", str(REQUIREMENTS)],
            ):
                code = subprocess.run(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=VENV_TIMEOUT_S,
                    check=False,
                ).returncode
                if code != 0:
                    raise ServiceError(
                        f"Expected `{' '.join(argv[-4:])}` to succeed, but it exited with "
                        f"{code}.{tail_of(install_log, 15)}"
                    )
        stamp.write_text(wanted)
        seconds = time.monotonic() - started
        log(f"hatchet: SDK virtualenv ready in {seconds:.0f}s")
        return seconds

    # -- database and config ----------------------------------------------------------------
    def _admin(self) -> Any:
        """A connection as the bootstrap superuser (``Postgres.admin_dsn``), autocommit."""
        import psycopg

        return psycopg.connect(self.postgres.admin_dsn(), autocommit=True, connect_timeout=10)

    def database_exists(self) -> bool:
        with self._admin() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            return found.fetchone() is not None

    def ensure_database(self) -> None:
        """Creates ``hatchet_bench`` owned by the platform role, in UTC, unless it exists.

        As the bootstrap superuser: the platform role is NOCREATEDB (ADR 0044). Owning it lets
        Hatchet's migrations create what they need (``btree_gist`` is a trusted extension).
        """
        from psycopg import sql

        if self.database_exists():
            return
        with self._admin() as conn:
            role, db = sql.Identifier(self.postgres.role), sql.Identifier(DATABASE)
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
            # Hatchet refuses a database whose time zone is not UTC (DATABASE_ENFORCE_UTC_TIMEZONE).
            conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'UTC'").format(db))
        log(f"hatchet: created database {DATABASE}")

    def drop_database(self) -> bool:
        """Drops ``hatchet_bench`` (closing leftover sessions); False if it did not exist."""
        from psycopg import sql

        if not self.database_exists():
            return False
        with self._admin() as conn:
            db = sql.Identifier(DATABASE)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
        return True

    def run_admin(self, argv: list[str], what: str) -> str:
        """Runs a Hatchet command with the server's environment; its output goes to the log."""
        result = subprocess.run(
            argv,
            cwd=self.root,
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=ADMIN_TIMEOUT_S,
            check=False,
        )
        with self.log_file.open("a") as out:
            out.write(f"--- {what}: {' '.join(Path(a).name for a in argv[:2])} ---\n")
            out.write(result.stderr)
            if what != "token":  # the token is a credential: kept in its 0600 file only
                out.write(result.stdout)
        if result.returncode != 0:
            raise ServiceError(
                f"Expected Hatchet's {what} to succeed, but it exited with "
                f"{result.returncode}.{tail_of(self.log_file, 20)}"
            )
        return result.stdout

    def initialize(self) -> None:
        """Database, schema, keys, seed and an API token: each done once, then kept."""
        self.ensure_database()
        self.static_dir.mkdir(parents=True, exist_ok=True)
        index = self.static_dir / "index.html"
        if not index.exists():
            # hatchet-lite serves a dashboard from here; the benchmark needs none.
            index.write_text("<!doctype html><title>hatchet (REFLUX peer)</title>\n")
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.run_admin([str(self.binary("hatchet-migrate"))], "migrations")
        config = ["--config", str(self.config_dir)]
        self.run_admin(
            [
                str(self.binary("hatchet-admin")),
                "quickstart",
                "--skip",
                "certs",
                "--generated-config-dir",
                str(self.config_dir),
                "--overwrite=false",
                *config,
            ],
            "quickstart",
        )
        if not self.token_file.exists():
            out = self.run_admin(
                [
                    str(self.binary("hatchet-admin")),
                    "token",
                    "create",
                    "--name",
                    "reflux-bench",
                    *config,
                ],
                "token",
            )
            write_private(self.token_file, parse_token(out) + "\n")

    def token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except OSError:
            raise ServiceError(
                f"Expected Hatchet's API token in {self.token_file}; run "
                "`python -m infra.peers.hatchet up` first."
            ) from None

    def client_env(self) -> dict[str, str]:
        return client_env(self.ports, self.token())

    # -- run -----------------------------------------------------------------------------
    def start_timeout(self) -> float:
        return 120.0

    def port_in_use(self) -> bool:
        return any(port_open(HOST, port) for port in self.ports.all())

    def begin(self) -> bool:
        if self.is_running():
            return False
        if self.port_in_use():
            raise ServiceError(
                f"{self.name}: a port of {self.ports.all()} is already in use by a process this "
                f"project did not start (no live pid in {self.pid_file}). Stop it or use --port."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.initialize()
        self.launch()
        return True

    def launch(self) -> None:
        self.spawn(
            [str(self.binary("hatchet-lite")), "--config", str(self.config_dir)],
            cwd=self.root,
            env=self.env(),
        )

    def is_ready(self) -> bool:
        """The engine's health endpoint says ready (its queue and repository are up)."""
        try:
            with httpx.Client(timeout=2, trust_env=False) as http:
                ready = http.get(f"http://{HOST}:{self.ports.health}/ready").status_code == 200
        except httpx.HTTPError as exc:
            self.last_probe_error = str(exc)
            return False
        return ready and port_open(HOST, self.ports.grpc)

    def reset(self) -> None:
        """Drops the database and the generated config (keys, token): the next start is fresh."""
        if self.is_running():
            raise ServiceError(f"Expected {self.name} to be stopped before reset, but it runs.")
        dropped = self.drop_database()
        shutil.rmtree(self.config_dir, ignore_errors=True)
        log(f"hatchet: {'dropped' if dropped else 'no'} database {DATABASE}; config removed")

    def detail(self) -> str:
        built = "built" if self.binary("hatchet-lite").exists() else "not built"
        return f"{VERSION} ({built}), database {DATABASE}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.peers.hatchet", description=__doc__)
    parser.add_argument("action", choices=["install", *ACTIONS])
    parser.add_argument("--port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port")
    args = parser.parse_args(argv)
    server = HatchetServer(get_settings(), HatchetPorts(args.port))

    def install() -> str:
        server.install()
        return server.build_info.read_text()

    return run_action("hatchet", server, args.action, install=install)


if __name__ == "__main__":
    sys.exit(main())
