"""Kafka Connect: one worker in distributed mode on the local broker, from Maven Central jars.

The worker (connect-runtime + connect-json 3.9.1, the broker's version; infra/connect/pom.xml)
runs on the machine's Java 17 with its REST API on loopback (``Settings.connect_url``). It talks
to the broker the way every REFLUX client does: ``kafka_bootstrap`` with the settings' security
(PLAINTEXT locally, or the SASL_SSL listener with the SCRAM user and the local CA;
:func:`streams.security.java_client_properties`). Distributed mode, even with one worker, keeps
connector configs, source offsets and statuses in Kafka (``<prefix>.connect-configs``,
``-offsets``, ``-status``; group ``<prefix>.connect``): connectors survive a restart of the
worker and are managed only through the REST API, as on any Connect cluster (ADR 0055).

Connectors are plugins: every ``infra/connect/plugins/<name>/pom.xml`` is resolved into
``var/connect/plugins/<name>/``, the worker's ``plugin.path`` (jars dropped into another folder
there are plugins too). Keys and values default to ``StringConverter``: the JSON text REFLUX
reads (triggers) and writes (run outcomes) passes through verbatim. docs/connect.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from foundation.settings import PROJECT_ROOT
from infra.services.base import Service, ServiceError, log, port_open
from infra.services.credentials import write_private
from infra.services.kafka import java_major, maven_classpath
from streams.security import java_client_properties

INFRA = PROJECT_ROOT / "infra" / "connect"
WORKER_CLASS = "org.apache.kafka.connect.cli.ConnectDistributed"
# The worker's own clients: the herder's (unprefixed), and the producers, consumers and admin
# clients it makes for connectors, which take only their prefixed settings.
CLIENT_PREFIXES = ("", "producer.", "consumer.", "admin.")


def internal_topics(prefix: str) -> dict[str, str]:
    """The worker's own compacted topics (created and owned by Connect, not the catalog)."""
    return {
        "configs": f"{prefix}.connect-configs",
        "offsets": f"{prefix}.connect-offsets",
        "status": f"{prefix}.connect-status",
    }


class KafkaConnect(Service):
    name = "connect"

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.settings.connect_url)
        return url.hostname or "127.0.0.1", url.port or 80

    @property
    def endpoint(self) -> str:
        return self.settings.connect_url

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def plugin_path(self) -> Path:
        return self.root / "plugins"

    @property
    def config_file(self) -> Path:
        return self.root / "worker.properties"

    @property
    def group_id(self) -> str:
        return f"{self.settings.topic_prefix}.connect"

    def rest(self, timeout: float = 10.0) -> ConnectRest:
        return ConnectRest(self.settings.connect_url, timeout=timeout)

    def install(self) -> None:
        if java_major() < 17:
            raise ServiceError("Kafka Connect here needs Java 17 or newer on PATH.")
        maven_classpath(INFRA / "pom.xml", self.libs, [INFRA / "pom.xml"])
        for pom in sorted((INFRA / "plugins").glob("*/pom.xml")):
            maven_classpath(pom, self.plugin_path / pom.parent.name, [pom])

    def start_timeout(self) -> float:
        return 90.0

    def port_in_use(self) -> bool:
        return port_open(*self.host_port)

    def render_config(self) -> str:
        host, port = self.host_port
        if host not in ("127.0.0.1", "localhost"):
            raise ServiceError(
                f"The local Connect worker only listens on loopback, not {host} (connect_url)."
            )
        client = java_client_properties(self.settings).splitlines()
        security = "\n".join(f"{prefix}{line}" for prefix in CLIENT_PREFIXES for line in client)
        topics = internal_topics(self.settings.topic_prefix)
        return (
            (INFRA / "worker.properties.tmpl")
            .read_text()
            .format(
                bootstrap=self.settings.kafka_bootstrap,
                group_id=self.group_id,
                configs_topic=topics["configs"],
                offsets_topic=topics["offsets"],
                status_topic=topics["status"],
                replication=self.settings.replication_factor,
                host=host,
                port=port,
                # Resolved: worktrees sharing one data folder through a link render the same config
                # (a different text would make each `up` restart the shared worker).
                plugin_path=self.plugin_path.resolve(),
                security=security,
            )
        )

    def start(self) -> float:
        self.install()
        # A worker started with other Kafka settings (another bootstrap, a rotated SCRAM
        # password) is restarted with the current ones, like s3proxy with its keys.
        if self.is_running():
            try:
                current = self.config_file.read_text()
            except OSError:
                current = ""
            if current != self.render_config():
                log("connect: restarting the worker with the current Kafka settings")
                self.stop()
        return super().start()

    def launch(self) -> None:
        self.plugin_path.mkdir(parents=True, exist_ok=True)
        write_private(self.config_file, self.render_config())
        self.spawn(
            [
                "java",
                "-Xms64m",
                "-Xmx384m",
                "-XX:+UseSerialGC",
                "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{INFRA / 'log4j.properties'}",
                "-cp",
                f"{self.libs}/*",
                WORKER_CLASS,
                str(self.config_file),
            ]
        )

    def is_ready(self) -> bool:
        """The REST API answers and the worker has joined its group (``/connectors`` answers
        503 until the herder's first rebalance)."""
        if not port_open(*self.host_port):
            self.last_probe_error = f"nothing listens on {self.endpoint} yet"
            return False
        try:
            rest = self.rest(timeout=2)
            info = rest.get("/")
            rest.get("/connectors")
        except ServiceError as exc:
            self.last_probe_error = str(exc)
            return False
        return isinstance(info, dict) and "version" in info

    def detail(self) -> str:
        found = self.plugin_path.iterdir() if self.plugin_path.exists() else iter(())
        plugins = sorted(p.name for p in found if p.is_dir())
        return (
            f"distributed, group {self.group_id}, topics {self.settings.topic_prefix}.connect-*, "
            f"plugins {', '.join(plugins) or '-'} in {self.plugin_path}"
        )


class ConnectRest:
    """The few calls of Connect's REST API that REFLUX's tools and tests need."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            response = httpx.request(
                method,
                self.url + path,
                json=body,
                headers={"Accept": "application/json"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise ServiceError(f"Kafka Connect at {self.url}: {method} {path}: {exc}") from exc
        try:
            answer = response.json() if response.content else None
        except ValueError:
            answer = response.text
        return response.status_code, answer

    def _ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self._call(method, path, body)
        if status >= 400:
            message = answer.get("message") if isinstance(answer, dict) else answer
            raise ServiceError(
                f"Kafka Connect at {self.url}: {method} {path} answered {status}: {message}"
            )
        return answer

    def get(self, path: str) -> Any:
        return self._ok("GET", path)

    def connectors(self) -> list[str]:
        return list(self.get("/connectors"))

    def put_connector(self, name: str, config: dict[str, str], timeout: float = 30.0) -> Any:
        """Creates or updates connector ``name`` (idempotent). A worker that is rebalancing
        answers 409; that is waited out, any other error is raised with Connect's message."""
        path = f"/connectors/{quote(name, safe='')}/config"
        deadline = time.monotonic() + timeout
        while True:
            status, answer = self._call("PUT", path, {**config, "name": name})
            if status < 400:
                return answer
            if status != 409 or time.monotonic() > deadline:
                message = answer.get("message") if isinstance(answer, dict) else answer
                raise ServiceError(
                    f"Kafka Connect at {self.url} refused connector {name!r} ({status}): {message}"
                )
            time.sleep(0.2)

    def delete_connector(self, name: str) -> bool:
        """Deletes connector ``name``; False if there was none."""
        status, answer = self._call("DELETE", f"/connectors/{quote(name, safe='')}")
        if status == 404:
            return False
        if status >= 400:
            message = answer.get("message") if isinstance(answer, dict) else answer
            raise ServiceError(f"Kafka Connect could not delete {name!r} ({status}): {message}")
        return True

    def status(self, name: str) -> dict[str, Any]:
        answer = self.get(f"/connectors/{quote(name, safe='')}/status")
        assert isinstance(answer, dict)
        return answer


def running_states(status: dict[str, Any]) -> tuple[str, list[str]]:
    """(the connector's state, its tasks' states) from a ``/status`` answer."""
    connector = str(status.get("connector", {}).get("state", "UNKNOWN"))
    tasks = [str(task.get("state", "UNKNOWN")) for task in status.get("tasks", [])]
    return connector, tasks


def load_connector(path: Path, **overrides: str) -> tuple[str, dict[str, str]]:
    """A connector file in the REST API's create shape (``{"name": ..., "config": {...}}``,
    as under examples/connect/), with ``overrides`` applied to its config."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ServiceError(f"{path}: expected {{'name': ..., 'config': {{...}}}}")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise ServiceError(f"{path}: name: expected a connector name")
    config = {str(k): str(v) for k, v in document["config"].items()}
    return name, {**config, **overrides}
