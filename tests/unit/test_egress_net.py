"""The egress edge without a server: the backend connects to the address it checked (pinned),
never to the name; a denied name never reaches the inner backend; both httpx flavours get it."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from foundation.settings import Settings
from node_workers.egress.net import (
    EgressDeniedError,
    OperatorPolicy,
    PolicyNetworkBackend,
    egress_transport,
    policy_from_settings,
)
from node_workers.egress.policy import EgressPolicy, parse_allow_entries


class Recording:
    """An inner network backend that records where it was asked to connect."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, **_: Any) -> str:
        self.calls.append((host, port))
        return f"stream to {host}:{port}"

    async def sleep(self, seconds: float) -> None:
        return None


def test_connects_to_the_checked_address_not_the_name() -> None:
    inner = Recording()
    policy = EgressPolicy(allow=parse_allow_entries(["localhost:8080"]))
    backend = PolicyNetworkBackend(inner, policy, "test")
    stream = asyncio.run(backend.connect_tcp("localhost", 8080, timeout=1))
    assert stream.startswith("stream to ")
    host, port = inner.calls[0]
    assert port == 8080
    assert ipaddress.ip_address(host).is_loopback  # an address, resolved once and checked


def test_a_denied_destination_never_reaches_the_inner_backend() -> None:
    inner = Recording()
    backend = PolicyNetworkBackend(inner, EgressPolicy(), "test")
    with pytest.raises(EgressDeniedError) as info:
        asyncio.run(backend.connect_tcp("169.254.169.254", 80))
    assert inner.calls == []
    assert info.value.error_class == "EgressDenied"
    assert not info.value.retryable
    assert "'metadata'" in str(info.value)


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
def test_both_httpx_flavours_get_the_backend(library: str) -> None:
    transport = egress_transport(EgressPolicy(), node="test", library=library)
    assert isinstance(transport._pool._network_backend, PolicyNetworkBackend)


def test_a_malformed_setting_is_named() -> None:
    with pytest.raises(ValueError, match=r"REFLUX_EGRESS_ALLOW\[1\]"):
        policy_from_settings(Settings(egress_allow=("10.0.0.0/8", "10.0.0.1:0")))
    with pytest.raises(ValueError, match=r"REFLUX_EGRESS_WORKFLOW_ALLOW\['w'\]\[0\]"):
        policy_from_settings(Settings(egress_workflow_allow={"w": ("bad host",)}))
    with pytest.raises(ValueError, match=r"REFLUX_EGRESS_TENANT_ALLOW\['acme'\]\[1\]"):
        policy_from_settings(Settings(egress_tenant_allow={"acme": ("10.0.0.1", "a b")}))
    # A key that is no tenant id would never match a run: refused, not ignored.
    with pytest.raises(ValueError, match=r"REFLUX_EGRESS_TENANT_ALLOW: Expected a tenant"):
        policy_from_settings(Settings(egress_tenant_allow={"Acme": ("10.0.0.1",)}))


def test_the_tenant_lists_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFLUX_EGRESS_GRANTABLE", '["10.0.0.0/8"]')
    monkeypatch.setenv(
        "REFLUX_EGRESS_TENANT_ALLOW", '{"acme": ["api.acme.example", "10.1.2.0/24:443"]}'
    )
    operator = OperatorPolicy()
    operator.bind(Settings())
    acme = operator.for_call(workflow_id="orders", tenant="acme")
    decision = acme.check("x", 443, ipaddress.ip_address("10.1.2.7"))
    assert (decision.allowed, decision.rule) == (True, "tenant-allow-list")
    assert not acme.check("x", 80, ipaddress.ip_address("10.1.2.7")).allowed
    beta = operator.for_call(workflow_id="orders", tenant="beta")
    assert not beta.check("x", 443, ipaddress.ip_address("10.1.2.7")).allowed


def test_the_platform_is_resolved_from_settings() -> None:
    policy = policy_from_settings(Settings())
    redis = next(e for e in policy.platform if e.port == 16379)
    assert ipaddress.ip_address("127.0.0.1") in redis.addresses
    decision = policy.check("127.0.0.1", 16379, ipaddress.ip_address("127.0.0.1"))
    assert decision.rule == "platform-endpoint"
