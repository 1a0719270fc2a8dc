"""Versioned ClickHouse DDL for the traces store: ``projections/clickhouse_sql/NNN_name.sql``.

Files are templates (:class:`string.Template`, ``$name``) filled with the database name, the
Kafka broker list, the traces topic of the settings' catalog, the consumer group and the ingest
tuning. :func:`apply` runs, in version order, every migration not yet recorded in the database's
``schema_migrations`` table and then records it.

ClickHouse has no transactional DDL, so every statement is written to be idempotent (``IF NOT
EXISTS``): a migration that failed half-way is completed by running :func:`apply` again. The
checksum is taken over the template, not the rendered SQL, so moving to another broker does not
look like an edited migration; an edited template is refused, as for the Postgres migrations.
Settings baked into the Kafka table at creation (tuning) change only by a new migration that
recreates ``traces_queue``. The connection (broker list and Kafka security, ``streams.security``)
is not schema: it rides on the ``$kafka_broker_list`` placeholder (so the templates and their
checksums stay as applied), and :func:`apply` recreates the Kafka table when the one in the store
points at another broker or protocol or user than the settings (:func:`reconnect_ingest`, which
also serves a rotated password: ClickHouse hides the stored one).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Final

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from projections.clickhouse import ClickHouse
from streams.security import clickhouse_kafka_settings
from streams.topics import TopicCatalog

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DATABASE",
    "IngestTuning",
    "Migration",
    "MigrationError",
    "TemplateParams",
    "applied_versions",
    "apply",
    "consumer_group",
    "drop",
    "load_migrations",
    "quote_string",
    "reconnect_ingest",
    "render",
    "template_params",
    "validate_database",
]

DEFAULT_DATABASE: Final = "reflux"
SQL_DIR: Final = Path(__file__).resolve().parent.parent / "clickhouse_sql"

_FILE: Final = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# A statement ends with ";" at the end of a line; the templates keep ";" out of everything else.
_STATEMENT_END: Final = re.compile(r";[ \t]*(?:\n|$)")
INGEST_MIGRATIONS: Final = (3, 7, 8)
"""The migrations that (re)create the Kafka table ``traces_queue`` and the views reading it;
each later one replaces the earlier ones' (007: one JSONAsString column, ADR 0067; 008: the
same with a pattern that accepts encode_trace's layout before the per-field check, ADR 0068)."""
INGEST_VIEWS: Final = ("traces_ingest_mv", "traces_errors_mv", "traces_mv")
"""The views that read the Kafka table (007: ``traces_ingest_mv``; 003: the other two), in the
order to drop them: consumption stops with the first, and a good row never goes to the errors
view alone."""
_QUEUE_SETTING: Final = re.compile(r"\b(kafka_[a-z_]+) = '((?:[^'\\]|\\.)*)'")
# What identifies the queue's connection; the password is compared by nobody (ClickHouse shows
# '[HIDDEN]'), so a rotated password needs reconnect_ingest.
_CONNECTION_KEYS: Final = (
    "kafka_broker_list",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
)


class MigrationError(ConfigurationError):
    error_class = "ClickHouseMigration"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    template: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IngestTuning:
    """Kafka engine settings that trade freshness against block size (measured in
    benchmarks/traces_bench.py; see docs/traces.md)."""

    flush_interval_ms: int = 250
    """How long the engine collects rows before it writes a block (ClickHouse default 7500)."""
    poll_timeout_ms: int = 100
    """How long one poll waits for messages."""
    num_consumers: int = 1
    """Consumers (threads) per server; ClickHouse caps it at the number of physical cores."""

    def __post_init__(self) -> None:
        for name in ("flush_interval_ms", "poll_timeout_ms", "num_consumers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MigrationError(f"Expected {name} to be a positive integer, but got {value!r}")


@dataclass(frozen=True, slots=True)
class TemplateParams:
    database: str
    kafka_broker_list: str
    traces_topic: str
    consumer_group: str
    tuning: IngestTuning = field(default_factory=IngestTuning)
    kafka_security: Mapping[str, str] = field(default_factory=dict, repr=False)
    """``streams.security.clickhouse_kafka_settings``: SETTINGS after the broker list."""

    def substitutions(self) -> dict[str, str]:
        """Values as they appear in SQL: an identifier, quoted strings, integers."""
        security = "".join(
            f",\n    {name} = {quote_string(value)}" for name, value in self.kafka_security.items()
        )
        return {
            "database": validate_database(self.database),
            "kafka_broker_list": quote_string(self.kafka_broker_list) + security,
            "traces_topic": quote_string(self.traces_topic),
            "consumer_group": quote_string(self.consumer_group),
            "kafka_flush_interval_ms": str(self.tuning.flush_interval_ms),
            "kafka_poll_timeout_ms": str(self.tuning.poll_timeout_ms),
            "kafka_num_consumers": str(self.tuning.num_consumers),
        }


def validate_database(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise MigrationError(
            "Expected a ClickHouse database name of letters, digits and '_' (not starting with "
            f"a digit, at most 63 characters), but got {name!r}"
        )
    return name


def quote_string(value: str) -> str:
    """A ClickHouse string literal (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def consumer_group(settings: Settings, database: str = DEFAULT_DATABASE) -> str:
    """The Kafka consumer group of one traces store: per topic prefix and per database, so two
    stores (or two test databases) each read every trace instead of splitting the partitions."""
    return f"{settings.topic_prefix}.clickhouse.{validate_database(database)}"


def template_params(
    settings: Settings,
    *,
    database: str = DEFAULT_DATABASE,
    tuning: IngestTuning | None = None,
) -> TemplateParams:
    return TemplateParams(
        database=validate_database(database),
        kafka_broker_list=settings.kafka_bootstrap,
        traces_topic=TopicCatalog.from_settings(settings).traces.topic,
        consumer_group=consumer_group(settings, database),
        tuning=tuning or IngestTuning(),
        kafka_security=clickhouse_kafka_settings(settings),
    )


def load_migrations(folder: Path = SQL_DIR) -> list[Migration]:
    """The migrations shipped in ``projections/clickhouse_sql``, in version order."""
    migrations: list[Migration] = []
    for path in folder.iterdir():
        if path.suffix != ".sql":
            continue
        match = _FILE.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"Expected migration files named NNN_name.sql, but found {path.name!r}"
            )
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"Expected unique migration versions, but got {versions}")
    return migrations


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def render(migration: Migration, params: TemplateParams) -> list[str]:
    """The migration's statements with every placeholder filled (pure; no ClickHouse needed)."""
    try:
        sql = Template(migration.template).substitute(params.substitutions())
    except (KeyError, ValueError) as exc:
        raise MigrationError(
            f"Expected migration {migration.version:03d}_{migration.name} to use only the "
            f"placeholders {sorted(params.substitutions())}, but it has a bad one: {exc}"
        ) from None
    statements = [s.strip() for s in _STATEMENT_END.split(_strip_comments(sql))]
    return [s for s in statements if s]


def _bootstrap(ch: ClickHouse, database: str) -> None:
    ch.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    ch.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations ("
        " version UInt32, name String, checksum String,"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
        " ENGINE = MergeTree ORDER BY version"
    )


def applied_versions(ch: ClickHouse, database: str = DEFAULT_DATABASE) -> dict[int, str]:
    """version -> checksum of the migrations recorded in ``database`` (empty if none)."""
    database = validate_database(database)
    exists = ch.query(
        "SELECT count() AS n FROM system.tables WHERE database = %(db)s "
        "AND name = 'schema_migrations'",
        {"db": database},
    )
    if not exists or int(exists[0]["n"]) == 0:
        return {}
    rows = ch.query(f"SELECT version, checksum FROM {database}.schema_migrations ORDER BY version")
    return {int(r["version"]): str(r["checksum"]) for r in rows}


def apply(
    ch: ClickHouse,
    settings: Settings,
    *,
    database: str = DEFAULT_DATABASE,
    tuning: IngestTuning | None = None,
    migrations: list[Migration] | None = None,
) -> list[int]:
    """Bring ``database`` up to date; returns the versions applied now (empty when current).

    Applying an ingest migration (003, 007, 008) starts consumption (a Kafka table consumes once
    a view is attached), so the caller must be the process that owns the store. On a new store
    003 and 007 are recorded without running: 008 replaces their queue and views. Not safe to
    run from two processes at once against one server: ClickHouse has no lock for it; one owner
    applies.
    """
    params = template_params(settings, database=database, tuning=tuning)
    _bootstrap(ch, params.database)
    done = applied_versions(ch, params.database)
    applied_now: list[int] = []
    migrations = migrations if migrations is not None else load_migrations()
    pending_ingest = [
        m.version for m in migrations if m.version in INGEST_MIGRATIONS and m.version not in done
    ]
    for migration in migrations:
        recorded = done.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(
                    f"Expected migration {migration.version:03d}_{migration.name} to be unchanged "
                    f"since it was applied to database {params.database!r}, but its checksum "
                    "differs; add a new migration instead of editing an applied one"
                )
            continue
        # An ingest migration that a later pending one replaces is recorded without running:
        # its Kafka table would start consuming only to be dropped a moment later.
        superseded = migration.version in pending_ingest[:-1]
        for statement in [] if superseded else render(migration, params):
            ch.command(statement)
        ch.command(
            f"INSERT INTO {params.database}.schema_migrations (version, name, checksum) "
            "VALUES (%(version)s, %(name)s, %(checksum)s)",
            {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
        )
        applied_now.append(migration.version)
    had_queue = any(v in done for v in INGEST_MIGRATIONS)
    if had_queue and _queue_connection(ch, params.database) != _connection(params):
        log.warning(
            "traces_queue in %s reads another broker/protocol/user than the settings: recreating "
            "it (the consumer group keeps its offsets)",
            params.database,
        )
        reconnect_ingest(ch, settings, database=database, tuning=tuning)
    return applied_now


def _connection(params: TemplateParams) -> dict[str, str]:
    wanted = {"kafka_broker_list": params.kafka_broker_list, **params.kafka_security}
    return {k: wanted[k] for k in _CONNECTION_KEYS if k in wanted}


def _queue_connection(ch: ClickHouse, database: str) -> dict[str, str] | None:
    rows = ch.query(
        "SELECT create_table_query AS q FROM system.tables "
        "WHERE database = %(db)s AND name = 'traces_queue'",
        {"db": database},
    )
    if not rows:
        return None
    found = {
        name: value.replace("\\'", "'").replace("\\\\", "\\")
        for name, value in _QUEUE_SETTING.findall(str(rows[0]["q"]))
    }
    return {k: found[k] for k in _CONNECTION_KEYS if k in found}


def reconnect_ingest(
    ch: ClickHouse,
    settings: Settings,
    *,
    database: str = DEFAULT_DATABASE,
    tuning: IngestTuning | None = None,
    migrations: list[Migration] | None = None,
) -> None:
    """Recreate the Kafka table and its views with the settings' connection (another broker,
    protocol, user or password). The consumer group is the same, so ingestion resumes at the
    committed offsets."""
    params = template_params(settings, database=database, tuning=tuning)
    applied = applied_versions(ch, params.database)
    ingests = [
        m
        for m in (migrations if migrations is not None else load_migrations())
        if m.version in INGEST_MIGRATIONS
    ]
    # The queue as the store's applied migrations define it (the newest of them), so a store
    # not yet upgraded keeps its own layout; the newest shipped one when none is recorded.
    ingest = max(
        (m for m in ingests if m.version in applied),
        key=lambda m: m.version,
        default=ingests[-1],
    )
    for view in INGEST_VIEWS:
        ch.command(f"DROP VIEW IF EXISTS {params.database}.{view}")
    ch.command(f"DROP TABLE IF EXISTS {params.database}.traces_queue")
    for statement in render(ingest, params):  # every statement is IF NOT EXISTS
        ch.command(statement)


def drop(ch: ClickHouse, database: str = DEFAULT_DATABASE) -> None:
    """Delete the whole store (tests, rebuilds). Views and the Kafka table go first: with chdb
    3.7.2 ``DROP DATABASE ... SYNC`` hangs while a Kafka table in it has attached views."""
    database = validate_database(database)
    for view in INGEST_VIEWS:
        ch.command(f"DROP VIEW IF EXISTS {database}.{view}")
    ch.command(f"DROP TABLE IF EXISTS {database}.traces_queue")
    ch.command(f"DROP DATABASE IF EXISTS {database}")
