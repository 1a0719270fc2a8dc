-- Workflow mutation proposals (docs/mutations.md), projected from `reflux.mutations`.
-- One row per proposal (its latest lifecycle record), the history of its transitions, the
-- requests people and the optimizer made (and the processor's refusals), and the improvement
-- policy per workflow.

CREATE TABLE mutation_proposals (
    mutation_id     text        PRIMARY KEY,
    workflow_id     text        NOT NULL,
    base_version    integer     NOT NULL,
    status          text        NOT NULL,
    author          text        NOT NULL,
    rationale       text        NOT NULL,
    changes         jsonb       NOT NULL,
    evidence        jsonb,
    report          jsonb,          -- the validation report
    score           double precision,
    canary_weight   double precision,
    applied_version integer,
    previous_version integer,       -- what new runs got before the apply (rollback restores it)
    reason          text,           -- of the latest transition (rejection, rollback)
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    last_event_id   text        NOT NULL
);

CREATE INDEX mutation_proposals_workflow_idx ON mutation_proposals (workflow_id, created_at DESC);
CREATE INDEX mutation_proposals_status_idx ON mutation_proposals (status, created_at DESC);

-- Every transition (also the guard of the proposal appliers: one row per Mutation record).
CREATE TABLE mutation_events (
    -- Projection order = partition order (one workflow's records are in one partition): the
    -- records of one decision share their occurred_at.
    position    bigint      GENERATED ALWAYS AS IDENTITY,
    event_id    text        PRIMARY KEY,
    mutation_id text        NOT NULL,
    workflow_id text        NOT NULL,
    status      text        NOT NULL,
    actor       text,
    reason      text,
    request_id  text,
    occurred_at timestamptz NOT NULL
);

CREATE INDEX mutation_events_mutation_idx ON mutation_events (mutation_id, position);
CREATE INDEX mutation_events_request_idx ON mutation_events (request_id);

-- What was asked; refused_reason is set when the processor refused it.
CREATE TABLE mutation_requests (
    request_id     text        PRIMARY KEY,
    workflow_id    text        NOT NULL,
    mutation_id    text,
    action         text        NOT NULL,
    actor          text        NOT NULL,
    requested_at   timestamptz NOT NULL,
    refused_reason text,
    current_status text
);

CREATE TABLE workflow_improvement (
    workflow_id   text        PRIMARY KEY,
    policy        text        NOT NULL CHECK (policy IN ('off', 'propose', 'auto')),
    actor         text        NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_event_id text        NOT NULL
);
