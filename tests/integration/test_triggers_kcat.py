"""Triggers published with Debian's ``kcat`` (a tool that is not this repository's code) start
runs that complete: a structured CloudEvent, a binary-mode CloudEvent (``ce_*`` headers) and a
plain JSON object; records that cannot start a run reach the dead-letter topic with the reason,
which ``kcat`` reads from the dead letter's headers (docs/triggers.md, ADR 0053)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from foundation.settings import Settings
from processors.triggers.mapping import run_id_for_trigger
from streams.security import kcat_args
from tests.integration.engine_fixtures import Harness, HarnessFactory, transform
from tests.support.waiting import eventually

LINEAR = {
    "id": "linear",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [
        transform("a", "n", {"n": "{{ inputs.n }}"}),
        transform("b", "[x, x]", {"x": "{{ steps.a.output.result }}"}, needs=["a"]),
    ],
    "outputs": {"pair": "{{ steps.b.output.result }}"},
}
ORDER_CREATED = "com.example.order.created"


def kcat() -> str:
    path = shutil.which("kcat")
    # `make up` (infra.stack.SYSTEM_TOOLS) installs it; the session fixture ran `up`.
    assert path is not None, "kcat is not installed: apt-get install -y kcat"
    return path


def publish(
    settings: Settings,
    tmp_path: Path,
    value: bytes,
    *,
    key: str,
    headers: dict[str, str] | None = None,
) -> None:
    """One record, as a person would send it: ``kcat -P -t <topic> -k <key> -H name=value
    <file>`` (a file argument is one message, whatever bytes it holds)."""
    body = tmp_path / f"record-{uuid.uuid4().hex[:8]}"
    body.write_bytes(value)
    args = [kcat(), *kcat_args(settings), "-P", "-t", f"{settings.topic_prefix}.triggers"]
    args += ["-k", key]
    for name, text in (headers or {}).items():
        args += ["-H", f"{name}={text}"]
    subprocess.run([*args, str(body)], check=True, capture_output=True, timeout=30)


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """The dead-letter topic's headers as kcat prints them (``-f`` with a JSON envelope)."""
    result = subprocess.run(
        [
            kcat(),
            *kcat_args(settings),
            "-C",
            "-t",
            f"{settings.topic_prefix}.dlq",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-J",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    # The dead letter's value is Avro (not UTF-8); kcat escapes control characters, so every
    # record is one line, and only its headers are read here.
    lines = result.stdout.decode("utf-8", errors="replace").split("\n")
    letters = [json.loads(line) for line in lines if line.strip()]
    # kcat -J prints headers as a flat list: [name, value, name, value, ...]
    return [
        dict(zip(h[::2], h[1::2], strict=True)) for h in (x.get("headers") or [] for x in letters)
    ]


@pytest.fixture
def engine(engine_harness: HarnessFactory, kafka_settings: Settings) -> Harness:
    # The operator maps one CloudEvent type to a workflow (REFLUX_TRIGGER_TYPE_MAP).
    settings = kafka_settings.model_copy(update={"trigger_type_map": {ORDER_CREATED: "linear"}})
    harness = engine_harness(settings, client_id="kcat-triggers")
    harness.register(LINEAR)
    return harness


def test_kcat_triggers_in_every_shape_start_runs_that_complete(
    engine: Harness, tmp_path: Path
) -> None:
    settings = engine.settings
    structured = {
        "specversion": "1.0",
        "id": "evt-structured-1",
        "source": "urn:example:shop",
        "type": "com.example.order.updated",
        "subject": "linear",
        "datacontenttype": "application/json",
        "time": "2026-12-06T18:00:00Z",
        "data": {"n": 7},
    }
    value = json.dumps(structured).encode()
    ce_json = {"content-type": "application/cloudevents+json"}
    publish(settings, tmp_path, value, key="order-7", headers=ce_json)
    publish(settings, tmp_path, value, key="order-7", headers=ce_json)  # redelivered
    binary_headers = {
        "ce_specversion": "1.0",
        "ce_id": "evt-binary-1",
        "ce_source": "urn:example:shop",
        "ce_type": ORDER_CREATED,  # no subject: the type map names the workflow
        "content-type": "application/json",
    }
    publish(settings, tmp_path, b'{"n": 3}', key="order-3", headers=binary_headers)
    plain = {
        "source": "orders-system",
        "source_key": "order-4",
        "workflow_id": "linear",
        "payload": {"n": 4},
        "idempotency_key": "order-4-created",
    }
    publish(settings, tmp_path, json.dumps(plain).encode(), key="order-4")

    expected = {
        run_id_for_trigger("urn:example:shop", "evt-structured-1"): 7,
        run_id_for_trigger("urn:example:shop", "evt-binary-1"): 3,
        run_id_for_trigger("orders-system", "order-4-created"): 4,
    }
    for run_id, n in expected.items():
        run = engine.wait(run_id)
        assert (run.status, run.outputs) == ("succeeded", {"pair": [n, n]}), run
    structured_run = next(iter(expected))
    row = engine.run(structured_run)
    assert row is not None and (row.source, row.source_key) == ("urn:example:shop", "order-7")
    starts = [e for e in engine.events(structured_run) if e.event_type == "RunStarted"]
    assert len(starts) == 1, "a redelivered CloudEvent starts one run"


def test_kcat_records_that_cannot_start_a_run_are_dead_lettered_with_the_reason(
    engine: Harness, tmp_path: Path
) -> None:
    settings = engine.settings
    missing_id = {
        "ce_specversion": "1.0",
        "ce_source": "urn:example:shop",
        "ce_type": ORDER_CREATED,
        "content-type": "application/json",
    }
    publish(settings, tmp_path, b'{"n": 1}', key="bad-1", headers=missing_id)
    unknown = {
        "specversion": "1.0",
        "id": "evt-2",
        "source": "urn:example:shop",
        "type": "com.example.unknown",
        "subject": "no-such-workflow",
        "data": {"n": 1},
    }
    publish(settings, tmp_path, json.dumps(unknown).encode(), key="bad-2")
    unmapped = {k: v for k, v in unknown.items() if k != "subject"}
    publish(settings, tmp_path, json.dumps(unmapped).encode(), key="bad-3")
    publish(settings, tmp_path, b"order 42 was created", key="bad-4")
    # A good record after the bad ones: the router carried on.
    good = {"source": "s", "workflow_id": "linear", "payload": {"n": 2}, "idempotency_key": "k"}
    publish(settings, tmp_path, json.dumps(good).encode(), key="good")
    assert engine.wait(run_id_for_trigger("s", "k")).status == "succeeded"

    letters = eventually(
        lambda: dead_letters(settings),
        30,
        "four dead letters read by kcat",
        until=lambda found: len(found) >= 4,
    )
    assert len(letters) == 4, letters
    text = "\n".join(f"{d['reflux-error-class']}: {d['reflux-reason']}" for d in letters)
    assert "TriggerFormat: Expected the CloudEvent's required ce_id header" in text, text
    assert (
        "UnknownWorkflow: Expected workflow 'no-such-workflow' (any version) to be registered"
        in text
    ), text
    assert "TriggerFormat: Expected the CloudEvent to name its workflow in 'subject'" in text
    assert "type 'com.example.unknown'" in text and ORDER_CREATED in text  # the mapped types
    assert "TriggerFormat: Expected a trigger as Avro single-object" in text
    assert all(letter["reflux-group"].endswith(".trigger-router") for letter in letters)
