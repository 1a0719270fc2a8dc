"""The checkpoint core (streams.checkpoint) and the poison-record helper (streams.dlq).

Pure logic, no broker: the outputs, dead letters and commit target here only record what the
checkpoint asks of them. The Kafka and Postgres targets are exercised against the real services
by the integration tests of the loops that use them (streams I/O, worker runtime, scheduler crash
recovery, projection).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from confluent_kafka import Message, TopicPartition

from foundation.errors import RefluxError
from streams.checkpoint import Checkpoint, RebalanceHook, TopicPartitionKey
from streams.dlq import PoisonRecord, message_headers, poison_record

TP = ("t", 0)
OTHER = ("t", 1)


class Recorder:
    """Collects every call the checkpoint makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def output(self, name: str, fail: bool = False) -> Flush:
        return Flush(self, name, fail)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Flush:
    def __init__(self, recorder: Recorder, name: str, fail: bool) -> None:
        self.recorder = recorder
        self.name = name
        self.fail = fail
        self.during: Callable[[], None] | None = None

    def flush(self, timeout: float = 30.0) -> None:
        self.recorder.calls.append((self.name, timeout))
        if self.during is not None:
            self.during()
        if self.fail:
            raise RefluxError("Expected the broker to take the records, but it did not")


class Target:
    def __init__(self, recorder: Recorder, fail: bool = False) -> None:
        self.recorder = recorder
        self.fail = fail

    def commit(self, positions: Mapping[TopicPartitionKey, int]) -> None:
        self.recorder.calls.append(("commit", dict(positions)))
        if self.fail:
            raise RefluxError("Expected to commit, but the group is rebalancing")


def checkpoint(
    recorder: Recorder,
    *,
    target_fails: bool = False,
    on_assign: RebalanceHook | None = None,
    on_revoke: RebalanceHook | None = None,
    on_lost: RebalanceHook | None = None,
    drain: Callable[[list[TopicPartition]], Mapping[TopicPartitionKey, int]] | None = None,
) -> Checkpoint:
    return Checkpoint(
        Target(recorder, fail=target_fails),
        outputs=[recorder.output("results"), recorder.output("traces")],
        dead_letters=recorder.output("dlq"),
        name="unit",
        on_assign=on_assign,
        on_revoke=on_revoke,
        on_lost=on_lost,
        drain=drain,
    )


def test_commit_flushes_outputs_then_dead_letters_then_commits() -> None:
    recorder = Recorder()
    cp = checkpoint(recorder)
    for offset in (0, 1, 2):
        cp.advance(TP, offset)
    cp.advance(OTHER, 7)
    extra = recorder.output("caller")

    committed = cp.commit(flush=[extra], timeout=5.0)

    assert committed == {TP: 3, OTHER: 8}
    assert recorder.calls == [
        ("results", 5.0),
        ("traces", 5.0),
        ("caller", 5.0),
        ("dlq", 5.0),
        ("commit", {TP: 3, OTHER: 8}),
    ]
    # Committed positions are not sent again; new progress is.
    recorder.calls.clear()
    assert cp.commit() == {}
    cp.advance(TP, 3)
    assert cp.commit() == {TP: 4}
    assert recorder.calls[-1] == ("commit", {TP: 4})


@pytest.mark.parametrize("failing", ["results", "dlq"])
def test_a_failed_flush_commits_nothing(failing: str) -> None:
    recorder = Recorder()
    cp = Checkpoint(
        Target(recorder),
        outputs=[recorder.output("results", fail=failing == "results")],
        dead_letters=recorder.output("dlq", fail=failing == "dlq"),
    )
    cp.advance(TP, 0)
    with pytest.raises(RefluxError):
        cp.commit()
    assert "commit" not in recorder.names()
    assert cp.positions() == {TP: 1}  # still to commit: the next commit retries


def test_a_failed_commit_keeps_the_positions_to_commit() -> None:
    recorder = Recorder()
    cp = checkpoint(recorder, target_fails=True)
    cp.advance(TP, 4)
    with pytest.raises(RefluxError):
        cp.commit()
    assert cp.positions() == {TP: 5}


def test_positions_are_snapshot_before_the_flush() -> None:
    recorder = Recorder()
    results = recorder.output("results")
    cp = Checkpoint(Target(recorder), outputs=[results])
    cp.start(TP, 0)
    cp.start(TP, 1)
    cp.finish(TP, 0)
    # Offset 1 finishes while the producer flushes: its outputs may have been queued after the
    # flush started, so this commit must not cover it.
    results.during = lambda: cp.finish(TP, 1)
    assert cp.commit() == {TP: 1}
    assert recorder.calls[-1] == ("commit", {TP: 1})
    results.during = None
    assert cp.commit() == {TP: 2}


def test_out_of_order_finishes_commit_only_the_contiguous_prefix() -> None:
    recorder = Recorder()
    cp = checkpoint(recorder)
    for offset in (10, 11, 12):
        cp.start(TP, offset)
    cp.finish(TP, 12)
    cp.finish(TP, 11)
    assert cp.commit() == {}  # 10 still runs
    assert "commit" in recorder.names()  # the target decides what an empty commit means
    cp.finish(TP, 10)
    assert cp.commit() == {TP: 13}
    assert cp.in_flight() == 0


def test_explicit_positions_are_committed_as_given() -> None:
    recorder = Recorder()
    cp = checkpoint(recorder)
    for offset in range(10):
        cp.advance(TP, offset)
    assert cp.commit(positions={TP: 5}) == {TP: 5}
    assert cp.positions() == {TP: 10}  # what was handed out beyond is still to commit


def test_restore_tracks_committed_positions() -> None:
    cp = Checkpoint(Target(Recorder()))
    cp.restore({TP: 5, OTHER: 0})
    assert cp.positions() == {}
    assert cp.next_offset(TP) == 5 and cp.next_offset(OTHER) is None
    assert cp.seen(TP, 4) and not cp.seen(TP, 5)
    cp.advance(TP, 5)
    assert cp.positions() == {TP: 6}


def test_revoke_commits_the_revoked_partitions_then_forgets_them_then_calls_the_hook() -> None:
    recorder = Recorder()
    hooked: list[list[tuple[str, int]]] = []

    def on_revoke(partitions: list[TopicPartition]) -> None:
        recorder.calls.append(("hook", None))
        hooked.append([(p.topic, p.partition) for p in partitions])

    cp = checkpoint(recorder, on_revoke=on_revoke)
    cp.advance(TP, 0)
    cp.advance(OTHER, 3)

    cp.revoked([TopicPartition(*TP)])

    assert recorder.names() == ["results", "traces", "dlq", "commit", "hook"]
    assert ("commit", {TP: 1}) in recorder.calls
    assert hooked == [[TP]]
    assert cp.partitions() == [OTHER]
    assert cp.positions() == {OTHER: 4}


def test_revoke_without_progress_neither_flushes_nor_commits() -> None:
    recorder = Recorder()
    cp = checkpoint(recorder)
    cp.restore({TP: 3})
    cp.revoked([TopicPartition(*TP)])
    assert recorder.calls == []
    assert cp.partitions() == []


def test_a_failed_commit_on_revoke_is_logged_and_the_partitions_still_go() -> None:
    recorder = Recorder()
    hooked: list[int] = []
    cp = checkpoint(recorder, target_fails=True, on_revoke=lambda ps: hooked.append(len(ps)))
    cp.advance(TP, 0)
    cp.revoked([TopicPartition(*TP)])  # does not raise: the new owner re-processes
    assert "commit" in recorder.names()
    assert cp.partitions() == []
    assert hooked == [1]


def test_drain_decides_what_a_revoke_commits() -> None:
    recorder = Recorder()
    drained: list[list[tuple[str, int]]] = []

    def drain(partitions: list[TopicPartition]) -> dict[TopicPartitionKey, int]:
        # The loop finishes what it can of the revoked partitions, abandons the rest.
        drained.append([(p.topic, p.partition) for p in partitions])
        recorder.calls.append(("drain", None))
        cp.finish(TP, 0)
        return cp.positions([TP])

    cp = checkpoint(recorder, drain=drain)
    cp.start(TP, 0)
    cp.start(TP, 1)  # abandoned: never finished
    cp.revoked([TopicPartition(*TP)])
    assert recorder.names() == ["drain", "results", "traces", "dlq", "commit"]
    assert ("commit", {TP: 1}) in recorder.calls
    assert drained == [[TP]]
    assert cp.partitions() == []


@pytest.mark.parametrize("drained", ["nothing", "raises"])
def test_a_drain_that_gives_nothing_commits_nothing(drained: str) -> None:
    recorder = Recorder()

    def drain(partitions: list[TopicPartition]) -> dict[TopicPartitionKey, int]:
        if drained == "raises":
            raise TimeoutError("in-flight work did not finish")
        return {}

    cp = checkpoint(recorder, drain=drain)
    cp.advance(TP, 0)
    cp.revoked([TopicPartition(*TP)])
    assert recorder.calls == []
    assert cp.partitions() == []


def test_lost_partitions_are_forgotten_without_committing() -> None:
    recorder = Recorder()
    lost: list[int] = []
    cp = checkpoint(recorder, on_lost=lambda ps: lost.append(len(ps)))
    cp.advance(TP, 0)
    cp.advance(OTHER, 0)
    cp.lost([TopicPartition(*TP)])
    assert recorder.calls == []
    assert cp.partitions() == [OTHER]
    assert lost == [1]


def test_assignment_starts_partitions_afresh_then_calls_the_hook() -> None:
    recorder = Recorder()
    seen_by_hook: list[list[TopicPartitionKey]] = []
    cp = checkpoint(recorder, on_assign=lambda _ps: seen_by_hook.append(cp.partitions()))
    cp.start(TP, 9)  # left over (a revoke that never came)
    cp.assigned([TopicPartition(*TP), TopicPartition(*OTHER)])
    assert seen_by_hook == [[]]
    assert cp.seen(TP, 9) is False  # a redelivery of 9 is taken again
    assert recorder.calls == []


def test_clear_forgets_everything_so_nothing_is_committed() -> None:
    recorder = Recorder()
    cp = checkpoint(recorder)
    cp.advance(TP, 0)
    cp.clear()  # an aborted batch
    assert cp.commit() == {}
    assert recorder.calls[-1] == ("commit", {})


def test_poison_record_keeps_coordinates_bytes_and_headers_of_a_message() -> None:
    message = Message(
        topic="p.runs",
        partition=2,
        offset=7,
        key=b"run-1",
        value=b"\x00junk",
        headers=[("reflux-type", "a.B"), ("empty", None), ("raw", b"\xff")],
    )
    assert message_headers(message) == (("reflux-type", b"a.B"), ("empty", b""), ("raw", b"\xff"))
    assert poison_record(message) == PoisonRecord(
        "p.runs", 2, 7, b"run-1", b"\x00junk", message_headers(message)
    )
    tombstone = Message(topic="p.nodes", partition=0, offset=0, key=b"k", value=None)
    assert poison_record(tombstone) == PoisonRecord("p.nodes", 0, 0, b"k", None, ())
