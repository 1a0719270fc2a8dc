// One proposal: its diff drawn on the base version's graph, the evidence (the diagnosis it
// answers), the validation and replay reports, the canary statistics, its history, and the
// decisions the current status allows.

import { useState } from "react";
import { Link, useParams } from "react-router-dom";

import { can, useMe } from "../../api/permissions";
import { useApi } from "../../api/useApi";
import { WorkflowGraph } from "../../components/graph/WorkflowGraph";
import { ErrorBox, Loading } from "../../components/States";
import { CanaryStats } from "./CanaryStats";
import { ConfirmAction } from "./ConfirmAction";
import { allowedActions, definitionSteps, diffSteps, type Action } from "./diff";
import { ACTION_LABEL, diagnosisIdOf, idPath, record, when } from "./format";
import { ReplaySection } from "./ReplayReport";
import type { Diagnosis, MutationDetail, WorkflowVersion } from "./types";

export function MutationPage() {
  const { mutationId = "" } = useParams();
  const mutation = useApi<MutationDetail>(`/v1/mutations/${encodeURIComponent(mutationId)}`);
  const [asking, setAsking] = useState<Action | null>(null);
  const [notice, setNotice] = useState<string>();
  const caller = useMe();

  if (mutation.error && !mutation.data) return <ErrorBox error={mutation.error} title="Proposal not loaded" />;
  if (!mutation.data) return <Loading what="proposal" />;
  const m = mutation.data;
  const possible = allowedActions(m.status);
  const actions = possible.filter((a) => can(caller, `POST /v1/mutations/{mutation_id}/${a}`));

  return (
    <article className="improvement-page">
      <p className="crumbs">
        <Link to="/improvement">Proposals</Link> › <span>{m.mutation_id}</span>
      </p>
      <header className="page-head">
        <h1>
          Proposal <code>{m.mutation_id}</code>
        </h1>
        <span className={`badge status-${m.status}`} aria-label="status" data-status={m.status}>
          {m.status.replace("_", " ")}
        </span>
      </header>
      <dl className="facts">
        <dt>Workflow</dt>
        <dd>
          <Link to={`/improvement/workflows/${encodeURIComponent(m.workflow_id)}`}>{m.workflow_id}</Link> · base v
          {m.base_version}
          {m.applied_version !== null && ` → v${m.applied_version}`}
        </dd>
        <dt>Author</dt>
        <dd>{m.author}</dd>
        <dt>Rationale</dt>
        <dd>{m.rationale}</dd>
        {m.reason && (
          <>
            <dt>Last reason</dt>
            <dd>{m.reason}</dd>
          </>
        )}
        <dt>Updated</dt>
        <dd>{when(m.updated_at)}</dd>
      </dl>

      <div className="decisions" role="group" aria-label="Decisions">
        {actions.map((action) => (
          <button
            key={action}
            className={action === "approve" || action === "keep" ? "primary" : "danger"}
            onClick={() => {
              setNotice(undefined);
              setAsking(action);
            }}
          >
            {ACTION_LABEL[action]}
          </button>
        ))}
        {possible.length === 0 && (
          <span className="muted">No decision left: the proposal is {m.status.replace("_", " ")}.</span>
        )}
        {possible.length > 0 && actions.length === 0 && caller && (
          <span className="muted">
            Your role ({caller.role}) cannot decide on proposals: operators, editors and admins can.
          </span>
        )}
        {mutation.loading && <span className="muted"> refreshing…</span>}
      </div>
      {notice && (
        <p className="notice" role="status">
          {notice}
        </p>
      )}
      {mutation.error && <ErrorBox error={mutation.error} title="Refresh failed" />}
      {asking && (
        <ConfirmAction
          mutation={m}
          action={asking}
          onClose={() => setAsking(null)}
          onDone={(detail) => {
            setAsking(null);
            setNotice(
              detail
                ? `${ACTION_LABEL[asking]}: the proposal is now ${detail.status.replace("_", " ")}.`
                : `${ACTION_LABEL[asking]} accepted; the processor has not answered yet.`,
            );
            mutation.reload();
          }}
        />
      )}

      <DiffSection mutation={m} />
      <EvidenceSection mutation={m} />
      <ValidationSection report={m.report} />
      <ReplaySection mutationId={m.mutation_id} pending={record(m.report).pending} />
      <CanaryStats mutation={m} />
      <HistorySection mutation={m} />
    </article>
  );
}

function DiffSection({ mutation }: { mutation: MutationDetail }) {
  const base = useApi<WorkflowVersion>(
    `/v1/workflows/${encodeURIComponent(mutation.workflow_id)}/versions/${mutation.base_version}`,
  );
  const steps = base.data ? diffSteps(definitionSteps(base.data.definition), mutation.changes) : [];
  return (
    <section aria-labelledby="diff-title">
      <h2 id="diff-title">Diff on v{mutation.base_version}</h2>
      {base.error && <ErrorBox error={base.error} title="Base version not loaded" />}
      {base.loading && !base.data && <Loading what="base version" />}
      {base.data && (
        <>
          <p className="legend" aria-hidden="true">
            <span className="swatch change-added">added</span>
            <span className="swatch change-changed">changed</span>
            <span className="swatch change-removed">removed</span>
          </p>
          <WorkflowGraph steps={steps} height={320} label="proposal diff" />
        </>
      )}
      <div className="table-wrap">
        <table className="list" aria-label="changes">
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">Change</th>
              <th scope="col">Step</th>
              <th scope="col">Data</th>
            </tr>
          </thead>
          <tbody>
            {mutation.changes.map((change, i) => (
              <tr key={i}>
                <td>{i + 1}</td>
                <td>{change.type.replace("_", " ")}</td>
                <td>
                  <code>{change.step_id}</code>
                </td>
                <td className="json">
                  <code>{JSON.stringify(change.data)}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

function EvidenceSection({ mutation }: { mutation: MutationDetail }) {
  const diagnosisId = diagnosisIdOf(mutation.evidence);
  const diagnosis = useApi<Diagnosis>(diagnosisId ? `/v1/diagnoses/${idPath(diagnosisId)}` : null);
  return (
    <section aria-labelledby="evidence-title">
      <h2 id="evidence-title">Evidence</h2>
      {diagnosisId && (
        <div className="answers">
          Answers diagnosis{" "}
          <Link to={`/improvement/diagnoses/${idPath(diagnosisId)}`}>
            <code>{diagnosisId}</code>
          </Link>
          {diagnosis.data && (
            <p>
              <span className={`badge severity-${diagnosis.data.severity}`}>{diagnosis.data.severity}</span>{" "}
              {diagnosis.data.kind}: {diagnosis.data.explanation}
            </p>
          )}
          {diagnosis.error && <ErrorBox error={diagnosis.error} title="Diagnosis not loaded" />}
        </div>
      )}
      {mutation.evidence === null || mutation.evidence === undefined ? (
        <p className="muted">No evidence attached.</p>
      ) : (
        <pre className="json-block">{JSON.stringify(mutation.evidence, null, 2)}</pre>
      )}
    </section>
  );
}

interface Check {
  name?: string;
  passed?: boolean;
  skipped?: string;
  errors?: { path?: string; message?: string }[];
}

function ValidationSection({ report }: { report: unknown }) {
  const r = record(report);
  const checks = (Array.isArray(r.checks) ? r.checks : []) as Check[];
  const notRun = (Array.isArray(r.not_run) ? r.not_run : []) as { name?: string; why?: string }[];
  const pending = (Array.isArray(r.pending) ? r.pending : []) as { name?: string }[];
  return (
    <section aria-labelledby="validation-title">
      <h2 id="validation-title">Validation</h2>
      {checks.length === 0 ? (
        <p className="muted">No validation report yet.</p>
      ) : (
        <ul className="checks">
          {checks.map((check, i) => (
            <li key={i} className={check.passed ? "ok" : "fail"}>
              <strong>{check.name}</strong> {check.passed ? "passed" : check.skipped ? `skipped: ${check.skipped}` : "failed"}
              {check.errors?.map((e, j) => (
                <div key={j}>
                  <code>{e.path}</code>: {e.message}
                </div>
              ))}
            </li>
          ))}
          {pending.map((p, i) => (
            <li key={`p${i}`}>
              <strong>{p.name}</strong> pending
            </li>
          ))}
          {notRun.map((n, i) => (
            <li key={`n${i}`} className="muted">
              <strong>{n.name}</strong> not run{n.why ? `: ${n.why}` : ""}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function HistorySection({ mutation }: { mutation: MutationDetail }) {
  return (
    <section aria-labelledby="history-title">
      <h2 id="history-title">History</h2>
      <div className="table-wrap">
        <table className="list" aria-label="history">
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Status</th>
              <th scope="col">Actor</th>
              <th scope="col">Reason</th>
            </tr>
          </thead>
          <tbody>
            {mutation.history.map((event, i) => (
              <tr key={i}>
                <td>{when(event.occurred_at)}</td>
                <td>{event.status.replace("_", " ")}</td>
                <td>{event.actor ?? "—"}</td>
                <td className="wrap">{event.reason ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
