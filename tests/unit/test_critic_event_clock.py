"""The critic's partition clock (processors/critic/event_clock.py): a backlog read one partition
at a time closes no run before its traces on the other partitions are read."""

from __future__ import annotations

from processors.critic.critic import Critic
from processors.critic.event_clock import NOTHING_READ, PartitionClock
from processors.critic.view import TraceView
from schemas.models import DiagnosisKind

T0 = 1_780_000_000_000
RUNS = 200


def test_the_limit_is_the_oldest_partition_still_behind() -> None:
    clock = PartitionClock()
    assert clock.limit_ms is None  # nothing said: no limit (the pure core on its own)
    clock.hold()
    assert clock.limit_ms == NOTHING_READ
    clock.read(0, 5_000)
    clock.read(0, 4_000)  # out of order: the newest end counts
    clock.read(1, 2_000)
    assert clock.settle(behind=[0, 1])  # rose: from holding everything to 2 s
    assert clock.limit_ms == 2_000
    assert clock.settle(behind=[0])
    assert clock.limit_ms == 5_000
    assert not clock.settle(behind=[0, 2])  # 2 behind and nothing read from it yet
    assert clock.limit_ms == NOTHING_READ
    assert clock.settle(behind=[])
    assert clock.limit_ms is None
    assert not clock.settle(behind=[])  # no limit stays no limit
    # A partition given away is forgotten: read again from scratch when it comes back.
    clock.settle(behind=[1], assigned=[0])
    assert clock.limit_ms == NOTHING_READ
    assert clock.behind == frozenset({1})


def _traces() -> list[tuple[int, TraceView]]:
    """(partition, trace): per run, ``fetch`` (0-100 ms, partition 0, its node's) then ``pay``
    (150-200 ms, partition 1): fetch is half of every run, pay a quarter."""
    out = []
    for i in range(RUNS):
        start = T0 + i * 500
        for partition, step, node, begin, end in (
            (0, "fetch", "http.request", 0, 100),
            (1, "pay", "payments.call", 150, 200),
        ):
            view = TraceView(
                run_id=f"run-{i:04d}",
                workflow_id="checkout",
                workflow_version=1,
                step_id=step,
                node=node,
                node_version="1.0.0",
                status="ok",
                start_ms=start + begin,
                end_ms=start + end,
                latency_ms=end - begin,
                inputs_hash=f"{i}-{step}",
            )
            out.append((partition, view))
    return out


def _read_partition_by_partition(critic: Critic, *, clocked: bool) -> set[str]:
    """What librdkafka does with a backlog: all of partition 1, then all of partition 0, in
    batches of 50, the clock settled after each batch as the kafka loop does."""
    traces = _traces()
    order = [t for t in traces if t[0] == 1] + [t for t in traces if t[0] == 0]
    left = {0: sum(1 for p, _ in traces if p == 0), 1: sum(1 for p, _ in traces if p == 1)}
    if clocked:
        critic.clock.hold()
    bottlenecks: set[str] = set()
    for first in range(0, len(order), 50):
        for partition, view in order[first : first + 50]:
            if clocked:
                critic.clock.read(partition, view.end_ms)
            left[partition] -= 1
            for d in critic.observe(view):
                if d.kind == DiagnosisKind.BOTTLENECK:
                    bottlenecks.add(d.subject)
        if clocked and critic.clock.settle([p for p, n in left.items() if n]):
            for d in critic.advance():
                if d.kind == DiagnosisKind.BOTTLENECK:
                    bottlenecks.add(d.subject)
    if clocked:
        # Everything read: every run 30 s quiet closed without waiting for a newer trace (the
        # last 60 runs are within 30 s of the newest).
        assert critic.stats.runs_closed == RUNS - 60
    for d in critic.flush():
        if d.kind == DiagnosisKind.BOTTLENECK:
            bottlenecks.add(d.subject)
    return bottlenecks


def test_a_backlog_read_partition_by_partition_analyses_whole_runs() -> None:
    critic = Critic()
    bottlenecks = _read_partition_by_partition(critic, clocked=True)
    assert critic.late_traces == 0
    assert critic.stats.runs_closed == RUNS
    # fetch is half of each run: at the threshold, never pay (a quarter).
    assert bottlenecks <= {"workflow:checkout/step:fetch"}


def test_without_the_clock_the_same_backlog_closes_half_runs() -> None:
    """The failure the clock prevents (seen in CI): runs closed with only ``pay`` read, ``pay``
    all of them, the bottleneck; then every ``fetch`` trace late."""
    critic = Critic()
    bottlenecks = _read_partition_by_partition(critic, clocked=False)
    assert "workflow:checkout/step:pay" in bottlenecks
    assert critic.late_traces > 0
