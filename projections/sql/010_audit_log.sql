-- The audit log (ADR 0046, docs/api.md#authentication-and-roles): one row per AuditRecorded
-- from the `audit` topic -- every write to the API, refused ones included -- served by
-- GET /v1/audit. Append-only: the projector inserts each event once (event_id) and never
-- updates a row.

CREATE TABLE audit_log (
    event_id        text        PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    actor           text        NOT NULL,
    principal_kind  text        NOT NULL,
    principal_id    text,
    role            text,
    tenant          text        NOT NULL,
    method          text        NOT NULL,
    route           text        NOT NULL,
    path            text        NOT NULL,
    resource_ids    jsonb       NOT NULL,
    status_code     integer     NOT NULL,
    client          text,
    reason          text
);

CREATE INDEX audit_log_time ON audit_log (occurred_at DESC, event_id DESC);
CREATE INDEX audit_log_actor_time ON audit_log (actor, occurred_at DESC);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant, occurred_at DESC);
