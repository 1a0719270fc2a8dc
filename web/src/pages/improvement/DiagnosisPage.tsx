// One diagnosis: what was found and on what, its metrics and evidence, the proposals that
// answered it, and the most similar past incidents with what was tried for them.

import { Link, useParams } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { idPath, num, when } from "./format";
import type { DiagnosisDetail, ProposalOutcome, SimilarIncident } from "./types";

interface Similar {
  data: SimilarIncident[];
  count: number;
  embedding_model: string;
}

export function DiagnosisPage() {
  const diagnosisId = useParams()["*"] ?? "";
  const detail = useApi<DiagnosisDetail>(`/v1/diagnoses/${idPath(diagnosisId)}`);
  const similar = useApi<Similar>(`/v1/diagnoses/${idPath(diagnosisId)}/similar`, { k: 5 });

  if (detail.error) return <ErrorBox error={detail.error} title="Diagnosis not loaded" />;
  if (!detail.data) return <Loading what="diagnosis" />;
  const d = detail.data;
  return (
    <article className="improvement-page">
      <p className="crumbs">
        <Link to="/improvement/diagnoses">Diagnoses</Link> › <span>{d.kind.replace(/_/g, " ")}</span>
      </p>
      <header className="page-head">
        <h1>{d.explanation}</h1>
        <span className={`badge severity-${d.severity}`}>{d.severity}</span>
      </header>
      <dl className="facts">
        <dt>Id</dt>
        <dd>
          <code>{d.diagnosis_id}</code>
        </dd>
        <dt>Kind</dt>
        <dd>
          {d.kind.replace(/_/g, " ")} (detector {d.detector})
        </dd>
        <dt>Subject</dt>
        <dd>
          <code>{d.subject}</code>
          {d.workflow_id && (
            <>
              {" "}
              ·{" "}
              <Link to={`/improvement/workflows/${encodeURIComponent(d.workflow_id)}`}>
                changes to {d.workflow_id}
              </Link>
            </>
          )}
        </dd>
        {d.node && (
          <>
            <dt>Node</dt>
            <dd>
              {d.node}
              {d.node_version && `@${d.node_version}`}
            </dd>
          </>
        )}
        {d.error_class && (
          <>
            <dt>Error class</dt>
            <dd>{d.error_class}</dd>
          </>
        )}
        <dt>Detected</dt>
        <dd>
          {when(d.detected_at)} after {d.traces_seen} traces
        </dd>
      </dl>

      <section aria-labelledby="metrics-title">
        <h2 id="metrics-title">Metrics</h2>
        {Object.keys(d.metrics).length === 0 ? (
          <p className="muted">No metrics.</p>
        ) : (
          <table className="list narrow" aria-label="metrics">
            <tbody>
              {Object.entries(d.metrics).map(([name, value]) => (
                <tr key={name}>
                  <th scope="row">{name}</th>
                  <td>{num(value, 4)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section aria-labelledby="evidence-title">
        <h2 id="evidence-title">Evidence</h2>
        <pre className="json-block">{JSON.stringify(d.evidence, null, 2)}</pre>
        {d.example_run_ids.length > 0 && (
          <p>
            Example runs:{" "}
            {d.example_run_ids.map((id) => (
              <Link key={id} to={`/runs/${encodeURIComponent(id)}`} className="run-link">
                <code>{id}</code>
              </Link>
            ))}
          </p>
        )}
      </section>

      <section aria-labelledby="answers-title">
        <h2 id="answers-title">Proposals that answered it</h2>
        <Proposals proposals={d.proposals} />
      </section>

      <section aria-labelledby="similar-title">
        <h2 id="similar-title">Similar past incidents</h2>
        {similar.error && <ErrorBox error={similar.error} />}
        {similar.loading && !similar.data && <Loading what="similar incidents" />}
        {similar.data && similar.data.count === 0 && <Empty>Nothing similar stored.</Empty>}
        {similar.data && similar.data.count > 0 && (
          <div className="table-wrap">
            <table className="list" aria-label="similar incidents">
              <thead>
                <tr>
                  <th scope="col">Similarity</th>
                  <th scope="col">Incident</th>
                  <th scope="col">Detected</th>
                  <th scope="col">Fix kept</th>
                  <th scope="col">Tried</th>
                </tr>
              </thead>
              <tbody>
                {similar.data.data.map((s) => (
                  <tr key={s.diagnosis_id}>
                    <td>{num(s.similarity)}</td>
                    <td className="wrap">
                      <Link to={`/improvement/diagnoses/${idPath(s.diagnosis_id)}`}>{s.explanation}</Link>
                    </td>
                    <td>{when(s.detected_at)}</td>
                    <td>{s.kept ? "yes" : "no"}</td>
                    <td>
                      {s.proposals.length === 0 && "—"}
                      {s.proposals.map((p) => (
                        <Link key={p.mutation_id} to={`/improvement/mutations/${encodeURIComponent(p.mutation_id)}`}>
                          {p.status.replace("_", " ")}
                        </Link>
                      ))}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </article>
  );
}

function Proposals({ proposals }: { proposals: ProposalOutcome[] }) {
  if (proposals.length === 0) return <Empty>No proposal answered it yet.</Empty>;
  return (
    <ul className="answers-list">
      {proposals.map((p) => (
        <li key={p.mutation_id}>
          <Link to={`/improvement/mutations/${encodeURIComponent(p.mutation_id)}`}>
            <code>{p.mutation_id}</code>
          </Link>{" "}
          <span className={`badge status-${p.status}`}>{p.status.replace("_", " ")}</span> {p.strategy ?? p.author}:{" "}
          {p.rationale}
          {p.replay_verdict && <span className="muted"> · replay {p.replay_verdict}</span>}
        </li>
      ))}
    </ul>
  );
}
