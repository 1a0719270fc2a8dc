"""The platform role `make up` bootstraps is not a superuser, has a password, and SCRAM is the
only way in; an older data folder (trust, superuser role) is upgraded in place. Runs against a
second PostgreSQL started from the project's service code, never the shared one."""

from __future__ import annotations

import stat
import uuid

import psycopg
import pytest
from psycopg import errors as pg_errors

from infra.services.postgres import PG_HBA, Postgres
from projections.postgres.migrations import apply_migrations
from tests.integration.postgres_fixtures import password_dsn, second_postgres  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _check_platform_role(pg: Postgres) -> None:
    dsn = pg.settings.postgres_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False, False)
        with pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        with pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute("ALTER SYSTEM SET work_mem = '8MB'")
        with pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute("CREATE ROLE intruder SUPERUSER")
        # Only the superuser may read the rules, which is what this also shows.
        with pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute("SELECT auth_method FROM pg_hba_file_rules")
    with pg._connect_admin() as admin:
        rules = admin.execute("SELECT auth_method FROM pg_hba_file_rules").fetchall()
    assert {method for (method,) in rules} == {"scram-sha-256"}
    host, port = pg.host_port
    # No password: refused (trust is gone); a wrong one: refused.
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(
            f"postgresql://{pg.role}@{host}:{port}/{pg.database}",
            passfile=str(pg.home / "no-such-passfile"),
        )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"postgresql://{pg.role}:wrong-password@{host}:{port}/{pg.database}")
    for path in (pg.passfile, pg.superuser_passfile):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pg.passfile.parent.stat().st_mode) == 0o700
    assert "password" not in dsn.split("?")[0] and ":" not in dsn.split("@")[0].split("//")[1]


def test_bootstrapped_role_is_not_a_superuser_and_needs_its_password(
    second_postgres: Postgres,  # noqa: F811
) -> None:
    _check_platform_role(second_postgres)
    assert password_dsn(second_postgres)


def test_migrations_pgvector_and_schemas_work_as_the_platform_role(
    second_postgres: Postgres,  # noqa: F811
) -> None:
    schema = f"test_roles_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(second_postgres.settings.postgres_dsn, autocommit=True) as conn:
        try:
            applied = apply_migrations(conn, schema)  # historian's pgvector migration included
            assert applied
            assert conn.execute("SELECT '[1,2,3]'::public.vector <=> '[1,2,4]'").fetchone()
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_an_old_trust_superuser_folder_is_upgraded_in_place(
    second_postgres: Postgres,  # noqa: F811
) -> None:
    pg = second_postgres
    # What an older `make up` left: trust for everyone, the platform role a superuser without
    # a password.
    with pg._connect_admin() as conn:
        conn.execute(f'ALTER ROLE "{pg.role}" SUPERUSER CREATEROLE PASSWORD NULL')
    hba = pg.pgdata / "pg_hba.conf"
    hba.write_text("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
    with pg._connect_admin() as conn:
        conn.execute("SELECT pg_reload_conf()")
    host, port = pg.host_port
    with psycopg.connect(f"postgresql://{pg.role}@{host}:{port}/{pg.database}") as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    # `make up` on the running server: no restart, twice (idempotent).
    assert pg.start() == 0.0
    assert pg.start() == 0.0
    assert hba.read_text() == PG_HBA
    _check_platform_role(pg)
