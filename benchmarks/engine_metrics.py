"""The engine benchmark's metrics, computed from what a watcher saw on Kafka (pure, no I/O).

Clocks: ``sent`` / ``acked`` / ``received`` are ``time.time()`` readings in the benchmark process;
``occurred_at`` (events), ``started_at`` / ``finished_at`` (node results) and ``produced_ms``
(Kafka CreateTime) are written by the engine's components in the same process on the same
machine, but with **millisecond resolution** (Avro ``timestamp-millis``). Means over many steps
are finer than that; a single difference is +/- 1 ms.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from benchmarks.peers.stats import p50_p99, percentile, rate
from processors.scheduler.inline import INLINE_WORKER
from schemas.base import RefluxRecord
from schemas.models import (
    NodeInvocation,
    NodeResult,
    RunStarted,
    RunSucceeded,
    StepDispatched,
    StepScheduled,
    StepStarted,
    StepSucceeded,
)

__all__ = [
    "HOPS",
    "RunTrace",
    "Seen",
    "cache_hit_ms",
    "end_to_end_step_ms",
    "hop_samples",
    "inline_step_share",
    "latency_keys",
    "start_latency_ms",
    "start_to_first_step_ms",
    "step_overhead_ms",
    "steps_per_s",
    "summarize_hops",
]


@dataclass(frozen=True, slots=True)
class Seen:
    """One record the watcher consumed (read_committed), and when."""

    received: float
    """``time.time()`` when the watcher's poll returned it."""
    topic: str
    """Logical topic: ``runs``, ``invoke`` or ``results``."""
    record: RefluxRecord
    produced_ms: int | None = None
    """Kafka CreateTime: when the producing client called ``produce``."""


@dataclass(slots=True)
class RunTrace:
    """Everything observed about one run the benchmark started."""

    run_id: str
    sent: float
    """Just before ``StartRun`` was produced."""
    acked: float
    """``flush`` returned: the broker acknowledged ``StartRun`` (what a 202 promises)."""
    seen: list[Seen] = field(default_factory=list)

    def events(self) -> list[RefluxRecord]:
        return [s.record for s in self.seen if s.topic == "runs"]

    def first(self, kind: type[RefluxRecord], topic: str = "runs") -> Seen:
        for s in self.seen:
            if s.topic == topic and isinstance(s.record, kind):
                return s
        raise ValueError(
            f"Expected a {kind.__name__} on {topic} for run {self.run_id}, but the watcher saw "
            f"only {[type(s.record).__name__ for s in self.seen]}"
        )

    def results(self) -> dict[str, NodeResult]:
        """Node results by invocation id (a duplicate delivery keeps the first)."""
        out: dict[str, NodeResult] = {}
        for s in self.seen:
            if s.topic == "results" and isinstance(s.record, NodeResult):
                out.setdefault(s.record.invocation_id, s.record)
        return out


# Engine timestamps are truncated to the millisecond: the true instant lies on average half a
# millisecond later. Reading them at the middle of their millisecond keeps differences against
# this process's exact clock unbiased (differences between two engine stamps are unaffected).
_HALF_MS = 0.0005


def _ts(moment: datetime) -> float:
    return moment.timestamp() + _HALF_MS


def _event_time(record: RefluxRecord) -> float:
    occurred = getattr(record, "occurred_at", None)
    if not isinstance(occurred, datetime):
        raise ValueError(f"Expected {type(record).__name__} to carry occurred_at, but it does not")
    return occurred.timestamp() + _HALF_MS


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def start_latency_ms(run: RunTrace) -> float:
    """StartRun acknowledged -> the run's first NodeInvocation visible on its invoke topic."""
    return _ms(run.first(NodeInvocation, "invoke").received - run.acked)


def start_to_first_step_ms(run: RunTrace) -> float:
    """StartRun acknowledged -> the worker begins the first step (Temporal peer's definition)."""
    first = min(_ts(r.started_at) for r in run.results().values())
    return _ms(first - run.acked)


def step_overhead_ms(run: RunTrace, steps: int) -> float:
    """(RunStarted -> RunSucceeded, event time) minus the nodes' own execution, per step."""
    started = run.first(RunStarted).record
    succeeded = run.first(RunSucceeded).record
    assert isinstance(started, RunStarted) and isinstance(succeeded, RunSucceeded)
    accepted = {
        e.invocation_id for e in run.events() if isinstance(e, StepSucceeded) and e.invocation_id
    }
    results = run.results()
    missing = accepted - set(results)
    if missing:
        raise ValueError(
            f"Expected a NodeResult for every succeeded step of run {run.run_id}, but "
            f"{len(missing)} are missing"
        )
    execution = sum(_ts(results[i].finished_at) - _ts(results[i].started_at) for i in accepted)
    duration = _ts(succeeded.occurred_at) - _ts(started.occurred_at)
    return _ms(duration - execution) / steps


def end_to_end_step_ms(run: RunTrace, steps: int) -> float:
    """(StartRun sent -> RunSucceeded visible) / steps: the Temporal peer's step overhead."""
    return _ms(run.first(RunSucceeded).received - run.sent) / steps


def cache_hit_ms(run: RunTrace) -> float:
    """StepScheduled -> StepSucceeded(cache_hit) of the run's cached step (event time)."""
    events = run.events()
    hit = next((e for e in events if isinstance(e, StepSucceeded) and e.cache_hit), None)
    if hit is None:
        raise ValueError(
            f"Expected a cache hit in run {run.run_id}, but its steps were "
            f"{[type(e).__name__ for e in events]}"
        )
    scheduled = next(
        e
        for e in events
        if isinstance(e, StepScheduled)
        and e.step.step_id == hit.step.step_id
        and e.attempt == hit.attempt
    )
    return _ms(_ts(hit.occurred_at) - _ts(scheduled.occurred_at))


def steps_per_s(runs: Sequence[RunTrace], began: float) -> float:
    """Steps that succeeded in ``runs`` / (``began`` -> the last RunSucceeded visible)."""
    steps = sum(1 for run in runs for e in run.events() if isinstance(e, StepSucceeded))
    last = max(run.first(RunSucceeded).received for run in runs)
    return rate(steps, last - began)


# -- where one step's time goes -------------------------------------------------------------------

HOPS: tuple[tuple[str, str], ...] = (
    ("command", "StartRun acked -> RunStarted decided (scheduler poll + batch)"),
    ("dispatch_commit", "StepDispatched decided -> invocation visible (txn commit + fetch)"),
    ("dispatch", "StepDispatched decided -> worker starts the node (commit + worker fetch)"),
    ("execute", "node started -> finished (the node itself)"),
    ("result_produce", "node finished -> NodeResult produced (result + trace records)"),
    ("result", "NodeResult produced -> StepSucceeded decided (linger + scheduler fetch + batch)"),
    ("step_cycle", "StepDispatched decided -> StepSucceeded decided (one whole step)"),
    ("end_commit", "RunSucceeded decided -> visible on runs (txn commit + fetch)"),
)


def hop_samples(runs: Iterable[RunTrace]) -> dict[str, list[float]]:
    """Milliseconds per hop (see :data:`HOPS`), one sample per run or per dispatched step."""
    out: dict[str, list[float]] = {name: [] for name, _ in HOPS}
    for run in runs:
        events = run.events()
        out["command"].append(_ms(_event_time(run.first(RunStarted).record) - run.acked))
        visible = {
            s.record.invocation_id: s.received
            for s in run.seen
            if s.topic == "invoke" and isinstance(s.record, NodeInvocation)
        }
        produced = {
            s.record.invocation_id: s.produced_ms
            for s in run.seen
            if s.topic == "results" and isinstance(s.record, NodeResult)
        }
        results = run.results()
        succeeded = {
            e.invocation_id: e for e in events if isinstance(e, StepSucceeded) and e.invocation_id
        }
        for event in events:
            if not isinstance(event, StepDispatched):
                continue
            inv = event.invocation_id
            result, done = results.get(inv), succeeded.get(inv)
            decided = _ts(event.occurred_at)
            if inv in visible:
                out["dispatch_commit"].append(_ms(visible[inv] - decided))
            if result is None or done is None:
                continue
            out["dispatch"].append(_ms(_ts(result.started_at) - decided))
            out["execute"].append(_ms(_ts(result.finished_at) - _ts(result.started_at)))
            produced_ms = produced.get(inv)
            if produced_ms is not None:
                made = produced_ms + _HALF_MS * 1000
                out["result_produce"].append(made - _ms(_ts(result.finished_at)))
                out["result"].append(_ms(_ts(done.occurred_at)) - made)
            out["step_cycle"].append(_ms(_ts(done.occurred_at) - decided))
        end = run.first(RunSucceeded)
        out["end_commit"].append(_ms(end.received - _event_time(end.record)))
    return out


def summarize_hops(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per hop: count, mean, p50, p99 (ms); hops without samples are left out."""
    summary: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        if not values:
            continue
        p50, p99 = p50_p99(values)
        summary[name] = {
            "n": float(len(values)),
            "mean": statistics.fmean(values),
            "p50": p50,
            "p99": p99,
        }
    return summary


def latency_keys(prefix: str, samples: Sequence[float], *, p95: bool = False) -> dict[str, float]:
    """``{prefix}_p50_ms`` and ``{prefix}_p99_ms`` (numpy's linear percentile), and
    ``{prefix}_p95_ms`` when asked."""
    p50, p99 = p50_p99(samples)
    keys = {f"{prefix}_p50_ms": p50, f"{prefix}_p99_ms": p99}
    if p95:
        keys[f"{prefix}_p95_ms"] = percentile(samples, 95)
    return keys


def inline_step_share(runs: Iterable[RunTrace]) -> float:
    """Succeeded steps the scheduler evaluated inline (``StepStarted.worker``) / all succeeded."""
    inline: set[tuple[str, str]] = set()
    succeeded = 0
    for run in runs:
        for event in run.events():
            if isinstance(event, StepStarted) and event.worker == INLINE_WORKER:
                inline.add((run.run_id, event.invocation_id))
            elif isinstance(event, StepSucceeded):
                succeeded += 1
    return len(inline) / succeeded if succeeded else 0.0
