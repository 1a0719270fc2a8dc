"""In-order commits under out-of-order completion."""

from __future__ import annotations

import random

from streams.checkpoint import OffsetTracker, PartitionOffsets

TP = ("t", 0)


def test_position_is_lowest_pending_offset() -> None:
    state = PartitionOffsets()
    assert state.position() is None
    for offset in (10, 11, 12):
        state.start(offset)
    assert state.position() == 10
    state.finish(12)
    state.finish(11)
    assert state.position() == 10  # 10 still runs: committing 13 would lose it on a crash
    state.finish(10)
    assert state.position() == 13


def test_tracker_reports_only_moved_positions() -> None:
    tracker = OffsetTracker()
    tracker.start(TP, 0)
    tracker.start(TP, 1)
    tracker.start(("t", 1), 7)
    # Nothing finished yet: the positions are where consumption resumed, nothing to commit.
    assert tracker.positions() == {}
    tracker.finish(TP, 0)
    tracker.finish(("t", 1), 7)
    assert tracker.positions() == {TP: 1, ("t", 1): 8}
    tracker.mark_committed({TP: 1, ("t", 1): 8})
    assert tracker.positions() == {}
    tracker.start(("t", 1), 8)
    tracker.finish(("t", 1), 8)
    assert tracker.positions() == {("t", 1): 9}
    tracker.start(("t", 1), 9)
    assert tracker.in_flight() == 2  # offset 1 of TP and offset 9 of ("t", 1)
    assert tracker.in_flight([TP]) == 1


def test_drop_forgets_partitions_and_ignores_late_finishes() -> None:
    tracker = OffsetTracker()
    tracker.start(TP, 3)
    tracker.drop([TP])
    tracker.finish(TP, 3)  # a task finishing after its partition was revoked
    assert tracker.positions() == {}
    assert tracker.in_flight() == 0
    assert tracker.partitions() == []


def test_random_completion_order_never_commits_past_a_pending_offset() -> None:
    rng = random.Random(7)
    tracker = OffsetTracker()
    offsets = list(range(200))
    for offset in offsets:
        tracker.start(TP, offset)
    order = offsets[:]
    rng.shuffle(order)
    done: set[int] = set()
    committed = 0
    for offset in order:
        tracker.finish(TP, offset)
        done.add(offset)
        positions = tracker.positions()
        if TP in positions:
            position = positions[TP]
            assert all(o in done for o in range(position)), "committed past a running offset"
            assert position > committed
            committed = position
            tracker.mark_committed(positions)
    assert committed == 200
