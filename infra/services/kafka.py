"""Apache Kafka, single-node KRaft, from Maven Central jars run on the machine's Java 17."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import uuid
from pathlib import Path

from foundation.settings import PROJECT_ROOT
from infra.services.base import Service, ServiceError, log, port_open, require_command

INFRA = PROJECT_ROOT / "infra" / "kafka"


def maven_classpath(pom: Path, libs: Path, stamp_inputs: list[Path]) -> None:
    """Copies the pom's runtime classpath into ``libs`` unless the inputs are unchanged."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in stamp_inputs)).hexdigest()
    stamp = libs / ".stamp"
    if stamp.exists() and stamp.read_text() == digest:
        return
    mvn = require_command("mvn", "Install Maven (Debian package 'maven').")
    require_command("java", "Install a Java 17 runtime (Debian package 'openjdk-17-jre-headless').")
    log(f"resolving {pom.relative_to(PROJECT_ROOT)} from Maven Central into {libs}")
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
    name = "kafka"

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
        return host, int(port)

    @property
    def endpoint(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def config_file(self) -> Path:
        return self.root / "server.properties"

    def install(self) -> None:
        if java_major() < 17:
            raise ServiceError("Kafka here needs Java 17 or newer on PATH.")
        maven_classpath(INFRA / "pom.xml", self.libs, [INFRA / "pom.xml"])

    def start_timeout(self) -> float:
        return 90.0

    def port_in_use(self) -> bool:
        return port_open(*self.host_port)

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
        self.config_file.write_text(
            template.format(port=port, controller_port=port + 1, data_dir=self.root / "data")
        )

    def launch(self) -> None:
        self.render_config()
        if not (self.root / "data" / "meta.properties").exists():
            # KRaft needs its log folder formatted once with a cluster id.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            log(f"formatting KRaft storage (cluster {cluster_id})")
            subprocess.run(
                self.java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.config_file),
                    "--ignore-formatted",
                ),
                check=True,
                capture_output=True,
            )
        self.spawn(self.java("kafka.Kafka", str(self.config_file)))

    def is_ready(self) -> bool:
        if not port_open(*self.host_port):
            return False
        # Open port is not enough: the broker must answer metadata requests.
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({"bootstrap.servers": self.endpoint, "log_level": 0})
            metadata = admin.list_topics(timeout=2)
            return len(metadata.brokers) > 0
        except Exception:
            return False

    def detail(self) -> str:
        return f"KRaft, jars {self.libs}, data {self.root / 'data'}"
