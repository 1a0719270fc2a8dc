// The critic's diagnoses as the historian stored them, newest first; filters (workflow, kind,
// severity, since) in the query string.

import { Link } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { FilterBar, SelectFilter, useFilter, WorkflowFilter } from "./Filters";
import { idPath, when } from "./format";
import { DIAGNOSIS_KINDS, SEVERITIES, type Diagnosis, type Listed } from "./types";

const SINCE: Record<string, number> = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

export function DiagnosisList() {
  const [params, set] = useFilter();
  const span = params.get("since");
  // The API takes an instant; the link keeps the relative window, so it stays meaningful.
  const since = span && SINCE[span] ? new Date(Date.now() - SINCE[span]).toISOString() : span;
  const list = useApi<Listed<Diagnosis>>("/v1/diagnoses", {
    workflow_id: params.get("workflow_id"),
    kind: params.get("kind"),
    severity: params.get("severity"),
    since,
    limit: 200,
  });
  return (
    <section aria-labelledby="diagnoses-title">
      <h1 id="diagnoses-title">Diagnoses</h1>
      <FilterBar>
        <WorkflowFilter params={params} set={set} />
        <SelectFilter label="Kind" name="kind" options={DIAGNOSIS_KINDS} params={params} set={set} />
        <SelectFilter label="Severity" name="severity" options={SEVERITIES} params={params} set={set} />
        <SelectFilter label="Detected in the last" name="since" options={Object.keys(SINCE)} params={params} set={set} any="any time" />
      </FilterBar>
      {list.error && <ErrorBox error={list.error} />}
      {list.loading && !list.data && <Loading what="diagnoses" />}
      {list.data && list.data.count === 0 && (
        <Empty>No diagnosis matches. The critic publishes them and the historian stores them (both run in <code>reflux dev</code>).</Empty>
      )}
      {list.data && list.data.count > 0 && (
        <div className="table-wrap">
          <table className="list" aria-label="diagnoses">
            <thead>
              <tr>
                <th scope="col">Detected</th>
                <th scope="col">Severity</th>
                <th scope="col">Kind</th>
                <th scope="col">Subject</th>
                <th scope="col">Explanation</th>
                <th scope="col">Traces</th>
              </tr>
            </thead>
            <tbody>
              {list.data.data.map((d) => (
                <tr key={d.diagnosis_id}>
                  <td>
                    <Link to={`/improvement/diagnoses/${idPath(d.diagnosis_id)}`} aria-label={`diagnosis ${d.diagnosis_id}`}>
                      {when(d.detected_at)}
                    </Link>
                  </td>
                  <td>
                    <span className={`badge severity-${d.severity}`}>{d.severity}</span>
                  </td>
                  <td>{d.kind.replace(/_/g, " ")}</td>
                  <td>
                    <code>{d.subject}</code>
                  </td>
                  <td className="wrap clip">{d.explanation}</td>
                  <td>{d.traces_seen}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
