"""Chaos: a burst of runs against a sick service while components die and the broker restarts.

Issue 19's acceptance test, on real services with every component in its own process under the
product's own supervisor (``reflux supervise``, ADR 0018): one scheduler, two workers, one
projector, on a Kafka broker of this test's own (restarting the shared one would break the
other tests running beside it). A local service answers the five HTTP steps of each run with
fixed odds: 20% ``500``, 10% a 6 s hang (the step timeout is 3 s), else ``200``. The fate of
every call is a seeded draw (``odds_outcome``), so the runs that *can* succeed within four
attempts are known in advance. (The timeout was 1 s; on a CI machine at load 10 a ``200`` then
reached the worker after it and burned an attempt: that measures the machine, not the engine.)

While the burst of :data:`RUNS` runs is in flight: ``kill -9`` of the scheduler, of one worker
and of the projector (each at a different moment, chosen by how many calls the service has
seen), and a controlled restart of the broker. Afterwards, counted and asserted:

- **lost**: runs not terminal -- must be 0;
- **duplicated**: attempts (invocation ids) the service executed more than once -- must be 0;
- **failed**: the success rate is within 3 points of the rate the odds allow;
- the Postgres projection holds exactly the events on Kafka, run by run, and folding them gives
  the projected run (status, last seq, each step's status).
"""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from foundation.settings import Settings
from projections.postgres import queries
from schemas.models import StartRun, WorkflowRegistered
from schemas.statuses import TERMINAL_RUN_STATUSES
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import drop_schemas
from tests.integration.http_fixtures import HttpTestServer, odds_outcome
from tests.integration.projection_checks import assert_projection_is_log, projected_runs
from tests.support.private_kafka import PrivateKafka, private_kafka
from tests.support.processes import supervised_engine, wait_for
from workflows import parse_workflow

log = logging.getLogger(__name__)

RUNS = 200
STEPS = 5
MAX_ATTEMPTS = 4
FAIL, HANG = 0.2, 0.1
PARTITIONS = 6
TOLERANCE = 0.03
SEED = "reflux-chaos-1"


@pytest.fixture
def chaos_kafka(kafka_settings: Settings, tmp_path: Path) -> Iterator[PrivateKafka]:
    with private_kafka(
        kafka_settings,
        tmp_path / "broker",
        topic_prefix=f"chaos-{uuid.uuid4().hex[:6]}",
        default_partitions=PARTITIONS,
    ) as broker:
        yield broker


def _workflow(http: HttpTestServer) -> dict[str, Any]:
    steps = []
    for k in range(STEPS):
        url = (
            f"{http.url}/odds?run={{{{ inputs.index }}}}&step=s{k}&seed={SEED}"
            f"&fail={FAIL}&hang={HANG}&hang_ms=6000"
        )
        step: dict[str, Any] = {"id": f"s{k}", "node": "http.request@^1", "params": {"url": url}}
        if k:
            step["needs"] = [f"s{k - 1}"]
        steps.append(step)
    return {
        "id": "chaos",
        "inputs": {"index": {"type": "integer", "required": True}},
        "defaults": {
            "retry": {"max_attempts": MAX_ATTEMPTS, "initial_backoff": "200ms"},
            "timeout": "3s",
        },
        "steps": steps,
    }


def _can_succeed(index: int) -> bool:
    """Whether run ``index`` succeeds if every one of its attempts reaches the service: each
    step has an ``ok`` among its first MAX_ATTEMPTS calls."""
    return all(
        any(
            odds_outcome(SEED, str(index), f"s{k}", call, FAIL, HANG) == "ok"
            for call in range(1, MAX_ATTEMPTS + 1)
        )
        for k in range(STEPS)
    )


# ~2 min alone (a broker start, the burst, a broker restart); room for a busy machine.
@pytest.mark.timeout(480)
def test_burst_survives_kills_and_a_broker_restart(
    chaos_kafka: PrivateKafka, http: HttpTestServer, tmp_path: Path
) -> None:
    settings = chaos_kafka.settings
    catalog = TopicCatalog.from_settings(settings)
    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    logs = tmp_path / "logs"
    logs.mkdir()
    bootstrap = ["--bootstrap", settings.kafka_bootstrap, "--prefix", settings.topic_prefix]
    components = supervised_engine("chaos", settings, logs, schema)
    scheduler, worker_a, _, projector = components
    producer = Producer(settings, client_id="chaos-test")
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "reflux.cli",
                "topics",
                "create",
                *bootstrap,
                "--invoke",
                "http.request:1",
            ],
            check=True,
            capture_output=True,
        )
        definition = parse_workflow(_workflow(http))
        producer.send(
            catalog.workflows,
            "chaos@1",
            WorkflowRegistered(
                workflow_id="chaos",
                version=1,
                definition=definition.to_json_dict(),
                registered_at=datetime.now(UTC),
            ),
        )
        producer.flush(10)
        for component in components:
            component.start()

        run_ids = {str(uuid.uuid4()): i for i in range(RUNS)}
        began = time.monotonic()
        for run_id, index in run_ids.items():
            producer.send(
                catalog.commands,
                run_id,
                StartRun(run_id=run_id, workflow_id="chaos", inputs={"index": index}),
            )
        producer.flush(10)

        def calls() -> int:
            return len(http.requests_to("/odds"))

        faults: list[str] = []

        def at(threshold: int, what: str) -> None:
            wait_for(
                lambda: calls() >= threshold, 180, f"{threshold} calls before {what}", *components
            )
            faults.append(f"{what} at {calls()} calls, {time.monotonic() - began:.1f} s")

        at(150, "kill -9 scheduler")
        scheduler.kill9()
        at(400, "kill -9 worker-a")
        worker_a.kill9()
        at(600, "kill -9 projector")
        projector.kill9()
        at(800, "broker restart")
        stopping, starting = chaos_kafka.restart()
        faults.append(f"broker down {stopping:.1f} s, up again in {starting:.1f} s")

        def runs() -> dict[str, queries.RunRow]:
            return projected_runs(settings, schema, run_ids)

        def terminal() -> int:
            return sum(r.status in TERMINAL_RUN_STATUSES for r in runs().values())

        wait_for(lambda: terminal() == RUNS, 300, "every run terminal", *components)
        elapsed = time.monotonic() - began
        rows = runs()

        # -- lost, duplicated, failed ---------------------------------------------------------
        lost = RUNS - sum(r.status in TERMINAL_RUN_STATUSES for r in rows.values())
        executed = collections.Counter(
            r.header("x-reflux-invocation-id") or "" for r in http.requests_to("/odds")
        )
        duplicated = sorted(k for k, n in executed.items() if n > 1)
        statuses = collections.Counter(r.status for r in rows.values())
        succeeded = statuses.get("succeeded", 0)
        allowed = sum(_can_succeed(i) for i in run_ids.values())
        # Why the runs the odds let succeed failed: the engine, not the service, decided those.
        unexpected = collections.Counter(
            f"{row.failed_step}: {(row.error or {}).get('message', '')[:80]}"
            for run_id, row in rows.items()
            if row.status == "failed" and _can_succeed(run_ids[run_id])
        )
        summary = (
            f"{RUNS} runs in {elapsed:.1f} s, {sum(executed.values())} calls: {dict(statuses)}; "
            f"odds allow {allowed}; lost {lost}; duplicated {len(duplicated)}; "
            f"failed although the odds allow success: {dict(unexpected.most_common(5))}; "
            f"restarts logged: { {c.name: c.restarts_logged() for c in components} }; "
            f"faults: {faults}"
        )
        log.warning("chaos: %s", summary)
        print(f"\nchaos: {summary}")
        assert lost == 0, summary
        assert duplicated == [], (duplicated[:10], summary)
        assert abs(succeeded - allowed) <= TOLERANCE * RUNS, summary

        # -- projection == Kafka, replay == projection ---------------------------------------
        assert_projection_is_log(settings, catalog, schema, run_ids, rows, PARTITIONS)
    finally:
        producer.close()
        for component in components:
            component.stop()
        drop_schemas(settings, schema)
