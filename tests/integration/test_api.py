"""The HTTP API against real Kafka and Postgres.

Each test gets its own topic prefix (``topics`` fixture) and two fresh Postgres schemas: the read
models (migrated by the projections package, fed only by the real ``Projector`` from events on
the test's topics) and the API's own tables. Where a test needs the scheduler's answer to a
command, a small stand-in thread reads ``commands`` and appends the answer to ``runs`` -- the
scheduler itself is another component.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from api.signatures import sign
from foundation.settings import Settings
from processors.triggers.mapping import run_id_for_trigger
from projections.postgres import apply_migrations
from projections.projector import Projector
from schemas.base import RefluxRecord
from schemas.models import (
    CancelRun,
    CommandRejected,
    PauseRun,
    RunPaused,
    RunStarted,
    RunSucceeded,
    StartRun,
    StepDispatched,
    StepRef,
    StepScheduled,
    StepSucceeded,
    Trigger,
)
from streams.consumer import ConsumedRecord, Consumer
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import drain
from tests.support.api_auth import key_headers

pytestmark = pytest.mark.integration

SECRET = "hook-secret"

DEFINITION: dict[str, Any] = {
    "id": "order-sync",
    "inputs": {
        "order_id": {"type": "integer", "required": True},
        "note": {"type": "string", "default": "none"},
    },
    "steps": [
        {"id": "fetch", "node": "http.request@^1", "params": {"url": "{{ inputs.order_id }}"}},
    ],
}


@dataclass
class Env:
    client: TestClient
    settings: Settings
    catalog: TopicCatalog
    read_schema: str
    project: Callable[[], None]

    def register(self, definition: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/v1/workflows", json=definition or DEFINITION)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def consume(
        self, topic: str, until: Callable[[list[ConsumedRecord]], bool]
    ) -> list[ConsumedRecord]:
        group = f"{self.settings.topic_prefix}.reader-{uuid.uuid4().hex[:6]}"
        with Consumer([topic], group, self.settings, catalog=self.catalog) as consumer:
            return drain(consumer, until)


def _schema(kind: str) -> str:
    return f"t_{kind}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def env(kafka_settings: Settings, topics: TopicCatalog) -> Iterator[Env]:
    read_schema, api_schema = _schema("read"), _schema("api")
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        apply_migrations(conn, read_schema)
    api_settings = ApiSettings(
        read_schema=read_schema,
        api_schema=api_schema,
        webhook_secrets={"signed-wf": SECRET},
        poll_interval_s=0.05,
        clickhouse_enabled=False,  # metrics are tested in test_traces.py (one chdb per process)
    )
    projector_name = f"api-test-{uuid.uuid4().hex[:6]}"

    def project() -> None:
        with Projector(
            kafka_settings, read_schema, projector_name, assignment="manual", migrate=False
        ) as projector:
            projector.run_until_caught_up(timeout=30)

    try:
        headers = key_headers(kafka_settings, api_settings)
        with TestClient(create_app(kafka_settings, api_settings), headers=headers) as client:
            yield Env(client, kafka_settings, topics, read_schema, project)
    finally:
        with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
            for schema in (read_schema, api_schema):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _publish(settings: Settings, topic: str, records: list[RefluxRecord]) -> None:
    with Producer(settings, client_id="api-test") as producer:
        for record in records:
            producer.send(topic, getattr(record, "run_id", None), record)


def _run_log(run_id: str, definition: dict[str, Any], *, finish: bool) -> list[RefluxRecord]:
    """A real, replayable run log of the one-step workflow (what the scheduler would append)."""
    step = StepRef(step_id="fetch", node="http.request", node_version="1.2.0")
    events: list[RefluxRecord] = [
        RunStarted(
            run_id=run_id,
            seq=0,
            workflow_id="order-sync",
            workflow_version=1,
            inputs={"order_id": 7, "note": "none"},
            definition=definition,
            source="api",
        ),
        StepScheduled(run_id=run_id, seq=1, step=step, attempt=1, params={"url": "7"}),
        StepDispatched(
            run_id=run_id,
            seq=2,
            step=step,
            attempt=1,
            invocation_id=f"{run_id}:fetch:1",
            invoke_topic="x.invoke.http.request.v1",
            node_version="1.2.0",
        ),
    ]
    if finish:
        events += [
            StepSucceeded(
                run_id=run_id,
                seq=3,
                step=step,
                attempt=1,
                invocation_id=f"{run_id}:fetch:1",
                output={"status": 200},
                cache_hit=False,
                duration_ms=12,
            ),
            RunSucceeded(run_id=run_id, seq=4, outputs={"ok": True}, duration_ms=30),
        ]
    return events


def _projected_definition(env: Env) -> dict[str, Any]:
    response = env.client.get("/v1/workflows/order-sync/versions/1")
    assert response.status_code == 200, response.text
    return dict(response.json()["definition"])


def _seed_run(env: Env, *, finish: bool) -> str:
    env.register()
    env.project()
    run_id = str(uuid.uuid4())
    _publish(
        env.settings,
        env.catalog.runs.topic,
        _run_log(run_id, _projected_definition(env), finish=finish),
    )
    env.project()
    return run_id


# -- workflows ----------------------------------------------------------------------------------


def test_register_allocates_versions_and_reads_come_from_the_projection(env: Env) -> None:
    first = env.register()
    second = env.register()
    as_yaml = env.client.post(
        "/v1/workflows",
        content=yaml.safe_dump(DEFINITION).encode(),
        headers={"content-type": "application/yaml"},
    )
    assert (first["workflow_id"], first["version"], second["version"]) == ("order-sync", 1, 2)
    assert as_yaml.status_code == 201 and as_yaml.json()["version"] == 3
    assert as_yaml.headers["location"] == "/v1/workflows/order-sync/versions/3"

    records = env.consume(env.catalog.workflows.topic, lambda r: len(r) >= 3)
    assert sorted(r.value.version for r in records) == [1, 2, 3]  # type: ignore[union-attr]
    # Keyed by id@version so compaction keeps every version.
    assert {r.key for r in records} == {b"order-sync@1", b"order-sync@2", b"order-sync@3"}

    env.project()
    listed = env.client.get("/v1/workflows").json()
    assert listed["count"] == 1 and listed["data"][0]["latest_version"] == 3
    workflow = env.client.get("/v1/workflows/order-sync").json()
    assert workflow["version_count"] == 3
    assert workflow["definition"]["steps"][0]["retry"]["max_attempts"] == 1  # normalised
    versions = env.client.get("/v1/workflows/order-sync/versions").json()
    assert [v["version"] for v in versions["data"]] == [1, 2, 3]

    missing = env.client.get("/v1/workflows/order-sync/versions/9")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "workflow 'order-sync' has no version 9"}
    assert env.client.get("/v1/workflows/nope").json() == {"detail": "workflow 'nope' not found"}


def _invalid(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    definition = json.loads(json.dumps(DEFINITION))
    definition["steps"].append(
        {"id": "store", "node": "transform@^1", "needs": ["fetch"], "params": {}}
    )
    mutate(definition)
    return dict(definition)


@pytest.mark.parametrize(
    ("mutate", "loc", "fragment"),
    [
        (
            lambda d: d["steps"][0].__setitem__("needs", ["store"]),
            ["body", "steps", 0, "needs"],
            "cycle",
        ),
        (
            lambda d: d["steps"][1].__setitem__("needs", ["fetsh"]),
            ["body", "steps", 1, "needs", 0],
            "unknown step",
        ),
        (
            lambda d: d["steps"][1]["params"].__setitem__("x", "{{ steps.fetch.output[ }}"),
            ["body", "steps", 1, "params", "x"],
            "invalid expression",
        ),
        (
            lambda d: d["steps"][0]["params"].__setitem__("url", "{{ inputs.missing }}"),
            ["body", "steps", 0, "params", "url"],
            "unknown input",
        ),
        (lambda d: d.pop("id"), ["body", "id"], "missing"),
    ],
    ids=["cycle", "unknown-step", "bad-template", "missing-input", "no-id"],
)
def test_invalid_workflows_are_422_naming_the_field(
    env: Env, mutate: Callable[[dict[str, Any]], None], loc: list[Any], fragment: str
) -> None:
    response = env.client.post("/v1/workflows", json=_invalid(mutate))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(i["loc"] == loc and fragment in i["msg"] for i in detail), detail
    assert {i["type"] for i in detail} == {"workflow_invalid"}


def test_bad_yaml_is_422_with_the_line(env: Env) -> None:
    response = env.client.post(
        "/v1/workflows", content=b"id: [oops", headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert "line 1" in response.json()["detail"][0]["msg"]


def test_validate_is_a_dry_run_with_the_same_answers_as_registering(env: Env) -> None:
    ok = env.client.post("/v1/workflows/validate", json=DEFINITION)
    assert ok.status_code == 200, ok.text
    assert (ok.json()["workflow_id"], ok.json()["version"]) == ("order-sync", 1)
    assert ok.json()["definition"]["steps"][0]["retry"]["max_attempts"] == 1  # normalised
    as_yaml = env.client.post(
        "/v1/workflows/validate",
        content=yaml.safe_dump(DEFINITION).encode(),
        headers={"content-type": "application/yaml"},
    )
    assert as_yaml.status_code == 200 and as_yaml.json()["version"] == 1

    bad = _invalid(lambda d: d["steps"][1].__setitem__("needs", ["fetsh"]))
    dry = env.client.post("/v1/workflows/validate", json=bad)
    real = env.client.post("/v1/workflows", json=bad)
    assert dry.status_code == real.status_code == 422
    assert dry.json() == real.json()
    assert dry.json()["detail"][0]["loc"] == ["body", "steps", 1, "needs", 0]

    # Nothing was allocated or published: the first registration is still version 1.
    assert env.register()["version"] == 1
    records = env.consume(env.catalog.workflows.topic, lambda r: len(r) >= 1)
    assert [r.key for r in records] == [b"order-sync@1"]
    env.project()
    after = env.client.post("/v1/workflows/validate", json=DEFINITION)
    assert after.status_code == 200 and after.json()["version"] == 2


# -- starting runs ------------------------------------------------------------------------------


def test_start_run_publishes_start_run_and_keys_are_idempotent(env: Env) -> None:
    env.register()
    env.project()

    missing = env.client.post("/v1/runs", json={"workflow_id": "order-sync", "inputs": {}})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "inputs", "order_id"]
    assert missing.json()["detail"][0]["type"] == "inputs_invalid"
    unknown = env.client.post("/v1/runs", json={"workflow_id": "nope", "inputs": {}})
    assert unknown.status_code == 404 and unknown.json() == {"detail": "workflow 'nope' not found"}
    no_version = env.client.post("/v1/runs", json={"workflow_id": "order-sync", "version": 4})
    assert no_version.status_code == 404
    too_long = env.client.post(
        "/v1/runs", json={"workflow_id": "order-sync", "inputs": {"order_id": 1}, "wait_ms": 30001}
    )
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == [
        "body",
        "wait_ms",
    ]

    body = {"workflow_id": "order-sync", "inputs": {"order_id": 42}}
    plain = env.client.post("/v1/runs", json=body)
    assert plain.status_code == 202
    assert plain.json()["status"] == "accepted"
    keyed = env.client.post("/v1/runs", json=body, headers={"Idempotency-Key": "k-1"})
    again = env.client.post("/v1/runs", json={**body, "idempotency_key": "k-1"})
    assert keyed.json()["run_id"] == again.json()["run_id"] != plain.json()["run_id"]
    reused = env.client.post(
        "/v1/runs", json={**body, "inputs": {"order_id": 43}}, headers={"Idempotency-Key": "k-1"}
    )
    assert reused.status_code == 409 and "Idempotency-Key 'k-1'" in reused.json()["detail"]

    records = env.consume(env.catalog.commands.topic, lambda r: len(r) >= 3)
    commands = [r.value for r in records]
    assert all(isinstance(c, StartRun) for c in commands)
    by_run = {c.run_id: c for c in commands}  # type: ignore[union-attr]
    start = by_run[plain.json()["run_id"]]
    assert isinstance(start, StartRun)
    assert (start.workflow_id, start.workflow_version, start.inputs) == (
        "order-sync",
        1,
        {"order_id": 42},
    )
    assert start.source == "api" and start.idempotency_key is None
    keyed_start = by_run[keyed.json()["run_id"]]
    assert isinstance(keyed_start, StartRun) and keyed_start.idempotency_key == "api:k-1"
    assert {r.key for r in records} == {c.run_id.encode() for c in commands}  # type: ignore[union-attr]


def test_wait_ms_returns_the_finished_run(env: Env) -> None:
    env.register()
    env.project()
    body = {"workflow_id": "order-sync", "inputs": {"order_id": 7}}
    # Nothing runs the command: the wait ends with 202 and no projected run.
    alone = env.client.post("/v1/runs", json={**body, "wait_ms": 300})
    assert alone.status_code == 202 and alone.json()["run"] is None

    with stand_in_scheduler(env):
        done = env.client.post("/v1/runs", json={**body, "wait_ms": 20000})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["outputs"]) == ("succeeded", {"ok": True})
    assert done.json()["steps"][0]["step_id"] == "fetch"


# -- reading runs -------------------------------------------------------------------------------


def test_run_views_events_state_and_pagination(env: Env) -> None:
    run_id = _seed_run(env, finish=True)

    run = env.client.get(f"/v1/runs/{run_id}").json()
    assert (run["status"], run["last_seq"], run["outputs"]) == ("succeeded", 4, {"ok": True})
    assert [(s["step_id"], s["status"], s["output"]) for s in run["steps"]] == [
        ("fetch", "succeeded", {"status": 200})
    ]
    assert env.client.get("/v1/runs/nope").json() == {"detail": "run 'nope' not found"}

    events = env.client.get(f"/v1/runs/{run_id}/events", params={"after_seq": 2}).json()
    assert [(e["seq"], e["event_type"]) for e in events["data"]] == [
        (3, "StepSucceeded"),
        (4, "RunSucceeded"),
    ]
    assert events["next_after_seq"] == 4
    assert env.client.get("/v1/runs/nope/events").status_code == 404

    at_1 = env.client.get(f"/v1/runs/{run_id}/state", params={"seq": 1}).json()
    assert at_1["seq"] == 1 and at_1["event_count"] == 2
    assert at_1["state"]["status"] == "running"
    assert at_1["state"]["steps"]["fetch"]["status"] == "scheduled"
    latest = env.client.get(f"/v1/runs/{run_id}/state").json()
    assert latest["seq"] == 4 and latest["state"]["status"] == "succeeded"
    beyond = env.client.get(f"/v1/runs/{run_id}/state", params={"seq": 9})
    assert beyond.status_code == 422 and beyond.json()["detail"][0]["loc"] == ["query", "seq"]

    second = str(uuid.uuid4())
    _publish(
        env.settings,
        env.catalog.runs.topic,
        _run_log(second, _projected_definition(env), finish=False),
    )
    env.project()
    page = env.client.get("/v1/runs", params={"workflow_id": "order-sync", "limit": 1}).json()
    assert len(page["data"]) == 1 and page["next_cursor"]
    rest = env.client.get("/v1/runs", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert {page["data"][0]["run_id"], rest["data"][0]["run_id"]} == {run_id, second}
    assert rest["next_cursor"] is None
    running = env.client.get("/v1/runs", params={"status": "running"}).json()
    assert [r["run_id"] for r in running["data"]] == [second]
    assert env.client.get("/v1/runs", params={"status": "weird"}).status_code == 422
    bad_cursor = env.client.get("/v1/runs", params={"cursor": "!!"})
    assert bad_cursor.status_code == 422 and bad_cursor.json()["detail"][0]["loc"] == [
        "query",
        "cursor",
    ]


def _sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if "id" in fields:
            events.append(fields)
    return events


def test_stream_replays_then_ends_after_the_terminal_event(env: Env) -> None:
    run_id = _seed_run(env, finish=True)
    with env.client.stream("GET", f"/v1/runs/{run_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response.read().decode())
    assert [(e["id"], e["event"]) for e in events] == [
        ("0", "RunStarted"),
        ("1", "StepScheduled"),
        ("2", "StepDispatched"),
        ("3", "StepSucceeded"),
        ("4", "RunSucceeded"),
    ]
    assert json.loads(events[3]["data"])["payload"]["output"] == {"status": 200}
    with env.client.stream(
        "GET", f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "2"}
    ) as resumed:
        assert [e["id"] for e in _sse(resumed.read().decode())] == ["3", "4"]
    assert env.client.get("/v1/runs/nope/stream").status_code == 404


def _next_event(lines: Iterator[str]) -> dict[str, str]:
    """The next SSE event with an id from a live stream's lines (comments and pings skipped)."""
    block: list[str] = []
    for line in lines:
        if line:
            block.append(line)
            continue
        events = _sse("\n".join(block))
        block = []
        if events:
            return events[0]
    raise AssertionError(f"the stream ended before another event (pending lines: {block})")


def test_stream_follows_events_that_arrive_later(env: Env) -> None:
    run_id = _seed_run(env, finish=False)
    tail = _run_log(run_id, _projected_definition(env), finish=True)[3:]
    with env.client.stream("GET", f"/v1/runs/{run_id}/stream", params={"after_seq": 1}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        # Event 2 is the last one the projection has: the stream replays it and stays open.
        replayed = _next_event(lines)
        # Events 3 and 4 are published only now, after the stream has sent event 2: they can
        # reach it only by following the projection.
        _publish(env.settings, env.catalog.runs.topic, tail)
        env.project()
        followed = _sse("\n".join(lines))  # to the end: the stream closes after the terminal
    assert replayed["id"] == "2"
    assert [e["id"] for e in followed] == ["3", "4"]
    assert [e["event"] for e in followed] == ["StepSucceeded", "RunSucceeded"]


# -- controlling runs ---------------------------------------------------------------------------


@contextlib.contextmanager
def stand_in_scheduler(env: Env) -> Iterator[None]:
    """While open, answers commands like the scheduler would: StartRun with a finished run log,
    PauseRun with RunPaused, CancelRun with CommandRejected; then projects the answers."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        group = f"{env.settings.topic_prefix}.stand-in"
        next_seq: dict[str, int] = {}
        try:
            with Consumer([env.catalog.commands], group, env.settings, catalog=env.catalog) as c:
                while not stop.is_set():
                    answers: list[RefluxRecord] = []
                    for record in c.poll_batch(timeout=0.2):
                        answers += _answer(env, record.value, next_seq)
                    if answers:
                        _publish(env.settings, env.catalog.runs.topic, answers)
                        env.project()
                    c.commit()
        except BaseException as exc:  # surfaced in the test thread below
            failures.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    assert not failures, failures


def _answer(env: Env, command: RefluxRecord | None, next_seq: dict[str, int]) -> list[RefluxRecord]:
    if isinstance(command, StartRun):
        log = _run_log(command.run_id, _projected_definition(env), finish=True)
        next_seq[command.run_id] = len(log)
        return log
    if not isinstance(command, PauseRun | CancelRun):
        return []
    seq = next_seq.setdefault(command.run_id, 3)  # runs seeded by _seed_run end at seq 2
    next_seq[command.run_id] = seq + 1
    if isinstance(command, PauseRun):
        return [RunPaused(run_id=command.run_id, seq=seq, causation_id=command.command_id)]
    return [
        CommandRejected(
            run_id=command.run_id,
            seq=seq,
            command_id=command.command_id,
            command_type="CancelRun",
            reason="Expected run to be running, but it is paused",
        )
    ]


def test_commands_publish_and_wait_for_their_outcome(env: Env) -> None:
    run_id = _seed_run(env, finish=False)
    assert env.client.post("/v1/runs/nope/cancel").json() == {"detail": "run 'nope' not found"}
    assert env.client.post(f"/v1/runs/{run_id}/steps/zzz/redrive").status_code == 404

    with stand_in_scheduler(env):
        paused = env.client.post(f"/v1/runs/{run_id}/pause", params={"wait_ms": 20000})
        assert paused.status_code == 200, paused.text
        assert (paused.json()["status"], paused.json()["event_type"]) == ("applied", "RunPaused")
        rejected = env.client.post(
            f"/v1/runs/{run_id}/cancel", params={"wait_ms": 20000}, json={"reason": "test"}
        )
        assert rejected.status_code == 409, rejected.text
        assert rejected.json() == {"detail": "Expected run to be running, but it is paused"}

    accepted = env.client.post(f"/v1/runs/{run_id}/resume")
    assert accepted.status_code == 202 and accepted.json()["status"] == "accepted"
    redrive = env.client.post(f"/v1/runs/{run_id}/steps/fetch/redrive")
    assert redrive.status_code == 202
    records = env.consume(env.catalog.commands.topic, lambda r: len(r) >= 4)
    by_id = {getattr(r.value, "command_id", None): r.value for r in records}
    assert type(by_id[accepted.json()["command_id"]]).__name__ == "ResumeRun"
    assert getattr(by_id[redrive.json()["command_id"]], "step_id", None) == "fetch"
    assert {r.key for r in records} == {run_id.encode()}


# -- webhooks -----------------------------------------------------------------------------------


def test_webhook_signature_and_trigger(env: Env) -> None:
    env.register()
    env.register({**DEFINITION, "id": "signed-wf"})
    env.project()

    body = json.dumps({"order_id": 5}).encode()
    path = "/v1/hooks/signed-wf"
    unsigned = env.client.post(path, content=body)
    assert unsigned.status_code == 401 and "Reflux-Signature" in unsigned.json()["detail"]
    forged = env.client.post(
        path, content=body, headers={"Reflux-Signature": sign("wrong", "POST", path, body)}
    )
    assert forged.status_code == 401 and "(wrong)" in forged.json()["detail"]
    signed = env.client.post(
        path,
        content=body,
        headers={
            # A rotation: the sender signs with the next and the current secret.
            "Reflux-Signature": sign(["next-secret", SECRET], "POST", path, body),
            "Idempotency-Key": "delivery-9",
        },
    )
    assert signed.status_code == 202, signed.text
    assert signed.json()["run_id"] == run_id_for_trigger("webhook", "delivery-9")

    open_hook = env.client.post("/v1/hooks/order-sync", json={"order_id": 6})
    assert open_hook.status_code == 202
    invalid = env.client.post("/v1/hooks/order-sync", json={"order_id": "six"})
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "order_id"]
    assert env.client.post("/v1/hooks/nope", json={}).status_code == 404

    records = env.consume(env.catalog.triggers.topic, lambda r: len(r) >= 2)
    triggers = {r.value.idempotency_key: r for r in records}  # type: ignore[union-attr]
    delivered = triggers["delivery-9"]
    assert isinstance(delivered.value, Trigger)
    assert delivered.key == b"signed-wf"
    assert (delivered.value.source, delivered.value.workflow_id) == ("webhook", "signed-wf")
    assert (delivered.value.payload, delivered.value.workflow_version) == ({"order_id": 5}, 1)
    generated = triggers[open_hook.json()["idempotency_key"]].value
    assert isinstance(generated, Trigger)
    assert run_id_for_trigger("webhook", generated.idempotency_key) == open_hook.json()["run_id"]


# -- health and metrics -------------------------------------------------------------------------


def test_readyz_healthz_and_metrics(env: Env) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok"}
    ready = env.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"

    env.client.get("/v1/runs/nope")
    env.register()
    metrics = env.client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert (
        'reflux_api_requests_total{method="GET",route="/v1/runs/{run_id}",status="404"} 1.0' in text
    )
    assert (
        'reflux_api_commands_published_total{topic="workflows",type="WorkflowRegistered"} 1.0'
        in text
    )
    assert (
        'reflux_api_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/workflows"'
        in text
    )


def test_unreachable_services_are_503_naming_them(env: Env, kafka_settings: Settings) -> None:
    broken = kafka_settings.model_copy(
        update={
            "kafka_bootstrap": "127.0.0.1:1",
            "postgres_dsn": "postgresql://reflux@127.0.0.1:1/x",
        }
    )
    api_settings = ApiSettings(
        read_schema=env.read_schema,
        api_schema=_schema("api"),
        publish_timeout_s=1.0,
        pool_timeout_s=1.0,
        readiness_timeout_s=1.0,
        clickhouse_enabled=False,
    )
    # A real key (in a schema of the reachable Postgres): checking it needs the database too.
    headers = key_headers(kafka_settings, api_settings)
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_settings.api_schema}" CASCADE')
    with TestClient(create_app(broken, api_settings), headers=headers) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert not checks["postgres"]["ok"] and "Postgres" in checks["postgres"]["detail"]
        assert not checks["kafka"]["ok"] and "127.0.0.1:1" in checks["kafka"]["detail"]
        read = client.get("/v1/runs/x")
        assert read.status_code == 503 and read.json()["detail"].startswith(
            "Postgres is unavailable"
        )

    kafka_down = kafka_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    api_settings = ApiSettings(
        read_schema=env.read_schema,
        api_schema=_schema("api"),
        publish_timeout_s=1.0,
        clickhouse_enabled=False,
    )
    headers = key_headers(kafka_settings, api_settings)
    with TestClient(create_app(kafka_down, api_settings), headers=headers) as client:
        response = client.post("/v1/workflows", json=DEFINITION)
        assert response.status_code == 503
        assert response.json()["detail"].startswith("Kafka is unavailable")
    with psycopg.connect(kafka_settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_settings.api_schema}" CASCADE')
