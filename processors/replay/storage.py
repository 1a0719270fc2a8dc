"""Where A/B replays are kept: Postgres (migration 008: ``replays``, ``replay_runs``) and, when
a ClickHouse handle is given, per-step rows in ClickHouse (migration 005: ``replay_steps``).

The runner writes, the API reads and inserts the queued row. Every write is idempotent by
replay id (and original run id), so a request redelivered after a crash rewrites its rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from processors.replay.report import RunReport
from processors.replay.shadow import ReplayPair
from projections.clickhouse import ClickHouse
from projections.postgres.identifiers import quote_schema

__all__ = [
    "TERMINAL",
    "ReplayRow",
    "get_replay",
    "insert_queued",
    "list_replay_runs",
    "list_replays",
    "mark_failed",
    "mark_running",
    "set_progress",
    "store_report",
    "write_clickhouse_steps",
]

TERMINAL: Final = frozenset({"completed", "failed"})

_COLUMNS: Final = (
    "replay_id, workflow_id, mutation_id, requested_by, spec, status, total, done, verdict, "
    "summary, error, created_at, started_at, finished_at, updated_at"
)


@dataclass(frozen=True)
class ReplayRow:
    replay_id: str
    workflow_id: str
    mutation_id: str | None
    requested_by: str
    spec: dict[str, Any]
    status: str
    total: int | None
    done: int
    verdict: str | None
    summary: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


def _t(schema: str, name: str) -> str:
    return f"{quote_schema(schema)}.{name}"


def insert_queued(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    replay_id: str,
    workflow_id: str,
    mutation_id: str | None,
    requested_by: str,
    spec: dict[str, Any],
) -> None:
    conn.execute(
        f"INSERT INTO {_t(schema, 'replays')} "
        "(replay_id, workflow_id, mutation_id, requested_by, spec, status) "
        "VALUES (%s, %s, %s, %s, %s, 'queued') ON CONFLICT (replay_id) DO NOTHING",
        (replay_id, workflow_id, mutation_id, requested_by, Jsonb(spec)),
    )


def mark_running(conn: psycopg.Connection[Any], schema: str, replay_id: str) -> None:
    conn.execute(
        f"UPDATE {_t(schema, 'replays')} SET status = 'running', started_at = now(), "
        "updated_at = now(), done = 0, error = NULL WHERE replay_id = %s",
        (replay_id,),
    )


def set_progress(
    conn: psycopg.Connection[Any], schema: str, replay_id: str, done: int, total: int
) -> None:
    conn.execute(
        f"UPDATE {_t(schema, 'replays')} SET done = %s, total = %s, updated_at = now() "
        "WHERE replay_id = %s",
        (done, total, replay_id),
    )


def mark_failed(conn: psycopg.Connection[Any], schema: str, replay_id: str, error: str) -> None:
    conn.execute(
        f"UPDATE {_t(schema, 'replays')} SET status = 'failed', error = %s, "
        "finished_at = now(), updated_at = now() WHERE replay_id = %s",
        (error, replay_id),
    )


def store_report(
    conn: psycopg.Connection[Any],
    schema: str,
    replay_id: str,
    *,
    summary: dict[str, Any],
    runs: Sequence[RunReport],
    pairs: Sequence[ReplayPair],
) -> None:
    """The per-run rows and the aggregate, in one transaction (a reader sees all or none)."""
    with conn.transaction():
        conn.execute(f"DELETE FROM {_t(schema, 'replay_runs')} WHERE replay_id = %s", (replay_id,))
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {_t(schema, 'replay_runs')} (replay_id, position, original_run_id, "
                "candidate_run_id, outcome, output_equal, original_status, candidate_status, "
                "original_ms, candidate_ms, report) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        replay_id,
                        position,
                        run.original_run_id,
                        run.candidate_run_id,
                        run.outcome,
                        run.output_equal,
                        pair.original.status,
                        pair.candidate.status,
                        pair.original.duration_ms,
                        pair.candidate.duration_ms,
                        Jsonb(run.to_json()),
                    )
                    for position, (run, pair) in enumerate(zip(runs, pairs, strict=True))
                ],
            )
        conn.execute(
            f"UPDATE {_t(schema, 'replays')} SET status = 'completed', verdict = %s, "
            "summary = %s, total = %s, done = %s, finished_at = now(), updated_at = now() "
            "WHERE replay_id = %s",
            (summary["verdict"], Jsonb(summary), len(runs), len(runs), replay_id),
        )


def get_replay(conn: psycopg.Connection[Any], schema: str, replay_id: str) -> ReplayRow | None:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"SELECT {_COLUMNS} FROM {_t(schema, 'replays')} WHERE replay_id = %s", (replay_id,)
        ).fetchone()
    return None if row is None else ReplayRow(**row)


def list_replays(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    workflow_id: str | None = None,
    mutation_id: str | None = None,
    limit: int = 50,
    tenant: str | None = None,
) -> list[ReplayRow]:
    """Newest first; ``tenant``: replays of that tenant's workflows only."""
    where: list[str] = []
    params: list[object] = []
    if workflow_id is not None:
        where.append("workflow_id = %s")
        params.append(workflow_id)
    if tenant is not None:
        where.append(
            f"workflow_id IN (SELECT workflow_id FROM {_t(schema, 'workflows')} WHERE tenant = %s)"
        )
        params.append(tenant)
    if mutation_id is not None:
        where.append("mutation_id = %s")
        params.append(mutation_id)
    sql = f"SELECT {_COLUMNS} FROM {_t(schema, 'replays')}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, replay_id LIMIT %s"
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(sql, [*params, limit]).fetchall()
    return [ReplayRow(**row) for row in rows]


def list_replay_runs(
    conn: psycopg.Connection[Any], schema: str, replay_id: str
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            f"SELECT report FROM {_t(schema, 'replay_runs')} WHERE replay_id = %s "
            "ORDER BY position",
            (replay_id,),
        ).fetchall()
    return [row["report"] for row in rows]


def write_clickhouse_steps(
    ch: ClickHouse,
    database: str,
    replay_id: str,
    workflow_id: str,
    runs: Sequence[RunReport],
) -> int:
    """One row per (run, step, side); returns how many were written."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    rows: list[dict[str, Any]] = []
    for run in runs:
        for step in run.body["steps"]:
            for side in ("original", "candidate"):
                data = step[side]
                if data is None:
                    continue
                rows.append(
                    {
                        "replay_id": replay_id,
                        "workflow_id": workflow_id,
                        "side": side,
                        "original_run_id": run.original_run_id,
                        "run_id": run.body[side]["run_id"],
                        "step_id": step["step_id"],
                        "status": data["status"],
                        "served": data["served"],
                        "attempts": data["attempts"],
                        "duration_ms": data["duration_ms"],
                        "tokens": data["tokens"],
                        "calls": data["calls"],
                        "output_equal": int(step["output_equal"]),
                        "written_at": now,
                    }
                )
    if rows:
        # JSONEachRow: one statement, values escaped by the JSON encoder (no string building).
        body = "\n".join(json.dumps(row) for row in rows)
        ch.command(f"INSERT INTO {database}.replay_steps FORMAT JSONEachRow\n{body}")
    return len(rows)
