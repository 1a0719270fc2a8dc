"""The audit applier (migration 010, ADR 0046): one row per record, inserted once."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from projections.postgres.appliers import plan
from projections.postgres.audit_appliers import AUDIT_EVENT_TYPES, AUDIT_TABLES
from projections.postgres.writer import READ_MODEL_TABLES
from schemas.models import AuditRecorded


def test_an_audit_record_is_one_insert_that_a_redelivery_skips() -> None:
    record = AuditRecorded(
        actor="user:ci",
        principal_kind="api_key",
        principal_id="0123456789abcdef",
        role="operator",
        tenant="default",
        method="POST",
        route="/v1/runs/{run_id}/cancel",
        path="/v1/runs/r1/cancel",
        resource_ids={"run_id": "r1"},
        status_code=202,
        client="127.0.0.1:5000",
    )
    assert isinstance(record, AUDIT_EVENT_TYPES)
    planned = plan(record, "acme")
    assert planned.updates == ()
    assert planned.guard.sql.startswith('INSERT INTO "acme".audit_log ')
    assert planned.guard.sql.endswith("ON CONFLICT (event_id) DO NOTHING")
    params = planned.guard.params
    assert params[0] == record.event_id and params[2] == "user:ci"
    resource_ids = params[10]
    assert isinstance(resource_ids, Jsonb) and resource_ids.obj == {"run_id": "r1"}
    assert set(AUDIT_TABLES) <= set(READ_MODEL_TABLES), "a rebuild truncates the audit log too"
