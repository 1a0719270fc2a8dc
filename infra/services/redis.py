"""Redis from Debian's redis-server: two instances with opposite memory policies.

- ``redis`` (``REFLUX_REDIS_URL``): the step cache. Volatile on purpose: no persistence, and
  at ``maxmemory`` the least recently used keys are evicted.
- ``redis-ledger`` (``REFLUX_LEDGER_REDIS_URL``): the workers' attempt ledger, and (unless
  ``REFLUX_WEBHOOK_REDIS_URL`` names another noeviction instance) the webhook mailboxes and
  replay store under their own keys (ADR 0047). Nothing is ever evicted (``noeviction``: a full
  instance refuses writes, loudly) and every write goes to the append-only file, so a
  ``kill -9`` of the server loses no claim (ADR 0017).

They are separate processes because ``maxmemory`` and the eviction policy belong to the
instance, not to a logical database: a cache filling up must never push out a ledger entry.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlparse

from infra.services.base import Service, ensure_debian_packages, port_open


class Redis(Service):
    name = "redis"
    debian_packages: ClassVar[dict[str, str]] = {"redis-server": "redis-server"}
    maxmemory = "512mb"
    # Options that make the instance what it is; the base ones (address, folder) come first.
    policy: tuple[str, ...] = (
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "allkeys-lru",
    )

    @property
    def url(self) -> str:
        return self.settings.redis_url

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.url)
        return url.hostname or "127.0.0.1", url.port or 6379

    @property
    def endpoint(self) -> str:
        return self.url

    def install(self) -> None:
        ensure_debian_packages(self.debian_packages)

    def port_in_use(self) -> bool:
        return port_open(*self.host_port)

    def argv(self) -> list[str]:
        host, port = self.host_port
        return [
            "redis-server",
            "--bind",
            host,
            "--port",
            str(port),
            "--dir",
            str(self.root),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--maxmemory",
            self.maxmemory,
            *self.policy,
        ]

    def launch(self) -> None:
        self.spawn(self.argv())

    def is_ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.endpoint, socket_timeout=1).ping())
        except Exception:
            return False


class LedgerRedis(Redis):
    """The attempt ledger's own instance: no eviction, append-only file (ADR 0017)."""

    name = "redis-ledger"
    # A bound, so a ledger outgrowing its machine fails writes with an OOM error instead of
    # being killed by the kernel; with noeviction no key is ever dropped to make room.
    maxmemory = "1gb"
    policy = (
        "--maxmemory-policy",
        "noeviction",
        "--appendonly",
        "yes",
        # Each write reaches the kernel before Redis answers, so a killed server loses nothing;
        # fsync once a second bounds a machine crash's loss to that second.
        "--appendfsync",
        "everysec",
        "--appendfilename",
        "ledger.aof",
        "--save",
        "",
    )

    @property
    def url(self) -> str:
        return self.settings.ledger_redis_url

    def detail(self) -> str:
        return f"data {self.root} (append-only, noeviction)"
