// The YAML editor: /workflows/new, /workflows/<id>/edit[?from=N]. Validate and Save go to the
// API (POST /v1/workflows/validate, POST /v1/workflows) with the YAML as typed, so the API is the
// one parser (the same YAML rules as `reflux run FILE`); a 422's field paths are mapped back to
// the lines that hold them, marked in the editor and listed under it.

import { useEffect, useState } from "react";
import { Link, useNavigate, useParams, useSearchParams } from "react-router-dom";
import { stringify } from "yaml";

import { apiSend } from "../../api/client";
import { can, useMe } from "../../api/permissions";
import { ApiError } from "../../api/errors";
import { useApi } from "../../api/useApi";
import { problemsOf, YamlEditor, type Problem } from "../../components/editor/YamlEditor";
import { ErrorBox, Loading } from "../../components/States";
import { forEditing, type WorkflowVersion } from "./definition";

const TEMPLATE = `id: my-workflow
inputs:
  name: {type: string, required: true}
steps:
  - id: greet
    node: transform@^1
    params:
      expression: "join(' ', ['hello', name])"
      data: {name: "{{ inputs.name }}"}
`;

interface Validated {
  workflow_id: string;
  version: number;
}

type Outcome = { kind: "valid"; version: number; workflowId: string } | { kind: "invalid" } | null;

export function WorkflowEditor() {
  const { workflowId } = useParams();
  const [search] = useSearchParams();
  const navigate = useNavigate();
  const from = search.get("from");
  const source = workflowId
    ? `/v1/workflows/${encodeURIComponent(workflowId)}${from ? `/versions/${encodeURIComponent(from)}` : ""}`
    : null;
  const loaded = useApi<WorkflowVersion>(source);
  const [text, setText] = useState<string | null>(workflowId ? null : TEMPLATE);
  const [problems, setProblems] = useState<Problem[]>([]);
  const [outcome, setOutcome] = useState<Outcome>(null);
  const [failure, setFailure] = useState<Error>();
  const [busy, setBusy] = useState(false);
  const [reveal, setReveal] = useState<{ line: number; column: number } | null>(null);
  const me = useMe();

  useEffect(() => {
    if (loaded.data && text === null) setText(stringify(forEditing(loaded.data.definition)));
  }, [loaded.data, text]);

  async function send(path: string): Promise<Validated | null> {
    if (text === null) return null;
    setBusy(true);
    setFailure(undefined);
    try {
      const answer = await apiSend<Validated>("POST", path, text, "application/yaml");
      setProblems([]);
      return answer;
    } catch (reason) {
      if (reason instanceof ApiError && reason.status === 422 && reason.fieldErrors.length) {
        setProblems(problemsOf(text, reason.fieldErrors));
        setOutcome({ kind: "invalid" });
      } else {
        setFailure(reason instanceof Error ? reason : new Error(String(reason)));
        setOutcome(null);
      }
      return null;
    } finally {
      setBusy(false);
    }
  }

  async function validate() {
    const answer = await send("/v1/workflows/validate");
    if (answer) setOutcome({ kind: "valid", version: answer.version, workflowId: answer.workflow_id });
  }

  async function save() {
    const answer = await send("/v1/workflows");
    if (answer) navigate(`/workflows/${encodeURIComponent(answer.workflow_id)}?version=${answer.version}`);
  }

  const title = workflowId ? `Edit ${workflowId}` : "New workflow";
  return (
    <section aria-labelledby="editor-title" className="workflow-editor">
      <p className="crumbs">
        <Link to="/workflows">Workflows</Link> /
        {workflowId && (
          <>
            {" "}
            <Link to={`/workflows/${encodeURIComponent(workflowId)}`}>{workflowId}</Link> /
          </>
        )}
      </p>
      <div className="page-head">
        <h1 id="editor-title">{title}</h1>
        {me && !can(me, "POST /v1/workflows") ? (
          <p className="muted" role="note">
            Your role ({me.role}) cannot validate or register workflows: editors can.
          </p>
        ) : (
          <div className="actions">
            <button type="button" onClick={validate} disabled={busy || text === null || me === undefined}>
              Validate
            </button>
            <button type="button" className="primary" onClick={save} disabled={busy || text === null || me === undefined}>
              Save
            </button>
          </div>
        )}
      </div>
      {loaded.error && <ErrorBox error={loaded.error} title="Could not load the definition" />}
      {text === null && !loaded.error && <Loading what="definition" />}
      {text !== null && (
        <YamlEditor
          value={text}
          onChange={(next) => {
            setText(next);
            setOutcome(null);
          }}
          problems={problems}
          reveal={reveal}
          label="Workflow definition (YAML)"
        />
      )}
      <div aria-live="polite">
        {outcome?.kind === "valid" && (
          <p className="state valid" role="status">
            Valid: saving registers {outcome.workflowId} v{outcome.version}.
          </p>
        )}
      </div>
      {failure && <ErrorBox error={failure} title="The API refused it" />}
      {problems.length > 0 && (
        <div className="problems" role="alert">
          <h2>
            {problems.length} problem{problems.length === 1 ? "" : "s"}
          </h2>
          <ul aria-label="Problems">
            {problems.map((p, i) => (
              <li key={i}>
                <button
                  type="button"
                  className="link where"
                  onClick={() => setReveal({ line: p.line, column: p.column })}
                >
                  line {p.line}
                </button>{" "}
                <code>{p.path || "(document)"}</code>: {p.message}
              </li>
            ))}
          </ul>
        </div>
      )}
    </section>
  );
}
