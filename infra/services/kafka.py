"""Apache Kafka, single-node KRaft, from Maven Central jars run on the machine's Java 17.

Three listeners on loopback (docs/kafka-security.md, ADR 0048): PLAINTEXT on the local port (no
authentication: local development), the KRaft controller on port + 1, and SASL_SSL with
SCRAM-SHA-512 on port + 2 (plus PLAIN inside TLS for the same user, only for the embedded
ClickHouse, whose librdkafka lacks SCRAM). At start the broker gets, under ``var/kafka``, a CA
and a broker certificate (``tls/``, made with openssl once) and a SCRAM user ``reflux`` with a
generated password (``scram/password``, mode 0600): written into the metadata by
``kafka-storage format --add-scram`` for a new cluster and upserted through the admin API on
every start of a broker rendered with the SASL listener (an existing cluster, a changed password
file), so it is idempotent.

The same class runs node k of the local cluster (``make up CLUSTER=3``, ADR 0065,
:mod:`infra.services.kafka_cluster`): its data under ``var/kafka-cluster/node-k``, its ports at
base + 3(k-1), the same CA, certificate and SCRAM user as the single broker.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import ClassVar

from foundation.settings import KAFKA_PORTS_PER_NODE, PROJECT_ROOT, Settings
from infra.services.base import (
    Service,
    ServiceError,
    ensure_debian_packages,
    log,
    pid_alive,
    port_open,
    require_command,
)
from streams.admin import kafka_unavailable
from streams.consumer import retry_transient
from streams.security import LOCAL_SCRAM_USER, local_ca_file, local_scram_password_file

INFRA = PROJECT_ROOT / "infra" / "kafka"
CLUSTER_DIR = "kafka-cluster"
"""Under the data folder: the local cluster's nodes (``node-k``) and its id, never var/kafka."""


def cluster_replication(size: int) -> tuple[int, int]:
    """(replication factor, min in-sync replicas) of a local cluster's internal topics and
    defaults: 3 replicas (fewer nodes: all of them), a write acknowledged by 2 (one node may
    be lost without losing an acknowledged write); 1 and 1 for a single node."""
    replication = min(3, size)
    return replication, (min(2, replication) if replication > 1 else 1)


def maven_classpath(pom: Path, libs: Path, stamp_inputs: list[Path]) -> None:
    """Copies the pom's runtime classpath into ``libs`` unless the inputs are unchanged."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in stamp_inputs)).hexdigest()
    stamp = libs / ".stamp"
    if stamp.exists() and stamp.read_text() == digest:
        return
    mvn = require_command("mvn", "Install Maven (Debian package 'maven').")
    require_command("java", "Install a Java 17 runtime (Debian package 'openjdk-17-jre-headless').")
    # A pom may be generated under the data folder, which need not be inside the project.
    shown = pom.relative_to(PROJECT_ROOT) if pom.is_relative_to(PROJECT_ROOT) else pom
    log(f"resolving {shown} from Maven Central into {libs}")
    if libs.exists():
        for jar in libs.glob("*.jar"):
            jar.unlink()
    libs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(f"Maven could not resolve {pom}:\n{result.stdout}\n{result.stderr}")
    stamp.write_text(digest)


def java_major() -> int:
    java = require_command("java", "Install Java 17 (Debian package 'openjdk-17-jre-headless').")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=True).stderr
    version = out.split('"')[1]
    return int(version.split(".")[0])


class Kafka(Service):
    """The single broker (``node=None``), or node ``node`` (1-based) of a local cluster of
    ``cluster_size`` nodes. ``jars_from``: use that installation's jars (no Maven run)."""

    name = "kafka"
    debian_packages: ClassVar[dict[str, str]] = {"openssl": "openssl"}

    def __init__(
        self,
        settings: Settings,
        *,
        node: int | None = None,
        cluster_size: int = 1,
        jars_from: Settings | None = None,
    ) -> None:
        super().__init__(settings)
        if node is not None and not 1 <= node <= cluster_size:
            raise ServiceError(f"Expected a node between 1 and {cluster_size}, but got {node}")
        self.node = node
        self.cluster_size = cluster_size if node is not None else 1
        self._jars_root = (jars_from.data_dir if jars_from else settings.data_dir) / "kafka"
        if node is not None:
            self.name = f"kafka-{node}"
            self.root = settings.data_dir / CLUSTER_DIR / f"node-{node}"
            self.log_file = settings.data_dir / "log" / f"kafka-node-{node}.log"
            self.pid_file = settings.data_dir / "run" / f"kafka-node-{node}.pid"

    @property
    def base_port(self) -> int:
        """The single broker's PLAINTEXT port, or node 1's: ``kafka_local_port``, else the
        first port of ``kafka_bootstrap``."""
        _, port = self.settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
        if self.settings.kafka_local_port is not None:
            return self.settings.kafka_local_port
        # Clients pointed at the SASL_SSL listener (port + 2) leave the broker where it was.
        secured = self.settings.kafka_security_protocol != "PLAINTEXT"
        return int(port) - 2 if secured else int(port)

    def node_port(self, node: int) -> int:
        """Node ``node``'s PLAINTEXT port (controller + 1, SASL_SSL + 2)."""
        return self.base_port + KAFKA_PORTS_PER_NODE * (node - 1)

    @property
    def host_port(self) -> tuple[str, int]:
        """The PLAINTEXT listener (readiness, administration)."""
        host = self.settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[0]
        return host, self.node_port(self.node or 1)

    @property
    def sasl_port(self) -> int:
        return self.host_port[1] + 2

    @property
    def endpoint(self) -> str:
        host, port = self.host_port
        return f"{host}:{port} (SASL_SSL {host}:{self.sasl_port})"

    @property
    def tls_dir(self) -> Path:
        # One CA and one certificate (for 127.0.0.1) for the single broker and every node.
        return local_ca_file(self.settings.data_dir).parent

    @property
    def keystore(self) -> Path:
        return self.tls_dir / "broker-keystore.pem"

    @property
    def scram_password_file(self) -> Path:
        return local_scram_password_file(self.settings.data_dir)

    @property
    def libs(self) -> Path:
        return self._jars_root / "libs"

    @property
    def config_file(self) -> Path:
        return self.root / "server.properties"

    def install(self) -> None:
        ensure_debian_packages(self.debian_packages)
        if java_major() < 17:
            raise ServiceError("Kafka here needs Java 17 or newer on PATH.")
        maven_classpath(INFRA / "pom.xml", self.libs, [INFRA / "pom.xml"])

    def start_timeout(self) -> float:
        return 90.0

    def port_in_use(self) -> bool:
        return port_open(*self.host_port)

    @property
    def cluster_id_file(self) -> Path:
        return self.settings.data_dir / CLUSTER_DIR / "cluster-id"

    def cluster_id(self) -> str:
        """A new single broker's id, or the local cluster's (one for every node, made once)."""
        fresh = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if self.node is None:
            return fresh
        path = self.cluster_id_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fresh + "\n")
        return path.read_text().strip()

    def cluster_pids(self) -> dict[int, int]:
        """Nodes of a local cluster running from this data folder: {node: pid}."""
        found = {}
        for pid_file in (self.settings.data_dir / "run").glob("kafka-node-*.pid"):
            try:
                node, pid = int(pid_file.stem.rsplit("-", 1)[1]), int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if pid_alive(pid):
                found[node] = pid
        return found

    def start(self) -> float:
        if self.node is None and (nodes := self.cluster_pids()):
            raise ServiceError(
                f"A local Kafka cluster runs from {self.settings.data_dir} (nodes "
                f"{sorted(nodes)}, pids {sorted(nodes.values())}); the single broker and the "
                "cluster never run together. Stop it first: `make down CLUSTER="
                f"{max(len(nodes), 2)}` (or REFLUX_KAFKA_BROKERS=N python -m infra.stack down "
                "kafka), then start again."
            )
        took = super().start()
        # A broker running from a config rendered before the SASL listener existed is left
        # alone; it gets the listener (and its user) when it is next started. A cluster node
        # leaves this to the cluster (the user is cluster-wide metadata).
        if self.node is None and (took or self.sasl_listener_configured()):
            self.ensure_scram_user()
        return took

    def java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{INFRA / 'log4j.properties'}",
            "-cp",
            f"{self.libs}/*",
            main_class,
            *args,
        ]

    def render_config(self) -> None:
        host, port = self.host_port
        if host not in ("127.0.0.1", "localhost"):
            raise ServiceError(f"The local broker only listens on loopback, not {host}.")
        template = (INFRA / "server.properties.tmpl").read_text()
        nodes = range(1, self.cluster_size + 1)
        replication, min_isr = cluster_replication(self.cluster_size)
        _write_private(
            self.config_file,
            template.format(
                node_id=self.node or 1,
                quorum_voters=",".join(f"{k}@127.0.0.1:{self.node_port(k) + 1}" for k in nodes),
                replication=replication,
                min_isr=min_isr,
                port=port,
                controller_port=port + 1,
                sasl_port=self.sasl_port,
                keystore=self.keystore,
                data_dir=self.root / "data",
                scram_user=LOCAL_SCRAM_USER,
                scram_password=self.scram_password(),
            ),
        )

    def scram_password(self) -> str:
        """The local SCRAM user's password, generated once (mode 0600)."""
        path = self.scram_password_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(path, secrets.token_urlsafe(32) + "\n", exclusive=True)
        return path.read_text().strip()

    def ensure_tls(self) -> None:
        """A local CA and a broker certificate for 127.0.0.1/localhost, made once."""
        if self.keystore.exists() and local_ca_file(self.settings.data_dir).exists():
            return
        openssl = require_command("openssl", "Install OpenSSL (Debian package 'openssl').")
        tls = self.tls_dir
        tls.mkdir(parents=True, exist_ok=True, mode=0o700)
        log(f"generating the Kafka CA and broker certificate in {tls}")

        def run(*args: str) -> None:
            result = subprocess.run(
                [openssl, *args], cwd=tls, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise ServiceError(f"openssl {args[0]} failed: {result.stderr.strip()}")

        old = os.umask(0o077)  # keys are never readable by others, even for a moment
        try:
            run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                "-out", "ca.pem", "-days", "3650", "-subj", "/CN=REFLUX local Kafka CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
            run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
                "-out", "broker.csr", "-subj", "/CN=localhost")  # fmt: skip
            (tls / "broker.ext").write_text(
                "basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "subjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid\n"
            )
            run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "broker.pem", "-days", "825",
                "-extfile", "broker.ext")  # fmt: skip
        finally:
            os.umask(old)
        # Kafka's PEM keystore: the (unencrypted PKCS#8) key, then the chain.
        _write_private(
            self.keystore,
            (tls / "broker.key").read_text()
            + (tls / "broker.pem").read_text()
            + (tls / "ca.pem").read_text(),
        )
        (tls / "broker.csr").unlink(missing_ok=True)
        (tls / "ca.pem").chmod(0o644)  # the CA certificate is public: clients read it

    def launch(self) -> None:
        self.ensure_tls()
        self.render_config()
        if not (self.root / "data" / "meta.properties").exists():
            # KRaft needs its log folder formatted once with a cluster id; the SCRAM user goes
            # into the first metadata so the SASL listener accepts it from the first second.
            cluster_id = self.cluster_id()
            log(f"formatting KRaft storage (cluster {cluster_id})")
            subprocess.run(
                self.java(
                    "kafka.tools.StorageTool",
                    "format",
                    # One argument: an id starting with "-" (1 in 64 random ids) would be read
                    # as an option ("argument --cluster-id/-t: expected one argument").
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(self.config_file),
                    "--ignore-formatted",
                    "--add-scram",
                    f"SCRAM-SHA-512=[name={LOCAL_SCRAM_USER},password={self.scram_password()}]",
                ),
                check=True,
                capture_output=True,
            )
        self.spawn(self.java("kafka.Kafka", str(self.config_file)))

    def sasl_listener_configured(self) -> bool:
        try:
            return "SASL_SSL://" in self.config_file.read_text()
        except OSError:
            return False

    def ensure_scram_user(self) -> None:
        """Upsert the SCRAM user with the password file's password (idempotent): a cluster
        formatted before the SASL listener existed, or a rotated password file."""
        from confluent_kafka.admin import AdminClient

        # Imported from their defining module so mypy --strict sees them (no __all__ there).
        from confluent_kafka.admin._scram import (
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        host, port = self.host_port
        upsert = UserScramCredentialUpsertion(
            LOCAL_SCRAM_USER,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
            self.scram_password().encode(),
        )

        def upsert_once() -> None:
            # A fresh client each time: the one that met the error may keep a dropped handle.
            client = AdminClient({"bootstrap.servers": f"{host}:{port}", "log_level": 0})
            for future in client.alter_user_scram_credentials(
                [upsert], request_timeout=30
            ).values():
                future.result(timeout=30)

        try:
            # A node started a moment ago can drop the request (librdkafka: _DESTROY_BROKER, the
            # bootstrap connection replaced by the node's own): asked again for up to a minute.
            retry_transient(upsert_once, 60, backoff_s=0.5, transient=kafka_unavailable)
        except Exception as exc:
            raise ServiceError(
                f"Expected the broker to store SCRAM user {LOCAL_SCRAM_USER!r}, but: {exc}"
            ) from exc

    def is_ready(self) -> bool:
        if not port_open(*self.host_port):
            return False
        # Open port is not enough: the broker must answer metadata requests.
        from confluent_kafka.admin import AdminClient

        try:
            host, port = self.host_port
            admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "log_level": 0})
            metadata = admin.list_topics(timeout=2)
            return len(metadata.brokers) > 0
        except Exception:
            return False

    def detail(self) -> str:
        role = f"node {self.node} of {self.cluster_size}, " if self.node else ""
        return (
            f"KRaft, {role}jars {self.libs}, data {self.root / 'data'}, "
            f"SCRAM user {LOCAL_SCRAM_USER} (password {self.scram_password_file}), "
            f"CA {local_ca_file(self.settings.data_dir)}"
        )


def _write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to a file only its owner can read (created with mode 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.chmod(path, 0o600)  # an existing file keeps its mode on open(); make sure
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
