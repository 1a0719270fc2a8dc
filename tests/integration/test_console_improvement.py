"""The console's improvement pages against the real stack (issue 16, item 4).

- a proposal is approved and then rolled back from its page, each behind a confirmation, the
  state checked on the page and on ``/v1/mutations/{id}``; the page draws the diff on the base
  version's graph (the added and the changed step marked), links the diagnosis it answers and
  shows its A/B replay report and the canary's runs per arm; the workflow's timeline shows the
  applied change and saves the improvement policy;
- a decision the processor would refuse shows the API's reason in the dialog;
- the diagnoses list shows a diagnosis published on the critic's topic and stored by the
  historian, filtered in the query string, and its page.

The engine validates proposals on the static checks (``proposal_replay=None``, as
test_mutation_proposals.py): that is the cheapest path to a proposal that can be approved (a
replay-validated one needs a replay showing it better), and the A/B replay is asked for through
``POST /v1/replays`` instead, so the page still has a replay report to show.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from schemas.models import Diagnosis, DiagnosisKind, DiagnosisSeverity
from tests.integration.console_fixtures import Console
from tests.integration.engine_fixtures import Harness, HarnessFactory, transform
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WAIT = 20_000


@pytest.fixture
def harness(engine_harness: HarnessFactory) -> Harness:
    """The console's engine (see the module doc): static validation, and the historian."""
    return engine_harness(proposal_replay=None, historian=True)


def _api(console: Console) -> httpx.Client:
    return httpx.Client(base_url=console.url, headers=console.headers, timeout=30)


def _register(api: httpx.Client, workflow_id: str) -> None:
    definition = {
        "id": workflow_id,
        "steps": [
            transform("fetch", "word", {"word": "base"}),
            transform("say", "word", {"word": "hello"}, needs=["fetch"]),
        ],
        "outputs": {"said": "{{ steps.say.output.result }}"},
    }
    response = api.post("/v1/workflows", json=definition)
    assert response.status_code == 201, response.text
    eventually(
        lambda: api.get(f"/v1/workflows/{workflow_id}").status_code == 200,
        15,
        f"workflow {workflow_id} projected",
    )


def _diagnosis(workflow_id: str, **extra: Any) -> Diagnosis:
    detected = datetime.now(UTC)
    subject = f"workflow:{workflow_id}/step:say"
    fields: dict[str, Any] = {
        "kind": DiagnosisKind.LATENCY_DRIFT,
        "severity": DiagnosisSeverity.WARNING,
        "explanation": f"say got slower in {workflow_id}: mean 120 ms -> 260 ms",
        **extra,
    }
    return Diagnosis(
        diagnosis_id=f"{fields['kind'].value}/{subject}/{int(detected.timestamp() * 1000)}",
        subject=subject,
        detector="adwin",
        workflow_id=workflow_id,
        workflow_version=1,
        step_id="say",
        node="transform",
        node_version="1.0.0",
        error_class=None,
        detected_at=detected,
        traces_seen=400,
        metrics={"mean_before": 120.0, "mean_after": 260.0},
        example_run_ids=[str(uuid.uuid4())],
        evidence=json.dumps({"window": 64, "p95_ms": 410.0}),
        **fields,
    )


def _publish(harness: Harness, diagnosis: Diagnosis, api: httpx.Client) -> None:
    """On the topic the critic publishes to; the historian stores it (what the API serves)."""
    harness.send(harness.engine.catalog.diagnoses.topic, diagnosis.subject, diagnosis)
    eventually(
        lambda: api.get(f"/v1/diagnoses/{diagnosis.diagnosis_id}").status_code == 200,
        60,
        f"diagnosis {diagnosis.diagnosis_id} stored by the historian",
    )


def _propose(api: httpx.Client, workflow_id: str, evidence: dict[str, Any]) -> str:
    body = {
        "workflow_id": workflow_id,
        "changes": [
            {
                "type": "update_params",
                "step_id": "say",
                "data": {"expression": "word", "data": {"word": "hi"}},
            },
            {
                "type": "add_step",
                "step_id": "tell",
                "data": transform("tell", "word", {"word": "told"}, needs=["say"]),
            },
        ],
        "rationale": "say it shorter, and tell someone",
        "evidence": evidence,
        "wait_ms": WAIT,
    }
    response = api.post("/v1/mutations", json=body, headers={"X-Reflux-User": "ada"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "validated", response.json()
    return str(response.json()["mutation_id"])


def _runs(harness: Harness, workflow_id: str, count: int) -> None:
    for run_id in [harness.start(workflow_id) for _ in range(count)]:
        assert harness.wait(run_id).status == "succeeded"


def _status(api: httpx.Client, mutation_id: str) -> str:
    return str(api.get(f"/v1/mutations/{mutation_id}").json()["status"])


def test_a_proposal_is_approved_then_rolled_back_from_its_page(
    console: Console, harness: Harness
) -> None:
    page = console.page
    wf = f"greet-{uuid.uuid4().hex[:6]}"
    with _api(console) as api:
        _register(api, wf)
        _runs(harness, wf, 5)  # recorded runs of v1, for the A/B replay
        answered = _diagnosis(wf)
        _publish(harness, answered, api)
        mutation_id = _propose(api, wf, {"diagnosis_id": answered.diagnosis_id, "runs_seen": 5})
        replay = api.post(
            "/v1/replays",
            json={
                "workflow_id": wf,
                "candidate": {"mutation_id": mutation_id},
                "selection": {"sample_size": 5},
            },
        )
        assert replay.status_code == 202, replay.text
        replay_id = replay.json()["replay_id"]
        finished = eventually(
            lambda: api.get(f"/v1/replays/{replay_id}").json(),
            120,
            f"replay {replay_id} finished",
            until=lambda body: body["status"] in {"completed", "failed"},
        )
        assert finished["status"] == "completed", finished

        console.open(f"/improvement?workflow_id={wf}")
        proposals = page.get_by_role("table", name="proposals")
        expect(proposals.get_by_role("link", name=mutation_id)).to_be_visible()
        expect(page.get_by_label("Workflow")).to_have_value(wf)
        console.screenshot("improvement-list")
        proposals.get_by_role("link", name=mutation_id).click()

        status = page.get_by_label("status", exact=True)
        expect(status).to_have_text("validated")
        # The diff on v1's graph: `tell` added, `say` changed, `fetch` as it was.
        graph = page.get_by_role("region", name="proposal diff")
        expect(graph.get_by_role("group", name="step tell")).to_have_class(
            re.compile("change-added")
        )
        expect(graph.get_by_role("group", name="step say")).to_have_class(
            re.compile("change-changed")
        )
        expect(graph.get_by_role("group", name="step fetch")).not_to_have_class(
            re.compile("change-")
        )
        # The evidence: the diagnosis it answers, linked.
        expect(page.get_by_role("link", name=answered.diagnosis_id)).to_be_visible()
        expect(page.get_by_text(answered.explanation)).to_be_visible()
        # The replay report: the verdict the API stored, and both sides' success rates.
        expect(page.get_by_text(replay_id)).to_be_visible()
        expect(page.get_by_label("replay verdict")).to_have_text(finished["verdict"])
        comparison = page.get_by_role("table", name="replay comparison")
        expect(comparison.get_by_role("row", name=re.compile("Success rate"))).to_contain_text(
            "100.0 %"
        )

        decisions = page.get_by_role("group", name="Decisions")
        expect(decisions.get_by_role("button")).to_have_text(["Approve", "Reject"])
        decisions.get_by_role("button", name="Approve").click()
        dialog = page.get_by_role("dialog", name=f"Approve proposal {mutation_id}?")
        dialog.get_by_label("Canary weight (share of new runs)").fill("0.5")
        dialog.get_by_role("button", name="Confirm approve").click()
        expect(dialog).to_be_hidden()
        expect(status).to_have_text("applied")
        expect(
            page.get_by_role("status").filter(has_text="the proposal is now applied")
        ).to_be_visible()
        applied = api.get(f"/v1/mutations/{mutation_id}").json()
        assert (applied["status"], applied["canary_weight"]) == ("applied", 0.5)
        expect(decisions.get_by_role("button")).to_have_text(["Keep", "Roll back"])

        # Runs on both arms since the apply: the canary table counts them per version.
        _runs(harness, wf, 8)
        page.reload()
        arms = page.get_by_role("table", name="canary arms")
        expect(arms.get_by_role("row", name=re.compile("Canary"))).to_contain_text(
            f"v{applied['applied_version']}"
        )
        effect = api.get(f"/v1/mutations/{mutation_id}").json()["effect"]
        total = sum(arm["runs"] for arm in effect)
        assert total == 8, effect
        for arm in effect:
            name = "Canary" if arm["version"] == applied["applied_version"] else "Baseline"
            row = arms.get_by_role("row", name=re.compile(f"^{name}"))
            expect(row.get_by_role("cell").nth(1)).to_have_text(str(arm["runs"]))
        console.screenshot("improvement-mutation")

        decisions.get_by_role("button", name="Roll back").click()
        dialog = page.get_by_role("dialog", name=f"Roll back proposal {mutation_id}?")
        dialog.get_by_label("Reason (optional)").fill("p95 worse")
        dialog.get_by_role("button", name="Confirm roll back").click()
        expect(status).to_have_text("rolled back")
        rolled_back = api.get(f"/v1/mutations/{mutation_id}").json()
        assert (rolled_back["status"], rolled_back["reason"]) == ("rolled_back", "p95 worse")
        expect(decisions.get_by_role("button")).to_have_count(0)
        expect(decisions).to_contain_text("No decision left: the proposal is rolled back")

        # The workflow's timeline: the change, rolled back, with its before/after figures.
        page.get_by_role("link", name=wf).first.click()
        timeline = page.get_by_role("list", name="applied changes")
        entry = timeline.get_by_role("listitem").filter(has_text=mutation_id)
        expect(entry).to_contain_text("rolled back")
        expect(entry).to_contain_text(f"v1 → v{applied['applied_version']}")
        expect(entry.get_by_role("table")).to_contain_text(f"after (v{applied['applied_version']})")
        # The improvement settings, saved through PUT /v1/workflows/{id}/improvement.
        policy = page.get_by_label("Policy")
        expect(policy).to_have_value("propose")
        policy.select_option("auto")
        page.get_by_role("button", name="Save policy").click()
        expect(page.get_by_role("status").filter(has_text="Policy set to auto")).to_be_visible()
        assert api.get(f"/v1/workflows/{wf}/improvement").json()["policy"] == "auto"
        console.screenshot("improvement-timeline")


def test_a_refused_decision_shows_the_api_s_reason(console: Console, harness: Harness) -> None:
    page = console.page
    wf = f"refuse-{uuid.uuid4().hex[:6]}"
    with _api(console) as api:
        _register(api, wf)
        mutation_id = _propose(api, wf, {"note": "no diagnosis"})
        console.open(f"/improvement/mutations/{mutation_id}")
        status = page.get_by_label("status", exact=True)
        expect(status).to_have_text("validated")
        # Someone else rejects it while the page still shows it validated.
        rejected = api.post(f"/v1/mutations/{mutation_id}/reject", json={"wait_ms": WAIT})
        assert rejected.status_code == 200, rejected.text
        page.get_by_role("group", name="Decisions").get_by_role("button", name="Approve").click()
        dialog = page.get_by_role("dialog", name=f"Approve proposal {mutation_id}?")
        dialog.get_by_role("button", name="Confirm approve").click()
        alert = dialog.get_by_role("alert")
        expect(alert).to_contain_text("Approve refused")
        expect(alert).to_contain_text("HTTP 409")
        expect(alert).to_contain_text(f"Cannot approve mutation '{mutation_id}': it is rejected")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        assert _status(api, mutation_id) == "rejected"
        # A phone's width: the page reflows (tables scroll in their own box), nothing sideways.
        page.set_viewport_size({"width": 390, "height": 800})
        page.reload()
        expect(status).to_have_text("rejected")
        expect(page.get_by_role("group", name="Decisions").get_by_role("button")).to_have_count(0)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_viewer_is_offered_no_decision_and_told_why(console: Console) -> None:
    """Writes are offered only to roles the API lets make them (GET /v1/me): a viewer sees no
    decision on a proposal, no run action, re-drive, start, save or policy button, each with
    the reason; an operator sees the decisions."""
    page = console.page
    wf = f"viewer-{uuid.uuid4().hex[:6]}"
    with _api(console) as api:
        _register(api, wf)
        mutation_id = _propose(api, wf, {"note": "for the viewer"})
        started = api.post("/v1/runs", json={"workflow_id": wf, "inputs": {}})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        keys = {}
        for role in ("viewer", "operator"):
            created = api.post("/v1/api-keys", json={"name": f"{role}-{wf}", "role": role})
            assert created.status_code == 201, created.text
            keys[role] = created.json()["key"]
    path = f"/improvement/mutations/{mutation_id}"
    page.goto(f"{console.url}/ui{path}#key={keys['viewer']}")
    expect(page.get_by_label("status", exact=True)).to_have_text("validated")
    decisions = page.get_by_role("group", name="Decisions")
    expect(decisions).to_contain_text("Your role (viewer) cannot decide on proposals")
    expect(decisions.get_by_role("button")).to_have_count(0)
    page.goto(f"{console.url}/ui/runs/{run_id}")  # the tab keeps the viewer's key
    expect(page.get_by_role("note")).to_contain_text("Your role (viewer) can follow this run")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    page.get_by_label("step say: succeeded", exact=True).click()
    panel = page.get_by_role("complementary", name="Step say")
    expect(panel).to_contain_text("Output")
    expect(panel.get_by_role("button", name="Re-drive step…")).to_have_count(0)
    page.goto(f"{console.url}/ui/runs/new?workflow={wf}")
    expect(page.get_by_role("note")).to_contain_text("Your role (viewer) cannot start runs")
    expect(page.get_by_role("button", name="Start run")).to_have_count(0)
    page.goto(f"{console.url}/ui/workflows/{wf}/edit")
    expect(page.get_by_role("note")).to_contain_text("cannot validate or register workflows")
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    page.goto(f"{console.url}/ui/improvement/workflows/{wf}")
    expect(page.get_by_role("note")).to_contain_text("cannot change the policy: admins can")
    expect(page.get_by_role("button", name="Save policy")).to_have_count(0)
    page.goto(f"{console.url}/ui{path}#key={keys['operator']}")
    page.reload()  # the key of a link replaces the tab's on load
    expect(decisions.get_by_role("button")).to_have_text(["Approve", "Reject"])
    expect(decisions).not_to_contain_text("cannot decide")


def test_the_diagnoses_list_and_a_diagnosis_page(console: Console, harness: Harness) -> None:
    page = console.page
    wf = f"diag-{uuid.uuid4().hex[:6]}"
    with _api(console) as api:
        _register(api, wf)
        slow = _diagnosis(wf)
        failing = _diagnosis(
            wf,
            kind=DiagnosisKind.FAILURE_DRIFT,
            severity=DiagnosisSeverity.CRITICAL,
            explanation=f"say fails in {wf}: 2% -> 31% of attempts",
        )
        _publish(harness, slow, api)
        _publish(harness, failing, api)

        console.open(f"/improvement/diagnoses?workflow_id={wf}")
        table = page.get_by_role("table", name="diagnoses")
        expect(table.get_by_role("row")).to_have_count(3)  # the header and both
        expect(table).to_contain_text(slow.explanation)
        expect(table).to_contain_text(failing.explanation)
        console.screenshot("improvement-diagnoses")
        page.get_by_label("Severity").select_option("critical")
        expect(table.get_by_role("row")).to_have_count(2)
        expect(table).to_contain_text(failing.explanation)
        assert "severity=critical" in page.url and f"workflow_id={wf}" in page.url

        table.get_by_role("link", name=f"diagnosis {failing.diagnosis_id}").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(failing.explanation)
        expect(page.get_by_text(failing.diagnosis_id)).to_be_visible()
        metrics = page.get_by_role("table", name="metrics")
        expect(metrics.get_by_role("row", name=re.compile("mean_after"))).to_contain_text("260")
        similar = page.get_by_role("table", name="similar incidents")
        expect(similar.get_by_role("link", name=slow.explanation)).to_be_visible()
        expect(page.get_by_text("No proposal answered it yet.")).to_be_visible()
        console.screenshot("improvement-diagnosis")
