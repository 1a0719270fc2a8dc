// /ui/runs: runs newest first, filtered by workflow, status, source and start time (all in the
// query string, so a filtered list is a link). Refreshed every 2 s while the tab is visible:
// the API has no list stream, and a hidden tab should not poll.

import { useEffect, useState } from "react";
import { Link, useNavigate, useSearchParams } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { localToIso, StatusBadge, took, when } from "./format";
import { RUN_STATUSES, type RunsPage } from "./types";

const POLL_MS = 2000;
const PAGE = 50;
const SOURCES = ["api", "webhook", "schedule", "parent"];

interface WorkflowsList {
  data: { workflow_id: string }[];
}

function useVisiblePolling(reload: () => void, ms: number) {
  useEffect(() => {
    let timer = 0;
    const arm = () => {
      window.clearInterval(timer);
      if (!document.hidden) timer = window.setInterval(reload, ms);
    };
    const onVisibility = () => {
      if (!document.hidden) reload(); // catch up at once when the tab comes back
      arm();
    };
    arm();
    document.addEventListener("visibilitychange", onVisibility);
    return () => {
      window.clearInterval(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    };
  }, [reload, ms]);
}

export function RunsList() {
  const [params, setParams] = useSearchParams();
  const navigate = useNavigate();
  const workflow = params.get("workflow") ?? "";
  const status = params.get("status") ?? "";
  const source = params.get("source") ?? "";
  const from = params.get("from") ?? "";
  const to = params.get("to") ?? "";
  const [limit, setLimit] = useState(PAGE);
  const workflows = useApi<WorkflowsList>("/v1/workflows");
  const runs = useApi<RunsPage>("/v1/runs", {
    workflow_id: workflow,
    status,
    source,
    started_after: localToIso(from),
    started_before: localToIso(to),
    limit,
  });
  useVisiblePolling(runs.reload, POLL_MS);

  const set = (name: string, value: string) => {
    const next = new URLSearchParams(params);
    if (value) next.set(name, value);
    else next.delete(name);
    setParams(next, { replace: true });
    setLimit(PAGE);
  };

  return (
    <section className="runs-list" aria-labelledby="runs-title">
      <div className="page-head">
        <h1 id="runs-title">Runs</h1>
        <Link className="button primary" to="/runs/new">
          Start a run
        </Link>
      </div>
      <form className="filters" role="search" aria-label="Filter runs" onSubmit={(e) => e.preventDefault()}>
        <label>
          Workflow
          <select value={workflow} onChange={(e) => set("workflow", e.target.value)}>
            <option value="">all</option>
            {workflow && !workflows.data?.data.some((w) => w.workflow_id === workflow) && <option value={workflow}>{workflow}</option>}
            {workflows.data?.data.map((w) => (
              <option key={w.workflow_id} value={w.workflow_id}>
                {w.workflow_id}
              </option>
            ))}
          </select>
        </label>
        <label>
          Status
          <select value={status} onChange={(e) => set("status", e.target.value)}>
            <option value="">all</option>
            {RUN_STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <label>
          Source
          <input list="run-sources" value={source} placeholder="any" size={10} onChange={(e) => set("source", e.target.value.trim())} />
          <datalist id="run-sources">
            {SOURCES.map((s) => (
              <option key={s} value={s} />
            ))}
          </datalist>
        </label>
        <label>
          Started from
          <input type="datetime-local" value={from} onChange={(e) => set("from", e.target.value)} />
        </label>
        <label>
          to
          <input type="datetime-local" value={to} onChange={(e) => set("to", e.target.value)} />
        </label>
        {(workflow || status || source || from || to) && (
          <button type="button" className="link" onClick={() => setParams(new URLSearchParams(), { replace: true })}>
            Clear filters
          </button>
        )}
      </form>
      {runs.error && <ErrorBox error={runs.error} title="Could not list runs" />}
      {!runs.data && !runs.error && <Loading what="runs" />}
      {runs.data && runs.data.data.length === 0 && <Empty>No runs match these filters.</Empty>}
      {runs.data && runs.data.data.length > 0 && (
        <div className="table-wrap">
          <table className="list runs-table" aria-label="Runs">
            <thead>
              <tr>
                <th scope="col">Run</th>
                <th scope="col">Workflow</th>
                <th scope="col">Status</th>
                <th scope="col">Source</th>
                <th scope="col">Started</th>
                <th scope="col">Duration</th>
              </tr>
            </thead>
            <tbody>
              {runs.data.data.map((run) => (
                <tr key={run.run_id} className="clickable" onClick={() => navigate(`/runs/${encodeURIComponent(run.run_id)}`)}>
                  <td>
                    <Link to={`/runs/${encodeURIComponent(run.run_id)}`} onClick={(e) => e.stopPropagation()}>
                      <code>{run.run_id}</code>
                    </Link>
                  </td>
                  <td>
                    {run.workflow_id}@{run.workflow_version}
                  </td>
                  <td>
                    <StatusBadge status={run.status} />
                  </td>
                  <td>{run.source}</td>
                  <td>{when(run.started_at)}</td>
                  <td>{took(run.started_at, run.finished_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {runs.data.next_cursor && (
            <button type="button" onClick={() => setLimit((l) => Math.min(l + PAGE, 1000))}>
              Show more
            </button>
          )}
        </div>
      )}
    </section>
  );
}
