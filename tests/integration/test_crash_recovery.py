"""Crash recovery: ``kill -9`` the scheduler and a worker with runs in flight, restart them.

Every run completes; no attempt (invocation id) is executed twice; the Postgres projection holds
every event of every run exactly once, and folding it gives the same state as the projection.
"""

from __future__ import annotations

import collections
import uuid
from pathlib import Path
from typing import Any

import psycopg

from schemas.models import StartRun, WorkflowRegistered
from tests.integration.engine_fixtures import (
    TERMINAL,
    HarnessFactory,
    replayed_state,
    slow_http_chain,
)
from tests.integration.http_fixtures import HttpTestServer
from tests.support.processes import Component, wait_for
from workflows import parse_workflow

RUNS = 12


def test_kill_9_scheduler_and_worker_with_runs_in_flight(
    engine_harness: HarnessFactory, http: HttpTestServer, tmp_path: Path
) -> None:
    # The projector stays up in this process; scheduler and workers are real processes.
    harness = engine_harness(
        scheduler=False, workers=False, trigger_router=False, client_id="crash-test"
    )
    settings, engine, schema, producer = (
        harness.settings,
        harness.engine,
        harness.schema,
        harness.producer,
    )
    scheduler = Component("scheduler", ["scheduler", "--instance-id", "crash"], settings, tmp_path)
    worker = Component("worker", ["worker", "--nodes", "http,transform"], settings, tmp_path)
    try:
        definition = parse_workflow(slow_http_chain("crashy", http.url, slow_ms=400, timeout="20s"))
        producer.send(
            engine.catalog.workflows,
            "crashy@1",
            WorkflowRegistered(
                workflow_id="crashy",
                version=1,
                definition=definition.to_json_dict(),
                registered_at=definition_time(),
            ),
        )
        producer.flush(10)
        scheduler.start()
        worker.start()
        run_ids = [str(uuid.uuid4()) for _ in range(RUNS)]
        for run_id in run_ids:
            producer.send(
                engine.catalog.commands,
                run_id,
                StartRun(run_id=run_id, workflow_id="crashy", inputs={}),
            )
        producer.flush(10)

        wait_for(
            lambda: len(http.requests_to("/slow")) >= RUNS // 2,
            60,
            "work in flight",
            scheduler,
            worker,
        )
        scheduler.kill9()
        worker.kill9()  # both reaped: nothing of them runs any more, restart at once
        scheduler.start()
        worker.start()

        def finished() -> bool:
            return all((harness.run(r) or _NONE).status in TERMINAL for r in run_ids)

        wait_for(finished, 120, "every run to finish", scheduler, worker)
        statuses = collections.Counter(harness.run(r).status for r in run_ids)  # type: ignore[union-attr]
        assert statuses == {"succeeded": RUNS}, (statuses, scheduler.tail(), worker.tail())

        # No attempt executed twice: each invocation id reached the HTTP server at most once.
        seen = collections.Counter(
            r.header("x-reflux-invocation-id") for r in http.requests_to("/slow")
        )
        assert seen and max(seen.values()) == 1, [k for k, v in seen.items() if v > 1]

        with psycopg.connect(settings.postgres_dsn) as conn:
            for run_id in run_ids:
                seqs = [
                    row[0]
                    for row in conn.execute(
                        f'SELECT seq FROM "{schema}".run_events WHERE run_id = %s ORDER BY seq',
                        (run_id,),
                    )
                ]
                run = harness.run(run_id)
                assert run is not None
                # Every event exactly once: a gapless, duplicate-free 0..last_seq.
                assert seqs == list(range(run.last_seq + 1)), (run_id, seqs)
                state = replayed_state(harness, run_id)
                assert state is not None and state.status.value == run.status
                assert state.last_seq == run.last_seq
    finally:
        scheduler.stop()
        worker.stop()


class _NoRun:
    status = "missing"


_NONE: Any = _NoRun()


def definition_time() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
