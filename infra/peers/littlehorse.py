"""LittleHorse's server as a local benchmark peer: ``python -m infra.peers.littlehorse ACTION``.

LittleHorse (https://littlehorse.io) is a workflow engine built on Kafka Streams: commands go to
a Kafka topic, one processor per partition folds them into RocksDB state with changelogs on
Kafka, and task workers pull scheduled tasks over gRPC. That is the design closest to REFLUX's,
which is why it is a peer. It runs here on the project's own Kafka broker (``make up``).

- ``install``: the server's classpath from Maven Central (``io.littlehorse:littlehorse-server``,
  pinned below) with ``mvn dependency:copy-dependencies`` on a small pom written to
  ``var/peers/littlehorse/pom.xml`` (the same machinery as Kafka's jars), and the Python SDK in
  a virtualenv of its own, ``var/peers/littlehorse/venv``, from
  ``infra/peers/littlehorse-requirements.txt``. Its grpc/protobuf pins would clash with the
  project's (temporalio) and other peers', so it never goes into ``.venv``. A no-op when done.
- ``up``: starts the server (Temurin 25: it is compiled for Java 25) with a fresh cluster id
  ``lhbench-<8 hex>`` (the prefix of every topic it creates) and waits until its health service
  answers ``/readiness`` and its core processor is ``RUNNING``. Idempotent.
- ``down``: stops it, then deletes its topics and consumer groups from the project's Kafka and
  its RocksDB state, so nothing of a run is left behind.
- ``reset``: the same cleanup for a server that is already stopped (one that died, say).

The server's own defaults are kept (read from its 1.2.1 jar and log): 12 partitions per topic,
one core stream thread, Kafka Streams ``exactly_once_v2`` with a 500 ms commit interval,
commands produced with ``acks=all``, idempotence and ``linger.ms=0``; a request is answered once
its command is on Kafka and processed, and a task goes to a worker once its claim is on Kafka.

Deviations from the recipe in ``../shared/peers.md``: the settings go into
``var/peers/littlehorse/server.config``, not the environment, because ``io.littlehorse.App``
reads only the file when given one (``App server.config`` ignores ``LHS_*`` variables); the
advertised listener and internal host are set to 127.0.0.1 (the defaults say ``localhost``).
The server offers no bind address: its three ports listen on every interface, but nothing
connects to them other than through 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from foundation.settings import PROJECT_ROOT, Settings, get_settings
from infra.peers.cli import ACTIONS, run_action
from infra.services.base import Service, ServiceError, log, port_open, tail_of
from infra.services.kafka import Kafka, maven_classpath
from streams.admin import admin_client

SERVER_VERSION = "1.2.1"
SERVER_ARTIFACT = ("io.littlehorse", "littlehorse-server")
# The server's classes are Java 25 bytecode; the machine's default Java (17) runs Kafka.
JAVA_HOME = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
JVM_OPTIONS = ("-Xmx1g", "-XX:+UseZGC")
HOST = "127.0.0.1"
CLUSTER_ID_PREFIX = "lhbench"
REQUIREMENTS = PROJECT_ROOT / "infra" / "peers" / "littlehorse-requirements.txt"
PIP_TIMEOUT_S = 15 * 60.0
# The server's Kafka Streams session timeout (LHS_STREAMS_SESSION_TIMEOUT, its default).
GROUP_SESSION_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LittleHorsePorts:
    """Loopback ports; not LittleHorse's defaults (2023 API, 2011 internal, 1822 health)."""

    api: int = 12023
    internal: int = 12011
    health: int = 11822

    def all(self) -> list[int]:
        return [self.api, self.internal, self.health]


def new_cluster_id() -> str:
    """A cluster id of its own for every server start: its topics never meet another run's."""
    return f"{CLUSTER_ID_PREFIX}-{uuid.uuid4().hex[:8]}"


def cluster_names(cluster_id: str, names: Iterable[str]) -> list[str]:
    """The topics or consumer groups that belong to ``cluster_id`` (``<id>-…``), sorted.

    The dash matters: ``lhbench-ab`` must not claim ``lhbench-abcd-core-cmd``.
    """
    return sorted(name for name in names if name.startswith(f"{cluster_id}-"))


def render_server_config(
    ports: LittleHorsePorts, kafka_bootstrap: str, cluster_id: str, state_dir: Path
) -> dict[str, str]:
    """The server's settings (``LHS_*``): one instance, topics created by it, replication 1."""
    return {
        "LHS_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LHS_CLUSTER_ID": cluster_id,
        "LHS_LISTENERS": f"PLAIN:{ports.api}",
        # Task workers connect to the hosts the server advertises, not to the one they dialled.
        "LHS_ADVERTISED_LISTENERS": f"PLAIN://{HOST}:{ports.api}",
        "LHS_INTERNAL_BIND_PORT": str(ports.internal),
        "LHS_INTERNAL_ADVERTISED_HOST": HOST,
        "LHS_INTERNAL_ADVERTISED_PORT": str(ports.internal),
        "LHS_HEALTH_SERVICE_PORT": str(ports.health),
        "LHS_SHOULD_CREATE_TOPICS": "true",
        "LHS_REPLICATION_FACTOR": "1",
        "LHS_STATE_DIR": str(state_dir),
    }


def properties_text(config: Mapping[str, str]) -> str:
    """``config`` as a Java properties file (what ``App <file>`` loads)."""
    lines = []
    for key, value in config.items():
        if any(ch in key + value for ch in "\n\r") or not key.isidentifier():
            raise ValueError(f"Expected a one-line property with a plain key, but got {key!r}")
        # In a properties value only the backslash is special (and leading blanks, not used).
        lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
    return "\n".join(lines) + "\n"


def render_pom(version: str) -> str:
    """A pom whose only dependency is the server: ``copy-dependencies`` yields its classpath."""
    group, artifact = SERVER_ARTIFACT
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by infra/peers/littlehorse.py: the LittleHorse server's runtime classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.reflux.peers</groupId>
  <artifactId>littlehorse-server-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def core_running(status: Mapping[str, object]) -> bool:
    """The health service's ``/status``: the core processor has its partitions and runs.

    ``/readiness`` answers OK while Kafka Streams is still rebalancing; a run started then
    waits for the assignment, which would show up as start latency.
    """
    return status.get("coreState") == "RUNNING"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class LittleHorseServer(Service):
    """One LittleHorse server on the project's Kafka, its data under ``var/peers/littlehorse``."""

    name = "littlehorse"

    def __init__(self, settings: Settings, ports: LittleHorsePorts | None = None) -> None:
        super().__init__(settings)
        self.ports = ports or LittleHorsePorts()
        self.root = settings.data_dir / "peers" / "littlehorse"
        self.log_file = self.root / "server.log"
        self.pid_file = self.root / "server.pid"
        self.pom = self.root / "pom.xml"
        self.lib = self.root / "lib"
        self.venv = self.root / "venv"
        self.config_file = self.root / "server.config"
        self.cluster_id_file = self.root / "cluster-id"
        self.state_root = self.root / "state"
        self.install_info = self.root / "install.json"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports.api}"

    @property
    def java(self) -> Path:
        return JAVA_HOME / "bin" / "java"

    @property
    def python(self) -> Path:
        """The SDK virtualenv's interpreter (the benchmark driver runs with it)."""
        return self.venv / "bin" / "python"

    @property
    def kafka_bootstrap(self) -> str:
        # The broker's PLAINTEXT listener, whichever listener the project's clients use: the
        # server gets no credentials, and one node is enough to bootstrap from.
        host, port = Kafka(self.settings).host_port
        return f"{host}:{port}"

    # -- install ---------------------------------------------------------------------------
    def install(self) -> None:
        """The server's jars and the SDK's virtualenv; each a no-op when already in place."""
        if not self.java.exists():
            raise ServiceError(
                f"Expected a Java 25 runtime at {self.java} (LittleHorse {SERVER_VERSION} is "
                "compiled for Java 25), but it is missing. Install Temurin 25 (Debian package "
                "'temurin-25-jdk' from the Adoptium repository)."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        info: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(self.install_info.read_text())
        pom = render_pom(SERVER_VERSION)
        if not self.pom.exists() or self.pom.read_text() != pom:
            self.pom.write_text(pom)
        fresh = not (self.lib / ".stamp").exists()
        began = time.monotonic()
        maven_classpath(self.pom, self.lib, [self.pom])  # a no-op while the pom is unchanged
        if fresh:
            info["server"] = f"{':'.join(SERVER_ARTIFACT)}:{SERVER_VERSION}"
            info["jars_s"] = round(time.monotonic() - began, 1)
            info["jars_mb"] = round(folder_bytes(self.lib) / 1e6, 1)
        venv_s = self.install_sdk()
        if venv_s:
            info["sdk"] = REQUIREMENTS.name
            info["venv_s"] = round(venv_s, 1)
            info["venv_mb"] = round(folder_bytes(self.venv) / 1e6, 1)
        if fresh or venv_s:
            self.install_info.write_text(json.dumps(info, indent=2) + "\n")

    def install_sdk(self) -> float:
        """Creates the SDK's virtualenv unless it matches the requirements; returns seconds."""
        digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
        stamp = self.venv / ".requirements-sha256"
        if stamp.exists() and stamp.read_text() == digest and self.python.exists():
            return 0.0
        log(f"littlehorse: creating {self.venv} from {REQUIREMENTS.name}")
        began = time.monotonic()
        shutil.rmtree(self.venv, ignore_errors=True)
        pip_log = self.root / "pip.log"
        with pip_log.open("w") as out:
            steps = [
                [sys.executable, "-m", "venv", str(self.venv)],
                [str(self.python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            ]
            for argv in steps:
                code = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT_S, check=False
                ).returncode
                if code != 0:
                    raise ServiceError(
                        f"Expected `{' '.join(argv)}` to succeed, but it exited {code}."
                        f"{tail_of(pip_log, 15)}"
                    )
        stamp.write_text(digest)
        return time.monotonic() - began

    # -- run -------------------------------------------------------------------------------
    def start_timeout(self) -> float:
        # ~10 s on an idle machine; Kafka Streams' first rebalance is slower under load.
        return 120.0

    def port_in_use(self) -> bool:
        return any(port_open(HOST, port) for port in self.ports.all())

    def cluster_id(self) -> str | None:
        with contextlib.suppress(OSError):
            return self.cluster_id_file.read_text().strip() or None
        return None

    def launch(self) -> None:
        kafka = Kafka(self.settings).host_port
        if not port_open(*kafka):
            raise ServiceError(
                f"Expected the project's Kafka at {kafka[0]}:{kafka[1]} (LittleHorse keeps its "
                "state there), but nothing answers. Start the local services: `make up`."
            )
        # A stopped server's leftovers (it died, or `down` never ran) go before a new cluster.
        self.cleanup()
        cluster_id = new_cluster_id()
        state_dir = self.state_root / cluster_id
        state_dir.mkdir(parents=True, exist_ok=True)
        config = render_server_config(self.ports, self.kafka_bootstrap, cluster_id, state_dir)
        self.config_file.write_text(properties_text(config))
        self.cluster_id_file.write_text(cluster_id + "\n")
        self.log_file.unlink(missing_ok=True)  # one log per cluster: its tail is this start's
        self.spawn(
            [
                str(self.java),
                *JVM_OPTIONS,
                "-cp",
                f"{self.lib}/*",
                "io.littlehorse.App",
                str(self.config_file),
            ],
            cwd=self.root,
        )

    def health(self, path: str) -> httpx.Response | None:
        try:
            with _http(timeout=2) as http:
                return http.get(f"http://{HOST}:{self.ports.health}{path}")
        except httpx.HTTPError as exc:
            self.last_probe_error = f"{path}: {exc}"
            return None

    def is_ready(self) -> bool:
        readiness = self.health("/readiness")
        if readiness is None or readiness.status_code != 200:
            return False
        status = self.health("/status")
        if status is None or status.status_code != 200:
            return False
        body = status.json()
        if not core_running(body):
            self.last_probe_error = f"/status coreState {body.get('coreState')}"
            return False
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """Stops the server, then removes its topics, consumer groups and state."""
        stopped = super().stop(timeout)
        self.cleanup()
        return stopped

    def reset(self) -> None:
        if self.is_running():
            raise ServiceError(f"Expected {self.name} to be stopped before reset, but it runs.")
        self.cleanup()

    def cleanup(self) -> None:
        """Deletes the recorded cluster's topics and groups and its RocksDB state (stopped only).

        Everything LittleHorse creates on Kafka is named after its cluster id, so deleting by
        that prefix removes exactly this start's data and nothing of REFLUX's or another run's.
        """
        cluster_id = self.cluster_id()
        if cluster_id is None or self.is_running():
            return
        try:
            admin = admin_client(self.settings)
            topics = cluster_names(cluster_id, admin.list_topics(timeout=10).topics)
            if topics:
                for future in admin.delete_topics(topics, operation_timeout=60).values():
                    future.result(60)
            listed = admin.list_consumer_groups().result(timeout=10).valid
            groups = cluster_names(cluster_id, (g.group_id for g in listed))
            self.delete_groups(admin, groups)
        except ServiceError:
            raise
        except Exception as exc:  # confluent-kafka raises KafkaException and plain errors
            raise ServiceError(
                f"Expected to delete LittleHorse cluster {cluster_id}'s topics and groups from "
                f"Kafka at {self.settings.kafka_bootstrap}, but: {exc}. They keep its prefix; "
                "`python -m infra.peers.littlehorse reset` retries once Kafka is up."
            ) from exc
        shutil.rmtree(self.state_root / cluster_id, ignore_errors=True)
        self.cluster_id_file.unlink(missing_ok=True)
        removed = f"{len(topics)} topics, {len(groups)} consumer groups"
        log(f"littlehorse: removed cluster {cluster_id} ({removed})")

    def delete_groups(self, admin: AdminClient, groups: list[str]) -> None:
        """Deletes the consumer groups, waiting while a dead server's members still hold them.

        A server that was killed leaves its Kafka Streams members in their groups until their
        session times out (``LHS_STREAMS_SESSION_TIMEOUT``, 60 s by default); the broker
        refuses to delete a group that has members. A server stopped by ``down`` leaves at once.
        """
        deadline = time.monotonic() + GROUP_SESSION_TIMEOUT_S + 15
        remaining = groups
        while remaining:
            busy = []
            futures = admin.delete_consumer_groups(remaining, request_timeout=30)
            for group, future in futures.items():
                try:
                    future.result(30)
                except KafkaException as exc:
                    code = exc.args[0].code() if exc.args else None
                    if code == KafkaError.NON_EMPTY_GROUP:
                        busy.append(group)
                    elif code != KafkaError.GROUP_ID_NOT_FOUND:
                        raise
            if busy and time.monotonic() > deadline:
                raise ServiceError(
                    f"Expected LittleHorse's consumer groups {busy} to empty within "
                    f"{GROUP_SESSION_TIMEOUT_S + 15:.0f}s, but they still have members. Is a "
                    "server of that cluster still running elsewhere?"
                )
            if busy:
                if busy != remaining or remaining is groups:  # say it once, not every 5 s
                    log(f"littlehorse: waiting for {busy} to lose a dead server's members")
                time.sleep(5)
            remaining = busy

    def detail(self) -> str:
        installed = "installed" if (self.lib / ".stamp").exists() else "not installed"
        return f"{SERVER_VERSION} ({installed}), cluster {self.cluster_id() or '-'}"


def _http(timeout: float) -> httpx.Client:
    # Loopback only: never route through a proxy configured in the environment.
    return httpx.Client(timeout=timeout, trust_env=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.peers.littlehorse", description=__doc__)
    parser.add_argument("action", choices=["install", *ACTIONS])
    args = parser.parse_args(argv)
    server = LittleHorseServer(get_settings())

    def install() -> str | None:
        server.install()
        return server.install_info.read_text() if server.install_info.exists() else None

    return run_action(
        "littlehorse",
        server,
        args.action,
        install=install,
        ready_note=lambda: f"cluster {server.cluster_id()}",
    )


if __name__ == "__main__":
    sys.exit(main())
