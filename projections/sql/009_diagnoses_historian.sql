-- The historian (ADR 0034, docs/learning.md#historian): every Diagnosis from the `diagnoses`
-- topic with an embedding of its context, and the proposals from `reflux.mutations` linked to
-- the diagnosis they answered (evidence.diagnosis_id), with their outcome and measured effect.
-- Written by the historian's projector (`reflux historian`), its offsets in projection_offsets.

-- pgvector lives in `public` (one extension per database); the type and the operator class are
-- qualified because migrations run with search_path set to the target schema only.
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

CREATE TABLE diagnoses (
    diagnosis_id     text        PRIMARY KEY,   -- '<kind>/<subject>/<detected_at ms>'
    event_id         text        NOT NULL,
    subject          text        NOT NULL,
    kind             text        NOT NULL,
    severity         text        NOT NULL,
    detector         text        NOT NULL,
    workflow_id      text,
    workflow_version integer,
    step_id          text,
    node             text,
    node_version     text,
    error_class      text,
    detected_at      timestamptz NOT NULL,
    occurred_at      timestamptz NOT NULL,
    traces_seen      bigint      NOT NULL,
    metrics          jsonb       NOT NULL,
    example_run_ids  jsonb       NOT NULL,
    evidence         jsonb       NOT NULL,
    explanation      text        NOT NULL,
    context          text        NOT NULL,       -- the text that was embedded
    embedding        public.vector(256) NOT NULL, -- unit length; compared by cosine distance
    embedding_model  text        NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX diagnoses_detected_idx ON diagnoses (detected_at DESC, diagnosis_id);
CREATE INDEX diagnoses_workflow_idx ON diagnoses (workflow_id, detected_at DESC);
CREATE INDEX diagnoses_kind_idx ON diagnoses (kind, detected_at DESC);
CREATE INDEX diagnoses_embedding_idx ON diagnoses
    USING hnsw (embedding public.vector_cosine_ops);

-- One row per proposal (its latest lifecycle record). diagnosis_id is null for a proposal that
-- answers no diagnosis (a person's); no foreign key: a proposal may be projected before its
-- diagnosis (two topics), and the link is made by the join.
CREATE TABLE diagnosis_proposals (
    mutation_id      text        PRIMARY KEY,
    diagnosis_id     text,
    workflow_id      text        NOT NULL,
    base_version     integer     NOT NULL,
    author           text        NOT NULL,
    strategy         text,
    status           text        NOT NULL,
    rationale        text        NOT NULL,
    changes          jsonb       NOT NULL,
    predicted_effect jsonb,
    replay_verdict   text,
    effect           jsonb,      -- the keep / rollback decision's evidence (canary statistics)
    applied_version  integer,
    reason           text,
    proposed_at      timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_event_id    text        NOT NULL,
    context          text        NOT NULL,
    embedding        public.vector(256) NOT NULL,
    embedding_model  text        NOT NULL
);

CREATE INDEX diagnosis_proposals_diagnosis_idx ON diagnosis_proposals (diagnosis_id, proposed_at DESC);
CREATE INDEX diagnosis_proposals_embedding_idx ON diagnosis_proposals
    USING hnsw (embedding public.vector_cosine_ops);

-- The guard of the mutations records (one row per record handled) and the evidence of the
-- keep / rollback / reject requests, read when the transition they asked for is projected.
CREATE TABLE historian_events (
    event_id    text        PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE historian_decisions (
    request_id   text        PRIMARY KEY,
    mutation_id  text        NOT NULL,
    action       text        NOT NULL,
    actor        text        NOT NULL,
    evidence     jsonb,
    requested_at timestamptz NOT NULL
);
