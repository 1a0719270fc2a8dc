"""Topic admin against the real broker: idempotent creation, mismatches refused, data untouched."""

# Fixtures are imported from kafka_fixtures (conftest.py belongs to the lead); pytest injects
# them by parameter name, which ruff reads as redefinition.
# ruff: noqa: F401, F811

from __future__ import annotations

import argparse
import io
import json

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import Producer as RawProducer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from schemas.models import NodeCatalogEntry, NodeStatus
from streams.admin import (
    TopicMismatchError,
    TopicRefusedError,
    create_missing_topics,
    describe_topics,
    ensure_topics,
)
from streams.cli import add_topics_commands
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import admin, catalog, kafka_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_ensure_topics_is_idempotent(catalog: TopicCatalog, admin: AdminClient) -> None:
    first = ensure_topics(catalog, admin=admin)
    assert sorted(first.created) == sorted(s.topic for s in catalog)
    assert first.unchanged == ()

    second = ensure_topics(catalog, admin=admin)
    assert second.created == ()
    assert sorted(second.unchanged) == sorted(s.topic for s in catalog)
    assert second.drift == ()

    states = {s.spec.logical: s for s in describe_topics(catalog, admin=admin)}
    assert {s.status for s in states.values()} == {"ok"}
    assert states["runs"].partitions == 3
    assert states["runs"].configs["retention.ms"] == "-1"
    assert states["workflows"].configs["cleanup.policy"] == "compact"
    assert states["commands"].partitions == states["results"].partitions == 3


def test_invoke_topics_are_created_on_demand(catalog: TopicCatalog, admin: AdminClient) -> None:
    spec = catalog.invoke_topic("http.request", 1)
    report = ensure_topics(catalog, [spec], admin=admin)
    assert report.created == (f"{catalog.prefix}.invoke.http.request.v1",)
    assert spec.topic in admin.list_topics(timeout=5).topics


def test_wrong_partition_count_is_refused_and_left_untouched(
    catalog: TopicCatalog, admin: AdminClient, kafka_settings: Settings
) -> None:
    runs = catalog.runs.topic
    workflows = catalog.workflows.topic
    futures = admin.create_topics(
        [
            NewTopic(runs, num_partitions=2, replication_factor=1),
            NewTopic(workflows, 3, 1, config={"cleanup.policy": "delete"}),
        ]
    )
    for future in futures.values():
        future.result(timeout=10)
    producer = RawProducer({**kafka_client_config(kafka_settings)})
    producer.produce(runs, value=b"precious", key=b"run-1")
    assert producer.flush(10) == 0

    with pytest.raises(TopicMismatchError) as info:
        ensure_topics(catalog, admin=admin)
    message = str(info.value)
    assert f"Expected topic '{runs}' to have partitions=3, but it has partitions=2" in message
    assert f"'{workflows}' to have cleanup.policy=compact, but it has cleanup.policy=delete" in (
        message
    )
    assert "nothing was changed" in message
    assert isinstance(info.value, ConfigurationError)
    assert {(m.topic, m.setting) for m in info.value.mismatches} == {
        (runs, "partitions"),
        (workflows, "cleanup.policy"),
    }

    # Nothing was created, altered or deleted.
    existing = admin.list_topics(timeout=5).topics
    assert len(existing[runs].partitions) == 2
    assert catalog.commands.topic not in existing
    probe = RawConsumer({**kafka_client_config(kafka_settings), "group.id": "probe"})
    try:
        total = 0
        for partition in (0, 1):
            low, high = probe.get_watermark_offsets(TopicPartition(runs, partition), timeout=5)
            total += high - low
        assert total == 1
    finally:
        probe.close()


def test_cli_create_and_list(kafka_settings: Settings, admin: AdminClient) -> None:
    parser = argparse.ArgumentParser(prog="reflux")
    add_topics_commands(parser.add_subparsers(dest="command", required=True))
    common = [
        "--bootstrap",
        kafka_settings.kafka_bootstrap,
        "--prefix",
        kafka_settings.topic_prefix,
        "--invoke",
        "code.run:2",
    ]
    out = io.StringIO()
    args = parser.parse_args(["topics", "create", *common])
    assert args.handler(args, out) == 0
    expected = len(list(TopicCatalog.from_settings(kafka_settings))) + 1  # + the invoke topic
    assert f"{expected} created, 0 unchanged" in out.getvalue()

    out = io.StringIO()
    args = parser.parse_args(["topics", "list", *common])
    assert args.handler(args, out) == 0
    table = out.getvalue()
    assert f"{kafka_settings.topic_prefix}.invoke.code.run.v2" in table
    assert "missing" not in table and "mismatch" not in table

    out = io.StringIO()
    args = parser.parse_args(["topics", "list", *common, "--json"])
    assert args.handler(args, out) == 0
    listed = {t["topic"]: t for t in json.loads(out.getvalue())["data"]}
    invoke = listed[f"{kafka_settings.topic_prefix}.invoke.code.run.v2"]
    assert invoke["status"] == "ok"
    assert invoke["actual"]["partitions"] == invoke["want"]["partitions"]
    assert len(listed) == expected and all(t["status"] == "ok" for t in listed.values())


def test_create_missing_topics_leaves_existing_ones_and_classifies_refusals(
    catalog: TopicCatalog, admin: AdminClient
) -> None:
    present = catalog.invoke_topic("present.node", 1)
    # An existing topic is used as it is, even with another partition count than the catalog's.
    for future in admin.create_topics([NewTopic(present.topic, 1, 1)]).values():
        future.result(10)
    fresh = catalog.invoke_topic("fresh.node", 3)
    assert create_missing_topics([present, fresh], admin=admin) == [fresh.topic]
    assert len(admin.list_topics(timeout=5).topics[fresh.topic].partitions) == fresh.partitions
    assert len(admin.list_topics(timeout=5).topics[present.topic].partitions) == 1
    assert create_missing_topics([present, fresh], admin=admin) == []  # idempotent
    # Kafka refuses for good a name that differs from an existing one only by '.' vs '_'.
    clash = catalog.invoke_topic("present_node", 1)
    with pytest.raises(TopicRefusedError, match="collides") as refused:
        create_missing_topics([clash], admin=admin)
    assert refused.value.error_class == "TopicRefused" and not refused.value.retryable
    assert clash.topic not in admin.list_topics(timeout=5).topics


def test_cli_create_adds_the_invoke_topics_of_the_node_catalog(
    kafka_settings: Settings, admin: AdminClient
) -> None:
    parser = argparse.ArgumentParser(prog="reflux")
    add_topics_commands(parser.add_subparsers(dest="command", required=True))
    catalog = TopicCatalog.from_settings(kafka_settings)  # the names (the CLI's partitions)
    common = ["--bootstrap", kafka_settings.kafka_bootstrap, "--prefix", catalog.prefix]
    wanted = {catalog.invoke_topic("echo", 1).topic, catalog.invoke_topic("echo", 2).topic}

    out = io.StringIO()
    args = parser.parse_args(["topics", "create", *common])  # the nodes topic, still empty
    assert args.handler(args, out) == 0, out.getvalue()
    with Producer(kafka_settings, client_id="topics-cli-test") as producer:
        for version in ("1.0.0", "2.1.0", "2.2.0"):
            entry = NodeCatalogEntry(
                name="echo", version=version, status=NodeStatus.DRAFT, rollout_weight=0, manifest={}
            )
            producer.send(catalog.nodes, f"echo@{version}", entry)
        producer.flush(10)

    out = io.StringIO()
    args = parser.parse_args(["topics", "create", "--no-catalog-nodes", *common])
    assert args.handler(args, out) == 0, out.getvalue()
    assert not wanted & set(admin.list_topics(timeout=5).topics)

    out = io.StringIO()
    args = parser.parse_args(["topics", "create", *common])
    assert args.handler(args, out) == 0, out.getvalue()
    assert "2 created" in out.getvalue(), out.getvalue()
    assert wanted <= set(admin.list_topics(timeout=5).topics)

    out = io.StringIO()
    args = parser.parse_args(["topics", "list", *common])
    assert args.handler(args, out) == 0, out.getvalue()
    assert all(topic in out.getvalue() for topic in wanted)
