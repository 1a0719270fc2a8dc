"""Worker concurrency against the real broker, Redis and a local HTTP server: hundreds of I/O
attempts in flight, CPU attempts bounded, per-group limits, backpressure that never times out.

The HTTP server counts the ``/slow`` requests it holds at once (``in_flight_max``): what the
worker really ran concurrently, observed from outside the worker.
"""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest

from foundation.settings import Settings
from node_workers.node import Node, NodeContext, NodeModel, Workload
from node_workers.nodes import HttpRequestNode
from node_workers.pools import BlockingPool
from node_workers.registry import NodeRegistry, default_registry
from node_workers.runtime import WorkerConfig, WorkerRuntime, WorkerStats
from schemas.models import TraceStatus
from streams.admin import ensure_topics
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.test_worker_runtime import (
    _invocation,
    _publish,
    _read,
    _results,
    worker_topics,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _serve(
    settings: Settings,
    catalog: TopicCatalog,
    nodes: NodeRegistry,
    config: WorkerConfig,
    n: int,
    timeout: float = 60,
) -> WorkerStats:
    runtime = WorkerRuntime(settings, nodes, config=config, catalog=catalog)
    return asyncio.run(runtime.run_until(lambda s: s.results >= n, timeout=timeout))


def test_one_worker_with_the_default_config_holds_hundreds_of_http_calls_at_once(
    worker_topics: TopicCatalog, kafka_settings: Settings, http: HttpTestServer
) -> None:
    config = WorkerConfig(commit_interval_s=0.1, poll_timeout_s=0.05)  # default concurrency
    assert config.io_concurrency == 256
    count = 300
    # 3 s each: long enough that the worker starts 200 before the first one answers, on a
    # loaded machine too; the property is how many the server held, not how fast.
    invocations = [
        _invocation("http.request", {"url": f"{http.url}/slow?ms=3000&n={n}", "timeout_s": 60})
        for n in range(count)
    ]
    _publish(kafka_settings, worker_topics, invocations)
    stats = _serve(kafka_settings, worker_topics, default_registry(), config, count)
    assert (stats.results, stats.ok) == (count, count)
    assert 200 <= http.in_flight_max <= config.io_concurrency, http.in_flight_max
    results = _results(_read(kafka_settings, worker_topics, "results", count))
    assert {r.status for r in results.values()} == {TraceStatus.OK}


class _Work(NodeModel):
    ms: int


class _Done(NodeModel):
    ok: bool


class _CpuSpin(Node[_Work, _Done]):
    """A CPU node whose work blocks a thread of its own pool, like transform's large inputs;
    every instance counts into one tally, so two lanes' attempts add up."""

    version = "1.0.0"
    Input = _Work
    Output = _Done
    workload = Workload.CPU
    running: ClassVar[int] = 0
    running_max: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self.pool = BlockingPool(name)

    def set_concurrency(self, limit: int) -> None:
        self.pool.resize(limit)

    def _work(self, ms: int) -> None:
        cls = type(self)
        with cls.lock:
            cls.running += 1
            cls.running_max = max(cls.running_max, cls.running)
        try:
            time.sleep(ms / 1000)  # the node's work, under test, not a wait
        finally:
            with cls.lock:
                cls.running -= 1

    async def execute(self, params: _Work, ctx: NodeContext) -> _Done:
        await self.pool.run(self._work, params.ms)
        return _Done(ok=True)

    async def aclose(self) -> None:
        self.pool.close()


def test_cpu_nodes_never_run_more_than_their_class_limit_at_once(
    topics: TopicCatalog, kafka_settings: Settings
) -> None:
    _CpuSpin.running = _CpuSpin.running_max = 0
    names = ("test.spin-a", "test.spin-b")
    nodes = NodeRegistry([_CpuSpin(name) for name in names])
    invoke = [topics.invoke_topic(name, 1) for name in names]
    ensure_topics(topics, invoke, settings=kafka_settings)
    count = 24  # 12 per lane; both lanes draw from the one CPU pool of 2
    invocations = [_invocation(name, {"ms": 100}) for _ in range(count // 2) for name in names]
    with Producer(kafka_settings) as producer:
        for invocation in invocations:
            topic = topics.invoke_topic(invocation.step.node, 1)
            producer.send(topic, invocation.run_id, invocation)
        producer.flush(10)
    config = WorkerConfig(
        cpu_concurrency=2, io_concurrency=64, commit_interval_s=0.1, poll_timeout_s=0.05
    )
    stats = _serve(kafka_settings, topics, nodes, config, count)
    assert (stats.results, stats.ok) == (count, count)
    assert _CpuSpin.running_max == 2  # reached, never passed


def test_a_node_group_limit_overrides_its_class(
    worker_topics: TopicCatalog, kafka_settings: Settings, http: HttpTestServer
) -> None:
    count = 24
    invocations = [
        _invocation("http.request", {"url": f"{http.url}/slow?ms=300&n={n}"}) for n in range(count)
    ]
    _publish(kafka_settings, worker_topics, invocations)
    config = WorkerConfig(
        node_concurrency={"http.request@1": 5}, commit_interval_s=0.1, poll_timeout_s=0.05
    )
    nodes = NodeRegistry([HttpRequestNode()])
    stats = _serve(kafka_settings, worker_topics, nodes, config, count)
    assert (stats.results, stats.ok) == (count, count)
    assert http.in_flight_max == 5  # the group's limit, reached; the class allows 256


def test_backpressure_pauses_the_lane_and_a_held_invocation_never_times_out(
    worker_topics: TopicCatalog, kafka_settings: Settings, http: HttpTestServer
) -> None:
    # A lane running 2 at once holds at most 8; 30 invocations of 250 ms, each with a 1 s step
    # timeout, queue ~3.75 s in all: most wait longer than their timeout, in the topic or in
    # the lane's buffer, and must still succeed (the timeout counts from the start).
    count, running, held = 30, 2, 8
    invocations = [
        _invocation("http.request", {"url": f"{http.url}/slow?ms=250&n={n}"}, timeout_ms=1_000)
        for n in range(count)
    ]
    published = datetime.now(UTC)
    _publish(kafka_settings, worker_topics, invocations)
    config = WorkerConfig(
        io_concurrency=running,
        cpu_concurrency=1,
        max_buffered=held,
        commit_interval_s=0.1,
        poll_timeout_s=0.05,
    )
    nodes = NodeRegistry([HttpRequestNode()])
    stats = _serve(kafka_settings, worker_topics, nodes, config, count)
    assert stats.pauses >= 1, stats
    assert stats.held_max == held, stats  # filled its buffer, never went past it
    assert stats.received == count  # resuming never re-delivered what it held
    assert http.in_flight_max == running

    records = _read(kafka_settings, worker_topics, "results", count)
    assert sorted(r.value.invocation_id for r in records) == sorted(  # type: ignore[union-attr]
        i.invocation_id for i in invocations
    )  # each exactly once
    results = _results(records)
    assert {r.status for r in results.values()} == {TraceStatus.OK}, {
        r.error.error_class for r in results.values() if r.error is not None
    }
    # The scenario holds: the last ones started seconds after they were published, well past
    # the 1 s they were given to run.
    latest_start = max(r.started_at for r in results.values())
    assert latest_start - published > timedelta(seconds=2)
