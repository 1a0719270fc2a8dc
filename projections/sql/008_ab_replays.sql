-- A/B replays (docs/replay.md, ADR 0030). Written by the replay runner (and the API, which
-- inserts the queued row so a GET right after the POST finds it), not projected from Kafka: the
-- report is computed by the runner and exists nowhere else.

CREATE TABLE replays (
    replay_id     text        PRIMARY KEY,
    workflow_id   text        NOT NULL,
    mutation_id   text,                 -- the proposal whose definition is the candidate
    requested_by  text        NOT NULL,
    spec          jsonb       NOT NULL, -- {selection, candidate, policy, confidence}
    status        text        NOT NULL, -- queued | running | completed | failed
    total         integer,              -- runs selected (known once selection ran)
    done          integer     NOT NULL DEFAULT 0,
    verdict       text,                 -- better | worse | no_difference | insufficient_data
    summary       jsonb,                -- the aggregate report
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX replays_created_idx ON replays (created_at DESC);
CREATE INDEX replays_workflow_idx ON replays (workflow_id, created_at DESC);
CREATE INDEX replays_mutation_idx ON replays (mutation_id) WHERE mutation_id IS NOT NULL;

-- One row per replayed run: the pair's outcome and its report (steps, diff, cost).
CREATE TABLE replay_runs (
    replay_id        text        NOT NULL REFERENCES replays (replay_id) ON DELETE CASCADE,
    position         integer     NOT NULL,
    original_run_id  text        NOT NULL,
    candidate_run_id text        NOT NULL,
    outcome          text        NOT NULL, -- both_succeeded | fixed | broke | both_failed
    output_equal     boolean     NOT NULL,
    original_status  text        NOT NULL,
    candidate_status text        NOT NULL,
    original_ms      double precision,
    candidate_ms     double precision,
    report           jsonb       NOT NULL,
    PRIMARY KEY (replay_id, original_run_id)
);
