-- Faster ingestion (docs/decisions/0067-trace-ingest-throughput.md). With 003's 22-column
-- JSONEachRow queue the Kafka engine spent ~25 us of CPU per message building and checkpointing
-- a chunk of 22 (nested Map/Tuple/Nullable) columns for every single message, against ~1.5 us
-- for the parse itself. Here the Kafka table reads each message as one String (JSONAsString)
-- and one view parses a whole block with the JSON functions.
--
--   traces_queue (Kafka, JSONAsString) -> traces_ingest_mv -> traces_ingest (Null: nothing kept)
--       traces_ingest -> traces_mv (error = '') -> traces
--       traces_ingest -> traces_errors_mv (error != '') -> traces_errors
--
-- The check runs once per message (in traces_ingest_mv), and its result picks the table. It
-- keeps 003's contract: a message that is not a JSON object, has a field the store does not
-- know, an unknown status or a field of the wrong JSON type goes to traces_errors (raw bytes +
-- error), never to traces. JSONAsString itself refuses what is not JSON (_error). As in 003,
-- omitted fields and nulls take the column's default; integers must be JSON integers (no "5"
-- for 5, as schemas/trace_json.decode_trace).
--
-- Upgrade: the old views and queue go (errors view first: while only traces_mv is attached a good
-- row is never lost), the new ones come with the same consumer group, so ingestion resumes at
-- the committed offsets. traces_ingest_mv is created last: consumption starts when it attaches,
-- with both outputs in place. On a new store apply() skips 003, which this replaces.
DROP VIEW IF EXISTS $database.traces_ingest_mv;

DROP VIEW IF EXISTS $database.traces_errors_mv;

DROP VIEW IF EXISTS $database.traces_mv;

DROP TABLE IF EXISTS $database.traces_queue;

CREATE TABLE IF NOT EXISTS $database.traces_ingest
(
    -- The message's fields in the wire's own types (traces_mv converts, as 003's view did).
    t Tuple(
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
        context Map(String, String)),
    kafka_partition UInt32,
    kafka_offset UInt64,
    produced_at DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    topic LowCardinality(String),
    key String,
    raw String,
    kafka_raw_message String,
    -- '' for a trace; why not, for traces_errors.
    error String
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.traces_mv
TO $database.traces
AS SELECT
    t.event_id AS event_id,
    t.run_id AS run_id,
    t.seq AS seq,
    fromUnixTimestamp64Milli(t.occurred_at, 'UTC') AS occurred_at,
    t.schema_version AS schema_version,
    t.workflow_id AS workflow_id,
    t.workflow_version AS workflow_version,
    t.step_id AS step_id,
    t.node AS node,
    t.node_version AS node_version,
    t.invocation_id AS invocation_id,
    t.status AS status,
    fromUnixTimestamp64Milli(t.start, 'UTC') AS start,
    fromUnixTimestamp64Milli(t.`end`, 'UTC') AS `end`,
    t.latency_ms AS latency_ms,
    t.inputs_hash AS inputs_hash,
    t.metrics AS metrics,
    nullIf(t.error.error_class, '') AS error_class,
    if(t.error.error_class = '', NULL, t.error.message) AS error_message,
    if(t.error.error_class = '', NULL, t.error.retryable) AS error_retryable,
    t.retry_count AS retry_count,
    t.cache_hit AS cache_hit,
    t.cost_tokens AS cost_tokens,
    t.context AS context,
    kafka_partition,
    kafka_offset,
    produced_at,
    received_at
FROM $database.traces_ingest
WHERE error = '';

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.traces_errors_mv
TO $database.traces_errors
AS SELECT
    topic,
    kafka_partition AS partition,
    kafka_offset AS offset,
    key,
    if(kafka_raw_message != '', kafka_raw_message, raw) AS raw_message,
    error,
    received_at
FROM $database.traces_ingest
WHERE error != '';

CREATE TABLE IF NOT EXISTS $database.traces_queue
(
    raw String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = $kafka_broker_list,
    kafka_topic_list = $traces_topic,
    kafka_group_name = $consumer_group,
    kafka_client_id = $consumer_group,
    kafka_format = 'JSONAsString',
    kafka_handle_error_mode = 'stream',
    kafka_num_consumers = $kafka_num_consumers,
    kafka_thread_per_consumer = 1,
    kafka_max_block_size = 65536,
    kafka_flush_interval_ms = $kafka_flush_interval_ms,
    kafka_poll_timeout_ms = $kafka_poll_timeout_ms;

-- Each field's (key, raw JSON value) is checked once: the first one that is not allowed names
-- the error. Every expression appears once: the analyzer copies an alias into each place that
-- uses it, and building this view's insert pipeline for every Kafka block must stay cheap
-- (a 1-row block's latency is the idle freshness).
CREATE MATERIALIZED VIEW IF NOT EXISTS $database.traces_ingest_mv
TO $database.traces_ingest
AS SELECT
    JSONExtract(raw, 'Tuple(
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
            status Enum8(\'ok\' = 1, \'error\' = 2, \'timeout\' = 3, \'cancelled\' = 4,
                \'skipped\' = 5),
            start Int64,
            `end` Int64,
            latency_ms Int64,
            inputs_hash String,
            metrics Map(String, Float64),
            error Tuple(error_class String, message String, retryable Bool),
            retry_count Int32,
            cache_hit Bool,
            cost_tokens Nullable(Int64),
            context Map(String, String))') AS t,
    toUInt32(_partition) AS kafka_partition,
    _offset AS kafka_offset,
    ifNull(_timestamp_ms, now64(3)) AS produced_at,
    now64(3) AS received_at,
    _topic AS topic,
    ifNull(_key, '') AS key,
    raw,
    _raw_message AS kafka_raw_message,
    multiIf(
        length(_error) > 0, trim(BOTH ' \n' FROM _error),
        empty(JSONExtractKeysAndValuesRaw(raw)), 'Expected a JSON object with the Trace fields',
        arrayFirst(problem -> problem != '', arrayMap(f -> if(
            multiIf(
                f.1 IN ('event_id', 'run_id', 'workflow_id', 'step_id', 'node', 'node_version',
                    'invocation_id', 'inputs_hash'),
                    f.2 = 'null' OR startsWith(f.2, '"'),
                f.1 IN ('seq', 'occurred_at', 'schema_version', 'workflow_version', 'start', 'end',
                    'latency_ms', 'retry_count', 'cost_tokens'),
                    f.2 = 'null' OR isNotNull(toInt64OrNull(f.2)),
                f.1 = 'status', f.2 IN ('null', '"ok"', '"error"', '"timeout"', '"cancelled"', '"skipped"'),
                f.1 = 'cache_hit', f.2 IN ('null', 'true', 'false'),
                f.1 = 'metrics', f.2 = 'null' OR (startsWith(f.2, '{') AND arrayAll(
                    v -> isNotNull(toFloat64OrNull(v)),
                    JSONExtractKeysAndValuesRaw(f.2).2)),
                f.1 = 'context', f.2 = 'null' OR (startsWith(f.2, '{') AND arrayAll(
                    v -> startsWith(v, '"'), JSONExtractKeysAndValuesRaw(f.2).2)),
                f.1 = 'error', f.2 = 'null' OR (startsWith(f.2, '{') AND arrayAll(
                    e -> multiIf(
                        e.1 IN ('error_class', 'message'), e.2 = 'null' OR startsWith(e.2, '"'),
                        e.1 = 'retryable', e.2 IN ('null', 'true', 'false'),
                        false),
                    JSONExtractKeysAndValuesRaw(f.2))),
                false),
            '',
            if(f.1 IN ('event_id', 'run_id', 'seq', 'occurred_at', 'schema_version',
                    'workflow_id', 'workflow_version', 'step_id', 'node', 'node_version',
                    'invocation_id', 'status', 'start', 'end', 'latency_ms', 'inputs_hash',
                    'metrics', 'error', 'retry_count', 'cache_hit', 'cost_tokens', 'context'),
                concat('Wrong JSON type for field ', f.1, ': ', substring(f.2, 1, 200)),
                concat('Unknown field found while parsing trace JSON: ', f.1))),
            JSONExtractKeysAndValuesRaw(raw)))) AS error
FROM $database.traces_queue;
