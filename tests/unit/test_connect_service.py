"""The Kafka Connect worker's rendered configuration and the connector files (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from foundation.settings import PROJECT_ROOT, Settings
from infra.services.base import ServiceError
from infra.services.connect import KafkaConnect, load_connector, running_states


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def test_plaintext_worker_on_the_settings_bootstrap(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:29092", topic_prefix="acme")
    config = properties(KafkaConnect(settings).render_config())
    assert config["bootstrap.servers"] == "127.0.0.1:29092"
    assert config["group.id"] == "acme.connect"
    assert config["config.storage.topic"] == "acme.connect-configs"
    assert config["offset.storage.topic"] == "acme.connect-offsets"
    assert config["status.storage.topic"] == "acme.connect-status"
    assert config["listeners"] == "http://127.0.0.1:18083"
    assert config["plugin.path"] == str((tmp_path / "connect" / "plugins").resolve())
    # JSON text passes verbatim unless a connector chooses another converter.
    assert config["value.converter"] == "org.apache.kafka.connect.storage.StringConverter"
    assert config["key.converter"] == "org.apache.kafka.connect.storage.StringConverter"
    for prefix in ("", "producer.", "consumer.", "admin."):
        assert config[f"{prefix}security.protocol"] == "PLAINTEXT"
    # Sinks never deliver outcomes of an aborted scheduler transaction.
    assert config["consumer.isolation.level"] == "read_committed"


def test_sasl_ssl_worker_gives_every_client_the_credentials(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings(
        data_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:19094",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr("s3cret-pw"),
        kafka_ssl_cafile=ca,
        connect_url="http://localhost:28083",
    )
    config = properties(KafkaConnect(settings).render_config())
    assert config["bootstrap.servers"] == "127.0.0.1:19094"
    assert config["listeners"] == "http://localhost:28083"
    # The worker's own clients and those it makes for connectors (which read only their prefix).
    for prefix in ("", "producer.", "consumer.", "admin."):
        assert config[f"{prefix}security.protocol"] == "SASL_SSL"
        assert config[f"{prefix}sasl.mechanism"] == "SCRAM-SHA-512"
        assert 'username="alice" password="s3cret-pw";' in config[f"{prefix}sasl.jaas.config"]
        assert config[f"{prefix}ssl.truststore.type"] == "PEM"
        assert config[f"{prefix}ssl.truststore.location"] == str(ca)


def test_worker_listens_only_on_loopback(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, connect_url="http://0.0.0.0:18083")
    with pytest.raises(ServiceError, match="only listens on loopback"):
        KafkaConnect(settings).render_config()


def test_example_connectors_load_with_overrides() -> None:
    examples = PROJECT_ROOT / "examples" / "connect"
    name, config = load_connector(examples / "triggers-source.json", topic="t.triggers")
    assert name == "reflux-triggers-file-source"
    assert config["topic"] == "t.triggers"
    assert config["connector.class"] == "org.apache.kafka.connect.file.FileStreamSourceConnector"
    assert config["value.converter"] == "org.apache.kafka.connect.storage.StringConverter"
    name, config = load_connector(examples / "outcomes-sink.json")
    assert config["topics"] == "reflux.run-outcomes"
    assert config["value.converter"] == "org.apache.kafka.connect.storage.StringConverter"


def test_example_trigger_lines_are_plain_json_triggers() -> None:
    """Each line is one JSON object with the Trigger record's fields (the contract of the
    triggers topic); a line the source reads is one record."""
    lines = (PROJECT_ROOT / "examples" / "connect" / "triggers.jsonl").read_text().splitlines()
    assert lines
    for line in lines:
        trigger = json.loads(line)
        assert {"source", "source_key", "workflow_id", "payload", "idempotency_key"} <= set(trigger)
        assert set(trigger) <= {
            "source",
            "source_key",
            "workflow_id",
            "workflow_version",
            "payload",
            "idempotency_key",
        }


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"config": {}}, "name: expected a connector name"),
        ({"name": "x"}, "expected {'name': ..., 'config': {...}}"),
        ([], "expected {'name': ..., 'config': {...}}"),
    ],
)
def test_connector_file_errors_name_the_field(tmp_path: Path, document: object, error: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ServiceError) as raised:
        load_connector(path)
    assert error in str(raised.value)


def test_running_states() -> None:
    status = {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "FAILED"}]}
    assert running_states(status) == ("RUNNING", ["FAILED"])
    assert running_states({}) == ("UNKNOWN", [])
