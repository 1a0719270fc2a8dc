"""A/B replay of a draft artifact node against the node it would replace (issue 17, ADR 0071).

Production (a test engine on the real services) records runs of a workflow whose step is the
artifact ``acme.quote@0.1.0``, served by ``reflux worker --artifacts``. Drafts of the node are
then published and replayed against those runs with ``node_pins`` -- through ``POST
/v1/replays`` (the runner in the engine) and through :class:`ShadowReplay` (what the runner
calls). The drafts that differ give outputs only their own code computes (and the equal one is
counted as executed), so a replay that did not run the draft's code in the sandbox cannot pass.
A draft of another name replaces a built-in step through a ``replace_node`` proposal.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from node_workers.artifacts.publish import publish_artifact
from processors.replay.report import build_report
from processors.replay.shadow import Candidate, EffectPolicy, ReplayError, ShadowReplay
from schemas.models import GraphMutation
from tests.integration.engine_fixtures import Harness, HarnessFactory, api_client, transform
from tests.support.artifacts import make_artifact
from tests.support.processes import ArtifactWorkers
from tests.support.waiting import eventually
from workflows import parse_workflow
from workflows.mutations import apply_mutation

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

RUNS = 4
QTY_IN = {
    "type": "object",
    "properties": {"qty": {"type": "integer"}},
    "required": ["qty"],
    "additionalProperties": False,
}
PRICE_OUT = {"type": "object", "properties": {"price": {"type": "integer"}}, "required": ["price"]}


def quote(version: str, body: str, tag: str, **manifest: Any) -> Any:
    """A version of ``acme.quote``: ``body`` computes ``price`` from ``qty``."""
    return make_artifact(
        "acme.quote",
        version,
        code=f"def run(input, ctx):\n    qty = input['qty']\n{body}\n",
        tests=None,
        input_schema=QTY_IN,
        output_schema=PRICE_OUT,
        description=f"quotes {tag}",  # the object store is shared: content unique to this run
        **manifest,
    )


def quotes_flow(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"qty": {"type": "integer", "required": True}},
        "steps": [
            {"id": "quote", "node": "acme.quote@0.1.0", "params": {"qty": "{{ inputs.qty }}"}}
        ],
        "outputs": {"price": "{{ steps.quote.output.price }}"},
    }


@pytest.fixture
def production(engine_harness: HarnessFactory) -> Iterator[tuple[Harness, subprocess.Popen[str]]]:
    """The engine, and a ``reflux worker --artifacts`` process serving its artifacts."""
    harness = engine_harness(client_id="replay-artifacts")
    workers = ArtifactWorkers(harness.settings)
    try:
        yield harness, workers.start("art")
    finally:
        workers.stop_all()


def record(
    harness: Harness,
    process: subprocess.Popen[str],
    workflow_id: str,
    expected: Callable[[int], Any],
) -> list[str]:
    """RUNS recorded runs (qty 0..RUNS-1), each with the outputs ``expected(qty)``."""
    runs = [harness.start(workflow_id, {"qty": qty}) for qty in range(RUNS)]
    for qty, run_id in enumerate(runs):
        if process.poll() is not None:
            pytest.fail(f"the artifact worker exited:\n{process.stdout.read()}")  # type: ignore[union-attr]
        run = harness.wait(run_id, timeout=120)
        assert run.status == "succeeded", run.error
        assert run.outputs == expected(qty)
    return runs


def test_a_draft_artifact_is_replayed_against_the_version_it_would_replace(
    production: tuple[Harness, subprocess.Popen[str]],
) -> None:
    h, worker = production
    settings = h.settings
    tag = uuid.uuid4().hex[:8]
    publish_artifact(settings, quote("0.1.0", "    return {'price': qty * 10}", tag))
    h.register(quotes_flow("quotes"))
    runs = record(h, worker, "quotes", lambda qty: {"price": qty * 10})

    drafts = {
        # Different output: one more per unit.
        "0.2.0": quote("0.2.0", "    return {'price': qty * 11}", tag),
        # Equal: other code, the same prices.
        "0.3.0": quote("0.3.0", "    return {'price': sum([10] * qty)}", tag),
        # A bug: fails from 2 units on.
        "0.4.0": quote(
            "0.4.0", "    assert qty < 2, 'too many'\n    return {'price': 10 * qty}", tag
        ),
        # Declares side effects: answered from the record unless the replay asks live.
        "0.5.0": quote("0.5.0", "    return {'price': qty * 10 + 5}", tag, side_effects=True),
    }
    for draft in drafts.values():
        publish_artifact(settings, draft)  # drafts: the catalog's default status

    # The API: POST /v1/replays pinning the draft; the runner in the engine replays it.
    with api_client(h) as api:
        created = api.post(
            "/v1/replays",
            json={
                "workflow_id": "quotes",
                "selection": {"workflow_version": 1, "sample_size": RUNS},
                "candidate": {"workflow_version": 1, "node_pins": {"acme.quote": "0.2.0"}},
            },
        )
        assert created.status_code == 202, created.text
        replay_id = created.json()["replay_id"]
        replay = eventually(
            lambda: api.get(f"/v1/replays/{replay_id}").json(),
            180,
            f"replay {replay_id} to finish",
            until=lambda body: body["status"] in {"completed", "failed"},
        )
    assert replay["status"] == "completed", replay
    report = replay["report"]
    assert report["outputs_different"] == RUNS - 1 and report["outputs_equal"] == 1  # qty 0
    assert report["outcomes"]["both_succeeded"] == RUNS
    by_run = {run["original"]["run_id"]: run for run in replay["runs"]}
    assert sorted(by_run) == sorted(runs)
    for qty, run_id in enumerate(runs):
        run = by_run[run_id]
        assert run["output_equal"] is (qty == 0)
        if qty:
            assert run["output_diff"] == [
                {"path": "$.price", "op": "changed", "original": qty * 10, "candidate": qty * 11}
            ]
        (step,) = run["steps"]
        assert step["candidate"]["served"] == "executed" and step["candidate"]["calls"] == 1

    # The Python entry the runner uses: the equal draft, the bug, the side-effecting draft.
    with ShadowReplay(settings, "artpins", schema=h.schema) as shadow:
        with pytest.raises(ReplayError, match=r"candidate\.node_pins\.acme\.quote: .*0\.9\.0"):
            shadow.run(runs, Candidate(workflow_version=1, node_pins={"acme.quote": "0.9.0"}))
        # Another tenant's artifact is not served to the recorded runs' tenant.
        publish_artifact(
            settings, quote("0.6.0", "    return {'price': 0}", tag), tenant="othertenant"
        )
        with pytest.raises(ReplayError, match=r"candidate\.node_pins\.acme\.quote: .*0\.6\.0"):
            shadow.run(runs, Candidate(workflow_version=1, node_pins={"acme.quote": "0.6.0"}))

        def replay_with(version: str, policy: EffectPolicy | None = None) -> Any:
            pairs = shadow.run(
                runs,
                Candidate(workflow_version=1, node_pins={"acme.quote": version}),
                policy or EffectPolicy(),
            )
            return pairs, build_report(pairs)[0]

        pairs, report = replay_with("0.3.0")
        assert (report["outputs_different"], report["outcomes"]["both_succeeded"]) == (0, RUNS)
        for pair in pairs:
            assert pair.candidate.steps["quote"].served == "executed"
            assert pair.candidate.steps["quote"].calls == 1

        pairs, report = replay_with("0.4.0")
        assert report["outcomes"] == {
            "both_succeeded": 2,
            "fixed": 0,
            "broke": RUNS - 2,
            "both_failed": 0,
        }
        success = report["comparison"]["success"]
        assert (success["original_rate"], success["candidate_rate"]) == (1.0, 0.5)
        for qty, pair in enumerate(pairs):
            assert pair.candidate.status == ("succeeded" if qty < 2 else "failed")
            if qty >= 2:
                assert pair.candidate.steps["quote"].status == "failed"

        # Side effects: the record answers (the draft is not called) unless asked live.
        pairs, report = replay_with("0.5.0")
        assert report["outputs_different"] == 0
        for pair in pairs:
            step = pair.candidate.steps["quote"]
            assert (step.served, step.calls) == ("record", 0)
        pairs, report = replay_with("0.5.0", EffectPolicy(per_node={"acme.quote": "live"}))
        assert report["outputs_different"] == RUNS
        for qty, pair in enumerate(pairs):
            assert pair.candidate.outputs == {"price": qty * 10 + 5}
            assert pair.candidate.steps["quote"].served == "live"


def test_a_draft_artifact_replaces_a_built_in_step_through_a_replace_node_mutation(
    production: tuple[Harness, subprocess.Popen[str]],
) -> None:
    """A draft of another name than the node it would replace: the candidate is the workflow
    with the step's node swapped (a ``replace_node`` graph mutation, as a proposal carries it)
    and the draft pinned."""
    h, worker = production
    tag = uuid.uuid4().hex[:8]
    doubles = {
        "id": "doubles",
        "inputs": {"qty": {"type": "integer", "required": True}},
        "steps": [transform("shape", "value", {"value": "{{ inputs.qty }}"})],
        "outputs": {"result": "{{ steps.shape.output.result }}"},
    }
    h.register(doubles)
    runs = record(h, worker, "doubles", lambda qty: {"result": qty})
    publish_artifact(
        h.settings,
        make_artifact(
            "acme.double",
            code="def run(input, ctx):\n    return {'result': 2 * input['data']['value']}\n",
            tests=None,
            input_schema={"type": "object", "required": ["expression", "data"]},
            output_schema={"type": "object", "required": ["result"]},
            description=f"doubles {tag}",
        ),
    )
    replace_node = {
        "type": "replace_node",
        "step_id": "shape",
        "data": {"node": "acme.double@0.1.0"},
    }
    swapped = apply_mutation(parse_workflow(doubles), GraphMutation.model_validate(replace_node))
    # The API: a proposal carrying the replace_node change, replayed with the draft pinned.
    with api_client(h) as api:
        proposed = api.post(
            "/v1/mutations",
            json={
                "workflow_id": "doubles",
                "changes": [replace_node],
                "rationale": "the forged draft instead of the transform",
                "wait_ms": 20_000,
            },
        )
        assert proposed.status_code == 200, proposed.text
        mutation_id = proposed.json()["mutation_id"]
        created = api.post(
            "/v1/replays",
            json={
                "workflow_id": "doubles",
                "selection": {"workflow_version": 1, "sample_size": RUNS},
                "candidate": {"mutation_id": mutation_id, "node_pins": {"acme.double": "0.1.0"}},
            },
        )
        assert created.status_code == 202, created.text
        replay_id = created.json()["replay_id"]
        replay = eventually(
            lambda: api.get(f"/v1/replays/{replay_id}").json(),
            180,
            f"replay {replay_id} to finish",
            until=lambda body: body["status"] in {"completed", "failed"},
        )
    assert replay["status"] == "completed", replay
    assert replay["report"]["outcomes"]["both_succeeded"] == RUNS
    for run in replay["runs"]:
        qty = runs.index(run["original"]["run_id"])
        expected = [{"path": "$.result", "op": "changed", "original": qty, "candidate": 2 * qty}]
        assert run["output_diff"] == (expected if qty else []), run

    candidate = Candidate(definition=swapped.to_json_dict(), node_pins={"acme.double": "0.1.0"})
    # Both replay modes: folded in two forked processes (the artifact was fetched before the
    # fork), and a shadow engine whose workers serve it.
    for mode in ("fold", "engine"):
        with ShadowReplay(
            h.settings, f"swap_{mode}", schema=h.schema, mode=mode, processes=2
        ) as shadow:
            pairs = shadow.run(runs, candidate)
            assert shadow.last_mode == mode
            assert shadow.last_processes == (2 if mode == "fold" else 0)
        report = build_report(pairs)[0]
        assert report["outcomes"]["both_succeeded"] == RUNS, (mode, report)
        for qty, pair in enumerate(pairs):
            assert pair.original.outputs == {"result": qty}
            assert pair.candidate.outputs == {"result": 2 * qty}, (mode, pair)
            assert pair.candidate.steps["shape"].served == "executed"
