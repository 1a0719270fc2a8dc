"""The egress policy: may a node open a connection to this address? Pure: no DNS, no sockets.

A node that calls a destination a workflow controls (``http.request``'s URL, ``openai.chat``'s
``base_url``, ``email.send``'s SMTP host) asks :meth:`EgressPolicy.check` about the address it
is about to connect to, after DNS resolution (the edge, :mod:`node_workers.egress.net`, resolves,
checks and connects to the checked address). The answer names the rule that decided, so a
denied step says why (docs/decisions/0045-egress-policy.md).

Order of the rules, first match wins:

1. the platform's own endpoints (Kafka, Postgres, both Redis, S3, ClickHouse, the API; on a
   loopback address, that port on *every* loopback address): denied unless the operator's
   allow list names that exact ``host:port`` (or ``ip:port``);
2. cloud metadata addresses (169.254.169.254, fd00:ec2::254, ...): denied unless the operator's
   allow list names that exact address;
3. public unicast: allowed;
4. every other class (loopback, link-local, private, CGNAT, unspecified, multicast, broadcast,
   reserved, documentation, IPv6 transition forms of those): denied unless an allow entry
   matches: the operator's list; or the run's tenant's list or its workflow's list, each only
   inside the operator's grantable set. A denial names every list it consulted.

IPv4 embedded in IPv6 (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``) is judged as the IPv4 it reaches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from foundation.tenancy import DEFAULT_TENANT

__all__ = [
    "CROSS_ORIGIN_SAFE_HEADERS",
    "TENANT_ALLOW_SETTING",
    "WORKFLOW_ALLOW_SETTING",
    "AllowEntry",
    "Decision",
    "EgressPolicy",
    "EgressScope",
    "IPAddress",
    "IPNetwork",
    "PlatformEndpoint",
    "address_class",
    "cross_origin_headers",
    "embedded_ipv4",
    "parse_allow_entries",
    "parse_allow_entry",
    "same_origin",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


METADATA: Final = _nets(
    "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2/32",  # AWS ECS task credentials
    "100.100.100.200/32",  # Alibaba Cloud
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
)
"""Instance metadata services: credentials of the machine. Only an exact operator entry opens
one (a CIDR covering it does not)."""

# (rule name, networks), checked in this order; a public unicast address matches none.
_DENIED_CLASSES: Final[tuple[tuple[str, tuple[IPNetwork, ...]], ...]] = (
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("link-local", _nets("169.254.0.0/16", "fe80::/10")),
    ("private", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("cgnat", _nets("100.64.0.0/10")),
    ("broadcast", _nets("255.255.255.255/32")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    (
        "reserved",
        _nets(
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",  # documentation
            "198.18.0.0/15",  # benchmarking
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "100::/64",  # discard
            "2001:db8::/32",
            "fec0::/10",  # deprecated site-local
        ),
    ),
)

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR: Final = ipaddress.ip_network("2002::/16")
_TEREDO: Final = ipaddress.ip_network("2001::/32")
_V4_COMPATIBLE: Final = ipaddress.ip_network("::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches (mapped, compatible, NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    if address in _TEREDO and address.teredo is not None:
        return address.teredo[1]
    return None


def _effective(address: IPAddress) -> IPAddress:
    """The address whose class decides: the embedded IPv4 of a transition form, else itself."""
    return embedded_ipv4(address) or address


def address_class(address: IPAddress) -> str | None:
    """The denied class of ``address`` (``"loopback"``, ``"metadata"``, ...), ``None`` when it
    is public unicast."""
    target = _effective(address)
    if any(target in net for net in METADATA if net.version == target.version):
        return "metadata"
    for name, nets in _DENIED_CLASSES:
        if any(target in net for net in nets if net.version == target.version):
            return name
    # Anything else the standard library does not call global (a range the tables above miss).
    if not target.is_global:
        return "reserved"
    return None


def _describe(address: IPAddress) -> str:
    embedded = embedded_ipv4(address)
    return f"{address} (the IPv6 form of {embedded})" if embedded is not None else str(address)


# -- allow entries ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One allow-list entry: a CIDR or an address (``10.0.0.0/8``, ``127.0.0.1:8080``,
    ``[::1]:8080``) or a host name (``api.internal``, ``*.corp.example:443``), optional port."""

    text: str
    network: IPNetwork | None = None
    host: str | None = None
    """Lower-case name; a leading ``*.`` matches any sub-domain (not the domain itself)."""
    port: int | None = None

    @property
    def exact(self) -> bool:
        """Names one address or one host *and* a port: what opens a platform endpoint."""
        single = self.network is not None and self.network.num_addresses == 1
        named = self.host is not None and not self.host.startswith("*.")
        return self.port is not None and (single or named)

    def matches_port(self, port: int) -> bool:
        return self.port is None or self.port == port

    def matches_address(self, address: IPAddress) -> bool:
        if self.network is None:
            return False
        return any(
            candidate.version == self.network.version and candidate in self.network
            for candidate in {address, _effective(address)}
        )

    def matches_host(self, host: str) -> bool:
        if self.host is None:
            return False
        host = host.lower().rstrip(".")
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def matches(self, host: str, port: int, address: IPAddress) -> bool:
        return self.matches_port(port) and (
            self.matches_address(address) or self.matches_host(host)
        )


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"Expected a port between 1 and 65535 in {entry!r}, but got {text!r}")
    return int(text)


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


_HOST_LABEL_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def parse_allow_entry(text: str) -> AllowEntry:
    """Parse one entry; ``ValueError`` with a message naming the entry when it is malformed."""
    entry = text.strip()
    if not entry:
        raise ValueError("Expected an allow entry (CIDR, address or host, optional :port), got ''")
    port: int | None = None
    body = entry
    if body.startswith("["):  # [v6] or [v6]:port or [v6/len]
        close = body.find("]")
        if close < 0:
            raise ValueError(f"Expected ']' closing the IPv6 address in {entry!r}")
        rest = body[close + 1 :]
        body = body[1:close]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"Expected ':port' after ']' in {entry!r}, but got {rest!r}")
            port = _port(rest[1:], entry)
    elif body.count(":") == 1:  # v4 or host with a port (a bare IPv6 has several colons)
        body, port_text = body.split(":")
        port = _port(port_text, entry)
    network = _network(body)
    if network is not None:
        return AllowEntry(text=entry, network=network, port=port)
    host = body.lower().rstrip(".")
    labels = host.removeprefix("*.").split(".")
    if (
        ":" in host
        or "/" in host
        or not all(label and set(label) <= _HOST_LABEL_CHARS for label in labels)
    ):
        raise ValueError(
            f"Expected a CIDR, an IP address or a host name (optionally ':port'), but got {entry!r}"
        )
    return AllowEntry(text=entry, host=host, port=port)


def parse_allow_entries(texts: Iterable[str]) -> tuple[AllowEntry, ...]:
    return tuple(parse_allow_entry(t) for t in texts)


# -- the platform's own endpoints ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlatformEndpoint:
    """A service of the platform (``name`` e.g. ``"Redis (cache)"``) at ``host:port``, with the
    addresses ``host`` resolved to when the policy was built."""

    name: str
    host: str
    port: int
    addresses: frozenset[IPAddress] = frozenset()

    @property
    def on_loopback(self) -> bool:
        return any(
            _effective(a).is_loopback or _effective(a).is_unspecified for a in self.addresses
        )

    def matches(self, host: str, port: int, address: IPAddress) -> bool:
        if port != self.port:
            return False
        if host.lower().rstrip(".") == self.host.lower():
            return True
        target = _effective(address)
        if target in self.addresses or address in self.addresses:
            return True
        # A service bound to loopback (or to every address) answers on every loopback address
        # and on the unspecified one: 127.0.0.2 or [::1] or 0.0.0.0 must not slip past it.
        return self.on_loopback and (target.is_loopback or target.is_unspecified)

    def opened_by(self, entry: AllowEntry, host: str, address: IPAddress) -> bool:
        """Only an exact ``host:port`` / ``ip:port`` entry for this very port opens it."""
        return (
            entry.exact
            and entry.port == self.port
            and (entry.matches_host(host) or entry.matches_address(address))
        )


# -- decisions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str
    """``public``, ``allow-list``, ``tenant-allow-list``, ``workflow-allow-list``, or the
    denying class:
    ``platform-endpoint``, ``metadata``, ``loopback``, ``link-local``, ``private``, ``cgnat``,
    ``unspecified``, ``multicast``, ``broadcast``, ``reserved``."""
    host: str
    port: int
    address: IPAddress
    detail: str = ""

    def explain(self) -> str:
        """One line for a step's error: host, resolved address, rule, how to open it."""
        where = f"{self.host}:{self.port}"
        resolved = _describe(self.address)
        if self.allowed:
            return f"{where} ({resolved}) allowed by {self.rule} {self.detail}".rstrip()
        return (
            f"Egress to {where} denied: it resolved to {resolved}, which the rule "
            f"{self.rule!r} denies{': ' + self.detail if self.detail else ''}"
        )


@dataclass(frozen=True, slots=True)
class EgressScope:
    """Whose call it is: the run's tenant and its workflow. Each may have an allow list of its
    own, held by the operator and bounded by the grantable set (:meth:`EgressPolicy.for_scope`)."""

    workflow_id: str = ""
    tenant: str = DEFAULT_TENANT


TENANT_ALLOW_SETTING: Final = "REFLUX_EGRESS_TENANT_ALLOW"
WORKFLOW_ALLOW_SETTING: Final = "REFLUX_EGRESS_WORKFLOW_ALLOW"


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The operator's policy; :meth:`for_scope` narrows it to one call (a tenant's workflow)."""

    allow: tuple[AllowEntry, ...] = ()
    """Open for every workflow (and the only list that opens platform endpoints and metadata)."""
    grantable: tuple[AllowEntry, ...] = ()
    """The ceiling of every narrower list: a tenant's or a workflow's entry opens a destination
    only if an entry here matches it too."""
    workflow_allow: Mapping[str, tuple[AllowEntry, ...]] = field(default_factory=dict)
    """Per workflow id, held by the operator (never by the workflow definition). A workflow id
    belongs to one tenant (ADR 0051), so the list applies to that workflow's runs only."""
    tenant_allow: Mapping[str, tuple[AllowEntry, ...]] = field(default_factory=dict)
    """Per tenant, held by the operator: for every workflow of that tenant."""
    platform: tuple[PlatformEndpoint, ...] = ()
    scope: EgressScope | None = None
    """The call this policy was narrowed to by :meth:`for_scope` (``None``: the operator's
    lists only). Part of the identity: connection pools are per scope, and a denial names the
    scope's lists."""
    tenant_scoped: tuple[AllowEntry, ...] = ()
    """The scope's tenant's entries, set by :meth:`for_scope`."""
    workflow_scoped: tuple[AllowEntry, ...] = ()
    """The scope's workflow's entries, set by :meth:`for_scope`."""

    def __hash__(self) -> int:  # Mapping fields are not hashable; identity of the lists is.
        return hash(
            (
                self.allow,
                self.grantable,
                self.platform,
                self.scope,
                self.tenant_scoped,
                self.workflow_scoped,
            )
        )

    def for_scope(self, scope: EgressScope) -> EgressPolicy:
        """The policy of one call: the operator's lists plus the tenant's and the workflow's."""
        if scope == self.scope:
            return self
        return EgressPolicy(
            allow=self.allow,
            grantable=self.grantable,
            workflow_allow=self.workflow_allow,
            tenant_allow=self.tenant_allow,
            platform=self.platform,
            scope=scope,
            tenant_scoped=self.tenant_allow.get(scope.tenant, ()),
            workflow_scoped=self.workflow_allow.get(scope.workflow_id, ()),
        )

    def consulted(self) -> str:
        """The allow lists this policy consults, for a denial: where an entry would go."""
        lists = ["REFLUX_EGRESS_ALLOW (operator)"]
        if self.scope is not None:
            tenant, workflow = self.scope.tenant, self.scope.workflow_id
            lists.append(
                f"{self._list_name('tenant')} (tenant {tenant!r}: {_count(self.tenant_scoped)})"
            )
            lists.append(
                f"{self._list_name('workflow')} (workflow {workflow!r}: "
                f"{_count(self.workflow_scoped)})"
            )
        return ", ".join(lists)

    def _scoped_opener(
        self, host: str, port: int, address: IPAddress
    ) -> tuple[str, AllowEntry] | None:
        """``(kind, entry)``: the first entry of the tenant's, then the workflow's list that
        matches the destination; ``None`` when neither list has one."""
        for kind, entries in (("tenant", self.tenant_scoped), ("workflow", self.workflow_scoped)):
            entry = next((e for e in entries if e.matches(host, port, address)), None)
            if entry is not None:
                return kind, entry
        return None

    def _list_name(self, kind: str) -> str:
        """The setting holding the scope's ``kind`` (``tenant``, ``workflow``) list, e.g.
        ``REFLUX_EGRESS_TENANT_ALLOW['acme']``."""
        assert self.scope is not None  # scoped entries exist only in a scoped policy
        if kind == "tenant":
            return f"{TENANT_ALLOW_SETTING}[{self.scope.tenant!r}]"
        return f"{WORKFLOW_ALLOW_SETTING}[{self.scope.workflow_id!r}]"

    def check(self, host: str, port: int, address: IPAddress) -> Decision:
        """Whether a connection to ``address:port`` (resolved from ``host``) is allowed."""

        def decide(allowed: bool, rule: str, detail: str = "") -> Decision:
            return Decision(allowed, rule, host, port, address, detail)

        for endpoint in self.platform:
            if endpoint.matches(host, port, address):
                opener = next((e for e in self.allow if endpoint.opened_by(e, host, address)), None)
                if opener is not None:
                    return decide(True, "allow-list", f"entry {opener.text!r}")
                return decide(
                    False,
                    "platform-endpoint",
                    f"the platform's {endpoint.name} at {endpoint.host}:{endpoint.port}; only "
                    f"an exact '{endpoint.host}:{endpoint.port}' entry in REFLUX_EGRESS_ALLOW "
                    "opens it (never a tenant's or a workflow's list)",
                )
        denied = address_class(address)
        if denied is None:
            return decide(True, "public")
        if denied == "metadata":
            opener = next(
                (
                    e
                    for e in self.allow
                    if e.matches_port(port)
                    and e.network is not None
                    and e.network.num_addresses == 1
                    and e.matches_address(address)
                ),
                None,
            )
            if opener is not None:
                return decide(True, "allow-list", f"entry {opener.text!r}")
            return decide(
                False,
                "metadata",
                "a cloud instance-metadata address; only an exact address entry in "
                "REFLUX_EGRESS_ALLOW opens it (never a tenant's or a workflow's list)",
            )
        opener = next((e for e in self.allow if e.matches(host, port, address)), None)
        if opener is not None:
            return decide(True, "allow-list", f"entry {opener.text!r}")
        # The destination's grantable-ness does not depend on which scoped entry matched.
        ceiling = next((g for g in self.grantable if g.matches(host, port, address)), None)
        found = self._scoped_opener(host, port, address)
        if found is not None:
            kind, scoped = found
            if ceiling is not None:
                return decide(
                    True,
                    f"{kind}-allow-list",
                    f"entry {scoped.text!r} of {self._list_name(kind)} within {ceiling.text!r}",
                )
            return decide(
                False,
                denied,
                f"entry {scoped.text!r} of {self._list_name(kind)} is outside the operator's "
                "grantable set (REFLUX_EGRESS_GRANTABLE)",
            )
        if self.scope is None:
            return decide(False, denied, "not in REFLUX_EGRESS_ALLOW")
        where = (
            "an entry in the tenant's or the workflow's list would open it (the operator's "
            "grantable set covers it)"
            if ceiling is not None
            else "outside the operator's grantable set (REFLUX_EGRESS_GRANTABLE), so only "
            "REFLUX_EGRESS_ALLOW can open it"
        )
        consulted = self.consulted()
        return decide(
            False, denied, f"it is in none of the allow lists consulted: {consulted}; {where}"
        )


def _count(entries: tuple[AllowEntry, ...]) -> str:
    if not entries:
        return "no entries"
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, none matching"


# -- redirects ----------------------------------------------------------------------------------

CROSS_ORIGIN_SAFE_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "content-language",
        "content-type",
        "idempotency-key",
        "user-agent",
        "x-reflux-invocation-id",
    }
)
"""The only request headers a redirect to another origin carries: Authorization, Cookie,
Proxy-Authorization and every custom header (an API key, a signature) stay with the origin the
step named. An allow list, not a deny list: a header we never heard of may be a credential."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _origin(scheme: str, host: str, port: int | None) -> tuple[str, str, int | None]:
    scheme = scheme.lower()
    return scheme, host.lower().rstrip("."), port or _DEFAULT_PORTS.get(scheme)


def same_origin(a: tuple[str, str, int | None], b: tuple[str, str, int | None]) -> bool:
    """Same scheme, host and port (default ports filled in): an https -> http downgrade on
    the same host is another origin."""
    return _origin(*a) == _origin(*b)


def cross_origin_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers a request keeps when a redirect leads to another origin."""
    return [(k, v) for k, v in headers if k.lower() in CROSS_ORIGIN_SAFE_HEADERS]
