from __future__ import annotations

from processors.triggers.mapping import inputs_from_payload, run_id_for_trigger, start_command
from schemas.models import Trigger


def _trigger(key: str = "evt-1", payload: object = None) -> Trigger:
    return Trigger(
        source="webhook",
        source_key="orders",
        workflow_id="orders",
        payload={"order": 7} if payload is None else payload,
        idempotency_key=key,
    )


def test_same_trigger_names_the_same_run() -> None:
    assert start_command(_trigger()).run_id == start_command(_trigger()).run_id


def test_different_keys_or_sources_name_different_runs() -> None:
    assert run_id_for_trigger("webhook", "a") != run_id_for_trigger("webhook", "b")
    assert run_id_for_trigger("webhook", "a") != run_id_for_trigger("kafka", "a")


def test_object_payload_is_the_inputs_and_other_values_are_wrapped() -> None:
    assert start_command(_trigger()).inputs == {"order": 7}
    assert inputs_from_payload([1, 2]) == {"payload": [1, 2]}
    assert inputs_from_payload("x") == {"payload": "x"}


def test_command_carries_source_and_idempotency_key() -> None:
    command = start_command(_trigger(key="k9"))
    assert command.source == "webhook"
    assert command.source_key == "orders"
    assert command.idempotency_key == "webhook:k9"
    assert command.workflow_version is None
