"""The public topics on the real engine, used only with tools that are not REFLUX's code
(ADR 0054): Debian's ``kcat`` publishes JSON triggers and reads ``<prefix>.run-outcomes`` as JSON
(read_committed); the ``jsonschema`` package validates every record of both topics against the
published schemas; the outcomes are exactly the run log's events. Plus ``GET /v1/schemas`` with
real keys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth.roles import Role
from api.config import ApiSettings
from foundation.objectstore import S3BlobStore
from foundation.settings import Settings
from processors.triggers.mapping import run_id_for_trigger
from schemas.json_schemas import load_schema, schema_names
from schemas.models import CancelRun
from streams.security import kcat_args
from tests.integration.engine_fixtures import Harness, HarnessFactory, transform
from tests.integration.http_fixtures import HttpTestServer
from tests.support.api_auth import key_headers
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

# Run outputs larger than this travel by claim check on the outcomes topic.
THRESHOLD = 2048
OUTCOME_EVENTS = {
    "RunStarted": "reflux.run.started",
    "RunSucceeded": "reflux.run.succeeded",
    "RunFailed": "reflux.run.failed",
    "RunCancelled": "reflux.run.cancelled",
    "StepFailed": "reflux.step.failed",
    "StepTimedOut": "reflux.step.failed",
}


def kcat_path() -> str:
    path = shutil.which("kcat")
    # `make up` (infra.stack.SYSTEM_TOOLS) installs it.
    assert path is not None, "kcat is not installed: apt-get install -y kcat"
    return path


def kcat(settings: Settings, topic: str, fmt: str) -> list[str]:
    """Everything committed on ``topic`` so far, one line per record (``-e``: stop at the end)."""
    done = subprocess.run(
        [
            kcat_path(),
            *kcat_args(settings),
            "-C",
            "-t",
            topic,
            "-e",
            "-o",
            "beginning",
            "-q",
            "-f",
            fmt,
            "-X",
            "isolation.level=read_committed",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def read_outcomes(settings: Settings, topic: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, CloudEvent) of every record, as kcat prints them with ``-f '%k %s\\n'``."""
    out = []
    for line in kcat(settings, topic, "%k %s\n"):
        key, _, value = line.partition(" ")
        out.append((key, json.loads(value)))
    return out


def http_step(step_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "node": "http.request@^1", "params": {"url": url}, **extra}


def publish(settings: Settings, tmp_path: Path, value: dict[str, Any], key: str) -> None:
    """One JSON record on the triggers topic, as a person sends it: ``kcat -P -k KEY FILE``."""
    body = tmp_path / f"trigger-{uuid.uuid4().hex[:8]}.json"
    body.write_text(json.dumps(value))
    topic = f"{settings.topic_prefix}.triggers"
    subprocess.run(
        [kcat_path(), *kcat_args(settings), "-P", "-t", topic, "-k", key, str(body)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_kcat_reads_each_runs_outcomes_exactly_as_the_run_log_has_them(
    engine_harness: HarnessFactory, kafka_settings: Settings, http: HttpTestServer, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(update={"claim_check_threshold_bytes": THRESHOLD})
    harness = engine_harness(settings)
    topic = harness.engine.catalog.run_outcomes.topic
    harness.register(
        {
            "id": "ok",
            "inputs": {"word": {"type": "string", "required": True}},
            "steps": [transform("say", "w", {"w": "{{ inputs.word }}"})],
            "outputs": {"said": "{{ steps.say.output.result }}"},
        }
    )
    harness.register(
        {
            "id": "big",
            "inputs": {"blob": {"type": "string", "required": True}},
            "steps": [transform("copy", "b", {"b": "{{ inputs.blob }}"})],
            "outputs": {"blob": "{{ steps.copy.output.result }}"},
        }
    )
    harness.register(
        {
            "id": "boom",
            "steps": [
                http_step(
                    "call",
                    f"{http.url}/status/503",
                    retry={"max_attempts": 2, "initial_backoff": "20ms"},
                )
            ],
        }
    )
    harness.register({"id": "slow", "steps": [http_step("wait", f"{http.url}/slow?ms=8000")]})

    ok = harness.start("ok", {"word": "héllo"})
    blob = "x" * (THRESHOLD * 2)
    big = harness.start("big", {"blob": blob})
    boom = harness.start("boom")
    slow = harness.start("slow")
    # Two runs started by JSON triggers that kcat publishes: a plain one and a CloudEvent.
    plain: dict[str, Any] = {
        "source": "erp",
        "workflow_id": "ok",
        "payload": {"word": "plain"},
        "idempotency_key": f"erp-{uuid.uuid4().hex[:8]}",
    }
    cloud: dict[str, Any] = {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": "crm",
        "type": "com.example.greeting",
        "subject": "ok",
        "datacontenttype": "application/json",
        "data": {"word": "cloud"},
    }
    publish(settings, tmp_path, plain, "orders")
    publish(settings, tmp_path, cloud, "greetings")
    by_plain = run_id_for_trigger("erp", plain["idempotency_key"])
    by_event = run_id_for_trigger("crm", cloud["id"])
    harness.wait_step(slow, "wait", "running")
    harness.command(CancelRun(run_id=slow, reason="no longer needed", requested_by="tests"))
    runs = {run_id: harness.wait(run_id) for run_id in (ok, big, boom, slow, by_plain, by_event)}
    assert {r: row.status for r, row in runs.items()} == {
        ok: "succeeded",
        big: "succeeded",
        boom: "failed",
        slow: "cancelled",
        by_plain: "succeeded",
        by_event: "succeeded",
    }

    # The outcomes of each run: exactly its log's outcome events, in its log's order.
    expected = {
        run_id: [
            (e.event_id, OUTCOME_EVENTS[e.event_type], e.seq)
            for e in harness.events(run_id)
            if e.event_type in OUTCOME_EVENTS
        ]
        for run_id in runs
    }

    def by_run() -> dict[str, list[tuple[str, str, int]]]:
        found: dict[str, list[tuple[str, str, int]]] = {}
        for key, event in read_outcomes(settings, topic):
            found.setdefault(key, []).append((event["id"], event["type"], event["data"]["seq"]))
        return found

    got = eventually(by_run, 30, "every run's outcomes on the topic", until=lambda f: f == expected)
    assert [t for _, t, _ in got[boom]] == [
        "reflux.run.started",
        "reflux.step.failed",
        "reflux.step.failed",
        "reflux.run.failed",
    ]
    assert [t for _, t, _ in got[slow]] == ["reflux.run.started", "reflux.run.cancelled"]

    records = read_outcomes(settings, topic)
    # (b) every record is valid against the published schemas: the envelope (with its type's
    # data) and the data schema of its type on its own.
    envelope = jsonschema.Draft202012Validator(load_schema("outcome"))
    for key, event in records:
        errors = [f"{list(e.path)}: {e.message}" for e in envelope.iter_errors(event)]
        assert not errors, (key, event, errors)
        data_schema = load_schema("outcome." + event["type"].removeprefix("reflux."))
        jsonschema.validate(event["data"], data_schema, cls=jsonschema.Draft202012Validator)
        assert event["subject"] == key == event["data"]["run_id"]
        assert event["source"] == f"reflux://{settings.topic_prefix}"

    final = {key: event for key, event in records if event["type"] != "reflux.step.failed"}
    assert final[by_plain]["data"]["outputs"] == {"said": "plain"}
    assert final[by_event]["data"]["outputs"] == {"said": "cloud"}
    started = {key: e["data"]["started_by"] for key, e in records if e["type"].endswith("started")}
    # The trigger's source key and idempotency key (source:key) say which trigger it was.
    assert started[by_plain]["source_key"] == "orders"
    assert started[by_plain]["idempotency_key"] == f"erp:{plain['idempotency_key']}"
    assert "erp" in started[by_plain]["source"]
    assert started[by_event]["idempotency_key"] == f"crm:{cloud['id']}"
    assert final[ok]["data"]["outputs"] == {"said": "héllo"} == runs[ok].outputs
    assert final[boom]["data"]["error"]["error_class"] == "Http5xx"
    assert final[boom]["data"]["step_id"] == "call"
    assert final[slow]["data"]["reason"] == "no longer needed"
    assert final[slow]["data"]["requested_by"] == "tests"
    # Large outputs: a reference to the object store, whose object holds exactly the outputs.
    ref = final[big]["data"]["outputs_ref"]
    assert "outputs" not in final[big]["data"]
    stored = S3BlobStore(settings).get(ref["uri"])
    assert len(stored) == ref["size_bytes"] > THRESHOLD
    assert json.loads(stored) == {"blob": blob} == runs[big].outputs
    workflows = {ok: "ok", big: "big", boom: "boom", slow: "slow", by_plain: "ok", by_event: "ok"}
    for key, outcome in records:
        assert outcome["data"]["workflow_id"] == workflows[key]

    # The structured-mode content type is on every record (CloudEvents' Kafka binding).
    headers = kcat(settings, topic, "%h\n")
    assert headers and set(headers) == {"content-type=application/cloudevents+json"}

    # Every record on the triggers topic is valid against the trigger schema of its shape.
    triggers = kcat(settings, f"{settings.topic_prefix}.triggers", "%s\n")
    assert len(triggers) == 2
    shapes = {
        "trigger": jsonschema.Draft202012Validator(load_schema("trigger")),
        "trigger.cloudevent": jsonschema.Draft202012Validator(load_schema("trigger.cloudevent")),
    }
    for line in triggers:
        document = json.loads(line)
        shape = "trigger.cloudevent" if "specversion" in document else "trigger"
        errors = [f"{list(e.path)}: {e.message}" for e in shapes[shape].iter_errors(document)]
        assert not errors, (shape, document, errors)


def test_the_schemas_are_served_to_any_key_and_to_no_one_without(harness: Harness) -> None:
    api_schema = f"{harness.schema}_api"
    api = ApiSettings(
        read_schema=harness.schema,
        api_schema=api_schema,
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    viewer = key_headers(harness.settings, api, role=Role.VIEWER, name="schema-viewer")
    try:
        with TestClient(create_app(harness.settings, api)) as client:
            assert client.get("/v1/schemas").status_code == 401
            listed = client.get("/v1/schemas", headers=viewer)
            assert listed.status_code == 200, listed.text
            body = listed.json()
            names = [s["name"] for s in body["data"]]
            assert names == schema_names() and body["count"] == len(names)
            assert {"outcome", "outcome.run.succeeded", "trigger", "trigger.cloudevent"} <= set(
                names
            )
            for summary in body["data"]:
                one = client.get(summary["url"], headers=viewer)
                assert one.status_code == 200, one.text
                assert one.headers["content-type"].startswith("application/schema+json")
                schema = one.json()
                assert schema == load_schema(summary["name"])
                assert schema["$id"] == summary["id"]
                jsonschema.Draft202012Validator.check_schema(schema)
            missing = client.get("/v1/schemas/nope", headers=viewer)
            assert missing.status_code == 404
            assert "nope" in missing.text
    finally:
        with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')
