// A node: its versions (status, rollout weight) and, for the whole node or one version
// (?version=), latency percentiles, error rate and cost over the window (?window=), plus the
// node x time reliability heat map of every node, this one highlighted.

import { useEffect, useMemo, useState } from "react";
import { Link, useParams, useSearchParams } from "react-router-dom";

import { apiGet } from "../../api/client";
import { useApi } from "../../api/useApi";
import { HeatMap } from "../../components/charts/HeatMap";
import { TimeSeriesChart, type Line } from "../../components/charts/TimeSeriesChart";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { percent, type NodeVersions } from "./catalog";
import {
  bucketEnds,
  bucketQuery,
  bucketStarts,
  DEFAULT_WINDOW,
  pick,
  WINDOWS,
  type NodeMetrics,
  type NodesMetrics,
  type Reliability,
} from "./metrics";

interface Series {
  times: number[];
  rows: (NodeMetrics | null)[];
}

/** One /v1/metrics/nodes call per bucket (the API aggregates a window; see metrics.ts). */
function useSeries(name: string, version: string | null, windowKey: string, generation: number) {
  const [series, setSeries] = useState<Series>();
  const [error, setError] = useState<Error>();
  useEffect(() => {
    const spec = WINDOWS[windowKey];
    const abort = new AbortController();
    const ends = bucketEnds(Date.now(), spec.minutes, spec.buckets);
    Promise.all(
      ends.map((end) =>
        apiGet<NodesMetrics>(
          "/v1/metrics/nodes",
          { node: name, by_version: version !== null, ...bucketQuery(end, spec.minutes) },
          abort.signal,
        ),
      ),
    )
      .then((answers) => {
        // Plotted at the bucket start, like the heat map's columns.
        setSeries({ times: ends.map((end) => (end - spec.minutes * 60_000) / 1000), rows: answers.map((a) => pick(a, version)) });
        setError(undefined);
      })
      .catch((reason: unknown) => {
        if (!abort.signal.aborted) setError(reason instanceof Error ? reason : new Error(String(reason)));
      });
    return () => abort.abort();
  }, [name, version, windowKey, generation]);
  return { series, error };
}

export function NodePage() {
  const { name = "" } = useParams();
  const [search, setSearch] = useSearchParams();
  const windowKey = WINDOWS[search.get("window") ?? ""] ? search.get("window")! : DEFAULT_WINDOW;
  const version = search.get("version");
  const spec = WINDOWS[windowKey];
  const [generation, setGeneration] = useState(0);

  const versions = useApi<NodeVersions>(`/v1/nodes/${encodeURIComponent(name)}/versions`);
  const summary = useApi<NodesMetrics>("/v1/metrics/nodes", { node: name, by_version: true, window: windowKey });
  const reliability = useApi<Reliability>("/v1/metrics/reliability", { window: windowKey, bucket: spec.bucket });
  const { series, error: seriesError } = useSeries(name, version, windowKey, generation);

  const update = (changes: Record<string, string | null>) => {
    const next = new URLSearchParams(search);
    for (const [key, value] of Object.entries(changes)) {
      if (value) next.set(key, value);
      else next.delete(key);
    }
    setSearch(next);
  };

  const lines = useMemo(() => chartLines(series), [series]);
  const hasData = series?.rows.some((r) => r !== null) ?? false;
  const columns = reliability.data ? bucketStarts(reliability.data.since, reliability.data.until, spec.minutes) : [];

  return (
    <section aria-labelledby="node-title">
      <p className="crumbs">
        <Link to="/nodes">Nodes</Link> /
      </p>
      <div className="page-head">
        <h1 id="node-title">{name}</h1>
        <div className="actions">
          <label>
            Window{" "}
            <select value={windowKey} onChange={(e) => update({ window: e.target.value })}>
              {Object.keys(WINDOWS).map((w) => (
                <option key={w} value={w}>
                  {w}
                </option>
              ))}
            </select>
          </label>
          <label>
            Version{" "}
            <select value={version ?? ""} onChange={(e) => update({ version: e.target.value || null })}>
              <option value="">all versions</option>
              {versions.data?.data.map((v) => (
                <option key={v.version} value={v.version}>
                  {v.version}
                </option>
              ))}
            </select>
          </label>
          <button
            type="button"
            onClick={() => {
              setGeneration((g) => g + 1);
              summary.reload();
              reliability.reload();
            }}
          >
            Refresh
          </button>
        </div>
      </div>

      <h2>Versions</h2>
      {versions.error && <ErrorBox error={versions.error} title="Could not load the versions" />}
      {versions.loading && !versions.data && <Loading what="versions" />}
      {versions.data && (
        <VersionTable versions={versions.data} metrics={summary.data?.data ?? []} window={windowKey} />
      )}
      {summary.error && !seriesError && <ErrorBox error={summary.error} title="Metrics unavailable" />}

      <h2>Over the last {windowKey}{version ? ` (version ${version})` : ""}</h2>
      {seriesError && <ErrorBox error={seriesError} title="Metrics unavailable" />}
      {!series && !seriesError && <Loading what="metrics" />}
      {series && !hasData && (
        <Empty>No attempts of {name}{version ? ` ${version}` : ""} in the last {windowKey}.</Empty>
      )}
      {series && hasData && lines && (
        <div className="charts">
          <TimeSeriesChart title="Latency percentiles" unit="ms" times={series.times} lines={lines.latency} />
          <TimeSeriesChart title="Error rate" unit="%" times={series.times} lines={lines.errors} />
          <TimeSeriesChart title="Cost" unit="tokens" times={series.times} lines={lines.cost} />
        </div>
      )}

      <h2>Reliability: nodes × time</h2>
      {reliability.error && <ErrorBox error={reliability.error} title="Heat map unavailable" />}
      {reliability.loading && !reliability.data && <Loading what="heat map" />}
      {reliability.data && reliability.data.cells.length === 0 && (
        <Empty>No attempts of any node in the last {windowKey}.</Empty>
      )}
      {reliability.data && reliability.data.cells.length > 0 && (
        <HeatMap
          rows={reliability.data.nodes}
          columns={columns}
          cells={reliability.data.cells}
          highlight={name}
          label={`Reliability heat map, ${spec.bucket} buckets`}
        />
      )}
    </section>
  );
}

function chartLines(series: Series | undefined): { latency: Line[]; errors: Line[]; cost: Line[] } | null {
  if (!series) return null;
  const values = (read: (row: NodeMetrics) => number) => series.rows.map((row) => (row ? read(row) : null));
  return {
    latency: [
      { label: "p50", values: values((r) => r.latency_ms_p50), color: "--ok" },
      { label: "p95", values: values((r) => r.latency_ms_p95), color: "--warn" },
      { label: "p99", values: values((r) => r.latency_ms_p99), color: "--fail" },
    ],
    errors: [{ label: "error rate", values: values((r) => r.error_rate * 100), color: "--fail" }],
    cost: [{ label: "tokens", values: values((r) => r.cost_tokens), color: "--accent" }],
  };
}

function VersionTable({ versions, metrics, window }: { versions: NodeVersions; metrics: NodeMetrics[]; window: string }) {
  if (versions.count === 0) return <Empty>No versions registered.</Empty>;
  const byVersion = new Map(metrics.map((m) => [m.node_version, m]));
  return (
    <div className="table-wrap">
      <table className="list" aria-label="Versions">
        <thead>
          <tr>
            <th scope="col">Version</th>
            <th scope="col">Status</th>
            <th scope="col">Rollout weight</th>
            <th scope="col">Attempts ({window})</th>
            <th scope="col">Error rate</th>
            <th scope="col">p50 / p95 / p99 ms</th>
            <th scope="col">Cost (tokens)</th>
          </tr>
        </thead>
        <tbody>
          {[...versions.data].reverse().map((v) => {
            const m = byVersion.get(v.version);
            return (
              <tr key={v.version}>
                <td>
                  <Link to={`?version=${encodeURIComponent(v.version)}&window=${window}`}>{v.version}</Link>
                </td>
                <td>
                  <span className={`badge node-status-${v.status}`}>{v.status}</span>
                </td>
                <td>{v.status === "production" ? percent(v.rollout_weight) : "—"}</td>
                <td>{m?.attempts ?? 0}</td>
                <td>{m ? percent(m.error_rate) : "—"}</td>
                <td>{m ? [m.latency_ms_p50, m.latency_ms_p95, m.latency_ms_p99].map(Math.round).join(" / ") : "—"}</td>
                <td>{m?.cost_tokens ?? "—"}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
