import { Link } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { shortTime, type Page, type WorkflowSummary } from "./definition";

export function WorkflowList() {
  const { data, error, loading } = useApi<Page<WorkflowSummary>>("/v1/workflows");
  return (
    <section className="workflows" aria-labelledby="workflows-title">
      <div className="page-head">
        <h1 id="workflows-title">Workflows</h1>
        <Link className="button primary" to="/workflows/new">
          New workflow
        </Link>
      </div>
      {error && <ErrorBox error={error} title="Could not list workflows" />}
      {loading && !data && <Loading what="workflows" />}
      {data && data.count === 0 && (
        <Empty>
          No workflows yet. <Link to="/workflows/new">Write one</Link> or register and run a file with{" "}
          <code>reflux run FILE</code>.
        </Empty>
      )}
      {data && data.count > 0 && (
        <div className="table-wrap">
          <table className="list" aria-label="Workflows">
            <thead>
              <tr>
                <th scope="col">Workflow</th>
                <th scope="col">Latest version</th>
                <th scope="col">Versions</th>
                <th scope="col">Updated</th>
                <th scope="col">By</th>
              </tr>
            </thead>
            <tbody>
              {data.data.map((w) => (
                <tr key={w.workflow_id}>
                  <td>
                    <Link to={`/workflows/${encodeURIComponent(w.workflow_id)}`}>{w.workflow_id}</Link>
                  </td>
                  <td>v{w.latest_version}</td>
                  <td>{w.version_count}</td>
                  <td>
                    <time dateTime={w.registered_at}>{shortTime(w.registered_at)}</time>
                  </td>
                  <td>{w.registered_by ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
