"""One partition's runs as the scheduler holds them: active runs in full, finished runs as markers.

A run that finished (``FINISHED_RUN_STATUSES``: succeeded or cancelled) rarely changes again (a
re-drive from a step reopens a succeeded one: the scheduler then reloads its full state from the
run log, :mod:`processors.scheduler.runtime.reload`); otherwise ``decide`` only judges a late input
against it, and for that it needs three facts, not the whole state:

- its **status** (every command is rejected with "Expected run to be ..., but it is
  succeeded", exactly as for the full state; late results, timers and cache answers are no-ops);
- its **last seq** (a rejection is an event: it gets ``last_seq + 1``);
- its **idempotency key** (a ``StartRun`` sent again with the same key is a silent no-op; run
  ids derived from idempotency keys make such duplicates common, e.g. a redelivered webhook).

So the table keeps the ``kept`` most recently finished runs of the partition in full (late
duplicates of a just-finished run are answered exactly as before, including the dedupe of a
re-sent command id) and shrinks older ones to a :class:`FinishedRun` marker, ~200 bytes instead
of the whole state with its graph, params and outputs. A marker turns back into a minimal
:class:`RunState` when an input arrives for its run; ``decide`` then answers as it would have
with the full state, except that a command re-sent with the *same command id* is rejected (an
extra ``CommandRejected``) instead of being recognised as a duplicate (the marker does not keep
the processed ids).

Failed runs are not finished (a re-drive re-opens them) and stay in full, as do pending ones
(a rejected ``StartRun``: already as small as a marker).

The table also tracks which runs changed since their last snapshot (``dirty``); see
:mod:`processors.scheduler.runtime.snapshots`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

from processors.scheduler.state import RunState, RunStatus

__all__ = ["FinishedRun", "RunTable", "TableEntry"]


class FinishedRun(NamedTuple):
    """What the scheduler keeps of a finished run once it left the recent ones."""

    status: RunStatus
    last_seq: int
    idempotency_key: str | None

    @classmethod
    def of(cls, state: RunState) -> FinishedRun:
        if not state.is_finished:
            raise ValueError(
                f"Expected run {state.run_id!r} to be finished, but it is {state.status}"
            )
        return cls(state.status, state.last_seq, state.idempotency_key)

    def state(self, run_id: str) -> RunState:
        """The minimal state ``decide`` judges a late input against."""
        return RunState(
            run_id=run_id,
            status=self.status,
            last_seq=self.last_seq,
            idempotency_key=self.idempotency_key,
        )


TableEntry = RunState | FinishedRun
"""A run as a snapshot records it: the full state while active, the marker once finished."""


class RunTable:
    """Runs of one partition: active (full), recently finished (full, bounded), finished
    (markers). ``dirty``: run ids changed since their last snapshot record was committed."""

    def __init__(self, kept: int = 128) -> None:
        self.kept = max(0, kept)
        self.active: dict[str, RunState] = {}
        self.recent: OrderedDict[str, RunState] = OrderedDict()
        self.finished: dict[str, FinishedRun] = {}
        self.dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self.active) + len(self.recent) + len(self.finished)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.active or run_id in self.recent or run_id in self.finished

    def __iter__(self) -> Iterator[str]:
        yield from self.active
        yield from self.recent
        yield from self.finished

    def get(self, run_id: str) -> RunState | None:
        """The run's state for ``decide``: in full, or rebuilt from its marker."""
        state = self.active.get(run_id)
        if state is not None:
            return state
        state = self.recent.get(run_id)
        if state is not None:
            return state
        marker = self.finished.get(run_id)
        return None if marker is None else marker.state(run_id)

    def last_seq(self, run_id: str) -> int | None:
        """Without rebuilding a marker (recovery skips events already applied with it)."""
        state = self.active.get(run_id) or self.recent.get(run_id)
        if state is not None:
            return state.last_seq
        marker = self.finished.get(run_id)
        return None if marker is None else marker.last_seq

    def held_in_full(self, run_id: str) -> bool:
        return run_id in self.active or run_id in self.recent

    def put(self, state: RunState, *, recent: bool = True) -> list[str]:
        """Store a new state of a run and mark it dirty; returns the run ids that shrank to a
        marker now (``recent=False``: a finished run becomes a marker at once, as in recovery)."""
        run_id = state.run_id
        self.dirty.add(run_id)
        if not state.is_finished:
            self.active[run_id] = state
            return []
        self.active.pop(run_id, None)
        if not recent or self.kept == 0:
            self.recent.pop(run_id, None)
            self.finished[run_id] = FinishedRun.of(state)
            return [run_id]
        self.finished.pop(run_id, None)
        self.recent[run_id] = state
        self.recent.move_to_end(run_id)
        shrunk: list[str] = []
        while len(self.recent) > self.kept:
            old_id, old = self.recent.popitem(last=False)
            self.finished[old_id] = FinishedRun.of(old)
            shrunk.append(old_id)
        return shrunk

    def put_entry(self, run_id: str, entry: TableEntry) -> None:
        """A run as a snapshot recorded it (recovery); not dirty: the topic holds it already."""
        if isinstance(entry, FinishedRun):
            self.active.pop(run_id, None)
            self.finished[run_id] = entry
        elif entry.is_finished:
            self.active.pop(run_id, None)
            self.finished[run_id] = FinishedRun.of(entry)
        else:
            self.active[run_id] = entry

    def entry(self, run_id: str) -> TableEntry | None:
        """What a snapshot of the run records: the full state if active, else the marker."""
        state = self.active.get(run_id)
        if state is not None:
            return state
        state = self.recent.get(run_id)
        if state is not None:
            return FinishedRun.of(state)
        return self.finished.get(run_id)

    def view(self) -> dict[str, TableEntry]:
        """Every run as a snapshot would record it (compare two tables with this: recovery
        keeps no recent finished runs in full, a live table does)."""
        out: dict[str, TableEntry] = dict(self.active)
        for run_id, state in self.recent.items():
            out[run_id] = FinishedRun.of(state)
        out.update(self.finished)
        return out

    def active_states(self) -> Iterator[RunState]:
        """Runs that may still change (the timer scan reads these only)."""
        return iter(self.active.values())
