"""The chosen Kafka version works with both client stacks the product uses.

Topics (faust's own changelog and assignor topics too) are named under the test's prefix, so
they are deleted with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from foundation.settings import Settings
from streams.security import kafka_client_config
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


def _create(settings: Settings, *topics: str) -> None:
    admin = AdminClient({**kafka_client_config(settings)})
    futures = admin.create_topics([NewTopic(t, 2, 1) for t in topics])
    for future in futures.values():
        future.result(timeout=30)


def _drain(
    settings: Settings,
    topic: str,
    expected: int,
    timeout: float,
    describe: Callable[[], str] | None = None,
) -> list[bytes]:
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"drain-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []

    def poll() -> int:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None and msg.value() is not None:
            values.append(msg.value() or b"")
        return len(values)

    try:
        eventually(
            poll,
            timeout,
            f"{expected} records on {topic}",
            until=lambda n: n >= expected,
            interval=0,  # poll() waits
            describe=describe,
        )
    finally:
        consumer.close()
    return values


def test_confluent_kafka_idempotent_round_trip(kafka_settings: Settings) -> None:
    topic = f"{kafka_settings.topic_prefix}.probe-ck"
    _create(kafka_settings, topic)
    producer = Producer({**kafka_client_config(kafka_settings), "enable.idempotence": True})
    for i in range(1000):
        producer.produce(topic, key=str(i % 7).encode(), value=str(i).encode())
    assert producer.flush(30) == 0
    values = _drain(kafka_settings, topic, 1000, 30)
    assert sorted(int(v) for v in values) == list(range(1000))


def test_faust_streaming_agent_with_table(kafka_settings: Settings, tmp_path: Path) -> None:
    prefix = kafka_settings.topic_prefix
    src, out = f"{prefix}.probe-in", f"{prefix}.probe-out"
    # The table's changelog too, as the critic and the optimizer create theirs: declared by
    # faust itself it can be missing from the client's metadata when the first count is
    # written (PartitionsMismatch "the changelog topic has 0 partitions", seen under make test).
    _create(kafka_settings, src, out, f"{prefix}.probe-counts-changelog")
    producer = Producer({**kafka_client_config(kafka_settings)})
    for i in range(200):
        producer.produce(src, key=str(i).encode(), value=str(i).encode())
    assert producer.flush(30) == 0
    env = {
        **os.environ,
        "PROBE_BROKER": f"kafka://{kafka_settings.kafka_bootstrap}",
        "PROBE_IN": src,
        "PROBE_OUT": out,
        "PROBE_APP": f"{prefix}.probe",  # faust's own topics start with the app id
        "PROBE_DATADIR": str(tmp_path / "faust-data"),
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
        values = _drain(
            kafka_settings,
            out,
            200,
            90,
            describe=lambda: (tmp_path / "faust.log").read_text()[-3000:],
        )
    finally:
        # A worker that crashed in start-up can ignore SIGTERM; left running, it holds faust's
        # web port and breaks every later run of this test.
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
    assert sorted(int(v) for v in values) == [2 * i for i in range(200)], (
        tmp_path / "faust.log"
    ).read_text()[-3000:]
