"""Secret grants bound to tenant + workflow + versions, and the hosts a secret may be sent to
(ADR 0050): parsing, refusals, the legacy form, and the check a node makes before sending."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from foundation.errors import ConfigurationError
from node_workers.attempt import run_attempt
from node_workers.nodes.email_send import EmailSendNode
from node_workers.nodes.http_request import HttpRequestNode, _check_secrets
from node_workers.nodes.openai_chat import OpenAIChatNode
from node_workers.secrets import (
    EnvSecretProvider,
    HostPattern,
    SecretDestinations,
    SecretGrants,
    SecretHostDenied,
    SecretResolver,
    SecretUnavailable,
)
from schemas.models import NodeInvocation, StepRef, TraceStatus

VALUE = "grant-s3cr3t-value-7f2a"
GRANTS = {
    "API_TOKEN": {
        "hosts": ["api.example.com", "*.internal.test:8443", "127.0.0.1"],
        "grants": [
            {"workflow": "billing", "versions": [1, "3-4"]},
            {"tenant": "acme", "workflow": "acme-*", "versions": "any"},
        ],
    },
    "NOWHERE": {"hosts": [], "grants": [{"workflow": "billing", "versions": [1]}]},
}


def _grants(data: Any = None) -> SecretGrants:
    return SecretGrants.from_mapping(GRANTS if data is None else data, source="grants.yaml")


def _resolver(data: Any = None) -> SecretResolver:
    provider = EnvSecretProvider(
        {"REFLUX_SECRET_API_TOKEN": VALUE, "REFLUX_SECRET_NOWHERE": VALUE + "-2"}
    )
    return SecretResolver(provider, _grants(data))


# -- grants: tenant + workflow + versions -------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "workflow", "version", "allowed"),
    [
        ("default", "billing", 1, True),
        ("default", "billing", 3, True),
        ("default", "billing", 4, True),
        ("default", "billing", 2, False),  # between granted versions
        ("default", "billing", 5, False),  # version N+1 of a granted workflow
        ("default", "billing-2", 1, False),  # the pattern covers the whole id
        ("acme", "billing", 1, False),  # another tenant's workflow of the same id
        ("acme", "acme-pay", 99, True),  # "any", written down by the operator
        ("default", "acme-pay", 1, False),
    ],
)
def test_grants_bind_tenant_workflow_and_version(
    tenant: str, workflow: str, version: int, allowed: bool
) -> None:
    grants = _grants()
    assert grants.allows("API_TOKEN", workflow, version, tenant) is allowed
    assert (
        grants.refusal("API_TOKEN", tenant=tenant, workflow_id=workflow, version=version) is None
    ) is allowed


def test_a_new_version_is_refused_with_what_to_do() -> None:
    with pytest.raises(SecretUnavailable) as caught:
        _resolver().resolve(
            {"h": "Bearer {{ secrets.API_TOKEN }}"}, workflow_id="billing", workflow_version=5
        )
    message = str(caught.value)
    assert caught.value.retryable is False
    assert "'API_TOKEN'" in message and "'billing' version 5" in message
    assert "tenant 'default'" in message and "granted versions: 1, 3-4" in message
    assert "adds 5 to the versions of this grant" in message
    assert VALUE not in message


def test_another_tenants_grant_is_not_used() -> None:
    data = {
        "API_TOKEN": {
            "hosts": ["*"],
            "grants": [{"tenant": "acme", "workflow": "billing", "versions": [1]}],
        }
    }
    with pytest.raises(SecretUnavailable, match="in tenant 'acme' only, not in tenant 'default'"):
        _resolver(data).resolve(
            {"h": "{{ secrets.API_TOKEN }}"}, workflow_id="billing", workflow_version=1
        )
    assert _resolver(data).resolve(
        {"h": "{{ secrets.API_TOKEN }}"}, workflow_id="billing", workflow_version=1, tenant="acme"
    ) == {"h": VALUE}


def test_the_granted_version_gets_the_value_and_its_destinations() -> None:
    params, destinations = _resolver().resolve_with_destinations(
        {"h": "Bearer {{ secrets.API_TOKEN }}"}, workflow_id="billing", workflow_version=3
    )
    assert params == {"h": f"Bearer {VALUE}"}
    assert destinations.names == ("API_TOKEN",)
    assert VALUE not in repr(destinations)


def test_without_a_version_only_grants_of_any_version_pass() -> None:
    with pytest.raises(SecretUnavailable, match="not granted to every version"):
        _resolver().resolve({"h": "{{ secrets.API_TOKEN }}"}, workflow_id="billing")
    legacy = SecretResolver(
        EnvSecretProvider({"REFLUX_SECRET_API_TOKEN": VALUE}),
        SecretGrants.from_mapping({"API_TOKEN": ["billing"]}, source="legacy"),
    )
    assert legacy.resolve({"h": "{{ secrets.API_TOKEN }}"}, workflow_id="billing") == {"h": VALUE}


def test_legacy_grants_load_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    grants = SecretGrants.from_mapping({"OLD": ["wf-*"], "ONE": "demo"}, source="old.yaml")
    assert grants.allows("OLD", "wf-a", 17) and grants.allows("ONE", "demo", 1)
    assert not grants.allows("OLD", "wf-a", 1, "acme")  # legacy = tenant default
    assert grants.rules["OLD"].host_allowed("anything.example", 1)
    assert "legacy form" in caplog.text and "OLD, ONE" in caplog.text


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"grants": [{"workflow": "w", "versions": [1]}]}, r"grants.yaml: X.hosts"),
        ({"hosts": [], "grants": []}, r"X.grants to be a non-empty list"),
        ({"hosts": [], "grants": [{"workflow": "w"}]}, r"X.grants\[0\].versions"),
        ({"hosts": [], "grants": [{"workflow": "w", "versions": ["5-"]}]}, r"closed range"),
        ({"hosts": [], "grants": [{"workflow": "w", "versions": [0]}]}, r"X.grants\[0\].versions"),
        ({"hosts": [], "grants": [{"workflow": "w", "versions": ["4-2"]}]}, r"closed range"),
        ({"hosts": [], "grants": [{"workflow": "", "versions": [1]}]}, r"X.grants\[0\].workflow"),
        ({"hosts": [], "grants": [{"workflow": "w", "versions": [1], "x": 1}]}, r"X.grants\[0\]"),
        ({"hosts": ["a b"], "grants": [{"workflow": "w", "versions": [1]}]}, r"X.hosts"),
        ({"hosts": ["h:99999"], "grants": [{"workflow": "w", "versions": [1]}]}, r"X.hosts"),
        ({"hosts": [], "grant": []}, r"keys hosts and grants"),
    ],
)
def test_malformed_grants_name_the_field(spec: Any, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        SecretGrants.from_mapping({"X": spec}, source="grants.yaml")


# -- hosts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "port", "matches"),
    [
        ("api.example.com", "api.example.com", 443, True),
        ("api.example.com", "API.Example.com.", 80, True),
        ("api.example.com", "api.example.com.evil.test", 443, False),
        ("api.example.com:443", "api.example.com", 8443, False),
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "evilexample.com", 443, False),
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("[::1]:443", "::1", 443, True),
        ("*", "anything.test", 1, True),
        ("*:443", "anything.test", 80, False),
    ],
)
def test_host_patterns(pattern: str, host: str, port: int, matches: bool) -> None:
    assert HostPattern.parse(pattern, where="t").matches(host, port) is matches


def _destinations() -> SecretDestinations:
    return _resolver().resolve_with_destinations(
        {"h": "{{ secrets.API_TOKEN }}"}, workflow_id="billing", workflow_version=1
    )[1]


def test_the_steps_destination_must_be_listed() -> None:
    destinations = _destinations()
    destinations.check("api.example.com", 443, node="n", target="t")
    destinations.check("x.internal.test", 8443, node="n", target="t")
    with pytest.raises(SecretHostDenied) as caught:
        destinations.check("evil.test", 443, node="http.request GET", target="the step's URL")
    message = str(caught.value)
    assert "'API_TOKEN'" in message and "evil.test:443" in message
    assert "api.example.com, *.internal.test:8443, 127.0.0.1" in message
    assert "nothing was sent" in message and caught.value.retryable is False
    assert VALUE not in message


def test_a_redirect_hop_is_checked_for_what_it_carries() -> None:
    destinations = _destinations()
    # Nothing of the secret in the hop: it may go anywhere (the egress policy still applies).
    destinations.check("evil.test", 443, node="n", target="hop", parts=["https://evil.test/x"])
    for carried in (
        f"https://evil.test/?k={VALUE}",
        {"authorization": f"Bearer {VALUE}"}["authorization"],
        f'{{"token": "{VALUE}"}}'.encode(),
    ):
        with pytest.raises(SecretHostDenied):
            destinations.check("evil.test", 443, node="n", target="hop", parts=[carried])


def test_http_request_checks_the_first_request_and_every_hop() -> None:
    destinations = _destinations()
    allowed = httpx.Request("POST", "https://api.example.com/pay", json={"k": VALUE})
    _check_secrets(destinations, allowed, first=True)
    with pytest.raises(SecretHostDenied, match="the step's URL"):
        _check_secrets(destinations, httpx.Request("GET", "http://evil.test/"), first=True)
    hop = httpx.Request("POST", "https://evil.test/pay", json={"k": VALUE})
    with pytest.raises(SecretHostDenied, match="a redirect hop"):
        _check_secrets(destinations, hop, first=False)
    _check_secrets(destinations, httpx.Request("GET", "https://evil.test/"), first=False)
    _check_secrets(SecretDestinations(), hop, first=True)  # no secrets, no check


def _invocation(node: str, node_version: str, params: Any, version: int) -> NodeInvocation:
    return NodeInvocation(
        run_id="run-1",
        seq=3,
        invocation_id="inv-1",
        attempt=1,
        workflow_id="billing",
        workflow_version=version,
        step=StepRef(step_id="s", node=node, node_version=node_version),
        params=params,
        idempotency_key="idem",
        trace_context={},
    )


@pytest.mark.parametrize(
    ("node", "params"),
    [
        (
            OpenAIChatNode(),
            {
                "base_url": "https://llm.evil.test/v1",
                "api_key": "{{ secrets.API_TOKEN }}",
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
        (
            EmailSendNode(),
            {
                "host": "smtp.evil.test",
                "from": "a@example.com",
                "to": ["b@example.com"],
                "subject": "s",
                "text": "{{ secrets.API_TOKEN }}",
            },
        ),
        (
            HttpRequestNode(),
            {"url": "https://evil.test/", "headers": {"X": "{{ secrets.API_TOKEN }}"}},
        ),
    ],
)
def test_nodes_refuse_before_connecting(node: Any, params: dict[str, Any]) -> None:
    """Unroutable hosts (.test): the refusal comes before any DNS lookup or connection."""
    attempt = asyncio.run(
        run_attempt(node, _invocation(node.name, node.version, params, 1), secrets=_resolver())
    )
    assert attempt.status is TraceStatus.ERROR and attempt.error is not None
    assert attempt.error.error_class == "SecretHostDenied", attempt.error.message
    assert attempt.error.retryable is False
    assert VALUE not in attempt.error.message


def test_an_attempt_of_an_ungranted_version_fails_before_the_node_runs() -> None:
    node = HttpRequestNode()
    params = {"url": "https://api.example.com/", "headers": {"X": "{{ secrets.API_TOKEN }}"}}
    attempt = asyncio.run(
        run_attempt(node, _invocation(node.name, node.version, params, 2), secrets=_resolver())
    )
    assert attempt.error is not None and attempt.error.error_class == "SecretUnavailable"
    assert "'billing' version 2 (tenant 'default')" in attempt.error.message


def test_code_run_with_network_takes_only_secrets_allowed_everywhere() -> None:
    data = {
        "API_TOKEN": {
            "hosts": ["api.example.com"],
            "grants": [{"workflow": "billing", "versions": [1]}],
        },
        "NOWHERE": {"hosts": ["*"], "grants": [{"workflow": "billing", "versions": [1]}]},
    }
    resolver = _resolver(data)
    for name, refused in (("API_TOKEN", True), ("NOWHERE", False)):
        _, destinations = resolver.resolve_with_destinations(
            {"v": f"{{{{ secrets.{name} }}}}"}, workflow_id="billing", workflow_version=1
        )
        if refused:
            with pytest.raises(
                SecretHostDenied, match=r"code\.run cannot be given secret 'API_TOKEN'"
            ):
                destinations.require_any_host(node="code.run", why="with network")
        else:
            destinations.require_any_host(node="code.run", why="with network")
