"""A second PostgreSQL started by the project's own service code (infra/services/postgres.py)
in a temporary data folder on a free port: the bootstrapped roles and auth under test, and a
database that is *not* the platform's for database.query to reach."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.settings import Settings
from infra.services.credentials import read_pgpass_password
from infra.services.postgres import Postgres

__all__ = ["second_postgres", "start_postgres"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(data_dir: Path) -> Postgres:
    port = _free_port()
    passfile = data_dir / "credentials" / "postgres.pgpass"
    settings = Settings(
        data_dir=data_dir,
        postgres_dsn=f"postgresql://reflux@127.0.0.1:{port}/reflux?passfile={passfile}",
    )
    service = Postgres(settings)
    service.start()
    return service


def password_dsn(service: Postgres) -> str:
    """The platform role's DSN with the password in it (what an operator puts in a secret)."""
    password = read_pgpass_password(service.passfile, service.role)
    host, port = service.host_port
    return f"postgresql://{service.role}:{password}@{host}:{port}/{service.database}"


@pytest.fixture(scope="session")
def second_postgres() -> Iterator[Postgres]:
    # Under /tmp, not pytest's tmp_path: as root the server runs as 'nobody', which must reach it.
    with tempfile.TemporaryDirectory(prefix="reflux-pg-") as folder:
        Path(folder).chmod(0o755)
        service = start_postgres(Path(folder))
        try:
            yield service
        finally:
            service.stop()
