-- A cheaper field check (docs/decisions/0068-trace-ingest-layout-fast-path.md). 007's check
-- (JSONExtractKeysAndValuesRaw: every value parsed a second time and re-serialized, then a lambda
-- per field) was about half of the CPU per trace. Here a message in the layout encode_trace
-- writes (compact, the Trace fields in schema order, strings without escapes) is accepted by one
-- anchored regular expression over the raw bytes; only a message that does not match (another
-- layout, an escape, or a bad message) takes 007's per-field check, which names the problem.
-- The pattern accepts a subset of what that check accepts, and nothing the typed parse cannot
-- read exactly (integers of at most 18 digits, floats with a two-digit exponent, valid UTF-8),
-- so a message lands where 007 put it, with the same reason.
--
--   traces_queue (Kafka, JSONAsString) -> traces_ingest_mv -> traces_ingest (Null: nothing kept)
--       traces_ingest -> traces_mv (error = '') -> traces
--       traces_ingest -> traces_errors_mv (error != '') -> traces_errors
--
-- Upgrade: as 007 (the same statements in the same order, so a store still on 003 is upgraded
-- the same way): the views and the queue go, the errors view before traces_mv; the queue is
-- recreated with the same consumer group, so ingestion resumes at the committed offsets; the
-- consuming view is created last. On a new store apply() skips 003 and 007, which this replaces.
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

-- A message in encode_trace's layout is accepted by the pattern alone. Any other message has
-- each field's (key, raw JSON value) checked once (007's check): the first one that is not
-- allowed names the error. multiIf evaluates that check only for the rows the pattern refused.
-- Every expression appears once: the analyzer copies an alias into each place that uses it, and
-- building this view's insert pipeline for every Kafka block must stay cheap (a 1-row block's
-- latency is the idle freshness).
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
        -- The fast path: the layout encode_trace writes, every field of its JSON type. A string
        -- here is "[^"\x5c\x00-\x1f]*" (no backslash: a string with an escape takes the check
        -- below); an integer has at most 18 digits; a float at most 18 before its point, any
        -- fraction and at most a two-digit exponent.
        isValidUTF8(raw) AND match(raw, concat(
            '^[{]',
            '"event_id":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"run_id":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"seq":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"occurred_at":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"schema_version":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"workflow_id":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"workflow_version":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"step_id":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"node":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"node_version":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"invocation_id":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"status":(?:null|"(?:ok|error|timeout|cancelled|skipped)")',
            ',"start":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"end":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"latency_ms":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"inputs_hash":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"metrics":(?:null|[{](?:"[^"\\x5c\\x00-\\x1f]*":-?(?:0|[1-9][0-9]{0,17})(?:[.][0-9]+)?(?:[eE][-+]?[0-9]{1,2})?',
            '(?:,"[^"\\x5c\\x00-\\x1f]*":-?(?:0|[1-9][0-9]{0,17})(?:[.][0-9]+)?(?:[eE][-+]?[0-9]{1,2})?)*)?[}])',
            ',"error":(?:null|[{]"error_class":(?:null|"[^"\\x5c\\x00-\\x1f]*")',
            ',"message":(?:null|"[^"\\x5c\\x00-\\x1f]*"),"retryable":(?:null|true|false)[}])',
            ',"retry_count":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"cache_hit":(?:null|true|false)',
            ',"cost_tokens":(?:null|-?(?:0|[1-9][0-9]{0,17}))',
            ',"context":(?:null|[{](?:"[^"\\x5c\\x00-\\x1f]*":"[^"\\x5c\\x00-\\x1f]*"',
            '(?:,"[^"\\x5c\\x00-\\x1f]*":"[^"\\x5c\\x00-\\x1f]*")*)?[}])',
            '[}]$$')), '',
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
