-- Kafka -> ClickHouse with no Python in the path (docs/decisions/0004-traces-json-on-kafka.md).
-- The queue reads the traces topic's JSON (schemas/trace_json.py) in the wire's own types; the
-- views convert. kafka_handle_error_mode = 'stream' turns a message that does not parse into a
-- row with _error set instead of an exception that would stop consumption at that offset.
-- Freshness: blocks are flushed every kafka_flush_interval_ms (the default, 7.5 s, is tuned for
-- batch loads); kafka_max_block_size keeps big blocks when a backlog is read.
-- Unknown fields are errors, not silently dropped: deploy a migration for a new trace field
-- before the writers that send it (readers before writers, as for Avro).
CREATE TABLE IF NOT EXISTS $database.traces_queue
(
    event_id String,
    run_id String,
    seq Int64,
    occurred_at Int64,
    schema_version Int32,
    workflow_id String,
    workflow_version Int32,
    step_id String,
    node String,
    node_version String,
    invocation_id Nullable(String),
    status Enum8('ok' = 1, 'error' = 2, 'timeout' = 3, 'cancelled' = 4, 'skipped' = 5),
    start Int64,
    `end` Int64,
    latency_ms Int64,
    inputs_hash String,
    metrics Map(String, Float64),
    error Tuple(error_class String, message String, retryable Bool),
    retry_count Int32,
    cache_hit Bool,
    cost_tokens Nullable(Int64),
    context Map(String, String)
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = $kafka_broker_list,
    kafka_topic_list = $traces_topic,
    kafka_group_name = $consumer_group,
    kafka_client_id = $consumer_group,
    kafka_format = 'JSONEachRow',
    kafka_handle_error_mode = 'stream',
    kafka_num_consumers = $kafka_num_consumers,
    kafka_thread_per_consumer = 1,
    kafka_max_block_size = 65536,
    kafka_flush_interval_ms = $kafka_flush_interval_ms,
    kafka_poll_timeout_ms = $kafka_poll_timeout_ms,
    input_format_skip_unknown_fields = 0,
    input_format_null_as_default = 1,
    input_format_defaults_for_omitted_fields = 1;

-- The good rows. Created before the errors view: consumption starts with the first attached
-- view, and a good row must never be read by the errors view alone (it would be dropped).
CREATE MATERIALIZED VIEW IF NOT EXISTS $database.traces_mv
TO $database.traces
AS SELECT
    event_id,
    run_id,
    seq,
    fromUnixTimestamp64Milli(occurred_at, 'UTC') AS occurred_at,
    schema_version,
    workflow_id,
    workflow_version,
    step_id,
    node,
    node_version,
    invocation_id,
    status,
    fromUnixTimestamp64Milli(start, 'UTC') AS start,
    fromUnixTimestamp64Milli(`end`, 'UTC') AS `end`,
    latency_ms,
    inputs_hash,
    metrics,
    nullIf(tupleElement(error, 'error_class'), '') AS error_class,
    if(tupleElement(error, 'error_class') = '', NULL, tupleElement(error, 'message'))
        AS error_message,
    if(tupleElement(error, 'error_class') = '', NULL, tupleElement(error, 'retryable'))
        AS error_retryable,
    retry_count,
    cache_hit,
    cost_tokens,
    context,
    toUInt32(_partition) AS kafka_partition,
    _offset AS kafka_offset,
    ifNull(_timestamp_ms, now64(3)) AS produced_at,
    now64(3) AS received_at
FROM $database.traces_queue
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.traces_errors_mv
TO $database.traces_errors
AS SELECT
    _topic AS topic,
    toUInt32(_partition) AS partition,
    _offset AS offset,
    ifNull(_key, '') AS key,
    _raw_message AS raw_message,
    trim(BOTH ' \n' FROM _error) AS error,
    now64(3) AS received_at
FROM $database.traces_queue
WHERE length(_error) > 0;
