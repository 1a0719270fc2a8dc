"""Crash recovery: ``kill -9`` the scheduler and a worker with runs in flight, restart them.

Every run completes; no attempt (invocation id) is executed twice; the Postgres projection holds
every event of every run exactly once, and folding it gives the same state as the projection.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from foundation.settings import Settings
from schemas.models import StartRun, WorkflowRegistered
from tests.integration.engine_fixtures import TERMINAL, HarnessFactory, replayed_state
from tests.integration.http_fixtures import HttpTestServer
from tests.support.waiting import eventually
from workflows import parse_workflow

ROOT = Path(__file__).resolve().parents[2]
RUNS = 12


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "REFLUX_TOPIC_PREFIX": settings.topic_prefix,
        "REFLUX_DEFAULT_PARTITIONS": str(settings.default_partitions),
        "REFLUX_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
    }


class Process:
    def __init__(
        self,
        name: str,
        args: list[str],
        settings: Settings,
        logs: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.args, self.settings, self.logs = name, args, settings, logs
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reflux.cli", *self.args],
            cwd=ROOT,
            env={**_env(self.settings), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def tail(self) -> str:
        files = sorted(self.logs.glob(f"{self.name}-*.log"))
        return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in files)


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
    scheduler = Process("scheduler", ["scheduler", "--instance-id", "crash"], settings, tmp_path)
    worker = Process("worker", ["worker", "--nodes", "http,transform"], settings, tmp_path)
    try:
        definition = parse_workflow(
            {
                "id": "crashy",
                "defaults": {
                    "retry": {"max_attempts": 5, "initial_backoff": "100ms"},
                    "timeout": "20s",
                },
                "steps": [
                    {
                        "id": "one",
                        "node": "http.request@^1",
                        "params": {"url": f"{http.url}/slow?ms=400"},
                    },
                    {
                        "id": "two",
                        "node": "transform@^1",
                        "needs": ["one"],
                        "params": {"expression": "slept_ms", "data": "{{ steps.one.output.body }}"},
                    },
                    {
                        "id": "three",
                        "node": "http.request@^1",
                        "needs": ["two"],
                        "params": {"url": f"{http.url}/slow?ms=400"},
                    },
                ],
            }
        )
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

        _wait_for(
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

        _wait_for(finished, 120, "every run to finish", scheduler, worker)
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


def _wait_for(check: Callable[[], bool], timeout: float, what: str, *procs: Process) -> None:
    """Until ``check()`` holds; fails at once if one of ``procs`` exits, and with their log
    tails on timeout."""

    def alive_and_checked() -> bool:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is not None:
                pytest.fail(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        return check()

    eventually(
        alive_and_checked,
        timeout,
        what,
        interval=0.2,
        describe=lambda: "\n".join(p.tail() for p in procs),
    )
