// Loading, empty and error states, the same on every page.

import type { ReactNode } from "react";

import { ApiError, fieldPath } from "../api/errors";

export function Loading({ what }: { what: string }) {
  return (
    <p className="state loading" role="status" aria-live="polite">
      Loading {what}…
    </p>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="state empty">{children}</p>;
}

/** An error with the API's own reason (and field paths for a 422). */
export function ErrorBox({ error, title }: { error: Error; title?: string }) {
  const fields = error instanceof ApiError ? error.fieldErrors : [];
  return (
    <div className="state error" role="alert">
      <strong>{title ?? "Request failed"}</strong>
      {error instanceof ApiError && <span className="status"> (HTTP {error.status})</span>}
      {fields.length ? (
        <ul>
          {fields.map((f, i) => (
            <li key={i}>
              <code>{fieldPath(f) || "(request)"}</code>: {f.msg}
            </li>
          ))}
        </ul>
      ) : (
        <p>{error.message}</p>
      )}
    </div>
  );
}
