"""Scheduler restart time against history size: ``scheduler_recovery_s_10k`` / ``_100k``.

For each history size N, on a topic prefix of its own (deleted afterwards):

1. **History.** N finished runs (a one-step ``transform`` workflow: ``RunStarted``,
   ``StepDispatched`` scheduling the step, ``StepSucceeded``, ``RunSucceeded``; five events
   with a ``StepScheduled`` of its own before ADR 0075) and
   :data:`ACTIVE_RUNS` runs still in flight (dispatched, no result) are written straight to
   ``runs``, in batches, by a plain producer: the events ``decide`` produced for one template run,
   copied under new run ids. Nothing else is needed to fold them.
2. **Cold start** (the old path): a scheduler starts on that log with no snapshot, so it folds the
   whole log -- ``scheduler_recovery_full_fold_s_*`` -- and then writes its first snapshot cycles
   (a marker per finished run, the active runs in full): ``scheduler_first_snapshot_s_*`` until
   every run is written.
3. **Tail.** It stops; :data:`TAIL_RUNS` more finished runs are written to ``runs``: events after
   the last checkpoint, what a crash leaves for the next start to fold (4,000 events, 5,000
   before ADR 0075: about what one 2 s snapshot interval writes at 1,000 steps/s).
4. **Restart**: a new scheduler starts. ``scheduler_recovery_s_*`` is the wall time from
   constructing it (Kafka clients, transactional producer, workflow and node views) until it owns
   every partition with its state rebuilt -- the restart time. ``scheduler_recovery_rebuild_s_*``
   is the rebuild alone (snapshot read + tail fold), from its :class:`RecoveryReport`.

Both restarts are measured the same way, so ``_full_fold_s`` vs ``_s`` is before vs after. The
restarted scheduler's tables are checked: every run is there, finished ones as markers.

Memory (``scheduler_state_bytes_per_finished_run``): what one finished run costs in the
restarted scheduler's table (the marker, its key and its dict slot; ``sys.getsizeof`` summed),
against ``scheduler_state_bytes_per_finished_run_full``: the same run's full state (deep size of
the pydantic model), which the scheduler kept for every run before markers existed.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from benchmarks.cleanup import delete_prefix_topics
from foundation.settings import Settings
from processors.scheduler.decide import DecisionContext, RegisteredWorkflow, decide
from processors.scheduler.evolve import RunEvent
from processors.scheduler.runtime.loop import SchedulerRuntime
from processors.scheduler.runtime.recovery import RecoveryReport
from processors.scheduler.state import RunState
from schemas import serde
from schemas.models import NodeResult, StartRun, TraceStatus
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.topics import TopicCatalog
from workflows import parse_workflow

__all__ = ["FULL_SIZES", "QUICK_SIZES", "run_recovery_benchmark"]

FULL_SIZES = (10_000, 100_000)
QUICK_SIZES = (10_000,)
ACTIVE_RUNS = 100
TAIL_RUNS = 1_000
WORKFLOW = parse_workflow(
    {
        "id": "bench-history",
        "steps": [{"id": "s", "node": "transform@^1", "params": {"expression": "`1`"}}],
    }
)
PHASE_TIMEOUT_S = 600.0


def _progress(message: str) -> None:
    print(f"[recovery {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def template_runs() -> tuple[list[RunEvent], list[RunEvent], RunState]:
    """(events of a finished run, events of an active run, the finished run's state), decided
    by the real core for run id ``"template"``."""
    now = datetime.now(UTC)
    ctx = DecisionContext(now=now, lookup_workflow=lambda _w, _v: RegisteredWorkflow(1, WORKFLOW))
    started = decide(None, StartRun(run_id="template", workflow_id=WORKFLOW.id, inputs={}), ctx)
    (invocation,) = started.invocations
    result = NodeResult(
        run_id="template",
        seq=invocation.seq,
        invocation_id=invocation.invocation_id,
        attempt=invocation.attempt,
        step=invocation.step,
        status=TraceStatus.OK,
        output={"result": 1},
        started_at=now,
        finished_at=now,
    )
    finished = decide(started.state, result, ctx)
    assert finished.state is not None and finished.state.is_finished
    return [*started.events, *finished.events], list(started.events), finished.state


def _write_runs(producer: Producer, topic: str, events: list[RunEvent], count: int) -> None:
    """``count`` runs with the template's events under fresh run ids (and event ids)."""
    for n in range(count):
        run_id = str(uuid.uuid4())
        for event in events:
            copy = event.model_copy(update={"run_id": run_id, "event_id": str(uuid.uuid4())})
            producer.send(topic, run_id, serde.encode(copy))
        if n % 5_000 == 4_999:
            producer.flush(120)
    producer.flush(120)


@contextlib.contextmanager
def _scheduler(settings: Settings) -> Iterator[tuple[SchedulerRuntime, float]]:
    """A scheduler running in a thread; yields it and the seconds from construction until it
    owned every partition with its state rebuilt."""
    began = time.monotonic()
    runtime = SchedulerRuntime(settings, instance_id="bench-recovery")
    constructed = time.monotonic() - began
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            runtime.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name="bench-recovery-scheduler", daemon=True)
    thread.start()
    partitions = set(range(settings.default_partitions))
    try:
        _until(lambda: set(runtime.states) == partitions, errors, "the scheduler to own all")
        owned = time.monotonic() - began
        rebuild = _report(runtime).seconds
        _progress(
            f"  restart {owned:.2f}s = clients {constructed:.2f}s + group join "
            f"{owned - constructed - rebuild:.2f}s + rebuild {rebuild:.2f}s"
        )
        yield runtime, owned
        if errors:
            raise RuntimeError(f"the scheduler failed: {errors[0]!r}") from errors[0]
    finally:
        stop.set()
        thread.join(60)


def _until(check: Callable[[], bool], errors: list[BaseException], what: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while not check():
        if errors:
            raise RuntimeError(f"the scheduler failed waiting for {what}: {errors[0]!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Expected {what} within {PHASE_TIMEOUT_S:.0f}s")
        time.sleep(0.01)


def _report(runtime: SchedulerRuntime) -> RecoveryReport:
    report = runtime.stats.last_recovery
    assert report is not None
    return report


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """``sys.getsizeof`` over an object graph (pydantic models, containers), each object once;
    enum members and other shared singletons count too (an upper bound)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(item, seen) for item in obj)
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
        extra = getattr(obj, "__pydantic_extra__", None)
        if extra:
            size += deep_size(extra, seen)
    return size


def marker_bytes(runtime: SchedulerRuntime) -> float:
    """Mean bytes per finished run held as a marker: the dict's share, the key, the tuple and
    its seq (status and None are shared singletons)."""
    total = count = 0
    for table in runtime.states.values():
        total += sys.getsizeof(table.finished)
        for run_id, marker in table.finished.items():
            total += sys.getsizeof(run_id) + sys.getsizeof(marker) + sys.getsizeof(marker[1])
            count += 1
    return total / max(count, 1)


def _one_size(base: Settings, n: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench-rec-{tag}"})
    catalog = TopicCatalog.from_settings(settings)
    label = _label(n)
    try:
        ensure_topics(catalog, settings=settings)
        finished_events, active_events, finished_state = template_runs()
        _progress(f"{label}: writing {n} finished + {ACTIVE_RUNS} active runs to {catalog.runs}")
        began = time.monotonic()
        with Producer(settings, client_id="bench-recovery", config={"linger.ms": 20}) as out:
            _write_runs(out, catalog.runs.topic, finished_events, n)
            _write_runs(out, catalog.runs.topic, active_events, ACTIVE_RUNS)
        _progress(f"{label}: history written in {time.monotonic() - began:.1f}s")

        with _scheduler(settings) as (first, cold_s):
            cold = _report(first)
            assert cold.full_fold == sorted(first.states), cold
            _progress(f"{label}: cold start (full fold) {cold_s:.2f}s: {cold.summary()}")
            began = time.monotonic()
            _until(
                lambda: all(not t.dirty for t in first.states.values()),
                [],
                "the first snapshot cycles",
            )
            snapshot_s = time.monotonic() - began
            records = first.stats.snapshot_records
            _progress(f"{label}: first snapshot: {records} records in {snapshot_s:.2f}s")

        with Producer(settings, client_id="bench-recovery-tail") as out:
            _write_runs(out, catalog.runs.topic, finished_events, TAIL_RUNS)

        with _scheduler(settings) as (second, warm_s):
            warm = _report(second)
            _progress(f"{label}: restart (snapshot + tail) {warm_s:.2f}s: {warm.summary()}")
            expected = (ACTIVE_RUNS, n + TAIL_RUNS)
            found = (warm.active_runs, warm.finished_runs)
            if found != expected or warm.full_fold or warm.fallbacks:
                raise RuntimeError(
                    f"Expected {expected} active/finished runs from snapshots, but got {found} "
                    f"(full fold: {warm.full_fold}, fallbacks: {warm.fallbacks})"
                )
            per_marker = marker_bytes(second)
        per_state = deep_size(finished_state)
        return {
            f"scheduler_recovery_s_{label}": warm_s,
            f"scheduler_recovery_rebuild_s_{label}": warm.seconds,
            f"scheduler_recovery_full_fold_s_{label}": cold_s,
            f"scheduler_recovery_full_fold_rebuild_s_{label}": cold.seconds,
            f"scheduler_first_snapshot_s_{label}": snapshot_s,
            f"scheduler_recovery_tail_events_{label}": float(warm.events_applied),
            f"scheduler_state_bytes_per_finished_run_{label}": per_marker,
            f"scheduler_state_bytes_per_finished_run_full_{label}": float(per_state),
        }
    finally:
        delete_prefix_topics(settings)


def run_recovery_benchmark(settings: Settings, quick: bool = False) -> dict[str, float]:
    results: dict[str, float] = {}
    for n in QUICK_SIZES if quick else FULL_SIZES:
        results |= _one_size(settings, n)
    return results


if __name__ == "__main__":
    import json

    from foundation.settings import get_settings

    quick = "--quick" in sys.argv[1:]
    print(json.dumps(run_recovery_benchmark(get_settings(), quick), indent=2))
