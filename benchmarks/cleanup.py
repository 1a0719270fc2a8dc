"""What every benchmark leaves behind and removes: the topics of its own prefix and the
Postgres schemas of its engine."""

from __future__ import annotations

import contextlib

import psycopg

from foundation.settings import Settings
from projections.postgres.identifiers import quote_schema
from streams.admin import admin_client

__all__ = ["delete_prefix_topics", "drop_engine_schemas"]


def delete_prefix_topics(settings: Settings, timeout: float = 60.0) -> None:
    """Deletes every topic of ``settings.topic_prefix`` (a benchmark's own ``bench-…`` prefix);
    best effort: a benchmark's result must not be lost to a failed cleanup."""
    with contextlib.suppress(Exception):
        admin = admin_client(settings)
        prefix = settings.topic_prefix + "."
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if topics:
            for future in admin.delete_topics(topics, operation_timeout=timeout).values():
                with contextlib.suppress(Exception):
                    future.result(timeout)


def drop_engine_schemas(settings: Settings, schema: str) -> None:
    """Drops an engine's read-model schema ``schema`` and its API schema (``<schema>_api``);
    best effort, like :func:`delete_prefix_topics`."""
    with (
        contextlib.suppress(Exception),
        psycopg.connect(settings.postgres_dsn, autocommit=True) as conn,
    ):
        for name in (schema, f"{schema}_api"):
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(name)} CASCADE")
