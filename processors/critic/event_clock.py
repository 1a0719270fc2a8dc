"""How far in event time every partition of the traces topic has been read.

Traces are keyed by node, so one run's traces sit on several partitions, and a consumer does
not read partitions in step: librdkafka hands out what it fetched one partition at a time, so a
critic catching up on a backlog reads thousands of one partition's traces before the first of
another's (measured: 10,000 records of partition 0, then 10,000 of partition 1). A run is
analysed once the workflow's newest trace is ``idle_close_ms`` past the run's last one
(:mod:`.runs`); measured on the partition read first, that closes runs whose traces on the
other partitions are still unread, and the analysis of those half-runs is wrong (a step that
is a quarter of every run looked like all of it).

The clock keeps, per partition, the newest trace end read from it and whether the partition is
*behind* (records left before its high watermark). Runs close no later than the oldest of the
behind partitions has reached (:attr:`PartitionClock.limit_ms`): a partition that is behind
holds the analysis back until it is read that far; one that is caught up holds nothing back
(whatever it gets next is new). This is the low watermark of stream processors (Flink's
per-partition watermarks with idleness), with "idle" read off the consumer's position rather
than a timeout. A partition behind whose reads have not started has reached nothing yet: no run
closes by time until it has; ``max_open_runs`` still bounds the memory that costs.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NOTHING_READ", "PartitionClock"]

NOTHING_READ = -(2**62)
"""The event time of a partition none of whose traces has been read yet."""


class PartitionClock:
    """Fed by the consumer loop: :meth:`read` per trace, :meth:`settle` after each batch."""

    __slots__ = ("_behind", "_reached", "limit_ms")

    def __init__(self) -> None:
        self._reached: dict[int, int] = {}
        self._behind: frozenset[int] = frozenset()
        self.limit_ms: int | None = None
        """The event time every partition has been read to, or None when none is behind (no
        limit). Read by the run assembler for every trace, so it is kept, not computed."""

    def hold(self) -> None:
        """Close nothing by time until the next :meth:`settle`: before the first batch the
        loop does not know yet which partitions are behind."""
        self.limit_ms = NOTHING_READ

    def read(self, partition: int, end_ms: int) -> None:
        """A trace of ``partition`` ending at ``end_ms`` was read."""
        if end_ms > self._reached.get(partition, NOTHING_READ):
            self._reached[partition] = end_ms

    def settle(self, behind: Iterable[int], assigned: Iterable[int] | None = None) -> bool:
        """The partitions still behind after the batch just observed; ``assigned`` forgets the
        partitions this consumer no longer owns (after a rebalance). True when the limit rose:
        runs may be quiet now with no new trace to close them (``Critic.advance``)."""
        if assigned is not None:
            owned = set(assigned)
            for partition in [p for p in self._reached if p not in owned]:
                del self._reached[partition]
        self._behind = frozenset(behind)
        reached = self._reached
        before = self.limit_ms
        self.limit_ms = (
            min(reached.get(p, NOTHING_READ) for p in self._behind) if self._behind else None
        )
        if before is None:
            return False
        return self.limit_ms is None or self.limit_ms > before

    @property
    def behind(self) -> frozenset[int]:
        return self._behind
