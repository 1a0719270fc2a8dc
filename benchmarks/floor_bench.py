"""The architecture's floor: a step's Kafka traffic with no application work, on this machine.

``python -m benchmarks.floor_bench [--quick]`` (and part ``floor`` of ``make bench``). What is the
best a REFLUX step could do on these 2 cores, given that it *is* a set of Kafka records moved by
Python processes? This benchmark builds that skeleton and measures it with the engine
benchmark's definitions:

- a **scheduler** process: a transactional consume-produce loop on ``commands`` + ``results``
  (the engine's consumer and transactional producer settings, batches of up to 500 inputs, one
  transaction per batch with its offsets), which for each input writes the records a real
  decision writes, as opaque bytes of the real sizes: a start -> ``RunStarted`` (3.5 KB: it
  carries the definition) and a ``StepDispatched`` that schedules the step (ADR 0075) to ``runs``
  and an invocation to ``invoke``; a result -> ``StepSucceeded`` and either the next step's two
  records or ``RunSucceeded``. (A no-op attempt sends no start signal, so no ``StepStarted``;
  before 2026-12-07 the floor wrote a ``StepScheduled`` and a ``StepStarted`` per step too.)
  Its only state is a counter per run.
- a **worker** process: consumes ``invoke`` (``read_committed``) and produces a result and a
  trace per invocation with the engine worker's producer settings (linger 0); no ledger.
- a **projector** process: consumes ``runs`` (``read_committed``) and drops what it reads; no
  Postgres.
- the driver (this process): 100 runs started at once, one flush; a watcher consuming ``runs``
  for the ``RunSucceeded`` markers, like the engine benchmark's watcher.

So the floor keeps every Kafka hop, record, byte, transaction and consumer of a remote step and
drops everything else: Avro, pydantic, ``decide``/``evolve``, the attempt ledger, the node
itself, Postgres, traces to ClickHouse. The keys (``floor_*``) and what they bound are in
benchmarks/README.md ("The floor"). Topics use a prefix of their own (``bench-floor-<uuid8>``),
deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.cimpl import NewTopic

from benchmarks.cleanup import delete_prefix_topics
from benchmarks.profiling import cpu_delta, cpu_ms_per_step, cpu_snapshot
from foundation.settings import PROJECT_ROOT, Settings, get_settings
from node_workers.limits import RESULT_LINGER_MS
from streams.admin import admin_client
from streams.consumer import consume_available, consumer_config
from streams.producer import Producer, TransactionalProducer

STEPS = 10
BATCH = 500
# Sizes (bytes) of the engine's records for the benchmark's no-op step, measured from
# serde.encode of a real decision (RunStarted carries the workflow definition).
SIZES = {
    b"start": 157,
    b"RunStarted": 3524,
    b"StepDispatched": 247,
    b"invoke": 324,
    b"StepSucceeded": 260,
    b"RunSucceeded": 240,
    b"result": 300,
    b"trace": 520,
}
TOPICS = ("commands", "results", "runs", "invoke", "traces")


def record(kind: bytes, run_id: bytes) -> bytes:
    """``kind|run_id|`` padded to the real record's size (opaque bytes, like an Avro body)."""
    head = kind + b"|" + run_id + b"|"
    return head + b"x" * max(0, SIZES[kind] - len(head))


def parse(value: bytes) -> tuple[bytes, bytes]:
    kind, run_id, _ = value.split(b"|", 2)
    return kind, run_id


def topic(prefix: str, name: str) -> str:
    return f"{prefix}.{name}"


# -- the roles (each in its own process) ------------------------------------------------------


def _consumer(settings: Settings, group: str, topics: list[str], **extra: Any) -> Consumer:
    consumer = Consumer(consumer_config(group, settings, {"client.id": group, **extra}))
    consumer.subscribe(topics)
    return consumer


@dataclass(frozen=True)
class Discipline:
    """When the scheduler commits and what a worker may read: the one thing the two floors vary.

    ``per_batch`` is REFLUX's (ADR 0006): one transaction per batch of inputs, committed before
    the next batch is read, and workers read ``read_committed``, so a step's invocation reaches
    its worker only after the decision that made it committed. ``interval`` is LittleHorse's
    (Kafka Streams ``exactly_once_v2``, 500 ms commit interval, a task dispatched once its
    record is acknowledged): records go out at once (linger 0) in a transaction committed every
    ``commit_interval_ms``, and workers read ``read_uncommitted``, so a step costs produce +
    fetch hops, never a commit. What ``interval`` gives up is in ADR 0072.
    """

    name: str
    commit_interval_ms: float | None
    worker_isolation: str
    producer_linger_ms: float | None
    """The scheduler's and the worker's linger; None: the engine's (scheduler 100, worker
    :data:`node_workers.limits.RESULT_LINGER_MS`)."""


DISCIPLINES = {
    "per_batch": Discipline("per_batch", None, "read_committed", None),
    "interval": Discipline("interval", 10.0, "read_uncommitted", 0.0),
}


def _decide(done: dict[bytes, int], kind: bytes, run_id: bytes) -> list[bytes]:
    """The records one input makes: a start begins the run, a result ends a step."""
    if kind == b"start":
        done[run_id] = 0
        return [b"RunStarted", b"StepDispatched"]
    done[run_id] = done.get(run_id, 0) + 1
    last = [b"RunSucceeded"] if done[run_id] >= STEPS else [b"StepDispatched"]
    return [b"StepSucceeded", *last]


def run_scheduler(
    settings: Settings, prefix: str, stop: threading.Event, discipline: Discipline
) -> None:
    """The transactional consume-decide-produce loop, with nothing to decide but a counter."""
    consumer = _consumer(
        settings,
        f"{prefix}-scheduler",
        [topic(prefix, "commands"), topic(prefix, "results")],
        **{"enable.auto.commit": False},
    )
    linger = discipline.producer_linger_ms
    producer = TransactionalProducer(
        settings,
        transactional_id=f"{prefix}-scheduler",
        client_id=f"{prefix}-scheduler",
        config={"linger.ms": settings.scheduler_linger_ms if linger is None else linger},
    )
    runs, invoke = topic(prefix, "runs"), topic(prefix, "invoke")
    done: dict[bytes, int] = {}
    raw = producer._producer  # the confluent-kafka producer inside (no Avro, no headers)
    interval = (discipline.commit_interval_ms or 0.0) / 1000
    pending: list[Message] = []  # consumed since the open transaction began
    opened: float | None = None
    while not stop.is_set():
        # With a transaction open, poll briefly: the commit is due at its interval.
        messages = consume_available(consumer, BATCH, 0.001 if opened is not None else 0.1)
        messages = [m for m in messages if m.error() is None]
        if messages and opened is None:
            producer.begin()
            opened = time.monotonic()
        for message in messages:
            kind, run_id = parse(message.value() or b"")
            out = _decide(done, kind, run_id)
            for kind_out in out:
                raw.produce(runs, record(kind_out, run_id), run_id)
            if out[-1] == b"StepDispatched":
                raw.produce(invoke, record(b"invoke", run_id), run_id)
        raw.poll(0)
        pending += messages
        if opened is not None and time.monotonic() - opened >= interval:
            producer.commit(_next_offsets(pending), consumer.consumer_group_metadata())
            pending, opened = [], None


def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
    """The position after the last message of each partition (what a transaction commits)."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic() or "", m.partition() or 0)
        last[key] = max(last.get(key, -1), m.offset() or 0)
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def run_worker(
    settings: Settings, prefix: str, stop: threading.Event, discipline: Discipline
) -> None:
    consumer = _consumer(
        settings,
        f"{prefix}-worker",
        [topic(prefix, "invoke")],
        **{"isolation.level": discipline.worker_isolation},
    )
    linger = discipline.producer_linger_ms
    producer = Producer(
        settings,
        client_id=f"{prefix}-worker",
        config={"linger.ms": RESULT_LINGER_MS if linger is None else linger},
    )
    raw = producer._producer
    results, traces = topic(prefix, "results"), topic(prefix, "traces")
    while not stop.is_set():
        for message in consume_available(consumer, BATCH, 0.1):
            if message.error() is not None:
                continue
            _, run_id = parse(message.value() or b"")
            raw.produce(results, record(b"result", run_id), run_id)
            raw.produce(traces, record(b"trace", run_id), run_id)
        raw.poll(0)


def run_projector(
    settings: Settings, prefix: str, stop: threading.Event, discipline: Discipline
) -> None:
    consumer = _consumer(settings, f"{prefix}-projector", [topic(prefix, "runs")])
    while not stop.is_set():
        for message in consume_available(consumer, BATCH, 0.1):
            if message.error() is None:
                parse(message.value() or b"")


ROLES: dict[str, Callable[[Settings, str, threading.Event, Discipline], None]] = {
    "scheduler": run_scheduler,
    "worker": run_worker,
    "projector": run_projector,
}


def _serve_role(role: str, prefix: str, discipline: str) -> int:
    """A role's process: runs until stdin closes (the driver ends), so no orphan outlives it."""
    settings = get_settings()
    stop = threading.Event()
    args = (settings, prefix, stop, DISCIPLINES[discipline])
    worker = threading.Thread(target=ROLES[role], args=args, daemon=True)
    worker.start()
    sys.stdin.read()
    stop.set()
    worker.join(10)
    return 0


# -- the driver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloorPlan:
    warmup_runs: int
    sequential_runs: int
    concurrent_runs: int
    rounds: int
    timeout_s: float


QUICK = FloorPlan(3, 30, 100, 1, 60)
FULL = FloorPlan(5, 100, 100, 3, 120)


class Watcher:
    """Reads ``runs`` (read_committed) and notes when each run's ``RunSucceeded`` is visible."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.finished: dict[bytes, float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._consumer = Consumer(
            consumer_config(
                f"{prefix}-watcher",
                settings,
                {"auto.offset.reset": "earliest"},
            )
        )
        self._consumer.subscribe([topic(prefix, "runs")])
        self._thread = threading.Thread(target=self._loop, name="floor-watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for message in consume_available(self._consumer, BATCH, 0.05):
                value = message.value()
                if message.error() is None and value and value.startswith(b"RunSucceeded|"):
                    _, run_id = parse(value)
                    with self._cond:
                        self.finished[run_id] = time.time()
                        self._cond.notify_all()

    def wait(self, run_ids: list[bytes], timeout_s: float) -> list[float]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not all(r in self.finished for r in run_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sum(r not in self.finished for r in run_ids)
                    raise TimeoutError(
                        f"Expected {len(run_ids)} floor runs to finish within {timeout_s:.0f} s, "
                        f"but {missing} did not"
                    )
                self._cond.wait(left)
            return [self.finished[r] for r in run_ids]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _create_topics(settings: Settings, prefix: str) -> None:
    admin = admin_client(settings)
    partitions = settings.default_partitions
    futures = admin.create_topics([NewTopic(topic(prefix, name), partitions, 1) for name in TOPICS])
    for future in futures.values():
        future.result(30)


def _start(producer: Producer, prefix: str, n: int) -> tuple[list[bytes], float]:
    run_ids = [uuid.uuid4().hex.encode() for _ in range(n)]
    began = time.time()
    raw = producer._producer
    for run_id in run_ids:
        raw.produce(topic(prefix, "commands"), record(b"start", run_id), run_id)
    producer.flush()
    return run_ids, began


def measure_floor(settings: Settings, plan: FloorPlan, discipline: str) -> dict[str, float]:
    """Starts the three roles on a topic prefix of their own, measures, removes everything.

    Keys are ``floor_*`` for the engine's discipline, ``floor_<discipline>_*`` for another."""
    # Imported here: the role processes import this module and need none of the engine's.
    from benchmarks.engine_bench import service_pids

    key = "floor" if discipline == "per_batch" else f"floor_{discipline}"
    prefix = f"bench-floor-{uuid.uuid4().hex[:8]}"
    scoped = settings.model_copy(update={"topic_prefix": prefix})
    _create_topics(scoped, prefix)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    watcher: Watcher | None = None
    try:
        for role in ROLES:
            procs[role] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.floor_bench",
                    "--role",
                    role,
                    "--prefix",
                    prefix,
                    "--discipline",
                    discipline,
                ],
                cwd=PROJECT_ROOT,
                stdin=subprocess.PIPE,
            )
        watcher = Watcher(settings, prefix)
        producer = Producer(settings, client_id=f"{prefix}-driver", config={"linger.ms": 0})

        def runs(n: int) -> tuple[list[bytes], float, list[float]]:
            for role, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"Expected the floor's {role} to run, but it exited")
            assert watcher is not None
            run_ids, began = _start(producer, prefix, n)
            return run_ids, began, watcher.wait(run_ids, plan.timeout_s)

        # The first run waits for every consumer group to join: bounded like any phase.
        runs(1)
        for _ in range(plan.warmup_runs):
            runs(1)
        step_ms = []
        for _ in range(plan.sequential_runs):
            _, began, ends = runs(1)
            step_ms.append((ends[0] - began) * 1000 / STEPS)
        pids: dict[str, int | None] = {
            **service_pids(settings),
            **{f"floor {role}": proc.pid for role, proc in procs.items()},
        }
        before = cpu_snapshot(pids)
        rates = []
        wall = 0.0
        for _ in range(plan.rounds):
            run_ids, began, ends = runs(plan.concurrent_runs)
            rates.append(len(run_ids) * STEPS / (max(ends) - began))
            wall += max(ends) - began
        cpu = cpu_delta(before, cpu_snapshot(pids))
        steps = plan.rounds * plan.concurrent_runs * STEPS
        step_ms.sort()
        metrics = {
            f"{key}_step_overhead_p50_ms": statistics.median(step_ms),
            f"{key}_step_overhead_p99_ms": step_ms[min(len(step_ms) - 1, int(len(step_ms) * 0.99))],
            f"{key}_steps_per_s": statistics.median(rates),
        }
        # Each role and service (children included), and this process (driver and watcher).
        metrics |= cpu_ms_per_step(cpu, steps, key, this_process="driver")
        total_ms = metrics[f"{key}_cpu_ms_per_step"]
        # Cores busy during the rounds: well under 2 means the floor is bound by the cycle time
        # of a step (Little's law: runs in flight / cycle), not by CPU.
        metrics[f"{key}_cores_busy"] = total_ms * steps / 1000 / wall
        return metrics
    finally:
        if watcher is not None:
            watcher.close()
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        delete_prefix_topics(scoped)


def run_floor_benchmark(settings: Settings, quick: bool = False) -> dict[str, float]:
    """Both disciplines, one after the other: the engine's floor and LittleHorse's."""
    plan = QUICK if quick else FULL
    metrics: dict[str, float] = {}
    for discipline in DISCIPLINES:
        print(f"[floor {time.strftime('%H:%M:%S')}] discipline {discipline}", flush=True)
        metrics |= measure_floor(settings, plan, discipline)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--discipline", choices=sorted(DISCIPLINES), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.role:
        return _serve_role(args.role, args.prefix, args.discipline)
    metrics = run_floor_benchmark(get_settings(), args.quick)
    for name, value in metrics.items():
        print(f"{name:<44} {value:10.3f}")
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
