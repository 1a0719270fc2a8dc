"""The worker runtime against the real broker, the local S3 and a local HTTP server.

Invocations are published to invoke topics of an isolated prefix; a WorkerRuntime serves them;
the tests read NodeResults, Traces and dead letters back from Kafka and committed offsets from
the group coordinator.
"""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition

from foundation.objectstore import S3BlobStore
from foundation.settings import Settings
from node_workers.attempt import inputs_hash
from node_workers.claimcheck import encode_json, load_json, store_json
from node_workers.registry import default_registry
from node_workers.runtime import WorkerConfig, WorkerRuntime, WorkerStats
from schemas.base import RefluxRecord
from schemas.models import (
    DeadLetter,
    NodeHeartbeat,
    NodeInvocation,
    NodeResult,
    StartRun,
    StepRef,
    Trace,
    TraceStatus,
)
from schemas.trace_json import decode_trace
from streams.admin import ensure_topics
from streams.consumer import ConsumedRecord, Consumer
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.integration.http_fixtures import HttpTestServer, http_server
from tests.integration.kafka_fixtures import admin, catalog, drain, kafka_settings, topics
from tests.support.waiting import eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = WorkerConfig(commit_interval_s=0.1, poll_timeout_s=0.05, shutdown_grace_s=5)


@pytest.fixture
def worker_topics(topics: TopicCatalog, kafka_settings: Settings) -> TopicCatalog:
    """The fixed topics plus the invoke topics of every built-in node."""
    runtime = WorkerRuntime(kafka_settings, default_registry(), catalog=topics)
    ensure_topics(topics, runtime.invoke_topics(), settings=kafka_settings)
    return topics


def _invocation(
    node: str, params: Any = None, *, run_id: str | None = None, **extra: Any
) -> NodeInvocation:
    invocation_id = str(uuid.uuid4())
    fields: dict[str, Any] = {
        "run_id": run_id or f"run-{uuid.uuid4().hex[:8]}",
        "seq": 4,
        "invocation_id": invocation_id,
        "attempt": 1,
        "workflow_id": "wf-1",
        "workflow_version": 1,
        "step": StepRef(step_id=f"step-{node}", node=node, node_version="1.0.0"),
        "params": params,
        "idempotency_key": invocation_id,
    }
    fields.update(extra)
    return NodeInvocation(**fields)


def _publish(
    settings: Settings, catalog: TopicCatalog, items: Iterable[NodeInvocation | tuple[str, bytes]]
) -> None:
    """Invocations go to their node's v1 topic; ``(node, raw bytes)`` pairs are sent as is."""
    with Producer(settings) as producer:
        for item in items:
            if isinstance(item, NodeInvocation):
                producer.send(catalog.invoke_topic(item.step.node, 1), item.run_id, item)
            else:
                producer.send(catalog.invoke_topic(item[0], 1), "poison-key", item[1])
        producer.flush(10)


def _serve(
    settings: Settings,
    catalog: TopicCatalog,
    until: Callable[[WorkerStats], bool],
    *,
    config: WorkerConfig = FAST,
    timeout: float = 20,
    graceful: bool = True,
) -> WorkerStats:
    runtime = WorkerRuntime(settings, default_registry(), config=config, catalog=catalog)
    return asyncio.run(runtime.run_until(until, timeout=timeout, graceful=graceful))


def _read(
    settings: Settings,
    catalog: TopicCatalog,
    spec_name: str,
    count: int = 0,
    timeout: float = 15,
    until: Callable[[list[ConsumedRecord]], bool] | None = None,
    *,
    keep: type[RefluxRecord] | None = None,
) -> list[ConsumedRecord]:
    """The records of ``keep``'s type on a topic (default on ``results``: the NodeResults, not
    the start signals and heartbeats that share the topic), until ``count`` or ``until``."""
    group = f"reader-{uuid.uuid4().hex[:8]}"
    # Traces travel as JSON (ADR 0004); everything else is Avro.
    decoder = decode_trace if spec_name == "traces" else None
    wanted = keep or (NodeResult if spec_name == "results" else None)

    def kept(records: list[ConsumedRecord]) -> list[ConsumedRecord]:
        return [r for r in records if wanted is None or isinstance(r.value, wanted)]

    done = until or (lambda rs: len(rs) >= count)
    with Consumer(
        [catalog[spec_name]], group, settings, catalog=catalog, decoder=decoder
    ) as consumer:
        return kept(drain(consumer, lambda rs: done(kept(rs)), timeout=timeout))


def _results(records: list[ConsumedRecord]) -> dict[str, NodeResult]:
    out: dict[str, NodeResult] = {}
    for record in records:
        assert isinstance(record.value, NodeResult)
        out[record.value.invocation_id] = record.value
    return out


def test_results_and_traces(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    data = {"items": [{"n": 1}, {"n": 5}]}
    invocations = [
        _invocation("transform", {"expression": "items[?n > `2`].n", "data": data}),
        _invocation("transform", {"expression": "items[?", "data": data}),
        _invocation("condition", {"value": 0}),
        _invocation(
            "http.request",
            {"url": f"{http_server.url}/echo", "method": "POST", "json": {"hello": "world"}},
        ),
        _invocation("http.request", {"url": "not a url"}, attempt=3),
    ]
    _publish(kafka_settings, worker_topics, invocations)
    stats = _serve(kafka_settings, worker_topics, lambda s: s.results >= len(invocations))
    assert (stats.results, stats.ok, stats.errors) == (5, 3, 2)

    result_records = _read(kafka_settings, worker_topics, "results", len(invocations))
    results = _results(result_records)
    assert set(results) == {i.invocation_id for i in invocations}
    for record in result_records:
        assert record.key is not None and record.key.decode() == record.value.run_id  # type: ignore[union-attr]

    transform_ok, transform_bad, condition, post, invalid = (
        results[i.invocation_id] for i in invocations
    )
    assert transform_ok.status is TraceStatus.OK and transform_ok.output == {"result": [5]}
    assert transform_ok.step == StepRef(
        step_id="step-transform", node="transform", node_version="1.0.0"
    )
    assert (transform_ok.run_id, transform_ok.seq, transform_ok.attempt) == (
        invocations[0].run_id,
        4,
        1,
    )
    assert transform_ok.started_at <= transform_ok.finished_at
    assert transform_bad.status is TraceStatus.ERROR and transform_bad.error is not None
    assert (transform_bad.error.error_class, transform_bad.error.retryable) == (
        "TransformError",
        False,
    )
    assert condition.output == {"result": True}
    assert post.status is TraceStatus.OK
    assert post.output["status"] == 200 and post.output["body"]["json"] == {"hello": "world"}
    assert post.metrics["http_status"] == 200.0
    assert invalid.error is not None and invalid.error.error_class == "ValidationError"
    assert invalid.error.message.startswith("params.url: Input should be a valid URL")
    (echo,) = http_server.requests_to("/echo")
    assert echo.header("idempotency-key") == invocations[3].idempotency_key

    trace_records = _read(kafka_settings, worker_topics, "traces", len(invocations))
    traces: dict[str, Trace] = {}
    for record in trace_records:
        assert isinstance(record.value, Trace)
        assert record.key == record.value.node.encode()
        assert record.value.invocation_id is not None
        traces[record.value.invocation_id] = record.value
    trace = traces[invocations[0].invocation_id]
    assert trace.status is TraceStatus.OK and trace.error is None
    assert trace.inputs_hash == inputs_hash(invocations[0].params)
    assert trace.inputs_hash == hashlib.sha256(encode_json(invocations[0].params)).hexdigest()
    assert (trace.node, trace.node_version, trace.step_id) == (
        "transform",
        "1.0.0",
        "step-transform",
    )
    assert (trace.retry_count, trace.cache_hit, trace.workflow_id) == (0, False, "wf-1")
    assert trace.latency_ms >= 0 and trace.start <= trace.end
    assert traces[invocations[4].invocation_id].retry_count == 2
    failed = traces[invocations[1].invocation_id]
    assert failed.status is TraceStatus.ERROR and failed.error == transform_bad.error
    assert traces[invocations[3].invocation_id].metrics["http_status"] == 200.0


def test_http_error_classes_and_deadlines(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    url = http_server.url
    past = datetime.now(UTC) - timedelta(seconds=1)
    invocations = {
        "503": _invocation("http.request", {"url": f"{url}/status/503"}),
        "429": _invocation("http.request", {"url": f"{url}/status/429"}),
        "404": _invocation("http.request", {"url": f"{url}/status/404"}),
        "timeout": _invocation("http.request", {"url": f"{url}/slow?ms=3000", "timeout_s": 0.3}),
        "deadline": _invocation(
            "http.request",
            {"url": f"{url}/slow?ms=3000"},
            deadline=datetime.now(UTC) + timedelta(milliseconds=300),
        ),
        "expired": _invocation("http.request", {"url": f"{url}/echo"}, deadline=past),
    }
    _publish(kafka_settings, worker_topics, invocations.values())
    _serve(kafka_settings, worker_topics, lambda s: s.results >= len(invocations))
    results = _results(_read(kafka_settings, worker_topics, "results", len(invocations)))

    def error(name: str) -> tuple[TraceStatus, str, bool]:
        result = results[invocations[name].invocation_id]
        assert result.error is not None and result.output is None
        return result.status, result.error.error_class, result.error.retryable

    assert error("503") == (TraceStatus.ERROR, "Http5xx", True)
    assert error("429") == (TraceStatus.ERROR, "Http429", True)
    assert error("404") == (TraceStatus.ERROR, "Http4xx", False)
    assert error("timeout") == (TraceStatus.ERROR, "HttpTimeout", True)
    assert error("deadline")[1:] in {("HttpTimeout", True), ("NodeTimeout", True)}
    assert error("expired") == (TraceStatus.TIMEOUT, "NodeTimeout", True)
    assert "HTTP 404" in results[invocations["404"].invocation_id].error.message  # type: ignore[union-attr]
    assert results[invocations["503"].invocation_id].metrics["retry_after_s"] == 1.0
    # The expired invocation never reached the server.
    assert http_server.requests_to("/echo") == []


def test_claim_checks_for_large_outputs_and_params(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    store = S3BlobStore(kafka_settings)
    big_params = {"expression": "length(@)", "data": "y" * 50_000}
    params_data = encode_json(big_params)
    params_ref = store_json(store, f"test-params/{uuid.uuid4().hex}.json", params_data)
    big = _invocation("http.request", {"url": f"{http_server.url}/big?bytes=300000"})
    small = _invocation("http.request", {"url": f"{http_server.url}/big?bytes=100"})
    by_ref = _invocation("transform", None, params_ref=params_ref)
    _publish(kafka_settings, worker_topics, [big, small, by_ref])
    stats = _serve(kafka_settings, worker_topics, lambda s: s.results >= 3)
    assert stats.claim_checked == 1

    results = _results(_read(kafka_settings, worker_topics, "results", 3))
    big_result = results[big.invocation_id]
    assert big_result.status is TraceStatus.OK and big_result.output is None
    ref = big_result.output_ref
    assert ref is not None and ref.uri.startswith(f"s3://{kafka_settings.s3_bucket}/results/")
    assert ref.size_bytes > 256 * 1024 and ref.content_type == "application/json"
    stored = load_json(store, ref)  # checks size and sha256
    assert stored["status"] == 200 and stored["body"] == "x" * 300_000

    assert results[small.invocation_id].output["body"] == "x" * 100
    assert results[small.invocation_id].output_ref is None
    assert results[by_ref.invocation_id].error is None, results[by_ref.invocation_id].error
    assert results[by_ref.invocation_id].output == {"result": 50_000}


def test_poison_invocations_go_to_the_dlq(
    worker_topics: TopicCatalog, kafka_settings: Settings
) -> None:
    run_id = "poison-run"  # one key: poison and good records share a partition, in order
    first = _invocation("transform", {"expression": "a", "data": {"a": 1}}, run_id=run_id)
    later = [
        _invocation("transform", {"expression": "a", "data": {"a": n}}, run_id=run_id)
        for n in range(2, 5)
    ]
    wrong_type = StartRun(run_id=run_id, workflow_id="wf", inputs={})
    from schemas import encode

    _publish(
        kafka_settings,
        worker_topics,
        [first, ("transform", b"not avro at all"), ("transform", encode(wrong_type)), *later],
    )
    stats = _serve(kafka_settings, worker_topics, lambda s: s.results >= 4 and s.dead_lettered >= 2)
    assert (stats.results, stats.dead_lettered) == (4, 2)

    results = _results(_read(kafka_settings, worker_topics, "results", 4))
    assert {r.output["result"] for r in results.values()} == {1, 2, 3, 4}
    dead: list[DeadLetter] = []
    for record in _read(kafka_settings, worker_topics, "dlq", 2):
        assert isinstance(record.value, DeadLetter)
        dead.append(record.value)
    by_class = {d.error_class: d for d in dead}
    assert set(by_class) == {"MalformedRecord", "UnexpectedRecordType"}
    malformed = by_class["MalformedRecord"]
    assert malformed.value == b"not avro at all" and malformed.key == b"poison-key"
    assert malformed.original_topic == worker_topics.invoke_topic("transform", 1).topic
    assert malformed.consumer_group == worker_topics.worker_group("transform", 1)


def _committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    probe = RawConsumer({**kafka_client_config(settings), "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in probe.committed(tps, timeout=10)}
    finally:
        probe.close()


def test_commits_only_the_finished_prefix_of_a_partition(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    run_id = "prefix-run"  # one partition
    slow = _invocation("http.request", {"url": f"{http_server.url}/slow?ms=5000"}, run_id=run_id)
    fast = [
        _invocation("http.request", {"url": f"{http_server.url}/echo"}, run_id=run_id)
        for _ in range(4)
    ]
    _publish(kafka_settings, worker_topics, [slow, *fast])
    config = WorkerConfig(commit_interval_s=0.05, poll_timeout_s=0.05, shutdown_grace_s=0)
    stats = _serve(kafka_settings, worker_topics, lambda s: s.results >= 4, config=config)
    assert stats.results == 4 and stats.abandoned == 1

    topic = worker_topics.invoke_topic("http.request", 1)
    committed = _committed(
        kafka_settings, worker_topics.worker_group("http.request", 1), topic.topic, 3
    )
    # The slow invocation at offset 0 never finished: nothing may be committed past it,
    # although the four after it are done.
    assert max(committed.values()) <= 0, committed


def test_at_least_once_across_a_crash(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    # Every fifth is slow, so the crash below always leaves some in flight.
    invocations = [
        _invocation(
            "http.request",
            {"url": f"{http_server.url}/slow?ms={1500 if n % 5 == 0 else 100}", "method": "POST"},
        )
        for n in range(24)
    ]
    _publish(kafka_settings, worker_topics, invocations)
    # A small buffer, so the crash leaves invocations that were never fetched or started.
    config = WorkerConfig(
        io_concurrency=2,
        cpu_concurrency=2,  # max_buffered may not be below any limit, whatever the cores
        commit_interval_s=0.1,
        poll_timeout_s=0.05,
        shutdown_grace_s=5,
        max_buffered=8,
    )
    first = _serve(
        kafka_settings,
        worker_topics,
        lambda s: s.results >= 6 and s.pending > 0,
        config=config,
        graceful=False,
    )
    assert 6 <= first.results < len(invocations)
    assert first.abandoned > 0  # it crashed with invocations in flight

    topic = worker_topics.invoke_topic("http.request", 1)
    group = worker_topics.worker_group("http.request", 1)
    done_before = sum(
        o for o in _committed(kafka_settings, group, topic.topic, 3).values() if o > 0
    )
    assert done_before < len(invocations)

    remaining = len(invocations) - done_before
    second = _serve(kafka_settings, worker_topics, lambda s: s.results >= remaining, config=config)
    assert second.received == remaining  # resumed exactly at the committed offsets

    wanted = {i.invocation_id for i in invocations}

    def all_seen(records: list[ConsumedRecord]) -> bool:
        return {r.value.invocation_id for r in records} >= wanted  # type: ignore[union-attr]

    records = _read(kafka_settings, worker_topics, "results", until=all_seen)
    assert len(records) >= len(invocations)  # duplicates allowed, losses not
    # Every POST carried its invocation's key. An invocation the crashed worker had claimed
    # (the attempt ledger) is not executed again: it is answered with AttemptInterrupted, so it
    # may never have reached the server; every other one did.
    keys = {r.header("idempotency-key") for r in http_server.requests_to("/slow")}
    interrupted = {
        r.value.invocation_id  # type: ignore[union-attr]
        for r in records
        if r.value.error is not None  # type: ignore[union-attr]
        and r.value.error.error_class == "AttemptInterrupted"  # type: ignore[union-attr]
    }
    assert keys <= {i.idempotency_key for i in invocations}
    reached = {i.invocation_id for i in invocations if i.idempotency_key in keys}
    assert reached | interrupted == wanted
    # No attempt reached the server twice.
    attempts = [r.header("x-reflux-invocation-id") for r in http_server.requests_to("/slow")]
    assert len(attempts) == len(set(attempts))
    # After the second worker, the group has committed everything.
    committed = _committed(kafka_settings, group, topic.topic, 3)
    assert sum(o for o in committed.values() if o > 0) == len(invocations)


def test_rebalance_hands_over_partitions_without_duplicates(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    # Alone, the first member needs ~9 s for these (60 x 300 ms, two at a time): the second
    # one's join and rebalance take seconds on a loaded machine, and must find work left.
    invocations = [
        _invocation("http.request", {"url": f"{http_server.url}/slow?ms=300"}) for _ in range(60)
    ]
    # Spread evenly, so whichever partition the second member gets still has work left.
    with Producer(kafka_settings) as producer:
        topic = worker_topics.invoke_topic("http.request", 1)
        for n, invocation in enumerate(invocations):
            producer.send(topic, invocation.run_id, invocation, partition=n % 3)
    config = WorkerConfig(
        io_concurrency=2,
        cpu_concurrency=2,  # max_buffered may not be below any limit, whatever the cores
        commit_interval_s=0.1,
        poll_timeout_s=0.05,
        # A small buffer leaves work on every partition for the member that joins later.
        max_buffered=8,
        # Members learn about a rebalance from heartbeats: keep the test short.
        consumer_overrides={"heartbeat.interval.ms": 100},
    )

    async def scenario() -> tuple[WorkerStats, WorkerStats]:
        first = WorkerRuntime(
            kafka_settings, default_registry(), config=config, catalog=worker_topics
        )
        second = WorkerRuntime(
            kafka_settings, default_registry(), config=config, catalog=worker_topics
        )
        stop_first, stop_second = asyncio.Event(), asyncio.Event()
        task_first = asyncio.create_task(first.run_forever(stop_first))
        began = time.monotonic()
        await eventually_async(
            lambda: first.stats.results,
            30,
            "3 results from the first member",
            until=lambda n: n >= 3,
            interval=0.02,
        )
        # Joining revokes the first member's partitions while it has invocations in
        # flight: it must finish them and commit before letting go.
        task_second = asyncio.create_task(second.run_forever(stop_second))
        await eventually_async(
            lambda: first.stats.results + second.stats.results,
            60 - (time.monotonic() - began),
            f"{len(invocations)} results from both members",
            until=lambda n: n >= len(invocations),
        )
        stop_first.set()
        stop_second.set()
        await asyncio.gather(task_first, task_second)
        return first.stats, second.stats

    first, second = asyncio.run(scenario())
    assert second.received > 0, "the second member never got a partition"
    assert first.abandoned == second.abandoned == 0
    records = _read(kafka_settings, worker_topics, "results", len(invocations))
    ids = [r.value.invocation_id for r in records]  # type: ignore[union-attr]
    assert sorted(ids) == sorted(i.invocation_id for i in invocations)  # each exactly once
    assert first.received + second.received == len(invocations)


def test_graceful_stop_finishes_in_flight_invocations(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    invocations = [
        _invocation("http.request", {"url": f"{http_server.url}/slow?ms=600"}) for _ in range(4)
    ]
    _publish(kafka_settings, worker_topics, invocations)
    config = WorkerConfig(commit_interval_s=0.1, poll_timeout_s=0.05, shutdown_grace_s=10)
    # Stop as soon as all four are running: shutdown must wait for them, then commit.
    stats = _serve(kafka_settings, worker_topics, lambda s: s.received >= 4, config=config)
    assert (stats.results, stats.abandoned) == (4, 0)
    topic = worker_topics.invoke_topic("http.request", 1)
    group = worker_topics.worker_group("http.request", 1)
    committed = _committed(kafka_settings, group, topic.topic, 3)
    assert sum(o for o in committed.values() if o > 0) == 4
    # Nothing left for the next worker.
    again = _serve(kafka_settings, worker_topics, lambda s: False, config=config, timeout=1.5)
    assert again.received == 0


def test_an_attempt_still_running_after_the_delay_is_signalled_and_a_long_one_heartbeats(
    worker_topics: TopicCatalog, kafka_settings: Settings, http_server: HttpTestServer
) -> None:
    url = http_server.url
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    invocations = {
        # Dispatched an hour ago with a 2 s timeout: the timeout counts from the worker's start.
        # It ends within the start signal's delay (0.5 s): only its result is sent.
        "queued": _invocation(
            "http.request", {"url": f"{url}/slow?ms=100"}, timeout_ms=2_000, occurred_at=an_hour_ago
        ),
        "long": _invocation("http.request", {"url": f"{url}/slow?ms=1500"}, timeout_ms=5_000),
        # The delay is capped at half the timeout: the start is signalled at 150 ms.
        "too_long": _invocation("http.request", {"url": f"{url}/slow?ms=3000"}, timeout_ms=300),
        # A queue timeout: the start is signalled at once, however short the attempt.
        "eager": _invocation(
            "http.request",
            {"url": f"{url}/slow?ms=0"},
            start_by=datetime.now(UTC) + timedelta(minutes=5),
        ),
        # Its queue timeout passed before a worker got to it: not started, never sent.
        "late": _invocation(
            "http.request",
            {"url": f"{url}/echo"},
            start_by=datetime.now(UTC) - timedelta(seconds=1),
        ),
    }
    _publish(kafka_settings, worker_topics, invocations.values())
    config = WorkerConfig(
        commit_interval_s=0.1,
        poll_timeout_s=0.05,
        heartbeat_interval_s=0.25,
        start_signal_delay_s=0.5,
    )
    stats = _serve(
        kafka_settings, worker_topics, lambda s: s.results >= len(invocations), config=config
    )
    assert (stats.results, stats.started) == (5, 4)  # every one answered; "late" never started

    records = _read(
        kafka_settings,
        worker_topics,
        "results",
        keep=RefluxRecord,
        until=lambda rs: (
            len({r.value.invocation_id for r in rs if isinstance(r.value, NodeResult)})
            >= len(invocations)
        ),
    )
    by_invocation: dict[str, list[ConsumedRecord]] = {}
    for record in records:
        assert isinstance(record.value, NodeHeartbeat | NodeResult)
        assert record.key == record.value.run_id.encode()
        by_invocation.setdefault(record.value.invocation_id, []).append(record)

    def signalled_after(name: str) -> timedelta:
        """From the attempt's start (worker clock) to the broker's timestamp of its beat 0."""
        mine = by_invocation[invocations[name].invocation_id]
        (start,) = [r for r in mine if isinstance(r.value, NodeHeartbeat) and r.value.beat == 0]
        assert isinstance(start.value, NodeHeartbeat) and start.timestamp_ms is not None
        sent = datetime.fromtimestamp(start.timestamp_ms / 1000, UTC)
        return sent - start.value.started_at

    def story(name: str) -> tuple[list[int], NodeResult]:
        """The beats before the result, in partition order, and the result."""
        mine = sorted(by_invocation[invocations[name].invocation_id], key=lambda r: r.offset)
        assert len({r.partition for r in mine}) == 1
        *beats, result = [r.value for r in mine]
        assert isinstance(result, NodeResult), f"{name}: the result comes last"
        assert all(isinstance(b, NodeHeartbeat) for b in beats)
        started = {b.started_at for b in beats}  # type: ignore[union-attr]
        assert started <= {result.started_at}, name  # the start the result reports
        return [b.beat for b in beats], result  # type: ignore[union-attr]

    beats, queued = story("queued")
    assert beats == [] and queued.status is TraceStatus.OK, queued.error  # no start signal
    beats, long = story("long")
    assert long.status is TraceStatus.OK
    assert beats[0] == 0 and len(beats) >= 3 and beats == list(range(len(beats)))
    # Sent after the delay, carrying the true start (``story``: the result's started_at).
    assert timedelta(milliseconds=450) <= signalled_after("long") < timedelta(milliseconds=1500)
    beats, too_long = story("too_long")
    assert beats[0] == 0 and too_long.error is not None
    assert timedelta(milliseconds=100) <= signalled_after("too_long") < timedelta(milliseconds=300)
    # The node caps its own timeout by the deadline too; either way it ends at ~300 ms.
    assert too_long.error.error_class in {"HttpTimeout", "NodeTimeout"}
    assert (too_long.finished_at - too_long.started_at) < timedelta(seconds=2)
    beats, eager = story("eager")
    assert beats == [0] and eager.status is TraceStatus.OK, eager.error
    assert signalled_after("eager") < timedelta(milliseconds=450)
    beats, late = story("late")
    assert beats == [] and late.error is not None
    assert (late.error.error_class, late.error.retryable) == ("QueueTimeout", False)
    assert http_server.requests_to("/echo") == []
    heartbeat = by_invocation[invocations["long"].invocation_id][0].value
    assert isinstance(heartbeat, NodeHeartbeat) and heartbeat.worker is not None
    assert heartbeat.worker.startswith("reflux-worker@")
