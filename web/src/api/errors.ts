// The API's error bodies are {"detail": ...}: a string (401/403/404/409/503), or for 422 a list
// of {loc, msg, type} whose loc is the field path inside the request (api/errors.py).

export interface FieldError {
  loc: (string | number)[];
  msg: string;
  type: string;
}

export class ApiError extends Error {
  readonly status: number;
  readonly detail: unknown;

  constructor(status: number, detail: unknown) {
    super(describeDetail(status, detail));
    this.status = status;
    this.detail = detail;
  }

  /** The 422 field errors, if this is one. */
  get fieldErrors(): FieldError[] {
    return Array.isArray(this.detail) ? (this.detail as FieldError[]) : [];
  }
}

export function fieldPath(error: FieldError): string {
  // "body" is where the field sits in the request, not part of the document's path.
  const loc = error.loc[0] === "body" ? error.loc.slice(1) : error.loc;
  return loc.map((part) => (typeof part === "number" ? `[${part}]` : `.${part}`)).join("").replace(/^\./, "");
}

function describeDetail(status: number, detail: unknown): string {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return (detail as FieldError[]).map((e) => `${fieldPath(e) || "(request)"}: ${e.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}
