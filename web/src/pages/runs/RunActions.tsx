// Cancel, pause, resume and signal a run, each after a confirmation. The commands wait for
// their effect (wait_ms), so a refusal by the scheduler comes back as 409 with its reason.

import { useState } from "react";

import { apiSend } from "../../api/client";
import { can, useMe } from "../../api/permissions";
import { ConfirmDialog } from "../../components/confirm/ConfirmDialog";

const WAIT_MS = 5000;

type Action = "cancel" | "pause" | "resume" | "signal";

export function RunActions({ runId, status, onDone }: { runId: string; status: string; onDone: () => void }) {
  const [open, setOpen] = useState<Action | null>(null);
  const [signal, setSignal] = useState("");
  const [payload, setPayload] = useState("{}");
  const base = `/v1/runs/${encodeURIComponent(runId)}`;
  const finished = status === "succeeded" || status === "cancelled";
  const me = useMe();
  const may = (action: Action) =>
    can(me, action === "signal" ? "POST /v1/runs/{run_id}/signals/{name}" : `POST /v1/runs/{run_id}/${action}`);
  if (me && !(["cancel", "pause", "resume", "signal"] as const).some(may)) {
    return (
      <p className="muted run-actions" role="note">
        Your role ({me.role}) can follow this run, not act on it: operators can.
      </p>
    );
  }

  const command = (action: "cancel" | "pause" | "resume") => async () => {
    await apiSend("POST", `${base}/${action}?wait_ms=${WAIT_MS}`, { reason: "from the console" });
    onDone();
  };
  const sendSignal = async () => {
    let body: unknown;
    try {
      body = payload.trim() ? JSON.parse(payload) : null;
    } catch (error) {
      throw new Error(`The payload is not JSON: ${(error as Error).message}`);
    }
    if (!signal.trim()) throw new Error("Name the signal.");
    await apiSend("POST", `${base}/signals/${encodeURIComponent(signal.trim())}?wait_ms=${WAIT_MS}`, { payload: body });
    onDone();
  };

  return (
    <div className="run-actions" role="group" aria-label="Run actions">
      {may("cancel") && (
        <button type="button" className="danger" disabled={finished} onClick={() => setOpen("cancel")}>
          Cancel
        </button>
      )}
      {may("pause") && (
        <button type="button" disabled={status !== "running"} onClick={() => setOpen("pause")}>
          Pause
        </button>
      )}
      {may("resume") && (
        <button type="button" disabled={status !== "paused"} onClick={() => setOpen("resume")}>
          Resume
        </button>
      )}
      {may("signal") && (
        <button type="button" disabled={finished} onClick={() => setOpen("signal")}>
          Signal…
        </button>
      )}
      {open === "cancel" && (
        <ConfirmDialog title="Cancel this run?" confirmLabel="Cancel run" danger onConfirm={command("cancel")} onClose={() => setOpen(null)}>
          <p>Steps in flight are abandoned; a cancelled run cannot be resumed or re-driven.</p>
        </ConfirmDialog>
      )}
      {open === "pause" && (
        <ConfirmDialog title="Pause this run?" confirmLabel="Pause run" onConfirm={command("pause")} onClose={() => setOpen(null)}>
          <p>No new step starts until the run is resumed; steps in flight finish.</p>
        </ConfirmDialog>
      )}
      {open === "resume" && (
        <ConfirmDialog title="Resume this run?" confirmLabel="Resume run" onConfirm={command("resume")} onClose={() => setOpen(null)} />
      )}
      {open === "signal" && (
        <ConfirmDialog title="Send a signal" confirmLabel="Send signal" onConfirm={sendSignal} onClose={() => setOpen(null)}>
          <p>Every step of this run waiting for the signal (meta.signal) succeeds with its payload.</p>
          <label className="field">
            Signal name
            <input value={signal} onChange={(e) => setSignal(e.target.value)} autoFocus />
          </label>
          <label className="field">
            Payload (JSON)
            <textarea rows={4} spellCheck={false} value={payload} onChange={(e) => setPayload(e.target.value)} />
          </label>
        </ConfirmDialog>
      )}
    </div>
  );
}
