"""ClickHouse: the embedded chdb engine by default, a ClickHouse server by configuration.

chdb runs inside a Python process; exactly one process may own a chdb data folder at a time, so
there is nothing to start here. The owner is the process that serves ClickHouse queries (the
projector / API process, see docs/decisions/0001-local-infrastructure.md). With
``REFLUX_CLICKHOUSE_DSN=http://host:8123`` the same client code talks to a server instead.
"""

from __future__ import annotations

import importlib.util

from infra.services.base import Service, ServiceError, ServiceStatus


class ClickHouse(Service):
    name = "clickhouse"

    @property
    def endpoint(self) -> str:
        return self.settings.resolved_clickhouse_dsn()

    @property
    def embedded(self) -> bool:
        return self.endpoint.startswith("chdb://")

    def install(self) -> None:
        if self.embedded and importlib.util.find_spec("chdb") is None:
            raise ServiceError("chdb is not installed in this environment; run `make venv`.")

    def launch(self) -> None:  # embedded: nothing to launch
        return None

    def is_ready(self) -> bool:
        if self.embedded:
            return importlib.util.find_spec("chdb") is not None
        from projections.clickhouse import connect

        try:
            connect(self.settings).close()
            return True
        except Exception:
            return False

    def start(self) -> float:
        self.install()
        if self.embedded:
            self.root.mkdir(parents=True, exist_ok=True)
        return 0.0

    def stop(self, timeout: float = 30.0) -> bool:
        return False

    def status(self) -> ServiceStatus:
        ready = self.is_ready()
        mode = (
            "embedded chdb, in-process (owned by the process that opens it)"
            if self.embedded
            else "ClickHouse server over HTTP"
        )
        return ServiceStatus(self.name, ready, ready, self.endpoint, None, mode)
