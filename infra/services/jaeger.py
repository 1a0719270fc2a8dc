"""Jaeger v2: the local OTLP receiver and trace store the tracing tests read back (ADR 0062).

Built from source through the Go module proxy (no binary download, no image): ``infra/otel/go.mod``
pins Jaeger as a Go tool (``go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.75.0``),
and ``go build`` makes ``var/jaeger/bin/jaeger``. A cold build takes about five minutes on two
cores, so ``stack up`` only begins the build in the background (``deferred``) and goes on:
``make test`` lints and tests meanwhile, and the tracing tests' fixture starts Jaeger, waiting
for the build (:meth:`Jaeger.install`); ``stack up jaeger`` does the same by hand.
The binary is rebuilt only when ``go.mod``/``go.sum`` (or the Go toolchain) change: their
digest is stamped next to it.

It runs all-in-one with ``infra/otel/jaeger.yaml``: OTLP/HTTP in, traces in memory, the query
API (``/api/traces/{id}``, ``/api/services``) and UI out, all on loopback and on ports away from
Jaeger's defaults (``Settings.jaeger_otlp_url``, ``Settings.jaeger_query_url``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

import httpx

from foundation.settings import PROJECT_ROOT
from infra.services.base import (
    Service,
    ServiceError,
    find_command,
    log,
    pid_alive,
    port_open,
    tail_of,
)

INFRA: Final = PROJECT_ROOT / "infra" / "otel"
PACKAGE: Final = "github.com/jaegertracing/jaeger/cmd/jaeger"
GO_HINT: Final = (
    "Jaeger is built with Go 1.26.8 or newer (the go line of infra/otel/go.mod): "
    "https://go.dev/dl/, e.g. unpacked in /usr/local/go."
)
BUILD_TIMEOUT_S: Final = 20 * 60.0


def _go() -> str:
    found = find_command("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if found is None:
        raise ServiceError(f"'go' is not on PATH. {GO_HINT}")
    return found


class Jaeger(Service):
    name = "jaeger"
    # Its build is slow and only the tracing tests need it: `stack up` begins the build and
    # goes on; `stack up jaeger` and the tests' fixture start it (waiting for the build).
    background = True
    deferred = True

    @property
    def endpoint(self) -> str:
        return f"{self.settings.jaeger_query_url} (OTLP {self.settings.jaeger_otlp_url})"

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "jaeger"

    @property
    def stamp_file(self) -> Path:
        return self.root / "bin" / "jaeger.stamp"

    @property
    def build_pid_file(self) -> Path:
        return self.settings.data_dir / "run" / "jaeger-build.pid"

    @property
    def build_log(self) -> Path:
        return self.settings.data_dir / "log" / "jaeger-build.log"

    def _ports(self) -> dict[str, int]:
        otlp = urlparse(self.settings.jaeger_otlp_url)
        query = urlparse(self.settings.jaeger_query_url)
        for url in (otlp, query):
            if url.hostname not in ("127.0.0.1", "localhost"):
                raise ServiceError(
                    f"The local Jaeger only listens on loopback, not {url.hostname} "
                    "(REFLUX_JAEGER_OTLP_URL / REFLUX_JAEGER_QUERY_URL)."
                )
        query_port = query.port or 80
        return {
            "REFLUX_JAEGER_OTLP_HTTP_PORT": otlp.port or 80,
            "REFLUX_JAEGER_QUERY_PORT": query_port,
            # Next to the query port: its gRPC API and the health check (not used by REFLUX).
            "REFLUX_JAEGER_QUERY_GRPC_PORT": query_port + 1,
            "REFLUX_JAEGER_HEALTH_PORT": query_port + 2,
        }

    # -- the build --------------------------------------------------------------------------
    def wanted_stamp(self) -> str:
        version = subprocess.run(
            [_go(), "env", "GOVERSION"], capture_output=True, text=True, check=True
        ).stdout.strip()
        digest = hashlib.sha256()
        for path in (INFRA / "go.mod", INFRA / "go.sum"):
            digest.update(path.read_bytes())
        digest.update(version.encode())
        return digest.hexdigest()

    def built(self) -> bool:
        try:
            return self.binary.exists() and self.stamp_file.read_text() == self.wanted_stamp()
        except OSError:
            return False

    def _build_pid(self) -> int | None:
        try:
            pid = int(self.build_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def prepare(self) -> None:
        """Starts the build in the background when the binary is missing or stale (a no-op
        when it is current or a build is already running)."""
        if self.built() or self._build_pid() is not None:
            return
        go = _go()
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        self.build_log.parent.mkdir(parents=True, exist_ok=True)
        self.build_pid_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.binary.with_suffix(".partial")
        # The stamp last: an interrupted build leaves no stamp, and the next `up` builds again.
        script = (
            # Niced: it runs while `make test` lints and tests, which must keep their pace.
            f"nice -n 10 {shlex.quote(go)} build -o {shlex.quote(str(partial))} {PACKAGE}"
            f" && mv {shlex.quote(str(partial))} {shlex.quote(str(self.binary))}"
            f" && printf %s {self.wanted_stamp()} > {shlex.quote(str(self.stamp_file))}"
        )
        log(f"jaeger: building {PACKAGE} in the background (log {self.build_log})")
        with self.build_log.open("ab") as out:
            proc = subprocess.Popen(
                ["sh", "-c", script],
                cwd=INFRA,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # The toolchain on the machine, never one fetched to satisfy go.mod's line.
                env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
                start_new_session=True,
            )
        self.build_pid_file.write_text(str(proc.pid))

    def install(self) -> None:
        """Waits for the background build (starting one if none ran)."""
        self.prepare()
        began = time.monotonic()
        while (pid := self._build_pid()) is not None:
            if time.monotonic() - began > BUILD_TIMEOUT_S:
                raise ServiceError(
                    f"jaeger: build (pid {pid}) not done after {BUILD_TIMEOUT_S:.0f}s."
                    f"{tail_of(self.build_log)}"
                )
            time.sleep(0.5)
        self.build_pid_file.unlink(missing_ok=True)
        if not self.built():
            raise ServiceError(f"jaeger: the build failed.{tail_of(self.build_log)}")
        if time.monotonic() - began > 1:
            log(f"jaeger: waited {time.monotonic() - began:.0f}s for its build")

    # -- the service ------------------------------------------------------------------------
    def start(self) -> float:
        self.install()
        # A binary rebuilt under a running Jaeger (go.mod changed) takes effect on restart.
        pid = self.read_pid()
        if pid is not None and Path(f"/proc/{pid}/exe").resolve() != self.binary.resolve():
            log("jaeger: restarting on the rebuilt binary")
            self.stop()
        return super().start()

    def launch(self) -> None:
        env = {name: str(port) for name, port in self._ports().items()}
        self.spawn(
            [str(self.binary), "--config", str(INFRA / "jaeger.yaml")], cwd=self.root, env=env
        )

    def start_timeout(self) -> float:
        return 60.0

    def port_in_use(self) -> bool:
        ports = self._ports()
        return port_open("127.0.0.1", ports["REFLUX_JAEGER_OTLP_HTTP_PORT"]) or port_open(
            "127.0.0.1", ports["REFLUX_JAEGER_QUERY_PORT"]
        )

    def is_ready(self) -> bool:
        try:
            answer = httpx.get(f"{self.settings.jaeger_query_url}/api/services", timeout=2.0)
        except httpx.HTTPError as exc:
            self.last_probe_error = str(exc)
            return False
        self.last_probe_error = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
        return answer.status_code == 200 and port_open(
            "127.0.0.1", self._ports()["REFLUX_JAEGER_OTLP_HTTP_PORT"]
        )

    def detail(self) -> str:
        return f"binary {self.binary}, traces in memory"
