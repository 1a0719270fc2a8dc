"""Two scheduler instances share the run partitions; one is killed under load and the other
takes its partitions over (ADR 0066).

Real processes on the real services: ``reflux scheduler --instance-id a`` and ``... b``, two
``reflux worker`` processes in the same worker groups, the projector in this process (the read
model the determinism check reads). With runs in flight on both instances' partitions,
``kill -9`` of ``a``; then ``b`` must own every partition alone and every run must end exactly
once: none lost or failed, every run's seqs exactly 0..last, no attempt executed twice (the
HTTP service counts the invocation ids), and every run's recorded log replays to the same events
(:func:`processors.replay.determinism.check_determinism_runs`, all runs).
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import ConsumerGroupState, TopicPartition
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from processors.replay.determinism import check_determinism_runs
from schemas.models import StartRun
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import Harness, HarnessFactory, slow_http_chain
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.test_scheduler_restarts import RunLog
from tests.support.processes import Component, wait_for

pytestmark = pytest.mark.integration

RUNS = 120
SLOW_MS = 1500
# Long step timeouts: runs waiting for the takeover must not turn into timed-out steps.
STEP_TIMEOUT = "120s"


@dataclass
class Instances:
    harness: Harness
    admin: AdminClient
    http: HttpTestServer
    schedulers: dict[str, Component]
    workers: list[Component]

    @property
    def settings(self) -> Settings:
        return self.harness.settings

    @property
    def group(self) -> str:
        return f"{self.settings.topic_prefix}.scheduler"

    def procs(self) -> list[Component]:
        return [*self.schedulers.values(), *self.workers]

    def ownership(self) -> tuple[ConsumerGroupState, dict[str, set[tuple[str, int]]]]:
        """The group's state and each member's assigned partitions, by instance id (the
        scheduler's client id is ``reflux-scheduler-<instance id>``)."""
        described = self.admin.describe_consumer_groups([self.group])[self.group].result(10)
        owned: dict[str, set[tuple[str, int]]] = {}
        for member in described.members:
            instance = member.client_id.removeprefix("reflux-scheduler-")
            partitions = member.assignment.topic_partitions if member.assignment else []
            owned.setdefault(instance, set()).update((tp.topic, tp.partition) for tp in partitions)
        return described.state, owned

    def all_partitions(self) -> set[tuple[str, int]]:
        catalog = self.harness.engine.catalog
        topics = (catalog.commands.topic, catalog.results.topic)
        return {(t, p) for t in topics for p in range(self.settings.default_partitions)}


@pytest.fixture
def instances(
    engine_harness: HarnessFactory, http: HttpTestServer, tmp_path: Path
) -> Iterator[Instances]:
    # The projector only: schedulers and workers are the processes below.
    harness = engine_harness(
        scheduler=False,
        workers=False,
        trigger_router=False,
        mutation_processor=False,
        replay_runner=False,
        client_id="instances-test",
    )
    settings = harness.settings
    schedulers = {
        name: Component(
            f"scheduler-{name}", ["scheduler", "--instance-id", name], settings, tmp_path
        )
        for name in ("a", "b")
    }
    workers = [
        Component(
            f"worker-{n}",
            ["worker", "--nodes", "http,transform", "--catalog-status", "none"],
            settings,
            tmp_path,
        )
        for n in range(2)
    ]
    admin = AdminClient({**kafka_client_config(settings)})
    found = Instances(harness, admin, http, schedulers, workers)
    try:
        for proc in found.procs():
            proc.start()
        yield found
    finally:
        for proc in found.procs():
            proc.stop()


def test_a_killed_scheduler_instance_s_partitions_are_taken_over_and_every_run_completes(
    instances: Instances,
) -> None:
    began = time.monotonic()
    harness, http = instances.harness, instances.http
    a, b = instances.schedulers["a"], instances.schedulers["b"]
    everything = instances.all_partitions()

    def both_own_partitions() -> bool:
        state, owned = instances.ownership()
        return (
            state == ConsumerGroupState.STABLE
            and set(owned) == {"a", "b"}
            and all(owned.values())
            and owned["a"] | owned["b"] == everything
        )

    wait_for(
        both_own_partitions, 60, "both scheduler instances owning partitions", *instances.procs()
    )
    _, owned = instances.ownership()
    partitions_of_a = {p for t, p in owned["a"] if t == harness.engine.catalog.commands.topic}

    harness.register(_posting_chain(http.url))
    run_ids = [str(uuid.uuid4()) for _ in range(RUNS)]
    for run_id in run_ids:
        harness.producer.send(
            harness.engine.catalog.commands.topic,
            run_id,
            StartRun(run_id=run_id, workflow_id="instances", inputs={}),
        )
    harness.producer.flush(10)
    # Which instance drives which run: the partition of its key on the co-partitioned topics.
    consumer_side = _partitions_of(instances.settings, harness, run_ids)
    runs_of_a = [r for r in run_ids if consumer_side[r] in partitions_of_a]
    assert 0 < len(runs_of_a) < RUNS, (len(runs_of_a), partitions_of_a)

    # Load in flight on both instances: most runs are inside their first slow call.
    wait_for(
        lambda: len(http.requests_to("/slow")) >= RUNS * 3 // 4,
        60,
        "runs in flight",
        *instances.procs(),
    )
    run_log = RunLog(instances.settings, harness.engine.catalog.runs.topic)
    try:
        run_log.read()
        # The kill must leave runs behind on a's partitions, else there is nothing to take over.
        unfinished_of_a = [r for r in runs_of_a if run_log.terminal(r) is None]
        killed = a.kill9()
        assert unfinished_of_a, "a's runs had all finished before the kill: no load"

        def b_owns_everything() -> bool:
            state, owned = instances.ownership()
            return state == ConsumerGroupState.STABLE and owned == {"b": everything}

        wait_for(
            b_owns_everything,
            60,
            f"instance b to own every partition after a (pid {killed}) was killed",
            b,
            *instances.workers,
        )
        took_over = time.monotonic()
        wait_for(
            lambda: run_log.finished(run_ids) == RUNS,
            90,
            "every run to finish",
            b,
            *instances.workers,
        )
        counts = run_log.counts(run_ids)
    finally:
        run_log.close()
    assert counts == {"lost": 0, "failed": 0, "duplicated": 0, "missing": 0}, (counts, b.tail())
    # At most once per attempt: no invocation id reached the HTTP service twice; two calls a run.
    seen = collections.Counter(
        r.header("x-reflux-invocation-id") for r in http.requests_to("/slow")
    )
    assert len(seen) >= 2 * RUNS, len(seen)
    assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1]

    # Replay equality: every run's projected log (the projector has all of them) replayed with
    # its side effects from the record yields the same events.
    wait_for(
        lambda: _projected_terminal(harness, run_ids) == RUNS,
        60,
        "the projection of every run",
        b,
    )
    reports = check_determinism_runs(instances.settings, run_ids, schema=harness.schema)
    diverged = [r for r in reports if not r.deterministic]
    assert not diverged, str(diverged[:2])[:3000]
    print(
        f"runs {RUNS} (of a, partitions {sorted(partitions_of_a)}: {len(runs_of_a)}, "
        f"unfinished at the kill: {len(unfinished_of_a)}); "
        f"takeover at {took_over - began:.1f}s; "
        f"total {time.monotonic() - began:.1f}s"
    )


def _posting_chain(url: str) -> dict[str, Any]:
    """The kill tests' chain (slow call, transform, slow call) with POSTs: side effects, so a
    replay serves them from the record. A GET would be re-executed live, and its answer (a
    Date header, elapsed_ms) is not the recorded one."""
    chain = slow_http_chain("instances", url, slow_ms=SLOW_MS, timeout=STEP_TIMEOUT)
    for step in chain["steps"]:
        if step["node"].startswith("http.request"):
            step["params"] = {**step["params"], "method": "POST", "json": {"n": step["id"]}}
    return chain


def _partitions_of(settings: Settings, harness: Harness, run_ids: list[str]) -> dict[str, int]:
    """The commands partition each run id's StartRun went to (read back from the topic)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer

    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.partition-reader",
            "enable.auto.commit": False,
        }
    )
    topic = harness.engine.catalog.commands.topic
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.default_partitions)]
    )
    found: dict[str, int] = {}
    wanted = set(run_ids)
    deadline = time.monotonic() + 30
    try:
        while not wanted <= set(found) and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None and message.key() is not None:
                    found[(message.key() or b"").decode()] = message.partition() or 0
    finally:
        consumer.close()
    assert wanted <= set(found), "StartRun records missing from the commands topic"
    return found


def _projected_terminal(harness: Harness, run_ids: list[str]) -> int:
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{harness.schema}".runs '
            "WHERE run_id::text = ANY(%s) AND status IN ('succeeded', 'failed', 'cancelled')",
            [run_ids],
        ).fetchone()
    return int(row[0]) if row else 0
