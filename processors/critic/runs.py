"""Run-level analysis: a run's traces gathered per workflow, analysed once the run is quiet.

Traces do not say when a run ends, so a run is *closed* when the workflow's newest trace ended
``idle_close_ms`` after the run's last one (event time, so the result does not depend on when
the critic reads the stream), or when the workflow has too many open runs. A run's traces span
partitions (they are keyed by node), so "newest" is capped by how far every partition still
behind has been read (:mod:`.event_clock`).

From a closed run:

- **critical path**: each step's span is its first attempt's start to its last attempt's end
  (retries and their backoff included). Walking back from the step that ended last, the
  predecessor is the step that ended last before the current one started; the steps on that
  chain are the run's critical path and a step's *share* is its span over the run's duration.
  This reads dependencies off the timing alone, the way trace viewers do, so it needs no
  workflow definition.
- **cost**: tokens per run, and per step.
- **sequential pairs**: for pairs of steps a dependency oracle says are data-independent, whether
  one finished before the other started.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from processors.critic.config import RunTuning
from processors.critic.event_clock import PartitionClock
from processors.critic.view import TraceView

__all__ = [
    "ClosedRun",
    "DependencyOracle",
    "RunAssembler",
    "StepSpan",
    "critical_path",
]

DependencyOracle = Callable[[str, int], Iterable[tuple[str, str]] | None]
"""(workflow_id, workflow_version) -> pairs of steps that are independent (no data dependency,
no side-effect ordering), or None when the definition is unknown."""


@dataclass(slots=True)
class StepSpan:
    start_ms: int
    end_ms: int
    attempts: int = 0
    failed: int = 0
    cost_tokens: int = 0

    @property
    def duration_ms(self) -> int:
        return max(0, self.end_ms - self.start_ms)


@dataclass(slots=True)
class _OpenRun:
    run_id: str
    workflow_version: int
    first_ms: int
    last_ms: int
    steps: dict[str, StepSpan] = field(default_factory=dict)


@dataclass(slots=True)
class ClosedRun:
    """Read-only by convention (not ``frozen``: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``, and one is built per run)."""

    run_id: str
    workflow_id: str
    workflow_version: int
    start_ms: int
    end_ms: int
    steps: dict[str, StepSpan]

    @property
    def duration_ms(self) -> int:
        return max(0, self.end_ms - self.start_ms)

    @property
    def cost_tokens(self) -> int:
        return sum(s.cost_tokens for s in self.steps.values())


def critical_path(steps: dict[str, StepSpan], tolerance_ms: int = 0) -> list[str]:
    """Step ids on the critical path, last step first (see the module docstring)."""
    if not steps:
        return []
    # The steps by (end, id), latest first: the predecessor of a step is the first one in this
    # order, not yet on the path, that ended before it started (the latest such end, ties to the
    # larger id): one sort instead of a max() over the remaining steps at every hop.
    order = sorted(((span.end_ms, s, span.start_ms) for s, span in steps.items()), reverse=True)
    _, current, start = order[0]
    path = [current]
    taken = {current}
    while True:
        limit = start + tolerance_ms
        for end, s, s_start in order:
            if end <= limit and s not in taken:
                current, start = s, s_start
                break
        else:
            return path
        path.append(current)
        taken.add(current)


def critical_shares(run: ClosedRun) -> dict[str, float]:
    """Step -> share of the run's duration it spent on the critical path."""
    total = run.duration_ms
    if total <= 0:
        return {}
    return {s: run.steps[s].duration_ms / total for s in critical_path(run.steps)}


def sequential_pairs(run: ClosedRun, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The given pairs that ran one after the other in this run (both ran, spans disjoint)."""
    out = []
    for a, b in pairs:
        sa, sb = run.steps.get(a), run.steps.get(b)
        if sa is None or sb is None:
            continue
        if sa.end_ms <= sb.start_ms or sb.end_ms <= sa.start_ms:
            out.append((a, b))
    return out


class RunAssembler:
    """Open runs of one workflow; :meth:`add` returns the runs it closed."""

    def __init__(
        self, workflow_id: str, tuning: RunTuning, clock: PartitionClock | None = None
    ) -> None:
        self.workflow_id = workflow_id
        self.tuning = tuning
        self.clock = clock
        # Ordered by the last trace's arrival: the quiet runs are at the front.
        self._open: OrderedDict[str, _OpenRun] = OrderedDict()
        self._closed_ids: deque[str] = deque(maxlen=10_000)
        self._closed_set: set[str] = set()
        self.watermark_ms = 0
        self.late = 0
        """Traces of runs already closed (analysed without them)."""

    def add(self, trace: TraceView, failed: bool | None = None) -> list[ClosedRun]:
        """``failed``: ``trace.failed`` when the caller knows it already (the critic does)."""
        if trace.run_id in self._closed_set:
            self.late += 1
            return []
        run = self._open.get(trace.run_id)
        if run is None:
            run = self._open[trace.run_id] = _OpenRun(
                trace.run_id, trace.workflow_version, trace.start_ms, trace.end_ms
            )
        else:
            self._open.move_to_end(trace.run_id)
        start, end = trace.start_ms, trace.end_ms
        span = run.steps.get(trace.step_id)
        if span is None:
            span = run.steps[trace.step_id] = StepSpan(start, end)
        else:
            # Comparisons, not min()/max(): this runs for every trace.
            if start < span.start_ms:  # noqa: PLR1730
                span.start_ms = start
            if end > span.end_ms:  # noqa: PLR1730
                span.end_ms = end
        if not trace.is_retry_decision:
            span.attempts += 1
            if failed if failed is not None else trace.failed:
                span.failed += 1
        if trace.cost_tokens:
            span.cost_tokens += trace.cost_tokens
        if start < run.first_ms:  # noqa: PLR1730
            run.first_ms = start
        if end > run.last_ms:  # noqa: PLR1730
            run.last_ms = end
        if end > self.watermark_ms:  # noqa: PLR1730
            self.watermark_ms = end
        return self.close_quiet()

    def close_quiet(self) -> list[ClosedRun]:
        """Close the runs that are quiet now: after a trace of this workflow, or after the
        clock's limit rose with no new trace of it (a partition behind caught up)."""
        opened = self._open
        if not opened:
            return []
        watermark = self.watermark_ms
        if self.clock is not None:
            limit = self.clock.limit_ms
            if limit is not None and limit < watermark:
                watermark = limit
        horizon = watermark - self.tuning.idle_close_ms
        # Arrival order approximates last_ms order (traces arrive roughly in time): stop at the
        # first run that is not quiet yet. A run behind it that is quiet closes a little later.
        first = next(iter(opened.values()))
        if first.last_ms > horizon and len(opened) <= self.tuning.max_open_runs:
            return []  # the common case: nothing closes
        closed: list[ClosedRun] = []
        while opened:
            first = next(iter(opened.values()))
            if first.last_ms > horizon and len(opened) <= self.tuning.max_open_runs:
                break
            closed.append(self._close(first))
        return closed

    def flush(self) -> list[ClosedRun]:
        """Close every open run (end of a bounded stream)."""
        return [self._close(r) for r in sorted(self._open.values(), key=lambda r: r.last_ms)]

    def _close(self, run: _OpenRun) -> ClosedRun:
        del self._open[run.run_id]
        if len(self._closed_ids) == self._closed_ids.maxlen:
            self._closed_set.discard(self._closed_ids[0])
        self._closed_ids.append(run.run_id)
        self._closed_set.add(run.run_id)
        return ClosedRun(
            run.run_id, self.workflow_id, run.workflow_version, run.first_ms, run.last_ms, run.steps
        )

    @property
    def open_runs(self) -> int:
        return len(self._open)
