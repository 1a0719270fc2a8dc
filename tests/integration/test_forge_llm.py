"""The LLM forge on the real services (issue 17, "Must show"): a local OpenAI-compatible server
started by the test and scripted so that the first answer's code fails its own tests and the
second, after the feedback, passes; the tests run in the ``code.run`` sandbox; the node is
registered as a draft with its provenance, promoted through the catalog API, and a workflow run
uses it end to end through ``reflux worker --artifacts``. And the refusals: code that reaches
for an undeclared host (its tests fail in the sandbox, which has no network) and a manifest
declaring a host the operator does not allow, each after the bounded rounds, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from foundation.settings import PROJECT_ROOT, Settings
from node_workers.artifacts.store import ArtifactStore
from projections.postgres import queries
from tests.integration.engine_fixtures import Harness, HarnessFactory, api_client
from tests.integration.openai_fixtures import OpenAITestServer, openai_server  # noqa: F401
from tests.support.forge_answers import (
    DESCRIPTION,
    EXAMPLES,
    FIXED_CODE,
    UNDECLARED_HOST_CODE,
    WRONG_CODE,
    answer,
)
from tests.support.processes import ArtifactWorkers
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _name() -> str:
    return f"acme.total{uuid.uuid4().hex[:6]}"


def forge_env(settings: Settings, server: OpenAITestServer) -> dict[str, str]:
    """The environment of a `reflux` process on the test's topics, talking to ``server``."""
    return {
        **os.environ,
        "REFLUX_TOPIC_PREFIX": settings.topic_prefix,
        "REFLUX_DEFAULT_PARTITIONS": str(settings.default_partitions),
        "REFLUX_FORGE_LLM_BASE_URL": server.base_url,
        "REFLUX_FORGE_LLM_MODEL": "forge-model",
        "REFLUX_SECRET_OPENAI_API_KEY": server.api_key,
    }


@pytest.fixture
def artifact_worker(engine_harness: HarnessFactory) -> Iterator[tuple[Harness, Any]]:
    """The engine (built-in nodes) and a generic artifact worker process beside it."""
    harness = engine_harness(client_id="forge-llm-e2e")
    workers = ArtifactWorkers(harness.settings)
    try:
        yield harness, workers.start("forge-e2e")
    finally:
        workers.stop_all()


def test_a_described_node_fails_then_passes_after_feedback_and_runs_in_a_workflow(
    artifact_worker: tuple[Harness, Any],
    openai_server: OpenAITestServer,  # noqa: F811
    tmp_path: Any,
) -> None:
    h, worker = artifact_worker
    name = _name()
    openai_server.script(answer(WRONG_CODE), answer(FIXED_CODE))
    examples = tmp_path / "examples.json"
    examples.write_text(json.dumps(EXAMPLES))

    forged = subprocess.run(
        [
            sys.executable,
            "-m",
            "reflux.cli",
            "forge",
            "new",
            DESCRIPTION,
            "--examples",
            str(examples),
            "--name",
            name,
            "--rounds",
            "3",
            "--json",
        ],
        check=False,
        cwd=PROJECT_ROOT,
        env=forge_env(h.settings, openai_server),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert forged.returncode == 0, forged.stderr
    result = json.loads(forged.stdout)
    # One progress line per round on stderr: the first failed its tests, the second passed.
    rounds = [line for line in forged.stderr.splitlines() if line.startswith("forge: round")]
    assert rounds[0].startswith("forge: round 1/3: tests_failed"), forged.stderr
    assert "test_total_of_the_example: AssertionError" in rounds[0]
    assert rounds[1].startswith("forge: round 2/3: passed"), forged.stderr
    assert (result["name"], result["version"], result["status"]) == (name, "1.0.0", "draft")
    assert result["rounds"] == 2
    assert [t["name"] for t in result["tests"] if t["passed"]] == [
        "test_total_of_the_example",
        "test_rounds_to_cents",
    ]
    assert result["timings"]["sandbox_s"] > 0

    # The model saw its failing tests' names and messages in the second request.
    first, second = (call.body for call in openai_server.calls)
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert '"input": {"price": 2.5, "qty": 3}' in first["messages"][1]["content"]
    feedback = second["messages"][-1]
    assert feedback["role"] == "user"
    assert "- test_total_of_the_example: AssertionError" in feedback["content"]
    assert "- test_rounds_to_cents: AssertionError" in feedback["content"]
    assert second["messages"][2] == {"role": "assistant", "content": answer(WRONG_CODE)}

    # Registered as a draft; the stored artifact (verified by digest) carries its provenance.
    with api_client(h) as api:
        version = eventually(
            lambda: api.get(f"/v1/nodes/{name}/versions/1.0.0"),
            30,
            f"{name}@1.0.0 in the catalog's read model",
            until=lambda r: r.status_code == 200,
        ).json()
        assert version["status"] == "draft"
        assert version["manifest"]["artifact"]["digest"] == result["digest"]
        artifact = ArtifactStore.from_settings(h.settings).get(result["digest"])
        assert artifact.files["node.py"] == FIXED_CODE
        provenance = artifact.provenance
        assert (provenance["source"], provenance["model"]) == ("forge.llm", "forge-model")
        assert provenance["description"] == DESCRIPTION and provenance["examples"] == EXAMPLES
        assert provenance["endpoint_host"] == openai_server.base_url.split("/")[2]
        assert provenance["prompt"]["system"] == first["messages"][0]["content"]
        assert provenance["prompt_sha256"].startswith("sha256:")
        assert [r["outcome"] for r in provenance["rounds"]] == ["tests_failed", "passed"]
        assert [t["passed"] for t in provenance["rounds"][0]["tests"]] == [False, False]
        assert provenance["rounds"][1]["answer_sha256"] != provenance["rounds"][0]["answer_sha256"]
        assert set(provenance["files_sha256"]) == {"node.py", "test_node.py"}

        # A range never picks a draft: promote through the catalog lifecycle first.
        for status in ("staging", "production"):
            promoted = api.post(
                f"/v1/nodes/{name}/versions/1.0.0/promote", params={"wait_ms": 10_000}
            )
            assert promoted.status_code == 202, promoted.text
            assert promoted.json()["status"] == status

    h.register(
        {
            "id": f"wf-{name.replace('.', '-')}",
            "steps": [{"id": "total", "node": f"{name}@^1", "params": {"price": 4.2, "qty": 5}}],
            "outputs": {"total": "{{ steps.total.output.total }}"},
        }
    )
    run_id = h.start(f"wf-{name.replace('.', '-')}")

    def finished() -> queries.RunRow | None:
        if worker.poll() is not None:
            pytest.fail(f"the artifact worker exited:\n{worker.stdout.read()}")
        return h.run(run_id)

    eventually(
        finished,
        90,
        f"run {run_id} to finish",
        until=lambda r: r is not None and r.status in {"succeeded", "failed"},
    )
    run = h.run(run_id)
    assert run is not None and run.status == "succeeded", run
    assert run.outputs == {"total": 21.0}
    assert h.steps(run_id)["total"].node_version == "1.0.0"


def test_code_reaching_an_undeclared_host_is_refused_after_the_rounds_with_the_reason(
    engine_harness: HarnessFactory,
    openai_server: OpenAITestServer,  # noqa: F811
    kafka_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = kafka_settings.model_copy(
        update={"forge_llm_base_url": openai_server.base_url, "forge_llm_model": "forge-model"}
    )
    monkeypatch.setenv("REFLUX_SECRET_OPENAI_API_KEY", openai_server.api_key)
    h = engine_harness(settings, client_id="forge-llm-refusals")
    name = _name()
    # Both rounds: code that calls a host it never declared; its tests fail in the sandbox.
    openai_server.script(answer(UNDECLARED_HOST_CODE), answer(UNDECLARED_HOST_CODE))
    with api_client(h) as api:
        refused = api.post(
            "/v1/forge/new", json={"description": DESCRIPTION, "name": name, "rounds": 2}
        )
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert detail[0]["loc"] == ["body", "description"]
        assert detail[0]["msg"].startswith("Refused after 2 round(s), the last one: ")
        assert "EgressDenied: the sandbox has no network" in detail[0]["msg"]
        assert {d["loc"][-1] for d in detail[1:]} == {
            "test_total_of_the_example",
            "test_rounds_to_cents",
        }
        second = openai_server.calls[1].body["messages"][-1]["content"]
        assert "EgressDenied: the sandbox has no network" in second
        assert len(openai_server.calls) == 2  # bounded

        # Declaring a host the operator does not allow is refused before the sandbox.
        openai_server.script(answer(FIXED_CODE, egress=["tax.evil.example"]))
        egress = api.post(
            "/v1/forge/new", json={"description": DESCRIPTION, "name": name, "rounds": 1}
        )
        assert egress.status_code == 422, egress.text
        message = egress.json()["detail"][0]["msg"]
        assert "manifest.egress[0]: Expected a host the operator allows" in message
        assert "'tax.evil.example'" in message

        assert api.get(f"/v1/nodes/{name}/versions").status_code == 404
