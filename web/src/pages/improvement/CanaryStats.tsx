// Canary statistics of an applied proposal: the traffic share, the runs of each arm since the
// apply (GET /v1/mutations/{id} `effect`: baseline = the previous version, canary = the applied
// one), and the canary judge's evidence once it decided (`report.canary`, docs/learning.md).

import { Empty } from "../../components/States";
import { ms, num, pct, record, when } from "./format";
import type { MutationDetail, VersionEffect } from "./types";

export function CanaryStats({ mutation }: { mutation: MutationDetail }) {
  const canary = record(record(mutation.report).canary);
  const reweights = mutation.history.filter((e) => e.status === "applied");
  const effect = mutation.effect ?? [];
  const arm = (version: number | null): VersionEffect | undefined =>
    effect.find((e) => e.version === version);
  const baseline = arm(mutation.previous_version ?? mutation.base_version);
  const candidate = arm(mutation.applied_version);
  return (
    <section aria-labelledby="canary-title">
      <h2 id="canary-title">Canary</h2>
      {mutation.applied_version === null ? (
        <Empty>Not applied: no canary yet.</Empty>
      ) : (
        <>
          <dl className="facts">
            <dt>Traffic share</dt>
            <dd>
              {pct(mutation.status === "kept" ? 1 : mutation.status === "rolled_back" ? 0 : mutation.canary_weight)}{" "}
              of new runs on v{mutation.applied_version}
              {mutation.status === "applied" ? "" : ` (was ${pct(mutation.canary_weight)} during the canary)`}
              {reweights.length > 1 && ` · reweighted ${reweights.length - 1}×`}
            </dd>
            <dt>Decision</dt>
            <dd>
              {mutation.status === "applied"
                ? "running"
                : typeof canary.decision === "string"
                  ? `${canary.decision} by the canary judge`
                  : `${mutation.status.replace("_", " ")} by a person`}
              {typeof canary.reason === "string" && <span className="muted"> — {canary.reason}</span>}
            </dd>
          </dl>
          <div className="table-wrap">
            <table className="list compare" aria-label="canary arms">
              <thead>
                <tr>
                  <th scope="col">Arm</th>
                  <th scope="col">Version</th>
                  <th scope="col">Runs</th>
                  <th scope="col">Succeeded</th>
                  <th scope="col">Failed</th>
                  <th scope="col">Running</th>
                  <th scope="col">Success rate</th>
                  <th scope="col">p50</th>
                  <th scope="col">p95</th>
                </tr>
              </thead>
              <tbody>
                {(
                  [
                    ["Baseline", mutation.previous_version ?? mutation.base_version, baseline],
                    ["Canary", mutation.applied_version, candidate],
                  ] as const
                ).map(([name, version, e]) => (
                  <tr key={name}>
                    <th scope="row">{name}</th>
                    <td>v{version}</td>
                    <td>{num(e?.runs ?? 0)}</td>
                    <td>{num(e?.succeeded ?? 0)}</td>
                    <td>{num(e?.failed ?? 0)}</td>
                    <td>{num(e?.running ?? 0)}</td>
                    <td>{pct(e?.success_rate)}</td>
                    <td>{ms(e?.p50_ms)}</td>
                    <td>{ms(e?.p95_ms)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <p className="muted">Runs started since the apply, from the runs read model.</p>
          {Object.keys(canary).length > 0 && <JudgeEvidence canary={canary} />}
        </>
      )}
    </section>
  );
}

function JudgeEvidence({ canary }: { canary: Record<string, unknown> }) {
  const metrics = record(record(canary.statistics).metrics);
  return (
    <div className="judge">
      <h3>The judge's statistics</h3>
      <p className="muted">
        {num(canary.canary_runs)} canary and {num(canary.baseline_runs)} baseline runs; decided{" "}
        {when(typeof canary.decided_at === "string" ? canary.decided_at : null)}.
      </p>
      {Object.keys(metrics).length > 0 && (
        <div className="table-wrap">
          <table className="list" aria-label="canary tests">
            <thead>
              <tr>
                <th scope="col">Test</th>
                <th scope="col">Regression estimate</th>
                <th scope="col">Always-valid interval</th>
                <th scope="col">p</th>
                <th scope="col">Margin</th>
                <th scope="col">Finding</th>
              </tr>
            </thead>
            <tbody>
              {Object.entries(metrics).map(([name, raw]) => {
                const m = record(raw);
                return (
                  <tr key={name}>
                    <th scope="row">{name}</th>
                    <td>{num(m.regression_estimate)}</td>
                    <td>
                      {num(m.ci_low)} … {num(m.ci_high)}
                    </td>
                    <td>{num(m.always_valid_p)}</td>
                    <td>{num(m.margin)}</td>
                    <td>
                      {m.significant_regression === true
                        ? "significant regression"
                        : m.non_inferior === true
                          ? "non-inferior"
                          : "undecided"}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
