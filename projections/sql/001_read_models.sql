-- Read models of the run engine, derived from the `runs` and `workflows` topics.
-- Applied by projections.postgres.migrations.apply_migrations with search_path set to the
-- target schema, so no table name here is schema-qualified.

CREATE TABLE workflows (
    workflow_id   text        NOT NULL,
    version       integer     NOT NULL,
    definition    jsonb       NOT NULL,
    registered_at timestamptz NOT NULL,
    registered_by text,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE runs (
    run_id           text        PRIMARY KEY,
    workflow_id      text        NOT NULL,
    workflow_version integer     NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('running', 'paused', 'succeeded', 'failed', 'cancelled')),
    inputs           jsonb,
    outputs          jsonb,
    error            jsonb,
    failed_step      text,
    source           text        NOT NULL,
    source_key       text,
    idempotency_key  text,
    deadline         timestamptz,
    started_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    last_seq         bigint      NOT NULL
);

-- List pages: newest first, optionally filtered by workflow and/or status.
CREATE INDEX runs_started_idx ON runs (started_at DESC, run_id DESC);
CREATE INDEX runs_workflow_started_idx ON runs (workflow_id, started_at DESC, run_id DESC);
CREATE INDEX runs_status_started_idx ON runs (status, started_at DESC, run_id DESC);

CREATE TABLE steps (
    run_id          text        NOT NULL,
    step_id         text        NOT NULL,
    node            text        NOT NULL,
    node_version    text        NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('scheduled', 'dispatched', 'retry_wait', 'succeeded', 'failed',
                          'skipped', 'timed_out', 'cancelled')),
    attempt         integer     NOT NULL,
    invocation_id   text,
    params          jsonb,
    output          jsonb,
    output_ref      jsonb,
    error           jsonb,
    skip_reason     text,
    cache_hit       boolean,
    duration_ms     bigint,
    scheduled_at    timestamptz,
    started_at      timestamptz,  -- when the current attempt was dispatched
    next_attempt_at timestamptz,  -- set while in retry_wait
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
-- The primary key already serves "steps of a run"; this one serves "what is in flight".
CREATE INDEX steps_status_idx ON steps (status) WHERE status IN ('scheduled', 'dispatched', 'retry_wait');

CREATE TABLE run_events (
    run_id      text        NOT NULL,
    seq         bigint      NOT NULL,
    event_type  text        NOT NULL,
    event_id    text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload     jsonb       NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- The offsets of record: written in the same transaction as the rows they produced.
CREATE TABLE projection_offsets (
    projector   text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition)
);
