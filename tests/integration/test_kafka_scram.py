"""Kafka with SASL/SCRAM-SHA-512 over TLS, on a real broker started by the project's own service
class (infra/services/kafka.py) in a temporary data folder, on ports of its own: the shared
broker is never touched.

Shows: the project's clients (producer, consumer, admin, a faust app) work through the SCRAM
listener with nothing configured but the protocol (the local user and CA are found under the
data folder); an anonymous client, a wrong password and a client that does not trust the CA are
refused, with the broker's reason; the broker's certificate verifies against the generated CA,
host name included; files holding secrets are 0600; ``min.insync.replicas`` reaches a created
topic. Self-contained (no conftest fixture), so it also runs with ``--noconftest``.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource, ConfigSource
from confluent_kafka.admin._resource import ResourceType
from pydantic import SecretStr

from foundation.settings import Settings, get_settings
from infra.services.kafka import Kafka
from processors.critic.runtime import CriticProcessor
from schemas.models import RunStarted
from schemas.samples import sample_record
from schemas.trace_json import encode_trace
from streams.admin import admin_client, ensure_topics
from streams.consumer import Consumer
from streams.producer import Producer
from streams.security import (
    LOCAL_SCRAM_USER,
    kafka_client_config,
    kafka_security,
    local_ca_file,
    ssl_context,
)
from streams.topics import TopicCatalog
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(300)


def _free_port_block(size: int = 3) -> int:
    """A base port with ``size`` consecutive free ports above it (PLAINTEXT, controller, SASL)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + size >= 65535:
            continue
        taken = False
        for port in range(base, base + size):
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise RuntimeError("no block of free ports")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kafka]:
    """A second single-node broker, from the project's service class, in a temp data folder."""
    data = tmp_path_factory.mktemp("scram-broker")
    (data / "kafka").mkdir()
    # The jars of the shared installation (resolved by `make up`), not a second Maven download.
    (data / "kafka" / "libs").symlink_to(get_settings().data_dir / "kafka" / "libs")
    port = _free_port_block()
    service = Kafka(Settings(data_dir=data, kafka_bootstrap=f"127.0.0.1:{port}"))
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _secure(broker: Kafka, **extra: object) -> Settings:
    """The project's settings for the SCRAM listener: protocol and address only."""
    return Settings(
        data_dir=broker.settings.data_dir,
        kafka_bootstrap=f"127.0.0.1:{broker.sasl_port}",
        kafka_security_protocol="SASL_SSL",
        topic_prefix=f"scram-{uuid.uuid4().hex[:8]}",
        default_partitions=2,
        **extra,  # type: ignore[arg-type]
    )


def _refusal(config: dict[str, Any]) -> tuple[KafkaError, list[KafkaError]]:
    """A raw librdkafka client fails to fetch metadata: the error raised, then the errors its
    callback reported."""
    errors: list[KafkaError] = []
    full: dict[str, Any] = {**config, "error_cb": errors.append, "log_level": 0}
    admin = AdminClient(full)
    with pytest.raises(KafkaException) as info:
        admin.list_topics(timeout=6)
    admin.poll(1)  # serves the error callbacks
    raised = info.value.args[0]
    assert isinstance(raised, KafkaError)
    return raised, errors


def _broker_said(broker: Kafka, reason: str) -> bool:
    """The broker logs why it closed a connection (INFO "Failed authentication ... (reason)")."""
    return any(
        "Failed authentication" in line and reason in line
        for line in broker.log_file.read_text(errors="replace").splitlines()
    )


def test_local_broker_secrets_are_private(broker: Kafka) -> None:
    data = broker.settings.data_dir
    for path in (broker.scram_password_file, broker.keystore, broker.config_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(local_ca_file(data).stat().st_mode) == 0o644
    assert "BEGIN PRIVATE KEY" in broker.keystore.read_text()
    assert f"SASL_SSL://127.0.0.1:{broker.sasl_port}" in broker.config_file.read_text()
    security = kafka_security(_secure(broker))
    assert security.username == LOCAL_SCRAM_USER
    assert security.password == broker.scram_password_file.read_text().strip()


def test_project_clients_work_through_the_scram_listener(broker: Kafka) -> None:
    settings = _secure(broker)
    catalog = TopicCatalog.from_settings(settings)
    report = ensure_topics(catalog, [catalog.runs], settings=settings)
    assert report.created == (catalog.runs.topic,)
    sent = [sample_record(RunStarted).model_copy(update={"run_id": f"r-{i}"}) for i in range(5)]
    with Producer(settings, client_id="scram-test") as producer:
        for record in sent:
            producer.send(catalog.runs, record.run_id, record)
        producer.flush(30)
    with Consumer([catalog.runs], f"{catalog.prefix}.g", settings, catalog=catalog) as consumer:
        received: list[str] = []

        def poll() -> list[str]:
            received.extend(
                r.value.run_id
                for r in consumer.poll_batch(100, 1.0)
                if isinstance(r.value, RunStarted)
            )
            return received

        eventually(poll, 60, "the records back through SCRAM", until=lambda r: len(r) == 5)
    assert sorted(received) == sorted(r.run_id for r in sent)


def test_anonymous_clients_are_refused(broker: Kafka) -> None:
    address = f"127.0.0.1:{broker.sasl_port}"
    ca = str(local_ca_file(broker.settings.data_dir))
    # TLS but no SASL: the broker wants a SASL handshake first and drops the connection.
    raised, errors = _refusal(
        {"bootstrap.servers": address, "security.protocol": "ssl", "ssl.ca.location": ca}
    )
    assert raised.code() in (KafkaError._TIMED_OUT, KafkaError._TRANSPORT), raised
    assert any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors), errors
    eventually(
        lambda: _broker_said(broker, "Unexpected Kafka request of type METADATA during SASL"),
        10,
        "the broker's reason for refusing the anonymous client",
    )
    # No TLS at all: the listener's TLS handshake fails.
    raised, errors = _refusal({"bootstrap.servers": address})
    assert raised.code() in (KafkaError._TIMED_OUT, KafkaError._TRANSPORT), raised
    assert any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors), errors
    eventually(
        lambda: _broker_said(broker, "SSL handshake failed"),
        10,
        "the broker's reason for refusing the plaintext client",
    )


def test_a_wrong_password_is_refused(broker: Kafka) -> None:
    wrong = _secure(
        broker, kafka_sasl_username=LOCAL_SCRAM_USER, kafka_sasl_password=SecretStr("wrong")
    )
    _, errors = _refusal(kafka_client_config(wrong))
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert any(
        "Authentication failed during authentication due to invalid credentials with SASL "
        "mechanism SCRAM-SHA-512" in e.str()
        for e in errors
    ), errors
    # The same through the project's own admin client: the metadata call fails.
    with pytest.raises(KafkaException):
        admin_client(wrong).list_topics(timeout=6)


def _other_ca(directory: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the broker's CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_tls_is_verified_with_the_generated_ca(broker: Kafka, tmp_path: Path) -> None:
    settings = _secure(broker)
    # The project's TLS context (faust/aiokafka use it): chain and host name verified.
    context = ssl_context(settings)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with (
        socket.create_connection(("127.0.0.1", broker.sasl_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert "'REFLUX local Kafka CA'" in str(tls.getpeercert())
    # A client trusting another CA refuses the broker's certificate.
    distrust = _secure(broker, kafka_ssl_cafile=_other_ca(tmp_path))
    _, errors = _refusal(kafka_client_config(distrust))
    assert any(e.code() == KafkaError._SSL for e in errors), errors
    assert any("certificate verify failed" in e.str() for e in errors), errors
    with (
        socket.create_connection(("127.0.0.1", broker.sasl_port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl_context(distrust).wrap_socket(raw, server_hostname="127.0.0.1")


def test_min_insync_replicas_is_set_on_created_topics(broker: Kafka) -> None:
    # One broker allows replication 1 only: the configured value exercises the creation path
    # (a replicated catalog gets min(2, replication) by the same code, tests/unit).
    settings = _secure(broker, min_insync_replicas=1)
    catalog = TopicCatalog.from_settings(settings)
    ensure_topics(catalog, [catalog.results], settings=settings)
    admin = admin_client(settings)
    resource = ConfigResource(ResourceType.TOPIC, catalog.results.topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    entry = entries["min.insync.replicas"]
    assert entry.value == "1"
    assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, entry
    # Without the setting a single-replica topic keeps the broker's default.
    plain = _secure(broker)
    plain_catalog = TopicCatalog.from_settings(plain)
    ensure_topics(plain_catalog, [plain_catalog.results], settings=plain)
    resource = ConfigResource(ResourceType.TOPIC, plain_catalog.results.topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    assert entries["min.insync.replicas"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_the_critics_faust_app_consumes_through_scram(broker: Kafka, tmp_path: Path) -> None:
    settings = _secure(broker)
    critic = CriticProcessor(settings, data_dir=tmp_path / "faust", schema=None, engine="faust")
    catalog = critic.catalog
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            critic.run(stop)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="critic-scram", daemon=True)
    thread.start()
    try:
        from tests.integration.test_critic import _traces  # the critic test's trace series

        traces = _traces(__import__("random").Random(3))[:50]
        with Producer(settings, client_id="scram-critic") as producer:
            for trace in traces:
                producer.send(catalog.traces.topic, trace.node, encode_trace(trace))

        def consumed() -> int:
            assert not errors, errors
            return critic.stats.consumed

        eventually(consumed, 120, "the faust critic to consume over SCRAM", until=lambda n: n == 50)
    finally:
        stop.set()
        critic.interrupt()
        thread.join(30)
    assert not thread.is_alive(), "the critic did not stop within 30 s"
    assert not errors, errors


def test_clickhouse_ingests_traces_through_the_sasl_listener(broker: Kafka, tmp_path: Path) -> None:
    """The embedded ClickHouse's Kafka table reads the traces topic through the SASL_SSL
    listener (PLAIN inside TLS: chdb's librdkafka has no SCRAM; the CA through its config file).
    A store first created against the PLAINTEXT listener is reconnected by ``apply``."""
    from projections.clickhouse import connect
    from projections.traces.migrations import apply, drop
    from tests.integration.test_traces import _trace

    settings = _secure(broker, clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}")
    plain = settings.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{broker.host_port[1]}",
            "kafka_security_protocol": "PLAINTEXT",
        }
    )
    catalog = TopicCatalog.from_settings(settings)
    ensure_topics(catalog, [catalog.traces], settings=settings)
    ch = connect(settings)
    try:
        apply(ch, plain)  # the store as an older installation made it
        queue = ch.query(
            "SELECT create_table_query AS q FROM system.tables "
            "WHERE database = 'reflux' AND name = 'traces_queue'"
        )[0]["q"]
        assert "kafka_security_protocol" not in queue
        assert apply(ch, settings) == []  # nothing new to apply, but the queue is reconnected
        queue = ch.query(
            "SELECT create_table_query AS q FROM system.tables "
            "WHERE database = 'reflux' AND name = 'traces_queue'"
        )[0]["q"]
        assert f"kafka_broker_list = '127.0.0.1:{broker.sasl_port}'" in queue
        assert "kafka_security_protocol = 'sasl_ssl'" in queue
        assert "kafka_sasl_password = '[HIDDEN]'" in queue
        traces = [_trace(i) for i in range(20)]
        with Producer(settings, client_id="scram-traces") as producer:
            for trace in traces:
                producer.send(catalog.traces.topic, trace.node, encode_trace(trace))

        def rows() -> int:
            return int(ch.query("SELECT count() AS n FROM reflux.traces")[0]["n"])

        def describe() -> str:
            return str(ch.query("SELECT exceptions.text AS e FROM system.kafka_consumers"))

        eventually(rows, 60, "the traces in ClickHouse", until=lambda n: n == 20, describe=describe)
    finally:
        drop(ch)
        ch.close()
