"""An S3-compatible object store: s3proxy (Maven Central) with a filesystem backend.

Its credentials are not in the code: unless the environment sets ``REFLUX_S3_ACCESS_KEY`` and
``REFLUX_S3_SECRET_KEY``, `make up` generates them into ``data_dir/credentials/s3.json`` (0600),
where ``Settings`` reads them. A running s3proxy configured with other keys (one started by an
older `make up` with the former built-in key) is restarted with the current ones.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from foundation.settings import PROJECT_ROOT, S3_CREDENTIALS
from infra.services.base import Service, ServiceError, log, port_open
from infra.services.credentials import read_or_create_json, write_private
from infra.services.kafka import java_major, maven_classpath

INFRA = PROJECT_ROOT / "infra" / "s3proxy"


class S3(Service):
    name = "s3"

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.settings.s3_endpoint)
        return url.hostname or "127.0.0.1", url.port or 80

    @property
    def endpoint(self) -> str:
        return self.settings.s3_endpoint

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    def install(self) -> None:
        if java_major() < 17:
            raise ServiceError("s3proxy here needs Java 17 or newer on PATH.")
        maven_classpath(INFRA / "pom.xml", self.libs, [INFRA / "pom.xml"])
        self.ensure_credentials()

    def ensure_credentials(self) -> None:
        """Fills the settings' S3 keys from ``credentials/s3.json``, generated when missing."""
        if self.settings.s3_access_key and self.settings.s3_secret_key:
            return
        keys = read_or_create_json(
            self.settings.credentials_dir / S3_CREDENTIALS,
            ("access_key", "secret_key"),
            {"access_key": f"reflux-{secrets.token_hex(4)}", "secret_key": secrets.token_hex(32)},
        )
        self.settings = self.settings.model_copy(
            update={"s3_access_key": keys["access_key"], "s3_secret_key": keys["secret_key"]}
        )

    def _configured_keys(self) -> tuple[str, str] | None:
        """The keys the running s3proxy was started with (its properties file)."""
        try:
            text = (self.root / "s3proxy.properties").read_text()
        except OSError:
            return None
        found = dict(re.findall(r"^s3proxy\.(identity|credential)=(.*)$", text, re.MULTILINE))
        return (found.get("identity", ""), found.get("credential", ""))

    def start(self) -> float:
        self.install()
        wanted = (self.settings.s3_access_key, self.settings.s3_secret_key)
        if self.is_running() and self._configured_keys() != wanted:
            log("s3: restarting s3proxy with the credentials in credentials/s3.json")
            self.stop()
        return super().start()

    def port_in_use(self) -> bool:
        return port_open(*self.host_port)

    def launch(self) -> None:
        _, port = self.host_port
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3proxy.properties"
        write_private(  # it holds the secret key
            config,
            (INFRA / "s3proxy.properties.tmpl")
            .read_text()
            .format(
                port=port,
                access_key=self.settings.s3_access_key,
                secret_key=self.settings.s3_secret_key,
                data_dir=data,
            ),
        )
        self.spawn(
            [
                "java",
                "-Xms64m",
                "-Xmx384m",
                "-XX:+UseSerialGC",
                "-cp",
                f"{self.libs}/*",
                "org.gaul.s3proxy.Main",
                "--properties",
                str(config),
            ]
        )

    def client(self) -> Any:
        from foundation.objectstore import s3_client

        return s3_client(self.settings, connect_timeout=1, read_timeout=3)

    def is_ready(self) -> bool:
        if not port_open(*self.host_port):
            return False
        try:
            client = self.client()
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if self.settings.s3_bucket not in names:
                client.create_bucket(Bucket=self.settings.s3_bucket)
            return True
        except Exception as exc:
            # Kept for the "not ready" error: a listening port that never answers S3 calls is
            # otherwise indistinguishable from a slow start.
            self.last_probe_error = f"{type(exc).__name__}: {exc}"
            return False

    def detail(self) -> str:
        return f"s3proxy (filesystem backend), bucket '{self.settings.s3_bucket}', data {self.root}"
