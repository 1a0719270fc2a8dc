"""Versioned SQL migrations for the read models: ``projections/sql/NNN_name.sql``.

:func:`apply_migrations` applies, in version order, every file not yet recorded in the target
schema's ``schema_migrations`` table, each in its own transaction together with its record, so a
failing migration leaves nothing half-applied. It is idempotent and safe to run from several
processes at once (a transaction-scoped advisory lock serialises them). A migration that was
changed after it was applied is refused: the database would silently differ from the files.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg

from foundation.errors import ConfigurationError
from projections.postgres.identifiers import DEFAULT_SCHEMA, quote_schema

__all__ = ["Migration", "MigrationError", "apply_migrations", "load_migrations"]

_FILE: Final = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class MigrationError(ConfigurationError):
    error_class = "Migration"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migrations shipped in ``projections/sql``, in version order."""
    folder = resources.files("projections").joinpath("sql")
    migrations: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(
                f"Expected migration files named NNN_name.sql, but found {entry.name!r}"
            )
        migrations.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"Expected unique migration versions, but got {versions}")
    return migrations


def apply_migrations(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> list[int]:
    """Bring ``schema`` up to date; returns the versions applied now (empty when up to date).

    ``conn`` should be in autocommit mode or idle: each migration runs in its own transaction.
    """
    quoted = quote_schema(schema)
    applied_now: list[int] = []
    for migration in load_migrations():
        with conn.transaction():
            # Keyed by schema, so migrating different schemas never waits on each other.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"reflux-migrations:{schema}",),
            )
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute(
                f"SELECT checksum FROM {quoted}.schema_migrations WHERE version = %s",
                (migration.version,),
            ).fetchone()
            if row is not None:
                if row[0] != migration.checksum:
                    raise MigrationError(
                        f"Expected migration {migration.version:03d}_{migration.name} to be "
                        f"unchanged since it was applied to schema {schema!r}, but its checksum "
                        "differs; add a new migration instead of editing an applied one"
                    )
                continue
            conn.execute(f"SET LOCAL search_path TO {quoted}")
            conn.execute(migration.sql)
            conn.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, name, checksum) "
                "VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration.version)
    return applied_now
