-- The quality signal (docs/decisions/0035-quality-signal-on-traces.md). A trace carries a
-- quality score in [0, 1] as metrics['quality_score']: the attempt of a checker step, or a
-- feedback on a run (context['kind'] = 'feedback', status 'skipped', node 'feedback'). Feedback
-- is not an attempt: the attempt rollups leave it out, like the retry decisions (004).
-- quality_metrics_1m sums the scores per workflow version, step, source and minute. Apply before
-- the API and schedulers that write them (readers before writers).
CREATE TABLE IF NOT EXISTS $database.quality_metrics_1m
(
    workflow_id LowCardinality(String),
    workflow_version Int32,
    step_id String,
    source LowCardinality(String),
    minute DateTime('UTC'),
    scores SimpleAggregateFunction(sum, UInt64),
    score_sum SimpleAggregateFunction(sum, Float64),
    score_min SimpleAggregateFunction(min, Float64),
    score_max SimpleAggregateFunction(max, Float64),
    runs AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (workflow_id, workflow_version, step_id, source, minute);

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.quality_metrics_1m_mv
TO $database.quality_metrics_1m
AS SELECT
    workflow_id,
    workflow_version,
    step_id,
    if(context['kind'] = 'feedback', 'feedback', 'checker') AS source,
    toStartOfMinute(start) AS minute,
    count() AS scores,
    sum(metrics['quality_score']) AS score_sum,
    min(metrics['quality_score']) AS score_min,
    max(metrics['quality_score']) AS score_max,
    uniqState(run_id) AS runs
FROM $database.traces
WHERE mapContains(metrics, 'quality_score')
GROUP BY workflow_id, workflow_version, step_id, source, minute;

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
WHERE context['kind'] NOT IN ('retry', 'feedback')
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
WHERE context['kind'] NOT IN ('retry', 'feedback')
GROUP BY workflow_id, workflow_version, minute;
