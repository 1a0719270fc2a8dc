"""`reflux worker` as a real process: serves a node group, stops cleanly on SIGTERM."""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition

from foundation.settings import PROJECT_ROOT, Settings
from schemas.models import NodeHeartbeat, NodeInvocation, NodeResult, StepRef
from streams.consumer import Consumer
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import admin, catalog, drain, kafka_settings, topics
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _invocation(n: int) -> NodeInvocation:
    invocation_id = str(uuid.uuid4())
    return NodeInvocation(
        run_id=f"run-{n}",
        seq=1,
        invocation_id=invocation_id,
        attempt=1,
        workflow_id="wf",
        workflow_version=1,
        step=StepRef(step_id="t", node="transform", node_version="1.0.0"),
        params={"expression": "n", "data": {"n": n}},
        idempotency_key=invocation_id,
    )


def test_worker_process_serves_and_stops_on_sigterm(
    topics: TopicCatalog, kafka_settings: Settings
) -> None:
    env = {
        **os.environ,
        "REFLUX_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "REFLUX_DEFAULT_PARTITIONS": str(kafka_settings.default_partitions),
        "NODES_FILTER": "condition",  # --nodes wins over the environment
        # Every start signalled at once (a transform ends within the default delay): the
        # setting reaches the worker process.
        "REFLUX_WORKER_START_SIGNAL_DELAY_MS": "0",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node_workers.cli",
            "worker",
            "--nodes",
            "transform",
            "--cpu-concurrency",
            "2",
            "--create-topics",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        invoke = topics.invoke_topic("transform", 1)

        def invoke_topic_created() -> bool:
            if process.poll() is not None:
                output = process.stdout.read()  # type: ignore[union-attr]
                pytest.fail(f"the worker exited before creating its invoke topic:\n{output}")
            return invoke.topic in topics_on_broker(kafka_settings)

        # A process start: interpreter, imports, Kafka connection; seconds when four test
        # processes share two cores (a slow start fails nothing the test checks).
        eventually(invoke_topic_created, 60, f"the worker to create {invoke.topic}", interval=0.1)
        invocations = [_invocation(n) for n in range(10)]
        with Producer(kafka_settings) as producer:
            for inv in invocations:
                producer.send(invoke, inv.run_id, inv)
        with Consumer(
            [topics.results], f"r-{uuid.uuid4().hex[:6]}", kafka_settings, catalog=topics
        ) as consumer:
            records = drain(
                consumer,
                lambda rs: len([r for r in rs if isinstance(r.value, NodeResult)]) >= 10,
                timeout=20,
            )
        # Each executed attempt also signalled its start (a NodeHeartbeat) before its result.
        results = [r.value for r in records if isinstance(r.value, NodeResult)]
        assert len([r for r in records if isinstance(r.value, NodeHeartbeat)]) == 10
        outputs = {r.invocation_id: r.output for r in results}
        assert outputs == {i.invocation_id: {"result": n} for n, i in enumerate(invocations)}
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "transform@1.0.0" in output and "condition" not in output.split("serving")[-1]

    group = topics.worker_group("transform", 1)
    probe = RawConsumer({**kafka_client_config(kafka_settings), "group.id": group})
    try:
        parts = [TopicPartition(invoke.topic, p) for p in range(kafka_settings.default_partitions)]
        committed = probe.committed(parts, timeout=10)
    finally:
        probe.close()
    assert sum(tp.offset for tp in committed if tp.offset > 0) == 10


def topics_on_broker(settings: Settings) -> set[str]:
    from streams.admin import admin_client

    return set(admin_client(settings).list_topics(timeout=5).topics)
