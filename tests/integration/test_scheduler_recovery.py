"""Bounded recovery on the real services: snapshots on ``scheduler-state`` + the tail of ``runs``.

The reference every test compares against is independent of the recovery code: the whole run
log read back from Kafka and folded run by run (``fold``), finished runs written as their
markers. Recovery from snapshot + tail must equal it, partition by partition; so must the live
scheduler's tables.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from foundation.settings import Settings
from processors.scheduler.evolve import RUN_EVENT_TYPES, RunEvent, fold
from processors.scheduler.runtime.loop import SchedulerRuntime
from processors.scheduler.runtime.recovery import recover_partitions, request_end_offsets
from processors.scheduler.runtime.run_table import FinishedRun, RunTable, TableEntry
from processors.scheduler.runtime.snapshots import (
    CHECKPOINT_KEY,
    SnapshotWriter,
    encode_checkpoint,
    encode_entry,
)
from processors.scheduler.state import RunState, RunStatus
from schemas import decode
from schemas.models import CancelRun, PauseRun, ResumeRun
from streams.admin import admin_client
from streams.producer import Producer, TransactionalProducer
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import Harness, HarnessFactory, assert_replay_equivalent
from tests.integration.http_fixtures import HttpTestServer
from tests.support.kafka_log import read_log
from tests.support.waiting import eventually

PARTITIONS = 3  # kafka_settings' default_partitions
QUICK_RUNS = 9


def _settings(base: Settings, *, interval_ms: int, kept: int = 2) -> Settings:
    return base.model_copy(
        update={"scheduler_snapshot_interval_ms": interval_ms, "scheduler_finished_runs_kept": kept}
    )


def _transform(step_id: str, needs: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": step_id,
        "node": "transform@^1",
        "params": {"expression": "`1`"},
        "needs": needs or [],
    }


def _register_all(harness: Harness, http: HttpTestServer) -> None:
    harness.register({"id": "quick", "steps": [_transform("a"), _transform("b", ["a"])]})
    # Fails for good: an active (failed) run held in full.
    harness.register(
        {
            "id": "down",
            "steps": [
                {
                    "id": "call",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/status/503"},
                    "retry": {"max_attempts": 1},
                }
            ],
        }
    )
    # Fails once, then waits an hour in backoff: a running run with a timer.
    harness.register(
        {
            "id": "backoff",
            "steps": [
                {
                    "id": "call",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/status/503"},
                    "retry": {
                        "max_attempts": 3,
                        "initial_backoff": "1h",
                        "max_backoff": "1h",
                        "jitter": 0,
                    },
                }
            ],
        }
    )
    # Paused while its first step runs: a paused run with a pending step.
    harness.register(
        {
            "id": "pausable",
            "steps": [
                {
                    "id": "slow",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/slow?ms=800"},
                },
                _transform("after", ["slow"]),
            ],
        }
    )


def _scheduler(harness: Harness) -> SchedulerRuntime:
    scheduler = harness.engine.scheduler
    assert scheduler is not None
    return scheduler


def _wait_settled(
    scheduler: SchedulerRuntime, expected: dict[int, dict[str, TableEntry]], *, snapshotted: bool
) -> None:
    """Until the live tables hold exactly ``expected`` (the log folded) and, if
    ``snapshotted``, no run is dirty any more (a snapshot cycle committed every change)."""

    def observed() -> tuple[bool, dict[int, int]]:
        tables = dict(scheduler.states)
        return _views(tables) == expected, {p: len(t.dirty) for p, t in tables.items()}

    eventually(
        observed,
        30,
        "the live tables to equal the folded log (equal, {partition: dirty runs})",
        until=lambda seen: seen[0] and (not snapshotted or not any(seen[1].values())),
    )


def _wait_owning(scheduler: SchedulerRuntime) -> None:
    eventually(
        lambda: sorted(scheduler.states),
        60,
        "the scheduler to own every partition",
        until=lambda owned: owned == list(range(PARTITIONS)),
    )


def _full_fold(settings: Settings, catalog: TopicCatalog) -> dict[int, dict[str, TableEntry]]:
    """The reference: every run folded from all of its events, finished runs as markers."""
    events: dict[int, dict[str, list[RunEvent]]] = {p: {} for p in range(PARTITIONS)}
    for partition, _, value in read_log(settings, catalog.runs.topic, PARTITIONS):
        assert value is not None
        event = decode(value)
        assert isinstance(event, RUN_EVENT_TYPES)
        events[partition].setdefault(event.run_id, []).append(event)
    view: dict[int, dict[str, TableEntry]] = {}
    for partition, runs in events.items():
        view[partition] = {}
        for run_id, log in runs.items():
            state = fold(log)
            assert state is not None
            view[partition][run_id] = FinishedRun.of(state) if state.is_finished else state
    return view


def _views(tables: dict[int, RunTable]) -> dict[int, dict[str, TableEntry]]:
    return {p: table.view() for p, table in tables.items()}


def _populated(view: dict[int, dict[str, TableEntry]]) -> list[int]:
    """Partitions holding runs (only those have snapshot records; run ids are random, so with
    a dozen runs a partition of three stays empty now and then)."""
    return sorted(p for p, runs in view.items() if runs)


def _statuses(view: dict[int, dict[str, TableEntry]]) -> collections.Counter[str]:
    return collections.Counter(
        entry.status.value for runs in view.values() for entry in runs.values()
    )


def _start_the_mix(harness: Harness) -> dict[str, list[str]]:
    """Runs of every shape; returns run ids by shape once each reached it."""
    runs = {
        "quick": [harness.start("quick") for _ in range(QUICK_RUNS)],
        "down": [harness.start("down")],
        "backoff": [harness.start("backoff")],
        "pausable": [harness.start("pausable")],
    }
    (paused,) = runs["pausable"]
    harness.wait_step(paused, "slow", "running")
    harness.command(PauseRun(run_id=paused))
    for run_id in runs["quick"]:
        assert harness.wait(run_id).status == "succeeded"
    assert harness.wait(runs["down"][0]).status == "failed"
    harness.wait_step(runs["backoff"][0], "call", "retry_wait")
    harness.wait(paused, {"paused"})
    harness.wait_step(paused, "slow", "succeeded")
    return runs


def test_recovery_from_snapshot_and_tail_equals_a_full_fold(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer
) -> None:
    # 1. An engine that snapshots often, with runs of every shape; wait for the last snapshot.
    first = engine_harness(_settings(kafka_settings, interval_ms=100), client_id="recovery-1")
    _register_all(first, http)
    runs = _start_the_mix(first)
    scheduler = _scheduler(first)
    snapshotted = _full_fold(kafka_settings, first.engine.catalog)
    _wait_settled(scheduler, snapshotted, snapshotted=True)
    assert scheduler.stats.snapshot_cycles >= 1
    assert scheduler.stats.last_recovery is not None
    assert scheduler.stats.last_recovery.full_fold == list(range(PARTITIONS))  # a new topic
    # Memory: at most `kept` finished runs per partition in full, the others as markers.
    assert all(len(t.recent) <= 2 for t in scheduler.states.values())
    held = sum(len(t.finished) + len(t.recent) for t in scheduler.states.values())
    assert held == QUICK_RUNS
    assert sum(len(t.finished) for t in scheduler.states.values()) >= QUICK_RUNS - 2 * PARTITIONS
    first.engine.stop()

    # 2. A second engine that never snapshots: everything it writes is tail.
    second = engine_harness(_settings(kafka_settings, interval_ms=0), client_id="recovery-2")
    scheduler = _scheduler(second)
    _wait_owning(scheduler)
    report = scheduler.stats.last_recovery
    assert report is not None
    assert (report.from_snapshot, report.fallbacks) == (_populated(snapshotted), {})
    assert report.events_applied == 0  # the snapshot covered everything
    assert _views(scheduler.states) == snapshotted
    tail_quick = [second.start("quick") for _ in range(3)]
    for run_id in tail_quick:
        assert second.wait(run_id).status == "succeeded"
    (backoff,) = runs["backoff"]
    second.command(CancelRun(run_id=backoff, reason="tail"))
    assert second.wait(backoff).status == "cancelled"
    late = runs["quick"][0]
    second.command(CancelRun(run_id=late, command_id="late-cancel", reason="too late"))
    rejected = eventually(
        lambda: [e for e in second.events(late) if e.event_type == "CommandRejected"],
        15,
        f"the late CancelRun of finished run {late} to be rejected",
    )
    assert [e.payload["reason"] for e in rejected] == [
        "Expected run to be running, paused or failed, but it is succeeded"
    ]
    # 3. Snapshot + tail == the whole log folded == what the second scheduler holds.
    expected = _full_fold(kafka_settings, first.engine.catalog)
    _wait_settled(scheduler, expected, snapshotted=False)
    assert scheduler.stats.snapshot_cycles == 0
    second.engine.stop()
    recovery = recover_partitions(kafka_settings, first.engine.catalog, range(PARTITIONS))
    assert _views(recovery.tables) == expected
    report = recovery.report
    # (A partition that had no run at the snapshot has no checkpoint: it is folded whole.)
    assert (report.from_snapshot, report.fallbacks) == (_populated(snapshotted), {})
    assert report.full_fold == [p for p in range(PARTITIONS) if not snapshotted[p]]
    # Applied: exactly the tail runs' events after their snapshot (3 new runs, the backoff
    # run's cancellation, the finished run's rejection); the rest was read and skipped.
    tail_runs = {*tail_quick, backoff, late}
    after_snapshot = 0
    for p, view in expected.items():
        for run_id in tail_runs & set(view):
            before = snapshotted[p].get(run_id)
            after_snapshot += view[run_id].last_seq - (before.last_seq if before else -1)
    # A quick run is 6 events: RunStarted, 2 x (StepDispatched scheduling it, StepSucceeded),
    # RunSucceeded (ADR 0075).
    assert after_snapshot >= 3 * 6 + 2
    assert report.events_applied == after_snapshot
    # Read: the tail only (from the checkpoint on), not the whole log.
    in_log = sum(entry.last_seq + 1 for view in expected.values() for entry in view.values())
    assert report.events_applied <= report.events_read < in_log - 50
    assert _statuses(expected) == {
        "succeeded": QUICK_RUNS + 3,
        "failed": 1,
        "cancelled": 1,
        "paused": 1,
    }
    assert (report.active_runs, report.finished_runs) == (2, QUICK_RUNS + 4)
    # Every recovered run is dirty (the tail changed it) or its snapshot record is current.
    dirty = set().union(*(t.dirty for t in recovery.tables.values()))
    assert dirty == tail_runs


def test_a_restarted_scheduler_carries_on_from_its_snapshot(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer
) -> None:
    settings = _settings(kafka_settings, interval_ms=100, kept=0)
    first = engine_harness(settings, client_id="restart-1")
    _register_all(first, http)
    runs = _start_the_mix(first)
    scheduler = _scheduler(first)
    before = _full_fold(kafka_settings, first.engine.catalog)
    _wait_settled(scheduler, before, snapshotted=True)
    # kept=0: every finished run is a marker at once; only the active runs are in full.
    assert sum(len(t.recent) for t in scheduler.states.values()) == 0
    assert sum(len(t.finished) for t in scheduler.states.values()) == QUICK_RUNS
    assert sum(len(t.active) for t in scheduler.states.values()) == 3
    assert not set(runs["quick"]) & set(scheduler.stats.committed_seq)
    snapshot_records = scheduler.stats.snapshot_records
    assert snapshot_records >= QUICK_RUNS + 3 + len(_populated(before))
    first.engine.stop()

    second = engine_harness(settings, client_id="restart-2")
    scheduler = _scheduler(second)
    _wait_owning(scheduler)
    report = scheduler.stats.last_recovery
    assert report is not None
    assert (report.from_snapshot, report.fallbacks, report.events_applied) == (
        _populated(before),
        {},
        0,
    )
    assert (report.active_runs, report.finished_runs) == (3, QUICK_RUNS)
    assert scheduler.stats.snapshot_fallbacks == 0

    # The paused run's state came from its snapshot: it equals its log folded; it resumes and
    # finishes on it.
    (paused,) = runs["pausable"]
    assert_replay_equivalent(second, paused)
    second.command(ResumeRun(run_id=paused))
    assert second.wait(paused).status == "succeeded"
    assert second.steps(paused)["after"].status == "succeeded"
    # A finished run is a marker: decide still answers for it, with the same reason as before.
    late = runs["quick"][-1]
    state = scheduler.run_state(late)
    assert state is not None
    assert state == RunState(run_id=late, status=RunStatus.SUCCEEDED, last_seq=state.last_seq)
    second.command(CancelRun(run_id=late, command_id="late-cancel"))
    rejected = eventually(
        lambda: [e for e in second.events(late) if e.event_type == "CommandRejected"],
        15,
        f"the late CancelRun of finished run {late} to be rejected",
    )
    assert [(e.seq, e.payload["reason"]) for e in rejected] == [
        (state.last_seq + 1, "Expected run to be running, paused or failed, but it is succeeded")
    ]
    # A new run on the recovered scheduler; then its tables equal the log folded again.
    run_id = second.start("quick")
    assert second.wait(run_id).status == "succeeded"
    expected = _full_fold(kafka_settings, second.engine.catalog)
    _wait_settled(scheduler, expected, snapshotted=True)
    assert _statuses(expected) == {"succeeded": QUICK_RUNS + 2, "failed": 1, "running": 1}


def test_a_scheduler_that_stops_snapshots_what_changed_so_the_next_one_has_no_tail(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer
) -> None:
    # An hour between cycles: nothing is snapshotted while the engine runs.
    settings = _settings(kafka_settings, interval_ms=3_600_000)
    first = engine_harness(settings, client_id="stop-1")
    _register_all(first, http)
    _start_the_mix(first)
    scheduler = _scheduler(first)
    expected = _full_fold(kafka_settings, first.engine.catalog)
    _wait_settled(scheduler, expected, snapshotted=False)
    runs = sum(len(v) for v in expected.values())
    assert scheduler.stats.snapshot_cycles == 0
    assert sum(len(t.dirty) for t in scheduler.states.values()) == runs
    first.engine.stop()
    assert scheduler.stats.snapshot_records == runs + len(_populated(expected))
    assert scheduler.stats.snapshot_cycles == 1

    second = engine_harness(settings, client_id="stop-2")
    scheduler = _scheduler(second)
    _wait_owning(scheduler)
    report = scheduler.stats.last_recovery
    assert report is not None
    assert (report.from_snapshot, report.fallbacks) == (_populated(expected), {})
    # Nothing to apply; at most the last transaction's events are read again (if the end
    # offset read for the checkpoint was a moment behind its commit markers).
    assert report.events_applied == 0 and report.events_read < 10
    assert _views(scheduler.states) == expected


def _snapshot_records(settings: Settings, catalog: TopicCatalog) -> list[tuple[int, bytes, Any]]:
    out = []
    for partition, key, value in read_log(settings, catalog.scheduler_state.topic, PARTITIONS):
        assert key is not None and value is not None
        out.append((partition, key, json.loads(value)))
    return out


def test_an_unknown_snapshot_version_falls_back_to_a_full_fold_loudly(
    engine_harness: HarnessFactory,
    kafka_settings: Settings,
    http: HttpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = engine_harness(_settings(kafka_settings, interval_ms=100), client_id="versions")
    _register_all(harness, http)
    _start_the_mix(harness)
    catalog = harness.engine.catalog
    expected = _full_fold(kafka_settings, catalog)
    _wait_settled(_scheduler(harness), expected, snapshotted=True)
    harness.engine.stop()
    # A newer scheduler wrote one record of partition p in a format this one does not know.
    records = _snapshot_records(kafka_settings, catalog)
    p, key = next((p, k) for p, k, _ in records if k != CHECKPOINT_KEY)
    others = [q for q in _populated(expected) if q != p]
    with Producer(kafka_settings, client_id="future-scheduler") as producer:
        newer = {"v": 2, "kind": "finished", "status": "succeeded", "last_seq": 99}
        producer.send(catalog.scheduler_state, key, json.dumps(newer).encode(), partition=p)
    caplog.set_level(logging.INFO, logger="processors.scheduler.runtime.recovery")

    recovery = eventually(
        lambda: recover_partitions(kafka_settings, catalog, range(PARTITIONS)),
        15,
        "a recovery that reads the newer record",
        until=lambda r: r.report.fallbacks,
    )

    assert _views(recovery.tables) == expected
    report = recovery.report
    assert report.from_snapshot == others
    assert report.full_fold == sorted({p} | {q for q in range(PARTITIONS) if not expected[q]})
    assert list(report.fallbacks) == [p]
    assert "Expected snapshot format version 1, but got 2" in report.fallbacks[p]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"NOT using the snapshot of scheduler-state partition {p}" in (
        errors[0].getMessage()
    )
    # The fallback partition is folded whole: all of its runs are dirty (rewritten next cycle).
    assert recovery.tables[p].dirty == set(expected[p])
    assert not any(recovery.tables[q].dirty for q in others)


def test_a_tail_that_does_not_continue_its_snapshot_falls_back(
    engine_harness: HarnessFactory,
    kafka_settings: Settings,
    http: HttpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = engine_harness(_settings(kafka_settings, interval_ms=100), client_id="gap")
    _register_all(harness, http)
    runs = _start_the_mix(harness)
    catalog = harness.engine.catalog
    expected = _full_fold(kafka_settings, catalog)
    _wait_settled(_scheduler(harness), expected, snapshotted=True)
    harness.engine.stop()
    # Damage: a run's snapshot two events behind, and a checkpoint at 0 (the tail replays every
    # event): the tail then jumps from the snapshot's seq to a later one, a gap.
    run_id = runs["quick"][0]
    partition = next(p for p, view in expected.items() if run_id in view)
    marker = expected[partition][run_id]
    assert isinstance(marker, FinishedRun)
    stale = marker._replace(last_seq=marker.last_seq - 2)
    with Producer(kafka_settings, client_id="damage") as producer:
        producer.send(catalog.scheduler_state, run_id, encode_entry(stale), partition=partition)
        producer.send(
            catalog.scheduler_state, CHECKPOINT_KEY, encode_checkpoint(0), partition=partition
        )
    caplog.set_level(logging.INFO, logger="processors.scheduler.runtime.recovery")

    recovery = eventually(
        lambda: recover_partitions(kafka_settings, catalog, range(PARTITIONS)),
        15,
        "a recovery that reads the damaged records",
        until=lambda r: r.report.fallbacks,
    )

    assert _views(recovery.tables) == expected
    assert list(recovery.report.fallbacks) == [partition]
    assert "does not continue the snapshot" in recovery.report.fallbacks[partition]
    empty = {q for q in range(PARTITIONS) if not expected[q]}
    assert recovery.report.full_fold == sorted({partition} | empty)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_snapshots_of_an_aborted_transaction_are_not_state(
    topics: TopicCatalog, kafka_settings: Settings
) -> None:
    ghost = RunState(run_id="ghost", status=RunStatus.CANCELLED, last_seq=4)
    table = RunTable(kept=0)
    table.put(ghost)
    now = [0.0]
    writer = SnapshotWriter(topics.scheduler_state.topic, interval_s=1, clock=lambda: now[0])
    assert not writer.due({0: table})  # the interval has not passed
    now[0] = 1.0
    assert writer.due({0: table})
    admin = admin_client(kafka_settings)
    runs = topics.runs.topic

    def runs_ends(partitions: list[int]) -> Callable[[], dict[int, int]]:
        answer = request_end_offsets(admin, [runs], partitions, timeout=10)
        return lambda: answer()[runs]

    with TransactionalProducer(kafka_settings, transactional_id=f"{topics.prefix}.t") as producer:
        producer.begin()
        cycle = writer.write(producer, {0: table}, runs_ends)
        assert (cycle.written, cycle.complete, cycle.checkpoints) == ({0: ["ghost"]}, [0], {})
        writer.finish(producer, cycle)
        # The runs partition is empty: the tail starts at 0.
        assert (cycle.checkpoints, cycle.records) == ({0: 0}, 2)
        producer.abort()
        aborted = recover_partitions(kafka_settings, topics, range(PARTITIONS))
        assert aborted.report.snapshot_records == 0
        assert aborted.report.from_snapshot == [] and "ghost" not in aborted.tables[0]

        producer.begin()
        cycle = writer.write(producer, {0: table}, runs_ends)
        writer.finish(producer, cycle)
        producer.commit([], None)
        writer.committed(cycle, {0: table})
    assert table.dirty == set() and not writer.due({0: table})
    committed = eventually(
        lambda: recover_partitions(kafka_settings, topics, range(PARTITIONS)),
        15,
        "a recovery that reads the committed cycle",
        until=lambda r: r.report.snapshot_records,
    )
    assert committed.report.snapshot_records == 2
    assert committed.report.from_snapshot == [0]
    assert committed.tables[0].view() == {"ghost": FinishedRun(RunStatus.CANCELLED, 4, None)}


def test_a_long_history_is_snapshotted_in_chunks_checkpointed_at_the_end(
    topics: TopicCatalog, kafka_settings: Settings
) -> None:
    table = RunTable(kept=0)
    for n in range(25):
        table.put(RunState(run_id=f"run-{n:02d}", status=RunStatus.SUCCEEDED, last_seq=n))
    now = [0.0]
    writer = SnapshotWriter(topics.scheduler_state.topic, 3600, chunk=10, clock=lambda: now[0])
    now[0] = 3600.0  # the interval has passed
    cycles = []
    with TransactionalProducer(kafka_settings, transactional_id=f"{topics.prefix}.c") as producer:
        while writer.due({2: table}):
            producer.begin()
            cycle = writer.write(producer, {2: table}, lambda ps: lambda: dict.fromkeys(ps, 7))
            writer.finish(producer, cycle)
            producer.commit([], None)
            writer.committed(cycle, {2: table})
            cycles.append((len(cycle.written[2]), dict(cycle.checkpoints)))
    # Three cycles back to back (no interval between the parts of one), one checkpoint.
    assert cycles == [(10, {}), (10, {}), (5, {2: 7})]
    records = eventually(
        lambda: _snapshot_records(kafka_settings, topics),
        15,
        "the three cycles' records on scheduler-state",
        until=lambda found: len(found) == 26,
    )
    assert {p for p, _, _ in records} == {2}
    assert not writer.due({2: table})  # done: the next cycle waits for the interval again
    recovery = recover_partitions(kafka_settings, topics, range(PARTITIONS))
    assert recovery.tables[2].view() == table.view()
    assert recovery.report.from_snapshot == [2]
