// Two versions of a workflow side by side on one graph: added, removed and changed steps
// marked (WorkflowGraph's change colours), and every changed field listed.

import { Link, useParams, useSearchParams } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { WorkflowGraph } from "../../components/graph/WorkflowGraph";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { diffDefinitions, type WorkflowVersion } from "./definition";

function show(value: unknown): string {
  if (value === undefined) return "—";
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function WorkflowDiff() {
  const { workflowId = "" } = useParams();
  const [search] = useSearchParams();
  const from = Number(search.get("from"));
  const to = Number(search.get("to"));
  const base = `/v1/workflows/${encodeURIComponent(workflowId)}/versions`;
  const valid = from > 0 && to > 0;
  const before = useApi<WorkflowVersion>(valid ? `${base}/${from}` : null);
  const after = useApi<WorkflowVersion>(valid ? `${base}/${to}` : null);
  const diff = before.data && after.data ? diffDefinitions(before.data.definition, after.data.definition) : null;
  const workflowLink = `/workflows/${encodeURIComponent(workflowId)}`;

  return (
    <section aria-labelledby="diff-title">
      <p className="crumbs">
        <Link to="/workflows">Workflows</Link> / <Link to={workflowLink}>{workflowId}</Link> /
      </p>
      <h1 id="diff-title">
        {workflowId}: v{from || "?"} → v{to || "?"}
      </h1>
      {!valid && <Empty>Pick two versions to compare: <code>?from=1&amp;to=2</code>.</Empty>}
      {before.error && <ErrorBox error={before.error} title={`Could not load v${from}`} />}
      {after.error && <ErrorBox error={after.error} title={`Could not load v${to}`} />}
      {valid && (before.loading || after.loading) && !diff && <Loading what="versions" />}
      {diff && (
        <>
          <ul className="diff-summary" aria-label="Summary of changes">
            <li className="added">Added: {diff.added.length ? diff.added.join(", ") : "none"}</li>
            <li className="removed">Removed: {diff.removed.length ? diff.removed.join(", ") : "none"}</li>
            <li className="changed">Changed: {diff.changed.length ? diff.changed.join(", ") : "none"}</li>
          </ul>
          <WorkflowGraph steps={diff.steps} label={`changes from version ${from} to ${to}`} />
          <p className="legend">
            <span className="swatch change-added" /> added <span className="swatch change-removed" /> removed{" "}
            <span className="swatch change-changed" /> changed
          </p>
          <h2>Changed fields</h2>
          {diff.fields.length === 0 ? (
            <Empty>No step changed its fields.</Empty>
          ) : (
            <div className="table-wrap">
              <table className="list diff-fields" aria-label="Changed fields">
                <thead>
                  <tr>
                    <th scope="col">Step</th>
                    <th scope="col">Field</th>
                    <th scope="col">v{from}</th>
                    <th scope="col">v{to}</th>
                  </tr>
                </thead>
                <tbody>
                  {diff.fields.map((f) => (
                    <tr key={`${f.step}.${f.path}`}>
                      <td>{f.step}</td>
                      <td>
                        <code>{f.path}</code>
                      </td>
                      <td className="before">
                        <code>{show(f.before)}</code>
                      </td>
                      <td className="after">
                        <code>{show(f.after)}</code>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </section>
  );
}
