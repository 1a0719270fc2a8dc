"""The egress policy's I/O edge: resolve a name, check every address, connect to a checked one.

The check is on the address actually connected to: the resolved address is pinned (we connect
to the IP we checked, never resolve twice), so a DNS answer that changes between the check and
the connect (rebinding) cannot slip through. TLS still verifies the certificate against the
host name the step named (httpcore passes it as ``server_hostname``).

- :class:`PolicyNetworkBackend`: an httpcore network backend (httpx's connection layer) whose
  ``connect_tcp`` resolves, checks and connects; :func:`egress_transport` puts it under an httpx
  (or the ``openai`` SDK's httpx2) transport. Every connection the client opens, including the
  ones redirects lead to, passes through it; a pooled keep-alive connection was checked when it
  was opened (pools are per policy scope, so one workflow never reuses another's).
- :func:`connect_checked`: the same for a blocking socket (``email.send``'s SMTP).
- :func:`policy_from_settings`: the operator's policy, platform endpoints resolved once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from typing import Any, Final, cast
from urllib.parse import urlsplit

from foundation.settings import Settings, get_settings
from foundation.tenancy import check_tenant_id
from node_workers.egress.policy import (
    TENANT_ALLOW_SETTING,
    WORKFLOW_ALLOW_SETTING,
    AllowEntry,
    Decision,
    EgressPolicy,
    EgressScope,
    IPAddress,
    PlatformEndpoint,
    parse_allow_entry,
)
from node_workers.errors import NonRetryableNodeError, RetryableNodeError

__all__ = [
    "EgressDeniedError",
    "OperatorPolicy",
    "PolicyNetworkBackend",
    "allowed_addresses",
    "connect_checked",
    "egress_transport",
    "platform_endpoints",
    "policy_from_settings",
]

logger = logging.getLogger(__name__)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "redis": 6379, "postgresql": 5432}


class EgressDeniedError(NonRetryableNodeError):
    """The egress policy refused the destination; another attempt would be refused too."""

    error_class = "EgressDenied"

    def __init__(self, decision: Decision, *, node: str = "") -> None:
        prefix = f"{node}: " if node else ""
        super().__init__(prefix + decision.explain())
        self.decision = decision


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _resolve_blocking(host: str, port: int) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return _unique(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    seen: list[IPAddress] = []
    for address in addresses:
        if address not in seen:
            seen.append(address)
    return seen


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return _unique(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)


def _filter(
    policy: EgressPolicy, host: str, port: int, addresses: Sequence[IPAddress], node: str
) -> list[IPAddress]:
    if not addresses:
        raise RetryableNodeError(
            f"{node}: {host} resolved to no address", error_class="NetworkError"
        )
    decisions = [policy.check(host, port, address) for address in addresses]
    allowed = [d.address for d in decisions if d.allowed]
    if not allowed:
        raise EgressDeniedError(decisions[0], node=node)
    if len(allowed) < len(addresses):
        # A name with a public and a private answer: connect to the public ones only.
        logger.info(
            "egress: %s resolved to denied addresses too, using only %s",
            host,
            [str(a) for a in allowed],
        )
    return allowed


async def allowed_addresses(
    policy: EgressPolicy, host: str, port: int, *, node: str = ""
) -> list[IPAddress]:
    """The addresses of ``host`` the policy allows, or :class:`EgressDeniedError`."""
    return _filter(policy, host, port, await _resolve(host, port), node)


def connect_checked(
    policy: EgressPolicy,
    host: str,
    port: int,
    timeout: float | None,
    source_address: tuple[str, int] | None = None,
    *,
    node: str = "",
) -> socket.socket:
    """A connected TCP socket to an allowed address of ``host`` (blocking; for smtplib)."""
    addresses = _filter(policy, host, port, _resolve_blocking(host, port), node)
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((str(address), port), timeout, source_address)
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


class PolicyNetworkBackend:
    """An httpcore (or httpcore2) ``AsyncNetworkBackend``: resolve, check, connect to the
    checked address. Duck-typed, so one class serves both libraries."""

    def __init__(self, inner: Any, policy: EgressPolicy, node: str) -> None:
        self._inner = inner
        self.policy = policy
        self._node = node

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        addresses = await allowed_addresses(self.policy, host, port, node=self._node)
        error: BaseException | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except Exception as exc:  # the library's ConnectError/ConnectTimeout: try the next
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        raise NonRetryableNodeError(
            f"{self._node}: Unix sockets are not reachable through the egress policy ({path})",
            error_class="EgressDenied",
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def egress_transport(
    policy: EgressPolicy, *, node: str, library: str = "httpx", **transport_kwargs: Any
) -> Any:
    """An ``AsyncHTTPTransport`` of ``library`` (``"httpx"``, or ``"httpx2"`` for the openai
    SDK) whose every connection goes through :class:`PolicyNetworkBackend`. Never a proxy, never
    the environment's proxy or .netrc (``trust_env=False``): the address checked is the one
    connected to."""
    if library == "httpx2":
        import httpcore2 as core
        import httpx2 as client_lib
    else:
        import httpcore as core  # type: ignore[no-redef]
        import httpx as client_lib  # type: ignore[no-redef]
    transport = client_lib.AsyncHTTPTransport(trust_env=False, **transport_kwargs)
    pool = transport._pool
    # httpx builds its pool without a network backend parameter; the pool is fresh (no
    # connection yet), so giving it ours now is the same as passing network_backend=.
    if not isinstance(pool, core.AsyncConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError(f"Cannot install the egress backend in {library}'s {type(pool)}")
    cast(Any, pool)._network_backend = PolicyNetworkBackend(core.AnyIOBackend(), policy, node)
    return transport


# -- the operator's policy ----------------------------------------------------------------------


def _endpoint(name: str, url_or_hostport: str, default_port: int) -> tuple[str, str, int] | None:
    text = url_or_hostport.strip()
    if not text:
        return None
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    if parts.hostname is None:
        return None
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, default_port)
    return name, parts.hostname, port


_NAMED: Final = {
    "postgres_dsn": ("Postgres", 5432),
    "redis_url": ("Redis (cache and mailboxes)", 6379),
    "ledger_redis_url": ("Redis (attempt ledger)", 6379),
    "s3_endpoint": ("S3", 443),
    "api_url": ("API", 80),
    # A ClickHouse server ("http://host:8123"); "chdb://" names no host and is skipped.
    "clickhouse_dsn": ("ClickHouse", 8123),
}
# Any other setting named like these is a service of the platform too (a Redis, a database, a
# broker added later is protected without touching this module).
_PLATFORM_SUFFIXES: Final = ("redis_url", "_dsn", "_bootstrap")


def platform_endpoints(settings: Settings) -> list[tuple[str, str, int]]:
    """(name, host, port) of every service of the platform named in ``settings``."""
    found: list[tuple[str, str, int] | None] = []
    secured = settings.kafka_security_protocol != "PLAINTEXT"
    for index, server in enumerate(settings.kafka_bootstrap.split(",")):
        kafka = _endpoint("Kafka", server, 9092)
        found.append(kafka)
        if kafka is None:
            continue
        # The local broker (infra/services/kafka.py): PLAINTEXT port p, KRaft controller p+1,
        # SASL_SSL listener p+2; clients of the secured listener name p+2.
        base = kafka[2] - 2 if secured else kafka[2]
        if index == 0 and settings.kafka_local_port is not None:
            base = settings.kafka_local_port
        found.append(("Kafka (PLAINTEXT listener)", kafka[1], base))
        found.append(("Kafka controller", kafka[1], base + 1))
        found.append(("Kafka (SASL_SSL listener)", kafka[1], base + 2))
    for field, (name, port) in _NAMED.items():
        found.append(_endpoint(name, str(getattr(settings, field)), port))
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        if (
            field not in _NAMED
            and field != "kafka_bootstrap"
            and field.endswith(_PLATFORM_SUFFIXES)
            and isinstance(value, str)
        ):
            for part in value.split(","):
                found.append(_endpoint(field, part, 0))
    if settings.docker_host.startswith("tcp://"):
        found.append(_endpoint("Docker engine", settings.docker_host, 2375))
    found.extend(_endpoint("platform service", e, 0) for e in settings.egress_platform_extra)
    return [e for e in found if e is not None and e[2] > 0]


def _resolved(host: str, port: int) -> frozenset[IPAddress]:
    try:
        return frozenset(_resolve_blocking(host, port))
    except OSError:
        # Not resolvable from here now: still matched by name, and the addresses of a name
        # the platform cannot resolve are no platform service of ours.
        return frozenset()


class OperatorPolicy:
    """A node's copy of the operator's egress policy: built from the worker's settings when it
    binds the node, else (a node used outside a worker) from the environment's, once."""

    def __init__(self) -> None:
        self._policy: EgressPolicy | None = None

    def bind(self, settings: Settings) -> None:
        self._policy = policy_from_settings(settings)

    def get(self) -> EgressPolicy:
        if self._policy is None:
            self.bind(get_settings())
        assert self._policy is not None
        return self._policy

    def for_call(self, *, workflow_id: str, tenant: str) -> EgressPolicy:
        """The policy for one step of a run of ``workflow_id`` in ``tenant``: the operator's,
        widened by the tenant's and the workflow's allow lists (inside the grantable set)."""
        return self.get().for_scope(EgressScope(workflow_id=workflow_id, tenant=tenant))


def policy_from_settings(settings: Settings) -> EgressPolicy:
    """The operator's policy (resolves the platform's host names once: I/O)."""
    endpoints = tuple(
        PlatformEndpoint(name, host, port, _resolved(host, port))
        for name, host, port in platform_endpoints(settings)
    )
    return EgressPolicy(
        allow=_entries("REFLUX_EGRESS_ALLOW", settings.egress_allow),
        grantable=_entries("REFLUX_EGRESS_GRANTABLE", settings.egress_grantable),
        workflow_allow={
            workflow: _entries(f"{WORKFLOW_ALLOW_SETTING}[{workflow!r}]", entries)
            for workflow, entries in settings.egress_workflow_allow.items()
        },
        tenant_allow={
            _tenant(tenant): _entries(f"{TENANT_ALLOW_SETTING}[{tenant!r}]", entries)
            for tenant, entries in settings.egress_tenant_allow.items()
        },
        platform=endpoints,
    )


def _tenant(tenant: str) -> str:
    # A key that is no tenant id ("Acme") would silently never match a run: refuse it.
    try:
        return check_tenant_id(tenant)
    except ValueError as exc:
        raise ValueError(f"{TENANT_ALLOW_SETTING}: {exc}") from None


def _entries(setting: str, texts: Iterable[str]) -> tuple[AllowEntry, ...]:
    out = []
    for index, text in enumerate(texts):
        try:
            out.append(parse_allow_entry(text))
        except ValueError as exc:
            raise ValueError(f"{setting}[{index}]: {exc}") from None
    return tuple(out)
