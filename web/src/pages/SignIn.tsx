import { useState, type FormEvent } from "react";

import { apiGet } from "../api/client";
import { forgetCredential, setCredential } from "../api/auth";
import { ErrorBox } from "../components/States";

/** Asks for an API key (or OIDC token) and checks it against the API before keeping it. */
export function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<Error>();

  async function submit(event: FormEvent) {
    event.preventDefault();
    setCredential(value);
    try {
      await apiGet("/v1/workflows", { limit: 1 });
      onSignedIn();
    } catch (reason) {
      forgetCredential();
      setError(reason instanceof Error ? reason : new Error(String(reason)));
    }
  }

  return (
    <main className="sign-in">
      <h1>REFLUX</h1>
      <form onSubmit={submit}>
        <label htmlFor="credential">API key or token</label>
        <input
          id="credential"
          type="password"
          autoComplete="off"
          value={value}
          onChange={(e) => setValue(e.target.value)}
          placeholder="rfx_…"
          autoFocus
        />
        <button type="submit" disabled={!value.trim()}>
          Sign in
        </button>
      </form>
      {error && <ErrorBox error={error} title="Sign-in refused" />}
      <p className="hint">
        <code>make demo</code> prints a console link that signs you in; otherwise create a key with{" "}
        <code>reflux api-keys create</code>.
      </p>
    </main>
  );
}
