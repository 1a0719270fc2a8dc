-- Retry decisions (docs/decisions/0020-retry-budget-and-circuit.md). The scheduler writes one
-- trace per StepRetryScheduled, marked context['kind'] = 'retry' (status 'skipped', start = the
-- decision, end = when the retry goes), with the retry gate's answer in context (reason,
-- circuit, dependency) and metrics (backoff_ms, held_ms). They are decisions, not attempts:
-- the attempt rollups leave them out, and retry_metrics_1m counts them per node, dependency
-- and minute. Apply before schedulers that write them (readers before writers): a retry trace
-- ingested before this migration is counted as an attempt by the old rollup views.
CREATE TABLE IF NOT EXISTS $database.retry_metrics_1m
(
    node LowCardinality(String),
    dependency String,
    minute DateTime('UTC'),
    retries SimpleAggregateFunction(sum, UInt64),
    held SimpleAggregateFunction(sum, UInt64),
    held_by_budget SimpleAggregateFunction(sum, UInt64),
    held_by_circuit SimpleAggregateFunction(sum, UInt64),
    held_ms_sum SimpleAggregateFunction(sum, Int64),
    held_ms_max SimpleAggregateFunction(max, Int64),
    circuit_open SimpleAggregateFunction(sum, UInt64),
    last_circuit AggregateFunction(argMax, String, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (node, dependency, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.retry_metrics_1m_mv
TO $database.retry_metrics_1m
AS SELECT
    node,
    context['dependency'] AS dependency,
    toStartOfMinute(start) AS minute,
    count() AS retries,
    countIf(context['reason'] != 'backoff') AS held,
    countIf(context['reason'] = 'budget') AS held_by_budget,
    countIf(context['reason'] IN ('circuit_open', 'half_open')) AS held_by_circuit,
    toInt64(sum(toInt64(metrics['held_ms']))) AS held_ms_sum,
    toInt64(max(toInt64(metrics['held_ms']))) AS held_ms_max,
    countIf(context['circuit'] != 'closed') AS circuit_open,
    argMaxState(context['circuit'], start) AS last_circuit
FROM $database.traces
WHERE context['kind'] = 'retry'
GROUP BY node, dependency, minute;

-- The attempt rollups (002) without the retry decisions. MODIFY QUERY swaps a view's query in
-- place: no insert between two statements can miss a rollup or be counted twice.
ALTER TABLE $database.node_metrics_1m_mv MODIFY QUERY
SELECT
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
WHERE context['kind'] != 'retry'
GROUP BY node, node_version, minute;

ALTER TABLE $database.workflow_metrics_1m_mv MODIFY QUERY
SELECT
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
WHERE context['kind'] != 'retry'
GROUP BY workflow_id, workflow_version, minute;
