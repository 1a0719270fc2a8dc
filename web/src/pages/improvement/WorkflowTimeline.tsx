// One workflow's applied changes in order, each with its measured effect (the runs of the
// version before and after, since the apply; and the canary judge's figures when it decided),
// and the workflow's improvement policy (GET/PUT /v1/workflows/{id}/improvement).

import { useEffect, useState, type FormEvent } from "react";
import { Link, useParams } from "react-router-dom";

import { apiGet, apiSend } from "../../api/client";
import { can, useMe } from "../../api/permissions";
import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { ms, pct, record, when } from "./format";
import type { Improvement, Listed, Mutation, MutationDetail, VersionEffect } from "./types";

const POLICIES = {
  off: "off — the optimizer's proposals are refused; people may still propose",
  propose: "propose — every validated proposal waits for a person",
  auto: "auto — validated proposals are approved and applied as a canary without a person",
} as const;

type Policy = keyof typeof POLICIES;

/** The first `applied` of a proposal: when its canary started (a reweight adds another). */
function appliedAt(detail: MutationDetail): string {
  return detail.history.find((e) => e.status === "applied")?.occurred_at ?? detail.updated_at;
}

function decidedAt(detail: MutationDetail): string | null {
  return detail.history.find((e) => e.status === "kept" || e.status === "rolled_back")?.occurred_at ?? null;
}

export function WorkflowTimeline() {
  const { workflowId = "" } = useParams();
  const wf = encodeURIComponent(workflowId);
  const proposals = useApi<Listed<Mutation>>("/v1/mutations", { workflow_id: workflowId, limit: 500 });
  const [details, setDetails] = useState<MutationDetail[]>();
  const [error, setError] = useState<Error>();

  // The list has no history or effect: fetch the detail of each applied proposal.
  useEffect(() => {
    if (!proposals.data) return;
    const abort = new AbortController();
    const applied = proposals.data.data.filter((m) => m.applied_version !== null);
    Promise.all(
      applied.map((m) =>
        apiGet<MutationDetail>(`/v1/mutations/${encodeURIComponent(m.mutation_id)}`, undefined, abort.signal),
      ),
    )
      .then((rows) => setDetails(rows.sort((a, b) => appliedAt(a).localeCompare(appliedAt(b)))))
      .catch((reason: unknown) => {
        if (!abort.signal.aborted) setError(reason instanceof Error ? reason : new Error(String(reason)));
      });
    return () => abort.abort();
  }, [proposals.data]);

  const open = proposals.data?.data.filter((m) => m.applied_version === null) ?? [];
  return (
    <article className="improvement-page">
      <p className="crumbs">
        <Link to="/improvement">Proposals</Link> › <span>{workflowId}</span>
      </p>
      <h1>
        Changes to <code>{workflowId}</code>
      </h1>
      <PolicyEditor workflowId={workflowId} />

      <section aria-labelledby="timeline-title">
        <h2 id="timeline-title">Applied changes</h2>
        {(proposals.error || error) && <ErrorBox error={(proposals.error ?? error)!} />}
        {!details && !proposals.error && !error && <Loading what="applied changes" />}
        {details && details.length === 0 && <Empty>No proposal of this workflow was applied yet.</Empty>}
        {details && details.length > 0 && (
          <ol className="timeline" aria-label="applied changes">
            {details.map((d) => (
              <TimelineEntry key={d.mutation_id} detail={d} />
            ))}
          </ol>
        )}
      </section>

      <section aria-labelledby="open-title">
        <h2 id="open-title">Other proposals</h2>
        {open.length === 0 ? (
          <Empty>None.</Empty>
        ) : (
          <ul className="answers-list">
            {open.map((m) => (
              <li key={m.mutation_id}>
                <Link to={`/improvement/mutations/${encodeURIComponent(m.mutation_id)}`}>
                  <code>{m.mutation_id}</code>
                </Link>{" "}
                <span className={`badge status-${m.status}`}>{m.status.replace("_", " ")}</span> {m.rationale}
              </li>
            ))}
          </ul>
        )}
        <p>
          <Link to={`/improvement?workflow_id=${wf}`}>All proposals of {workflowId}</Link> ·{" "}
          <Link to={`/improvement/diagnoses?workflow_id=${wf}`}>its diagnoses</Link>
        </p>
      </section>
    </article>
  );
}

function TimelineEntry({ detail }: { detail: MutationDetail }) {
  const before = detail.previous_version ?? detail.base_version;
  const arm = (version: number | null): VersionEffect | undefined =>
    detail.effect?.find((e) => e.version === version);
  const judged = record(record(record(detail.report).canary).effect);
  const change = record(judged.change);
  const rows: [string, VersionEffect | undefined][] = [
    [`before (v${before})`, arm(before)],
    [`after (v${detail.applied_version})`, arm(detail.applied_version)],
  ];
  const decided = decidedAt(detail);
  return (
    <li className={`timeline-entry status-${detail.status}`}>
      <h3>
        <time dateTime={appliedAt(detail)}>{when(appliedAt(detail))}</time> · v{before} → v{detail.applied_version}{" "}
        <span className={`badge status-${detail.status}`}>{detail.status.replace("_", " ")}</span>
      </h3>
      <p>
        <Link to={`/improvement/mutations/${encodeURIComponent(detail.mutation_id)}`}>
          <code>{detail.mutation_id}</code>
        </Link>{" "}
        {detail.rationale} <span className="muted">({detail.author}; canary {pct(detail.canary_weight)})</span>
      </p>
      {decided && (
        <p className="muted">
          {detail.status.replace("_", " ")} {when(decided)}
          {detail.reason ? ` — ${detail.reason}` : ""}
        </p>
      )}
      <div className="table-wrap">
        <table className="list compare" aria-label={`effect of ${detail.mutation_id}`}>
          <thead>
            <tr>
              <th scope="col">Runs since the apply</th>
              <th scope="col">Runs</th>
              <th scope="col">Success rate</th>
              <th scope="col">p50</th>
              <th scope="col">p95</th>
            </tr>
          </thead>
          <tbody>
            {rows.map(([name, e]) => (
              <tr key={name}>
                <th scope="row">{name}</th>
                <td>{e?.runs ?? 0}</td>
                <td>{pct(e?.success_rate)}</td>
                <td>{ms(e?.p50_ms)}</td>
                <td>{ms(e?.p95_ms)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {Object.keys(change).length > 0 && (
        <p>
          Canary judge: success {signedPct(change.success_rate)}, p95 ×{ratio(change.p95_ratio)}, cost ×
          {ratio(change.cost_ratio)}
        </p>
      )}
    </li>
  );
}

function signedPct(value: unknown): string {
  if (typeof value !== "number") return "—";
  return `${value >= 0 ? "+" : ""}${(value * 100).toFixed(1)} points`;
}

function ratio(value: unknown): string {
  return typeof value === "number" ? value.toFixed(2) : "—";
}

function PolicyEditor({ workflowId }: { workflowId: string }) {
  const path = `/v1/workflows/${encodeURIComponent(workflowId)}/improvement`;
  const current = useApi<Improvement>(path);
  const [choice, setChoice] = useState<Policy>();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<Error>();
  const [saved, setSaved] = useState<string>();
  const me = useMe();
  const mayEdit = can(me, "PUT /v1/workflows/{workflow_id}/improvement");

  async function save(event: FormEvent) {
    event.preventDefault();
    if (!choice) return;
    setBusy(true);
    setError(undefined);
    setSaved(undefined);
    try {
      const answer = await apiSend<Improvement>("PUT", path, { policy: choice, wait_ms: 10_000 });
      setSaved(answer.updated_at ? `Policy set to ${answer.policy}.` : `Policy ${answer.policy} requested; not applied yet.`);
      current.reload();
    } catch (reason) {
      setError(reason instanceof Error ? reason : new Error(String(reason)));
    } finally {
      setBusy(false);
    }
  }

  return (
    <section aria-labelledby="policy-title">
      <h2 id="policy-title">Improvement settings</h2>
      {current.error && <ErrorBox error={current.error} title="Settings not loaded" />}
      {current.loading && !current.data && <Loading what="settings" />}
      {current.data && (
        <form className="policy" onSubmit={save}>
          <label>
            Policy
            <select
              disabled={!mayEdit}
              value={choice ?? current.data.policy}
              onChange={(e) => setChoice(e.target.value as Policy)}
            >
              {Object.entries(POLICIES).map(([value, text]) => (
                <option key={value} value={value}>
                  {text}
                </option>
              ))}
            </select>
          </label>
          {mayEdit ? (
            <button type="submit" disabled={busy || !choice || choice === current.data.policy}>
              {busy ? "Saving…" : "Save policy"}
            </button>
          ) : (
            me && <span role="note">Your role ({me.role}) cannot change the policy: admins can.</span>
          )}
          <span className="muted">
            {current.data.updated_at
              ? `set by ${current.data.actor ?? "?"} ${when(current.data.updated_at)}`
              : "default (never set)"}
          </span>
        </form>
      )}
      {saved && <p role="status">{saved}</p>}
      {error && <ErrorBox error={error} title="Policy not saved" />}
    </section>
  );
}
