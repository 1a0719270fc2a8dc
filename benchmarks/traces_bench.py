"""Traces store benchmark: ``python -m benchmarks.traces_bench [--n N]``.

Measures the ingestion path of docs/traces.md with no Python in it: JSON traces on the local
Kafka -> ClickHouse Kafka engine -> materialized views -> ``traces`` MergeTree (+ rollups).
Runs on its own topic prefix (``bench-<uuid8>``), its own database and, for embedded chdb, its
own data folder under ``var/bench``; all removed afterwards.

- ``trace_ingest_per_s``: N traces are produced first (a backlog), then the migrations create
  the Kafka table and views, which start consuming; N / (seconds until ``count() == N``). This
  is sustained Kafka -> MergeTree throughput, consumer start-up included.
  ``trace_ingest_steady_per_s`` excludes start-up: rows written after the first block / (last -
  first block's ``received_at``); ``None`` when one block held everything.
- ``trace_freshness_p50_ms`` / ``_p99_ms``: marker traces sent one every ~50 ms (jittered, so
  they do not phase-lock with the flush cycle); time from just before ``send`` until a poller
  (every 10 ms, so +0-10 ms resolution) sees the row in ``traces``. ``_under_load`` repeats this
  while a background producer sends ``load_per_s`` traces per second.
  ``trace_ingest_lag_p50_ms`` is ClickHouse's own view of the same: received_at - Kafka
  CreateTime of the markers, with no polling in it.
- ``trace_ingest_cpu_us_per_trace``: CPU time of this process (the embedded ClickHouse consuming,
  plus this module's 50 ms ``count()`` polls) while the backlog drains, per trace. On a shared
  machine the wall-clock rates above move with the other processes' load; this moves much less,
  so it is the number to compare two ingest designs by (ADR 0067). ``None`` with a ClickHouse
  server (its CPU is not in this process).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from foundation.settings import PROJECT_ROOT, Settings, get_settings
from projections.clickhouse import ClickHouse, connect
from projections.traces.migrations import IngestTuning, apply, drop
from schemas.models import ErrorInfo, Trace, TraceStatus
from schemas.trace_json import encode_trace
from streams.admin import admin_client, ensure_topics
from streams.producer import Producer
from streams.topics import TopicCatalog

OUT_FILE = PROJECT_ROOT / "benchmarks" / "out" / "traces.json"
MARKER_NODE = "bench.marker"
_NODES = ("http.request", "llm.chat", "code.run", "transform", "email.send")


def _trace(i: int, node: str | None = None) -> Trace:
    start = datetime.now(UTC) - timedelta(milliseconds=20 + i % 500)
    failed = i % 20 == 0
    return Trace(
        run_id=f"run-{i // 10}",
        seq=i % 10,
        workflow_id=f"wf-{i % 4}",
        workflow_version=1,
        step_id=f"step-{i % 10}",
        node=node or _NODES[i % len(_NODES)],
        node_version="1.0.0",
        invocation_id=f"inv-{i}",
        status=TraceStatus.ERROR if failed else TraceStatus.OK,
        start=start,
        end=start + timedelta(milliseconds=20 + i % 500),
        latency_ms=20 + i % 500,
        inputs_hash=f"{i:064x}",
        metrics={"bytes": float(i % 4096), "rows": float(i % 100)},
        error=ErrorInfo(error_class="HttpTimeout", message="timed out", retryable=True)
        if failed
        else None,
        retry_count=i % 3,
        cache_hit=i % 5 == 0,
        cost_tokens=i % 1000 if i % 2 else None,
        context={"tenant": f"t{i % 3}"},
    )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count(ch: ClickHouse, database: str) -> int:
    return int(ch.query(f"SELECT count() AS n FROM {database}.traces")[0]["n"])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _measure_freshness(
    ch: ClickHouse,
    settings: Settings,
    topic: str,
    database: str,
    samples: int,
    timeout_s: float = 60.0,
) -> tuple[list[float], list[float]]:
    """(freshness ms per marker as polled, ClickHouse-side lag ms per marker)."""
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            rows = ch.query(
                f"SELECT event_id FROM {database}.traces WHERE node = %(node)s",
                {"node": MARKER_NODE},
            )
            now = time.time()
            for row in rows:
                seen.setdefault(row["event_id"], now)
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rng = random.Random(7)
    # linger.ms=0: a marker waits for no batch, as a trace sent at the end of an attempt would
    # with a low-latency producer; the default 5 ms linger would add up to 5 ms.
    with Producer(settings, config={"linger.ms": 0}, client_id="bench-markers") as producer:
        for i in range(samples):
            trace = _trace(i, node=MARKER_NODE)
            payload = encode_trace(trace)
            sent[trace.event_id] = time.time()
            producer.send(topic, MARKER_NODE, payload)
            producer.poll(0)
            time.sleep(0.025 + rng.random() * 0.05)
        producer.flush()
    deadline = time.monotonic() + timeout_s
    while len(seen.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    poller.join()
    missing = len(sent.keys() - seen.keys())
    if missing:
        raise RuntimeError(f"Expected every marker to arrive, but {missing} did not in time")
    ids = list(sent)
    lag_rows = ch.query(
        "SELECT event_id, dateDiff('millisecond', produced_at, received_at) AS lag "
        f"FROM {database}.traces WHERE node = %(node)s AND event_id IN %(ids)s",
        {"node": MARKER_NODE, "ids": ids},
    )
    freshness = [(seen[i] - sent[i]) * 1000 for i in ids]
    # Remove the markers so the next measurement polls only its own.
    ch.command(
        f"ALTER TABLE {database}.traces DELETE WHERE node = %(node)s SETTINGS mutations_sync = 1",
        {"node": MARKER_NODE},
    )
    return freshness, [float(r["lag"]) for r in lag_rows]


def _background_load(
    settings: Settings, topic: str, per_s: int, stop: threading.Event, counter: list[int]
) -> None:
    payloads = [encode_trace(_trace(i)) for i in range(2000)]
    with Producer(settings, client_id="bench-load") as producer:
        i = 0
        began = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - began) * per_s)
            while i < due:
                producer.send(topic, _NODES[i % len(_NODES)], payloads[i % len(payloads)])
                i += 1
            time.sleep(0.005)
    counter.append(i)


def run_traces_benchmark(
    settings: Settings,
    n: int = 200_000,
    *,
    freshness_samples: int = 200,
    load_per_s: int = 5_000,
    tuning: IngestTuning | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    database = f"bench_{tag}"
    updates: dict[str, Any] = {"topic_prefix": f"bench-{tag}"}
    folder: Path | None = None
    if settings.resolved_clickhouse_dsn().startswith("chdb://"):
        folder = settings.data_dir / "bench" / f"chdb-{tag}"
        updates["clickhouse_dsn"] = f"chdb://{folder}"
    settings = settings.model_copy(update=updates)
    tuning = tuning or IngestTuning()
    catalog = TopicCatalog.from_settings(settings)
    topic = catalog.traces.topic
    admin = admin_client(settings)

    def say(message: str) -> None:
        if progress:
            print(f"[traces_bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    ensure_topics(catalog, [catalog.traces], admin=admin)
    ch = connect(settings)
    try:
        say(f"encoding {n} traces")
        payloads = [(t.node, encode_trace(t)) for t in (_trace(i) for i in range(n))]
        mean_bytes = statistics.fmean(len(p) for _, p in payloads)
        say(f"producing {n} traces ({mean_bytes:.0f} bytes each) to {topic}")
        began = time.monotonic()
        with Producer(settings, client_id="bench-traces") as producer:
            for key, payload in payloads:
                producer.send(topic, key, payload)
        produce_s = time.monotonic() - began
        del payloads

        say("creating the store; the Kafka engine starts consuming the backlog")
        began = time.monotonic()
        cpu_began = _cpu_s()
        apply(ch, settings, database=database, tuning=tuning)
        deadline = began + max(120.0, n / 1000)
        count = 0
        while count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Expected {n} rows, but only {count} arrived in time")
            time.sleep(0.05)
            count = _count(ch, database)
        ingest_s = time.monotonic() - began
        ingest_cpu_s = _cpu_s() - cpu_began
        if count != n:
            raise RuntimeError(f"Expected {n} rows, but got {count}")
        span = ch.query(
            "SELECT dateDiff('millisecond', min(received_at), max(received_at)) AS ms, "
            f"countIf(received_at > (SELECT min(received_at) FROM {database}.traces)) "
            f"AS after_first, uniqExact(received_at) AS blocks FROM {database}.traces"
        )[0]
        # Rows written after the first block, over the time from the first block to the last:
        # the drain rate once the consumer runs (undefined when one block held everything).
        steady = (
            round(int(span["after_first"]) / (int(span["ms"]) / 1000))
            if int(span["ms"]) > 0
            else None
        )
        say(f"ingested {n} in {ingest_s:.2f}s")

        say(f"freshness: {freshness_samples} markers, idle")
        idle, idle_lag = _measure_freshness(ch, settings, topic, database, freshness_samples)
        say(f"freshness: {freshness_samples} markers under {load_per_s}/s background load")
        stop = threading.Event()
        sent_load: list[int] = []
        loader = threading.Thread(
            target=_background_load, args=(settings, topic, load_per_s, stop, sent_load)
        )
        loader.start()
        try:
            time.sleep(1.0)
            loaded, _ = _measure_freshness(ch, settings, topic, database, freshness_samples)
        finally:
            stop.set()
            loader.join()
        version = ch.query("SELECT version() AS v")[0]["v"]
        return {
            "trace_ingest_per_s": round(n / ingest_s),
            "trace_ingest_steady_per_s": steady,
            "trace_freshness_p50_ms": round(_percentile(idle, 0.5), 1),
            "trace_freshness_p99_ms": round(_percentile(idle, 0.99), 1),
            "trace_freshness_under_load_p50_ms": round(_percentile(loaded, 0.5), 1),
            "trace_freshness_under_load_p99_ms": round(_percentile(loaded, 0.99), 1),
            "trace_ingest_lag_p50_ms": round(_percentile(idle_lag, 0.5), 1),
            "trace_ingest_lag_p99_ms": round(_percentile(idle_lag, 0.99), 1),
            "trace_ingest_cpu_us_per_trace": round(ingest_cpu_s / n * 1e6, 1)
            if ch.mode == "embedded"
            else None,
            "trace_bench": {
                "n": n,
                "ingest_s": round(ingest_s, 2),
                "blocks": int(span["blocks"]),
                "produce_per_s": round(n / produce_s),
                "message_bytes_mean": round(mean_bytes),
                "partitions": catalog.traces.partitions,
                "freshness_samples": freshness_samples,
                "load_per_s": load_per_s,
                "tuning": {
                    "flush_interval_ms": tuning.flush_interval_ms,
                    "poll_timeout_ms": tuning.poll_timeout_ms,
                    "num_consumers": tuning.num_consumers,
                },
                "clickhouse": f"{ch.mode} {version}",
            },
        }
    finally:
        try:
            drop(ch, database)
        finally:
            ch.close()
            for future in admin.delete_topics([topic], operation_timeout=10).values():
                future.result(timeout=15)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.traces_bench", description=__doc__)
    parser.add_argument("--n", type=int, default=200_000, help="traces in the backlog")
    parser.add_argument("--samples", type=int, default=200, help="freshness markers per phase")
    parser.add_argument("--load", type=int, default=5_000, help="background traces/s")
    parser.add_argument("--flush-interval-ms", type=int, default=IngestTuning().flush_interval_ms)
    parser.add_argument("--poll-timeout-ms", type=int, default=IngestTuning().poll_timeout_ms)
    parser.add_argument("--consumers", type=int, default=IngestTuning().num_consumers)
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    args = parser.parse_args(argv)
    tuning = IngestTuning(
        flush_interval_ms=args.flush_interval_ms,
        poll_timeout_ms=args.poll_timeout_ms,
        num_consumers=args.consumers,
    )
    result = run_traces_benchmark(
        get_settings(),
        args.n,
        freshness_samples=args.samples,
        load_per_s=args.load,
        tuning=tuning,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
