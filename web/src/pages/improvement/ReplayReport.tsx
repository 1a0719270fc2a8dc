// The proposal's A/B replay (docs/replay.md): the newest replay of its definition
// (GET /v1/replays?mutation_id=), its progress over SSE while it runs, then the report:
// outcomes, success rate, latency and cost of the recorded runs (baseline) vs the candidate.

import { useEffect, useState } from "react";

import { streamEvents } from "../../api/client";
import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { ms, num, pct, record, when } from "./format";
import type { Listed, Replay } from "./types";

export function ReplaySection({ mutationId, pending }: { mutationId: string; pending: unknown }) {
  const list = useApi<Listed<Replay>>("/v1/replays", { mutation_id: mutationId, limit: 5 });
  const newest = list.data?.data[0];
  return (
    <section aria-labelledby="replay-title">
      <h2 id="replay-title">Replay report</h2>
      {list.loading && !list.data && <Loading what="replays" />}
      {list.error && <ErrorBox error={list.error} />}
      {list.data && !newest && (
        <Empty>
          {pending
            ? "The validation is waiting for its replay."
            : "No A/B replay of this proposal (validated on the static checks, or not replayed yet)."}
        </Empty>
      )}
      {newest && <ReplayDetail replayId={newest.replay_id} onEnded={list.reload} />}
    </section>
  );
}

function ReplayDetail({ replayId, onEnded }: { replayId: string; onEnded: () => void }) {
  const replay = useApi<Replay>(`/v1/replays/${encodeURIComponent(replayId)}`, { include_runs: false });
  const [progress, setProgress] = useState<{ done: number; total: number | null }>();
  const running = replay.data && !["completed", "failed"].includes(replay.data.status);

  useEffect(() => {
    if (!running) return;
    const abort = new AbortController();
    streamEvents(
      `/v1/replays/${encodeURIComponent(replayId)}/events`,
      (event) => {
        const data = JSON.parse(event.data) as { done: number; total: number | null };
        if (event.event === "progress") setProgress(data);
        else {
          replay.reload();
          onEnded();
        }
      },
      abort.signal,
    ).catch(() => undefined); // a dropped stream leaves the last state; reload shows the rest
    return () => abort.abort();
  }, [replayId, running]);

  if (replay.error) return <ErrorBox error={replay.error} />;
  if (!replay.data) return <Loading what="replay" />;
  const r = replay.data;
  const report = record(r.report);
  const comparison = record(report.comparison);
  const success = record(comparison.success);
  const latency = record(report.latency_ms);
  const work = record(report.executed_steps_ms);
  const cost = record(report.cost);
  const outcomes = record(report.outcomes);
  return (
    <div className="replay">
      <dl className="facts">
        <dt>Replay</dt>
        <dd>
          <code>{r.replay_id}</code>
        </dd>
        <dt>Status</dt>
        <dd>
          <span className={`badge status-${r.status}`}>{r.status}</span>
          {running && (
            <progress
              aria-label="replay progress"
              value={progress?.done ?? r.done}
              max={(progress?.total ?? r.total) || 1}
            />
          )}
        </dd>
        <dt>Verdict</dt>
        <dd>
          <strong className={`verdict verdict-${r.verdict ?? "none"}`} aria-label="replay verdict">{r.verdict ?? "—"}</strong>
          {typeof comparison.reason === "string" && <span className="muted"> {comparison.reason}</span>}
        </dd>
        <dt>Runs</dt>
        <dd>
          {num(report.runs)} replayed{r.finished_at ? `, finished ${when(r.finished_at)}` : ""}
        </dd>
        {r.error && (
          <>
            <dt>Error</dt>
            <dd className="fail">{r.error}</dd>
          </>
        )}
      </dl>
      {Object.keys(outcomes).length > 0 && (
        <p className="outcomes">
          {Object.entries(outcomes).map(([name, count]) => (
            <span key={name} className={`outcome outcome-${name}`}>
              {name.replace("_", " ")}: <strong>{num(count)}</strong>
            </span>
          ))}
        </p>
      )}
      {r.report && (
        <div className="table-wrap">
          <table className="list compare" aria-label="replay comparison">
            <thead>
              <tr>
                <th scope="col">Measure</th>
                <th scope="col">Baseline (recorded)</th>
                <th scope="col">Candidate</th>
              </tr>
            </thead>
            <tbody>
              <tr>
                <th scope="row">Success rate</th>
                <td>{pct(success.original_rate)}</td>
                <td>{pct(success.candidate_rate)}</td>
              </tr>
              <tr>
                <th scope="row">Latency p50 / p95 (end to end)</th>
                <td>
                  {ms(record(latency.original).p50)} / {ms(record(latency.original).p95)}
                </td>
                <td>
                  {ms(record(latency.candidate).p50)} / {ms(record(latency.candidate).p95)}
                </td>
              </tr>
              <tr>
                <th scope="row">Re-executed steps p50 (what is judged)</th>
                <td>{ms(record(work.original).p50)}</td>
                <td>{ms(record(work.candidate).p50)}</td>
              </tr>
              <tr>
                <th scope="row">Cost (LLM tokens / calls)</th>
                <td>
                  {num(record(cost.original).tokens)} / {num(record(cost.original).calls)}
                </td>
                <td>
                  {num(record(cost.candidate).tokens)} / {num(record(cost.candidate).calls)}
                </td>
              </tr>
            </tbody>
          </table>
        </div>
      )}
      {typeof success.fisher_p === "number" && (
        <p className="muted">
          Success difference {pct(success.difference)} (CI {pct(success.ci_low)} … {pct(success.ci_high)}, Fisher p=
          {num(success.fisher_p)}) at confidence {num(comparison.confidence)}.
        </p>
      )}
    </div>
  );
}
