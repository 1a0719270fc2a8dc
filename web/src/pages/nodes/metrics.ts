// The node metrics the pages draw, from /v1/metrics (api/routes/metrics.py). The API answers one
// aggregate per window; a series over time is one window per bucket (`until` = bucket end).

export interface NodeMetrics {
  node: string;
  node_version: string | null;
  attempts: number;
  failures: number;
  error_rate: number;
  cache_hit_rate: number;
  cost_tokens: number;
  latency_ms_p50: number;
  latency_ms_p95: number;
  latency_ms_p99: number;
}

export interface NodesMetrics {
  window: string;
  since: string;
  until: string;
  data: NodeMetrics[];
}

export interface Reliability {
  since: string;
  until: string;
  bucket: string;
  nodes: string[];
  buckets: string[];
  cells: {
    node: string;
    bucket_start: string;
    attempts: number;
    failures: number;
    error_rate: number;
    latency_ms_p95: number;
  }[];
}

/** The windows the page offers: the window, its bucket (whole minutes) and the bucket count. */
export const WINDOWS: Record<string, { bucket: string; minutes: number; buckets: number }> = {
  "15m": { bucket: "1m", minutes: 1, buckets: 15 },
  "1h": { bucket: "5m", minutes: 5, buckets: 12 },
  "6h": { bucket: "30m", minutes: 30, buckets: 12 },
  "24h": { bucket: "1h", minutes: 60, buckets: 24 },
};
export const DEFAULT_WINDOW = "1h";

/** Bucket ends (ms), ascending, aligned to the epoch like the API's reliability buckets; the
 * last one is the first boundary after `now`. */
export function bucketEnds(now: number, minutes: number, count: number): number[] {
  const width = minutes * 60_000;
  const last = Math.floor(now / width) * width + width;
  return Array.from({ length: count }, (_, i) => last - (count - 1 - i) * width);
}

/**
 * The query for one bucket `[end - minutes, end)`. The API's rollup windows start at the minute
 * that contains `until - window` and include the minute that contains `until`; so `until` is the
 * last millisecond of the bucket and the window one second short of the bucket, or a bucket would
 * also count its neighbour's minute.
 */
export function bucketQuery(end: number, minutes: number): { window: string; until: string } {
  const window = minutes > 1 ? `${minutes - 1}m59s` : "59s";
  return { window, until: new Date(end - 1).toISOString() };
}

/** Every bucket start of a reliability answer's range (the API lists only buckets with data). */
export function bucketStarts(since: string, until: string, minutes: number): string[] {
  const width = minutes * 60_000;
  const first = Math.floor(Date.parse(since) / width) * width;
  const end = Date.parse(until);
  const starts: string[] = [];
  for (let t = first; t < end && starts.length < 1440; t += width) starts.push(new Date(t).toISOString());
  return starts;
}

/** The row for `version` (null: the node as a whole) in one bucket's answer. */
export function pick(answer: NodesMetrics, version: string | null): NodeMetrics | null {
  return answer.data.find((row) => (version === null ? true : row.node_version === version)) ?? null;
}
