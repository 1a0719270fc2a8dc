"""Mutating a running run end to end: API -> MutateGraph on Kafka -> scheduler (the authority
for state-dependent rules) -> GraphMutated with who/why -> projection (runs.definition,
run_mutations) -> GET /v1/runs/{id}/graph, equal to the replayed log."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from api.app import create_app
from api.config import ApiSettings
from foundation.settings import Settings
from processors.scheduler.evolve import fold
from projections.postgres import queries
from schemas.models import (
    CommandRejected,
    GraphMutated,
    GraphMutation,
    GraphMutationType,
    MutateGraph,
)
from tests.integration.engine_fixtures import (
    Harness,
    HarnessFactory,
    assert_replay_equivalent,
    drop_schemas,
    replayed_state,
    transform,
)
from tests.integration.http_fixtures import serve
from tests.integration.kafka_fixtures import register_schema
from tests.support.api_auth import key_headers
from tests.support.scheduler_golden import load_events
from tests.support.waiting import eventually
from workflows.mutations import apply_mutation
from workflows.validation import build_definition

WAIT = {"wait_ms": 15_000}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "runs"


@pytest.fixture
def registered(engine_harness: HarnessFactory) -> Harness:
    """The engine with its nodes in the catalog, so the scheduler checks mutated nodes."""
    return engine_harness(register_nodes=True)


@pytest.fixture
def api(registered: Harness) -> Iterator[TestClient]:
    api_schema = f"{registered.schema}_api"
    settings = ApiSettings(
        read_schema=registered.schema,
        api_schema=api_schema,
        poll_interval_s=0.02,
        clickhouse_enabled=False,
    )
    headers = key_headers(registered.settings, settings)
    with TestClient(create_app(registered.settings, settings), headers=headers) as client:
        yield client
    with psycopg.connect(registered.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


def _workflow(workflow_id: str, url: str) -> dict[str, Any]:
    """first (quick) -> wait (an HTTP call held until the test opens its gate) -> after."""
    return {
        "id": workflow_id,
        "steps": [
            transform("first", "v", {"v": 1}),
            {
                "id": "wait",
                "node": "http.request@^1",
                "needs": ["first"],
                "params": {"url": f"{url}/gate?name={workflow_id}"},
            },
            transform("after", "v", {"v": 1}, needs=["wait"]),
        ],
        "outputs": {"after": "{{ steps.after.output.result }}"},
    }


def _start_waiting(harness: Harness, api: TestClient, workflow_id: str, url: str) -> str:
    harness.register(_workflow(workflow_id, url))
    eventually(
        lambda: api.get(f"/v1/workflows/{workflow_id}").status_code,
        15,
        f"workflow {workflow_id} projected",
        until=lambda status: status == 200,
    )
    response = api.post("/v1/runs", json={"workflow_id": workflow_id})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    harness.wait_step(run_id, "wait", "running")
    return run_id


def _mutate(api: TestClient, run_id: str, **body: Any) -> Any:
    return api.post(f"/v1/runs/{run_id}/mutations", params=WAIT, json=body)


def test_mutations_while_in_flight_change_the_outcome(registered: Harness, api: TestClient) -> None:
    with serve() as http:
        run_id = _start_waiting(registered, api, "mut_flight", http.url)
        updated = _mutate(
            api,
            run_id,
            type="update_params",
            step_id="after",
            data={"expression": "v", "data": {"v": 42}},
            reason="the answer changed",
            requested_by="alice",
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["event_type"] == "GraphMutated"
        added = _mutate(
            api,
            run_id,
            type="add_step",
            step_id="extra",
            data=transform("extra", "v", {"v": "{{ steps.after.output.result }}"}, needs=["after"]),
            reason="double-check after",
            requested_by="bob",
        )
        assert added.status_code == 200, added.text
        # While `wait` still runs, the graph already shows both changes, with who and why.
        graph = api.get(f"/v1/runs/{run_id}/graph").json()
        by_id = {step["step_id"]: step for step in graph["steps"]}
        assert list(by_id) == ["first", "wait", "after", "extra"]
        assert by_id["wait"]["status"] == "running" and by_id["extra"]["status"] == "pending"
        assert by_id["after"]["params"]["data"] == {"v": 42}
        assert by_id["extra"]["needs"] == ["after"]
        assert [
            (m["type"], m["step_id"], m["requested_by"], m["reason"]) for m in graph["mutations"]
        ] == [
            ("update_params", "after", "alice", "the answer changed"),
            ("add_step", "extra", "bob", "double-check after"),
        ]
        assert graph["mutations"][0]["command_id"] == updated.json()["command_id"]

        http.open_gate("mut_flight")  # the held step answers: the run may finish now
        run = registered.wait(run_id)
        assert (run.status, run.outputs) == ("succeeded", {"after": 42})
        steps = registered.steps(run_id)
        assert steps["extra"].status == "succeeded" and steps["extra"].output == {"result": 42}
        # Replaying the log gives exactly the projected graph, and the live scheduler agrees.
        final = api.get(f"/v1/runs/{run_id}/graph").json()
        replayed = replayed_state(registered, run_id)
        assert final["definition"] == replayed.graph.to_json_dict()
        assert [s["status"] for s in final["steps"]] == ["succeeded"] * 4
        # Time travel: the replayed graph at the last seq is the projected one; before the first
        # mutation it is the workflow as started.
        graph_at = f"/v1/runs/{run_id}/graph"
        now = api.get(graph_at, params={"seq": final["last_seq"]}).json()
        assert (now["definition"], now["mutations"]) == (final["definition"], final["mutations"])
        assert now["steps"] == final["steps"] and now["status"] == "succeeded"
        first_seq = final["mutations"][0]["seq"]
        before = api.get(graph_at, params={"seq": first_seq - 1}).json()
        assert [s["step_id"] for s in before["steps"]] == ["first", "wait", "after"]
        assert before["steps"][2]["params"]["data"] == {"v": 1} and before["mutations"] == []
        between = api.get(graph_at, params={"seq": first_seq}).json()
        assert [m["step_id"] for m in between["mutations"]] == ["after"]
        assert between["steps"][2]["params"]["data"] == {"v": 42} and len(between["steps"]) == 3
        too_far = api.get(graph_at, params={"seq": final["last_seq"] + 1})
        assert too_far.status_code == 422 and too_far.json()["detail"][0]["loc"] == ["query", "seq"]
        assert_replay_equivalent(registered, run_id)


def test_illegal_mutations_are_rejected_with_reasons(registered: Harness, api: TestClient) -> None:
    with serve() as http:
        run_id = _start_waiting(registered, api, "mut_illegal", http.url)

        # The scheduler's rules (409 with its reason): they depend on the run's state.
        finished = _mutate(api, run_id, type="remove_step", step_id="first")
        assert finished.status_code == 409, finished.text
        assert "Expected step 'first' to be pending, but it is succeeded" in finished.text
        running = _mutate(api, run_id, type="update_params", step_id="wait", data={"url": "x"})
        assert running.status_code == 409 and "but it is running" in running.text
        cycle = _mutate(
            api,
            run_id,
            type="add_step",
            step_id="loop",
            data=transform("loop", "v", {}, needs=["loop"]),
        )
        assert cycle.status_code == 409, cycle.text
        assert "loop" in cycle.json()["detail"]
        missing = _mutate(
            api,
            run_id,
            type="add_step",
            step_id="orphan",
            data=transform("orphan", "v", {}, needs=["ghost"]),
        )
        assert missing.status_code == 409 and "ghost" in missing.json()["detail"], missing.text
        needed = _mutate(api, run_id, type="remove_step", step_id="after")
        assert needed.status_code == 409, needed.text  # the run's outputs need it
        assert "outputs.after: unknown step 'after'" in needed.json()["detail"]
        spare = transform("spare", "v", {"v": 0}, needs=["wait"])
        assert _mutate(api, run_id, type="add_step", step_id="spare", data=spare).status_code == 200
        leaf = transform("leaf", "v", {"v": 0}, needs=["spare"])
        assert _mutate(api, run_id, type="add_step", step_id="leaf", data=leaf).status_code == 200
        in_use = _mutate(api, run_id, type="remove_step", step_id="spare")
        assert in_use.status_code == 409, in_use.text
        assert "Expected no step to need 'spare', but 'leaf' needs it" in in_use.json()["detail"]
        for step_id in ("leaf", "spare"):
            removed = _mutate(api, run_id, type="remove_step", step_id=step_id, reason="not needed")
            assert removed.status_code == 200, removed.text

        # The API's checks (422 naming the field): wrong whatever the run's state.
        malformed = _mutate(api, run_id, type="rename_step", step_id="after")
        assert malformed.status_code == 422
        assert malformed.json()["detail"][0]["loc"] == ["body", "type"]
        unknown_node = _mutate(
            api,
            run_id,
            type="add_step",
            step_id="z",
            data={"node": "no.such@^1", "needs": ["wait"]},
        )
        assert unknown_node.status_code == 422, unknown_node.text
        (issue,) = unknown_node.json()["detail"]
        assert issue["loc"] == ["body", "data", "node"] and "unknown node 'no.such'" in issue["msg"]
        bad_version = _mutate(
            api,
            run_id,
            type="replace_node",
            step_id="wait",
            data={"node": "http.request", "node_version": "^9"},
        )
        assert bad_version.status_code == 422
        assert bad_version.json()["detail"][0]["loc"] == ["body", "data", "node"]
        bad_step = _mutate(
            api,
            run_id,
            type="add_step",
            step_id="z",
            data={"node": "transform@^1", "retry": {"max_attempts": 0}},
        )
        assert bad_step.status_code == 422
        assert bad_step.json()["detail"][0]["loc"][:4] == ["body", "data", "retry", "max_attempts"]
        not_empty = _mutate(api, run_id, type="remove_step", step_id="after", data={"x": 1})
        assert not_empty.status_code == 422 and not_empty.json()["detail"][0]["loc"] == [
            "body",
            "data",
        ]
        bad_params = _mutate(
            api,
            run_id,
            type="add_step",
            step_id="z",
            data={"node": "transform@^1", "needs": ["wait"], "params": {"nonsense": 1}},
        )
        assert bad_params.status_code == 422, bad_params.text
        locs = [d["loc"] for d in bad_params.json()["detail"]]
        assert ["body", "data", "params", "nonsense"] in locs, locs

        # Past the API (a stale client, another producer): the scheduler checks its catalog view.
        command = MutateGraph(
            run_id=run_id,
            mutation=GraphMutation(
                type=GraphMutationType.REPLACE_NODE,
                step_id="after",
                data={"node": "no.such.node", "node_version": "^1"},
            ),
        )
        registered.send(registered.engine.catalog.commands.topic, run_id, command)
        rejected = eventually(
            lambda: [
                e
                for e in registered.events(run_id)
                if e.event_type == "CommandRejected"
                and e.payload["command_id"] == command.command_id
            ],
            15,
            "the scheduler's rejection of an unknown node",
        )
        reason = CommandRejected.model_validate(rejected[0].payload).reason
        assert "unknown node 'no.such.node'" in reason, reason

        http.open_gate("mut_illegal")  # the held step answers: the run may finish now
        run = registered.wait(run_id)
        assert run.status == "succeeded"
        graph = api.get(f"/v1/runs/{run_id}/graph").json()
        assert [s["step_id"] for s in graph["steps"]] == ["first", "wait", "after"]
        assert [(m["type"], m["step_id"], m["reason"]) for m in graph["mutations"]] == [
            ("add_step", "spare", None),
            ("add_step", "leaf", None),
            ("remove_step", "leaf", "not needed"),
            ("remove_step", "spare", "not needed"),
        ]
        assert set(registered.steps(run_id)) == {"first", "wait", "after"}
        assert graph["definition"] == replayed_state(registered, run_id).graph.to_json_dict()
        assert_replay_equivalent(registered, run_id)


def test_graph_of_an_unknown_run_is_404(api: TestClient) -> None:
    assert api.get("/v1/runs/nope/graph").status_code == 404
    response = api.post("/v1/runs/nope/mutations", json={"type": "remove_step", "step_id": "a"})
    assert response.status_code == 404


def test_projected_definition_normalises_to_the_scheduler_graph(registered: Harness) -> None:
    """The SQL twin of apply_mutation merges the workflow's defaults into an added step."""
    with psycopg.connect(registered.settings.postgres_dsn, autocommit=True) as conn:
        definition = {
            "id": "d",
            "defaults": {"retry": {"max_attempts": 4}, "timeout": "2s"},
            "steps": [{"id": "a", "node": "transform@^1", "params": {}}],
        }
        base = build_definition(definition)
        step = {"node": "transform@^1", "retry": {"initial_backoff": 50}, "needs": ["a"]}
        row = conn.execute(
            f'SELECT "{registered.schema}".reflux_apply_graph_mutation(%s, %s, %s, %s)',
            (Jsonb(base.to_json_dict()), "add_step", "b", Jsonb(step)),
        ).fetchone()
        assert row is not None
        expected = apply_mutation(
            base, GraphMutation(type=GraphMutationType.ADD_STEP, step_id="b", data=step)
        )
        assert build_definition(row[0]).to_json_dict() == expected.to_json_dict()
        assert expected.step("b").retry.max_attempts == 4 and expected.step("b").timeout == 2000


def test_migration_004_backfills_runs_projected_before_it(
    local_services: Settings, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs projected under 001-003 get their current definition and mutations from run_events:
    every golden run log (graph_mutation: update_params, replace_node, remove_step, add_step;
    rebind: a new definition mid-run), each under its own run id, equals its replayed graph."""
    from projections.postgres import migrations

    schema = f"t_mig_{uuid.uuid4().hex[:10]}"
    register_schema(schema, request.node.nodeid)
    logs = {
        path.stem: [
            event.model_copy(update={"run_id": path.stem})
            for event in load_events(path.read_text())
        ]
        for path in sorted(FIXTURES.glob("*.jsonl"))
    }
    assert {"graph_mutation", "rebind"} <= set(logs)
    every = migrations.load_migrations()
    try:
        with psycopg.connect(local_services.postgres_dsn, autocommit=True) as conn:
            monkeypatch.setattr(
                migrations, "load_migrations", lambda: [m for m in every if m.version < 4]
            )
            migrations.apply_migrations(conn, schema)
            for run_id, events in logs.items():
                first = events[0]
                conn.execute(
                    f'INSERT INTO "{schema}".runs (run_id, workflow_id, workflow_version, '
                    "status, source, started_at, updated_at, last_seq) "
                    "VALUES (%s, 'w', 1, 'running', 'api', %s, %s, %s)",
                    (run_id, first.occurred_at, first.occurred_at, events[-1].seq),
                )
                for event in events:
                    conn.execute(
                        f'INSERT INTO "{schema}".run_events (run_id, seq, event_type, event_id, '
                        "occurred_at, payload) VALUES (%s, %s, %s, %s, %s, %s)",
                        (
                            run_id,
                            event.seq,
                            type(event).__name__,
                            event.event_id,
                            event.occurred_at,
                            Jsonb(event.model_dump(mode="json")),
                        ),
                    )
            monkeypatch.setattr(migrations, "load_migrations", lambda: every)
            assert migrations.apply_migrations(conn, schema) == [m.version for m in every[3:]]
            projected = {
                run_id: (
                    queries.get_run_graph(conn, run_id, schema=schema),
                    queries.get_run_mutations(conn, run_id, schema=schema),
                )
                for run_id in logs
            }
        for run_id, events in logs.items():
            graph, mutations = projected[run_id]
            replayed = fold(events)
            assert graph is not None and replayed is not None
            if replayed.definition is None:  # a start that was rejected: no graph
                assert graph.definition is None, run_id
                continue
            assert build_definition(graph.definition).to_json_dict() == (
                replayed.graph.to_json_dict()
            ), run_id
            expected = [e for e in events if isinstance(e, GraphMutated)]
            assert [(m.seq, m.type, m.step_id, m.requested_by) for m in mutations] == [
                (e.seq, e.mutation.type.value, e.mutation.step_id, e.requested_by) for e in expected
            ], run_id
        assert projected["graph_mutation"][1][0].requested_by == "alice"
    finally:
        drop_schemas(local_services, schema)


def test_mutations_after_a_rebind_apply_to_the_new_version(
    registered: Harness, api: TestClient
) -> None:
    """RunRebound replaces the run's definition in the projection too; later mutations apply to
    the new version's graph, and the projected graph still equals the replayed one."""
    with serve() as http:
        run_id = _start_waiting(registered, api, "mut_rebind", http.url)
        paused = api.post(f"/v1/runs/{run_id}/pause", params=WAIT)
        assert paused.status_code == 200, paused.text
        v2 = _workflow("mut_rebind", http.url)
        v2["steps"].append(transform("bonus", "v", {"v": 0}, needs=["after"]))
        registered.register(v2, version=2)
        eventually(
            lambda: api.get("/v1/workflows/mut_rebind/versions/2").status_code,
            15,
            "version 2 projected",
            until=lambda status: status == 200,
        )
        rebound = api.post(f"/v1/runs/{run_id}/rebind", params=WAIT, json={"version": 2})
        assert rebound.status_code == 200, rebound.text
        bonus = _mutate(
            api,
            run_id,
            type="update_params",
            step_id="bonus",
            data={"expression": "v", "data": {"v": 99}},
            requested_by="carol",
        )
        assert bonus.status_code == 200, bonus.text
        assert api.post(f"/v1/runs/{run_id}/resume", params=WAIT).status_code == 200
        http.open_gate("mut_rebind")  # the held step answers: the run may finish now
        assert registered.wait(run_id).status == "succeeded"
        assert registered.steps(run_id)["bonus"].output == {"result": 99}
        graph = api.get(f"/v1/runs/{run_id}/graph").json()
        assert [s["step_id"] for s in graph["steps"]] == ["first", "wait", "after", "bonus"]
        assert [(m["step_id"], m["requested_by"]) for m in graph["mutations"]] == [
            ("bonus", "carol")
        ]
        assert graph["definition"] == replayed_state(registered, run_id).graph.to_json_dict()
        assert_replay_equivalent(registered, run_id)


# -- atomic lists (MutateGraph v2 `mutations`, ADR 0022 addendum) -------------------------------


def _mutate_all(api: TestClient, run_id: str, *ops: dict[str, Any], **extra: Any) -> Any:
    body = {"mutations": list(ops), **extra}
    return api.post(f"/v1/runs/{run_id}/mutations", params=WAIT, json=body)


def _graph_mutated(harness: Harness, run_id: str) -> list[GraphMutated]:
    return [
        GraphMutated.model_validate(e.payload)
        for e in harness.events(run_id)
        if e.event_type == "GraphMutated"
    ]


def test_a_list_is_applied_atomically_to_a_run_in_flight(
    registered: Harness, api: TestClient
) -> None:
    """Insert a step before `after` and rewire `after` onto it while `wait` runs: one at a time
    this is refused (removing `after` leaves the outputs dangling); as one list it applies."""
    with serve() as http:
        run_id = _start_waiting(registered, api, "mut_list", http.url)
        alone = _mutate(api, run_id, type="remove_step", step_id="after")
        assert alone.status_code == 409, alone.text
        assert "outputs.after: unknown step 'after'" in alone.json()["detail"]

        rewired = transform(
            "after", "v", {"v": "{{ steps.double.output.result }}"}, needs=["double"]
        )
        applied = _mutate_all(
            api,
            run_id,
            {"type": "add_step", "step_id": "double", "data": transform(
                "double", "v", {"v": 42}, needs=["wait"])},
            {"type": "remove_step", "step_id": "after"},
            {"type": "add_step", "step_id": "after", "data": rewired},
            # the Python field name (json_body) of http.request's `json`, with a template
            {"type": "add_step", "step_id": "notify", "data": {
                "node": "http.request@^1", "needs": ["double"],
                "params": {"url": f"{http.url}/echo", "method": "POST",
                           "json_body": {"v": "{{ steps.double.output.result }}"}}}},
            reason="insert double before after",
            requested_by="alice",
        )  # fmt: skip
        assert applied.status_code == 200, applied.text
        events = _graph_mutated(registered, run_id)
        assert [(e.mutation.type.value, e.mutation.step_id) for e in events] == [
            ("add_step", "double"),
            ("remove_step", "after"),
            ("add_step", "after"),
            ("add_step", "notify"),
        ]
        # Consecutive seqs, one cause; the 200 names the last of them.
        assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + 4))
        assert {e.causation_id for e in events} == {applied.json()["command_id"]}
        assert applied.json()["seq"] == events[-1].seq
        graph = api.get(f"/v1/runs/{run_id}/graph").json()
        by_id = {step["step_id"]: step for step in graph["steps"]}
        assert list(by_id) == ["first", "wait", "double", "after", "notify"]
        assert by_id["wait"]["status"] == "running"
        assert by_id["after"]["needs"] == ["double"]
        assert {(m["requested_by"], m["reason"], m["command_id"]) for m in graph["mutations"]} == {
            ("alice", "insert double before after", applied.json()["command_id"])
        }

        http.open_gate("mut_list")  # the held step answers: the run may finish now
        run = registered.wait(run_id)
        assert (run.status, run.outputs) == ("succeeded", {"after": 42})
        (echoed,) = http.requests_to("/echo")
        assert json.loads(echoed.body) == {"v": 42}
        final = api.get(f"/v1/runs/{run_id}/graph").json()
        assert final["definition"] == replayed_state(registered, run_id).graph.to_json_dict()
        assert [s["status"] for s in final["steps"]] == ["succeeded"] * 5
        assert_replay_equivalent(registered, run_id)


def test_a_list_with_an_illegal_operation_changes_nothing(
    registered: Harness, api: TestClient
) -> None:
    with serve() as http:
        run_id = _start_waiting(registered, api, "mut_list_illegal", http.url)
        before = api.get(f"/v1/runs/{run_id}/graph").json()
        spare = transform("spare", "v", {"v": 0}, needs=["wait"])
        refused = _mutate_all(
            api,
            run_id,
            {"type": "add_step", "step_id": "spare", "data": spare},
            {"type": "update_params", "step_id": "first", "data": {"expression": "v"}},
            {"type": "remove_step", "step_id": "spare"},
        )
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"] == (
            "mutations[1]: Expected step 'first' to be pending, retry_wait, failed or timed_out, "
            "but it is succeeded"
        )
        rejected = [e for e in registered.events(run_id) if e.event_type == "CommandRejected"]
        assert [e.payload["command_type"] for e in rejected] == ["reflux.commands.MutateGraph"]
        assert _graph_mutated(registered, run_id) == []
        after = api.get(f"/v1/runs/{run_id}/graph").json()
        assert (after["definition"], after["mutations"]) == (before["definition"], [])

        # The API's checks cover every element: 422 naming mutations[i] (nothing published).
        bad_params = _mutate_all(
            api,
            run_id,
            {"type": "add_step", "step_id": "ok", "data": {
                "node": "http.request@^1", "needs": ["wait"],
                "params": {"url": "{{ steps.first.output.result }}", "json_body": [1]}}},
            {"type": "add_step", "step_id": "bad", "data": {
                "node": "http.request@^1", "needs": ["wait"],
                "params": {"url": ["not", "a", "url"], "method": "FETCH", "timeout_s": "{{ x }}"}}},
            {"type": "replace_node", "step_id": "after", "data": {"node": "no.such"}},
        )  # fmt: skip
        assert bad_params.status_code == 422, bad_params.text
        assert [d["loc"] for d in bad_params.json()["detail"]] == [
            ["body", "mutations", 1, "data", "params", "url"],
            ["body", "mutations", 1, "data", "params", "method"],
            ["body", "mutations", 2, "data", "node"],
        ]
        shape = _mutate_all(api, run_id, {"type": "remove_step", "step_id": "a"}, {"type": "x"})
        assert shape.status_code == 422
        assert [d["loc"] for d in shape.json()["detail"]] == [
            ["body", "mutations", 1, "type"],
            ["body", "mutations", 1, "step_id"],
        ]
        single = _mutate(
            api,
            run_id,
            type="update_params",
            step_id="wait",
            data={"url": 5, "headers": {"a": 1}},
        )
        assert single.status_code == 422, single.text
        assert [d["loc"] for d in single.json()["detail"]] == [
            ["body", "data", "url"],
            ["body", "data", "headers", "a"],
        ]
        assert "is not of type 'string'" in single.json()["detail"][0]["msg"]

        http.open_gate("mut_list_illegal")  # the held step answers: the run may finish now
        run = registered.wait(run_id)
        assert run.status == "succeeded"
        assert set(registered.steps(run_id)) == {"first", "wait", "after"}
        assert api.get(f"/v1/runs/{run_id}/graph").json()["mutations"] == []
        assert_replay_equivalent(registered, run_id)
