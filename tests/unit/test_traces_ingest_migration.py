"""Migration 007 (ADR 0067) as rendered: the order of its statements is what makes the upgrade
lose nothing, and the last ingest migration is the one a new store runs."""

from __future__ import annotations

from pathlib import Path

from foundation.settings import Settings
from projections.traces.migrations import (
    INGEST_MIGRATIONS,
    INGEST_VIEWS,
    load_migrations,
    render,
    template_params,
)


def _statements(tmp_path: Path) -> list[str]:
    migrations = {m.version: m for m in load_migrations()}
    params = template_params(Settings(data_dir=tmp_path), database="db")
    return render(migrations[7], params)


def _heads(statements: list[str]) -> list[str]:
    return [
        " ".join(s.split()[: 7 if s.startswith("CREATE MATERIALIZED") else 6]) for s in statements
    ]


def test_007_drops_the_errors_view_first_and_attaches_the_consuming_view_last(
    tmp_path: Path,
) -> None:
    assert _heads(_statements(tmp_path)) == [
        "DROP VIEW IF EXISTS db.traces_ingest_mv",
        # 003's views: errors first, so no good row is read by the errors view alone.
        "DROP VIEW IF EXISTS db.traces_errors_mv",
        "DROP VIEW IF EXISTS db.traces_mv",
        "DROP TABLE IF EXISTS db.traces_queue",
        "CREATE TABLE IF NOT EXISTS db.traces_ingest",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS db.traces_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS db.traces_errors_mv",
        "CREATE TABLE IF NOT EXISTS db.traces_queue",
        # Consumption starts when this one attaches: both outputs exist by then.
        "CREATE MATERIALIZED VIEW IF NOT EXISTS db.traces_ingest_mv",
    ]


def test_007_reads_one_string_per_message_and_routes_through_a_null_table(
    tmp_path: Path,
) -> None:
    statements = _statements(tmp_path)
    queue = next(s for s in statements if "ENGINE = Kafka" in s)
    assert "kafka_format = 'JSONAsString'" in queue
    assert "kafka_handle_error_mode = 'stream'" in queue
    assert queue.split("ENGINE")[0].split("(", 1)[1].split() == ["raw", "String", ")"]
    staging = next(
        s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS db.traces_ingest")
    )
    assert staging.rstrip().endswith("ENGINE = Null")
    ingest_view = statements[-1]
    assert "FROM db.traces_queue" in ingest_view
    # Every other view reads the Null table, never the queue (a SELECT there would consume).
    for view in statements[5:7]:
        assert "FROM db.traces_ingest\n" in view and "traces_queue" not in view


def test_the_ingest_migrations_and_views_name_the_newest_queue() -> None:
    versions = {m.version for m in load_migrations()}
    assert set(INGEST_MIGRATIONS) <= versions
    assert max(INGEST_MIGRATIONS) == 7
    assert INGEST_VIEWS[0] == "traces_ingest_mv"
