"""Secret grants bind to tenant + workflow + version, and a secret goes only to its hosts
(ADR 0050), on the real engine: DevEngine on the local Kafka and Postgres, the real worker and
``http.request``, and two real local HTTP servers that record what they received.

Server A (``127.0.0.1:<a>``) is the only host of ``PAY_TOKEN``; server B (``127.0.0.1:<b>``)
is "elsewhere" (another port: another host:port and another origin). The egress policy of the
integration tests allows 127.0.0.1 (tests/integration/conftest.py), so every refusal here is the
secret's host list, not the egress policy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from foundation.settings import Settings
from tests.integration.engine_fixtures import Harness, HarnessFactory
from tests.integration.http_fixtures import HttpTestServer, serve

TOKEN = f"pay-{uuid.uuid4().hex}"


@pytest.fixture
def elsewhere() -> Iterator[HttpTestServer]:
    with serve() as server:
        yield server


def _port(server: HttpTestServer) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


@pytest.fixture
def harness(
    tmp_path: Path,
    http: HttpTestServer,
    kafka_settings: Settings,
    engine_harness: HarnessFactory,
) -> Harness:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "PAY_TOKEN").write_text(TOKEN + "\n")
    grants = {
        "PAY_TOKEN": {
            "hosts": [f"127.0.0.1:{_port(http)}"],
            "grants": [
                {"workflow": "grant-pay", "versions": [1]},
                {"workflow": "grant-hops", "versions": [1]},
                {"workflow": "grant-elsewhere", "versions": [1]},
                {"tenant": "acme", "workflow": "grant-acme*", "versions": [1]},
            ],
        }
    }
    (secrets_dir / "grants.yaml").write_text(yaml.safe_dump(grants))
    settings = kafka_settings.model_copy(update={"secrets_dir": secrets_dir})
    return engine_harness(settings, client_id="secret-grants-test")


def _call(step_id: str, url: str, **params: Any) -> dict[str, Any]:
    return {"id": step_id, "node": "http.request@^1", "params": {"url": url, **params}}


def _pay(workflow_id: str, url: str) -> dict[str, Any]:
    auth = {"Authorization": "Bearer {{ secrets.PAY_TOKEN }}"}
    return {"id": workflow_id, "steps": [_call("pay", url, method="POST", headers=auth)]}


def _error(harness: Harness, run_id: str, step_id: str) -> dict[str, Any]:
    step = harness.steps(run_id)[step_id]
    assert step.status == "failed" and step.error is not None, (step.status, step.error)
    assert step.error["retryable"] is False, step.error
    assert TOKEN not in step.error["message"]
    return step.error


def test_only_granted_versions_and_tenants_get_the_secret(
    harness: Harness, http: HttpTestServer
) -> None:
    pay = _pay("grant-pay", f"{http.url}/echo?case=pay")
    harness.register(pay, version=1)
    harness.register(pay, version=2)  # "version N+1 of a granted workflow"
    # The tenant is the workflow's (ADR 0051): "grant-acme" registered in tenant acme gets the
    # secret; a workflow of another tenant whose id fits the grant's pattern does not.
    harness.register(_pay("grant-acme", f"{http.url}/echo?case=acme"), tenant="acme")
    harness.register(_pay("grant-acme-copy", f"{http.url}/echo?case=copy"), tenant="beta")
    harness.register(_pay("grant-acme-default", f"{http.url}/echo?case=default"))

    v1 = harness.start("grant-pay", workflow_version=1)
    v2 = harness.start("grant-pay", workflow_version=2)
    acme = harness.start("grant-acme")
    copy = harness.start("grant-acme-copy")
    default = harness.start("grant-acme-default")
    runs = {r: harness.wait(r, timeout=60) for r in (v1, v2, acme, copy, default)}

    assert runs[v1].status == "succeeded"
    assert runs[acme].status == "succeeded"
    error = _error(harness, v2, "pay")
    assert error["error_class"] == "SecretUnavailable"
    assert "'PAY_TOKEN'" in error["message"] and "'grant-pay' version 2" in error["message"]
    assert (
        "granted versions: 1;" in error["message"] and "adds 2 to the versions" in error["message"]
    )
    for other, tenant in ((copy, "beta"), (default, "default")):
        error = _error(harness, other, "pay")
        assert error["error_class"] == "SecretUnavailable"
        assert f"tenant 'acme' only, not in tenant {tenant!r}" in error["message"]

    # Only the granted runs' requests reached the server, with the real value.
    received = [r for r in http.requests_to("/echo")]
    assert sorted(r.query["case"][0] for r in received) == ["acme", "pay"]
    assert {r.header("authorization") for r in received} == {f"Bearer {TOKEN}"}


def test_a_secret_goes_only_to_its_hosts_redirects_included(
    harness: Harness, http: HttpTestServer, elsewhere: HttpTestServer
) -> None:
    a, b = http.url, elsewhere.url
    secret = "{{ secrets.PAY_TOKEN }}"
    auth = {"Authorization": f"Bearer {secret}"}
    harness.register(_pay("grant-elsewhere", f"{b}/echo?case=direct"))
    hops = {
        "id": "grant-hops",
        "steps": [
            # The secret in the Location: A redirects to B with the value in the query.
            _call("url_hop", f"{a}/redirect", query={"to": f"{b}/echo?case=url&k={secret}"}),
            # The secret in the body, kept by a 307 to another host.
            _call(
                "body_hop",
                f"{a}/redirect",
                method="POST",
                query={"to": f"{b}/echo?case=body", "status": "307"},
                json={"k": secret},
            ),
            # The secret in a header: a cross-origin hop drops it, so the hop may go to B.
            _call(
                "header_hop", f"{a}/redirect", query={"to": f"{b}/echo?case=header"}, headers=auth
            ),
            # Same origin: the secret goes with the hop, to its host.
            _call("same_host", f"{a}/redirect", query={"to": "/echo?case=same"}, headers=auth),
        ],
    }
    harness.register(hops)

    direct = harness.start("grant-elsewhere")
    hopped = harness.start("grant-hops")
    harness.wait(direct, timeout=60)
    harness.wait(hopped, timeout=60)

    error = _error(harness, direct, "pay")
    assert error["error_class"] == "SecretHostDenied"
    assert f"127.0.0.1:{_port(elsewhere)}" in error["message"]
    assert f"127.0.0.1:{_port(http)}" in error["message"]  # the hosts it may go to
    assert "'PAY_TOKEN'" in error["message"] and "nothing was sent" in error["message"]
    # The run failed with its first refused hop; the steps beside it still finish, and their
    # results are recorded on the failed run (a failed run can be re-driven), maybe after it:
    # the other refused hop too (seen "running" right after the run ended, in a full run).
    for step_id in ("url_hop", "body_hop"):
        harness.wait_step(hopped, step_id, "failed")
        error = _error(harness, hopped, step_id)
        assert error["error_class"] == "SecretHostDenied", error
        assert "a redirect hop" in error["message"]
    harness.wait_step(hopped, "header_hop", "succeeded")
    harness.wait_step(hopped, "same_host", "succeeded")

    # B received only the header hop, without the secret; A got the same-origin hop with it.
    received_b = elsewhere.requests_to("/echo")
    assert [r.query["case"] for r in received_b] == [["header"]]
    assert TOKEN.encode() not in repr(received_b[0]).encode()
    assert all(TOKEN not in str(r) for r in elsewhere.log)
    same = [r for r in http.requests_to("/echo") if r.query.get("case") == ["same"]]
    assert len(same) == 1 and same[0].header("authorization") == f"Bearer {TOKEN}"
    # A saw the requests that carried the secret to it (allowed), once each: non-retryable.
    assert len(http.requests_to("/redirect")) == 4
