-- The traces store: one row per node attempt (DESIGN.md section 6, the seed's reflection layer).
-- Column types follow the Avro schema reflux.traces.Trace (long -> Int64, int -> Int32) so no
-- valid trace can fail a conversion in the materialized view; a failing view would stall the
-- Kafka consumer on that block. The error record is flattened: the critic groups by error_class.
-- Every statement is idempotent: ClickHouse has no transactional DDL, so a migration that failed
-- half-way is simply run again.
CREATE TABLE IF NOT EXISTS $database.traces
(
    event_id String,
    run_id String,
    seq Int64,
    occurred_at DateTime64(3, 'UTC'),
    schema_version Int32,
    workflow_id LowCardinality(String),
    workflow_version Int32,
    step_id String,
    node LowCardinality(String),
    node_version LowCardinality(String),
    invocation_id Nullable(String),
    status Enum8('ok' = 1, 'error' = 2, 'timeout' = 3, 'cancelled' = 4, 'skipped' = 5),
    start DateTime64(3, 'UTC'),
    `end` DateTime64(3, 'UTC'),
    latency_ms Int64,
    inputs_hash String,
    metrics Map(LowCardinality(String), Float64),
    error_class LowCardinality(Nullable(String)),
    error_message Nullable(String),
    error_retryable Nullable(Bool),
    retry_count Int32,
    cache_hit Bool,
    cost_tokens Nullable(Int64),
    context Map(String, String),
    -- Where the row came from and when, for at-least-once diagnosis (duplicates share
    -- event_id) and for measuring ingestion lag (received_at - produced_at).
    kafka_partition UInt32,
    kafka_offset UInt64,
    produced_at DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(start)
ORDER BY (node, start);

-- Messages the Kafka engine could not parse (kafka_handle_error_mode = 'stream'): kept with
-- their raw bytes so they can be fixed and re-inserted, instead of stalling the consumer.
CREATE TABLE IF NOT EXISTS $database.traces_errors
(
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    key String,
    raw_message String,
    error String,
    received_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (received_at, topic, partition, offset);
