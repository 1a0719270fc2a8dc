"""Which databases ``database.query`` may reach.

See docs/decisions/0044-database-access-and-platform-credentials.md. Three rules, each a
non-retryable ``DatabasePolicy`` error that names the rule (``tcp-target`` below too):

- ``configured-connection``: the target is one the operator configured (``databases.yaml``
  maps a connection name to the secret holding its DSN, granted to the workflow). A ``dsn`` param
  is accepted only when it points at the same (host, port, database, user) as such a connection.
- ``platform-database``: never the platform's own PostgreSQL (host:port of
  ``Settings.postgres_dsn``, any database on it), even when an operator configured it. Checked
  after DNS resolution: a loopback platform also covers every loopback and local address, and
  the connection then goes to the address that was checked (``hostaddr``), so a name that
  resolves differently a moment later cannot slip through.

A target is a TCP host: Unix sockets, several hosts, ``service``/``servicefile`` (which would
fetch the target from a file on the worker) and a DSN without host (libpq would take
``PGHOST``) are refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Final, NamedTuple

import psycopg
from psycopg.conninfo import conninfo_to_dict

from node_workers.node import NonRetryableNodeError

__all__ = [
    "DEFAULT_PORT",
    "DatabaseTarget",
    "PlatformDatabase",
    "policy_error",
    "target_of",
]

DEFAULT_PORT: Final = 5432
_REFUSED_KEYS: Final = ("service", "servicefile", "hostaddr")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def policy_error(rule: str, message: str) -> NonRetryableNodeError:
    return NonRetryableNodeError(
        f"{message} (database policy rule '{rule}', see docs/nodes.md#databasequery)",
        error_class="DatabasePolicy",
    )


class DatabaseTarget(NamedTuple):
    """Where a DSN goes: what two DSNs must share to be the same configured connection."""

    host: str
    port: int
    dbname: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def target_of(dsn: str, what: str) -> DatabaseTarget:
    """The target of ``dsn``; ``what`` names it in errors (never the DSN: it holds a password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise policy_error(
            "configured-connection", f"Expected {what} to be a PostgreSQL connection string"
        ) from None
    refused = [key for key in _REFUSED_KEYS if params.get(key)]
    if refused:
        raise policy_error(
            "tcp-target", f"Expected {what} to name its host directly, but it sets {refused}"
        )
    host = str(params.get("host") or "")
    if not host or host.startswith("/") or host.startswith("@") or "," in host:
        raise policy_error(
            "tcp-target",
            f"Expected {what} to name exactly one TCP host, but it names "
            f"{'none' if not host else 'a Unix socket or several hosts'}",
        )
    raw_port = str(params.get("port") or DEFAULT_PORT)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise policy_error("tcp-target", f"Expected {what} to have one port, got {raw_port!r}")
    user = str(params.get("user") or "")
    dbname = str(params.get("dbname") or user)
    return DatabaseTarget(host.lower(), int(raw_port), dbname, user)


async def resolve(host: str, port: int) -> list[IpAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise policy_error(
            "tcp-target", f"Expected the database host {host!r} to resolve, but: {exc}"
        ) from None
    # The scope of a link-local IPv6 address ("fe80::1%eth0") is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _local_addresses() -> set[IpAddress]:
    found: set[IpAddress] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
    except OSError:
        pass
    return found


@dataclass(frozen=True)
class PlatformDatabase:
    """The platform's own PostgreSQL: ``port`` on any of ``addresses`` (or, when ``local``, on
    any loopback, unspecified or own address of this machine)."""

    port: int
    addresses: frozenset[IpAddress]
    local: bool
    label: str

    @classmethod
    def from_dsn(cls, dsn: str) -> PlatformDatabase:
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "127.0.0.1").split(",")[0]
        port = int(str(params.get("port") or DEFAULT_PORT).split(",")[0])
        try:
            addresses = {ipaddress.ip_address(host)}
        except ValueError:
            try:
                addresses = {
                    ipaddress.ip_address(str(i[4][0]).split("%", 1)[0])
                    for i in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                }
            except OSError:
                addresses = set()
        local = host == "localhost" or any(a.is_loopback or a.is_unspecified for a in addresses)
        return cls(port, frozenset(addresses), local, f"{host}:{port}")

    def covers(self, address: IpAddress, port: int) -> bool:
        if port != self.port:
            return False
        if address in self.addresses:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return self.covers(address.ipv4_mapped, port)
        return self.local and (
            address.is_loopback or address.is_unspecified or address in _local_addresses()
        )

    async def checked_address(self, target: DatabaseTarget) -> str:
        """The address to connect to for ``target``; raises the ``platform-database`` rule when
        any address the host resolves to is the platform's database."""
        addresses = await resolve(target.host, target.port)
        if not addresses:
            raise policy_error("tcp-target", f"Expected {target.host!r} to resolve to an address")
        for address in addresses:
            if self.covers(address, target.port):
                raise policy_error(
                    "platform-database",
                    f"database.query may not reach the platform's own PostgreSQL "
                    f"({self.label}, any database on it); {target.host}:{target.port} is it",
                )
        return str(addresses[0])
