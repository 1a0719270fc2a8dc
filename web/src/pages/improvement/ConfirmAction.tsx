// Approve / reject / keep / roll back a proposal, each behind a confirmation dialog. The request
// waits (wait_ms) for the mutation processor's answer, so the page shows the new state, or the
// refusal with the API's reason (409 naming the current status, 422 naming the field).

import { useState } from "react";

import { apiSend } from "../../api/client";
import { ConfirmDialog } from "../../components/confirm/ConfirmDialog";
import type { Action } from "./diff";
import { ACTION_LABEL } from "./format";
import type { MutationDetail } from "./types";

const WAIT_MS = 15_000;

const EXPLAIN: Record<Action, string> = {
  approve:
    "Registers the proposal's definition as a new workflow version and routes the canary share of new runs to it.",
  reject: "Rejects the proposal for good; it can not be approved afterwards.",
  keep: "Ends the canary: every new run gets the new version.",
  rollback: "Ends the canary: new runs get the previous version again. Runs already started keep theirs.",
};

interface Props {
  mutation: MutationDetail;
  action: Action;
  onClose: () => void;
  /** Called with the proposal after the request took effect (or with null: accepted, pending). */
  onDone: (detail: MutationDetail | null) => void;
}

export function ConfirmAction({ mutation, action, onClose, onDone }: Props) {
  const [reason, setReason] = useState("");
  const [weight, setWeight] = useState("0.2");

  async function decide() {
    const body: Record<string, unknown> = { wait_ms: WAIT_MS };
    if (reason.trim() && action !== "approve") body.reason = reason.trim();
    if (action === "approve") body.canary_weight = Number(weight);
    const answer = await apiSend<MutationDetail | { status: "accepted" }>(
      "POST",
      `/v1/mutations/${encodeURIComponent(mutation.mutation_id)}/${action}`,
      body,
    );
    onDone(answer && "history" in answer ? answer : null);
  }

  return (
    <ConfirmDialog
      title={`${ACTION_LABEL[action]} proposal ${mutation.mutation_id}?`}
      confirmLabel={`Confirm ${ACTION_LABEL[action].toLowerCase()}`}
      danger={action === "reject" || action === "rollback"}
      onConfirm={decide}
      onClose={onClose}
      cancelLabel="Cancel"
      busyLabel="Waiting for the processor…"
      refusedTitle={`${ACTION_LABEL[action]} refused`}
    >
      <p>{EXPLAIN[action]}</p>
      {action === "approve" && (
        <label>
          Canary weight (share of new runs)
          <input
            type="number"
            min="0.01"
            max="1"
            step="0.01"
            value={weight}
            onChange={(e) => setWeight(e.target.value)}
            required
          />
        </label>
      )}
      {action !== "approve" && (
        // The processor records no reason on an approval (lifecycle._approve), so none is asked.
        <label>
          Reason (optional)
          <textarea value={reason} onChange={(e) => setReason(e.target.value)} rows={2} />
        </label>
      )}
    </ConfirmDialog>
  );
}
