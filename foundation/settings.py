"""The one typed, frozen settings object, built from ``REFLUX_*`` environment variables.

Nothing else in the code base reads ``os.environ`` for configuration: components receive a
``Settings`` instance (or call :func:`get_settings`) so tests and processes can be configured
in one place.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]

# Credentials `make up` generates for the local services live under the data folder, mode 0600
# (docs/decisions/0044-database-access-and-platform-credentials.md); no secret is written in code.
CREDENTIALS_DIR = "credentials"
POSTGRES_PASSFILE = "postgres.pgpass"
"""libpq password file of the platform role (``host:port:*:reflux:password``)."""
POSTGRES_SUPERUSER_FILE = "postgres-superuser.pgpass"
"""The bootstrap superuser's password file: only `make up` (infra) uses it."""
S3_CREDENTIALS = "s3.json"
"""``{"access_key": ..., "secret_key": ...}`` of the local s3proxy."""
DEFAULT_POSTGRES = "postgresql://reflux@127.0.0.1:15432/reflux"
"""The platform database without a password: it comes from the passfile next to the data."""


DEFAULT_KAFKA_PORT = 19092
"""The local broker's PLAINTEXT port (node 1's in cluster mode)."""
KAFKA_PORTS_PER_NODE = 3
"""PLAINTEXT, controller, SASL_SSL: node k of a local cluster starts at base + 3(k-1)."""


def cluster_bootstrap(base_port: int, brokers: int, host: str = "127.0.0.1") -> str:
    """Every node's PLAINTEXT endpoint of a local cluster whose node 1 listens on ``base_port``."""
    return ",".join(f"{host}:{base_port + KAFKA_PORTS_PER_NODE * k}" for k in range(brokers))


def _int_or_none(value: Any) -> int | None:
    """An integer setting as it arrives before validation (an int, or text from the
    environment); anything else is left for validation to reject."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _local_postgres_dsn(data_dir: Path) -> str:
    passfile = data_dir / CREDENTIALS_DIR / POSTGRES_PASSFILE
    return f"{DEFAULT_POSTGRES}?passfile={quote(str(passfile), safe='/')}"


def _local_s3_credentials(data_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((data_dir / CREDENTIALS_DIR / S3_CREDENTIALS).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    keys = ("access_key", "secret_key")
    return {k: v for k, v in data.items() if k in keys and isinstance(v, str)}


class Settings(BaseSettings):
    """Connection and tuning settings; every field maps to ``REFLUX_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="REFLUX_", frozen=True, extra="ignore")

    # Where the local services keep their data (see infra/). One folder for everything.
    data_dir: Path = PROJECT_ROOT / "var"

    kafka_bootstrap: str = "127.0.0.1:19092"
    # Brokers of the local stack (`make up CLUSTER=3`, ADR 0065): 1 is the single broker of
    # var/kafka; above 1 a KRaft cluster of that many nodes under var/kafka-cluster/node-k, node
    # k on port base + 3(k-1) (PLAINTEXT; controller +1, SASL_SSL +2). Above 1 and unset:
    # kafka_bootstrap lists every node's PLAINTEXT endpoint (base: kafka_local_port, else 19092)
    # and replication_factor is min(3, kafka_brokers).
    kafka_brokers: int = Field(default=1, ge=1, le=9)
    # Every topic name starts with this prefix; tests use their own prefix for isolation.
    topic_prefix: str = "reflux"
    default_partitions: int = 6
    replication_factor: int = 1
    # min.insync.replicas of the topics REFLUX creates. Unset: min(2, replication_factor) when
    # that is above 1 (with producers' acks=all a write then survives one broker's loss), else
    # the broker's default. Set: 1..replication_factor, on every topic created.
    min_insync_replicas: int | None = None
    # Kafka client security, mapped for every client library by streams/security.py
    # (docs/kafka-security.md). PLAINTEXT: the local broker's development listener.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    # Unset with a SASL protocol: the local broker's SCRAM user (var/kafka/scram/), which
    # `make up` creates with a generated password.
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    # A file holding the password (one trailing newline dropped); wins over kafka_sasl_password.
    kafka_sasl_password_file: Path | None = None
    # The CA that signed the broker's certificate (PEM). Unset with an SSL protocol: the local
    # broker's generated CA (var/kafka/tls/ca.pem) if it exists, else the system's CAs.
    kafka_ssl_cafile: Path | None = None
    # Client certificate and key (PEM) for brokers that require mutual TLS.
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    # The SASL mechanism of ClickHouse's Kafka table engine. Unset: kafka_sasl_mechanism for a
    # ClickHouse server, PLAIN for the embedded chdb (its librdkafka is built without SCRAM).
    clickhouse_kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = (
        None
    )
    # The local broker of `make up`: its PLAINTEXT port (controller +1, SASL_SSL listener +2).
    # Unset: the port of kafka_bootstrap (minus 2 when that names the SASL_SSL listener).
    kafka_local_port: int | None = None

    # Unset: the local platform database, its password read by libpq from the passfile `make up`
    # wrote (data_dir/credentials/postgres.pgpass). Set: used as given (a password in it is
    # masked wherever it is logged: foundation/redact.py).
    postgres_dsn: str = ""
    # Step cache: volatile, evicts least recently used keys when full (never webhook state).
    redis_url: str = "redis://127.0.0.1:16379/0"
    # The workers' attempt ledger, on its own instance: never evicted, append-only file
    # (docs/decisions/0017-attempt-ledger-store.md). Never the cache's instance.
    ledger_redis_url: str = "redis://127.0.0.1:16380/0"
    # Webhook mailboxes, waiting records and the signature replay store: must not be evicted
    # (docs/decisions/0047-webhook-signatures-and-store.md). Unset: the ledger's noeviction
    # instance, under their own `<prefix>:webhook` keys. Never the cache's instance.
    webhook_redis_url: str | None = None

    s3_endpoint: str = "http://127.0.0.1:19000"
    # Unset: the credentials `make up` generated for the loopback-only local s3proxy
    # (data_dir/credentials/s3.json); set real ones through the environment.
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "reflux"
    s3_region: str = "us-east-1"

    # The local Kafka Connect worker's REST API (`make connect`, docs/connect.md); loopback only.
    # Its worker group and internal topics are named after topic_prefix.
    connect_url: str = "http://127.0.0.1:18083"

    # Where `reflux run` / `reflux runs show` find the HTTP API.
    api_url: str = "http://127.0.0.1:8080"
    # The key the `reflux` CLI sends to it (ADR 0046): REFLUX_API_KEY, else the first line of
    # api_key_file (unset: <data_dir>/api-key, where `reflux dev` / `make demo` / `reflux
    # api-keys create --write-to` put a local admin key).
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    # The CLI's progress bars (reflux/progress.py): on stderr when it is a terminal (auto), or
    # always (tests, CI logs), or never.
    progress: Literal["auto", "always", "never"] = "auto"

    # Step params / outputs larger than this travel through the object store (claim check).
    claim_check_threshold_bytes: int = 256 * 1024
    # Stable per scheduler process: its Kafka transactional id derives from it, so a restarted
    # instance aborts the transaction its crashed predecessor left open.
    scheduler_instance_id: str = "0"

    # Workers read secrets (files named NAME) and their grants (grants.yaml) from this folder;
    # without it only REFLUX_SECRET_<NAME> variables exist and nothing is granted.
    # docs/secrets.md
    secrets_dir: Path | None = None
    # The master key of encrypted secret files (NAME.enc in secrets_dir): 32 bytes, base64
    # (`reflux secrets generate-key`), or a file holding it. Unset: NAME.enc files cannot be
    # read (a configuration error naming this setting). node_workers/secrets/encryption.py
    secrets_key: SecretStr | None = None
    secrets_key_file: Path | None = None

    # Components without an HTTP port (scheduler, projector, trigger router, workers) touch
    # this file from their loops; a liveness probe (python -m foundation.liveness) checks its
    # age. Unset: no heartbeat (foundation/liveness.py).
    liveness_file: Path | None = None
    # Port on which the scheduler, a worker or a projector serves Prometheus /metrics (the
    # CLI's --metrics-port wins); 0: no metrics server (streams/metrics.py, docs/metrics.md).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # How often each consumer reports its lag (librdkafka statistics.interval.ms) while metrics
    # are served; tests shorten it to see lag move within a short load.
    metrics_lag_interval_ms: int = Field(default=5_000, ge=100, le=600_000)

    # Tracing (ADR 0062, docs/tracing.md) is configured by the standard OpenTelemetry variables,
    # not REFLUX_*: spans are exported over OTLP/HTTP only when one of the two endpoints is set
    # (the traces endpoint as given; the general one + /v1/traces) and OTEL_SDK_DISABLED is not
    # true. Unset: no exporter, no span processing (trace context still travels on records).
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("otel_exporter_otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "otel_exporter_otlp_traces_endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ),
    )
    otel_sdk_disabled: bool = Field(
        default=False, validation_alias=AliasChoices("otel_sdk_disabled", "OTEL_SDK_DISABLED")
    )
    # The local Jaeger of `make up` (infra/services/jaeger.py): its OTLP/HTTP receiver (point
    # OTEL_EXPORTER_OTLP_ENDPOINT here) and its query API/UI. Loopback, non-default ports.
    jaeger_otlp_url: str = "http://127.0.0.1:14318"
    jaeger_query_url: str = "http://127.0.0.1:16687"

    # "chdb:///abs/path" selects the embedded engine (one process owns that folder);
    # "http://host:8123" selects a ClickHouse server. Same client code either way.
    clickhouse_dsn: str = ""

    # The Docker engine code.run's docker backend talks to. Empty: the project's own dockerd
    # that `make up` starts, listening on var/run/docker.sock (never the host's default
    # /var/run/docker.sock). Any DOCKER_HOST-style value ("unix:///…", "tcp://…") selects
    # another engine, which must then hold the sandbox image (node_workers/sandbox/docker_image/).
    docker_host: str = ""
    # code.run's operator maximums (docs/decisions/0042-sandbox-seccomp-and-maximums.md): a
    # step asking for more memory, CPUs, processes or time than these is refused with the
    # field's path; the disk sizes bound what a run may write (outputs under /work, /tmp and
    # /dev/shm, both tmpfs; /dev/shm also by the run's memMb).
    sandbox_max_mem_mb: int = 4096
    sandbox_max_cpu: float = 4.0
    sandbox_max_processes: int = 512
    sandbox_max_timeout_sec: float = 900.0
    sandbox_max_output_mb: int = 64
    sandbox_tmp_mb: int = 64
    sandbox_shm_mb: int = 64
    # The LLM forge (`reflux forge new`, POST /v1/forge/new; docs/forge.md, ADR 0071): any
    # OpenAI-compatible endpoint, up to and including /v1 (like openai.chat's base_url). The
    # key is the secret of this name, read where workers read secrets (secrets_dir, then
    # REFLUX_SECRET_<NAME>): the {{ secrets.OPENAI_API_KEY }} of an openai.chat step.
    forge_llm_base_url: str = "https://api.openai.com/v1"
    forge_llm_api_key_name: str = "OPENAI_API_KEY"
    forge_llm_model: str = "gpt-4o-mini"
    # Answers asked at most (the first, then one per feedback) before the forge refuses.
    forge_llm_rounds: int = Field(default=3, ge=1, le=10)
    forge_llm_timeout_s: float = Field(default=120.0, gt=0, le=600)
    # Where `make up` fetches the Debian packages of the sandbox image's root file system.
    debian_mirror: str = "http://deb.debian.org/debian"

    # Worker concurrency (docs/decisions/0019-worker-concurrency.md); `reflux worker` flags win.
    # Unset: the worker's defaults (I/O 256 attempts at once per process, CPU one per core).
    worker_io_concurrency: int | None = None
    worker_cpu_concurrency: int | None = None
    # Per node group, "http.request=512,database.query@1=32": a pool of its own of that size.
    worker_node_concurrency: str = ""
    # An attempt's start is signalled to the scheduler only if it still runs after this many ms
    # (docs/decisions/0013-execution-and-queue-timeouts.md, addendum); 0: at once, always.
    # Unset: the worker's default (250 ms).
    worker_start_signal_delay_ms: int | None = None

    # Scheduler recovery (docs/decisions/0015-scheduler-snapshots.md): run states changed since
    # the last snapshot are written to the scheduler-state topic at most this often, inside the
    # scheduler's transaction (0: never written; recovery still uses what the topic holds).
    scheduler_snapshot_interval_ms: int = 2000
    # Finished runs (succeeded, cancelled) kept in full in memory per partition, newest first;
    # older ones shrink to a marker (status, last seq, idempotency key).
    scheduler_finished_runs_kept: int = 128
    # Retry budget and circuit breaker per dependency, per scheduler process
    # (docs/decisions/0020-retry-budget-and-circuit.md): retries to one dependency go at most at
    # floor + ratio x its first attempts per second over the window (later ones are delayed,
    # never failed); its circuit opens when failure_ratio of at least min_samples outcomes in
    # the window failed, holds retries for the cool-down, then lets probes through.
    scheduler_retry_budget_ratio: float = 0.2
    scheduler_retry_budget_floor_per_s: float = 10.0
    scheduler_retry_window_s: int = 10
    scheduler_circuit_failure_ratio: float = 0.5
    scheduler_circuit_min_samples: int = 20
    scheduler_circuit_cooldown_ms: int = 5_000
    scheduler_circuit_max_cooldown_ms: int = 60_000
    scheduler_circuit_probes: int = 5
    # How long the scheduler's records wait in its producer before they are sent; its commit
    # sends them at once anyway, so the default lets a batch's records leave in one request
    # (docs/decisions/0021-engine-throughput.md). 0: each record as it is produced.
    scheduler_linger_ms: int = 100
    # Steps of a built-in pure node (transform, condition) are evaluated by the scheduler itself,
    # as journaled events in its transaction, with no invocation, worker or result record
    # (docs/decisions/0064-inline-pure-steps.md). false: every step goes to a worker. A step can
    # opt out with `inline: false`.
    inline_nodes: bool = True

    # CloudEvents on the triggers topic (docs/triggers.md, ADR 0053): event type -> the workflow
    # it starts (JSON object, e.g. {"com.shop.order.created": "order_quote"}). A mapped type wins
    # over the event's subject; an unmapped one needs the workflow id as its subject.
    trigger_type_map: dict[str, str] = {}

    # Egress policy of the nodes that connect where a workflow says (http.request, openai.chat,
    # email.send; docs/nodes.md#security, docs/decisions/0045-egress-policy.md). Loopback,
    # link-local, private, CGNAT, metadata and the platform's own endpoints above are denied
    # unless listed. Entries: CIDR, address or host name, optional ":port" ("10.0.0.0/8",
    # "127.0.0.1:8080", "[::1]:8080", "*.corp.example:443"); JSON lists in the environment.
    # egress_allow: open for every workflow; only an exact host:port here opens a platform
    # endpoint, only an exact address a metadata one.
    egress_allow: tuple[str, ...] = ()
    # The ceiling of the per-tenant and per-workflow lists: their entries open only what an
    # entry here matches too.
    egress_grantable: tuple[str, ...] = ()
    # workflow id -> entries, held by the operator (JSON object), bounded by egress_grantable.
    # A workflow id belongs to one tenant (ADR 0051): the list serves that workflow's runs.
    egress_workflow_allow: dict[str, tuple[str, ...]] = {}
    # tenant -> entries (JSON object, e.g. {"acme": ["api.acme.example", "10.1.2.0/24:443"]}),
    # for every workflow of that tenant; bounded by egress_grantable like a workflow's list.
    egress_tenant_allow: dict[str, tuple[str, ...]] = {}
    # More platform services to protect (host:port), e.g. the engine's own behind other names.
    egress_platform_extra: tuple[str, ...] = ()
    # Operator's maximum response body of http.request (decoded bytes); a step may ask for less.
    egress_max_response_bytes: int = 16 * 1024 * 1024

    @model_validator(mode="before")
    @classmethod
    def _local_credentials(cls, data: Any) -> Any:
        """Fills what was not set from the files `make up` keeps next to the local data."""
        if not isinstance(data, dict):
            return data
        data_dir = Path(data.get("data_dir") or PROJECT_ROOT / "var")
        filled = dict(data)
        brokers = _int_or_none(filled.get("kafka_brokers"))
        if brokers is not None and brokers > 1:
            if not filled.get("kafka_bootstrap"):
                base = _int_or_none(filled.get("kafka_local_port")) or DEFAULT_KAFKA_PORT
                filled["kafka_bootstrap"] = cluster_bootstrap(base, brokers)
            if filled.get("replication_factor") in (None, ""):
                filled["replication_factor"] = min(3, brokers)
        if not filled.get("postgres_dsn"):
            filled["postgres_dsn"] = _local_postgres_dsn(data_dir)
        if not filled.get("s3_access_key") or not filled.get("s3_secret_key"):
            local = _local_s3_credentials(data_dir)
            for key in ("access_key", "secret_key"):
                if not filled.get(f"s3_{key}") and key in local:
                    filled[f"s3_{key}"] = local[key]
        return filled

    @property
    def credentials_dir(self) -> Path:
        """Where `make up` keeps the generated credentials of the local services (0700)."""
        return self.data_dir / CREDENTIALS_DIR

    def resolved_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.data_dir / 'chdb'}"

    @property
    def webhook_store_url(self) -> str:
        """Where webhook mailboxes and the replay store live (a ``noeviction`` Redis)."""
        return self.webhook_redis_url or self.ledger_redis_url

    def otlp_traces_endpoint(self) -> str | None:
        """Where spans go (OTLP/HTTP), or ``None``: tracing is off (ADR 0062)."""
        if self.otel_sdk_disabled:
            return None
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    def resolved_docker_host(self) -> str:
        """The engine's address as DOCKER_HOST spells it."""
        return self.docker_host or f"unix://{self.data_dir / 'run' / 'docker.sock'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
