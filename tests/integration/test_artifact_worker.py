"""The generic artifact worker end to end (ADR 0070): artifacts registered through the API and
``publish_artifact``, served by ``reflux worker --artifacts`` as a real process beside the
engine (scheduler, projector) on the real services, each run pinned to an exact (draft)
version. The sandbox reaches the network only through the worker's egress proxy; the local test
service (127.0.0.1) is opened by the operator's allow list, as http.request needs it too."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from foundation.objectstore import S3BlobStore
from node_workers.artifacts.bundle import artifact_bytes, artifact_key
from node_workers.artifacts.publish import publish_artifact
from tests.integration.engine_fixtures import Harness, HarnessFactory, api_client
from tests.integration.http_fixtures import HttpTestServer
from tests.support.artifacts import make_artifact
from tests.support.processes import ArtifactWorkers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def pinned(workflow_id: str, node: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "steps": [{"id": "call", "node": node, "params": params}],
        "outputs": {"result": "{{ steps.call.output }}"},
    }


def fetching(url: str) -> str:
    return (
        "def run(input, ctx):\n"
        f"    answer = ctx.http('GET', {url!r}, params={{'who': input['who']}})\n"
        "    return {'status': answer.status, 'echo': answer.json()}\n"
    )


@pytest.fixture
def artifact_worker(
    engine_harness: HarnessFactory, http: HttpTestServer
) -> Iterator[tuple[Harness, Callable[[], subprocess.Popen[str]]]]:
    """The engine and a starter for a ``reflux worker --artifacts`` process beside it."""
    harness = engine_harness(client_id="artifacts-e2e")
    settings = harness.settings
    port = int(http.url.rsplit(":", 1)[1].split("/", 1)[0])
    # The operator opens the local test service (loopback is denied by default).
    workers = ArtifactWorkers(settings, {"REFLUX_EGRESS_ALLOW": json.dumps([f"127.0.0.1:{port}"])})
    try:
        yield harness, workers.start
    finally:
        workers.stop_all()


def test_artifacts_run_end_to_end_with_schemas_egress_and_policy(
    artifact_worker: tuple[Harness, Callable[[], subprocess.Popen[str]]], http: HttpTestServer
) -> None:
    h, start_worker = artifact_worker
    settings = h.settings
    base = http.url.rstrip("/")
    port = int(base.rsplit(":", 1)[1])
    tag = uuid.uuid4().hex[:8]  # the object store is shared: unique content per run

    greet = make_artifact("acme.greet", "0.1.0", description=f"greets {tag}")
    greet2 = make_artifact(
        "acme.greet",
        "0.2.0",
        code="def run(input, ctx):\n    return {'greeting': 'hi ' + input['name']}\n",
        tests=None,
    )
    wrong_output = make_artifact(
        "acme.wrongout",
        code="def run(input, ctx):\n    return {'greeting': 5}\n",
        tests=None,
        description=f"wrong {tag}",
    )
    fetch_in = {"type": "object", "properties": {"who": {"type": "string"}}}
    fetch_local = make_artifact(
        "acme.fetchlocal",
        code=fetching(f"{base}/echo"),
        tests=None,
        input_schema=fetch_in,
        output_schema=ANY_OBJECT,
        egress=(f"127.0.0.1:{port}",),
        description=f"fetch {tag}",
    )
    fetch_undeclared = make_artifact(
        "acme.fetchother",
        code=fetching(f"{base}/echo"),
        tests=None,
        input_schema=fetch_in,
        output_schema=ANY_OBJECT,
        egress=("api.example.com",),
        description=f"other {tag}",
    )
    fetch_platform = make_artifact(
        "acme.fetchplatform",
        code=fetching(f"http://localhost:{port + 1}/echo"),
        tests=None,
        input_schema=fetch_in,
        output_schema=ANY_OBJECT,
        egress=(f"localhost:{port + 1}",),
        description=f"platform {tag}",
    )
    writer = make_artifact(
        "acme.writer",
        code="def run(input, ctx):\n    open('/usr/reflux-x', 'w').write('x')\n    return {}\n",
        tests=None,
        input_schema=ANY_OBJECT,
        output_schema=ANY_OBJECT,
        description=f"writer {tag}",
    )
    tampered = make_artifact("acme.tampered", tests=None, description=f"tampered {tag}")

    # The API path (tests in the sandbox, then draft) for one; publish_artifact for the rest.
    with api_client(h) as api:
        created = api.post(
            "/v1/nodes/artifacts",
            content=artifact_bytes(greet),
            headers={"content-type": "application/json"},
        )
        assert created.status_code == 201, created.text
    for artifact in (greet2, wrong_output, fetch_local, fetch_undeclared, fetch_platform, writer):
        publish_artifact(settings, artifact)
    published = publish_artifact(settings, tampered)
    evil = json.loads(artifact_bytes(tampered))
    evil["files"]["node.py"] = "def run(input, ctx):\n    return {'greeting': 'pwned'}\n"
    S3BlobStore(settings).put(artifact_key(published.digest), json.dumps(evil).encode())

    cases = {
        "greet": ("acme.greet@0.1.0", {"name": "ada"}),
        "greet2": ("acme.greet@0.2.0", {"name": "bob"}),
        "badinput": ("acme.greet@0.1.0", {"name": ""}),
        "badoutput": ("acme.wrongout@0.1.0", {"name": "x"}),
        "local": ("acme.fetchlocal@0.1.0", {"who": "sandbox"}),
        "undeclared": ("acme.fetchother@0.1.0", {"who": "x"}),
        "platform": ("acme.fetchplatform@0.1.0", {"who": "x"}),
        "writer": ("acme.writer@0.1.0", {}),
        "tampered": ("acme.tampered@0.1.0", {"name": "x"}),
    }
    for case, (node, params) in cases.items():
        h.register(pinned(f"wf-{case}", node, params))
    process = start_worker()
    runs = {case: h.start(f"wf-{case}") for case in cases}

    def finished(case: str) -> Any:
        if process.poll() is not None:
            pytest.fail(f"the artifact worker exited:\n{process.stdout.read()}")  # type: ignore[union-attr]
        return h.wait(runs[case], timeout=120)

    run = finished("greet")
    assert run.status == "succeeded", run.error
    assert run.outputs == {"result": {"greeting": "hello ada"}}
    assert h.steps(runs["greet"])["call"].node_version == "0.1.0"
    run = finished("greet2")
    assert run.status == "succeeded", run.error
    assert run.outputs == {"result": {"greeting": "hi bob"}}
    assert h.steps(runs["greet2"])["call"].node_version == "0.2.0"

    run = finished("local")
    assert run.status == "succeeded", run.error
    echo = run.outputs["result"]["echo"]
    assert (run.outputs["result"]["status"], echo["method"], echo["query"]) == (
        200,
        "GET",
        {"who": ["sandbox"]},
    )
    assert http.requests_to("/echo")[-1].query == {"who": ["sandbox"]}

    def failure(case: str) -> dict[str, Any]:
        run = finished(case)
        assert run.status == "failed", run
        assert run.error is not None
        return dict(run.error)

    error = failure("badinput")
    assert error["error_class"] == "InputSchemaViolation", error
    assert "acme.greet@0.1.0: params.name: '' should be non-empty" in error["message"]
    error = failure("badoutput")
    assert error["error_class"] == "OutputSchemaViolation", error
    assert "output.greeting: 5 is not of type 'string'" in error["message"]
    error = failure("undeclared")
    assert error["error_class"] == "EgressDenied", error
    assert (
        f"host 127.0.0.1:{port} is not in the node's declared egress [api.example.com]"
        in error["message"]
    )
    error = failure("platform")
    assert error["error_class"] == "EgressDenied", error
    assert "platform egress policy" in error["message"] and "loopback" in error["message"]
    error = failure("writer")
    assert error["error_class"] == "SandboxPolicy", error
    assert "writing /usr/reflux-x was refused" in error["message"]
    error = failure("tampered")
    assert error["error_class"] == "ArtifactDigestMismatch", error
    assert published.digest in error["message"]
    for case in ("badinput", "badoutput", "undeclared", "writer", "tampered"):
        assert "StepRetryScheduled" not in [e.event_type for e in h.events(runs[case])]

    # A node registered while the worker runs is picked up (its lanes restart with it), and so
    # is a new version of a node already served (in place).
    late = make_artifact(
        "acme.late",
        code="def run(input, ctx):\n    return {'greeting': 'late ' + input['name']}\n",
        tests=None,
    )
    greet3 = make_artifact(
        "acme.greet",
        "0.3.0",
        code="def run(input, ctx):\n    return {'greeting': 'v3 ' + input['name']}\n",
        tests=None,
    )
    publish_artifact(settings, late)
    publish_artifact(settings, greet3)
    h.register(pinned("wf-late", "acme.late@0.1.0", {"name": "cy"}))
    h.register(pinned("wf-greet3", "acme.greet@0.3.0", {"name": "di"}))
    runs["late"], runs["greet3"] = h.start("wf-late"), h.start("wf-greet3")
    run = finished("late")
    assert run.status == "succeeded", run.error
    assert run.outputs == {"result": {"greeting": "late cy"}}
    run = finished("greet3")
    assert run.status == "succeeded", run.error
    assert run.outputs == {"result": {"greeting": "v3 di"}}
