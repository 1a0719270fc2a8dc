"""Redis from Debian's redis-server: step cache and short-lived hot state only."""

from __future__ import annotations

from urllib.parse import urlparse

from infra.services.base import Service, ensure_debian_packages, port_open


class Redis(Service):
    name = "redis"

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.settings.redis_url)
        return url.hostname or "127.0.0.1", url.port or 6379

    @property
    def endpoint(self) -> str:
        return self.settings.redis_url

    def install(self) -> None:
        ensure_debian_packages({"redis-server": "redis-server"})

    def port_in_use(self) -> bool:
        return port_open(*self.host_port)

    def launch(self) -> None:
        host, port = self.host_port
        self.spawn(
            [
                "redis-server",
                "--bind",
                host,
                "--port",
                str(port),
                "--dir",
                str(self.root),
                "--daemonize",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--maxmemory",
                "512mb",
                "--maxmemory-policy",
                "allkeys-lru",
            ]
        )

    def is_ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.endpoint, socket_timeout=1).ping())
        except Exception:
            return False
