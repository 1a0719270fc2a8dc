// One step of a run: its node, status and attempts, the params it was given, its output (a
// claim-checked output is loaded on demand from GET /v1/runs/{id}/payload), its error, and
// re-drive. Live, it reads the model folded from the stream; in time travel, the state the
// API replayed up to that seq.

import { useState } from "react";

import { apiGet, apiSend } from "../../api/client";
import { can, useMe } from "../../api/permissions";
import { ErrorBox } from "../../components/States";
import { ConfirmDialog } from "../../components/confirm/ConfirmDialog";
import { json, StatusBadge } from "./format";
import type { StepLive } from "./runModel";
import type { ErrorInfo, GraphStepView, PayloadRef } from "./types";

/** What the panel shows of a step: the live model's fields, less the ones only the live fold has. */
export type StepView = Omit<StepLive, "cacheHit" | "durationMs">;

/** A step of GET .../state's RunState as the panel's view. */
export function fromState(state: Record<string, unknown> | undefined): StepView | undefined {
  if (!state) return undefined;
  return {
    status: String(state.status ?? "pending"),
    attempt: Number(state.attempt ?? 0),
    params: state.params,
    paramsRef: (state.params_ref as PayloadRef | null) ?? null,
    output: state.output,
    outputRef: (state.output_ref as PayloadRef | null) ?? null,
    error: (state.error as ErrorInfo | null) ?? null,
    nodeVersion: (state.node_version as string | null) ?? null,
    worker: (state.worker as string | null) ?? null,
    skipReason: (state.skip_reason as string | null) ?? null,
  };
}

export function fromLive(live: StepLive | undefined): StepView | undefined {
  return live ? { ...live } : undefined;
}

export interface StepPanelProps {
  runId: string;
  stepId: string;
  graphStep: GraphStepView | undefined;
  view: StepView | undefined;
  /** Time travel: the panel shows the step as it was, and offers no action. */
  atSeq: number | null;
  onClose: () => void;
  onRedriven: () => void;
}

export function StepPanel({ runId, stepId, graphStep, view, atSeq, onClose, onRedriven }: StepPanelProps) {
  const [redrive, setRedrive] = useState(false);
  const [downstream, setDownstream] = useState(false);
  const me = useMe();
  const status = view?.status ?? "pending";

  return (
    <aside className="step-panel" aria-label={`Step ${stepId}`}>
      <div className="panel-head">
        <h2>
          Step <code>{stepId}</code>
        </h2>
        <button type="button" className="link" onClick={onClose} aria-label="Close step panel">
          ✕
        </button>
      </div>
      <dl className="facts">
        <dt>Status</dt>
        <dd>
          <StatusBadge status={status} />
          {atSeq !== null && <small> (at seq {atSeq})</small>}
        </dd>
        <dt>Node</dt>
        <dd>
          <code>{graphStep?.node ?? "?"}</code>
          {view?.nodeVersion && <small> → {view.nodeVersion}</small>}
        </dd>
        <dt>Attempt</dt>
        <dd>{view?.attempt ?? 0}</dd>
        {graphStep?.needs.length ? (
          <>
            <dt>Needs</dt>
            <dd>{graphStep.needs.join(", ")}</dd>
          </>
        ) : null}
        {view?.worker && (
          <>
            <dt>Worker</dt>
            <dd>{view.worker}</dd>
          </>
        )}
        {view?.skipReason && (
          <>
            <dt>Skipped</dt>
            <dd>{view.skipReason}</dd>
          </>
        )}
      </dl>
      {view?.error && (
        <div className="state error step-error" role="alert" aria-label="Step error">
          <strong>{view.error.error_class}</strong>
          {view.error.retryable && <small> (retryable)</small>}
          <p>{view.error.message}</p>
        </div>
      )}
      <Payload title="Params" runId={runId} value={view?.params ?? (view ? undefined : graphStep?.params)} refValue={view?.paramsRef} />
      <Payload title="Output" runId={runId} value={view?.output} refValue={view?.outputRef} />
      {atSeq === null && can(me, "POST /v1/runs/{run_id}/steps/{step_id}/redrive") && (
        <div className="actions">
          <button type="button" onClick={() => setRedrive(true)}>
            Re-drive step…
          </button>
        </div>
      )}
      {redrive && (
        <ConfirmDialog
          title={`Re-drive step ${stepId}?`}
          confirmLabel="Re-drive"
          onClose={() => setRedrive(false)}
          onConfirm={async () => {
            await apiSend("POST", `/v1/runs/${encodeURIComponent(runId)}/steps/${encodeURIComponent(stepId)}/redrive?wait_ms=5000`, {
              downstream,
              reason: "from the console",
            });
            onRedriven();
          }}
        >
          <p>The step runs again with a new attempt (a failed or timed-out step; the run reopens).</p>
          <label className="check">
            <input type="checkbox" checked={downstream} onChange={(e) => setDownstream(e.target.checked)} /> and every step downstream of it
          </label>
        </ConfirmDialog>
      )}
    </aside>
  );
}

function Payload({ title, runId, value, refValue }: { title: string; runId: string; value: unknown; refValue?: PayloadRef | null }) {
  const [loaded, setLoaded] = useState<{ uri: string; value: unknown }>();
  const [failure, setFailure] = useState<Error>();
  const [busy, setBusy] = useState(false);
  if ((value === undefined || value === null) && !refValue) return null;
  const load = async () => {
    if (!refValue) return;
    setBusy(true);
    setFailure(undefined);
    try {
      const body = await apiGet<unknown>(`/v1/runs/${encodeURIComponent(runId)}/payload`, { uri: refValue.uri });
      setLoaded({ uri: refValue.uri, value: body });
    } catch (error) {
      setFailure(error instanceof Error ? error : new Error(String(error)));
    } finally {
      setBusy(false);
    }
  };
  const shown = refValue && loaded?.uri === refValue.uri ? loaded.value : value;
  return (
    <section className="payload" aria-label={title}>
      <h3>{title}</h3>
      {refValue && loaded?.uri !== refValue.uri ? (
        <p>
          Stored by claim check ({refValue.size_bytes.toLocaleString()} bytes).{" "}
          <button type="button" disabled={busy} onClick={() => void load()}>
            {busy ? "Loading…" : `Load ${title.toLowerCase()}`}
          </button>
        </p>
      ) : (
        <pre className="json">{json(shown) || "null"}</pre>
      )}
      {failure && <ErrorBox error={failure} title={`Could not load the ${title.toLowerCase()}`} />}
    </section>
  );
}
