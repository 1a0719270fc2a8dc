-- Per-minute rollups that the metrics queries read, so their cost does not grow with trace
-- volume. They are fed by materialized views on `traces` (which fire on every insert into it,
-- including the inserts of traces_mv), and are created before the Kafka queue (003) so no
-- ingested row can miss them.
-- A failure is an attempt whose status is 'error' or 'timeout'; cancelled and skipped attempts
-- are neither failures nor successes of the node.
CREATE TABLE IF NOT EXISTS $database.node_metrics_1m
(
    node LowCardinality(String),
    node_version LowCardinality(String),
    minute DateTime('UTC'),
    attempts SimpleAggregateFunction(sum, UInt64),
    failures SimpleAggregateFunction(sum, UInt64),
    cache_hits SimpleAggregateFunction(sum, UInt64),
    retried SimpleAggregateFunction(sum, UInt64),
    cost_tokens SimpleAggregateFunction(sum, Int64),
    latency_ms_sum SimpleAggregateFunction(sum, Int64),
    latency_ms_quantiles AggregateFunction(quantiles(0.5, 0.95, 0.99), Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (node, node_version, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.node_metrics_1m_mv
TO $database.node_metrics_1m
AS SELECT
    node,
    node_version,
    toStartOfMinute(start) AS minute,
    count() AS attempts,
    countIf(status IN ('error', 'timeout')) AS failures,
    countIf(cache_hit) AS cache_hits,
    countIf(retry_count > 0) AS retried,
    toInt64(sum(ifNull(cost_tokens, 0))) AS cost_tokens,
    toInt64(sum(latency_ms)) AS latency_ms_sum,
    quantilesState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms_quantiles
FROM $database.traces
GROUP BY node, node_version, minute;

CREATE TABLE IF NOT EXISTS $database.workflow_metrics_1m
(
    workflow_id LowCardinality(String),
    workflow_version Int32,
    minute DateTime('UTC'),
    attempts SimpleAggregateFunction(sum, UInt64),
    failures SimpleAggregateFunction(sum, UInt64),
    cache_hits SimpleAggregateFunction(sum, UInt64),
    cost_tokens SimpleAggregateFunction(sum, Int64),
    runs AggregateFunction(uniq, String),
    failed_runs AggregateFunction(uniqIf, String, UInt8),
    latency_ms_quantiles AggregateFunction(quantiles(0.5, 0.95, 0.99), Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (workflow_id, workflow_version, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.workflow_metrics_1m_mv
TO $database.workflow_metrics_1m
AS SELECT
    workflow_id,
    workflow_version,
    toStartOfMinute(start) AS minute,
    count() AS attempts,
    countIf(status IN ('error', 'timeout')) AS failures,
    countIf(cache_hit) AS cache_hits,
    toInt64(sum(ifNull(cost_tokens, 0))) AS cost_tokens,
    uniqState(run_id) AS runs,
    uniqIfState(run_id, toUInt8(status IN ('error', 'timeout'))) AS failed_runs,
    quantilesState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms_quantiles
FROM $database.traces
GROUP BY workflow_id, workflow_version, minute;
