"""Scheduler restarts without self-fencing: ``reflux scheduler`` as a real process, faulted with
runs in flight (ADR 0018).

1. ``kill -9`` and an immediate restart with the same instance id: the restarted process joins
   while the dead member still holds the partitions, takes them over when that member's session
   expires (the rebalance), and stays up until every run has finished.
2. A pause (``SIGSTOP``) while one of its transactions is open, held until the transaction
   coordinator rolls that transaction back (``transaction.timeout.ms``): that bumps the producer
   epoch, so the resumed scheduler finds itself "fenced by a newer instance" -- its own
   transactional id. It used to exit ("exiting so a supervisor restarts"); it must replace its
   producer and go on.

Both count, from the run log itself (``runs``, read_committed): runs lost (no terminal event),
failed, and events duplicated or missing (every run's seqs are exactly 0..last); and, from the
HTTP server, attempts executed twice.
"""

from __future__ import annotations

import collections
import importlib
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    IsolationLevel,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from foundation.liveness import main as liveness_probe
from foundation.settings import Settings
from processors.scheduler.runtime.loop import SchedulerRuntime
from schemas import decode
from schemas.models import StartRun, WorkflowRegistered
from schemas.run_log import RUN_EVENT_TYPES, TERMINAL_RUN_EVENT_TYPES
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog, TopicSpec
from tests.integration.engine_fixtures import HarnessFactory, slow_http_chain
from tests.integration.http_fixtures import HttpTestServer
from tests.support.processes import Component, wait_for
from tests.support.waiting import eventually
from workflows import parse_workflow

# Exported by confluent_kafka.admin at run time, but not declared by its type stubs.
OffsetSpec: Any = getattr(importlib.import_module("confluent_kafka.admin"), "OffsetSpec")  # noqa: B009

pytestmark = pytest.mark.integration

RUNS = 24
TERMINAL = frozenset(t.__name__ for t in TERMINAL_RUN_EVENT_TYPES)
SLOW_MS = 300
INSTANCE = "restarts"
# Long step timeouts: a paused scheduler must not turn into timed-out steps.
STEP_TIMEOUT = "120s"


@dataclass
class RunLog:
    """The ``runs`` topic as the scheduler committed it: events by run, in log order."""

    settings: Settings
    topic: str
    events: dict[str, list[tuple[int, str]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                **kafka_client_config(self.settings),
                "group.id": f"{self.settings.topic_prefix}.run-log-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        partitions = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions.partitions]
        )

    def read(self) -> None:
        for message in self._consumer.consume(500, timeout=0.2):
            if message.error() is None:
                event = decode(message.value() or b"", RUN_EVENT_TYPES)
                assert isinstance(event, RUN_EVENT_TYPES)
                self.events[event.run_id].append((event.seq, type(event).__name__))

    def finished(self, run_ids: list[str]) -> int:
        self.read()
        return sum(1 for r in run_ids if self.terminal(r) is not None)

    def terminal(self, run_id: str) -> str | None:
        return next((t for _, t in self.events[run_id] if t in TERMINAL), None)

    def counts(self, run_ids: list[str]) -> dict[str, int]:
        """lost: no terminal event; failed: ended otherwise than RunSucceeded; duplicated: an
        event (run_id, seq) twice; missing: a seq below the last one never written."""
        lost = failed = duplicated = missing = 0
        for run_id in run_ids:
            seqs = [seq for seq, _ in self.events[run_id]]
            terminal = self.terminal(run_id)
            lost += terminal is None
            failed += terminal not in {None, "RunSucceeded"}
            duplicated += len(seqs) - len(set(seqs))
            missing += len(set(range(max(seqs, default=-1) + 1)) - set(seqs))
        return {"lost": lost, "failed": failed, "duplicated": duplicated, "missing": missing}

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Scenario:
    settings: Settings
    catalog: TopicCatalog
    admin: AdminClient
    producer: Producer
    http: HttpTestServer
    scheduler: Component
    worker: Component
    run_log: RunLog
    heartbeat: Path
    run_ids: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        return f"{self.settings.topic_prefix}.scheduler"

    def members(self) -> tuple[ConsumerGroupState, list[str]]:
        described = self.admin.describe_consumer_groups([self.group])[self.group].result(10)
        return described.state, sorted(m.member_id for m in described.members)

    def start_runs(self) -> None:
        """Starts RUNS more runs (every check below covers all runs started so far)."""
        new = [str(uuid.uuid4()) for _ in range(RUNS)]
        self.run_ids += new
        for run_id in new:
            self.producer.send(
                self.catalog.commands,
                run_id,
                StartRun(run_id=run_id, workflow_id="restarts", inputs={}),
            )
        self.producer.flush(10)

    def wait_in_flight(self) -> None:
        wait_for(
            lambda: len(self.http.requests_to("/slow")) >= RUNS // 2,
            60,
            "runs in flight",
            self.scheduler,
            self.worker,
        )
        assert not self.all_finished(), "every run finished: no load"

    def all_finished(self) -> bool:
        return self.run_log.finished(self.run_ids) == len(self.run_ids)

    def wait_finished(self) -> None:
        wait_for(
            self.all_finished,
            120,
            "every run to finish",
            self.scheduler,
            self.worker,
        )

    def assert_exactly_once(self) -> None:
        counts = self.run_log.counts(self.run_ids)
        assert counts == {"lost": 0, "failed": 0, "duplicated": 0, "missing": 0}, (
            counts,
            self.scheduler.tail(),
        )
        # At most once per attempt: no invocation id reached the HTTP server twice.
        seen = collections.Counter(
            r.header("x-reflux-invocation-id") for r in self.http.requests_to("/slow")
        )
        assert len(seen) >= 2 * len(self.run_ids) and max(seen.values()) == 1, [
            k for k, v in seen.items() if v > 1
        ]


@pytest.fixture
def scenario(
    kafka_settings: Settings, http: HttpTestServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Scenario]:
    """The scheduler and a worker as processes, the workflow registered; ``supervised`` (an
    indirect parameter) runs the scheduler under ``reflux supervise``; ``records-at-once`` sends
    its records as they are produced (``REFLUX_SCHEDULER_LINGER_MS=0``) rather than at commit."""
    variant = getattr(request, "param", None)
    supervised = variant == "supervised"
    linger = {"REFLUX_SCHEDULER_LINGER_MS": "0"} if variant == "records-at-once" else {}
    settings = kafka_settings
    catalog = TopicCatalog.from_settings(settings)
    invoke: list[TopicSpec] = [
        catalog.invoke_topic("http.request", 1),
        catalog.invoke_topic("transform", 1),
    ]
    ensure_topics(catalog, settings=settings)
    ensure_topics(catalog, invoke, settings=settings)
    admin = AdminClient({**kafka_client_config(settings)})
    producer = Producer(settings, client_id="restarts-test")
    definition = parse_workflow(
        slow_http_chain("restarts", http.url, slow_ms=SLOW_MS, timeout=STEP_TIMEOUT)
    )
    producer.send(
        catalog.workflows,
        "restarts@1",
        WorkflowRegistered(
            workflow_id="restarts",
            version=1,
            definition=definition.to_json_dict(),
            registered_at=datetime.now(UTC),
        ),
    )
    producer.flush(10)
    command = ["scheduler", "--instance-id", INSTANCE]
    scheduler = Component(
        "scheduler",
        ["supervise", "--max-backoff", "2", "--", *command] if supervised else command,
        settings,
        tmp_path,
        env={"REFLUX_LIVENESS_FILE": str(tmp_path / "scheduler-alive"), **linger},
    )
    worker = Component(
        "worker",
        ["worker", "--nodes", "http,transform", "--catalog-status", "none"],
        settings,
        tmp_path,
    )
    run_log = RunLog(settings, catalog.runs.topic)
    found = Scenario(
        settings,
        catalog,
        admin,
        producer,
        http,
        scheduler,
        worker,
        run_log,
        heartbeat=tmp_path / "scheduler-alive",
    )
    try:
        scheduler.start()
        worker.start()
        wait_for(
            lambda: found.members()[0] == ConsumerGroupState.STABLE,
            60,
            "the scheduler in its group",
            scheduler,
            worker,
        )
        yield found
    finally:
        if scheduler.proc is not None and scheduler.proc.poll() is None:
            scheduler.proc.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM
        scheduler.stop()
        worker.stop()
        run_log.close()
        producer.close()


def test_restarted_scheduler_takes_over_and_stays_up_through_the_rebalance(
    scenario: Scenario,
) -> None:
    _, (old_member,) = scenario.members()
    scenario.start_runs()
    scenario.wait_in_flight()

    scenario.scheduler.kill9()
    scenario.scheduler.start()  # at once, same instance id: same transactional id

    # The dead member keeps its partitions until its session times out; then the group
    # rebalances to the restarted process alone.
    def taken_over() -> bool:
        state, members = scenario.members()
        return state == ConsumerGroupState.STABLE and bool(members) and old_member not in members

    wait_for(
        taken_over,
        60,
        "the restarted scheduler to own the group after the old member's session expired",
        scenario.scheduler,
        scenario.worker,
    )
    state, members = scenario.members()
    assert state == ConsumerGroupState.STABLE and len(members) == 1, (state, members)

    scenario.wait_finished()
    assert scenario.scheduler.starts == 2 and scenario.scheduler.proc is not None
    assert scenario.scheduler.proc.poll() is None, scenario.scheduler.tail()
    scenario.assert_exactly_once()


def _open_transactions(scenario: Scenario) -> list[str]:
    """Partitions the scheduler writes transactionally whose last stable offset is behind
    their end: a transaction is open there."""
    catalog = scenario.catalog
    topics = [
        catalog.runs.topic,
        catalog.commands.topic,
        catalog.traces.topic,
        catalog.invoke_topic("http.request", 1).topic,
        catalog.invoke_topic("transform", 1).topic,
    ]
    partitions = [
        TopicPartition(t, p) for t in topics for p in range(scenario.settings.default_partitions)
    ]
    ends = {}
    for level in (IsolationLevel.READ_UNCOMMITTED, IsolationLevel.READ_COMMITTED):
        answers = scenario.admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions},
            isolation_level=level,
        )
        ends[level] = {(tp.topic, tp.partition): f.result().offset for tp, f in answers.items()}
    return sorted(
        f"{t}/{p}"
        for (t, p), end in ends[IsolationLevel.READ_UNCOMMITTED].items()
        if ends[IsolationLevel.READ_COMMITTED][(t, p)] < end
    )


def _stays_open(scenario: Scenario, partitions: list[str], seconds: float) -> bool:
    """Whether every one of ``partitions`` still has an open transaction ``seconds`` later
    (looked at continuously): a commit whose EndTxn left before the pause completes without the
    process within milliseconds; only a transaction the pause holds stays open."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not set(partitions) <= set(_open_transactions(scenario)):
            return False
    return True


# The pause has to fall inside a transaction, which the test sees as a partition whose last
# stable offset is behind its end: records sent, not committed. With the default linger the
# records of these small batches leave with the commit itself, so such a moment hardly exists
# (the pause then catches a commit already on its way and no rollback follows); sending each
# record as it is produced reopens the window. When records leave changes nothing about how a
# fenced producer is replaced.
@pytest.mark.parametrize("scenario", ["records-at-once"], indirect=True)
def test_scheduler_fenced_by_its_own_timed_out_transaction_replaces_its_producer(
    scenario: Scenario,
) -> None:
    scenario.start_runs()
    scenario.wait_in_flight()
    proc = scenario.scheduler.proc
    assert proc is not None

    # Stop the process; keep it stopped only if it was inside a transaction (some partition's
    # last stable offset is behind its end), else let it go on and try again.
    held: list[str] = []

    def paused_in_a_transaction() -> bool:
        proc.send_signal(signal.SIGSTOP)
        held[:] = _open_transactions(scenario)
        if held and not _stays_open(scenario, held, seconds=1.0):
            held.clear()  # a commit already on its way: the coordinator completed it
        if not held:
            proc.send_signal(signal.SIGCONT)
            if scenario.all_finished():
                # Every run ended before a pause fell inside a transaction (the window is a
                # few seconds of load): more load, so transactions keep coming.
                scenario.start_runs()
        return bool(held)

    eventually(paused_in_a_transaction, 60, "the scheduler paused inside a transaction")
    # The coordinator rolls the transaction back after transaction.timeout.ms (15 s, checked
    # every 10 s): the open partitions become stable again, and the producer's epoch is bumped.
    eventually(
        lambda: not _open_transactions(scenario),
        60,
        f"the coordinator to roll back the paused scheduler's transaction on {held}",
        interval=0.5,
    )
    # A hung scheduler is what its liveness probe catches: the heartbeat went stale (paused for
    # transaction.timeout.ms at least; it beats every 5 s when running).
    probe = ["--file", str(scenario.heartbeat), "--max-age", "10"]
    assert liveness_probe(probe) == 1
    proc.send_signal(signal.SIGCONT)
    eventually(lambda: liveness_probe(probe) == 0, 30, "the resumed scheduler's heartbeat")

    scenario.wait_finished()
    assert scenario.scheduler.starts == 1 and proc.poll() is None, scenario.scheduler.tail()
    log = scenario.scheduler.tail()
    # It was fenced (not merely delayed) and recovered by replacing its producer.
    assert "fenced" in log and "replacing it with a new producer" in log, log
    scenario.assert_exactly_once()


def test_a_batch_cut_at_its_time_budget_leaves_the_rest_for_the_next_one(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> None:
    """max_batch_seconds=0: every transaction takes one input and puts the rest of its batch
    back (a seek to the first one not taken); nothing is skipped or taken twice."""
    harness = engine_harness(scheduler=False, trigger_router=False, client_id="cut-test")
    scheduler = SchedulerRuntime(harness.settings, instance_id="cut", max_batch_seconds=0.0)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), name="cut-scheduler")
    thread.start()
    try:
        harness.register(
            slow_http_chain("restarts", http.url, slow_ms=SLOW_MS, timeout=STEP_TIMEOUT)
        )
        runs = [harness.start("restarts") for _ in range(8)]
        for run_id in runs:
            assert harness.wait(run_id, timeout=60).status == "succeeded"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert scheduler.stats.batches_cut > 0, scheduler.stats
    # One input per transaction: a cut batch commits exactly what it took.
    assert scheduler.stats.batches == scheduler.stats.inputs, scheduler.stats
    run_log = RunLog(harness.settings, harness.engine.catalog.runs.topic)
    try:
        # finished() counts the runs read to their end: wait for all of them, not the first.
        eventually(
            lambda: run_log.finished(runs) == len(runs), 30, "every run read to its end in the log"
        )
        counts = run_log.counts(runs)
    finally:
        run_log.close()
    assert counts == {"lost": 0, "failed": 0, "duplicated": 0, "missing": 0}, counts


def _children(supervisor: Component) -> list[int]:
    """Pids of the scheduler processes ``reflux supervise`` started, in order (its log)."""
    text = "".join(f.read_text() for f in sorted(supervisor.logs.glob(f"{supervisor.name}-*")))
    return [int(pid) for pid in re.findall(r"started reflux scheduler .*\(pid (\d+)\)", text)]


@pytest.mark.parametrize("scenario", ["supervised"], indirect=True)
def test_reflux_supervise_restarts_a_killed_scheduler_and_logs_why(scenario: Scenario) -> None:
    """Separate processes without Kubernetes: the reported stall ('with no supervisor, runs
    stalled') does not happen under ``reflux supervise``."""
    scenario.start_runs()
    scenario.wait_in_flight()
    (child,) = _children(scenario.scheduler)
    os.kill(child, signal.SIGKILL)
    wait_for(
        lambda: len(_children(scenario.scheduler)) == 2,
        30,
        "the supervisor to start the scheduler again",
        scenario.scheduler,
        scenario.worker,
    )
    scenario.wait_finished()
    assert scenario.scheduler.starts == 1 and scenario.scheduler.proc is not None
    assert scenario.scheduler.proc.poll() is None, "the supervisor itself exited"
    text = "".join(f.read_text() for f in scenario.scheduler.logs.glob("scheduler-*"))
    died = [line for line in text.splitlines() if "scheduler died after" in line]
    assert len(died) == 1, died
    assert f"(pid {child}) to run until stopped, but it ended: killed by SIGKILL" in died[0]
    assert "restarting it in 0.5s (restart 1)" in died[0]
    scenario.assert_exactly_once()
