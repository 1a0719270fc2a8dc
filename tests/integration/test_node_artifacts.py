"""Nodes that carry their code (ADR 0070) on the real services: the object store (s3proxy),
Kafka's ``nodes`` topic, the projector and the API, and the code.run sandbox."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from foundation.errors import RefluxError
from foundation.objectstore import S3BlobStore
from foundation.settings import Settings
from node_workers.artifacts.bundle import artifact_bytes, artifact_digest, artifact_key
from node_workers.artifacts.egress_proxy import EgressProxy
from node_workers.artifacts.execution import ArtifactSandbox
from node_workers.artifacts.publish import (
    ArtifactImmutableError,
    artifact_catalog_entry,
    publish_artifact,
)
from node_workers.artifacts.store import ArtifactDigestMismatchError, ArtifactStore
from node_workers.artifacts.tests_runner import run_artifact_tests
from node_workers.artifacts.worker import ArtifactService
from node_workers.egress.policy import EgressPolicy, parse_allow_entries
from node_workers.node import NodeContext, NonRetryableNodeError
from node_workers.registration import read_catalog_entries
from node_workers.sandbox import SandboxConfig
from streams.topics import TopicCatalog
from tests.integration.http_fixtures import HttpTestServer
from tests.integration.test_catalog import Env, env  # noqa: F401  # the catalog API fixture
from tests.support.artifacts import ECHO_CODE, make_artifact

pytestmark = pytest.mark.integration


def _name() -> str:
    return f"acme.t{uuid.uuid4().hex[:8]}"


def test_tests_run_in_the_sandbox_without_network_and_name_policy_refusals(
    local_services: Settings,
) -> None:
    tests = """
import node
from reflux_node.testing import fake_context

def test_fetches():
    ctx = fake_context(responses={"GET https://api.example.com/q": {"v": 1}})
    assert node.run({"q": "x"}, ctx) == {"v": 1}
    assert ctx.requests[0]["url"] == "https://api.example.com/q?q=x"

def test_wrong():
    assert 1 + 1 == 3, "arithmetic"

def test_writes_etc():
    open("/etc/reflux-test", "w").write("x")

def test_network():
    import urllib.request
    urllib.request.urlopen("http://example.com", timeout=2)
"""
    code = (
        "def run(input, ctx):\n"
        "    return ctx.http('GET', 'https://api.example.com/q', params=input).json()\n"
    )
    artifact = make_artifact(
        _name(),
        code=code,
        tests=tests,
        input_schema={"type": "object"},
        output_schema={"type": "object"},
    )
    report = run_artifact_tests(local_services, artifact)
    outcomes = {t.name: (t.passed, t.message) for t in report.tests}
    assert not report.passed
    assert outcomes["test_fetches"] == (True, "")
    assert outcomes["test_wrong"][1].startswith("AssertionError: arithmetic (test_node.py line")
    assert outcomes["test_writes_etc"][1].startswith(
        "SandboxPolicy: writing /etc/reflux-test was refused"
    )
    assert outcomes["test_network"][1].startswith("EgressDenied: the sandbox has no network")
    assert report.policy is not None and report.policy.startswith("SandboxPolicy: ")
    assert report.sandbox_s > 0

    good = make_artifact(_name())
    assert run_artifact_tests(local_services, good).passed


def test_publish_stores_by_digest_registers_a_draft_and_refuses_other_code(
    kafka_settings: Settings, topics: TopicCatalog
) -> None:
    name = _name()
    artifact = make_artifact(name)
    published = publish_artifact(kafka_settings, artifact)
    digest = artifact_digest(artifact)
    assert (published.digest, published.status, published.created) == (digest, "draft", True)
    assert published.code_uri == f"s3://{kafka_settings.s3_bucket}/{artifact_key(digest)}"
    assert S3BlobStore(kafka_settings).get(published.code_uri) == artifact_bytes(artifact)

    entry = read_catalog_entries(kafka_settings, topics)[f"{name}@0.1.0"]
    manifest = entry.manifest
    assert manifest["artifact"] == {"digest": digest, "format": "reflux.node-artifact/1"}
    assert manifest["input_schema"] == artifact.manifest.input_schema
    assert (entry.code_uri, entry.status.value, entry.tenant) == (
        published.code_uri,
        "draft",
        "default",
    )

    again = publish_artifact(kafka_settings, artifact)
    assert (again.digest, again.created) == (digest, False)

    other = make_artifact(name, code=ECHO_CODE.replace("hello", "hi"))
    with pytest.raises(ArtifactImmutableError, match="supersede with a new version"):
        publish_artifact(kafka_settings, other)
    newer = publish_artifact(
        kafka_settings, make_artifact(name, "0.2.0", code=other.files["node.py"])
    )
    assert newer.created


def test_a_tampered_stored_object_is_refused_with_digest_mismatch(
    local_services: Settings,
) -> None:
    store = ArtifactStore.from_settings(local_services)
    artifact = make_artifact(_name())
    stored = store.put(artifact)
    assert store.get(stored.digest) == artifact
    tampered = json.loads(artifact_bytes(artifact))
    tampered["files"]["node.py"] = "def run(input, ctx):\n    return {'greeting': 'pwned'}\n"
    store.blobs.put(artifact_key(stored.digest), json.dumps(tampered).encode())
    with pytest.raises(ArtifactDigestMismatchError, match=stored.digest):
        store.get(stored.digest)
    with pytest.raises(ArtifactDigestMismatchError, match="refusing to overwrite"):
        store.put(artifact)


def _post(api_env: Env, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api_env.client.post(
        "/v1/nodes/artifacts",
        content=data,
        params={"wait_ms": 10_000},
        headers={"content-type": "application/json"},
    )


def test_the_api_registers_an_artifact_after_its_tests_and_keeps_versions_immutable(
    env: Env,  # noqa: F811
) -> None:
    name = _name()
    artifact = make_artifact(name)
    body = json.loads(artifact_bytes(artifact))

    response = _post(env, body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["digest"] == artifact_digest(artifact)
    assert created["code_uri"].endswith(artifact_key(created["digest"]))
    assert (created["status"], created["created"], created["applied"]) == ("draft", True, True)
    assert created["tests"] == [{"name": "test_greets", "passed": True, "message": ""}]
    version = env.client.get(f"/v1/nodes/{name}/versions/0.1.0").json()
    assert version["manifest"]["artifact"]["digest"] == created["digest"]

    same = _post(env, body)
    assert same.status_code == 200, same.text
    assert same.json()["created"] is False

    changed = {**body, "files": {**body["files"], "node.py": ECHO_CODE.replace("hello", "hey")}}
    conflict = _post(env, changed)
    assert conflict.status_code == 409, conflict.text
    assert "supersede with a new version" in conflict.json()["detail"]

    bad = {**body, "manifest": {**body["manifest"], "egress": ["ok.example.com", "bad host!"]}}
    invalid = _post(env, bad)
    assert invalid.status_code == 422, invalid.text
    (issue,) = invalid.json()["detail"]
    assert issue["loc"] == ["body", "manifest", "egress"]
    assert issue["msg"].startswith("manifest.egress: ") and "bad host!" in issue["msg"]

    failing = make_artifact(
        _name(), tests="def test_fails():\n    assert False, 'always'\n\ndef test_ok():\n    pass\n"
    )
    refused = _post(env, json.loads(artifact_bytes(failing)))
    assert refused.status_code == 422, refused.text
    assert [d["msg"] for d in refused.json()["detail"]] == [
        "test_fails: AssertionError: always (test_node.py line 2, in test_fails)"
    ]
    assert env.client.get(f"/v1/nodes/{failing.manifest.name}/versions").status_code == 404


@pytest.mark.parametrize("backend", ["bubblewrap", "docker"])
def test_the_sandbox_reaches_declared_hosts_only_through_the_proxy(
    local_services: Settings, http: HttpTestServer, backend: str
) -> None:
    """Both backends bind the proxy's socket; the code has no other way out."""
    port = int(http.url.rsplit(":", 1)[1])
    code = f"""
import urllib.request

def run(input, ctx):
    echo = ctx.http("POST", "{http.url}/echo", json={{"n": input["n"]}}).json()
    try:
        ctx.http("GET", "https://api.example.com/")
        other = "reached"
    except Exception as exc:
        other = type(exc).__name__ + ": " + str(exc)
    try:
        urllib.request.urlopen("{http.url}/echo", timeout=2)
        direct = "reached"
    except Exception as exc:
        direct = type(exc).__name__
    return {{"echo": echo["json"], "other": other, "direct": direct}}
"""
    artifact = make_artifact(
        _name(),
        code=code,
        tests=None,
        input_schema={"type": "object"},
        output_schema={"type": "object"},
        egress=(f"127.0.0.1:{port}",),
    )
    config = SandboxConfig.from_settings(local_services, backend=backend)
    sandbox = ArtifactSandbox(local_services, config)
    policy = EgressPolicy(allow=parse_allow_entries([f"127.0.0.1:{port}"]))
    proxy = EgressProxy.for_manifest("acme.t", artifact.manifest.egress, policy)
    try:
        run = sandbox.run_job(artifact, mode="run", params={"n": 7}, egress=proxy.serve)
    finally:
        sandbox.close()
    assert run.backend == backend
    assert run.answer is not None, run
    output = run.answer["output"]
    assert output["echo"] == {"n": 7}
    assert output["other"] == (
        "EgressDenied: acme.t: host api.example.com is not in the node's declared egress "
        f"[127.0.0.1:{port}]"
    )
    assert output["direct"] == "URLError"  # no network namespace route: only the socket
    assert proxy.requests == 2 and len(proxy.denied) == 1
    assert http.requests_to("/echo")[-1].json() == {"n": 7}


def test_only_declared_granted_secrets_reach_the_code_and_only_their_hosts(
    local_services: Settings, http: HttpTestServer, tmp_path: Path
) -> None:
    port = int(http.url.rsplit(":", 1)[1])
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "PAY_TOKEN").write_text("tok-123\n")
    (secrets_dir / "OTHER_TOKEN").write_text("other-456\n")
    grant = {"hosts": [f"127.0.0.1:{port}"], "grants": [{"workflow": "wf-pay", "versions": [1]}]}
    (secrets_dir / "grants.yaml").write_text(
        yaml.safe_dump({"PAY_TOKEN": grant, "OTHER_TOKEN": grant})
    )
    settings = local_services.model_copy(
        update={
            "secrets_dir": secrets_dir,
            "egress_allow": (f"127.0.0.1:{port}",),
            "egress_grantable": (),
            "egress_workflow_allow": {},
            "egress_tenant_allow": {},
        }
    )
    code = f"""
from reflux_node import NodeFailure

def run(input, ctx):
    token = ctx.secret("PAY_TOKEN")
    echo = ctx.http("GET", "http://" + input["host"] + ":{port}/echo",
                    headers={{"Authorization": "Bearer " + token}}).json()
    try:
        ctx.secret("OTHER_TOKEN")
        other = "read"
    except NodeFailure as exc:
        other = exc.error_class
    return {{"auth": echo["headers"]["authorization"], "other": other}}
"""
    artifact = make_artifact(
        _name(),
        code=code,
        tests=None,
        input_schema={"type": "object"},
        output_schema={"type": "object"},
        egress=(f"127.0.0.1:{port}", f"localhost:{port}"),
        secrets=("PAY_TOKEN",),
    )
    stored = ArtifactStore.from_settings(settings).put(artifact)
    # The entry publish_artifact would write (no Kafka needed to run one attempt).
    entry = artifact_catalog_entry(artifact, digest=stored.digest, code_uri=stored.uri)
    service = ArtifactService.from_settings(settings)

    def run(workflow_id: str, version: int, host: str) -> Any:
        ctx = NodeContext(
            invocation_id=str(uuid.uuid4()),
            run_id="r",
            step_id="s",
            attempt=1,
            workflow_id=workflow_id,
        )
        return asyncio.run(service.run(entry, {"host": host}, ctx, workflow_version=version))

    try:
        assert run("wf-pay", 1, "127.0.0.1") == {
            "auth": "Bearer tok-123",
            "other": "SecretNotAvailable",  # granted, but not declared in the manifest
        }
        with pytest.raises(RefluxError) as refused:
            run("wf-pay", 2, "127.0.0.1")
        assert refused.value.error_class == "SecretUnavailable"
        assert "version 2 is not granted" in str(refused.value)
        # localhost is declared and opened, but the token's grant lists 127.0.0.1 only.
        with pytest.raises(NonRetryableNodeError) as denied:
            run("wf-pay", 1, "localhost")
        assert denied.value.error_class == "EgressDenied"
        assert "PAY_TOKEN" in str(denied.value)
    finally:
        service.close()
