// Start a run of a workflow version: an inputs form generated from the version's declared
// inputs, then POST /v1/runs. Used by /ui/runs/new (and linked from the workflow pages).

import { useEffect, useMemo, useState, type FormEvent } from "react";

import { apiSend } from "../../api/client";
import { can, useMe } from "../../api/permissions";
import { ApiError } from "../../api/errors";
import { ErrorBox } from "../States";
import { initialText, inputFields, parseInputs, type InputField } from "./inputs";

export interface StartRunFormProps {
  workflowId: string;
  version: number;
  definition: Record<string, unknown>;
  onStarted: (runId: string) => void;
}

export function StartRunForm({ workflowId, version, definition, onStarted }: StartRunFormProps) {
  const fields = useMemo(() => inputFields(definition), [definition]);
  const [texts, setTexts] = useState<Record<string, string>>({});
  const [fieldErrors, setFieldErrors] = useState<Record<string, string>>({});
  const [failure, setFailure] = useState<Error>();
  const [busy, setBusy] = useState(false);
  const me = useMe();

  useEffect(() => {
    setTexts(Object.fromEntries(fields.map((f) => [f.name, initialText(f)])));
    setFieldErrors({});
    setFailure(undefined);
  }, [fields]);

  async function submit(event: FormEvent) {
    event.preventDefault();
    const parsed = parseInputs(fields, texts);
    setFieldErrors(parsed.errors);
    if (Object.keys(parsed.errors).length) return;
    setBusy(true);
    setFailure(undefined);
    try {
      const accepted = await apiSend<{ run_id: string }>("POST", "/v1/runs", {
        workflow_id: workflowId,
        version,
        inputs: parsed.inputs,
      });
      onStarted(accepted.run_id);
    } catch (error) {
      setFailure(error instanceof Error ? error : new Error(String(error)));
      // The API's 422 names inputs by path (inputs.count): show them at their field too.
      if (error instanceof ApiError) {
        const byField: Record<string, string> = {};
        for (const e of error.fieldErrors) {
          const loc = e.loc[0] === "body" ? e.loc.slice(1) : e.loc;
          if (loc[0] === "inputs" && typeof loc[1] === "string") byField[loc[1]] = e.msg;
        }
        setFieldErrors(byField);
      }
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="start-run" onSubmit={submit} aria-label="Run inputs" noValidate>
      {fields.length === 0 && <p className="state empty">This version declares no inputs.</p>}
      {fields.map((field) => (
        <Field
          key={field.name}
          field={field}
          text={texts[field.name] ?? ""}
          error={fieldErrors[field.name]}
          onChange={(text) => {
            setTexts((t) => ({ ...t, [field.name]: text }));
            // An error belongs to the text it was about: editing the field clears it.
            setFieldErrors(({ [field.name]: _gone, ...rest }) => rest);
          }}
        />
      ))}
      {failure && <ErrorBox error={failure} title="The run was not started" />}
      <div className="actions">
        {me && !can(me, "POST /v1/runs") ? (
          <p className="muted" role="note">
            Your role ({me.role}) cannot start runs: operators can.
          </p>
        ) : (
          <button type="submit" className="primary" disabled={busy || me === undefined}>
            {busy ? "Starting…" : "Start run"}
          </button>
        )}
      </div>
    </form>
  );
}

function Field({ field, text, error, onChange }: { field: InputField; text: string; error?: string; onChange: (text: string) => void }) {
  const id = `input-${field.name}`;
  const hint = [field.type, field.required ? "required" : "optional", field.description].filter(Boolean).join(" · ");
  let control;
  if (field.options) {
    control = (
      <select id={id} value={text} onChange={(e) => onChange(e.target.value)} aria-invalid={Boolean(error)}>
        <option value="">{field.required ? "(choose)" : "(default)"}</option>
        {field.options.map((o) => (
          <option key={JSON.stringify(o)} value={typeof o === "string" ? o : JSON.stringify(o)}>
            {String(o)}
          </option>
        ))}
      </select>
    );
  } else if (field.type === "boolean") {
    control = (
      <select id={id} value={text} onChange={(e) => onChange(e.target.value)} aria-invalid={Boolean(error)}>
        <option value="">{field.required ? "(choose)" : "(default)"}</option>
        <option value="true">true</option>
        <option value="false">false</option>
      </select>
    );
  } else if (field.type === "object" || field.type === "array") {
    control = (
      <textarea id={id} rows={4} spellCheck={false} value={text} placeholder={field.type === "array" ? "[ ]" : "{ }"}
        onChange={(e) => onChange(e.target.value)} aria-invalid={Boolean(error)} />
    );
  } else {
    control = (
      <input id={id} type={field.type === "string" ? "text" : "number"} step={field.type === "integer" ? 1 : "any"}
        value={text} required={field.required} onChange={(e) => onChange(e.target.value)} aria-invalid={Boolean(error)} />
    );
  }
  return (
    <div className={error ? "field invalid" : "field"}>
      <label htmlFor={id}>{field.name}</label>
      {control}
      <small className="hint">{hint}</small>
      {error && (
        <small className="field-error" role="alert">
          {field.name}: {error}
        </small>
      )}
    </div>
  );
}
