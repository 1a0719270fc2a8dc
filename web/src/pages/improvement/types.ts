// The /v1 answers the improvement pages read (api/models/{diagnoses,mutations,replays}.py).
// Free-form JSON (evidence, reports) stays `unknown` and is narrowed where it is shown.

export interface Diagnosis {
  diagnosis_id: string;
  subject: string;
  kind: string;
  severity: string;
  detector: string;
  workflow_id: string | null;
  workflow_version: number | null;
  step_id: string | null;
  node: string | null;
  node_version: string | null;
  error_class: string | null;
  detected_at: string;
  traces_seen: number;
  explanation: string;
}

export interface ProposalOutcome {
  mutation_id: string;
  workflow_id: string;
  base_version: number;
  author: string;
  strategy: string | null;
  status: string;
  rationale: string;
  replay_verdict: string | null;
  effect: Record<string, unknown> | null;
  applied_version: number | null;
  reason: string | null;
  proposed_at: string;
  updated_at: string;
}

export interface DiagnosisDetail extends Diagnosis {
  metrics: Record<string, number>;
  example_run_ids: string[];
  evidence: unknown;
  context: string;
  embedding_model: string;
  proposals: ProposalOutcome[];
}

export interface SimilarIncident extends Diagnosis {
  similarity: number;
  score: number;
  kept: boolean;
  proposals: ProposalOutcome[];
}

export interface Listed<T> {
  data: T[];
  count: number;
}

export interface GraphChange {
  type: "add_step" | "remove_step" | "update_params" | "replace_node";
  step_id: string;
  data: unknown;
}

export interface Mutation {
  mutation_id: string;
  workflow_id: string;
  base_version: number;
  status: string;
  author: string;
  rationale: string;
  canary_weight: number | null;
  applied_version: number | null;
  previous_version: number | null;
  reason: string | null;
  created_at: string;
  updated_at: string;
}

export interface MutationEvent {
  status: string;
  actor: string | null;
  reason: string | null;
  request_id: string | null;
  occurred_at: string;
}

export interface VersionEffect {
  version: number;
  runs: number;
  succeeded: number;
  failed: number;
  running: number;
  success_rate: number | null;
  p50_ms: number | null;
  p95_ms: number | null;
}

export interface MutationDetail extends Mutation {
  changes: GraphChange[];
  evidence: unknown;
  report: unknown;
  score: number | null;
  history: MutationEvent[];
  effect: VersionEffect[] | null;
}

export interface Replay {
  replay_id: string;
  workflow_id: string;
  mutation_id: string | null;
  requested_by: string;
  status: string;
  total: number | null;
  done: number;
  verdict: string | null;
  error: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  spec?: Record<string, unknown> | null;
  report?: Record<string, unknown> | null;
  runs?: Record<string, unknown>[] | null;
}

export interface WorkflowVersion {
  workflow_id: string;
  version: number;
  definition: { steps?: unknown[] } & Record<string, unknown>;
  registered_at: string;
  registered_by: string | null;
}

export interface Improvement {
  workflow_id: string;
  policy: string;
  actor: string | null;
  updated_at: string | null;
  request_id?: string | null;
}

/** Statuses GET /v1/mutations filters on (MutationStatus without the v1 name `reverted`). */
export const MUTATION_STATUSES = [
  "proposed",
  "validating",
  "validated",
  "approved",
  "applied",
  "kept",
  "rolled_back",
  "rejected",
] as const;

export const DIAGNOSIS_KINDS = [
  "latency_drift",
  "failure_drift",
  "timeout_drift",
  "quality_drift",
  "anomaly",
  "error_cluster",
  "bottleneck",
  "repeated_inputs",
  "sequential_independent",
  "cost",
] as const;

export const SEVERITIES = ["info", "warning", "critical"] as const;
