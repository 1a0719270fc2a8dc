"""In-order offset commits under out-of-order completion.

Invocations of one partition run concurrently and finish in any order, but a Kafka commit says
"everything before this offset is done". Committing the highest finished offset would skip an
invocation still running at a lower offset; if the worker then dies, that invocation is never
re-delivered (lost). So each partition commits only the contiguous finished prefix: the position
is the lowest offset still in flight, or one past the highest offset seen when none is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["OffsetTracker", "PartitionOffsets", "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class PartitionOffsets:
    pending: set[int] = field(default_factory=set)
    highest: int = -1
    committed: int = -1
    """The last committed position (next offset to read); starts at the first offset seen."""

    def start(self, offset: int) -> None:
        if self.highest < 0:
            # Consumption resumed here, so this is (at least) the group's committed position:
            # committing it again would be a no-op round trip.
            self.committed = offset
        self.pending.add(offset)
        self.highest = max(self.highest, offset)

    def finish(self, offset: int) -> None:
        self.pending.discard(offset)

    def position(self) -> int | None:
        """The offset to commit (next to read), or ``None`` if nothing was started yet."""
        if self.highest < 0:
            return None
        return min(self.pending) if self.pending else self.highest + 1


class OffsetTracker:
    """Per-partition bookkeeping of started/finished offsets for one consumer."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}

    def start(self, tp: TopicPartitionKey, offset: int) -> None:
        self._partitions.setdefault(tp, PartitionOffsets()).start(offset)

    def finish(self, tp: TopicPartitionKey, offset: int) -> None:
        state = self._partitions.get(tp)
        if state is not None:  # a partition revoked meanwhile is no longer ours to track
            state.finish(offset)

    def next_offset(self, tp: TopicPartitionKey) -> int | None:
        """One past the highest offset started, or ``None`` for an untracked partition."""
        state = self._partitions.get(tp)
        return state.highest + 1 if state is not None and state.highest >= 0 else None

    def seen(self, tp: TopicPartitionKey, offset: int) -> bool:
        """Whether ``offset`` was already started since the partition was (re)assigned."""
        following = self.next_offset(tp)
        return following is not None and offset < following

    def in_flight(self, tps: Iterable[TopicPartitionKey] | None = None) -> int:
        keys = self._partitions.keys() if tps is None else tps
        return sum(len(self._partitions[k].pending) for k in keys if k in self._partitions)

    def positions(
        self, tps: Iterable[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Positions that moved past the last commit (what a commit should send now)."""
        keys = list(self._partitions) if tps is None else list(tps)
        out: dict[TopicPartitionKey, int] = {}
        for key in keys:
            state = self._partitions.get(key)
            if state is None:
                continue
            position = state.position()
            if position is not None and position > state.committed:
                out[key] = position
        return out

    def mark_committed(self, positions: dict[TopicPartitionKey, int]) -> None:
        for key, position in positions.items():
            state = self._partitions.get(key)
            if state is not None:
                state.committed = max(state.committed, position)

    def drop(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Forget partitions (revoked or lost): a new owner resumes from the committed offset."""
        for key in tps:
            self._partitions.pop(key, None)

    def partitions(self) -> list[TopicPartitionKey]:
        return sorted(self._partitions)
