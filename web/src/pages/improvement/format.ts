// Small display helpers shared by the improvement pages.

export function when(iso: string | null | undefined): string {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function pct(value: unknown): string {
  return typeof value === "number" && Number.isFinite(value) ? `${(value * 100).toFixed(1)} %` : "—";
}

export function ms(value: unknown): string {
  return typeof value === "number" && Number.isFinite(value) ? `${Math.round(value)} ms` : "—";
}

export function num(value: unknown, digits = 3): string {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  return Number.isInteger(value) ? String(value) : value.toPrecision(digits);
}

export function record(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

/** Evidence is free JSON; the diagnosis id an optimizer proposal answers is
 * `evidence.diagnosis_id` (api/models/diagnoses.py ProposalOutcomePublic). */
export function diagnosisIdOf(evidence: unknown): string | null {
  const id = record(evidence).diagnosis_id;
  return typeof id === "string" && id ? id : null;
}

/** A diagnosis id holds slashes and colons (`kind/workflow:x/step:y/ms`): encode each segment,
 * keep the slashes (the API routes take the id as a path). */
export function idPath(id: string): string {
  return id.split("/").map(encodeURIComponent).join("/");
}

export const ACTION_LABEL: Record<string, string> = {
  approve: "Approve",
  reject: "Reject",
  keep: "Keep",
  rollback: "Roll back",
};
