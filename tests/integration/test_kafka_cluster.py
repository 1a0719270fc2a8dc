"""The local three-broker cluster (ADR 0065) on its own: replication, a killed leader, SASL.

One private cluster: a topic created from the catalog's settings gets 3 replicas and
``min.insync.replicas=2``; after ``kill -9`` of the leader of a partition, the scheduler's
end-offset request (``processors.scheduler.runtime.recovery``), through an admin client that
knew the old leader, answers every partition's real end (it used to answer -1001 for the killed
leader's partitions, which recovery took as an empty partition); the node comes back and the
cluster gets in sync; every node serves the SASL_SSL listener with the local CA and user.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._metadata import TopicMetadata

from foundation.settings import Settings
from infra.services.kafka_cluster import KafkaCluster
from processors.scheduler.runtime.recovery import end_offsets
from streams.admin import admin_client, ensure_topics
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from tests.support.private_kafka import private_cluster
from tests.support.waiting import eventually

RECORDS = 60
PARTITIONS = 6


@pytest.fixture
def cluster(kafka_settings: Settings, tmp_path: Path) -> Iterator[KafkaCluster]:
    with private_cluster(
        kafka_settings,
        tmp_path / "cluster",
        topic_prefix=f"kc-{uuid.uuid4().hex[:6]}",
        default_partitions=PARTITIONS,
    ) as started:
        yield started


@pytest.mark.timeout(300)
def test_killed_leader_replication_and_sasl(cluster: KafkaCluster) -> None:
    settings = cluster.settings
    assert cluster.brokers() == {1, 2, 3}
    catalog = TopicCatalog.from_settings(settings)
    topic = catalog.runs.topic
    ensure_topics(catalog, [catalog.runs], settings=settings)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})

    def described_with_leaders() -> TopicMetadata:
        # Created a moment ago: another broker's metadata may not list its partitions yet.
        found = admin.list_topics(topic, timeout=10).topics[topic]
        assert len(found.partitions) == PARTITIONS, found.partitions
        assert all(p.leader > 0 for p in found.partitions.values()), found.partitions
        return found

    described = eventually(described_with_leaders, 30, f"{topic}'s partitions and leaders")
    assert {len(p.replicas) for p in described.partitions.values()} == {3}

    def min_insync() -> str:
        configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        try:
            (entries,) = (future.result(timeout=10) for future in configs.values())
        except KafkaException as exc:  # a broker that does not list the topic yet
            raise AssertionError(str(exc)) from exc
        return str(entries["min.insync.replicas"].value)

    assert eventually(min_insync, 30, f"{topic}'s configs") == "2"

    producer = Producer({**kafka_client_config(settings), "acks": "all"})
    for i in range(RECORDS):
        producer.produce(topic, value=b"x", partition=i % PARTITIONS)
    assert producer.flush(30) == 0
    expected = {p: RECORDS // PARTITIONS for p in range(PARTITIONS)}
    long_lived = admin_client(settings)  # as the scheduler's: it has cached the leaders
    assert end_offsets(long_lived, [topic], range(PARTITIONS), timeout=30)[topic] == expected

    victim = described.partitions[0].leader
    cluster.kill9(victim)
    eventually(lambda: victim not in cluster.brokers(), 60, f"broker {victim} fenced")
    ends = end_offsets(long_lived, [topic], range(PARTITIONS), timeout=60)[topic]
    assert ends == expected, f"end offsets after kill -9 of broker {victim}: {ends}"

    cluster.start_node(victim)
    cluster.wait_in_sync(120)
    assert cluster.under_replicated() == []

    secured = settings.model_copy(
        update={
            "kafka_security_protocol": "SASL_SSL",
            "kafka_bootstrap": ",".join(f"127.0.0.1:{n.sasl_port}" for n in cluster.nodes),
        }
    )
    brokers = AdminClient(kafka_client_config(secured)).list_topics(timeout=20).brokers
    assert {b.port for b in brokers.values()} == {n.sasl_port for n in cluster.nodes}
