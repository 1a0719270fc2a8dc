"""The egress policy on real services: workflows on DevEngine call the platform's own Redis, the
metadata address and redirects to both, and fail with ``EgressDenied``; the operator's allow
list opens them; a tenant's list opens a grantable destination for that tenant's runs only; a
cross-origin redirect carries no credentials (a real server records what it got); a big body is
cut with ``ResponseTooLarge``; email.send and openai.chat are held too.

The integration conftest allows ``127.0.0.1`` (any port but the platform's) for the other tests'
stub servers; every test here builds its own settings with an explicit egress configuration.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from foundation.settings import Settings
from node_workers.egress.net import EgressDeniedError
from node_workers.node import NodeContext, NodeError, validate_params
from node_workers.nodes.email_send import EmailSendNode
from node_workers.nodes.http_request import MAX_REDIRECTS, HttpRequestNode, HttpRequestOutput
from node_workers.nodes.openai_chat import OpenAIChatNode
from schemas.models import WorkflowRegistered
from tests.integration.engine_fixtures import Harness, HarnessFactory
from tests.integration.http_fixtures import serve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

METADATA_URL = "http://169.254.169.254/latest/meta-data/"


def redis_port(settings: Settings) -> int:
    port = urlsplit(settings.redis_url).port
    assert port is not None
    return port


def policy_settings(settings: Settings, *allow: str, **extra: Any) -> Settings:
    """``settings`` with exactly this egress configuration (nothing inherited)."""
    update: dict[str, Any] = {
        "egress_allow": allow,
        "egress_grantable": (),
        "egress_workflow_allow": {},
        "egress_tenant_allow": {},
        **extra,
    }
    return settings.model_copy(update=update)


def fetch_workflow(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"url": {"type": "string", "required": True}},
        "steps": [
            {
                "id": "fetch",
                "node": "http.request@^1",
                "params": {"url": "{{ inputs.url }}", "timeout_s": 3},
            }
        ],
        "outputs": {"status": "{{ steps.fetch.output.status }}"},
    }


def step_error(harness: Any, url: str, workflow_id: str = "egress") -> dict[str, Any]:
    run_id = harness.start(workflow_id, {"url": url})
    run = harness.wait(run_id)
    assert run.status == "failed", (url, run)
    error = harness.steps(run_id)["fetch"].error
    assert error is not None
    return dict(error)


def test_a_workflow_cannot_reach_the_platform_or_metadata(
    engine_harness: HarnessFactory, kafka_settings: Settings
) -> None:
    redis = redis_port(kafka_settings)
    with serve() as stub, serve() as other:
        # The operator allows only the redirecting stub: everything else keeps the defaults.
        stub_port = urlsplit(stub.url).port
        harness = engine_harness(policy_settings(kafka_settings, f"127.0.0.1:{stub_port}"))
        harness.register(fetch_workflow("egress"))

        cases = {
            f"http://127.0.0.1:{redis}/": ("127.0.0.1", "platform-endpoint"),
            f"http://[::ffff:127.0.0.1]:{redis}/": ("127.0.0.1", "platform-endpoint"),
            f"http://localhost:{redis}/": ("127.0.0.1", "platform-endpoint"),
            METADATA_URL: ("169.254.169.254", "metadata"),
            f"{stub.url}/redirect?to={quote(f'http://127.0.0.1:{redis}/', safe='')}": (
                "127.0.0.1",
                "platform-endpoint",
            ),
            f"{stub.url}/redirect?to={quote(METADATA_URL, safe='')}": (
                "169.254.169.254",
                "metadata",
            ),
            # Loopback that is not the platform's: denied too (not listed).
            f"{other.url}/echo": ("127.0.0.1", "loopback"),
        }
        for url, (address, rule) in cases.items():
            error = step_error(harness, url)
            assert error["error_class"] == "EgressDenied", (url, error)
            assert error["retryable"] is False
            message = error["message"]
            assert address in message and repr(rule) in message, (url, message)
        # The redirects were asked for (the first hop is allowed); the denied hops never
        # reached a server, and the unlisted stub saw nothing.
        assert len(stub.requests_to("/redirect")) == 2
        assert other.log == []
        assert [r.path for r in stub.log] == ["/redirect", "/redirect"]


def test_the_operator_allow_list_opens_them(
    engine_harness: HarnessFactory, kafka_settings: Settings
) -> None:
    redis = redis_port(kafka_settings)
    with serve() as stub, serve() as target:
        stub_port, target_port = urlsplit(stub.url).port, urlsplit(target.url).port
        harness = engine_harness(
            policy_settings(
                kafka_settings,
                f"127.0.0.1:{stub_port}",
                f"127.0.0.1:{target_port}",
                f"127.0.0.1:{redis}",
                "169.254.169.254:80",
            )
        )
        harness.register(fetch_workflow("egress"))

        # A real success, directly and through a redirect to another (allowed) origin.
        for url in (f"{target.url}/echo", f"{stub.url}/redirect?to={quote(target.url + '/echo')}"):
            run_id = harness.start("egress", {"url": url})
            run = harness.wait(run_id)
            assert (run.status, run.outputs) == ("succeeded", {"status": 200}), (url, run)
        assert len(target.requests_to("/echo")) == 2

        # The platform's Redis, listed by exact host:port: the request reaches Redis, which
        # answers in its own protocol (not HTTP): a network error, not a policy error.
        for url in (
            f"http://127.0.0.1:{redis}/",
            f"{stub.url}/redirect?to={quote(f'http://127.0.0.1:{redis}/', safe='')}",
        ):
            error = step_error(harness, url)
            assert error["error_class"] == "NetworkError", (url, error)
        # The metadata address, listed exactly: connected to (what answers depends on the
        # machine: nothing, a refusal or a metadata service), never refused by the policy.
        for url in (METADATA_URL, f"{stub.url}/redirect?to={quote(METADATA_URL, safe='')}"):
            run_id = harness.start("egress", {"url": url})
            harness.wait(run_id)
            found = harness.steps(run_id)["fetch"].error
            assert found is None or found["error_class"] != "EgressDenied", (url, found)


def register_in_tenant(harness: Harness, definition: dict[str, Any], tenant: str) -> None:
    """Register version 1 of ``definition`` owned by ``tenant`` (as the API does for a caller
    of that tenant)."""
    record = WorkflowRegistered(
        workflow_id=definition["id"],
        version=1,
        definition=definition,
        registered_at=datetime.now(UTC),
        tenant=tenant,
    )
    harness.send(harness.engine.catalog.workflows.topic, f"{definition['id']}@1", record)


def test_a_tenant_list_opens_a_destination_for_that_tenants_runs_only(
    engine_harness: HarnessFactory, kafka_settings: Settings
) -> None:
    with serve() as stub:
        port = urlsplit(stub.url).port
        harness = engine_harness(
            policy_settings(
                kafka_settings,
                egress_grantable=("127.0.0.0/8",),
                egress_tenant_allow={"acme": (f"127.0.0.1:{port}",)},
            )
        )
        register_in_tenant(harness, fetch_workflow("acme-fetch"), "acme")
        register_in_tenant(harness, fetch_workflow("beta-fetch"), "beta")
        url = f"{stub.url}/echo"

        run_id = harness.start("acme-fetch", {"url": url})
        run = harness.wait(run_id)
        assert (run.status, run.outputs) == ("succeeded", {"status": 200}), run
        assert len(stub.requests_to("/echo")) == 1

        # The same call from a run of tenant beta: denied, and the error says which lists were
        # consulted (so where an entry would open it).
        error = step_error(harness, url, "beta-fetch")
        assert (error["error_class"], error["retryable"]) == ("EgressDenied", False), error
        message = error["message"]
        assert f"127.0.0.1:{port}" in message and "'loopback'" in message, message
        assert (
            "REFLUX_EGRESS_ALLOW (operator), REFLUX_EGRESS_TENANT_ALLOW['beta'] (tenant 'beta': "
            "no entries), REFLUX_EGRESS_WORKFLOW_ALLOW['beta-fetch'] (workflow 'beta-fetch': "
            "no entries)"
        ) in message, message
        assert "the operator's grantable set covers it" in message, message
        # beta's run never reached the server.
        assert len(stub.requests_to("/echo")) == 1


# -- node level (no engine): redirects, headers, sizes, other nodes ---------------------------


def call(settings: Settings, params: dict[str, Any], workflow_id: str = "wf") -> HttpRequestOutput:
    async def go() -> HttpRequestOutput:
        node = HttpRequestNode()
        node.bind(settings)
        try:
            return await node.execute(
                validate_params(node, params),
                NodeContext(str(uuid.uuid4()), "run-1", "step", 1, workflow_id=workflow_id),
            )
        finally:
            await node.aclose()

    return asyncio.run(go())


def call_error(settings: Settings, params: dict[str, Any], workflow_id: str = "wf") -> NodeError:
    with pytest.raises(NodeError) as info:
        call(settings, params, workflow_id)
    return info.value


SECRET_HEADERS = {
    "Authorization": "Bearer top-secret",
    "Proxy-Authorization": "Basic cHJveHk=",
    "Cookie": "session=abc",
    "X-Api-Key": "key-123",
    "X-Custom-Auth": "custom-456",
    "Accept": "application/json",
}


def test_a_cross_origin_redirect_carries_no_credentials(local_services: Settings) -> None:
    with serve() as origin, serve() as elsewhere:
        settings = policy_settings(
            local_services,
            f"127.0.0.1:{urlsplit(origin.url).port}",
            f"127.0.0.1:{urlsplit(elsewhere.url).port}",
        )
        # Same origin: the credentials stay (they belong to it).
        same = call(
            settings,
            {"url": f"{origin.url}/redirect?to=/echo", "headers": SECRET_HEADERS},
        )
        assert same.status == 200
        received = origin.requests_to("/echo")[-1]
        assert received.header("authorization") == "Bearer top-secret"
        assert received.header("x-api-key") == "key-123"

        # Another origin (another port): only the safe headers travel (a POST becomes a GET
        # on a 302, as browsers do).
        for method in ("GET", "POST"):
            out = call(
                settings,
                {
                    "url": f"{origin.url}/redirect?to={quote(elsewhere.url + '/echo')}",
                    "method": method,
                    "headers": SECRET_HEADERS,
                },
            )
            assert out.status == 200
        got = elsewhere.requests_to("/echo")
        assert got, "the redirect target saw no request"
        for request in got:
            for name in ("authorization", "proxy-authorization", "cookie", "x-api-key"):
                assert request.header(name) is None, (name, request.headers)
            assert request.header("x-custom-auth") is None
            assert request.header("accept") == "application/json"
            assert request.header("x-reflux-invocation-id") is not None


def test_redirect_loops_are_bounded(local_services: Settings) -> None:
    with serve() as stub:
        settings = policy_settings(local_services, f"127.0.0.1:{urlsplit(stub.url).port}")

        def chain(hops: int) -> str:
            path = "/echo"
            for _ in range(hops):
                path = "/redirect?to=" + quote(path, safe="")
            return stub.url + path

        assert call(settings, {"url": chain(MAX_REDIRECTS)}).status == 200
        error = call_error(settings, {"url": chain(MAX_REDIRECTS + 1)})
        assert (error.error_class, error.retryable) == ("TooManyRedirects", False)


def test_a_large_response_is_cut(local_services: Settings) -> None:
    with serve() as stub:
        allow = f"127.0.0.1:{urlsplit(stub.url).port}"
        settings = policy_settings(local_services, allow, egress_max_response_bytes=4096)
        # The operator's maximum holds even when the step asks for more.
        error = call_error(
            settings, {"url": f"{stub.url}/big?bytes=1000000", "max_response_bytes": 10_000_000}
        )
        assert (error.error_class, error.retryable) == ("ResponseTooLarge", False)
        assert "REFLUX_EGRESS_MAX_RESPONSE_BYTES" in str(error)
        # A step may ask for less.
        error = call_error(
            settings, {"url": f"{stub.url}/big?bytes=3000", "max_response_bytes": 100}
        )
        assert error.error_class == "ResponseTooLarge"
        assert "max_response_bytes" in str(error)
        ok = call(settings, {"url": f"{stub.url}/big?bytes=4096", "max_response_bytes": 10_000})
        assert len(ok.body) == 4096


def test_a_workflow_list_opens_only_inside_the_grantable_set(local_services: Settings) -> None:
    with serve() as stub:
        port = urlsplit(stub.url).port
        settings = policy_settings(
            local_services,
            egress_grantable=("127.0.0.0/8",),
            egress_workflow_allow={"granted": (f"127.0.0.1:{port}",), "greedy": ("10.0.0.0/8",)},
        )
        assert call(settings, {"url": f"{stub.url}/echo"}, workflow_id="granted").status == 200
        error = call_error(settings, {"url": f"{stub.url}/echo"}, workflow_id="other")
        assert error.error_class == "EgressDenied" and "'loopback'" in str(error)
        # Outside the grantable set: a workflow's list cannot open it.
        outside = policy_settings(
            local_services,
            egress_grantable=("10.0.0.0/8",),
            egress_workflow_allow={"granted": (f"127.0.0.1:{port}",)},
        )
        error = call_error(outside, {"url": f"{stub.url}/echo"}, workflow_id="granted")
        assert "outside the operator's grantable set" in str(error)
        assert len(stub.requests_to("/echo")) == 1


def test_email_and_openai_are_held_by_the_policy(local_services: Settings) -> None:
    settings = policy_settings(local_services)
    redis = redis_port(local_services)

    async def go() -> tuple[BaseException, BaseException]:
        email, chat = EmailSendNode(), OpenAIChatNode()
        email.bind(settings)
        chat.bind(settings)
        ctx = NodeContext("inv-e", "run-1", "step", 1, workflow_id="wf")
        try:
            with pytest.raises(EgressDeniedError) as mail:
                await email.execute(
                    validate_params(
                        email,
                        {
                            "host": "127.0.0.1",
                            "port": redis,
                            "from": "a@example.com",
                            "to": ["b@example.com"],
                            "text": "hi",
                            "timeout_s": 3,
                        },
                    ),
                    ctx,
                )
            with pytest.raises(EgressDeniedError) as llm:
                await chat.execute(
                    validate_params(
                        chat,
                        {
                            "base_url": "http://169.254.169.254/v1",
                            "api_key": "sk-test",
                            "model": "m",
                            "messages": [{"role": "user", "content": "hi"}],
                            "timeout_s": 3,
                        },
                    ),
                    ctx,
                )
            return mail.value, llm.value
        finally:
            await email.aclose()
            await chat.aclose()

    mail, llm = asyncio.run(go())
    assert "'platform-endpoint'" in str(mail) and "127.0.0.1" in str(mail)
    assert "'metadata'" in str(llm) and "169.254.169.254" in str(llm)
