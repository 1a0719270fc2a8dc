-- A/B replay per-step rows (docs/replay.md, ADR 0030): one row per (replay, run, step, side),
-- written by the replay runner when it has a ClickHouse handle, for latency analysis across
-- replays (the per-run reports in Postgres hold the same numbers per replay). ReplacingMergeTree
-- on the key: a replay re-run after a crash rewrites its rows instead of doubling them.
CREATE TABLE IF NOT EXISTS $database.replay_steps
(
    replay_id String,
    workflow_id LowCardinality(String),
    side LowCardinality(String),
    original_run_id String,
    run_id String,
    step_id String,
    status LowCardinality(String),
    served LowCardinality(String),
    attempts UInt32,
    duration_ms Nullable(Float64),
    tokens Nullable(Int64),
    calls UInt32,
    output_equal UInt8,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (replay_id, original_run_id, step_id, side);
