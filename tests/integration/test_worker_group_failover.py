"""Worker-group failover: two ``reflux worker`` processes share the partitioned invoke topics of one
group under load; one is killed with ``kill -9`` with attempts in flight.

The survivor takes the dead member's partitions once its session times out (10 s, see
``streams/consumer.py``); every run completes; every dispatched invocation gets a result (none is
lost with the dead process); and no invocation id reaches the HTTP server twice (the attempt
ledger turns a redelivered, half-run attempt into a retryable ``AttemptInterrupted`` instead of
running it again).
"""

from __future__ import annotations

import collections
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from schemas import serde
from schemas.models import NodeResult, StartRun
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import TERMINAL, HarnessFactory, slow_http_chain
from tests.integration.http_fixtures import HttpTestServer
from tests.support.processes import Component, wait_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

RUNS = 40
SLOW_MS = 200
# Fewer slots than runs, so invocations queue on both workers and the kill finds work in flight.
CONCURRENCY = 2
# Kill once this many attempts reached the HTTP server (of 2 * RUNS): early, with most to come.
KILL_AFTER_REQUESTS = 12
BUDGET_S = 60.0
NODES = {"http.request": 1, "transform": 1}


def _assignments(admin: AdminClient, group: str) -> dict[str, list[int]]:
    """client id -> partitions of the group's members, as the group coordinator reports them."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return {
        member.client_id: sorted(tp.partition for tp in member.assignment.topic_partitions)
        for member in description.members
    }


def _wait(check: Callable[[], bool], deadline: float, what: str, *procs: Component) -> None:
    """Until ``check()`` holds, within what is left of the test's budget (``deadline``)."""
    wait_for(check, deadline - time.monotonic(), what, *procs)


def _received(proc: Component, group: str) -> int:
    """Invocations of ``group`` this worker took off its partitions (its debug log)."""
    return sum(f.read_text().count(f"{group}: received ") for f in proc.logs.glob(f"{proc.name}-*"))


def _assigned(proc: Component, group: str) -> list[tuple[float, list[int]]]:
    """Every assignment of ``group`` the worker logged, in order: (epoch seconds, partitions)."""
    text = "".join(f.read_text() for f in sorted(proc.logs.glob(f"{proc.name}-*")))
    # reflux.cli's log format: "2025-01-31 12:00:00,123 INFO node_workers.runtime: <group> ..."
    pattern = r"^(\S+ \S+),(\d{3}) \S+ \S+ " + re.escape(f"{group} assigned ") + r"(\[.*\])$"
    found = []
    for stamp, millis, listed in re.findall(pattern, text, flags=re.MULTILINE):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000
        found.append((at, sorted(int(p) for p in re.findall(r", (\d+)\)", listed))))
    return found


def _results(settings: Settings, catalog: TopicCatalog) -> dict[str, list[NodeResult]]:
    """invocation id -> the NodeResults on ``results`` (read directly, every partition)."""
    topic = catalog.results.topic
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.results-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    found: dict[str, list[NodeResult]] = collections.defaultdict(list)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        assignment = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        consumer.assign(assignment)

        def behind() -> dict[int, int]:
            # position(), not the last message's offset: it also moves past control records.
            positions = consumer.position(assignment)
            return {
                tp.partition: tp.offset
                for tp in positions
                if ends[tp.partition] and tp.offset < ends[tp.partition]
            }

        def read_to_the_end() -> dict[int, int]:
            """Consumes what arrived; returns the partitions still behind (partition ->
            position)."""
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is None:
                    result = serde.decode(message.value() or b"")
                    if isinstance(result, NodeResult):  # not the start signals / heartbeats
                        found[result.invocation_id].append(result)
            return behind()

        eventually(
            read_to_the_end,
            20,
            f"{topic} read up to {ends}",
            until=lambda left: not left,
            interval=0,  # consume() waits
        )
    finally:
        consumer.close()
    return found


def test_kill_9_one_of_two_workers_in_a_group_loses_no_invocation(
    engine_harness: HarnessFactory, admin: AdminClient, http: HttpTestServer, tmp_path: Path
) -> None:
    began = time.monotonic()
    deadline = began + BUDGET_S
    # Scheduler and projector in this process; the two workers are real processes.
    harness = engine_harness(workers=False, trigger_router=False, client_id="failover-test")
    settings, engine, schema, producer = (
        harness.settings,
        harness.engine,
        harness.schema,
        harness.producer,
    )
    catalog = engine.catalog
    http_group = catalog.worker_group("http.request", 1)
    groups = [catalog.worker_group(node, major) for node, major in NODES.items()]
    args = ["worker", "--nodes", "http,transform", "--catalog-status", "none"]
    args += ["--io-concurrency", str(CONCURRENCY), "--cpu-concurrency", str(CONCURRENCY)]
    # -v: the workers log each invocation they take, which shows both of them got work.
    workers = {
        name: Component(name, ["-v", *args, "--client-id", name], settings, tmp_path)
        for name in ("worker-a", "worker-b")
    }
    try:
        harness.register(slow_http_chain("failover", http.url, slow_ms=SLOW_MS, timeout="20s"))
        for worker in workers.values():
            worker.start()

        # Both members hold partitions of every group before any work is produced, so the
        # split is the steady one (no startup rebalance moves work around).
        def both_members_assigned() -> bool:
            for group in groups:
                members = _assignments(admin, group)
                if set(members) != set(workers) or not all(members.values()):
                    return False
            return True

        _wait(both_members_assigned, deadline, "both workers in both groups", *workers.values())
        before = _assignments(admin, http_group)
        joined = time.monotonic()

        run_ids = [str(uuid.uuid4()) for _ in range(RUNS)]
        for run_id in run_ids:
            producer.send(
                catalog.commands,
                run_id,
                StartRun(run_id=run_id, workflow_id="failover", inputs={}),
            )
        producer.flush(10)

        def both_working() -> bool:
            return len(http.requests_to("/slow")) >= KILL_AFTER_REQUESTS and all(
                _received(w, http_group) > 0 for w in workers.values()
            )

        _wait(both_working, deadline, "both workers to take invocations", *workers.values())
        # Kill the member that owns more of the http partitions: the bigger share to take over.
        victim_name = max(before, key=lambda name: len(before[name]))
        victim = workers[victim_name]
        survivor = next(w for name, w in workers.items() if name != victim_name)
        received_before_kill = {name: _received(w, http_group) for name, w in workers.items()}
        finished_before_kill = sum(
            1 for r in run_ids if (harness.run(r) or _NO_RUN).status in TERMINAL
        )
        victim.kill9()
        killed, killed_wall = time.monotonic(), time.time()
        assert finished_before_kill < RUNS, "every run finished before the kill: no load"

        def finished() -> bool:
            return all((harness.run(r) or _NO_RUN).status in TERMINAL for r in run_ids)

        _wait(finished, deadline, "every run to finish", survivor)
        done = time.monotonic()
        statuses = collections.Counter(harness.run(r).status for r in run_ids)  # type: ignore[union-attr]
        assert statuses == {"succeeded": RUNS}, (statuses, survivor.tail(), victim.tail())

        # The survivor took over: its last http assignment is every partition of the topic.
        partitions = sorted(p for ps in before.values() for p in ps)
        takeover = _assigned(survivor, http_group)[-1]
        assert takeover[1] == partitions, survivor.tail()
        takeover_s = takeover[0] - killed_wall
        assert takeover_s > 0, (takeover, killed_wall)  # the assignment after the kill

        # No invocation lost: every dispatched invocation got a NodeResult on `results`, and
        # the run log closed each dispatched attempt with that invocation's result.
        with harness.conn() as conn:
            events = conn.execute(
                f"""SELECT run_id, event_type, payload ->> 'invocation_id', payload
                      FROM "{schema}".run_events
                     WHERE run_id = ANY(%s) ORDER BY run_id, seq""",
                (run_ids,),
            ).fetchall()
        dispatched = {inv for _, kind, inv, _ in events if kind == "StepDispatched"}
        closed = {
            inv for _, kind, inv, _ in events if kind in {"StepSucceeded", "StepFailed"} and inv
        }
        timed_out = [row for row in events if row[1] == "StepTimedOut"]
        assert len(dispatched) >= 3 * RUNS
        assert not timed_out, timed_out
        assert dispatched == closed, sorted(dispatched ^ closed)
        results = _results(settings, catalog)
        assert dispatched <= set(results), sorted(dispatched - set(results))
        interrupted = sorted(
            inv
            for inv in dispatched
            if any(
                r.error is not None and r.error.error_class == "AttemptInterrupted"
                for r in results[inv]
            )
        )

        # The kill hit attempts in flight (the victim's slots are never idle with a backlog):
        # their redelivery to the survivor found them started, so they were retried instead.
        assert interrupted, "no attempt was interrupted by the kill"

        # At most once per attempt: no invocation id reached the HTTP server twice.
        seen = collections.Counter(
            r.header("x-reflux-invocation-id") for r in http.requests_to("/slow")
        )
        assert None not in seen
        assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1]
        http_dispatched = {
            inv
            for _, kind, inv, p in events
            if kind == "StepDispatched"
            and p["invoke_topic"] == catalog.invoke_topic("http.request", 1).topic
        }
        assert set(seen) <= http_dispatched
        print(
            f"\nfailover: http partitions before the kill {before}; killed {victim_name} "
            f"(received {received_before_kill}, {finished_before_kill}/{RUNS} runs done)\n"
            f"{len(dispatched)} invocations dispatched, all with a result; "
            f"{len(interrupted)} interrupted by the kill and retried; {len(seen)} http requests, "
            f"none repeated\ntimings: workers joined {joined - began:.1f}s, kill at "
            f"{killed - began:.1f}s, all runs succeeded {done - killed:.1f}s after the kill, "
            f"total {time.monotonic() - began:.1f}s; the survivor owned every http partition "
            f"{takeover_s:.1f}s after the kill (session timeout 10 s)"
        )
    finally:
        for worker in workers.values():
            worker.stop()


class _NoRun:
    status = "missing"


_NO_RUN = _NoRun()
