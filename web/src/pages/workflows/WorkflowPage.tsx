// A workflow: its versions (newest first), the graph of one version (?version=N, default the
// latest), links to edit, to start a run and to compare two versions.

import { useEffect, useState, type FormEvent } from "react";
import { Link, useNavigate, useParams, useSearchParams } from "react-router-dom";

import { ApiError } from "../../api/errors";
import { useApi } from "../../api/useApi";
import { WorkflowGraph } from "../../components/graph/WorkflowGraph";
import { ErrorBox, Loading } from "../../components/States";
import { graphSteps, shortTime, type WorkflowVersion } from "./definition";

interface Versions {
  workflow_id: string;
  data: WorkflowVersion[];
  count: number;
}

/** How often to look again while a version just saved is not in the read model yet. */
const CATCH_UP_MS = 400;

export function WorkflowPage() {
  const { workflowId = "" } = useParams();
  const [search] = useSearchParams();
  const wanted = Number(search.get("version")) || null;
  const path = `/v1/workflows/${encodeURIComponent(workflowId)}/versions`;
  const { data, error, loading, reload } = useApi<Versions>(path);
  const versions = data?.data ?? [];
  const latest = versions.length ? versions[versions.length - 1].version : null;
  // A new workflow is a 404 until its first version is projected.
  const notYet = error instanceof ApiError && error.status === 404;
  const pending =
    wanted !== null && ((data !== undefined && !versions.some((v) => v.version === wanted)) || notYet);
  const shown = versions.find((v) => v.version === (pending ? latest : (wanted ?? latest)));

  // A version saved a moment ago reaches the read model after the projector applies it.
  useEffect(() => {
    if (!pending || loading) return;
    const timer = window.setTimeout(reload, CATCH_UP_MS);
    return () => window.clearTimeout(timer);
  }, [pending, loading, reload]);

  return (
    <section aria-labelledby="workflow-title">
      <p className="crumbs">
        <Link to="/workflows">Workflows</Link> /
      </p>
      <div className="page-head">
        <h1 id="workflow-title">{workflowId}</h1>
        {shown && (
          <div className="actions">
            <Link
              className="button primary"
              to={`/runs/new?workflow=${encodeURIComponent(workflowId)}&version=${shown.version}`}
            >
              Start run
            </Link>
            <Link className="button" to={`/workflows/${encodeURIComponent(workflowId)}/edit?from=${shown.version}`}>
              Edit
            </Link>
          </div>
        )}
      </div>
      {error && !(pending && notYet) && <ErrorBox error={error} title="Could not load the workflow" />}
      {loading && !data && <Loading what="versions" />}
      {pending && (
        <p className="state loading" role="status">
          Version {wanted} is being registered…
        </p>
      )}
      {data && (
        <div className="workflow-layout">
          <div className="versions-panel">
            <h2>Versions</h2>
            <ul className="versions" aria-label="Versions">
              {[...versions].reverse().map((v) => (
                <li key={v.version} className={v.version === shown?.version ? "current" : ""}>
                  <Link
                    to={`?version=${v.version}`}
                    aria-current={v.version === shown?.version ? "page" : undefined}
                  >
                    v{v.version}
                  </Link>{" "}
                  <time dateTime={v.registered_at}>{shortTime(v.registered_at)}</time>
                  {v.registered_by && <small> by {v.registered_by}</small>}
                </li>
              ))}
            </ul>
            {versions.length > 1 && <CompareForm workflowId={workflowId} versions={versions} />}
          </div>
          {shown && (
            <div className="graph-panel">
              <h2>Graph of v{shown.version}</h2>
              <WorkflowGraph steps={graphSteps(shown.definition)} label={`graph of version ${shown.version}`} />
              <Inputs definition={shown.definition} />
            </div>
          )}
        </div>
      )}
    </section>
  );
}

function Inputs({ definition }: { definition: WorkflowVersion["definition"] }) {
  const inputs = Object.entries(definition.inputs ?? {}) as [string, { type?: string; required?: boolean }][];
  if (!inputs.length) return null;
  return (
    <>
      <h3>Inputs</h3>
      <ul className="inputs">
        {inputs.map(([name, spec]) => (
          <li key={name}>
            <code>{name}</code> {spec.type}
            {spec.required ? " (required)" : ""}
          </li>
        ))}
      </ul>
    </>
  );
}

function CompareForm({ workflowId, versions }: { workflowId: string; versions: WorkflowVersion[] }) {
  const navigate = useNavigate();
  const numbers = versions.map((v) => v.version);
  const [from, setFrom] = useState(numbers[numbers.length - 2]);
  const [to, setTo] = useState(numbers[numbers.length - 1]);
  function submit(event: FormEvent) {
    event.preventDefault();
    navigate(`/workflows/${encodeURIComponent(workflowId)}/diff?from=${from}&to=${to}`);
  }
  return (
    <form className="compare" onSubmit={submit} aria-label="Compare versions">
      <label>
        From{" "}
        <select value={from} onChange={(e) => setFrom(Number(e.target.value))}>
          {numbers.map((n) => (
            <option key={n} value={n}>
              v{n}
            </option>
          ))}
        </select>
      </label>
      <label>
        To{" "}
        <select value={to} onChange={(e) => setTo(Number(e.target.value))}>
          {numbers.map((n) => (
            <option key={n} value={n}>
              v{n}
            </option>
          ))}
        </select>
      </label>
      <button type="submit">Compare</button>
    </form>
  );
}
