"""The chosen Kafka version works with both client stacks the product uses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from foundation.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _create(settings: Settings, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    futures = admin.create_topics([NewTopic(t, 2, 1) for t in topics])
    for future in futures.values():
        future.result(timeout=30)


def _drain(settings: Settings, topic: str, expected: int, timeout: float) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"drain-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() is not None:
                values.append(msg.value() or b"")
    finally:
        consumer.close()
    return values


def test_confluent_kafka_idempotent_round_trip(local_services: Settings) -> None:
    topic = f"probe-ck-{uuid.uuid4().hex[:8]}"
    _create(local_services, topic)
    producer = Producer(
        {"bootstrap.servers": local_services.kafka_bootstrap, "enable.idempotence": True}
    )
    for i in range(1000):
        producer.produce(topic, key=str(i % 7).encode(), value=str(i).encode())
    assert producer.flush(30) == 0
    values = _drain(local_services, topic, 1000, 30)
    assert sorted(int(v) for v in values) == list(range(1000))


def test_faust_streaming_agent_with_table(local_services: Settings, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    src, out = f"probe-in-{suffix}", f"probe-out-{suffix}"
    _create(local_services, src, out)
    producer = Producer({"bootstrap.servers": local_services.kafka_bootstrap})
    for i in range(200):
        producer.produce(src, key=str(i).encode(), value=str(i).encode())
    assert producer.flush(30) == 0
    env = {
        **os.environ,
        "PROBE_BROKER": f"kafka://{local_services.kafka_bootstrap}",
        "PROBE_IN": src,
        "PROBE_OUT": out,
        "PROBE_APP": f"probe-{suffix}",
    }
    log = (tmp_path / "faust.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.faust_probe", "worker", "-l", "warn"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        values = _drain(local_services, out, 200, 90)
    finally:
        worker.terminate()
        worker.wait(30)
    assert sorted(int(v) for v in values) == [2 * i for i in range(200)], (
        tmp_path / "faust.log"
    ).read_text()[-3000:]
