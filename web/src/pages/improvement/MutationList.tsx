// Mutation proposals, newest first, filtered by workflow and status (in the query string).

import { Link } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { FilterBar, SelectFilter, TextFilter, useFilter, WorkflowFilter } from "./Filters";
import { pct, when } from "./format";
import { MUTATION_STATUSES, type Listed, type Mutation } from "./types";

export function MutationList() {
  const [params, set] = useFilter();
  const query = {
    workflow_id: params.get("workflow_id"),
    status: params.get("status"),
    author: params.get("author"),
    limit: 200,
  };
  const list = useApi<Listed<Mutation>>("/v1/mutations", query);
  return (
    <section aria-labelledby="proposals-title">
      <h1 id="proposals-title">Mutation proposals</h1>
      <FilterBar>
        <WorkflowFilter params={params} set={set} />
        <SelectFilter label="Status" name="status" options={MUTATION_STATUSES} params={params} set={set} />
        <TextFilter label="Author" name="author" placeholder="optimizer or user:<name>" params={params} set={set} />
      </FilterBar>
      {list.error && <ErrorBox error={list.error} />}
      {list.loading && !list.data && <Loading what="proposals" />}
      {list.data && list.data.count === 0 && (
        <Empty>No proposal matches. The optimizer proposes changes when the critic finds something; people propose with <code>reflux mutations propose</code>.</Empty>
      )}
      {list.data && list.data.count > 0 && (
        <div className="table-wrap">
          <table className="list" aria-label="proposals">
            <thead>
              <tr>
                <th scope="col">Proposal</th>
                <th scope="col">Workflow</th>
                <th scope="col">Status</th>
                <th scope="col">Versions</th>
                <th scope="col">Canary</th>
                <th scope="col">Author</th>
                <th scope="col">Created</th>
                <th scope="col">Rationale</th>
              </tr>
            </thead>
            <tbody>
              {list.data.data.map((m) => (
                <tr key={m.mutation_id}>
                  <td>
                    <Link to={`/improvement/mutations/${encodeURIComponent(m.mutation_id)}`}>
                      <code>{m.mutation_id}</code>
                    </Link>
                  </td>
                  <td>
                    <Link to={`/improvement/workflows/${encodeURIComponent(m.workflow_id)}`}>{m.workflow_id}</Link>
                  </td>
                  <td>
                    <span className={`badge status-${m.status}`}>{m.status.replace("_", " ")}</span>
                  </td>
                  <td>
                    v{m.base_version}
                    {m.applied_version !== null && ` → v${m.applied_version}`}
                  </td>
                  <td>{m.canary_weight === null ? "—" : pct(m.canary_weight)}</td>
                  <td>{m.author}</td>
                  <td>{when(m.created_at)}</td>
                  <td className="wrap clip">{m.rationale}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
