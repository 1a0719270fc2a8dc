// /ui/runs/new?workflow=<id>&version=<v>: pick a workflow and version, fill in the inputs the
// version declares, start the run and open its page.

import { useNavigate, useSearchParams } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { StartRunForm } from "../../components/start-run/StartRunForm";
import { Empty, ErrorBox, Loading } from "../../components/States";

interface WorkflowsList {
  data: { workflow_id: string; latest_version: number }[];
}
interface Versions {
  data: { version: number; definition: Record<string, unknown> }[];
}

export function StartRunPage() {
  const [params, setParams] = useSearchParams();
  const navigate = useNavigate();
  const workflow = params.get("workflow") ?? "";
  const workflows = useApi<WorkflowsList>("/v1/workflows");
  const versions = useApi<Versions>(workflow ? `/v1/workflows/${encodeURIComponent(workflow)}/versions` : null);
  const listed = versions.data?.data ?? [];
  const latest = listed.reduce((m, v) => Math.max(m, v.version), 0);
  const version = Number(params.get("version")) || latest;
  const chosen = listed.find((v) => v.version === version);

  const set = (name: string, value: string, reset?: string) => {
    const next = new URLSearchParams(params);
    if (value) next.set(name, value);
    else next.delete(name);
    if (reset) next.delete(reset);
    setParams(next, { replace: true });
  };

  return (
    <section className="start-run-page" aria-labelledby="start-title">
      <h1 id="start-title">Start a run</h1>
      {workflows.error && <ErrorBox error={workflows.error} title="Could not list workflows" />}
      {!workflows.data && !workflows.error && <Loading what="workflows" />}
      {workflows.data && workflows.data.data.length === 0 && <Empty>No workflows are registered yet.</Empty>}
      {workflows.data && workflows.data.data.length > 0 && (
        <div className="filters">
          <label>
            Workflow
            <select value={workflow} onChange={(e) => set("workflow", e.target.value, "version")}>
              <option value="">(choose)</option>
              {workflows.data.data.map((w) => (
                <option key={w.workflow_id} value={w.workflow_id}>
                  {w.workflow_id}
                </option>
              ))}
            </select>
          </label>
          {listed.length > 0 && (
            <label>
              Version
              <select value={version} onChange={(e) => set("version", e.target.value)}>
                {[...listed].sort((a, b) => b.version - a.version).map((v) => (
                  <option key={v.version} value={v.version}>
                    {v.version}
                    {v.version === latest ? " (latest)" : ""}
                  </option>
                ))}
              </select>
            </label>
          )}
        </div>
      )}
      {versions.error && <ErrorBox error={versions.error} title="Could not load the workflow" />}
      {workflow && !versions.data && !versions.error && <Loading what="versions" />}
      {versions.data && !chosen && <Empty>Workflow {workflow} has no version {version}.</Empty>}
      {chosen && (
        <StartRunForm
          workflowId={workflow}
          version={chosen.version}
          definition={chosen.definition}
          onStarted={(runId) => navigate(`/runs/${encodeURIComponent(runId)}`)}
        />
      )}
    </section>
  );
}
