"""Postgres read models of the run engine: schema migrations, appliers, batch writer, queries.

- :mod:`~projections.postgres.migrations` -- ``apply_migrations(conn, schema)``;
- :mod:`~projections.postgres.appliers` -- one pure applier per event (``plan(event, schema)``);
- :mod:`~projections.postgres.writer` -- a batch and its offsets in one transaction;
- :mod:`~projections.postgres.queries` -- the read API used by the HTTP layer.

The Kafka side (consuming, dead-lettering, rebuilds) is :mod:`projections.projector`.
"""

from projections.postgres.identifiers import DEFAULT_SCHEMA, validate_schema
from projections.postgres.migrations import apply_migrations

__all__ = ["DEFAULT_SCHEMA", "apply_migrations", "validate_schema"]
