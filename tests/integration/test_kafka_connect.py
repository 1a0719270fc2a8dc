"""Kafka Connect on the local broker: the worker the project's own service code starts
(infra/services/connect.py, `make up` / `make connect`) running the FileStream connectors of
examples/connect/, with JSON kept verbatim; and the path a Connect source -> REFLUX -> a Connect
sink, end to end (docs/connect.md, ADR 0055).

Every connector a test makes is named after the test's topic prefix and deleted (with its sink
consumer group) before the prefix's topics are.
"""

from __future__ import annotations

import functools
import json
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from foundation.settings import PROJECT_ROOT, Settings
from infra.services.base import ServiceError
from infra.services.connect import ConnectRest, KafkaConnect, load_connector, running_states
from infra.services.kafka import Kafka
from infra.stack import up
from processors.triggers.mapping import run_id_for_trigger
from streams.admin import admin_client
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import Harness
from tests.support.waiting import eventually

EXAMPLES = PROJECT_ROOT / "examples" / "connect"
SOURCE_EXAMPLE = EXAMPLES / "triggers-source.json"
SINK_EXAMPLE = EXAMPLES / "outcomes-sink.json"
FILE_SOURCE = "org.apache.kafka.connect.file.FileStreamSourceConnector"
FILE_SINK = "org.apache.kafka.connect.file.FileStreamSinkConnector"


@pytest.fixture(scope="module")
def connect_worker(local_services: Settings) -> ConnectRest:
    """The local worker, started (or found running) by the stack's own code, as `make up`."""
    try:
        up(local_services, ["connect"])
    except ServiceError as exc:
        pytest.fail(f"the Kafka Connect worker could not start: {exc}", pytrace=False)
    return KafkaConnect(local_services).rest()


@dataclass
class Connectors:
    """The connectors of one test, on the shared worker; all deleted by the fixture."""

    rest: ConnectRest
    settings: Settings
    made: list[str] = field(default_factory=list)

    def create(self, example: Path, **overrides: str) -> str:
        """Creates the example connector (named after the test's prefix) with ``overrides``
        and waits until it and its task run."""
        base, config = load_connector(example, **overrides)
        name = f"{self.settings.topic_prefix}-{base}"
        self.made.append(name)
        self.rest.put_connector(name, config)

        def states() -> tuple[str, list[str]]:
            try:
                return running_states(self.rest.status(name))
            except ServiceError as exc:  # 404 until the herder has read the new config
                return "ABSENT", [str(exc)]

        eventually(
            states,
            60,
            f"connector {name} and its task to be RUNNING",
            until=lambda s: s[0] == "RUNNING" and s[1] == ["RUNNING"],
            describe=lambda: f"status: {self.rest.status(name)}",
        )
        return name

    def delete_all(self) -> None:
        admin = admin_client(self.settings)
        for name in self.made:
            self.rest.delete_connector(name)
        # A sink's consumer group (connect-<name>) is left on the broker by Connect; it can go
        # once the stopped task has left it.
        groups = [f"connect-{name}" for name in self.made]
        if not groups:
            return

        def delete_groups() -> list[str]:
            left = []
            for group, future in admin.delete_consumer_groups(groups, request_timeout=10).items():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                        left.append(f"{group}: {exc}")
            return left

        eventually(
            delete_groups,
            30,
            "the connectors' consumer groups to be deleted",
            until=lambda left: not left,
        )


@pytest.fixture
def connectors(connect_worker: ConnectRest, kafka_settings: Settings) -> Iterator[Connectors]:
    made = Connectors(connect_worker, kafka_settings)
    try:
        yield made
    finally:
        made.delete_all()


def read_lines(path: Path) -> list[str]:
    """The complete lines of a file the sink connector is appending to."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1]  # a last line without its newline is still being written


def read_topic(settings: Settings, topic: str) -> list[tuple[int, int, bytes]]:
    """Every committed record of ``topic``: (partition, offset, raw value), by a plain
    read-committed consumer that is assigned the partitions (no group state)."""
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.connect-test-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        assigned = [TopicPartition(topic, p, 0) for p in sorted(metadata.partitions)]
        ends = {}
        for tp in assigned:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > low:  # an empty partition has no position to reach
                ends[tp.partition] = high
        assigned = [tp for tp in assigned if tp.partition in ends]
        consumer.assign(assigned)
        records: list[tuple[int, int, bytes]] = []

        def done() -> bool:
            for message in consumer.consume(500, timeout=0.5):
                partition, offset = message.partition(), message.offset()
                if message.error() is None and partition is not None and offset is not None:
                    records.append((partition, offset, message.value() or b""))
            # Positions, not the last record's offset: a transactional topic (the scheduler
            # writes run-outcomes in its transactions) ends with commit markers.
            positions = consumer.position(assigned)
            return all(tp.offset >= ends[tp.partition] for tp in positions)

        eventually(done, 30, f"every record of {topic} to be read")
        return records
    finally:
        consumer.close()


def topic_values(settings: Settings, topic: str) -> list[bytes]:
    return [value for _, _, value in read_topic(settings, topic)]


def committed_past_every_record(settings: Settings, group: str, topic: str) -> dict[int, str]:
    """The partitions of ``topic`` where consumer group ``group`` has not yet committed past
    the last record (empty: it has processed everything there is)."""
    ends: dict[int, int] = {}
    for partition, offset, _ in read_topic(settings, topic):
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    # A consumer of the group that never subscribes only reads its committed offsets.
    probe = Consumer({**kafka_client_config(settings), "group.id": group})
    try:
        committed = probe.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    finally:
        probe.close()
    return {
        tp.partition: f"committed {tp.offset}, records up to {ends[tp.partition]}"
        for tp in committed
        if tp.offset < ends[tp.partition]
    }


def create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=30)


def test_worker_is_connect_3_9_on_the_local_broker_with_the_file_plugins(
    connect_worker: ConnectRest, local_services: Settings
) -> None:
    info = connect_worker.get("/")
    assert info["version"] == "3.9.1"
    admin = admin_client(local_services)  # kept: the future fails if its client is collected
    cluster = admin.describe_cluster().result(timeout=10)
    assert info["kafka_cluster_id"] == cluster.cluster_id
    plugins = {p["class"]: p["type"] for p in connect_worker.get("/connector-plugins")}
    assert plugins[FILE_SOURCE] == "source"
    assert plugins[FILE_SINK] == "sink"


def test_json_lines_pass_source_topic_sink_verbatim(
    connectors: Connectors, kafka_settings: Settings, admin: AdminClient, tmp_path: Path
) -> None:
    """FileStreamSource -> a topic -> FileStreamSink with the example configs: each JSON line
    is one record whose value is exactly the line's bytes, and comes out as the same line."""
    topic = f"{kafka_settings.topic_prefix}.connect-roundtrip"
    create_topic(admin, topic, 1)  # one partition: the sink file keeps the source's order
    source_file, sink_file = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        json.dumps({"source": "connect-test", "idempotency_key": f"k-{i}", "payload": {"n": i}})
        for i in range(20)
    ] + [
        '{"spacing" :  "kept",   "order": ["z", "a"], "nested": {"b": 1, "a": [true, null]}}',
        json.dumps({"text": "Zoë ✓ 東京", "quote": 'say "hi"\\n'}, ensure_ascii=False),
        json.dumps({"escaped": "Zoë ✓"}),  # \u escapes stay escapes: nothing re-encodes
    ]
    source_file.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    connectors.create(SOURCE_EXAMPLE, file=str(source_file), topic=topic)
    connectors.create(SINK_EXAMPLE, file=str(sink_file), topics=topic)

    eventually(
        lambda: read_lines(sink_file),
        60,
        f"the sink file to hold the {len(lines)} lines",
        until=lambda got: len(got) >= len(lines),
    )
    assert read_lines(sink_file) == lines

    # The source tails its file: lines appended later flow too, each exactly once.
    more = [json.dumps({"appended": i}) for i in range(3)]
    with source_file.open("a", encoding="utf-8") as out:
        out.write("".join(f"{line}\n" for line in more))
    eventually(
        lambda: read_lines(sink_file),
        60,
        "the appended lines in the sink file",
        until=lambda got: len(got) >= len(lines) + len(more),
    )
    assert read_lines(sink_file) == lines + more

    # On Kafka the value is the line itself (StringConverter): no schema envelope, no quoting.
    assert topic_values(kafka_settings, topic) == [line.encode() for line in lines + more]


def test_connect_source_to_reflux_to_connect_sink(
    harness: Harness, connectors: Connectors, admin: AdminClient, tmp_path: Path
) -> None:
    """The example end to end: the source connector feeds examples/connect/triggers.jsonl (plain
    JSON triggers) into <prefix>.triggers, REFLUX runs each, the sink connector writes
    <prefix>.run-outcomes (CloudEvents JSON) to a file: every run's succeeded outcome is there.

    Needs the plain-JSON trigger decoding (issue 13, branch i13-triggers) and the outcomes topic
    (branch i13-outcomes)."""
    settings = harness.settings
    prefix = settings.topic_prefix
    outcomes_topic = f"{prefix}.run-outcomes"
    if outcomes_topic not in admin.list_topics(timeout=10).topics:
        pytest.fail(
            f"{outcomes_topic} does not exist after the engine started: the outcomes topic "
            "(issue 13, branch i13-outcomes) is not in this build"
        )
    harness.register(yaml.safe_load((EXAMPLES / "greeting.yaml").read_text()))

    triggers = [json.loads(line) for line in (EXAMPLES / "triggers.jsonl").read_text().splitlines()]
    source_file, sink_file = tmp_path / "triggers.jsonl", tmp_path / "run-outcomes.jsonl"
    sink_file.touch()
    source_file.write_text((EXAMPLES / "triggers.jsonl").read_text(), encoding="utf-8")
    connectors.create(SINK_EXAMPLE, file=str(sink_file), topics=outcomes_topic)
    connectors.create(
        SOURCE_EXAMPLE, file=str(source_file), topic=harness.engine.catalog.triggers.topic
    )

    expected: dict[str, str] = {}
    for trigger in triggers:
        run_id = run_id_for_trigger(trigger["source"], trigger["idempotency_key"])
        run = harness.wait(run_id, timeout=60)
        assert run.status == "succeeded", f"run {run_id} of {trigger}: {run}"
        expected[run_id] = f"Hello, {trigger['payload']['name']}"

    def succeeded() -> dict[str, dict[str, Any]]:
        found = {}
        for line in read_lines(sink_file):
            event = json.loads(line)
            if event.get("type") == "reflux.run.succeeded":
                found[event["subject"]] = event
        return found

    outcomes = eventually(
        succeeded,
        60,
        f"a reflux.run.succeeded line for each of {sorted(expected)} in the sink file",
        until=lambda found: set(expected) <= set(found),
        describe=lambda: "sink file:\n" + "\n".join(read_lines(sink_file)),
    )
    for run_id, greeting in expected.items():
        event = outcomes[run_id]
        assert event["specversion"] == "1.0"
        assert event["source"] == f"reflux://{prefix}"
        assert event["datacontenttype"] == "application/json"
        assert event["data"]["run_id"] == run_id
        assert event["data"]["workflow_id"] == "connect-greeting"
        assert event["data"]["status"] == "succeeded"
        assert event["data"]["outputs"] == {"greeting": greeting}

    # The file holds exactly the topic's records, byte for byte (StringConverter, no wrapping).
    lines = read_lines(sink_file)
    assert sorted(line.encode() for line in lines) == sorted(topic_values(settings, outcomes_topic))
    assert {json.loads(line)["subject"] for line in lines} == set(expected)

    # The source connector is at-least-once: the same lines again start no second run. One new
    # trigger after them, then every trigger routed and every command taken by the scheduler:
    # only the new run has outcomes more.
    late = {**triggers[0], "idempotency_key": "greeting-late", "payload": {"name": "Late"}}
    with source_file.open("a", encoding="utf-8") as out:
        out.write((EXAMPLES / "triggers.jsonl").read_text() + json.dumps(late) + "\n")
    late_run = run_id_for_trigger(late["source"], late["idempotency_key"])
    assert harness.wait(late_run, timeout=60).status == "succeeded"
    catalog = harness.engine.catalog
    for group, topic in (
        (f"{prefix}.trigger-router", catalog.triggers.topic),
        (f"{prefix}.scheduler", catalog.commands.topic),
    ):
        eventually(
            functools.partial(committed_past_every_record, settings, group, topic),
            60,
            f"group {group} to have processed every record of {topic}",
            until=lambda behind: not behind,
        )
    final = topic_values(settings, outcomes_topic)
    types_per_run: dict[str, list[str]] = {}
    for value in final:
        event = json.loads(value)
        types_per_run.setdefault(event["subject"], []).append(event["type"])
    assert types_per_run == {
        run_id: ["reflux.run.started", "reflux.run.succeeded"] for run_id in [*expected, late_run]
    }
    eventually(
        lambda: sorted(line.encode() for line in read_lines(sink_file)),
        60,
        "the sink file to hold the late run's outcomes too",
        until=lambda got: got == sorted(final),
    )


class _TestWorker(KafkaConnect):
    """Another worker, the test's own: the jars the local worker resolved, its config, log and
    pid in ``root`` (the test's folder), its group and internal topics under the settings'
    (the test's) prefix."""

    name = "connect-test-worker"

    def __init__(self, settings: Settings, root: Path) -> None:
        super().__init__(settings)
        self.shared = KafkaConnect(settings)
        self.root = root
        self.log_file = root / "connect.log"
        self.pid_file = root / "connect.pid"

    @property
    def libs(self) -> Path:
        return self.shared.libs

    @property
    def plugin_path(self) -> Path:
        return self.shared.plugin_path

    def install(self) -> None:
        """Nothing: the session's worker resolved the jars (``connect_worker``)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_worker_on_the_sasl_ssl_listener(
    connect_worker: ConnectRest, kafka_settings: Settings, admin: AdminClient, tmp_path: Path
) -> None:
    """With the settings of a client of the SASL_SSL listener (SCRAM user, local CA) the same
    service code runs a worker whose own clients and connectors' clients all authenticate."""
    settings = kafka_settings.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{Kafka(kafka_settings).sasl_port}",
            "kafka_security_protocol": "SASL_SSL",
            "connect_url": f"http://127.0.0.1:{free_port()}",
        }
    )
    topic = f"{settings.topic_prefix}.connect-sasl"
    create_topic(admin, topic, 1)
    source_file = tmp_path / "in.jsonl"
    lines = [json.dumps({"over": "SASL_SSL", "n": i}) for i in range(5)]
    source_file.write_text("".join(f"{line}\n" for line in lines))
    worker = _TestWorker(settings, tmp_path / "worker")
    try:
        worker.start()
        config = worker.config_file.read_text()
        assert "bootstrap.servers=127.0.0.1:19094" in config
        assert "producer.security.protocol=SASL_SSL" in config
        assert stat.S_IMODE(worker.config_file.stat().st_mode) == 0o600  # it holds the password
        test_connectors = Connectors(worker.rest(), settings)
        try:
            test_connectors.create(SOURCE_EXAMPLE, file=str(source_file), topic=topic)
            values = eventually(
                lambda: topic_values(kafka_settings, topic),
                60,
                f"the {len(lines)} lines on {topic}",
                until=lambda got: len(got) >= len(lines),
            )
            assert values == [line.encode() for line in lines]
        finally:
            test_connectors.delete_all()
    finally:
        worker.stop()

    def delete_worker_group() -> str | None:
        future = admin.delete_consumer_groups([worker.group_id], request_timeout=10)
        try:
            future[worker.group_id].result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.GROUP_ID_NOT_FOUND:
                return str(exc)
        return None

    eventually(
        delete_worker_group, 30, f"group {worker.group_id} deleted", until=lambda e: e is None
    )
