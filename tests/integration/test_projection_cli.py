"""``reflux projections migrate|rebuild`` through the argparse wiring, against real services."""

# ruff: noqa: F401, F811

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator

import psycopg
import pytest

from foundation.settings import Settings
from projections.cli import add_projections_commands
from projections.postgres.migrations import load_migrations
from schemas.models import WorkflowRegistered
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import admin, catalog, kafka_settings, topics
from tests.integration.test_projection_scenarios import T0, pg_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="reflux")
    add_projections_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = args.handler(args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_migrate_then_rebuild_with_progress(
    kafka_settings: Settings, topics: TopicCatalog, pg_schema: str
) -> None:
    with Producer(kafka_settings) as producer:
        for version in (1, 2):
            producer.send(
                topics.workflows,
                "wf",
                WorkflowRegistered(
                    workflow_id="wf", version=version, definition={}, registered_at=T0
                ),
            )
    common = ["--schema", pg_schema, "--prefix", kafka_settings.topic_prefix]

    code, out, _ = run_cli(["projections", "migrate", *common])
    assert (code, out.strip().splitlines()) == (
        0,
        # Every shipped migration, in order (001_read_models, 002_node_catalog, ...).
        [f"applied {m.version:03d}_{m.name} to schema {pg_schema}" for m in load_migrations()],
    )
    code, out, _ = run_cli(["projections", "migrate", *common])
    assert code == 0 and "is up to date" in out

    code, out, err = run_cli(["projections", "rebuild", *common, "--timeout", "30"])
    assert (code, err) == (0, "")
    lines = out.strip().splitlines()
    assert lines[-2].startswith(f"rebuild {pg_schema}: 2/2 records (100.0%)")
    assert lines[-1].startswith(f"rebuilt schema {pg_schema} from 2 records")
    with psycopg.connect(kafka_settings.postgres_dsn) as conn:
        rows = conn.execute(f'SELECT version FROM "{pg_schema}".workflows ORDER BY 1').fetchall()
    assert rows == [(1,), (2,)]


def test_bad_schema_is_a_clear_error(kafka_settings: Settings) -> None:
    code, _, err = run_cli(["projections", "migrate", "--schema", "Bad-Name"])
    assert code == 1
    assert "Expected a Postgres schema name" in err
