"""The pure egress policy: address classes, IPv4 inside IPv6, ports, allow entries, platform
endpoints, per-tenant and per-workflow lists bounded by the grantable set, denials naming the
lists they consulted, cross-origin headers."""

from __future__ import annotations

import ipaddress

import pytest

from foundation.settings import Settings
from node_workers.egress.net import platform_endpoints
from node_workers.egress.policy import (
    AllowEntry,
    EgressPolicy,
    EgressScope,
    PlatformEndpoint,
    address_class,
    cross_origin_headers,
    embedded_ipv4,
    parse_allow_entries,
    parse_allow_entry,
    same_origin,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("198.18.0.1", "reserved"),
        # Public unicast: allowed.
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("172.32.0.1", None),  # just outside 172.16/12
        ("100.128.0.1", None),  # just outside 100.64/10
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address: str, expected: str | None) -> None:
    assert address_class(ip(address)) == expected


@pytest.mark.parametrize(
    ("address", "embedded", "expected"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "10.0.0.1", "private"),
        ("::ffff:100.64.0.1", "100.64.0.1", "cgnat"),
        ("::ffff:0.0.0.0", "0.0.0.0", "unspecified"),
        ("::ffff:224.0.0.1", "224.0.0.1", "multicast"),
        ("::ffff:255.255.255.255", "255.255.255.255", "broadcast"),
        ("::127.0.0.1", "127.0.0.1", "loopback"),  # deprecated IPv4-compatible
        ("64:ff9b::a9fe:a9fe", "169.254.169.254", "metadata"),  # NAT64
        ("2002:7f00:1::1", "127.0.0.1", "loopback"),  # 6to4
        ("::ffff:8.8.8.8", "8.8.8.8", None),
    ],
)
def test_ipv4_inside_ipv6_is_judged_as_the_ipv4(
    address: str, embedded: str, expected: str | None
) -> None:
    assert embedded_ipv4(ip(address)) == ip(embedded)
    assert address_class(ip(address)) == expected


def test_plain_ipv6_embeds_nothing() -> None:
    assert embedded_ipv4(ip("2606:4700::1")) is None
    assert embedded_ipv4(ip("::1")) is None  # loopback, not ::0.0.0.1
    assert embedded_ipv4(ip("127.0.0.1")) is None


@pytest.mark.parametrize(
    ("text", "network", "host", "port"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", None, None),
        ("127.0.0.1", "127.0.0.1/32", None, None),
        ("127.0.0.1:8080", "127.0.0.1/32", None, 8080),
        ("[::1]:8080", "::1/128", None, 8080),
        ("[fd00::/8]", "fd00::/8", None, None),
        ("fd00::/8", "fd00::/8", None, None),
        ("::1", "::1/128", None, None),
        ("API.Internal", None, "api.internal", None),
        ("api.internal:443", None, "api.internal", 443),
        ("*.corp.example:443", None, "*.corp.example", 443),
        ("localhost", None, "localhost", None),
    ],
)
def test_allow_entries_parse(
    text: str, network: str | None, host: str | None, port: int | None
) -> None:
    entry = parse_allow_entry(text)
    assert entry.network == (ipaddress.ip_network(network) if network else None)
    assert entry.host == host
    assert entry.port == port


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Expected an allow entry"),
        ("10.0.0.1:99999", "port between 1 and 65535"),
        ("10.0.0.1:http", "port between 1 and 65535"),
        ("[::1", "']' closing"),
        ("[::1]x", "':port' after ']'"),
        ("exa mple.com", "CIDR, an IP address or a host name"),
        ("http://example.com", "port between 1 and 65535"),
        ("a..b", "CIDR, an IP address or a host name"),
    ],
)
def test_malformed_allow_entries_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_allow_entry(text)


def redis_cache() -> PlatformEndpoint:
    return PlatformEndpoint(
        "Redis (cache and mailboxes)", "127.0.0.1", 16379, frozenset({ip("127.0.0.1")})
    )


def policy(*allow: str, **kwargs: object) -> EgressPolicy:
    return EgressPolicy(
        allow=parse_allow_entries(allow),
        platform=(redis_cache(),),
        **kwargs,  # type: ignore[arg-type]
    )


def test_public_is_allowed_and_private_classes_denied_by_default() -> None:
    p = policy()
    assert p.check("example.com", 443, ip("93.184.216.34")).allowed
    decision = p.check("evil.example", 80, ip("10.0.0.5"))
    assert not decision.allowed
    assert decision.rule == "private"
    text = decision.explain()
    assert "evil.example:80" in text and "10.0.0.5" in text and "'private'" in text


def test_mapped_ipv6_is_named_in_the_explanation() -> None:
    decision = policy().check("x.example", 80, ip("::ffff:127.0.0.1"))
    assert decision.rule == "loopback"
    assert "the IPv6 form of 127.0.0.1" in decision.explain()


def test_allow_entries_honour_ports() -> None:
    p = policy("127.0.0.1:8080")
    assert p.check("127.0.0.1", 8080, ip("127.0.0.1")).allowed
    assert not p.check("127.0.0.1", 8081, ip("127.0.0.1")).allowed
    # The entry names 127.0.0.1, not the rest of loopback.
    assert not p.check("127.0.0.2", 8080, ip("127.0.0.2")).allowed
    # The IPv4-mapped form of an allowed address is the same destination.
    assert p.check("::ffff:127.0.0.1", 8080, ip("::ffff:127.0.0.1")).allowed


def test_host_entries_match_the_name_asked_for() -> None:
    p = policy("db.internal:5432", "*.corp.example")
    assert p.check("db.internal", 5432, ip("10.0.0.7")).allowed
    assert p.check("DB.internal.", 5432, ip("10.0.0.7")).allowed
    assert not p.check("db.internal", 5433, ip("10.0.0.7")).allowed
    assert p.check("a.corp.example", 80, ip("10.1.1.1")).allowed
    assert not p.check("corp.example", 80, ip("10.1.1.1")).allowed
    assert not p.check("evilcorp.example", 80, ip("10.1.1.1")).allowed


def test_platform_endpoints_need_an_exact_entry() -> None:
    # Loopback wide open, still not the platform's Redis.
    p = policy("127.0.0.0/8", "127.0.0.1")
    decision = p.check("127.0.0.1", 16379, ip("127.0.0.1"))
    assert not decision.allowed
    assert decision.rule == "platform-endpoint"
    assert "Redis (cache and mailboxes)" in decision.explain()
    assert p.check("127.0.0.1", 8080, ip("127.0.0.1")).allowed
    assert policy("127.0.0.1:16379").check("127.0.0.1", 16379, ip("127.0.0.1")).allowed
    # A public-looking policy cannot open it either: 0.0.0.0/0 with a port is not exact.
    assert not policy("0.0.0.0/0").check("127.0.0.1", 16379, ip("127.0.0.1")).allowed


@pytest.mark.parametrize("address", ["127.0.0.2", "::1", "0.0.0.0", "::ffff:127.0.0.1", "::"])
def test_a_loopback_platform_endpoint_is_every_loopback_address(address: str) -> None:
    decision = policy("127.0.0.0/8", "::1", "0.0.0.0/8", "::").check(address, 16379, ip(address))
    assert not decision.allowed
    assert decision.rule == "platform-endpoint"


def test_a_platform_endpoint_by_name() -> None:
    endpoint = PlatformEndpoint("Postgres", "pg.internal", 5432, frozenset({ip("10.0.0.9")}))
    p = EgressPolicy(allow=parse_allow_entries(["10.0.0.0/8"]), platform=(endpoint,))
    assert p.check("pg.internal", 5432, ip("10.0.0.9")).rule == "platform-endpoint"
    assert p.check("other.name", 5432, ip("10.0.0.9")).rule == "platform-endpoint"
    assert p.check("other.name", 5433, ip("10.0.0.9")).allowed
    opened = EgressPolicy(allow=parse_allow_entries(["pg.internal:5432"]), platform=(endpoint,))
    assert opened.check("pg.internal", 5432, ip("10.0.0.9")).allowed


def test_metadata_needs_an_exact_address() -> None:
    assert policy("169.254.0.0/16").check("m", 80, ip("169.254.169.254")).rule == "metadata"
    assert policy("169.254.0.0/16").check("m", 80, ip("169.254.1.1")).allowed
    assert policy("169.254.169.254").check("m", 80, ip("169.254.169.254")).allowed
    assert policy("169.254.169.254:80").check("m", 80, ip("169.254.169.254")).allowed
    assert not policy("169.254.169.254:80").check("m", 81, ip("169.254.169.254")).allowed
    # A host name entry does not open metadata (DNS could point anything at it).
    assert not policy("m").check("m", 80, ip("169.254.169.254")).allowed


def test_workflow_entries_open_only_inside_the_grantable_set() -> None:
    base = EgressPolicy(
        grantable=parse_allow_entries(["10.0.0.0/8"]),
        workflow_allow={
            "billing": parse_allow_entries(["10.1.0.0/16", "192.168.0.5"]),
        },
        platform=(redis_cache(),),
    )
    billing = base.for_scope(EgressScope(workflow_id="billing"))
    allowed = billing.check("10.1.2.3", 80, ip("10.1.2.3"))
    assert allowed.allowed and allowed.rule == "workflow-allow-list"
    # Outside the workflow's own entries.
    assert not billing.check("10.2.0.1", 80, ip("10.2.0.1")).allowed
    # Listed by the workflow but outside the operator's ceiling.
    refused = billing.check("192.168.0.5", 80, ip("192.168.0.5"))
    assert not refused.allowed and "outside the operator's grantable set" in refused.explain()
    # Another workflow gets nothing from billing's list.
    other = base.for_scope(EgressScope(workflow_id="other"))
    assert not other.check("10.1.2.3", 80, ip("10.1.2.3")).allowed
    # Pools are keyed by the scoped policy: the two are different keys.
    assert billing != other


def test_workflow_entries_never_open_platform_or_metadata() -> None:
    base = EgressPolicy(
        grantable=parse_allow_entries(["0.0.0.0/0", "::/0"]),
        workflow_allow={"w": parse_allow_entries(["127.0.0.1:16379", "169.254.169.254"])},
        platform=(redis_cache(),),
    )
    w = base.for_scope(EgressScope(workflow_id="w"))
    assert w.check("127.0.0.1", 16379, ip("127.0.0.1")).rule == "platform-endpoint"
    assert w.check("x", 80, ip("169.254.169.254")).rule == "metadata"


def tenant_policy(**kwargs: object) -> EgressPolicy:
    """Operator: 10/8 grantable; acme opens 10.1.2.0/24:443 and a host, plus 192.168.7.7 (not
    grantable); beta opens nothing."""
    fields: dict[str, object] = {
        "grantable": parse_allow_entries(["10.0.0.0/8", "*.acme.example"]),
        "tenant_allow": {
            "acme": parse_allow_entries(["10.1.2.0/24:443", "api.acme.example", "192.168.7.7"])
        },
        "platform": (redis_cache(),),
        **kwargs,
    }
    return EgressPolicy(**fields)  # type: ignore[arg-type]


def test_a_tenant_entry_opens_a_grantable_destination_for_that_tenant_only() -> None:
    base = tenant_policy()
    acme = base.for_scope(EgressScope(workflow_id="orders", tenant="acme"))
    opened = acme.check("10.1.2.9", 443, ip("10.1.2.9"))
    assert (opened.allowed, opened.rule) == (True, "tenant-allow-list")
    assert "REFLUX_EGRESS_TENANT_ALLOW['acme']" in opened.explain()
    # By host name too (within the grantable '*.acme.example'), whatever it resolved to.
    assert acme.check("api.acme.example", 8443, ip("10.9.9.9")).rule == "tenant-allow-list"
    # The entry's port holds.
    assert not acme.check("10.1.2.9", 80, ip("10.1.2.9")).allowed
    # Every workflow of acme gets it.
    other_workflow = base.for_scope(EgressScope(workflow_id="billing", tenant="acme"))
    assert other_workflow.check("10.1.2.9", 443, ip("10.1.2.9")).allowed
    # Another tenant does not, even for a workflow of the same name; nor does the operator's
    # unscoped policy.
    for scoped in (
        base.for_scope(EgressScope(workflow_id="orders", tenant="beta")),
        base.for_scope(EgressScope(workflow_id="orders")),
        base,
    ):
        refused = scoped.check("10.1.2.9", 443, ip("10.1.2.9"))
        assert (refused.allowed, refused.rule) == (False, "private"), scoped.scope
    # Pools are keyed by the scoped policy: one per tenant (and workflow).
    assert len({acme, other_workflow, base.for_scope(EgressScope("orders", "beta"))}) == 3


def test_a_tenant_entry_never_opens_beyond_the_grantable_set() -> None:
    acme = tenant_policy().for_scope(EgressScope(workflow_id="orders", tenant="acme"))
    refused = acme.check("192.168.7.7", 80, ip("192.168.7.7"))
    assert (refused.allowed, refused.rule) == (False, "private")
    assert (
        "entry '192.168.7.7' of REFLUX_EGRESS_TENANT_ALLOW['acme'] is outside the operator's "
        "grantable set (REFLUX_EGRESS_GRANTABLE)"
    ) in refused.explain()
    # Shrinking the ceiling revokes the tenant's entries at once.
    shrunk = tenant_policy(grantable=()).for_scope(EgressScope("orders", "acme"))
    assert not shrunk.check("10.1.2.9", 443, ip("10.1.2.9")).allowed


def test_a_tenant_entry_never_opens_platform_or_metadata() -> None:
    base = EgressPolicy(
        grantable=parse_allow_entries(["0.0.0.0/0", "::/0", "localhost"]),
        tenant_allow={
            "acme": parse_allow_entries(
                ["127.0.0.1:16379", "localhost:16379", "169.254.169.254", "169.254.169.254:80"]
            )
        },
        platform=(redis_cache(),),
    )
    acme = base.for_scope(EgressScope(workflow_id="w", tenant="acme"))
    for host in ("127.0.0.1", "localhost"):
        refused = acme.check(host, 16379, ip("127.0.0.1"))
        assert (refused.allowed, refused.rule) == (False, "platform-endpoint")
        assert "never a tenant's or a workflow's list" in refused.explain()
    refused = acme.check("x", 80, ip("169.254.169.254"))
    assert (refused.allowed, refused.rule) == (False, "metadata")
    assert "never a tenant's or a workflow's list" in refused.explain()


def test_tenant_and_workflow_lists_combine() -> None:
    base = tenant_policy(
        workflow_allow={"orders": parse_allow_entries(["10.5.0.0/16"])},
    )
    acme_orders = base.for_scope(EgressScope(workflow_id="orders", tenant="acme"))
    assert acme_orders.check("10.1.2.9", 443, ip("10.1.2.9")).rule == "tenant-allow-list"
    assert acme_orders.check("10.5.0.1", 80, ip("10.5.0.1")).rule == "workflow-allow-list"
    # The workflow's list serves its runs only; the tenant's serves every workflow of acme.
    acme_other = base.for_scope(EgressScope(workflow_id="other", tenant="acme"))
    assert not acme_other.check("10.5.0.1", 80, ip("10.5.0.1")).allowed
    assert acme_other.check("10.1.2.9", 443, ip("10.1.2.9")).allowed


def test_a_denial_names_every_list_it_consulted() -> None:
    base = tenant_policy(workflow_allow={"orders": parse_allow_entries(["10.5.0.0/16"])})
    beta = base.for_scope(EgressScope(workflow_id="orders", tenant="beta"))
    grantable = beta.check("10.1.2.9", 443, ip("10.1.2.9")).explain()
    assert (
        "it is in none of the allow lists consulted: REFLUX_EGRESS_ALLOW (operator), "
        "REFLUX_EGRESS_TENANT_ALLOW['beta'] (tenant 'beta': no entries), "
        "REFLUX_EGRESS_WORKFLOW_ALLOW['orders'] (workflow 'orders': 1 entry, none matching); "
        "an entry in the tenant's or the workflow's list would open it"
    ) in grantable
    outside = beta.check("192.168.1.1", 80, ip("192.168.1.1")).explain()
    assert "REFLUX_EGRESS_TENANT_ALLOW['beta']" in outside
    assert "outside the operator's grantable set (REFLUX_EGRESS_GRANTABLE), so only " in outside
    # The operator's own (unscoped) policy has only its list to name.
    assert (
        base.check("10.1.2.9", 443, ip("10.1.2.9"))
        .explain()
        .endswith("denies: not in REFLUX_EGRESS_ALLOW")
    )


def test_settings_name_every_platform_endpoint() -> None:
    settings = Settings(
        clickhouse_dsn="http://127.0.0.1:8123",
        egress_platform_extra=("10.0.0.3:9000",),
    )
    found = {(host, port) for _, host, port in platform_endpoints(settings)}
    assert found >= {
        ("127.0.0.1", 19092),
        ("127.0.0.1", 19093),  # the KRaft controller
        ("127.0.0.1", 19094),  # the SASL_SSL listener
        ("127.0.0.1", 15432),
        ("127.0.0.1", 16379),
        ("127.0.0.1", 16380),
        ("127.0.0.1", 19000),
        ("127.0.0.1", 8080),
        ("127.0.0.1", 8123),
        ("10.0.0.3", 9000),
    }
    # Embedded chdb has no port to protect.
    assert ("127.0.0.1", 8123) not in {(h, p) for _, h, p in platform_endpoints(Settings())}


def test_every_listener_of_the_local_broker_is_protected() -> None:
    secured = Settings(kafka_bootstrap="127.0.0.1:19094", kafka_security_protocol="SASL_SSL")
    ports = {port for _, host, port in platform_endpoints(secured) if host == "127.0.0.1"}
    assert {19092, 19093, 19094} <= ports
    moved = Settings(kafka_bootstrap="127.0.0.1:29092", kafka_local_port=39092)
    ports = {port for _, _, port in platform_endpoints(moved)}
    assert {29092, 39092, 39093, 39094} <= ports


def test_a_service_added_to_the_settings_later_is_protected_too() -> None:
    class More(Settings):
        mailbox_redis_url: str = "redis://127.0.0.1:16381/0"
        tenants_dsn: str = "postgresql://u@db.internal:6432/t"
        oidc_issuer_url: str = "https://accounts.example.com"  # external: not the platform

    found = {(host, port) for _, host, port in platform_endpoints(More(docker_host="tcp://d:2376"))}
    assert {("127.0.0.1", 16381), ("db.internal", 6432), ("d", 2376)} <= found
    assert ("accounts.example.com", 443) not in found


def test_same_origin() -> None:
    assert same_origin(("https", "a.example", None), ("HTTPS", "A.example.", 443))
    assert not same_origin(("https", "a.example", None), ("http", "a.example", None))
    assert not same_origin(("http", "a.example", 80), ("http", "a.example", 8080))
    assert not same_origin(("http", "a.example", 80), ("http", "b.example", 80))


def test_cross_origin_keeps_only_safe_headers() -> None:
    headers = [
        ("Authorization", "Bearer s3cret"),
        ("Proxy-Authorization", "Basic x"),
        ("Cookie", "session=1"),
        ("X-Api-Key", "k"),
        ("X-Custom-Auth", "c"),
        ("Accept", "application/json"),
        ("User-Agent", "reflux-worker/1.0"),
        ("Idempotency-Key", "r:s:1"),
        ("Content-Type", "application/json"),
    ]
    kept = {name.lower() for name, _ in cross_origin_headers(headers)}
    assert kept == {"accept", "user-agent", "idempotency-key", "content-type"}


def test_entry_exactness() -> None:
    assert parse_allow_entry("127.0.0.1:1").exact
    assert parse_allow_entry("h.example:1").exact
    assert not parse_allow_entry("127.0.0.1").exact
    assert not parse_allow_entry("127.0.0.0/31:1").exact
    assert not parse_allow_entry("*.h.example:1").exact
    assert AllowEntry("x").exact is False
