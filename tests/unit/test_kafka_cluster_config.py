"""Cluster mode of the local Kafka (ADR 0065): settings defaults, rendered node configs, the
stack's choice of service and the refusal to run the single broker beside a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from foundation.settings import Settings
from infra import stack
from infra.services.base import ServiceError
from infra.services.kafka import Kafka
from infra.services.kafka_cluster import KafkaCluster
from streams.topics import TopicCatalog, min_insync_replicas


def properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def rendered(kafka: Kafka) -> dict[str, str]:
    kafka.root.mkdir(parents=True, exist_ok=True)
    kafka.render_config()
    return properties(kafka.config_file)


def test_brokers_default_the_bootstrap_and_the_replication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KAFKA_BOOTSTRAP", "KAFKA_LOCAL_PORT", "REPLICATION_FACTOR"):
        monkeypatch.delenv(f"REFLUX_{name}", raising=False)
    monkeypatch.setenv("REFLUX_KAFKA_BROKERS", "3")
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:19092,127.0.0.1:19095,127.0.0.1:19098"
    assert settings.replication_factor == 3
    catalog = TopicCatalog.from_settings(settings)
    assert catalog.runs.replication == 3
    assert min_insync_replicas(catalog.runs.replication, settings.min_insync_replicas) == 2


def test_brokers_base_port_is_the_local_port_and_explicit_values_win() -> None:
    based = Settings(kafka_brokers=3, kafka_local_port=29092)
    assert based.kafka_bootstrap == "127.0.0.1:29092,127.0.0.1:29095,127.0.0.1:29098"
    explicit = Settings(kafka_brokers=3, kafka_bootstrap="127.0.0.1:29092", replication_factor=2)
    assert (explicit.kafka_bootstrap, explicit.replication_factor) == ("127.0.0.1:29092", 2)
    assert Settings(kafka_brokers=2).replication_factor == 2


def test_one_broker_is_todays_single_broker() -> None:
    settings = Settings()
    assert (settings.kafka_brokers, settings.kafka_bootstrap) == (1, "127.0.0.1:19092")
    assert settings.replication_factor == 1


def test_single_broker_renders_one_voter_and_replication_one(tmp_path: Path) -> None:
    config = rendered(Kafka(Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:29092")))
    assert config["node.id"] == "1"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert config["listeners"] == (
        "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093,SASL_SSL://127.0.0.1:29094"
    )
    assert config["log.dirs"] == str(tmp_path / "kafka" / "data")
    replication = (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
    )
    assert {key: config[key] for key in replication} == dict.fromkeys(replication, "1")


def test_cluster_node_renders_its_ports_the_quorum_and_replication_three(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_brokers=3, kafka_local_port=29092)
    cluster = KafkaCluster(settings)
    assert cluster.bootstrap == "127.0.0.1:29092,127.0.0.1:29095,127.0.0.1:29098"
    config = rendered(cluster.nodes[1])
    assert config["node.id"] == "2"
    assert config["controller.quorum.voters"] == (
        "1@127.0.0.1:29093,2@127.0.0.1:29096,3@127.0.0.1:29099"
    )
    assert config["listeners"] == (
        "PLAINTEXT://127.0.0.1:29095,CONTROLLER://127.0.0.1:29096,SASL_SSL://127.0.0.1:29097"
    )
    assert config["log.dirs"] == str(tmp_path / "kafka-cluster" / "node-2" / "data")
    # The same CA and certificate as the single broker: clients verify every node with one CA.
    assert config["listener.name.sasl_ssl.ssl.keystore.location"] == str(
        tmp_path / "kafka" / "tls" / "broker-keystore.pem"
    )
    assert config["default.replication.factor"] == "3"
    assert config["offsets.topic.replication.factor"] == "3"
    assert config["transaction.state.log.replication.factor"] == "3"
    assert config["transaction.state.log.min.isr"] == "2"
    assert config["min.insync.replicas"] == "2"
    assert cluster.nodes[1].pid_file == tmp_path / "run" / "kafka-node-2.pid"


def test_nodes_share_one_cluster_id(tmp_path: Path) -> None:
    cluster = KafkaCluster(Settings(data_dir=tmp_path, kafka_brokers=3))
    assert len({node.cluster_id() for node in cluster.nodes}) == 1
    assert Kafka(Settings(data_dir=tmp_path)).cluster_id() != cluster.nodes[0].cluster_id()


def test_stack_picks_the_cluster_and_shows_each_node(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_brokers=3)
    (kafka,) = stack.services(settings, ["kafka"])
    assert isinstance(kafka, KafkaCluster)
    assert [row.name for row in kafka.statuses()] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [row.endpoint.split()[0] for row in kafka.statuses()] == [
        "127.0.0.1:19092",
        "127.0.0.1:19095",
        "127.0.0.1:19098",
    ]
    (single,) = stack.services(Settings(data_dir=tmp_path), ["kafka"])
    assert type(single) is Kafka


def _running(pid_file: Path) -> None:
    """A pid file naming a live process (this one): what a running service leaves."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))


def test_single_broker_refuses_to_start_beside_a_cluster(tmp_path: Path) -> None:
    _running(tmp_path / "run" / "kafka-node-2.pid")
    with pytest.raises(ServiceError, match=r"make down CLUSTER="):
        Kafka(Settings(data_dir=tmp_path)).start()


def test_cluster_refuses_to_start_beside_the_single_broker(tmp_path: Path) -> None:
    _running(tmp_path / "run" / "kafka.pid")
    with pytest.raises(ServiceError, match=r"single Kafka broker runs .*`make down`"):
        KafkaCluster(Settings(data_dir=tmp_path, kafka_brokers=3)).start()
