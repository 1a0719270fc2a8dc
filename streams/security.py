"""Kafka client security: one settings model, one mapping per client library.

Every Kafka client of REFLUX is configured from the same ``REFLUX_KAFKA_*`` settings
(:class:`~foundation.settings.Settings`): ``kafka_security_protocol`` (PLAINTEXT, SSL,
SASL_PLAINTEXT, SASL_SSL), ``kafka_sasl_mechanism`` (SCRAM-SHA-512 by default),
``kafka_sasl_username``, ``kafka_sasl_password`` or ``kafka_sasl_password_file``,
``kafka_ssl_cafile`` (and a client certificate/key for mutual TLS). :func:`kafka_security`
validates them once into a :class:`KafkaSecurity`; the functions below translate it for each
library, so no client spells a security option itself:

- :func:`librdkafka_config` / :func:`kafka_client_config`: confluent-kafka producers,
  consumers and admin clients (and kcat, :func:`kcat_args`, which is librdkafka too);
- :func:`faust_credentials`: faust apps (``broker_credentials=``; faust hands them to aiokafka);
- :func:`aiokafka_config`: plain aiokafka clients;
- :func:`clickhouse_kafka_settings`: the ClickHouse Kafka table engine's ``SETTINGS``;
- :func:`java_client_properties`: Java tools and Kafka Connect (``--command-config``).

With a SASL protocol and no username/password set, the local broker's SCRAM user is used (the
one `make up` creates, password in ``var/kafka/scram/password``, mode 0600); with an SSL protocol
and no CA set, the local broker's generated CA (``var/kafka/tls/ca.pem``) when it exists, else
the system's CAs. Docs: docs/kafka-security.md, ADR 0048.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from foundation.errors import ConfigurationError
from foundation.settings import Settings, get_settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = [
    "LOCAL_SCRAM_USER",
    "KafkaSecurity",
    "aiokafka_config",
    "clickhouse_kafka_config_xml",
    "clickhouse_kafka_mechanism",
    "clickhouse_kafka_settings",
    "faust_credentials",
    "java_client_properties",
    "kafka_client_config",
    "kafka_security",
    "kcat_args",
    "librdkafka_config",
    "local_ca_file",
    "local_scram_password_file",
    "ssl_context",
]

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]

LOCAL_SCRAM_USER: Final = "reflux"
"""The SCRAM user the local broker (infra/services/kafka.py) creates."""
_MAX_PASSWORD_FILE_BYTES: Final = 4096


def local_scram_password_file(data_dir: Path) -> Path:
    """Where the local broker keeps its SCRAM user's generated password (mode 0600)."""
    return data_dir / "kafka" / "scram" / "password"


def local_ca_file(data_dir: Path) -> Path:
    """The CA certificate (PEM) the local broker's TLS certificate is signed with."""
    return data_dir / "kafka" / "tls" / "ca.pem"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Validated client security settings. ``repr`` never shows the password."""

    protocol: Protocol = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    check_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")


def _read_password_file(path: Path) -> str:
    try:
        data = path.read_bytes()[: _MAX_PASSWORD_FILE_BYTES + 1]
    except OSError as exc:
        raise ConfigurationError(
            f"Expected kafka_sasl_password_file (REFLUX_KAFKA_SASL_PASSWORD_FILE) {path} to be "
            f"readable, but: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > _MAX_PASSWORD_FILE_BYTES:
        raise ConfigurationError(
            f"Expected kafka_sasl_password_file {path} to hold a password of at most "
            f"{_MAX_PASSWORD_FILE_BYTES} bytes, but it is larger"
        )
    try:
        return data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"Expected kafka_sasl_password_file {path} to be UTF-8 text, but it is not"
        ) from None


def _existing_file(path: Path, setting: str) -> Path:
    if not path.is_file():
        raise ConfigurationError(
            f"Expected {setting} (REFLUX_{setting.upper()}) to name an existing file, "
            f"but {path} is not one"
        )
    return path


def kafka_security(settings: Settings | None = None) -> KafkaSecurity:
    """Validate the settings' Kafka security (raises ``ConfigurationError`` naming the setting)."""
    settings = settings or get_settings()
    protocol: Protocol = settings.kafka_security_protocol
    username = password = ""
    if protocol.startswith("SASL_"):
        username = settings.kafka_sasl_username
        password_file = settings.kafka_sasl_password_file
        if settings.kafka_sasl_password is not None and password_file is None:
            password = settings.kafka_sasl_password.get_secret_value()
        else:
            if password_file is None and not username:
                # Nothing configured: the local broker's own SCRAM user, if `make up` made one.
                local = local_scram_password_file(settings.data_dir)
                if local.is_file():
                    password_file = local
                    username = LOCAL_SCRAM_USER
            if password_file is not None:
                password = _read_password_file(password_file)
        if not username:
            raise ConfigurationError(
                f"Expected kafka_sasl_username (REFLUX_KAFKA_SASL_USERNAME) with "
                f"kafka_security_protocol={protocol}, but it is empty (and the local broker's "
                f"SCRAM password file {local_scram_password_file(settings.data_dir)} is absent)"
            )
        if not password:
            raise ConfigurationError(
                "Expected kafka_sasl_password (REFLUX_KAFKA_SASL_PASSWORD) or "
                f"kafka_sasl_password_file with kafka_security_protocol={protocol}, but neither "
                "holds a password"
            )
    cafile = certfile = keyfile = None
    if protocol.endswith("SSL"):
        if settings.kafka_ssl_cafile is not None:
            cafile = _existing_file(settings.kafka_ssl_cafile, "kafka_ssl_cafile")
        elif local_ca_file(settings.data_dir).is_file():
            cafile = local_ca_file(settings.data_dir)
        if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
            raise ConfigurationError(
                "Expected kafka_ssl_certfile and kafka_ssl_keyfile together (mutual TLS), but "
                "only one is set"
            )
        if settings.kafka_ssl_certfile is not None and settings.kafka_ssl_keyfile is not None:
            certfile = _existing_file(settings.kafka_ssl_certfile, "kafka_ssl_certfile")
            keyfile = _existing_file(settings.kafka_ssl_keyfile, "kafka_ssl_keyfile")
    return KafkaSecurity(
        protocol=protocol,
        mechanism=settings.kafka_sasl_mechanism if protocol.startswith("SASL_") else "",
        username=username,
        password=password,
        cafile=cafile,
        certfile=certfile,
        keyfile=keyfile,
        check_hostname=settings.kafka_ssl_check_hostname,
    )


def _security(settings: Settings | KafkaSecurity | None) -> KafkaSecurity:
    return settings if isinstance(settings, KafkaSecurity) else kafka_security(settings)


# -- librdkafka (confluent-kafka, kcat) ------------------------------------------------------------


def librdkafka_config(settings: Settings | KafkaSecurity | None = None) -> dict[str, str]:
    """The librdkafka properties of the security settings (empty for PLAINTEXT)."""
    security = _security(settings)
    if security.protocol == "PLAINTEXT":
        return {}
    config = {"security.protocol": security.protocol.lower()}
    if security.sasl:
        config |= {
            "sasl.mechanisms": security.mechanism,
            "sasl.username": security.username,
            "sasl.password": security.password,
        }
    if security.tls:
        if security.cafile is not None:
            config["ssl.ca.location"] = str(security.cafile)
        # librdkafka verifies the certificate chain by default; this adds the host name check.
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if security.check_hostname else "none"
        )
        if security.certfile is not None and security.keyfile is not None:
            config["ssl.certificate.location"] = str(security.certfile)
            config["ssl.key.location"] = str(security.keyfile)
    return config


def kafka_client_config(settings: Settings | None = None) -> dict[str, Any]:
    """``bootstrap.servers`` plus the security properties: the base of every confluent-kafka
    client's config."""
    settings = settings or get_settings()
    return {"bootstrap.servers": settings.kafka_bootstrap, **librdkafka_config(settings)}


def kcat_args(settings: Settings | None = None) -> list[str]:
    """``kcat`` command-line arguments (kcat is librdkafka: the same properties, as ``-X``)."""
    settings = settings or get_settings()
    args = ["-b", settings.kafka_bootstrap]
    for key, value in librdkafka_config(settings).items():
        args += ["-X", f"{key}={value}"]
    return args


# -- Python ssl (faust, aiokafka) ------------------------------------------------------------------


def ssl_context(settings: Settings | KafkaSecurity | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the broker against the configured CA (or the
    system's) and, unless disabled, its host name."""
    security = _security(settings)
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(security.cafile) if security.cafile else None
    )
    context.check_hostname = security.check_hostname
    if security.certfile is not None and security.keyfile is not None:
        context.load_cert_chain(str(security.certfile), str(security.keyfile))
    return context


def faust_credentials(settings: Settings | KafkaSecurity | None = None) -> CredentialsT | None:
    """``faust.App(broker_credentials=...)``: faust passes them to its aiokafka consumer,
    producer and admin client (``credentials_to_aiokafka_auth``). ``None`` for PLAINTEXT."""
    import faust

    security = _security(settings)
    if security.protocol == "PLAINTEXT":
        return None
    if security.protocol == "SSL":
        return faust.SSLCredentials(ssl_context(security))
    # SASLCredentials switches itself to SASL_SSL when it gets an SSL context.
    return faust.SASLCredentials(
        username=security.username,
        password=security.password,
        mechanism=security.mechanism,
        ssl_context=ssl_context(security) if security.tls else None,
    )


def aiokafka_config(settings: Settings | KafkaSecurity | None = None) -> dict[str, Any]:
    """Keyword arguments for plain aiokafka clients (``AIOKafkaConsumer(**...)``)."""
    security = _security(settings)
    config: dict[str, Any] = {"security_protocol": security.protocol}
    if security.sasl:
        config |= {
            "sasl_mechanism": security.mechanism,
            "sasl_plain_username": security.username,
            "sasl_plain_password": security.password,
        }
    if security.tls:
        config["ssl_context"] = ssl_context(security)
    return config


# -- ClickHouse Kafka table engine -----------------------------------------------------------------


def clickhouse_kafka_mechanism(settings: Settings) -> str:
    """ClickHouse's SASL mechanism: ``clickhouse_kafka_sasl_mechanism``, else PLAIN for the
    embedded chdb (chdb 3.7.2's librdkafka has no SCRAM: "No provider for SASL mechanism
    SCRAM-SHA-512 ... Current build options: PLAIN"), else the clients' mechanism."""
    if settings.clickhouse_kafka_sasl_mechanism is not None:
        return settings.clickhouse_kafka_sasl_mechanism
    if settings.resolved_clickhouse_dsn().startswith("chdb://"):
        return "PLAIN"
    return settings.kafka_sasl_mechanism


def clickhouse_kafka_settings(settings: Settings | None = None) -> dict[str, str]:
    """``SETTINGS`` of a ClickHouse ``ENGINE = Kafka`` table (values unquoted).

    ClickHouse has table settings for the protocol and SASL, not for the CA: the CA goes into
    the server's config (``<kafka><ssl_ca_location>``, :func:`clickhouse_kafka_config_xml`),
    which the embedded chdb session is started with (projections/clickhouse.py).
    """
    settings = settings or get_settings()
    security = kafka_security(settings)
    if security.protocol == "PLAINTEXT":
        return {}
    out = {"kafka_security_protocol": security.protocol.lower()}
    if security.sasl:
        out |= {
            "kafka_sasl_mechanism": clickhouse_kafka_mechanism(settings),
            "kafka_sasl_username": security.username,
            "kafka_sasl_password": security.password,
        }
    return out


def clickhouse_kafka_config_xml(settings: Settings | None = None) -> str | None:
    """A ClickHouse config file giving its Kafka engine the CA (``None``: nothing to give)."""
    security = kafka_security(settings)
    if not security.tls or security.cafile is None:
        return None
    ca = escape(str(security.cafile))
    return f"<clickhouse><kafka><ssl_ca_location>{ca}</ssl_ca_location></kafka></clickhouse>\n"


# -- Java clients (Kafka CLI tools, Kafka Connect) -------------------------------------------------


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_client_properties(settings: Settings | KafkaSecurity | None = None) -> str:
    """A client ``.properties`` text for Java tools (``kafka-topics --command-config``) and
    Kafka Connect workers (prefix each line with ``producer.``/``consumer.``/``admin.``)."""
    security = _security(settings)
    lines = [f"security.protocol={security.protocol}"]
    if security.sasl:
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if security.mechanism == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        lines += [
            f"sasl.mechanism={security.mechanism}",
            f"sasl.jaas.config={module} required username={_jaas_quote(security.username)} "
            f"password={_jaas_quote(security.password)};",
        ]
    if security.tls:
        if security.cafile is not None:
            lines += ["ssl.truststore.type=PEM", f"ssl.truststore.location={security.cafile}"]
        if not security.check_hostname:
            lines.append("ssl.endpoint.identification.algorithm=")
    return "\n".join(lines) + "\n"
