"""The one Kafka security model and its mapping for every client library (no broker needed)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from streams.admin import creation_configs
from streams.consumer import consumer_config
from streams.producer import producer_config
from streams.security import (
    LOCAL_SCRAM_USER,
    aiokafka_config,
    clickhouse_kafka_config_xml,
    clickhouse_kafka_settings,
    faust_credentials,
    java_client_properties,
    kafka_client_config,
    kafka_security,
    kcat_args,
    librdkafka_config,
    local_ca_file,
    local_scram_password_file,
)
from streams.topics import TopicCatalog, TopicCatalogError, min_insync_replicas

# Stands for the local CA file: only its existence matters to kafka_security (never parsed).
_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUX8m1tO4VbH0CFxWn6Qd0c1ZcHqAwCgYIKoZIzj0EAwIw
ETEPMA0GA1UEAwwGdGVzdENBMB4XDTI2MDEwMTAwMDAwMFoXDTM2MDEwMTAwMDAw
MFowETEPMA0GA1UEAwwGdGVzdENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
-----END CERTIFICATE-----
"""


def _ca(tmp_path: Path) -> Path:
    """A real CA certificate file, made with the cryptography package."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _sasl_ssl(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        kafka_bootstrap="127.0.0.1:19094",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr("s3cret-pw"),
        kafka_ssl_cafile=_ca(tmp_path),
        **extra,  # type: ignore[arg-type]
    )


def test_plaintext_adds_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap="b:1")
    assert librdkafka_config(settings) == {}
    assert kafka_client_config(settings) == {"bootstrap.servers": "b:1"}
    assert faust_credentials(settings) is None
    assert clickhouse_kafka_settings(settings) == {}
    assert aiokafka_config(settings) == {"security_protocol": "PLAINTEXT"}
    assert kcat_args(settings) == ["-b", "b:1"]


def test_sasl_ssl_for_librdkafka_clients(tmp_path: Path) -> None:
    settings = _sasl_ssl(tmp_path)
    expected = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cret-pw",
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "https",
    }
    assert librdkafka_config(settings) == expected
    # Every confluent-kafka client the project builds goes through these three.
    for config in (
        producer_config(settings),
        consumer_config("g", settings),
        kafka_client_config(settings),
    ):
        assert config["bootstrap.servers"] == "127.0.0.1:19094"
        assert {k: config[k] for k in expected} == expected
    args = kcat_args(settings)
    assert args[:2] == ["-b", "127.0.0.1:19094"]
    assert "sasl.mechanisms=SCRAM-SHA-512" in args and "security.protocol=sasl_ssl" in args


def test_sasl_ssl_for_faust_as_aiokafka_sees_it(tmp_path: Path) -> None:
    credentials = faust_credentials(_sasl_ssl(tmp_path))
    assert isinstance(credentials, faust.SASLCredentials)
    # What faust's aiokafka driver turns them into (the consumer, producer and admin client).
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("alice", "s3cret-pw")
    context = auth["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert "s3cret-pw" not in repr(credentials)


def test_sasl_plaintext_for_faust_has_no_tls(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="bob",
        kafka_sasl_password=SecretStr("pw"),
    )
    auth = credentials_to_aiokafka_auth(faust_credentials(settings))
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert "ssl.ca.location" not in librdkafka_config(settings)


def test_ssl_only_for_faust_and_aiokafka(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=_ca(tmp_path),
        kafka_ssl_check_hostname=False,
    )
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"
    config = aiokafka_config(settings)
    assert config["security_protocol"] == "SSL" and not config["ssl_context"].check_hostname
    assert librdkafka_config(settings)["ssl.endpoint.identification.algorithm"] == "none"


def test_clickhouse_kafka_engine_settings(tmp_path: Path) -> None:
    server = _sasl_ssl(tmp_path, clickhouse_dsn="http://clickhouse:8123")
    assert clickhouse_kafka_settings(server) == {
        "kafka_security_protocol": "sasl_ssl",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "alice",
        "kafka_sasl_password": "s3cret-pw",
    }
    # chdb's librdkafka has PLAIN only (inside TLS); a setting overrides either default.
    assert clickhouse_kafka_settings(_sasl_ssl(tmp_path))["kafka_sasl_mechanism"] == "PLAIN"
    forced = _sasl_ssl(tmp_path, clickhouse_kafka_sasl_mechanism="SCRAM-SHA-256")
    assert clickhouse_kafka_settings(forced)["kafka_sasl_mechanism"] == "SCRAM-SHA-256"
    # The CA goes into the ClickHouse config file (no table setting exists for it).
    xml = clickhouse_kafka_config_xml(_sasl_ssl(tmp_path))
    assert xml is not None and f"<ssl_ca_location>{tmp_path / 'ca.pem'}</ssl_ca_location>" in xml
    assert clickhouse_kafka_config_xml(Settings(data_dir=tmp_path)) is None


def test_java_client_properties(tmp_path: Path) -> None:
    text = java_client_properties(_sasl_ssl(tmp_path))
    assert "security.protocol=SASL_SSL\n" in text
    assert "sasl.mechanism=SCRAM-SHA-512\n" in text
    assert (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="alice" '
        'password="s3cret-pw";' in text
    )
    assert f"ssl.truststore.location={tmp_path / 'ca.pem'}" in text


def test_password_file_wins_and_loses_its_newline(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    settings = _sasl_ssl(tmp_path, kafka_sasl_password_file=secret)
    assert librdkafka_config(settings)["sasl.password"] == "from-file"


def test_local_broker_user_is_the_default(tmp_path: Path) -> None:
    password = local_scram_password_file(tmp_path)
    password.parent.mkdir(parents=True)
    password.write_text("generated\n")
    ca = local_ca_file(tmp_path)
    ca.parent.mkdir(parents=True)
    ca.write_text(_CA_PEM)
    security = kafka_security(Settings(data_dir=tmp_path, kafka_security_protocol="SASL_SSL"))
    assert (security.username, security.password) == (LOCAL_SCRAM_USER, "generated")
    assert security.cafile == ca
    assert "generated" not in repr(security)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, r"kafka_sasl_username \(REFLUX_KAFKA_SASL_USERNAME\)"),
        ({"kafka_sasl_username": "u"}, r"kafka_sasl_password \(REFLUX_KAFKA_SASL_PASSWORD\)"),
        (
            {"kafka_sasl_username": "u", "kafka_sasl_password_file": Path("/nonexistent/pw")},
            r"kafka_sasl_password_file \(REFLUX_KAFKA_SASL_PASSWORD_FILE\) /nonexistent/pw",
        ),
    ],
)
def test_sasl_without_credentials_is_a_clear_error(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    settings = Settings(data_dir=tmp_path, kafka_security_protocol="SASL_SSL", **extra)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message):
        kafka_security(settings)


def test_missing_ca_file_names_the_setting(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "none.pem"
    )
    with pytest.raises(ConfigurationError, match=r"kafka_ssl_cafile \(REFLUX_KAFKA_SSL_CAFILE\)"):
        librdkafka_config(settings)


def test_mutual_tls_needs_both_files(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_certfile=_ca(tmp_path)
    )
    with pytest.raises(ConfigurationError, match="kafka_ssl_certfile and kafka_ssl_keyfile"):
        kafka_security(settings)


# -- min.insync.replicas -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replication", "configured", "expected"),
    [(1, None, None), (2, None, 2), (3, None, 2), (5, None, 2), (1, 1, 1), (3, 3, 3), (3, 1, 1)],
)
def test_min_insync_replicas_rule(replication: int, configured: int | None, expected: int) -> None:
    assert min_insync_replicas(replication, configured) == expected


@pytest.mark.parametrize(("replication", "configured"), [(1, 2), (3, 0), (3, 4)])
def test_min_insync_replicas_out_of_range(replication: int, configured: int) -> None:
    with pytest.raises(TopicCatalogError, match=r"min_insync_replicas \(REFLUX_MIN_INSYNC"):
        min_insync_replicas(replication, configured)


def test_replicated_topics_are_created_with_min_insync_replicas(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, replication_factor=3)
    catalog = TopicCatalog.from_settings(settings)
    for spec in [*catalog, catalog.invoke_topic("http.request", 1)]:
        configs = creation_configs(spec, settings)
        assert configs["min.insync.replicas"] == "2"
        assert {k: configs[k] for k in spec.configs} == dict(spec.configs)
    single = Settings(data_dir=tmp_path)
    assert "min.insync.replicas" not in creation_configs(
        TopicCatalog.from_settings(single).runs, single
    )


# -- ClickHouse's Kafka table -----------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 7])
def test_traces_queue_is_rendered_with_the_security_settings(tmp_path: Path, version: int) -> None:
    from projections.traces.migrations import INGEST_MIGRATIONS, load_migrations, render
    from projections.traces.migrations import template_params as params_of

    assert version in INGEST_MIGRATIONS
    migrations = {m.version: m for m in load_migrations()}
    before = migrations[version].checksum
    statements = render(migrations[version], params_of(_sasl_ssl(tmp_path)))
    queue = next(s for s in statements if "ENGINE = Kafka" in s)
    assert "kafka_broker_list = '127.0.0.1:19094',\n    kafka_security_protocol = 'sasl_ssl'" in (
        queue
    )
    for fragment in (
        "kafka_sasl_mechanism = 'PLAIN'",  # the default store is chdb
        "kafka_sasl_username = 'alice'",
        "kafka_sasl_password = 's3cret-pw'",
        "kafka_topic_list = 'reflux.traces'",
    ):
        assert fragment in queue
    # The template (and so the checksum an existing store recorded) is unchanged.
    assert {m.version: m for m in load_migrations()}[version].checksum == before
    plain = render(
        migrations[version], params_of(Settings(data_dir=tmp_path, kafka_bootstrap="b:1"))
    )
    assert "kafka_security_protocol" not in next(s for s in plain if "ENGINE = Kafka" in s)
    assert "s3cret-pw" not in repr(params_of(_sasl_ssl(tmp_path)))
