"""REFLUX's run-engine benchmark: the whole engine on real Kafka, Postgres, Redis.

``run_engine_benchmark(settings, quick)`` starts every engine component (scheduler, trigger
router, workers, projector) on a topic prefix and Postgres schema of its own -- each in its own
process, as users deploy them (:mod:`benchmarks.topology`; ``REFLUX_BENCH_TOPOLOGY=dev`` runs
them as threads of this process instead, like ``reflux dev``) -- and measures, with the same
workflow shape as the Temporal peer (10 sequential no-op steps; ``transform`` with a constant
expression):

- start latency: ``StartRun`` acknowledged by Kafka (produced and flushed with the API's own
  producer settings: this is the moment ``POST /v1/runs`` answers 202) -> the run's first
  ``NodeInvocation`` visible on its invoke topic. Also through the real FastAPI app (in-process
  ``TestClient``): 202 received -> first invocation visible.
- step overhead: runs one at a time; (RunStarted -> RunSucceeded event time - the nodes' own
  execution time) / 10. Also end to end as the peer measures it: (StartRun sent -> RunSucceeded
  visible) / 10.
- cache hit: a 1-step workflow whose step is cache-enabled and warm: StepScheduled ->
  StepSucceeded(cache_hit) event time; also StartRun acked -> RunSucceeded visible.
- steps/s: N runs of the 10-step workflow started at once; succeeded steps / (first StartRun
  sent -> last RunSucceeded visible); median over rounds.

Two paths (docs/decisions/0064-inline-pure-steps.md): the workflow above keeps every step on a
worker (``inline: false``: the remote path, what ``steps_per_s`` and ``step_overhead_*`` always
measured); the same chain without that flag is evaluated by the scheduler itself (the inline
path): ``steps_per_s_inline`` and ``step_overhead_inline_*`` (end to end, per step, with p95),
next to ``steps_per_s_remote`` and ``step_overhead_remote_*`` (the same definitions on the
remote path). ``inline_step_share`` checks that the inline runs did run inline.

Timings come from a watcher thread that consumes ``runs``, ``results`` and the invoke topic
directly (read_committed), never from the projection. It only files raw bytes while the engine
runs and decodes after each phase, so it takes as little CPU from the engine as possible.
Where a goal is missed, one more throughput round runs under py-spy (if installed) and
``benchmarks/out/profile.txt`` gets the hop-by-hop breakdown of a step, CPU per engine process,
thread of this process and service, and the hottest stacks of every engine process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks import engine_metrics as em
from benchmarks.cleanup import delete_prefix_topics
from benchmarks.engine_metrics import RunTrace, Seen
from benchmarks.profiling import (
    PySpy,
    cpu_delta,
    cpu_ms_per_step,
    cpu_snapshot,
    find_py_spy,
    format_cpu,
    format_stacks,
    parse_py_spy_raw,
)
from benchmarks.registration import publish_version_one
from benchmarks.report import evaluate_goals
from benchmarks.topology import Topology, build_engine
from foundation.settings import PROJECT_ROOT, Settings
from schemas import decode
from schemas.models import CommandRejected, RunSucceeded, StartRun
from schemas.run_log import TERMINAL_RUN_EVENT_TYPES
from streams.consumer import consume_available
from streams.producer import TYPE_HEADER, Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog

__all__ = ["FULL", "QUICK", "EnginePlan", "run_engine_benchmark"]

log = logging.getLogger(__name__)

OUT_DIR = PROJECT_ROOT / "benchmarks" / "out"
STEPS = 10
SEQ_WORKFLOW = "bench-seq10"
"""The remote path: every step dispatched to a worker (``inline: false``)."""
INLINE_WORKFLOW = "bench-seq10-inline"
"""The same chain, evaluated inline by the scheduler (no invocation, worker or result)."""
CACHE_WORKFLOW = "bench-cache1"
# The node and topic the no-op steps use: transform@1 with a constant JMESPath expression.
NOOP_NODE = ("transform", 1)
# A run of the benchmark ends with a terminal run event, or with the rejection of its StartRun.
_ENDINGS = (*TERMINAL_RUN_EVENT_TYPES, CommandRejected)
_TERMINAL = {cls.AVRO_NAME.encode() for cls in _ENDINGS}


# Scheduler instances in the engine under test (env REFLUX_BENCH_SCHEDULERS for experiments).
SCHEDULERS = int(os.environ.get("REFLUX_BENCH_SCHEDULERS", "1"))
# How the engine runs: one process per component (what users deploy; the default) or every
# component in this process (`reflux dev`). See benchmarks/topology.py.
TOPOLOGY: Topology = "dev" if os.environ.get("REFLUX_BENCH_TOPOLOGY") == "dev" else "processes"


@dataclass(frozen=True)
class EnginePlan:
    warmup_runs: int
    sequential_runs: int
    """One at a time: start latency and step overhead are taken from these."""
    http_runs: int
    cache_runs: int
    concurrent_runs: int
    throughput_rounds: int
    run_timeout_s: float
    phase_timeout_s: float


QUICK = EnginePlan(3, 30, 10, 30, 30, 1, 60, 180)
FULL = EnginePlan(5, 100, 30, 100, 100, 3, 60, 300)


def noop(step_id: str, needs: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    # Pinned: the benchmark's workers register no catalog entries, and only an exact version
    # can be evaluated inline (ADR 0064). The remote workflows say `inline: false`.
    return {
        "id": step_id,
        "node": "transform@1.0.0",
        "params": {"expression": "`1`"},
        "needs": list(needs),
        **extra,
    }


def sequential_workflow(
    steps: int = STEPS, *, workflow_id: str = SEQ_WORKFLOW, inline: bool = False
) -> dict[str, Any]:
    """The chain of no-op steps: on workers (the remote path), or evaluated by the scheduler
    itself (``inline=True``: the inline path, docs/decisions/0064-inline-pure-steps.md)."""
    extra = {} if inline else {"inline": False}
    chain = [noop(f"s{i}", [f"s{i - 1}"] if i else [], **extra) for i in range(steps)]
    return {"id": workflow_id, "steps": chain}


def cached_workflow() -> dict[str, Any]:
    # An inline step never consults the cache: the cache path is measured on a remote step.
    step = noop("c", cache={"enabled": True, "ttl": "1h"}, inline=False)
    return {"id": CACHE_WORKFLOW, "steps": [step]}


# -- the watcher ----------------------------------------------------------------------------------


class Watcher:
    """Reads ``runs``, ``results`` and the no-op invoke topic from the start (read_committed).

    While the engine runs it only files ``(received, topic, key, value, CreateTime)`` per run and
    notes terminal events by their type header; :meth:`traces` decodes afterwards.
    """

    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        self.topics = {
            catalog.runs.topic: "runs",
            catalog.results.topic: "results",
            catalog.invoke_topic(*NOOP_NODE).topic: "invoke",
        }
        self._consumer = Consumer(
            {
                **kafka_client_config(settings),
                "group.id": f"{settings.topic_prefix}.bench-watcher",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        assignment = []
        for topic in self.topics:
            metadata = self._consumer.list_topics(topic, timeout=10)
            for p in sorted(metadata.topics[topic].partitions):
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        self._consumer.assign(assignment)
        self._raw: dict[str, list[tuple[float, str, bytes, int | None]]] = {}
        self.terminal: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-watcher", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                messages = consume_available(self._consumer, 1000, 0.05)
                if not messages:
                    continue
                now = time.time()
                ended: list[str] = []
                for m in messages:
                    if m.error() is not None or m.value() is None:
                        continue
                    run_id = (m.key() or b"").decode()
                    kind = self.topics[m.topic() or ""]
                    ts_type, ts = m.timestamp()
                    value = m.value()
                    assert value is not None
                    self._raw.setdefault(run_id, []).append(
                        (now, kind, value, ts if ts_type else None)
                    )
                    if kind == "runs" and _type_of(m.headers()) in _TERMINAL:
                        ended.append(run_id)
                if ended:
                    with self._cond:
                        for run_id in ended:
                            self.terminal.setdefault(run_id, now)
                        self._cond.notify_all()
        except BaseException as exc:
            self.error = exc
            log.exception("benchmark watcher failed")
            with self._cond:
                self._cond.notify_all()

    def wait(
        self,
        run_ids: Iterable[str],
        timeout: float,
        health: Callable[[], None] = lambda: None,
    ) -> None:
        """Until every run ended (or was rejected); raises ``TimeoutError`` naming the rest."""
        wanted = set(run_ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not wanted <= self.terminal.keys():
                if self.error is not None:
                    raise RuntimeError(f"Expected a running watcher, but: {self.error!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(wanted - self.terminal.keys())
                    raise TimeoutError(
                        f"Expected {len(wanted)} runs to end within {timeout:.0f}s, but "
                        f"{len(missing)} did not (e.g. {missing[:3]})"
                    )
                self._cond.wait(min(left, 0.5))
                health()

    def traces(self, starts: Iterable[tuple[str, float, float]]) -> list[RunTrace]:
        """Decoded observations of the given ``(run_id, sent, acked)``; raises if a run did not
        succeed, with the reason."""
        traces = []
        for run_id, sent, acked in starts:
            trace = RunTrace(run_id, sent, acked)
            for received, kind, value, ts in self._raw.get(run_id, []):
                trace.seen.append(Seen(received, kind, decode(value), ts))
            ended = [s.record for s in trace.seen if isinstance(s.record, _ENDINGS)]
            if not ended or not isinstance(ended[0], RunSucceeded):
                raise RuntimeError(
                    f"Expected benchmark run {run_id} to succeed, but it ended with {ended[:1]}"
                )
            traces.append(trace)
        return traces

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def _type_of(headers: Any) -> bytes | None:
    for name, value in headers or []:
        if name == TYPE_HEADER:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


# -- the driver -----------------------------------------------------------------------------------


class EngineBench:
    def __init__(self, settings: Settings, plan: EnginePlan, schema: str) -> None:
        self.settings = settings
        self.plan = plan
        self.schema = schema
        self.engine = build_engine(TOPOLOGY, settings, schema=schema, schedulers=SCHEDULERS)
        self.catalog = self.engine.catalog
        self.watcher = Watcher(settings, self.catalog).start()
        # The API's own producer settings (linger.ms=0, flush per command): an ack here is the
        # moment POST /v1/runs would answer 202.
        from api.publisher import api_producer

        self.producer: Producer = api_producer(settings, 5.0)

    def health(self) -> None:
        errors = self.engine.errors()
        if errors:
            raise RuntimeError(f"Expected a healthy engine, but components failed: {errors}")

    def register(self, definition: dict[str, Any]) -> None:
        publish_version_one(self.producer, self.catalog, definition)
        self.producer.flush(10)

    def _command(self, workflow_id: str) -> StartRun:
        return StartRun(run_id=str(uuid.uuid4()), workflow_id=workflow_id, inputs={})

    def start_one(self, workflow_id: str) -> tuple[str, float, float]:
        command = self._command(workflow_id)
        sent = time.time()
        self.producer.send(self.catalog.commands, command.run_id, command)
        self.producer.flush(10)
        return command.run_id, sent, time.time()

    def sequential(self, workflow_id: str, runs: int) -> list[RunTrace]:
        starts = []
        deadline = time.monotonic() + self.plan.phase_timeout_s
        for _ in range(runs):
            start = self.start_one(workflow_id)
            self.watcher.wait([start[0]], self.plan.run_timeout_s, self.health)
            starts.append(start)
            if time.monotonic() > deadline:
                raise TimeoutError(f"Expected {runs} runs within {self.plan.phase_timeout_s}s")
        return self.watcher.traces(starts)

    def concurrent(self, workflow_id: str, runs: int) -> tuple[list[RunTrace], float]:
        commands = [self._command(workflow_id) for _ in range(runs)]
        began = time.time()
        for command in commands:
            self.producer.send(self.catalog.commands, command.run_id, command)
        self.producer.flush(10)
        acked = time.time()
        self.watcher.wait([c.run_id for c in commands], self.plan.phase_timeout_s, self.health)
        return self.watcher.traces((c.run_id, began, acked) for c in commands), began

    def via_http(self, runs: int) -> tuple[list[float], list[float]]:
        """(202 received -> first invocation visible, request duration) in ms, per run."""
        from fastapi.testclient import TestClient

        from api.app import create_app
        from api.auth.bootstrap import bearer_headers
        from api.config import ApiSettings

        # No ClickHouse: the benchmark measures the run engine, not trace ingestion.
        api = ApiSettings(
            read_schema=self.schema, api_schema=f"{self.schema}_api", clickhouse_enabled=False
        )
        start_ms: list[float] = []
        request_ms: list[float] = []
        headers = bearer_headers(self.settings, api, name="bench", created_by="benchmark")
        with TestClient(create_app(self.settings, api), headers=headers) as client:
            body = {"workflow_id": SEQ_WORKFLOW, "inputs": {}}
            # The projection may not have the workflow yet (404 until it does).
            deadline = time.monotonic() + 30
            while client.post("/v1/runs", json=body).status_code != 202:
                if time.monotonic() > deadline:
                    raise TimeoutError("Expected the API to accept runs within 30 s")
                time.sleep(0.2)
            for _ in range(runs):
                requested = time.time()
                response = client.post("/v1/runs", json=body)
                answered = time.time()
                if response.status_code != 202:
                    raise RuntimeError(
                        f"Expected 202 from POST /v1/runs, but got {response.status_code}: "
                        f"{response.text[:300]}"
                    )
                run_id = response.json()["run_id"]
                self.watcher.wait([run_id], self.plan.run_timeout_s, self.health)
                (trace,) = self.watcher.traces([(run_id, requested, answered)])
                start_ms.append(em.start_latency_ms(trace))
                request_ms.append((answered - requested) * 1000)
        return start_ms, request_ms

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.producer.close(10)
        self.watcher.close()
        self.engine.stop()


def _cleanup(settings: Settings, schema: str) -> None:
    """Drops what the benchmark created: its topics, schemas and cache entries."""
    prefix = settings.topic_prefix
    delete_prefix_topics(settings, timeout=30)
    with (
        contextlib.suppress(Exception),
        psycopg.connect(settings.postgres_dsn, autocommit=True) as conn,
    ):
        for name in (schema, f"{schema}_api"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def service_pids(settings: Settings) -> dict[str, int | None]:
    """The local services' pids (Kafka, Postgres, both Redis, S3): what a CPU profile counts."""
    from infra.services.kafka import Kafka
    from infra.services.postgres import Postgres
    from infra.services.redis import LedgerRedis, Redis
    from infra.services.s3 import S3

    services = (Kafka, Postgres, Redis, LedgerRedis, S3)
    return {cls.name: cls(settings).read_pid() for cls in services}


def _progress(message: str) -> None:
    print(f"[engine {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_engine_benchmark(
    settings: Settings,
    quick: bool = False,
    *,
    profile: bool | None = None,
    out_dir: Path = OUT_DIR,
) -> dict[str, float]:
    """Runs the engine benchmark on an isolated prefix/schema; returns flat metrics.

    ``profile``: None = only when a goal is missed; writes ``profile.txt`` and
    ``engine_details.json`` (hop breakdowns, CPU) into ``out_dir``.
    """
    plan = QUICK if quick else FULL
    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={"topic_prefix": f"bench-{tag}"})
    schema = f"bench_{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    _progress(f"prefix {settings.topic_prefix}, schema {schema}, plan {asdict(plan)}")
    bench: EngineBench | None = None
    try:
        bench = EngineBench(settings, plan, schema)
        bench.engine.start()
        return _measure(bench, plan, settings, profile, out_dir)
    finally:
        if bench is not None:
            bench.close()
        _cleanup(settings, schema)


def _measure(
    bench: EngineBench,
    plan: EnginePlan,
    settings: Settings,
    profile: bool | None,
    out_dir: Path,
) -> dict[str, float]:
    bench.register(sequential_workflow())
    bench.register(sequential_workflow(workflow_id=INLINE_WORKFLOW, inline=True))
    bench.register(cached_workflow())
    _progress(f"warm-up: {plan.warmup_runs} runs (consumer groups join)")
    bench.sequential(SEQ_WORKFLOW, plan.warmup_runs)
    bench.sequential(INLINE_WORKFLOW, plan.warmup_runs)

    _progress(f"sequential: {plan.sequential_runs} runs of {STEPS} steps, one at a time")
    seq = bench.sequential(SEQ_WORKFLOW, plan.sequential_runs)
    results: dict[str, float] = {}
    starts = [em.start_latency_ms(r) for r in seq]
    results |= em.latency_keys("start_latency", starts)
    results |= em.latency_keys("step_overhead", [em.step_overhead_ms(r, STEPS) for r in seq])
    results |= em.latency_keys("start_to_first_step", [em.start_to_first_step_ms(r) for r in seq])
    remote_e2e = [em.end_to_end_step_ms(r, STEPS) for r in seq]
    results |= em.latency_keys("step_overhead_e2e", remote_e2e)
    results |= em.latency_keys("step_overhead_remote", remote_e2e, p95=True)
    _progress(
        f"start p50 {results['start_latency_p50_ms']:.1f} ms, step overhead p50 "
        f"{results['step_overhead_p50_ms']:.1f} ms "
        f"(end to end {results['step_overhead_e2e_p50_ms']:.1f} ms)"
    )

    _progress(f"inline: {plan.sequential_runs} runs of {STEPS} inline steps, one at a time")
    inline_seq = bench.sequential(INLINE_WORKFLOW, plan.sequential_runs)
    results["inline_step_share"] = em.inline_step_share(inline_seq)
    inline_e2e = [em.end_to_end_step_ms(r, STEPS) for r in inline_seq]
    results |= em.latency_keys("step_overhead_inline", inline_e2e, p95=True)
    _progress(
        f"inline step overhead p50 {results['step_overhead_inline_p50_ms']:.2f} ms end to end "
        f"(share of steps inline: {results['inline_step_share']:.2f})"
    )

    _progress(f"through the API (FastAPI TestClient): {plan.http_runs} runs")
    http_start, http_request = bench.via_http(plan.http_runs)
    results |= em.latency_keys("start_latency_http", http_start)
    results |= em.latency_keys("api_start_request", http_request)

    _progress(f"cache: 1 cold + {plan.cache_runs} warm runs of a 1-step cached workflow")
    bench.sequential(CACHE_WORKFLOW, 1)
    time.sleep(0.1)  # the scheduler writes the cache right after its commit
    cached = bench.sequential(CACHE_WORKFLOW, plan.cache_runs)
    hits = [em.cache_hit_ms(r) for r in cached]
    results |= em.latency_keys("cache_hit", hits)
    results |= em.latency_keys(
        "cache_hit_run", [(r.first(RunSucceeded).received - r.acked) * 1000 for r in cached]
    )

    pids: dict[str, int | None] = {**service_pids(settings), **bench.engine.pids()}
    rates: list[float] = []
    loaded: list[RunTrace] = []
    before = cpu_snapshot(pids)
    wall = 0.0
    for i in range(plan.throughput_rounds):
        _progress(f"throughput round {i + 1}/{plan.throughput_rounds}: {plan.concurrent_runs} runs")
        began_mono = time.monotonic()
        runs, began = bench.concurrent(SEQ_WORKFLOW, plan.concurrent_runs)
        wall += time.monotonic() - began_mono
        rates.append(em.steps_per_s(runs, began))
        loaded.extend(runs)
        _progress(f"  {rates[-1]:.0f} steps/s")
    cpu = cpu_delta(before, cpu_snapshot(pids))
    steps_run = plan.throughput_rounds * plan.concurrent_runs * STEPS
    results |= cpu_ms_per_step(cpu, steps_run, "remote", this_process="bench")
    # The headline keeps its meaning: the remote path (every step on a worker).
    results["steps_per_s"] = results["steps_per_s_remote"] = statistics.median(rates)
    results["concurrent_runs"] = float(plan.concurrent_runs)

    inline_rates: list[float] = []
    before_inline = cpu_snapshot(pids)
    wall_inline = 0.0
    for i in range(plan.throughput_rounds):
        _progress(
            f"inline throughput round {i + 1}/{plan.throughput_rounds}: {plan.concurrent_runs} runs"
        )
        began_mono = time.monotonic()
        runs, began = bench.concurrent(INLINE_WORKFLOW, plan.concurrent_runs)
        wall_inline += time.monotonic() - began_mono
        inline_rates.append(em.steps_per_s(runs, began))
        _progress(f"  {inline_rates[-1]:.0f} steps/s (inline)")
    cpu_inline = cpu_delta(before_inline, cpu_snapshot(pids))
    results["steps_per_s_inline"] = statistics.median(inline_rates)
    results |= cpu_ms_per_step(cpu_inline, steps_run, "inline", this_process="bench")

    details: dict[str, Any] = {
        "plan": asdict(plan),
        "hops_sequential": em.summarize_hops(em.hop_samples(seq)),
        "hops_loaded": em.summarize_hops(em.hop_samples(loaded)),
        "throughput_rounds_steps_per_s": rates,
        "throughput_rounds_steps_per_s_inline": inline_rates,
        # The tail in detail: (position in the sequential phase, ms) of the slowest starts.
        "slowest_starts_ms": sorted(enumerate(starts), key=lambda s: -s[1])[:5],
        "cpu_throughput": {"wall_s": wall, "threads": cpu.threads, "services": cpu.services},
        "cpu_throughput_inline": {
            "wall_s": wall_inline,
            "threads": cpu_inline.threads,
            "services": cpu_inline.services,
        },
    }
    missed = [g.key for g, _, met in evaluate_goals(results) if met is False]
    if profile or (profile is None and missed):
        _progress(f"goals missed ({', '.join(missed) or 'none'}): profiling one more round")
        details["profile"] = _profile_round(
            bench, plan, seq, loaded, (cpu, wall), (cpu_inline, wall_inline), out_dir
        )
    (out_dir / "engine_details.json").write_text(json.dumps(details, indent=2) + "\n")
    return results


def _profile_round(
    bench: EngineBench,
    plan: EnginePlan,
    seq: list[RunTrace],
    loaded: list[RunTrace],
    remote_cpu: tuple[Any, float],
    inline_cpu: tuple[Any, float],
    out_dir: Path,
) -> str:
    steps = plan.concurrent_runs * plan.throughput_rounds * STEPS
    sections = [
        "REFLUX engine benchmark profile (everything co-located; see benchmarks/README.md)",
        "",
        _format_hops("One step, unloaded (sequential runs), by hop", seq),
        "",
        _format_hops(f"One step under load ({plan.concurrent_runs} concurrent runs)", loaded),
        "",
        "Remote path: " + format_cpu(*remote_cpu, _cores(), steps=len(loaded) * STEPS),
        "",
        "Inline path (the same chain, every step evaluated by the scheduler): "
        + format_cpu(*inline_cpu, _cores(), steps=steps),
    ]
    spy = find_py_spy()
    if spy is None:
        sections += ["", "py-spy not installed (pip install py-spy): no stacks sampled."]
    else:
        # This process (the dev topology's engine, the watcher), then each engine process.
        targets = {"benchmark process": None, **bench.engine.pids()}
        recorders = {}
        for name, pid in targets.items():
            raw_path = out_dir / f"profile.pyspy.{name.replace(' ', '-')}.raw"
            raw_path.unlink(missing_ok=True)
            recorders[name] = PySpy(spy, raw_path, pid=pid)
        time.sleep(1.0)  # py-spy attaches
        _, _ = bench.concurrent(SEQ_WORKFLOW, plan.concurrent_runs)
        raws = {name: recorder.stop() for name, recorder in recorders.items()}
        sections += ["", f"Stacks during one more round of {plan.concurrent_runs} concurrent runs:"]
        for name, raw in raws.items():
            sections += ["", f"=== {name}", format_stacks(parse_py_spy_raw(raw))]
    text = "\n".join(sections) + "\n"
    (out_dir / "profile.txt").write_text(text)
    _progress(f"wrote {out_dir / 'profile.txt'}")
    return str(out_dir / "profile.txt")


def _format_hops(title: str, runs: list[RunTrace]) -> str:
    summary = em.summarize_hops(em.hop_samples(runs))
    lines = [title + " (ms; event timestamps have 1 ms resolution, means are finer):"]
    lines.append(f"  {'hop':<16} {'mean':>7} {'p50':>7} {'p99':>7} {'n':>6}  what")
    for name, what in em.HOPS:
        row = summary.get(name)
        if row is None:
            continue
        lines.append(
            f"  {name:<16} {row['mean']:7.2f} {row['p50']:7.2f} {row['p99']:7.2f} "
            f"{int(row['n']):6d}  {what}"
        )
    return "\n".join(lines)


def _cores() -> int:
    return os.cpu_count() or 1
